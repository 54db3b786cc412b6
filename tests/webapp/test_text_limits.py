"""Every text field of every form the web app shows has a maximum length: the browser is told
(maxlength) and the server refuses more. The annotate page's own text boxes are checked in
tests/webapp/annotation/test_workspace_views.py."""

from __future__ import annotations

import inspect

import pytest
from django import forms

from webapp.annotation import forms as annotation_forms
from webapp.annotation.models import Project
from webapp.api import forms as api_forms
from webapp.exports import forms as export_forms
from webapp.training import forms as training_forms

pytestmark = pytest.mark.django_db


def form_classes() -> list[type[forms.BaseForm]]:
    modules = (annotation_forms, api_forms, export_forms, training_forms)
    return [
        cls
        for module in modules
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, forms.BaseForm) and cls.__module__ == module.__name__
    ]


def make(cls: type[forms.BaseForm], data: dict[str, str] | None = None) -> forms.BaseForm:
    if cls is annotation_forms.QuestionForm:
        return cls(Project(task_type="rating"), data)
    return cls(data)


TEXT_FIELDS = [
    (cls, name)
    for cls in form_classes()
    for name, field in make(cls).fields.items()
    if isinstance(field, forms.CharField)
]


def test_the_forms_are_found() -> None:
    names = {cls.__name__ for cls, _ in TEXT_FIELDS}
    assert {"ProjectSettingsForm", "QuestionForm", "ExportForm", "StartRoundForm"} <= names


@pytest.mark.parametrize(("cls", "name"), TEXT_FIELDS, ids=lambda v: getattr(v, "__name__", v))
def test_every_text_field_shows_its_maximum_and_the_server_enforces_it(
    cls: type[forms.BaseForm], name: str
) -> None:
    form = make(cls)
    limit = form.fields[name].max_length  # type: ignore[attr-defined]
    assert limit, f"{cls.__name__}.{name} has no max_length"
    assert f'maxlength="{limit}"' in str(form[name])
    refused = make(cls, {name: "x" * (limit + 1)})
    refused.is_valid()
    assert any(f"at most {limit}" in message for message in refused.errors.get(name, []))
