"""What a project asks, and what an answer to each kind of question may be.

A project's questions are rows (`Question`); each has a kind and a small JSON `config` whose
shape depends on the kind. Everything that checks a config or an answer lives here, as plain
functions over plain values, so the admin form, the annotation endpoint, the upload of gold
answers and the exports all agree on one definition.

Stored answers (`Label.value`) are JSON objects:

    likert     {"score": 4}                          an integer in [min, max]
    preference {"outcome": "win", "winner": 17, "strength": 2}
               {"outcome": "tie" | "both_bad", "winner": null, "strength": 0}
               winner is a response id of the pair (never "left"/"right": the blind order is
               presentation only); strength in 1..max_strength for a win, 0 otherwise
    ranking    {"order": [17, 12, 19]}               every response id of the item, best first
    rewrite    {"text": "..."}              the better response, differing from the original
    flags      {"flags": ["unsafe"]}        a subset of the configured options (may be empty)
    text       {"text": "..."}              free text (a rationale); "" when left empty
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

from webapp.storable import check_storable

MAX_TEXT = 20_000  # characters of a rewrite or a rationale


class QuestionKind(models.TextChoices):
    LIKERT = "likert", "Likert scale"
    PREFERENCE = "preference", "Pairwise preference"
    RANKING = "ranking", "Ranking"
    REWRITE = "rewrite", "Rewrite"
    FLAGS = "flags", "Flags"
    TEXT = "text", "Free text (rationale)"


class TaskType(models.TextChoices):
    """What an item shows: one response, a blind pair, K responses, or nothing (annotators
    write prompts)."""

    RATING = "rating", "Rate one response"
    PAIRWISE = "pairwise", "Compare two responses"
    RANKING = "ranking", "Rank K responses"
    REWRITE = "rewrite", "Rewrite a response"
    PROMPT_WRITING = "prompt_writing", "Write prompts"


# Which question kinds make sense for which task type (flags and text go with any item).
KINDS_FOR_TASK: dict[str, set[str]] = {
    TaskType.RATING: {QuestionKind.LIKERT, QuestionKind.FLAGS, QuestionKind.TEXT},
    TaskType.PAIRWISE: {QuestionKind.PREFERENCE, QuestionKind.FLAGS, QuestionKind.TEXT},
    TaskType.RANKING: {QuestionKind.RANKING, QuestionKind.FLAGS, QuestionKind.TEXT},
    TaskType.REWRITE: {
        QuestionKind.REWRITE,
        QuestionKind.LIKERT,
        QuestionKind.FLAGS,
        QuestionKind.TEXT,
    },
    TaskType.PROMPT_WRITING: set(),
}

DEFAULT_FLAGS = ["unsafe", "factual error", "off topic"]


def clean_config(kind: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config of a question of `kind` with defaults filled in; ValidationError if wrong.

    likert:     min (default 1), max (default 5), labels {"1": "useless", ...} optional
    preference: allow_tie (True), allow_both_bad (True), max_strength (3; 0 = no grade)
    flags:      options (DEFAULT_FLAGS), non-empty distinct strings
    ranking, rewrite, text: no settings
    """
    config = dict(config or {})
    if kind == QuestionKind.LIKERT:
        low, high = _int(config.get("min", 1), "min"), _int(config.get("max", 5), "max")
        if not 0 <= low < high <= 100 or high - low > 20:
            raise ValidationError("A Likert scale needs 0 <= min < max <= 100, at most 21 points.")
        labels = config.get("labels") or {}
        if not isinstance(labels, Mapping) or not all(
            isinstance(v, str) and _is_int_like(str(k)) and low <= int(k) <= high
            for k, v in labels.items()
        ):
            raise ValidationError("Likert labels map scale points to text.")
        return {"min": low, "max": high, "labels": {str(k): v for k, v in labels.items()}}
    if kind == QuestionKind.PREFERENCE:
        strength = _int(config.get("max_strength", 3), "max_strength")
        if not 0 <= strength <= 5:
            raise ValidationError("max_strength must be between 0 and 5.")
        return {
            "allow_tie": bool(config.get("allow_tie", True)),
            "allow_both_bad": bool(config.get("allow_both_bad", True)),
            "max_strength": strength,
        }
    if kind == QuestionKind.FLAGS:
        options = config.get("options", DEFAULT_FLAGS)
        if (
            not isinstance(options, list)
            or not options
            or not all(isinstance(o, str) and o.strip() for o in options)
            or len({o.strip() for o in options}) != len(options)
        ):
            raise ValidationError("Flags need a list of distinct, non-empty option names.")
        return {"options": [o.strip() for o in options]}
    if kind in (QuestionKind.RANKING, QuestionKind.REWRITE, QuestionKind.TEXT):
        return {}
    raise ValidationError(f"Unknown question kind {kind!r}.")


def _int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer.")
    return value


