"""Validation of a snapshot's request: filters, options, formats, seed and test share.

Plain functions over plain values, shared by the browser form, the API, the management command
and the tests. Each returns the normalised value that is stored and repeated in the manifest,
or raises ExportError naming the field. Whether named model versions and annotators exist is
the services' question (it needs the database).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from webapp.annotation.questions import QuestionKind
from webapp.exports.formats import DATASETS, FORMATS, parse_format

GOLD_CHOICES = ("include", "exclude", "only")
FLAGGED_CHOICES = ("include", "exclude", "only")
RANKING_PAIR_POLICIES = ("all", "adjacent", "best_vs_rest")
FILTER_DEFAULTS: dict[str, Any] = {
    "since": None,
    "until": None,
    "model_versions": [],
    "label_kinds": [],
    "min_agreement": None,
    "gold": "include",
    "flagged": "exclude",
    "annotators": [],
}
OPTION_DEFAULTS: dict[str, Any] = {
    "include_ties": False,
    "ranking_pairs": "all",
    "sft_min_score": 1.0,
}
MAX_SEED = 2**63 - 1


class ExportError(ValueError):
    """Bad input to an export, with the HTTP status it deserves and the field it concerns."""

    def __init__(self, message: str, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.field = message, status, field


def clean_filters(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every filter with its default filled in; ExportError for an unknown or malformed one."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ExportError("Filters must be an object of name: value.", field="filters")
    _refuse_unknown(raw, FILTER_DEFAULTS, "filter")
    merged = {**FILTER_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    since, until = _moment(merged["since"], "since"), _moment(merged["until"], "until")
    label_kinds = _names(merged["label_kinds"], "label_kinds")
    unknown_kinds = sorted(set(label_kinds) - set(QuestionKind.values))
    if unknown_kinds:
        raise ExportError(
            f"Unknown label kind(s): {', '.join(unknown_kinds)}. "
            f"Known: {', '.join(QuestionKind.values)}.",
            field="label_kinds",
        )
    if since and until and datetime.fromisoformat(since) >= datetime.fromisoformat(until):
        raise ExportError("'since' must be before 'until'.", field="until")
    return {
        "since": since,
        "until": until,
        "model_versions": _names(merged["model_versions"], "model_versions"),
        "label_kinds": label_kinds,
        "min_agreement": _share(merged["min_agreement"], "min_agreement"),
        "gold": _choice(merged["gold"], GOLD_CHOICES, "gold"),
        "flagged": _choice(merged["flagged"], FLAGGED_CHOICES, "flagged"),
        "annotators": _names(merged["annotators"], "annotators"),
    }


def clean_options(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ExportError("Options must be an object of name: value.", field="options")
    _refuse_unknown(raw, OPTION_DEFAULTS, "option")
    merged = {**OPTION_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    if not isinstance(merged["include_ties"], bool):
        raise ExportError("include_ties must be true or false.", field="include_ties")
    score = _share(merged["sft_min_score"], "sft_min_score")
    return {
        "include_ties": merged["include_ties"],
        "ranking_pairs": _choice(merged["ranking_pairs"], RANKING_PAIR_POLICIES, "ranking_pairs"),
        "sft_min_score": score,
    }


def clean_formats(raw: Sequence[str] | None, label_kinds: Sequence[str] = ()) -> list[str]:
    """Known format names, each once, in the registry's order; a data set must be buildable
    from the label kinds the filters keep."""
    if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
        raise ExportError("Choose at least one format.", field="formats")
    unknown = sorted({str(name) for name in raw} - set(FORMATS))
    if unknown:
        raise ExportError(
            f"Unknown format(s): {', '.join(unknown)}. Known: {', '.join(FORMATS)}.",
            field="formats",
        )
    formats = [name for name in FORMATS if name in raw]
    if label_kinds:
        for name in formats:
            dataset, _ = parse_format(name)
            if dataset.kinds and not dataset.kinds & set(label_kinds):
                raise ExportError(
                    f"{name} is made from {' or '.join(sorted(dataset.kinds))} labels, "
                    "which the label_kinds filter leaves out.",
                    field="formats",
                )
    return formats


def clean_seed(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_SEED:
        raise ExportError(f"seed must be a whole number in 0..{MAX_SEED}.", field="seed")
    return raw


def clean_test_share(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw < 1:
        raise ExportError("test_share must be a number in [0, 1).", field="test_share")
    if not math.isfinite(raw):
        raise ExportError("test_share must be a number in [0, 1).", field="test_share")
    return float(raw)


def datasets_of(formats: Sequence[str]) -> list[str]:
    return [name for name in DATASETS if any(parse_format(f)[0].name == name for f in formats)]


def _refuse_unknown(raw: Mapping[str, Any], known: Mapping[str, Any], what: str) -> None:
    unknown = sorted(str(key) for key in raw if key not in known)
    if unknown:
        raise ExportError(
            f"Unknown {what}(s): {', '.join(unknown)}. Known: {', '.join(known)}.",
            field=unknown[0],
        )


def _moment(value: object, field: str) -> str | None:
    """An ISO 8601 date or date-time, as a UTC ISO string (a naive one is taken as UTC)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ExportError(f"{field} must be an ISO 8601 date or date-time.", field=field)
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ExportError(
            f"{field} must be an ISO 8601 date or date-time, got {value!r}.", field=field
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC).isoformat()
    except OverflowError:  # e.g. 0001-01-01T00:00+14:00 lies before the first representable day
        raise ExportError(
            f"{field} is out of the range of dates, got {value!r}.", field=field
        ) from None


def _names(value: object, field: str) -> list[str]:
    """A list of non-empty strings (a comma-separated string is accepted), sorted, each once."""
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(
        isinstance(name, str) and name.strip() for name in value
    ):
        raise ExportError(f"{field} must be a list of names.", field=field)
    return sorted({name.strip() for name in value})


def _share(value: object, field: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ExportError(f"{field} must be a number in [0, 1].", field=field) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExportError(f"{field} must be a number in [0, 1].", field=field)
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ExportError(f"{field} must be a number in [0, 1].", field=field)
    return float(value)


def _choice(value: object, choices: Sequence[str], field: str) -> str:
    if value not in choices:
        raise ExportError(f"{field} must be one of: {', '.join(choices)}.", field=field)
    return str(value)
