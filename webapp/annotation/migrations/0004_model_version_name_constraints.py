from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('annotation', '0003_uploaded_versions_to_their_projects'),
    ]

    operations = [
        migrations.AddConstraint(
            model_name='modelversion',
            constraint=models.UniqueConstraint(condition=models.Q(('project__isnull', True)), fields=('name',), name='trained_version_name_unique'),
        ),
        migrations.AddConstraint(
            model_name='modelversion',
            constraint=models.UniqueConstraint(condition=models.Q(('project__isnull', False)), fields=('project', 'name'), name='uploaded_version_name_unique_per_project'),
        ),
    ]
