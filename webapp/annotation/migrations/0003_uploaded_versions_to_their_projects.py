# On its own: on PostgreSQL the schema changes of 0002 and 0004 create indexes, which cannot
# be created in the transaction that moves rows (the moves leave deferred foreign-key checks
# pending until it commits).

from django.db import migrations


def uploaded_names_to_their_projects(apps, schema_editor):
    """A version without a checkpoint came from an upload's "model" field: it moves to the
    project its responses are in; one that several projects' uploads shared becomes one version
    per project, each project's responses and items pointing at its own."""
    ModelVersion = apps.get_model("annotation", "ModelVersion")
    Response = apps.get_model("annotation", "Response")
    Item = apps.get_model("annotation", "Item")
    for version in ModelVersion.objects.filter(checkpoint_dir="", project__isnull=True):
        responses = Response.objects.filter(model_version=version)
        projects = sorted(set(responses.values_list("prompt__project_id", flat=True)))
        if not projects:
            continue
        for project_id in projects[1:]:
            copy = ModelVersion.objects.create(
                name=version.name,
                project_id=project_id,
                metrics=version.metrics,
                created_at=version.created_at,
            )
            responses.filter(prompt__project_id=project_id).update(model_version=copy)
            Item.objects.filter(project_id=project_id, model_version=version).update(
                model_version=copy
            )
        version.project_id = projects[0]
        version.save(update_fields=["project"])


class Migration(migrations.Migration):

    dependencies = [
        ('annotation', '0002_model_version_project'),
    ]

    operations = [
        migrations.RunPython(uploaded_names_to_their_projects, migrations.RunPython.noop),
    ]