def clean_answer(
    kind: str,
    config: Mapping[str, Any],
    raw: Mapping[str, Any],
    *,
    response_ids: Sequence[int],
    original_text: str = "",
) -> dict[str, Any]:
    """The stored value of an answer, from what a form or an API posted; ValidationError if it
    is malformed or out of range.

    `response_ids` are the item's responses in their stored order (for a pair: left, right);
    `original_text` is the response a rewrite must improve on.
    """
    if kind == QuestionKind.LIKERT:
        score = _integer_field(raw, "score")
        if not config["min"] <= score <= config["max"]:
            raise ValidationError(f"The score must be between {config['min']} and {config['max']}.")
        return {"score": score}
    if kind == QuestionKind.PREFERENCE:
        return _clean_preference(config, raw, response_ids)
    if kind == QuestionKind.RANKING:
        order = raw.get("order")
        if not isinstance(order, list) or not all(_is_int_like(x) for x in order):
            raise ValidationError("A ranking is a list of response ids, best first.")
        ids = [int(x) for x in order]
        if sorted(ids) != sorted(response_ids) or len(set(ids)) != len(ids):
            raise ValidationError("A ranking must order every response of the item exactly once.")
        return {"order": ids}
    if kind == QuestionKind.REWRITE:
        text = _text_field(raw)
        if not text.strip():
            raise ValidationError("The rewrite is empty.")
        if text.strip() == original_text.strip():
            raise ValidationError("The rewrite is the same as the original response.")
        return {"text": text}
    if kind == QuestionKind.FLAGS:
        flags = raw.get("flags", [])
        if isinstance(flags, str):
            flags = [flags]
        if not isinstance(flags, list) or not all(f in config["options"] for f in flags):
            raise ValidationError(f"Flags must be among: {', '.join(config['options'])}.")
        return {"flags": sorted(set(flags), key=config["options"].index)}
    if kind == QuestionKind.TEXT:
        return {"text": _text_field(raw)}
    raise ValidationError(f"Unknown question kind {kind!r}.")


def _clean_preference(
    config: Mapping[str, Any], raw: Mapping[str, Any], response_ids: Sequence[int]
) -> dict[str, Any]:
    """Accepts {"choice": "left"|"right"|"tie"|"both_bad", "strength": k} (the form) or the
    stored shape {"outcome", "winner", "strength"} (an API or a gold upload)."""
    if len(response_ids) != 2:
        raise ValidationError("A preference needs an item with exactly two responses.")
    choice = raw.get("choice")
    if choice is None and raw.get("outcome") == "win":
        winner = raw.get("winner")
        if not _is_int_like(winner) or int(str(winner)) not in response_ids:
            raise ValidationError("The winner must be one of the pair's responses.")
        choice = "left" if int(str(winner)) == response_ids[0] else "right"
    elif choice is None:
        choice = raw.get("outcome")
    if choice in ("left", "right"):
        high = config["max_strength"]
        strength = _integer_field(raw, "strength") if high else 1
        if not 1 <= strength <= max(high, 1):
            raise ValidationError(f"The strength must be between 1 and {max(high, 1)}.")
        winner = response_ids[0] if choice == "left" else response_ids[1]
        return {"outcome": "win", "winner": winner, "strength": strength}
    if choice == "tie" and config["allow_tie"]:
        return {"outcome": "tie", "winner": None, "strength": 0}
    if choice == "both_bad" and config["allow_both_bad"]:
        return {"outcome": "both_bad", "winner": None, "strength": 0}
    allowed = ["left", "right"] + ["tie"] * config["allow_tie"]
    allowed += ["both_bad"] * config["allow_both_bad"]
    raise ValidationError(f"The choice must be one of: {', '.join(allowed)}.")


def _is_int_like(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    # ASCII digits only: str.isdigit() also accepts "³", which int() refuses.
    return isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip(), re.ASCII) is not None


def _integer_field(raw: Mapping[str, Any], name: str) -> int:
    value = raw.get(name)
    if not _is_int_like(value):
        raise ValidationError(f"{name} must be a whole number.")
    return int(str(value).strip())


def _text_field(raw: Mapping[str, Any]) -> str:
    text = raw.get("text", "")
    if not isinstance(text, str):
        raise ValidationError("The text must be a string.")
    check_storable(text, "The text")
    if len(text) > MAX_TEXT:
        raise ValidationError(f"The text is longer than {MAX_TEXT} characters.")
    # Every line break stored as \n, so cleaning a stored text again leaves it unchanged.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def default_questions(task_type: str) -> list[dict[str, Any]]:
    """A new project's questions for `task_type` (key, kind, text, required, config), which an
    admin then edits: what most projects of that type ask."""
    flags = {
        "key": "flags",
        "kind": QuestionKind.FLAGS,
        "text": "Anything wrong with it?",
        "required": False,
        "config": {"options": list(DEFAULT_FLAGS)},
    }
    rationale = {
        "key": "rationale",
        "kind": QuestionKind.TEXT,
        "text": "Why? (optional)",
        "required": False,
        "config": {},
    }
    main: list[dict[str, Any]]
    if task_type == TaskType.RATING:
        main = [
            {
                "key": key,
                "kind": QuestionKind.LIKERT,
                "text": f"How {word} is the response?",
                "required": True,
                "config": {"min": 1, "max": 5, "labels": {"1": "not at all", "5": "very"}},
            }
            for key, word in (("helpfulness", "helpful"), ("correctness", "correct"))
        ]
    elif task_type == TaskType.PAIRWISE:
        main = [
            {
                "key": "preference",
                "kind": QuestionKind.PREFERENCE,
                "text": "Which response is better?",
                "required": True,
                "config": {"allow_tie": True, "allow_both_bad": True, "max_strength": 3},
            }
        ]
    elif task_type == TaskType.RANKING:
        main = [
            {
                "key": "ranking",
                "kind": QuestionKind.RANKING,
                "text": "Order the responses from best to worst.",
                "required": True,
                "config": {},
            }
        ]
    elif task_type == TaskType.REWRITE:
        main = [
            {
                "key": "rewrite",
                "kind": QuestionKind.REWRITE,
                "text": "Rewrite the response so that it is as good as it can be.",
                "required": True,
                "config": {},
            }
        ]
    else:
        return []
    return [*main, flags, rationale]
