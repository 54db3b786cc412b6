"""The start-a-round form. It collects and parses; the services validate the request (kinds,
presets, overrides per section, label filters), and their errors are shown beside the field."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from webapp.annotation.models import ModelVersion, Project
from webapp.exports.filters import FLAGGED_CHOICES
from webapp.training.models import RoundKind
from webapp.training.presets import (
    ALGORITHM_NAMES,
    DEFAULT_ALGORITHM,
    DEFAULT_PRESET,
    SECTIONS,
    preset_choices,
)

OVERRIDES_EXAMPLE = '{"ppo": {"steps": 20, "lr": 5e-5}, "generate": {"prompts": 50}}'


class StartRoundForm(forms.Form):
    project = forms.ModelChoiceField(queryset=Project.objects.all(), to_field_name="slug")
    kind = forms.ChoiceField(choices=RoundKind.choices, initial=RoundKind.FULL)
    preset = forms.ChoiceField(choices=preset_choices, initial=DEFAULT_PRESET)
    algorithm = forms.ChoiceField(
        choices=list(ALGORITHM_NAMES.items()),
        initial=DEFAULT_ALGORITHM,
        help_text="The policy update of a full round (the recipes recommend PPO).",
    )
    base_version = forms.ModelChoiceField(
        # Trained versions only: a name an upload gave has no checkpoint to start from.
        queryset=ModelVersion.objects.filter(project__isnull=True),
        to_field_name="name",
        required=False,
        empty_label="The project's serving version",
    )
    since = forms.CharField(
        required=False,
        max_length=64,
        label="Labels since",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )
    until = forms.CharField(
        required=False,
        max_length=64,
        label="Labels until",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )
    min_agreement = forms.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        label="Minimum agreement",
        help_text="Keep items whose annotators agree at least this much (0 to 1).",
    )
    flagged = forms.ChoiceField(
        choices=[(value, f"{value} flagged items") for value in FLAGGED_CHOICES],
        initial="exclude",
        label="Flagged items",
    )
    overrides = forms.CharField(
        required=False,
        max_length=10_000,
        label="Overrides (JSON)",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": OVERRIDES_EXAMPLE}),
        help_text=f"Settings per section, merged into the preset: {', '.join(SECTIONS)}.",
    )

    def clean_overrides(self) -> dict[str, Any]:
        text = self.cleaned_data["overrides"].strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise forms.ValidationError(
                f"Overrides are not valid JSON: {error.msg} (line {error.lineno}, "
                f"column {error.colno})."
            ) from None
        if not isinstance(value, dict):
            raise forms.ValidationError(
                "Overrides must be a JSON object of sections, e.g. " + OVERRIDES_EXAMPLE
            )
        return value

    def round_request(self) -> dict[str, Any]:
        """The keyword arguments of services.create_round (less the user)."""
        data = self.cleaned_data
        return {
            "project": data["project"],
            "kind": data["kind"],
            "preset": data["preset"],
            "algorithm": data["algorithm"],
            "base_version": data["base_version"],
            "label_filter": {
                "since": data["since"] or None,
                "until": data["until"] or None,
                "min_agreement": data["min_agreement"],
                "flagged": data["flagged"],
            },
            "overrides": data["overrides"],
        }
