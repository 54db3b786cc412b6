"""Human-feedback labels as plain records, and their JSONL / Parquet files.

The Celery worker builds these records from database rows; researchers' exports and public data
sets give the same records through `read_records`. Records validate themselves on construction,
so a trainer never sees an empty text or an out-of-range score.

File formats, one record per JSONL line or Parquet row, in the field's common shapes:
    pairwise  {"prompt", "chosen", "rejected"} (TRL / HH-RLHF with a prompt), optional
              "strength" (or an integer "margin"), "tie", "both_bad", "annotator_id", "weight"
    likert    {"prompt", "response", "scores": {attribute: score}, "scale": [min, max]}, or
              HelpSteer's flat attribute columns ("helpfulness", "correctness", ...)
    ranking   {"prompt", "responses": [best, ..., worst]}
    rewrite   {"prompt", "original", "rewrite"}
    sft       {"prompt", "response"} or {"prompt", "completion"}, optional "source"
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from rlhf_core.corpus import atomic_output

Kind = Literal["pairwise", "likert", "ranking", "rewrite", "sft"]
HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
HELPSTEER_SCALE = (0, 4)


class RecordError(ValueError):
    """A record file that cannot be read; names the file and the line (Parquet: the row)."""

    def __init__(self, message: str, path: Path, line: int | None = None) -> None:
        where = str(path) if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}")
        self.message, self.path, self.line = message, path, line


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be non-empty text, got {value!r}")


def _check_int(name: str, value: object) -> int:
    # bool is an int to Python, but `true` is never a meaningful score or grade.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def _check_common(weight: object, annotator_id: object = None) -> None:
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise ValueError(f"weight must be a number, got {weight!r}")
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"weight must be positive and finite, got {weight!r}")
    if annotator_id is not None:
        _check_text("annotator_id", annotator_id)


@dataclass(frozen=True)
class PairwisePreference:
    """One comparison of two responses to a prompt.

    Without `tie`, `chosen` was preferred to `rejected`, by `strength` grades (1 = slightly,
    higher = clearer; a reward margin) when the annotator gave one. With `tie`, neither was
    preferred: `chosen` and `rejected` are just responses a and b in the order shown, and
    `strength` must be None. `both_bad` is independent of both: the preference or tie still
    holds, and in addition neither response is acceptable (see `losses.both_bad_loss`).
    """

    prompt: str
    chosen: str
    rejected: str
    strength: int | None = None
    tie: bool = False
    both_bad: bool = False
    annotator_id: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("prompt", "chosen", "rejected"):
            _check_text(name, getattr(self, name))
        for name in ("tie", "both_bad"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.strength is not None and _check_int("strength", self.strength) < 1:
            raise ValueError(f"strength must be at least 1, got {self.strength}")
        if self.tie and self.strength is not None:
            raise ValueError("a tie has no strength")
        if not self.tie and self.chosen == self.rejected:
            raise ValueError("chosen and rejected are the same text but not a tie")
        _check_common(self.weight, self.annotator_id)


@dataclass(frozen=True)
class LikertRating:
    """Scores of one response on named attributes, each an integer on `scale` (min, max)."""

    prompt: str
    response: str
    scores: dict[str, int]
    scale: tuple[int, int]
    annotator_id: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        _check_text("prompt", self.prompt)
        _check_text("response", self.response)
        low, high = (_check_int("scale", bound) for bound in self.scale)
        if low >= high:
            raise ValueError(f"scale must be (min, max) with min < max, got {self.scale}")
        if not self.scores:
            raise ValueError("scores must rate at least one attribute")
        for attribute, score in self.scores.items():
            _check_text("attribute name", attribute)
            if not low <= _check_int(f"score of {attribute!r}", score) <= high:
                raise ValueError(
                    f"score of {attribute!r} is {score}, outside the scale {low}..{high}"
                )
        _check_common(self.weight, self.annotator_id)


@dataclass(frozen=True)
class Ranking:
    """Responses to one prompt ordered best first."""

    prompt: str
    responses: tuple[str, ...]
    annotator_id: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        _check_text("prompt", self.prompt)
        if not isinstance(self.responses, tuple) or len(self.responses) < 2:
            raise ValueError(f"responses must be a tuple of at least two, got {self.responses!r}")
        for response in self.responses:
            _check_text("each response", response)
        if len(set(self.responses)) != len(self.responses):
            raise ValueError("a ranking cannot list the same response twice")
        _check_common(self.weight, self.annotator_id)

    def to_pairs(self) -> list[PairwisePreference]:
        """All K(K-1)/2 pairs (better, worse), in the order (0, 1), (0, 2), ..., (K-2, K-1).

        Each pair carries weight / C(K, 2), so the ranking weighs as much in total as one
        labelled pair: its pairs are correlated, and InstructGPT (Ouyang et al. 2022) found
        that counting them separately overfits.
        """
        k = len(self.responses)
        weight = self.weight / (k * (k - 1) / 2)
        return [
            PairwisePreference(
                self.prompt, better, worse, annotator_id=self.annotator_id, weight=weight
            )
            for index, better in enumerate(self.responses)
            for worse in self.responses[index + 1 :]
        ]


@dataclass(frozen=True)
class Rewrite:
    """An annotator's improved version of a response."""

    prompt: str
    original: str
    rewrite: str
    annotator_id: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("prompt", "original", "rewrite"):
            _check_text(name, getattr(self, name))
        if self.original == self.rewrite:
            raise ValueError("the rewrite is identical to the original")
        _check_common(self.weight, self.annotator_id)

    def to_pair(self) -> PairwisePreference:
        """The rewrite preferred to the original."""
        return PairwisePreference(
            self.prompt,
            self.rewrite,
            self.original,
            annotator_id=self.annotator_id,
            weight=self.weight,
        )


