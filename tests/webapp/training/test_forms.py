"""The start-round form's base versions (webapp/training/forms.py)."""

from __future__ import annotations

import pytest

from webapp.annotation.models import ModelVersion, Project
from webapp.annotation.questions import TaskType
from webapp.training.forms import StartRoundForm

pytestmark = pytest.mark.django_db


def test_a_name_an_upload_gave_is_no_base_version_even_beside_a_trained_one() -> None:
    project = Project.objects.create(name="P", slug="p", task_type=TaskType.PAIRWISE)
    trained = ModelVersion.objects.create(name="gpt-x", checkpoint_dir="rounds/1")
    ModelVersion.objects.create(name="gpt-x", project=project)  # no checkpoint to start from
    ModelVersion.objects.create(name="only-uploaded", project=project)
    field = StartRoundForm().fields["base_version"]
    assert list(field.queryset) == [trained]  # type: ignore[attr-defined]
    assert field.clean("gpt-x") == trained
