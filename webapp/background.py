"""The one door from the web side to background work.

Tasks are sent by *name* (the web app never imports the task code), carry primary keys only, and
leave only after the surrounding transaction commits, so a worker never looks for a row that is
not there yet, and a rolled-back request sends nothing.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from webapp.celery_app import app

# Every task the web side may start. The queue of each is decided by name in
# settings.CELERY_TASK_ROUTES; a name missing here is a programming error, caught at once.
PROBE_DEFAULT_QUEUE = "system.probe_default"
PROBE_GPU_QUEUE = "system.probe_gpu"
BUILD_EXPORT_SNAPSHOT = "exports.build_snapshot"
RUN_TRAINING_ROUND = "training.run_round"  # the gpu queue (routed by the "training." prefix)
RECONCILE_TRAINING_ROUNDS = "maintenance.reconcile_rounds"  # the default queue, every minute
KNOWN_TASKS = frozenset(
    {
        PROBE_DEFAULT_QUEUE,
        PROBE_GPU_QUEUE,
        BUILD_EXPORT_SNAPSHOT,
        RUN_TRAINING_ROUND,
        RECONCILE_TRAINING_ROUNDS,
    }
)


def enqueue_after_commit(task_name: str, *ids: int, task_id: str | None = None) -> None:
    if task_name not in KNOWN_TASKS:
        raise ValueError(f"Unknown background task {task_name!r}.")
    if not all(isinstance(pk, int) for pk in ids):
        raise TypeError("Background tasks carry primary keys (integers) only.")
    options: dict[str, Any] = {"task_id": task_id} if task_id else {}  # for a reconciler
    transaction.on_commit(lambda: app.send_task(task_name, args=list(ids), **options), robust=False)