@dataclass(frozen=True)
class Demonstration:
    """A prompt and a response to imitate (SFT); `source` says where it came from."""

    prompt: str
    response: str
    source: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("prompt", "response", "source"):
            _check_text(name, getattr(self, name))
        _check_common(self.weight)


Record = PairwisePreference | LikertRating | Ranking | Rewrite | Demonstration
Row = Mapping[str, Any]

KINDS: dict[type[Record], Kind] = {
    PairwisePreference: "pairwise",
    LikertRating: "likert",
    Ranking: "ranking",
    Rewrite: "rewrite",
    Demonstration: "sft",
}


@dataclass(frozen=True)
class _ReadOptions:
    likert_attributes: Sequence[str]
    likert_scale: tuple[int, int] | None
    default_source: str


def _field(row: Row, name: str) -> Any:
    # Parquet writes null for a field that other rows have; treat it as absent, like JSONL.
    if row.get(name) is None:
        raise ValueError(f"missing field {name!r}")
    return row[name]


def _optional(row: Row, name: str, fallback: Any) -> Any:
    value = row.get(name)
    return fallback if value is None else value


def _detect_kind(row: Row, options: _ReadOptions) -> Kind:
    present = {name for name, value in row.items() if value is not None}
    if {"chosen", "rejected"} <= present:
        return "pairwise"
    if "responses" in present:
        return "ranking"
    if {"original", "rewrite"} <= present:
        return "rewrite"
    if "scores" in present or present & set(options.likert_attributes):
        return "likert"
    if present & {"response", "completion"}:
        return "sft"
    raise ValueError(f"cannot tell the kind of record from fields {sorted(present)}; pass kind=")


def _labelled_by(row: Row) -> dict[str, Any]:
    return {"annotator_id": row.get("annotator_id"), "weight": _optional(row, "weight", 1.0)}


def _strength(row: Row) -> int | None:
    # TRL calls the grade "margin", and JSON writers may give it as 2.0.
    strength = _optional(row, "strength", row.get("margin"))
    if strength is None:
        return None
    if isinstance(strength, float) and strength.is_integer():
        strength = int(strength)
    return _check_int("strength", strength)


def _pairwise(row: Row, _: _ReadOptions) -> PairwisePreference:
    return PairwisePreference(
        _field(row, "prompt"),
        _field(row, "chosen"),
        _field(row, "rejected"),
        strength=_strength(row),
        tie=_optional(row, "tie", False),
        both_bad=_optional(row, "both_bad", False),
        **_labelled_by(row),
    )


def _likert(row: Row, options: _ReadOptions) -> LikertRating:
    scores = row.get("scores")
    if scores is None:
        scores = {name: row[name] for name in options.likert_attributes if name in row}
    if not isinstance(scores, Mapping):
        raise ValueError(f"scores must be an object of attribute: score, got {scores!r}")
    scale = _optional(row, "scale", options.likert_scale)
    if scale is None:
        raise ValueError("missing field 'scale' (or pass likert_scale=)")
    if not isinstance(scale, Sequence) or len(scale) != 2:
        raise ValueError(f"scale must be [min, max], got {scale!r}")
    return LikertRating(
        _field(row, "prompt"),
        _field(row, "response"),
        # A Parquet struct column has every attribute of the file, null where a row has none.
        {name: score for name, score in scores.items() if score is not None},
        (scale[0], scale[1]),
        **_labelled_by(row),
    )


def _ranking(row: Row, _: _ReadOptions) -> Ranking:
    responses = _field(row, "responses")
    if not isinstance(responses, list):
        raise ValueError(f"responses must be a list, got {responses!r}")
    return Ranking(_field(row, "prompt"), tuple(responses), **_labelled_by(row))


