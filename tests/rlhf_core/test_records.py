"""Records validate themselves, round-trip through JSONL and Parquet, and name bad lines."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from rlhf_core.records import (
    HELPSTEER_SCALE,
    Demonstration,
    LikertRating,
    PairwisePreference,
    Ranking,
    Record,
    RecordError,
    Rewrite,
    read_records,
    write_records,
)

EXAMPLES: dict[str, list[Record]] = {
    "pairwise": [
        PairwisePreference("2+2?", "4", "5", strength=3, annotator_id="ann-1", weight=0.5),
        PairwisePreference("Hi", "Hello!", "Hey.", tie=True, both_bad=True),
        PairwisePreference("Capital of France?", "Paris", "Lyon"),
    ],
    "likert": [
        LikertRating("Q", "A", {"helpfulness": 4, "verbosity": 1}, (0, 4), annotator_id="a"),
        LikertRating("Q", "B", {"helpfulness": 0}, (0, 4), weight=2.0),
    ],
    "ranking": [
        Ranking("Q", ("best", "middle", "worst"), annotator_id="a"),
        Ranking("Q2", ("x", "y"), weight=3.0),
    ],
    "rewrite": [Rewrite("Q", "teh answer", "the answer", annotator_id="a")],
    "sft": [Demonstration("Q", "A — ünïcode", source="annotator"), Demonstration("Q", "B", "x")],
}


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_records_round_trip_through_files(tmp_path: Path, kind: str, suffix: str) -> None:
    path = tmp_path / f"{kind}{suffix}"
    write_records(path, EXAMPLES[kind])
    assert read_records(path) == EXAMPLES[kind]


def test_writing_mixed_kinds_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one kind"):
        write_records(tmp_path / "x.jsonl", [*EXAMPLES["sft"], *EXAMPLES["rewrite"]])


def test_reads_trl_pairs_with_integer_margin_and_defaults(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "pairs.jsonl",
        '{"prompt": "P", "chosen": "a", "rejected": "b", "margin": 2.0}',
        "",
        '{"prompt": "P", "chosen": "a", "rejected": "b"}',
    )
    assert read_records(path) == [
        PairwisePreference("P", "a", "b", strength=2),
        PairwisePreference("P", "a", "b"),
    ]


def test_reads_helpsteer_flat_attribute_columns(tmp_path: Path) -> None:
    row = {"prompt": "P", "response": "R", "helpfulness": 3, "correctness": 4, "other": 9}
    path = write_lines(tmp_path / "helpsteer.jsonl", json.dumps(row))
    assert read_records(path, likert_scale=HELPSTEER_SCALE) == [
        LikertRating("P", "R", {"helpfulness": 3, "correctness": 4}, HELPSTEER_SCALE)
    ]
    custom = read_records(path, likert_attributes=["other"], likert_scale=(0, 9))
    assert custom == [LikertRating("P", "R", {"other": 9}, (0, 9))]


def test_reads_sft_completion_rows_with_the_file_as_source(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "sft.jsonl", '{"prompt": "P", "completion": "C"}')
    assert read_records(path) == [Demonstration("P", "C", source="sft.jsonl")]


def test_explicit_kind_overrides_detection(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "rows.jsonl", '{"prompt": "P", "response": "R"}')
    with pytest.raises(RecordError, match="missing field 'scale'"):
        read_records(path, kind="likert")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "P", "chosen": "a"', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"prompt": "P", "chosen": "a", "rejected": null}', "cannot tell the kind"),
        ('{"chosen": "a", "rejected": "b"}', "missing field 'prompt'"),
        ('{"prompt": "  ", "response": "R"}', "prompt must be non-empty text"),
        ('{"prompt": "P", "response": "R", "scores": {"x": 6}, "scale": [1, 5]}', "outside"),
        ('{"prompt": "P", "responses": ["a", "a"]}', "same response twice"),
        ('{"prompt": "P", "chosen": "a", "rejected": "b", "strength": 0}', "at least 1"),
        ('{"prompt": "P", "chosen": "a", "rejected": "b", "weight": -1}', "weight must be"),
    ],
)
def test_malformed_lines_raise_an_error_naming_file_and_line(
    tmp_path: Path, line: str, message: str
) -> None:
    good = '{"prompt": "P", "response": "R"}'
    path = write_lines(tmp_path / "bad.jsonl", good, line)
    with pytest.raises(RecordError, match=message) as raised:
        read_records(path)
    assert raised.value.line == 2 and f"bad.jsonl:2: {raised.value.message}" in str(raised.value)


def test_malformed_parquet_row_names_its_row(tmp_path: Path) -> None:
    import pyarrow
    import pyarrow.parquet

    path = tmp_path / "bad.parquet"
    rows = [{"prompt": "P", "chosen": "a", "rejected": "b"}, {"prompt": "P", "chosen": "a"}]
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    with pytest.raises(RecordError, match=r"bad\.parquet:2: cannot tell"):
        read_records(path)


def test_unknown_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match=r"\.jsonl or \.parquet"):
        read_records(write_lines(tmp_path / "rows.csv", "a,b"))


def test_ranking_gives_all_pairs_best_first_sharing_its_weight() -> None:
    ranking = Ranking("Q", ("a", "b", "c", "d"), annotator_id="x", weight=3.0)
    pairs = ranking.to_pairs()
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d"),
    ]  # fmt: skip
    assert all(p.weight == 0.5 and p.annotator_id == "x" and not p.tie for p in pairs)


def test_rewrite_is_preferred_to_its_original() -> None:
    pair = Rewrite("Q", "old", "new", annotator_id="x", weight=2.0).to_pair()
    assert pair == PairwisePreference("Q", "new", "old", annotator_id="x", weight=2.0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: PairwisePreference("P", "a", "b", strength=2, tie=True), "a tie has no strength"),
        (lambda: PairwisePreference("P", "a", "a"), "same text but not a tie"),
        (lambda: PairwisePreference("P", "a", "b", strength=True), "integer"),
        (lambda: PairwisePreference("P", "a", "b", annotator_id=""), "annotator_id"),
        (lambda: LikertRating("P", "R", {}, (1, 5)), "at least one attribute"),
        (lambda: LikertRating("P", "R", {"x": 1}, (5, 1)), "min < max"),
        (lambda: Ranking("P", ("only",)), "at least two"),
        (lambda: Rewrite("P", "same", "same"), "identical"),
        (lambda: Demonstration("P", "R", source="", weight=1.0), "source"),
        (lambda: Demonstration("P", "R", "s", weight=float("inf")), "finite"),
    ],
)
def test_invalid_records_are_refused_with_a_clear_message(
    build: Callable[[], object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_a_tie_may_list_identical_texts() -> None:
    assert PairwisePreference("P", "same", "same", tie=True).tie
