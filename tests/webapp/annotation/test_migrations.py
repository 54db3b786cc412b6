"""Migrations 0002-0004: a model name that uploads gave moves to the project of its responses."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("annotation", "0001_initial")]
AFTER = [("annotation", "0004_model_version_name_constraints")]


@pytest.mark.django_db(transaction=True)
def test_uploaded_names_become_one_version_per_project_and_trained_ones_stay() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    Project, Prompt = old.get_model("annotation", "Project"), old.get_model("annotation", "Prompt")
    Version, Response = (
        old.get_model("annotation", "ModelVersion"),
        old.get_model("annotation", "Response"),
    )
    Item = old.get_model("annotation", "Item")
    first = Project.objects.create(name="First", slug="first", task_type="pairwise")
    second = Project.objects.create(name="Second", slug="second", task_type="pairwise")
    shared = Version.objects.create(name="gpt-x")  # both projects' uploads named it
    trained = Version.objects.create(name="r1", checkpoint_dir="rounds/1")
    for project in (first, second):
        prompt = Prompt.objects.create(project=project, text="p", digest="d", source="upload")
        Response.objects.create(prompt=prompt, text="a", model_version=shared)
        Response.objects.create(prompt=prompt, text="b", model_version=trained)
        Item.objects.create(project=project, prompt=prompt, model_version=shared)

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps
    Version, Response = (
        new.get_model("annotation", "ModelVersion"),
        new.get_model("annotation", "Response"),
    )
    Item = new.get_model("annotation", "Item")
    uploaded = {v.project.slug: v for v in Version.objects.filter(name="gpt-x")}
    assert set(uploaded) == {"first", "second"}
    for slug, version in uploaded.items():
        texts = Response.objects.filter(model_version=version)
        assert {(r.prompt.project.slug, r.text) for r in texts} == {(slug, "a")}
        assert Item.objects.get(project__slug=slug).model_version == version
    assert Version.objects.get(name="r1").project is None
    assert Response.objects.filter(model_version__name="r1").count() == 2
