"""Template helpers of the annotation workspace: safe Markdown and answer look-ups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django import template
from django.utils.safestring import SafeString, mark_safe

from webapp.annotation.models import Question
from webapp.annotation.questions import MAX_TEXT
from webapp.annotation.rendering import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    """`{{ response.text|markdown }}`: the text as sanitised HTML; a blank text (a model that
    ended at once) says so, rather than showing an empty box."""
    if not str(text or "").strip():
        return mark_safe('<p class="muted empty-text">(empty: nothing was written)</p>')
    return mark_safe(render_markdown(str(text)))


@register.simple_tag
def max_text() -> int:
    """`maxlength="{% max_text %}"`: the most characters of a text answer, a rewrite, a flag's
    note or a written prompt (the services refuse more)."""
    return MAX_TEXT


@register.filter
def get_item(mapping: Mapping[str, Any] | None, key: str) -> Any:
    """`{{ previous|get_item:question.key }}`: a value of a mapping by a variable key."""
    if not mapping:
        return None
    return mapping.get(key)


@register.filter
def letter(index: int) -> str:
    """0 → A, 1 → B: the blind names of an item's responses."""
    return chr(ord("A") + int(index))


STRENGTH_WORDS = {1: "slightly", 2: "clearly", 3: "much"}


@register.filter
def likert_points(question: Question) -> list[dict[str, Any]]:
    """The points of a Likert question's scale with their labels, low to high."""
    config = question.config or {}
    low, high = int(config.get("min", 1)), int(config.get("max", 5))
    labels = {str(k): v for k, v in (config.get("labels") or {}).items()}
    return [{"value": v, "label": labels.get(str(v), "")} for v in range(low, high + 1)]


@register.filter
def strength_points(question: Question) -> list[dict[str, Any]]:
    """The strength grades of a preference question (empty when it has none)."""
    high = int((question.config or {}).get("max_strength", 3))
    words = STRENGTH_WORDS if high == 3 else {}
    return [{"value": v, "label": words.get(v, str(v))} for v in range(1, high + 1)]


@register.filter
def config_flag(question: Question, name: str) -> bool:
    """A boolean setting of a question's config, defaulting to True (allow_tie, ...)."""
    return bool((question.config or {}).get(name, True))


@register.filter
def preference_choice(previous: Mapping[str, Any] | None, responses: Sequence[Any]) -> str:
    """A stored preference as the form's choice: left, right, tie, both_bad (or "")."""
    if not previous:
        return ""
    if previous.get("outcome") != "win":
        return str(previous.get("outcome") or "")
    if len(responses) == 2 and previous.get("winner") == responses[1].id:
        return "right"
    return "left"


@register.filter
def ranked(responses: Sequence[Any], previous: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The responses, each with its blind letter (A, B, ... in the item's order), in a previous
    ranking's order, else in the item's order."""
    order = list((previous or {}).get("order") or [])
    position = {rid: index for index, rid in enumerate(order)}
    lettered = [{"response": r, "letter": letter(i)} for i, r in enumerate(responses)]
    return sorted(lettered, key=lambda entry: position.get(entry["response"].id, len(order)))
