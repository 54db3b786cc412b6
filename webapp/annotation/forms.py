"""The admin's forms: projects, questions, members, users, uploads."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.text import slugify

from webapp.accounts.models import Role, User
from webapp.annotation.models import Project, Question
from webapp.annotation.projects import SETTINGS_FIELDS
from webapp.annotation.questions import KINDS_FOR_TASK, QuestionKind, clean_config

# The longest texts the admin forms take (the browser is told with maxlength; the form refuses
# more on the server).
MAX_DESCRIPTION = 2_000
MAX_GUIDELINES = 50_000
MAX_HELP_TEXT = 2_000
MAX_LINES_TEXT = 5_000  # scale labels, flag options: one a line


class ProjectSettingsForm(forms.ModelForm):  # type: ignore[type-arg]
    description = forms.CharField(
        required=False, max_length=MAX_DESCRIPTION, widget=forms.Textarea(attrs={"rows": 2})
    )
    guidelines = forms.CharField(
        required=False,
        max_length=MAX_GUIDELINES,
        widget=forms.Textarea(attrs={"rows": 8}),
        help_text="Markdown, shown to annotators in a panel.",
    )
    overlap = forms.IntegerField(
        min_value=1, max_value=50, initial=1, help_text="Annotators who answer each item (1-50)."
    )
    gold_share = forms.FloatField(
        min_value=0,
        max_value=1,
        initial=0.0,
        help_text="Share of served items that are gold items (0-1).",
    )
    ranking_size = forms.IntegerField(
        min_value=2, max_value=9, initial=4, help_text="Responses in a ranking item (2-9)."
    )
    undo_window_seconds = forms.IntegerField(
        min_value=0, max_value=86_400, initial=300, label="Undo window (seconds)"
    )
    lease_seconds = forms.IntegerField(
        min_value=30,
        max_value=86_400,
        initial=600,
        label="Lease (seconds)",
        help_text="How long an item served to an annotator is held for them.",
    )

    class Meta:
        model = Project
        fields = list(SETTINGS_FIELDS)


class ProjectCreateForm(ProjectSettingsForm):
    slug = forms.SlugField(
        max_length=80, required=False, help_text="In URLs; made from the name if left empty."
    )

    class Meta(ProjectSettingsForm.Meta):
        fields = ["name", "slug", "task_type", *ProjectSettingsForm.Meta.fields[2:-1]]

    def clean_slug(self) -> str:
        slug: str = self.cleaned_data.get("slug") or slugify(self.data.get("name", ""))[:80]
        if not slug:
            raise ValidationError("Give a slug made of letters, digits and hyphens.")
        return slug


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


class QuestionForm(forms.Form):
    """A question and the settings of its kind, as plain fields (no JSON to type)."""

    key = forms.SlugField(max_length=50, help_text="Short name used in exports, e.g. helpfulness.")
    kind = forms.ChoiceField(choices=())
    text = forms.CharField(max_length=500, label="Question")
    help_text = forms.CharField(
        required=False, max_length=MAX_HELP_TEXT, widget=forms.Textarea(attrs={"rows": 2})
    )
    required = forms.BooleanField(required=False, initial=True)
    scale_min = forms.IntegerField(required=False, initial=1, label="Scale from")
    scale_max = forms.IntegerField(required=False, initial=5, label="to")
    scale_labels = forms.CharField(
        required=False,
        max_length=MAX_LINES_TEXT,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="One per line, e.g. “1: useless”.",
    )
    allow_tie = forms.BooleanField(required=False, initial=True, label="Allow a tie")
    allow_both_bad = forms.BooleanField(required=False, initial=True, label="Allow “both bad”")
    max_strength = forms.IntegerField(
        required=False, initial=3, min_value=0, max_value=5, label="Strength grades (0 = none)"
    )
    flag_options = forms.CharField(
        required=False,
        max_length=MAX_LINES_TEXT,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One flag per line.",
    )

    def __init__(self, project: Project, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.project = project
        kinds = KINDS_FOR_TASK.get(project.task_type, set())
        kind_field = self.fields["kind"]
        assert isinstance(kind_field, forms.ChoiceField)
        kind_field.choices = [(k.value, k.label) for k in QuestionKind if k in kinds]

    @classmethod
    def initial_for(cls, question: Question) -> dict[str, Any]:
        config = question.config
        labels = config.get("labels", {})
        return {
            "key": question.key,
            "kind": question.kind,
            "text": question.text,
            "help_text": question.help_text,
            "required": question.required,
            "scale_min": config.get("min", 1),
            "scale_max": config.get("max", 5),
            "scale_labels": "\n".join(f"{k}: {v}" for k, v in labels.items()),
            "allow_tie": config.get("allow_tie", True),
            "allow_both_bad": config.get("allow_both_bad", True),
            "max_strength": config.get("max_strength", 3),
            "flag_options": "\n".join(config.get("options", [])),
        }

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("kind")
        if kind:
            try:
                data["config"] = clean_config(kind, self._config(kind, data))
            except ValidationError as error:
                raise ValidationError(error.messages) from None
        return data

    def _config(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        if kind == QuestionKind.LIKERT:
            labels = {}
            for line in _lines(data.get("scale_labels") or ""):
                point, _, text = line.partition(":")
                if not point.strip().lstrip("-").isdigit() or not text.strip():
                    raise ValidationError(f"Write each scale label as “3: fine”, not “{line}”.")
                labels[point.strip()] = text.strip()
            low, high = data.get("scale_min"), data.get("scale_max")
            return {
                "min": 1 if low is None else low,
                "max": 5 if high is None else high,
                "labels": labels,
            }
        if kind == QuestionKind.PREFERENCE:
            strength = data.get("max_strength")
            return {
                "allow_tie": data.get("allow_tie", False),
                "allow_both_bad": data.get("allow_both_bad", False),
                "max_strength": 3 if strength is None else strength,
            }
        if kind == QuestionKind.FLAGS:
            return {"options": _lines(data.get("flag_options") or "")}
        return {}

    def apply_to(self, question: Question) -> Question:
        """`question` (new or stored) with the form's values; not saved."""
        data = self.cleaned_data
        question.project = self.project
        for name in ("key", "kind", "text", "help_text", "required", "config"):
            setattr(question, name, data[name])
        return question

    def changes(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            name: data[name] for name in ("key", "kind", "text", "help_text", "required", "config")
        }


class AddMemberForm(forms.Form):
    username = forms.CharField(
        max_length=150,
        widget=forms.TextInput(attrs={"list": "member-candidates", "autocomplete": "off"}),
    )

    def clean_username(self) -> User:
        name = self.cleaned_data["username"].strip()
        try:
            return User.objects.get(username=name)
        except User.DoesNotExist:
            raise ValidationError(f"There is no user called {name!r}.") from None


class InviteForm(forms.ModelForm):  # type: ignore[type-arg]
    role = forms.ChoiceField(choices=Role.choices, initial=Role.ANNOTATOR)

    class Meta:
        model = User
        fields = ["username", "email", "first_name", "last_name", "role"]


ROLE_CHOICES = [("", "No role"), *Role.choices]


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=ROLE_CHOICES, required=False)


class UploadForm(forms.Form):
    file = forms.FileField(
        help_text="JSONL (one JSON object a line) or CSV with a header; UTF-8; at most 20 MB."
    )
