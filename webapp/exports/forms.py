"""The browser's create form. It only collects; the services validate (one set of rules for
the browser, the API and the command), and their errors are shown beside the field."""

from __future__ import annotations

from typing import Any

from django import forms

from webapp.annotation.models import ModelVersion, Project
from webapp.annotation.questions import QuestionKind
from webapp.exports.filters import (
    FLAGGED_CHOICES,
    GOLD_CHOICES,
    OPTION_DEFAULTS,
    RANKING_PAIR_POLICIES,
)
from webapp.exports.formats import FORMATS


def _choices(values: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(value, value.replace("_", " ")) for value in values]


class UploadAwareVersionsField(forms.ModelMultipleChoiceField):  # type: ignore[type-arg]
    def label_from_instance(self, obj: ModelVersion) -> str:
        """A name an upload gave says which project's: only that project's export can use it."""
        return obj.name if obj.project is None else f"{obj.name} (uploaded to {obj.project.slug})"


class ExportForm(forms.Form):
    project = forms.ModelChoiceField(queryset=Project.objects.all(), to_field_name="slug")
    formats = forms.MultipleChoiceField(
        choices=[(name, name) for name in FORMATS], widget=forms.CheckboxSelectMultiple
    )
    since = forms.CharField(
        required=False, max_length=64, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    until = forms.CharField(
        required=False, max_length=64, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    model_versions = UploadAwareVersionsField(
        queryset=ModelVersion.objects.select_related("project"),
        to_field_name="name",
        required=False,
    )
    label_kinds = forms.MultipleChoiceField(
        choices=QuestionKind.choices, required=False, widget=forms.CheckboxSelectMultiple
    )
    min_agreement = forms.FloatField(required=False, min_value=0, max_value=1)
    gold = forms.ChoiceField(choices=_choices(GOLD_CHOICES), initial="include")
    flagged = forms.ChoiceField(choices=_choices(FLAGGED_CHOICES), initial="exclude")
    annotators = forms.CharField(
        required=False, max_length=2_000, help_text="usernames, separated by commas"
    )
    seed = forms.IntegerField(initial=0, min_value=0)
    test_share = forms.FloatField(initial=0.1, min_value=0, max_value=0.99)
    include_ties = forms.BooleanField(required=False)
    ranking_pairs = forms.ChoiceField(choices=_choices(RANKING_PAIR_POLICIES), initial="all")
    sft_min_score = forms.FloatField(
        initial=OPTION_DEFAULTS["sft_min_score"], min_value=0, max_value=1, required=False
    )

    def export_request(self) -> dict[str, Any]:
        """The keyword arguments of services.create_snapshot."""
        data = self.cleaned_data
        return {
            "project": data["project"],
            "formats": data["formats"],
            "filters": {
                "since": data["since"] or None,
                "until": data["until"] or None,
                "model_versions": [version.name for version in data["model_versions"]],
                "label_kinds": data["label_kinds"],
                "min_agreement": data["min_agreement"],
                "gold": data["gold"],
                "flagged": data["flagged"],
                "annotators": data["annotators"],
            },
            "options": {
                "include_ties": data["include_ties"],
                "ranking_pairs": data["ranking_pairs"],
                "sft_min_score": data["sft_min_score"],
            },
            "seed": data["seed"],
            "test_share": data["test_share"],
        }
