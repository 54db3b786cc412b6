"""Creating, building and opening snapshots, on the real database and files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from django.db import transaction

from tests.webapp.annotation.conftest import AddItems, MakeProject
from tests.webapp.exports.conftest import AddLabel, response_ids, win
from webapp import background
from webapp.accounts.models import User
from webapp.annotation.models import Flag, FlagStatus, Label, ModelVersion, Project
from webapp.annotation.questions import TaskType
from webapp.exports import building
from webapp.exports.models import ExportSnapshot, SnapshotStatus
from webapp.exports.services import (
    ExportError,
    create_snapshot,
    open_snapshot_file,
    snapshot_files,
)
from webapp.exports.writers import sha256_of

pytestmark = pytest.mark.django_db

Build = Callable[..., ExportSnapshot]


@pytest.fixture
def pairwise(make_project: MakeProject, add_items: AddItems) -> Project:
    project = make_project(TaskType.PAIRWISE, slug="pairs")
    add_items(project, prompts=4, responses=2)
    return project


@pytest.fixture
def build(researcher: User) -> Build:
    """build(project, formats, **create_snapshot kwargs): create and build a snapshot here."""

    def run(project: Project, formats: list[str], **kwargs: Any) -> ExportSnapshot:
        filters = kwargs.pop("filters", {})
        snapshot = create_snapshot(
            project, researcher, filters, formats, run_in_background=False, **kwargs
        )
        assert building.run_snapshot(snapshot.pk) is True
        snapshot.refresh_from_db()
        assert snapshot.status == SnapshotStatus.SUCCEEDED, snapshot.error
        return snapshot

    return run


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def label_pairs(project: Project, annotators: list[User], add_label: AddLabel) -> None:
    """Item 0: both prefer left (strength 3, 1); item 1: a tie and a both-bad; item 2: one
    prefers right; item 3: unanswered."""
    first, second, third, _ = list(project.items.order_by("id"))
    a, b = annotators
    add_label(first, a, "preference", win(first, 0, 3))
    add_label(first, b, "preference", win(first, 0, 1))
    add_label(second, a, "preference", {"outcome": "tie", "winner": None, "strength": 0})
    add_label(second, b, "preference", {"outcome": "both_bad", "winner": None, "strength": 0})
    add_label(third, a, "preference", win(third, 1, 2), minutes=90)


@pytest.fixture
def labelled(
    pairwise: Project, annotator: User, second_annotator: User, add_label: AddLabel
) -> Project:
    label_pairs(pairwise, [annotator, second_annotator], add_label)
    return pairwise


def test_it_writes_strict_pairs_with_the_margin_and_counts_ties_and_both_bad(
    labelled: Project, build: Build, export_dir: Path
) -> None:
    snapshot = build(labelled, ["pairs_jsonl"], test_share=0.0)
    rows = read_jsonl(export_dir / str(snapshot.pk) / "pairs-train.jsonl")
    assert sorted(row["margin"] for row in rows) == [1.0, 2.0, 3.0]
    assert all(set(row) == {"prompt", "chosen", "rejected", "margin"} for row in rows)
    first = labelled.items.order_by("id").first()
    assert first is not None
    left = first.responses.get(pk=response_ids(first)[0]).text
    assert {row["chosen"] for row in rows if row["margin"] in (1.0, 3.0)} == {left}
    counts = snapshot.manifest["counts"]["pairs"]
    assert counts == {"strict_preferences": 3, "ties_excluded": 1, "both_bad_excluded": 1}
    assert (export_dir / str(snapshot.pk) / "pairs-test.jsonl").read_text() == ""


def test_ties_can_be_included_as_margin_zero_rows(labelled: Project, build: Build) -> None:
    snapshot = build(labelled, ["pairs_parquet"], options={"include_ties": True}, test_share=0.0)
    table = pq.read_table(snapshot_files(snapshot)[0])
    assert sorted(table.column("margin").to_pylist()) == [0.0, 1.0, 2.0, 3.0]
    assert snapshot.manifest["counts"]["pairs"]["both_bad_excluded"] == 1


def test_the_manifest_lists_every_file_with_rows_and_sha256(
    labelled: Project, build: Build, researcher: User
) -> None:
    snapshot = build(labelled, ["pairs_jsonl", "pairs_csv", "hh_parquet", "events_jsonl"])
    manifest = json.loads(snapshot_files(snapshot)[-1].read_text())
    assert manifest == snapshot.manifest
    names = [entry["name"] for entry in manifest["files"]]
    assert names == [
        "pairs-train.jsonl",
        "pairs-test.jsonl",
        "pairs-train.csv",
        "pairs-test.csv",
        "hh-train.parquet",
        "hh-test.parquet",
        "events.jsonl",
        "README.md",
    ]
    for entry, path in zip(manifest["files"], snapshot_files(snapshot), strict=False):
        assert entry["sha256"] == sha256_of(path) and entry["bytes"] == path.stat().st_size
    assert manifest["files"][0]["rows"] + manifest["files"][1]["rows"] == 3
    assert manifest["schema_version"] == 1 and manifest["created_by"] == researcher.username
    assert manifest["code_version"].startswith("0.1.0")
    assert manifest["filters"]["flagged"] == "exclude" and manifest["seed"] == 0
    assert manifest["counts"]["pairs"] == manifest["counts"]["hh"]  # each data set counts its own
    assert manifest["counts"]["pairs"]["strict_preferences"] == 3
    card = snapshot_files(snapshot)[-2].read_text()
    assert "Preference pairs" in card and "`margin`" in card and "pseudonyms" in card


def test_the_split_is_by_prompt_and_repeats_with_the_seed(
    make_project: MakeProject,
    add_items: AddItems,
    annotator: User,
    add_label: AddLabel,
    build: Build,
) -> None:
    project = make_project(TaskType.PAIRWISE)
    items = add_items(project, prompts=40, responses=4)  # two pairs per prompt
    for item in items:
        add_label(item, annotator, "preference", win(item, 0))

    def split_of_prompts(seed: int) -> dict[str, set[str]]:
        snapshot = build(project, ["pairs_jsonl"], seed=seed, test_share=0.3)
        files = {p.name: p for p in snapshot_files(snapshot)}
        return {
            split: {row["prompt"] for row in read_jsonl(files[f"pairs-{split}.jsonl"])}
            for split in ("train", "test")
        }

    first, again, other = split_of_prompts(1), split_of_prompts(1), split_of_prompts(2)
    assert first == again and first != other
    assert not first["train"] & first["test"]  # no prompt on both sides
    assert 4 <= len(first["test"]) <= 20


def test_events_name_annotators_by_a_salted_pseudonym_per_snapshot(
    labelled: Project, build: Build, annotator: User
) -> None:
    Label.objects.filter(annotator=annotator).update(undone_at="2026-11-01T13:00:00Z")
    one, two = (build(labelled, ["events_jsonl"]) for _ in range(2))
    rows = read_jsonl(snapshot_files(one)[0])
    assert {row["event"] for row in rows} == {"submitted", "label"}
    assert [row["at"] for row in rows] == sorted(row["at"] for row in rows)
    assert sum(1 for row in rows if row["undone_at"]) == 3  # undone labels stay in the log
    text = snapshot_files(one)[0].read_text()
    assert f'"{annotator.username}"' not in text
    assert all(row["annotator_id"].startswith("annotator-") for row in rows)
    names_one = {row["annotator_id"] for row in rows}
    names_two = {row["annotator_id"] for row in read_jsonl(snapshot_files(two)[0])}
    assert len(names_one) == 2 and not names_one & names_two
    assert one.salt not in text and one.salt not in json.dumps(one.manifest)


def test_the_manifest_names_filtered_annotators_by_their_pseudonyms_only(
    labelled: Project, build: Build, annotator: User
) -> None:
    snapshot = build(labelled, ["events_jsonl"], filters={"annotators": [annotator.username]})
    with open_snapshot_file(snapshot, "manifest.json") as handle:
        published = handle.read().decode()
    rows = read_jsonl(snapshot_files(snapshot)[0])
    assert f'"{annotator.username}"' not in published
    assert json.loads(published)["filters"]["annotators"] == [rows[0]["annotator_id"]]
    assert snapshot.manifest["filters"]["annotators"] == [rows[0]["annotator_id"]]


def test_filters_select_gold_flagged_annotators_versions_and_time(
    make_project: MakeProject,
    add_items: AddItems,
    annotator: User,
    second_annotator: User,
    add_label: AddLabel,
    build: Build,
) -> None:
    project = make_project(TaskType.PAIRWISE)
    old, new = (ModelVersion.objects.create(name=name) for name in ("v1", "v2"))
    plain = add_items(project, prompts=1, version=old)[0]
    gold = add_items(project, prompts=1, version=old, gold=True)[0]
    flagged = add_items(project, prompts=1, version=new)[0]
    Flag.objects.create(item=flagged, annotator=annotator, reason="unsafe")
    for item in (plain, gold, flagged):
        add_label(item, annotator, "preference", win(item, 0))
    add_label(plain, second_annotator, "preference", win(plain, 1), minutes=120)

    def prompts(**filters: Any) -> list[str]:
        snapshot = build(project, ["pairs_jsonl"], filters=filters, test_share=0.0)
        return sorted(row["prompt"][:8] for row in read_jsonl(snapshot_files(snapshot)[0]))

    assert prompts() == ["Prompt 0", "Prompt 0", "Prompt 1"]  # flagged excluded by default
    assert prompts(flagged="include", gold="exclude") == ["Prompt 0", "Prompt 0", "Prompt 2"]
    assert prompts(flagged="only") == ["Prompt 2"]
    assert prompts(gold="only") == ["Prompt 1"]
    assert prompts(annotators=[second_annotator.username]) == ["Prompt 0"]
    assert prompts(model_versions=["v2"], flagged="include") == ["Prompt 2"]
    assert prompts(since="2026-11-01T13:00:00Z") == ["Prompt 0"]
    assert prompts(until="2026-11-01T13:00") == ["Prompt 0", "Prompt 1"]
    Flag.objects.update(status=FlagStatus.DISMISSED, reviewed_at="2026-11-02T00:00Z")
    assert len(prompts()) == 4  # a dismissed flag withholds nothing


def test_min_agreement_keeps_items_whose_annotators_agree(labelled: Project, build: Build) -> None:
    snapshot = build(labelled, ["pairs_jsonl"], filters={"min_agreement": 0.9}, test_share=0.0)
    rows = read_jsonl(snapshot_files(snapshot)[0])
    assert sorted(row["margin"] for row in rows) == [1.0, 3.0]  # item 0 only: both chose left
    assert snapshot.manifest["counts"]["pairs"]["items_below_min_agreement"] == 2


@pytest.mark.parametrize(
    ("filters", "formats", "field", "message"),
    [
        ({}, ["pairs_xml"], "formats", "Unknown format(s): pairs_xml"),
        ({}, [], "formats", "Choose at least one format"),
        ({}, ["likert_jsonl"], "formats", "needs likert questions"),
        ({}, ["rankings_csv"], "formats", "Unknown format(s): rankings_csv"),
        ({"label_kinds": ["likert"]}, ["pairs_jsonl"], "formats", "leaves out"),
        ({"model_versions": ["v9"]}, ["pairs_jsonl"], "model_versions", "Unknown model version"),
        ({"annotators": ["nobody"]}, ["pairs_jsonl"], "annotators", "Unknown annotator"),
        ({"colour": "red"}, ["pairs_jsonl"], "colour", "Unknown filter(s): colour"),
        ({"since": "yesterday"}, ["pairs_jsonl"], "since", "ISO 8601"),
        ({"min_agreement": 2}, ["pairs_jsonl"], "min_agreement", "[0, 1]"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message_and_nothing_is_saved(
    pairwise: Project,
    researcher: User,
    filters: dict[str, Any],
    formats: list[str],
    field: str,
    message: str,
) -> None:
    with pytest.raises(ExportError) as raised:
        create_snapshot(pairwise, researcher, filters, formats)
    assert raised.value.status == 400 and raised.value.field == field
    assert message in raised.value.message
    assert not ExportSnapshot.objects.exists()


def test_a_model_name_uploaded_to_another_project_is_unknown_here(
    pairwise: Project, make_project: MakeProject, researcher: User
) -> None:
    elsewhere = make_project(TaskType.PAIRWISE, slug="elsewhere")
    ModelVersion.objects.create(name="gpt-x", project=elsewhere)
    with pytest.raises(ExportError) as raised:
        create_snapshot(pairwise, researcher, {"model_versions": ["gpt-x"]}, ["pairs_jsonl"])
    assert raised.value.field == "model_versions"
    assert "Unknown model version(s): gpt-x" in raised.value.message
    ModelVersion.objects.create(name="gpt-x", project=pairwise)
    create_snapshot(pairwise, researcher, {"model_versions": ["gpt-x"]}, ["pairs_jsonl"])


def test_a_snapshot_is_queued_by_name_after_commit(
    pairwise: Project,
    researcher: User,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    sent: list[tuple[str, list[int]]] = []
    monkeypatch.setattr(background.app, "send_task", lambda name, args: sent.append((name, args)))
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        snapshot = create_snapshot(pairwise, researcher, {}, ["pairs_jsonl"])
        assert sent == []
    assert sent == [("exports.build_snapshot", [snapshot.pk])]
    assert snapshot.status == SnapshotStatus.QUEUED


def test_a_snapshot_is_built_once_however_often_its_task_runs(
    labelled: Project, build: Build
) -> None:
    snapshot = build(labelled, ["pairs_jsonl"])
    completed = snapshot.completed_at
    assert building.run_snapshot(snapshot.pk) is False
    snapshot.refresh_from_db()
    assert snapshot.completed_at == completed and snapshot.status == SnapshotStatus.SUCCEEDED


def test_a_crash_leaves_no_snapshot_that_looks_complete(
    labelled: Project, researcher: User, export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = create_snapshot(
        labelled, researcher, {}, ["pairs_jsonl", "events_csv"], run_in_background=False
    )

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(building, "_manifest", crash)
    assert building.run_snapshot(snapshot.pk) is False
    snapshot.refresh_from_db()
    assert snapshot.status == SnapshotStatus.FAILED
    assert snapshot.error == "OSError: disk full"
    assert list(export_dir.iterdir()) == []  # the temporary directory is gone, no final one
    with pytest.raises(ExportError) as raised:
        open_snapshot_file(snapshot, "pairs-train.jsonl")
    assert raised.value.status == 409


def test_a_snapshot_whose_worker_died_is_taken_over_and_the_old_claim_is_void(
    labelled: Project, researcher: User, export_dir: Path
) -> None:
    snapshot = create_snapshot(labelled, researcher, {}, ["pairs_jsonl"], run_in_background=False)
    assert building.claim(snapshot.pk) is not None
    (export_dir / f"{snapshot.pk}.tmp-dead").mkdir(parents=True)  # what the first worker left
    assert building.run_snapshot(snapshot.pk) is False  # its heartbeat is fresh: hands off
    ExportSnapshot.objects.filter(pk=snapshot.pk).update(heartbeat_at="2026-01-01T00:00Z")
    first_claim = ExportSnapshot.objects.get(pk=snapshot.pk)
    assert building.run_snapshot(snapshot.pk) is True
    # The first worker, slow rather than dead, can no longer record anything.
    assert building._mine(first_claim).update(status=SnapshotStatus.FAILED) == 0
    snapshot.refresh_from_db()
    assert snapshot.status == SnapshotStatus.SUCCEEDED
    assert [path.name for path in export_dir.iterdir()] == [str(snapshot.pk)]


@pytest.mark.parametrize("name", ["../manifest.json", "..", "/etc/passwd", "secret.txt", ""])
def test_only_the_snapshots_own_files_can_be_opened(
    labelled: Project, build: Build, name: str
) -> None:
    snapshot = build(labelled, ["pairs_jsonl"])
    with pytest.raises(ExportError) as raised:
        open_snapshot_file(snapshot, name)
    assert raised.value.status == 404
    with open_snapshot_file(snapshot, "manifest.json") as handle:
        assert json.load(handle)["snapshot_id"] == snapshot.pk


def test_rankings_are_written_as_lists_and_as_pairs_by_policy(
    make_project: MakeProject,
    add_items: AddItems,
    annotator: User,
    add_label: AddLabel,
    build: Build,
) -> None:
    project = make_project(TaskType.RANKING, ranking_size=3)
    (item,) = add_items(project, prompts=1, responses=3)
    order = response_ids(item)[::-1]
    add_label(item, annotator, "ranking", {"order": order})
    texts = [item.responses.get(pk=pk).text for pk in order]
    snapshot = build(
        project,
        ["rankings_parquet", "ranking_pairs_jsonl"],
        test_share=0.0,
        options={"ranking_pairs": "adjacent"},
    )
    files = {path.name: path for path in snapshot_files(snapshot)}
    table = pq.read_table(files["rankings-train.parquet"])
    assert table.column("responses").to_pylist() == [texts]
    pairs = read_jsonl(files["ranking_pairs-train.jsonl"])
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        (texts[0], texts[1]),
        (texts[1], texts[2]),
    ]


def test_likert_raw_aggregated_and_sft_rows_come_from_ratings_and_rewrites(
    make_project: MakeProject,
    add_items: AddItems,
    annotator: User,
    second_annotator: User,
    add_label: AddLabel,
    build: Build,
) -> None:
    rating = make_project(TaskType.RATING)
    top, middling = add_items(rating, prompts=2, responses=1)
    for person in (annotator, second_annotator):
        add_label(top, person, "helpfulness", {"score": 5})
        add_label(top, person, "correctness", {"score": 5})
    add_label(middling, annotator, "helpfulness", {"score": 2})
    snapshot = build(
        rating, ["likert_csv", "likert_aggregated_parquet", "sft_jsonl"], test_share=0.0
    )
    files = {path.name: path for path in snapshot_files(snapshot)}
    raw = pd.read_csv(files["likert-train.csv"])
    assert list(raw.columns) == ["prompt", "response", "annotator_id", "helpfulness", "correctness"]
    assert len(raw) == 3 and raw["correctness"].isna().sum() == 1
    aggregated = pq.read_table(files["likert_aggregated-train.parquet"]).to_pylist()
    assert [(r["helpfulness"], r["num_annotators"]) for r in aggregated] == [(5.0, 2), (2.0, 1)]
    (demo,) = read_jsonl(files["sft-train.jsonl"])
    assert demo["source"] == "top_rated" and demo["completion"] == top.responses.get().text
    assert snapshot.manifest["likert_attributes"] == {"helpfulness": [1, 5], "correctness": [1, 5]}

    rewriting = make_project(TaskType.REWRITE)
    (item,) = add_items(rewriting, prompts=1, responses=1)
    add_label(item, annotator, "rewrite", {"text": "A much better answer."})
    (demo,) = read_jsonl(snapshot_files(build(rewriting, ["sft_jsonl"], test_share=0.0))[0])
    assert demo == {
        "prompt": item.prompt.text,
        "completion": "A much better answer.",
        "source": "rewrite",
    }
