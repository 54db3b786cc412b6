"""The export form's model-version filter (webapp/exports/forms.py)."""

from __future__ import annotations

import pytest

from webapp.annotation.models import ModelVersion, Project
from webapp.annotation.questions import TaskType
from webapp.exports.forms import ExportForm

pytestmark = pytest.mark.django_db


def test_a_name_an_upload_gave_is_offered_with_its_project() -> None:
    project = Project.objects.create(name="P", slug="p", task_type=TaskType.PAIRWISE)
    ModelVersion.objects.create(name="r1", checkpoint_dir="rounds/1")
    ModelVersion.objects.create(name="gpt-x", project=project)
    field = ExportForm().fields["model_versions"]
    labels = {label for _, label in field.choices}  # type: ignore[attr-defined]
    assert labels == {"r1", "gpt-x (uploaded to p)"}
