"""`manage.py export`: queued or built here with a progress bar, and clear errors."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from tests.webapp.annotation.conftest import AddItems, MakeProject
from tests.webapp.exports.conftest import AddLabel, win
from webapp.accounts.models import User
from webapp.annotation.models import Project
from webapp.annotation.questions import TaskType
from webapp.exports.models import ExportSnapshot, SnapshotStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(
    make_project: MakeProject, add_items: AddItems, annotator: User, add_label: AddLabel
) -> Project:
    project = make_project(TaskType.PAIRWISE, slug="cli")
    for item in add_items(project, prompts=3):
        add_label(item, annotator, "preference", win(item, 1))
    return project


def export(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("export", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_sync_builds_the_snapshot_here_with_a_progress_bar(
    project: Project, researcher: User, export_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = export(
        "--project",
        "cli",
        "--format",
        "pairs_jsonl",
        "--format",
        "hh_csv",
        "--filter",
        "gold=exclude",
        "--filter",
        "annotators=ann",
        "--option",
        "include_ties=true",
        "--seed",
        "5",
        "--test-share",
        "0",
        "--user",
        researcher.username,
        "--sync",
    )
    snapshot = ExportSnapshot.objects.get()
    assert snapshot.status == SnapshotStatus.SUCCEEDED and snapshot.created_by == researcher
    assert snapshot.filters["annotators"] == ["ann"] and snapshot.options["include_ties"] is True
    assert "pairs-train.jsonl" in out and "3 rows" in out and str(export_dir) in out
    assert "rows" in capsys.readouterr().err  # tqdm draws on stderr
    lines = (export_dir / str(snapshot.pk) / "pairs-train.jsonl").read_text().splitlines()
    assert [json.loads(line)["margin"] for line in lines] == [2.0, 2.0, 2.0]


def test_without_sync_the_snapshot_is_queued(
    project: Project, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    from webapp import background

    sent: list[str] = []
    monkeypatch.setattr(background.app, "send_task", lambda name, args: sent.append(name))
    with django_capture_on_commit_callbacks(execute=True):
        out, _ = export("--project", "cli", "--format", "events_parquet")
    assert "queued" in out and sent == ["exports.build_snapshot"]
    assert ExportSnapshot.objects.get().status == SnapshotStatus.QUEUED


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--project", "nope", "--format", "pairs_jsonl"], "No project with the slug 'nope'"),
        (["--project", "cli", "--format", "pairs_xml"], "Unknown format(s): pairs_xml"),
        (["--project", "cli", "--format", "pairs_jsonl", "--filter", "gold"], "NAME=VALUE"),
        (["--project", "cli", "--format", "pairs_jsonl", "--filter", "size=3"], "Unknown filter"),
        (["--project", "cli", "--format", "pairs_jsonl", "--filter", "gold=some"], "gold must be"),
        (["--project", "cli", "--format", "pairs_jsonl", "--user", "ghost"], "No user 'ghost'"),
    ],
)
def test_bad_input_is_one_clear_error(project: Project, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        export(*args)
    assert not ExportSnapshot.objects.exists()
