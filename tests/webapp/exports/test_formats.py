"""Row builders, conversion policies, pseudonyms, the split and the writers: plain values, no
database."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from webapp.exports import rows
from webapp.exports.formats import DATASETS, FORMATS, file_names, parse_format, schema
from webapp.exports.rows import LabelFact, Policy, Scale
from webapp.exports.writers import BATCH_ROWS, open_writer


def fact(
    kind: str,
    value: dict[str, Any],
    *,
    item: int = 1,
    annotator: int = 7,
    question: str = "q",
    responses: int = 2,
    prompt: str = "Why?",
) -> LabelFact:
    return {
        "item_id": item,
        "prompt": prompt,
        "prompt_digest": f"digest-{prompt}",
        "responses": [(100 + n, f"response {n}") for n in range(responses)],
        "annotator_id": annotator,
        "question": question,
        "kind": kind,
        "value": value,
    }


def pairs_of(facts: list[LabelFact], policy: Policy) -> list[dict[str, Any]]:
    return [row for _, row in rows.pair_rows(rows.by_item(facts), policy)]


WIN_RIGHT = {"outcome": "win", "winner": 101, "strength": 3}
TIE = {"outcome": "tie", "winner": None, "strength": 0}
BOTH_BAD = {"outcome": "both_bad", "winner": None, "strength": 0}


def test_a_strict_preference_is_a_pair_with_the_strength_as_margin() -> None:
    (row,) = pairs_of([fact("preference", WIN_RIGHT)], Policy(salt="s"))
    assert row == {
        "prompt": "Why?",
        "chosen": "response 1",
        "rejected": "response 0",
        "margin": 3.0,
    }


def test_ties_and_both_bad_are_counted_and_left_out_unless_ties_are_asked_for() -> None:
    facts = [fact("preference", TIE, annotator=1), fact("preference", BOTH_BAD, annotator=2)]
    policy = Policy(salt="s")
    assert pairs_of(facts, policy) == []
    assert policy.counts == {"ties_excluded": 1, "both_bad_excluded": 1}
    with_ties = Policy(salt="s", include_ties=True)
    (tie,) = pairs_of(facts, with_ties)
    assert (tie["chosen"], tie["rejected"], tie["margin"]) == ("response 0", "response 1", 0.0)
    assert with_ties.counts == {"ties_included": 1, "both_bad_excluded": 1}


def test_labels_on_a_blank_response_are_counted_and_left_out_but_a_rewrite_kept() -> None:
    """People judge a model's empty answer (it should lose), but no row may hold one: every
    trainer refuses a response without text, so the next round would fail on it."""

    def blank_first(label: LabelFact) -> LabelFact:
        (first, _), *rest = label["responses"]
        return {**label, "responses": [(first, " \n"), *rest]}

    judged = [blank_first(fact("preference", WIN_RIGHT, annotator=a)) for a in (1, 2)]
    rewritten = [
        blank_first(fact("rewrite", {"text": "an answer"}, item=2, responses=1)),
        blank_first(fact("likert", {"score": 5}, item=2, question="helpfulness", responses=1)),
    ]
    fine = [fact("preference", WIN_RIGHT, item=3)]
    policy = Policy(salt="s")
    items = list(rows.with_text(rows.by_item([*judged, *rewritten, *fine]), policy))
    assert [[label["kind"] for label in labels] for labels in items] == [
        ["rewrite"],
        ["preference"],
    ]
    assert policy.counts == {"labels_on_blank_responses_excluded": 3}
    assert [row["chosen"] for _, row in rows.pair_rows(items, policy)] == ["response 1"]


def test_strict_answers_on_an_item_showing_one_text_twice_are_counted_and_left_out() -> None:
    """A strict preference between a text and itself would be a row with chosen == rejected,
    a ranking would list one text twice: every trainer refuses both. White space around a
    text is nothing people can tell apart, so it does not make two texts different. Ties,
    "both bad" and rewrites order nothing and are kept."""

    def repeated(label: LabelFact) -> LabelFact:
        (first, text), (second, _), *rest = label["responses"]
        return {**label, "responses": [(first, text), (second, f" {text}\n"), *rest]}

    strict = repeated(fact("preference", WIN_RIGHT, annotator=1))
    kept = [
        repeated(fact("preference", TIE, annotator=2)),
        repeated(fact("preference", BOTH_BAD, annotator=3)),
        repeated(fact("rewrite", {"text": "an answer"}, annotator=4, question="w")),
    ]
    ranked = repeated(fact("ranking", {"order": [102, 100, 101]}, item=3, responses=3))
    fine = [fact("preference", WIN_RIGHT, item=2), fact("ranking", {"order": [101, 100]}, item=2)]
    policy = Policy(salt="s")
    given = [strict, *kept, ranked, *fine]
    items = list(rows.with_distinct_texts(rows.by_item(given), policy))
    assert [[label["kind"] for label in labels] for labels in items] == [
        ["preference", "preference", "rewrite"],
        ["preference", "ranking"],
    ]
    assert policy.counts == {"labels_on_identical_responses_excluded": 2}
    assert [row["chosen"] for _, row in rows.pair_rows(items, policy)] == ["response 1"]
    assert [row["responses"] for _, row in rows.ranking_rows(items, policy)] == [
        ["response 1", "response 0"]
    ]


def test_the_hh_form_is_a_two_turn_transcript() -> None:
    (row,) = [r for _, r in rows.hh_rows([[fact("preference", WIN_RIGHT)]], Policy(salt="s"))]
    assert row == {
        "chosen": "\n\nHuman: Why?\n\nAssistant: response 1",
        "rejected": "\n\nHuman: Why?\n\nAssistant: response 0",
    }


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("all", [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")]),
        ("adjacent", [("a", "b"), ("b", "c"), ("c", "d")]),
        ("best_vs_rest", [("a", "b"), ("a", "c"), ("a", "d")]),
    ],
)
def test_rankings_become_pairs_by_the_chosen_policy(
    policy: str, expected: list[tuple[str, str]]
) -> None:
    assert rows.ranking_to_pairs(["a", "b", "c", "d"], policy) == expected


def test_a_ranking_row_lists_the_texts_best_first() -> None:
    ranked = fact("ranking", {"order": [102, 100, 101]}, responses=3)
    ((_, row),) = rows.ranking_rows([[ranked]], Policy(salt="s"))
    assert row["responses"] == ["response 2", "response 0", "response 1"]
    assert row["annotator_id"] == rows.pseudonym("s", 7)


def test_likert_rows_have_one_column_per_attribute_and_aggregate_to_means() -> None:
    scales = {"helpfulness": Scale(1, 5), "correctness": Scale(1, 5)}
    facts = [
        fact("likert", {"score": 5}, annotator=1, question="helpfulness", responses=1),
        fact("likert", {"score": 4}, annotator=1, question="correctness", responses=1),
        fact("likert", {"score": 3}, annotator=2, question="helpfulness", responses=1),
    ]
    policy = Policy(salt="s", likert_scales=scales)
    raw = [row for _, row in rows.likert_rows([facts], policy)]
    assert [(r["helpfulness"], r["correctness"]) for r in raw] == [(5, 4), (3, None)]
    ((_, aggregated),) = rows.likert_aggregated_rows([facts], policy)
    assert aggregated == {
        "prompt": "Why?",
        "response": "response 0",
        "helpfulness": 4.0,
        "correctness": 4.0,
        "num_annotators": 2,
    }


def test_sft_takes_rewrites_and_responses_at_the_top_of_the_scale() -> None:
    scales = {"helpfulness": Scale(1, 5)}
    top = [
        fact("likert", {"score": 5}, item=1, annotator=a, question="helpfulness") for a in (1, 2)
    ]
    mixed = [
        fact("likert", {"score": s}, item=2, annotator=a, question="helpfulness")
        for a, s in ((1, 5), (2, 4))
    ]
    rewrite = [fact("rewrite", {"text": "better"}, item=3, responses=1)]
    strict = Policy(salt="s", likert_scales=scales)
    demos = [row for _, row in rows.sft_rows([top, mixed, rewrite], strict)]
    assert [(d["completion"], d["source"]) for d in demos] == [
        ("response 0", "top_rated"),
        ("better", "rewrite"),
    ]
    lenient = Policy(salt="s", likert_scales=scales, sft_min_score=0.8)  # mean 4.5 -> 0.875
    assert len(list(rows.sft_rows([top, mixed, rewrite], lenient))) == 3


def test_agreement_is_the_share_of_the_most_common_answer() -> None:
    left = {"outcome": "win", "winner": 100, "strength": 1}
    strongly_left = {"outcome": "win", "winner": 100, "strength": 3}
    assert rows.agreement("preference", [left, strongly_left, WIN_RIGHT]) == pytest.approx(2 / 3)
    assert rows.agreement("preference", [left]) is None
    assert rows.agreement("rewrite", [{"text": "a"}, {"text": "b"}]) is None
    split = [[fact("preference", left, annotator=1), fact("preference", WIN_RIGHT, annotator=2)]]
    policy = Policy(salt="s", min_agreement=0.6)
    assert list(rows.agreeing(split, policy)) == []
    assert policy.counts["items_below_min_agreement"] == 1


def test_pseudonyms_are_stable_per_salt_and_differ_across_salts() -> None:
    assert rows.pseudonym("a", 1) == rows.pseudonym("a", 1) != rows.pseudonym("b", 1)
    assert rows.pseudonym("a", 1) != rows.pseudonym("a", 2)
    assert re.fullmatch(r"annotator-[0-9a-f]{12}", rows.pseudonym("a", 1))


def test_the_split_depends_on_prompt_and_seed_and_honours_the_share() -> None:
    digests = [f"prompt-{n}" for n in range(2000)]
    tests = [d for d in digests if rows.split_of(d, 3, 0.2) == "test"]
    assert 300 <= len(tests) <= 500
    assert tests == [d for d in digests if rows.split_of(d, 3, 0.2) == "test"]
    assert tests != [d for d in digests if rows.split_of(d, 4, 0.2) == "test"]
    assert all(rows.split_of(d, 3, 0.0) == "train" for d in digests)


def test_every_format_names_a_data_set_and_a_file_type() -> None:
    assert "rankings_csv" not in FORMATS  # a list column has no CSV form
    for name in FORMATS:
        dataset, file_type = parse_format(name)
        assert f"{dataset.name}_{file_type}" == name
    with pytest.raises(KeyError):
        parse_format("pairs_xml")
    assert file_names(DATASETS["events"], "csv") == {"all": "events.csv"}


@pytest.mark.parametrize("file_type", ["jsonl", "parquet", "csv"])
def test_an_empty_file_still_has_the_data_sets_columns(tmp_path: Path, file_type: str) -> None:
    path = tmp_path / f"pairs.{file_type}"
    writer = open_writer(path, file_type, schema(DATASETS["pairs"]))
    writer.close()
    if file_type == "parquet":
        assert pq.read_schema(path).names == ["prompt", "chosen", "rejected", "margin"]
    elif file_type == "csv":
        assert path.read_text().strip() == "prompt,chosen,rejected,margin"
    else:
        assert path.read_text() == ""


def test_the_parquet_writer_streams_batches_with_the_schemas_types(tmp_path: Path) -> None:
    path = tmp_path / "likert.parquet"
    columns = schema(DATASETS["likert"], ["helpfulness"])
    writer = open_writer(path, "parquet", columns)
    count = BATCH_ROWS * 2 + 3
    for n in range(count):
        writer.write(
            {"prompt": f"p{n}", "response": "r", "annotator_id": "a", "helpfulness": n % 5}
        )
    writer.close()
    parquet = pq.ParquetFile(path)
    assert parquet.metadata.num_rows == count and parquet.metadata.num_row_groups >= 3
    assert parquet.schema_arrow == columns


def test_csv_and_jsonl_write_lists_and_times_as_text(tmp_path: Path) -> None:
    row = {"prompt": "p, with a comma", "responses": ["a", "b"], "annotator_id": "x"}
    for file_type in ("jsonl", "csv"):
        writer = open_writer(tmp_path / f"r.{file_type}", file_type, schema(DATASETS["rankings"]))
        writer.write(row)
        writer.close()
    assert json.loads((tmp_path / "r.jsonl").read_text()) == row
    assert '"[""a"", ""b""]"' in (tmp_path / "r.csv").read_text()