def _rewrite(row: Row, _: _ReadOptions) -> Rewrite:
    prompt, original, rewrite = (_field(row, name) for name in ("prompt", "original", "rewrite"))
    return Rewrite(prompt, original, rewrite, **_labelled_by(row))


def _demonstration(row: Row, options: _ReadOptions) -> Demonstration:
    response = row.get("response")
    return Demonstration(
        _field(row, "prompt"),
        _field(row, "completion") if response is None else response,
        _optional(row, "source", options.default_source),
        weight=_optional(row, "weight", 1.0),
    )


PARSERS: dict[Kind, Callable[[Row, _ReadOptions], Record]] = {
    "pairwise": _pairwise,
    "likert": _likert,
    "ranking": _ranking,
    "rewrite": _rewrite,
    "sft": _demonstration,
}


def read_records(
    path: str | Path,
    *,
    kind: Kind | None = None,
    likert_attributes: Sequence[str] = HELPSTEER_ATTRIBUTES,
    likert_scale: tuple[int, int] | None = None,
) -> list[Record]:
    """Records of a `.jsonl` or `.parquet` file, one per line or row.

    The kind of each row is detected from its fields unless `kind` is given. Flat Likert rows
    take their scores from the `likert_attributes` columns; Likert rows without a "scale" use
    `likert_scale` (HelpSteer's is `HELPSTEER_SCALE`). SFT rows without a "source" get the
    file's name. Raises RecordError naming the file and line of the first malformed record.
    """
    path = Path(path)
    if kind is not None and kind not in get_args(Kind):
        raise ValueError(f"kind must be one of {get_args(Kind)}, got {kind!r}")
    options = _ReadOptions(likert_attributes, likert_scale, default_source=path.name)
    records = []
    for line, row in _read_rows(path):
        try:
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, got {type(row).__name__}")
            records.append(PARSERS[kind or _detect_kind(row, options)](row, options))
        except ValueError as error:
            raise RecordError(str(error), path, line) from error
    return records


def _read_rows(path: Path) -> list[tuple[int, object]]:
    if path.suffix == ".parquet":
        pyarrow = _pyarrow(path)
        try:
            return list(enumerate(pyarrow.parquet.read_table(path).to_pylist(), start=1))
        except pyarrow.ArrowException as error:
            raise RecordError(f"not a readable Parquet file ({error})", path) from error
    if path.suffix != ".jsonl":
        raise RecordError("record files are .jsonl or .parquet", path)
    rows: list[tuple[int, object]] = []
    with path.open(encoding="utf-8") as lines:
        for line, text in enumerate(lines, start=1):
            if text.strip():
                try:
                    rows.append((line, json.loads(text)))
                except json.JSONDecodeError as error:
                    raise RecordError(f"not valid JSON ({error.msg})", path, line) from error
    return rows


def _pyarrow(path: Path) -> Any:
    # Imported only for Parquet files: pyarrow is slow to import and JSONL needs none of it.
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as error:
        raise RecordError("Parquet needs pyarrow: pip install pyarrow", path) from error
    return pyarrow


def to_row(record: Record) -> dict[str, Any]:
    """The file row of a record, in the format `read_records` reads back to an equal record."""
    if isinstance(record, PairwisePreference):
        fields = ["prompt", "chosen", "rejected", "strength", "tie", "both_bad", "annotator_id"]
    elif isinstance(record, LikertRating):
        fields = ["prompt", "response", "scores", "scale", "annotator_id"]
    elif isinstance(record, Ranking):
        fields = ["prompt", "responses", "annotator_id"]
    elif isinstance(record, Rewrite):
        fields = ["prompt", "original", "rewrite", "annotator_id"]
    else:
        fields = ["prompt", "response", "source"]
    row = {name: getattr(record, name) for name in [*fields, "weight"]}
    # JSON and Parquet have lists, not tuples.
    return {name: list(value) if isinstance(value, tuple) else value for name, value in row.items()}


def write_records(path: str | Path, records: Sequence[Record]) -> None:
    """Write records of one kind to a `.jsonl` or `.parquet` file, atomically."""
    path = Path(path)
    if len({type(record) for record in records}) > 1:
        raise ValueError("a record file holds records of one kind only")
    rows = [to_row(record) for record in records]
    if path.suffix == ".parquet":
        pyarrow = _pyarrow(path)
        with atomic_output(path) as handle:
            pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), handle)
    elif path.suffix == ".jsonl":
        with atomic_output(path) as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
    else:
        raise ValueError(f"record files are .jsonl or .parquet, got {path.name}")
