"""The export task: in process (a redelivered task does nothing) and on a real worker on Redis,
queued by `manage.py export` from another process, built with progress on the CPU queue."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.webapp.annotation.conftest import AddItems, MakeProject, add_items, make_project  # noqa: F401 (fixtures)
from tests.webapp.exports.conftest import AddLabel, add_label, export_dir, win  # noqa: F401 (fixtures)
from tests.workers.conftest import run_manage
from webapp.accounts.models import User
from webapp.annotation.models import Project
from webapp.annotation.questions import TaskType
from webapp.exports.models import ExportSnapshot, SnapshotStatus
from webapp.exports.services import create_snapshot
from workers.exports import build_snapshot

StartWorker = Callable[[str | None], dict[str, str]]


@pytest.fixture
def project(
    make_project: MakeProject,  # noqa: F811
    add_items: AddItems,  # noqa: F811
    annotator: User,
    add_label: AddLabel,  # noqa: F811
) -> Project:
    project = make_project(TaskType.PAIRWISE, slug="worker-export")
    for item in add_items(project, prompts=5):
        add_label(item, annotator, "preference", win(item, 0))
    return project


@pytest.mark.django_db
def test_the_task_run_in_process_builds_once(project: Project, researcher: User) -> None:
    snapshot = create_snapshot(project, researcher, {}, ["pairs_jsonl"], run_in_background=False)
    assert build_snapshot.apply(args=[snapshot.pk]).get() is True
    assert build_snapshot.apply(args=[snapshot.pk]).get() is False  # redelivered: no-op
    snapshot.refresh_from_db()
    assert snapshot.status == SnapshotStatus.SUCCEEDED and snapshot.rows_done == 5


@pytest.mark.django_db
def test_a_failing_build_is_recorded_not_raised(project: Project, researcher: User) -> None:
    snapshot = create_snapshot(project, researcher, {}, ["pairs_jsonl"], run_in_background=False)
    ExportSnapshot.objects.filter(pk=snapshot.pk).update(options={})  # a corrupted row
    assert build_snapshot.apply(args=[snapshot.pk]).get() is False
    snapshot.refresh_from_db()
    assert snapshot.status == SnapshotStatus.FAILED and "include_ties" in snapshot.error


@pytest.mark.slow
@pytest.mark.usefixtures("postgres")
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_builds_a_snapshot_queued_by_the_command(
    project: Project, redis_url: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    env = start_worker(redis_url)
    result = run_manage(
        env,
        "export",
        "--project",
        project.slug,
        "--format",
        "pairs_parquet",
        "--format",
        "events_jsonl",
        "--test-share",
        "0",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    snapshot = ExportSnapshot.objects.get()
    deadline = time.monotonic() + 90
    while not snapshot.is_finished and time.monotonic() < deadline:
        time.sleep(0.2)
        snapshot.refresh_from_db()
    assert snapshot.status == SnapshotStatus.SUCCEEDED, (tmp_path / "worker.log").read_text()
    assert snapshot.started_at is not None and snapshot.rows_done == snapshot.rows_total > 0
    folder = tmp_path / "data" / "exports" / str(snapshot.pk)  # the worker's EXPORT_DIR
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["files"][0] == snapshot.manifest["files"][0]
    assert manifest["files"][0]["rows"] == 5
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]
