"""Building a snapshot: claim it, stream each data set to its files, write the dataset card and
the manifest last, and only then rename the directory to its final name.

Called by the Celery task (workers/exports.py) and by `manage.py export --sync`. The state moves
only by conditional updates: claiming QUEUED -> RUNNING (or taking over a RUNNING snapshot whose
heartbeat stopped: its worker died), then RUNNING -> SUCCEEDED | FAILED. A crash leaves at most a
`<id>.tmp-*` directory, never one that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from webapp.accounts.models import User
from webapp.exports import rows as builders
from webapp.exports import source
from webapp.exports.dataset_card import dataset_card
from webapp.exports.formats import (
    DATASETS,
    SCHEMA_VERSION,
    Dataset,
    file_names,
    parse_format,
    schema,
)
from webapp.exports.models import ExportSnapshot, SnapshotStatus
from webapp.exports.writers import open_writer, sha256_of

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CARD = "README.md"
HEARTBEAT_EVERY_S = 2.0
# A RUNNING snapshot without a heartbeat for this long lost its worker and may be taken over.
STALE_AFTER = timedelta(minutes=10)

ProgressCallback = Callable[[int, int, str], None]


def snapshot_dir(snapshot: ExportSnapshot) -> Path:
    return Path(settings.EXPORT_DIR) / str(snapshot.pk)


def claim(snapshot_id: int) -> datetime | None:
    """Take the snapshot for building; None if it is not waiting (built, failed, or being
    built by a live worker): a redelivered task then does nothing. The claim's time is its
    token: every later update of this build names it, so a worker that was taken over (its
    heartbeat stopped, but it was slow, not dead) can no longer change the snapshot."""
    now = timezone.now()
    waiting = Q(status=SnapshotStatus.QUEUED) | Q(
        status=SnapshotStatus.RUNNING, heartbeat_at__lt=now - STALE_AFTER
    )
    claimed = ExportSnapshot.objects.filter(waiting, pk=snapshot_id).update(
        status=SnapshotStatus.RUNNING, started_at=now, heartbeat_at=now, rows_done=0
    )
    return now if claimed == 1 else None


def _mine(snapshot: ExportSnapshot) -> QuerySet[ExportSnapshot]:
    return ExportSnapshot.objects.filter(
        pk=snapshot.pk, status=SnapshotStatus.RUNNING, started_at=snapshot.started_at
    )


def run_snapshot(snapshot_id: int, on_progress: ProgressCallback | None = None) -> bool:
    """Claim and build the snapshot; True if this call built it. A failure is recorded on the
    snapshot (FAILED, with the reason) and its temporary files removed."""
    claimed_at = claim(snapshot_id)
    if claimed_at is None:
        return False
    snapshot = ExportSnapshot.objects.select_related("project", "created_by").get(pk=snapshot_id)
    snapshot.started_at = claimed_at
    try:
        manifest = build(snapshot, on_progress)
    except Exception as error:
        logger.exception("export snapshot %s failed", snapshot_id)
        _mine(snapshot).update(
            status=SnapshotStatus.FAILED,
            error=f"{type(error).__name__}: {error}",
            completed_at=timezone.now(),
        )
        return False
    if on_progress is not None:
        on_progress(snapshot.rows_total, snapshot.rows_total, "")
    built = _mine(snapshot).update(
        status=SnapshotStatus.SUCCEEDED,
        manifest=manifest,
        completed_at=datetime.fromisoformat(manifest["completed_at"]),
        rows_done=snapshot.rows_total,
        current_file="",
    )
    return built == 1


class Progress:
    """Rows read so far, written to the snapshot's row every few seconds (the heartbeat)."""

    def __init__(self, snapshot: ExportSnapshot, callback: ProgressCallback | None) -> None:
        self.snapshot, self.callback = snapshot, callback
        self.done, self.current_file, self._last = 0, "", 0.0

    def start_file(self, name: str) -> None:
        self.current_file = name
        self._save(force=True)

    def counted(self, facts: Iterator[Any]) -> Iterator[Any]:
        for fact in facts:
            self.done += 1
            if self.done % 1000 == 0:
                self._save()
            yield fact

    def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < HEARTBEAT_EVERY_S:
            return
        self._last = now
        _mine(self.snapshot).update(
            rows_done=self.done, current_file=self.current_file, heartbeat_at=timezone.now()
        )
        if self.callback is not None:
            self.callback(self.done, self.snapshot.rows_total, self.current_file)


