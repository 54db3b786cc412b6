from __future__ import annotations

from datetime import datetime, timedelta

from django import forms
from django.utils import timezone

from webapp.api.services import NAME_LENGTH

EXPIRY_CHOICES = [
    ("30", "in 30 days"),
    ("90", "in 90 days"),
    ("365", "in a year"),
    ("never", "never"),
]


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=NAME_LENGTH,
        help_text="What it is for, e.g. 'laptop' or 'training cluster'.",
    )
    expires = forms.ChoiceField(choices=EXPIRY_CHOICES, initial="90", label="Expires")

    def expires_at(self) -> datetime | None:
        choice = self.cleaned_data["expires"]
        return None if choice == "never" else timezone.now() + timedelta(days=int(choice))