def build(snapshot: ExportSnapshot, on_progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Write every file of the snapshot and rename its directory into place; the manifest."""
    final = snapshot_dir(snapshot)
    Path(settings.EXPORT_DIR).mkdir(parents=True, exist_ok=True)
    # Left by a worker that died (or was taken over): its unfinished directories, or a complete
    # one renamed just before it could record success. Neither was ever marked SUCCEEDED.
    for stale in [final, *final.parent.glob(f"{snapshot.pk}.tmp-*")]:
        if stale.exists():
            shutil.rmtree(stale)
    work = final.with_name(f"{snapshot.pk}.tmp-{secrets.token_hex(6)}")
    work.mkdir()
    try:
        policy = _policy(snapshot)
        plan = _plan(snapshot)
        snapshot.rows_total = sum(_estimate(snapshot, dataset) for dataset in plan)
        _mine(snapshot).update(rows_total=snapshot.rows_total)
        progress = Progress(snapshot, on_progress)
        files: list[dict[str, Any]] = []
        counts: dict[str, dict[str, int]] = {}
        for dataset, file_types in plan.items():
            policy.counts = Counter()
            files += _write_dataset(snapshot, dataset, file_types, policy, work, progress)
            counts[dataset.name] = dict(sorted(policy.counts.items()))
        manifest = _manifest(snapshot, files, policy, counts)
        (work / CARD).write_text(dataset_card(manifest, snapshot.project), encoding="utf-8")
        manifest["files"].append(_file_entry(work / CARD, dataset="card", split="all", rows=None))
        _write_json(work / MANIFEST, manifest)
        os.replace(work, final)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return manifest


def _policy(snapshot: ExportSnapshot) -> builders.Policy:
    options = snapshot.options
    return builders.Policy(
        salt=snapshot.salt,
        seed=snapshot.seed,
        test_share=snapshot.test_share,
        include_ties=options["include_ties"],
        ranking_pairs=options["ranking_pairs"],
        sft_min_score=options["sft_min_score"],
        min_agreement=snapshot.filters["min_agreement"],
        likert_scales=source.likert_scales(snapshot.project),
    )


def _plan(snapshot: ExportSnapshot) -> dict[Dataset, list[str]]:
    """Each data set asked for, with its file types: one read of the data writes them all."""
    plan: dict[Dataset, list[str]] = {}
    for name in snapshot.formats:
        dataset, file_type = parse_format(name)
        plan.setdefault(dataset, []).append(file_type)
    return plan


def _estimate(snapshot: ExportSnapshot, dataset: Dataset) -> int:
    if not dataset.kinds:
        return source.count_events(snapshot.project, snapshot.filters)
    kinds = source.kinds_for(dataset.kinds, snapshot.filters)
    return source.estimate(snapshot.project, snapshot.filters, kinds)


def _rows(
    snapshot: ExportSnapshot, dataset: Dataset, policy: builders.Policy, progress: Progress
) -> Iterator[tuple[str, dict[str, Any]]]:
    project, filters = snapshot.project, snapshot.filters
    if not dataset.kinds:
        for event in progress.counted(source.events(project, filters)):
            yield "all", builders.event_row(event, policy.salt)
        return
    kinds = source.kinds_for(dataset.kinds, filters)
    if not kinds:
        return
    facts = progress.counted(source.label_facts(project, filters, kinds))
    items = builders.with_text(builders.agreeing(builders.by_item(facts), policy), policy)
    items = builders.with_distinct_texts(items, policy)
    yield from builders.BUILDERS[dataset.name](items, policy)


def _write_dataset(
    snapshot: ExportSnapshot,
    dataset: Dataset,
    file_types: list[str],
    policy: builders.Policy,
    work: Path,
    progress: Progress,
) -> list[dict[str, Any]]:
    columns = schema(dataset, list(policy.likert_scales))
    opened = [
        (name, split, open_writer(work / name, file_type, columns))
        for file_type in file_types
        for split, name in file_names(dataset, file_type).items()
    ]
    progress.start_file(", ".join(name for name, _, _ in opened))
    try:
        for split, row in _rows(snapshot, dataset, policy, progress):
            for _, file_split, writer in opened:
                if file_split == split:
                    writer.write(row)
    finally:
        for _, _, writer in opened:
            writer.close()
    return [
        _file_entry(work / name, dataset=dataset.name, split=split, rows=writer.rows)
        for name, split, writer in opened
    ]


def _file_entry(path: Path, *, dataset: str, split: str, rows: int | None) -> dict[str, Any]:
    return {
        "name": path.name,
        "dataset": dataset,
        "split": split,
        "rows": rows,
        "bytes": path.stat().st_size,
        "sha256": sha256_of(path),
    }


def _manifest(
    snapshot: ExportSnapshot,
    files: list[dict[str, Any]],
    policy: builders.Policy,
    counts: dict[str, dict[str, int]],
) -> dict[str, Any]:
    creator = snapshot.created_by
    return {
        "schema_version": SCHEMA_VERSION,
        "snapshot_id": snapshot.pk,
        "project": {"slug": snapshot.project.slug, "name": snapshot.project.name},
        "filters": _published_filters(snapshot, policy.salt),
        "options": snapshot.options,
        "formats": snapshot.formats,
        "seed": snapshot.seed,
        "test_share": snapshot.test_share,
        "likert_attributes": {
            name: [scale.low, scale.high] for name, scale in policy.likert_scales.items()
        },
        "counts": counts,  # per data set: what the policies kept and left out
        "files": files,
        "code_version": code_version(),
        "created_by": creator.username if creator else None,
        "created_at": snapshot.created_at.isoformat(),
        "completed_at": timezone.now().isoformat(),
        "datasets": {
            name: DATASETS[name].description for name in dict.fromkeys(f["dataset"] for f in files)
        },
    }


def _published_filters(snapshot: ExportSnapshot, salt: str) -> dict[str, Any]:
    """The filters as the snapshot publishes them: annotators by their pseudonyms in this
    snapshot, never by username (the files name nobody)."""
    names = snapshot.filters.get("annotators") or []
    ids = User.objects.filter(username__in=names).values_list("pk", flat=True)
    pseudonyms = sorted(builders.pseudonym(salt, pk) for pk in ids)
    published: dict[str, Any] = {**snapshot.filters, "annotators": pseudonyms}
    return published


def _write_json(path: Path, value: Any) -> None:
    with path.open("w", encoding="utf-8") as file:
        json.dump(value, file, indent=2, ensure_ascii=False)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())


def code_version() -> str:
    """The package version and, in a git checkout, the commit: what produced the files."""
    version = metadata.version("rlhf-feedback")
    head = Path(settings.BASE_DIR) / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref = (head.parent / ref[5:]).read_text().strip()
    except OSError:
        return version
    return f"{version}+g{ref[:12]}"
