"""The one door from the web side to background work.

Tasks are sent by *name* (the web app never imports the task code), carry primary keys only, and
leave only after the surrounding transaction commits, so a worker never looks for a row that is
not there yet, and a rolled-back request sends nothing.
"""

from __future__ import annotations

from django.db import transaction

from webapp.celery_app import app

# Every task the web side may start. The queue of each is decided by name in
# settings.CELERY_TASK_ROUTES; a name missing here is a programming error, caught at once.
PROBE_DEFAULT_QUEUE = "system.probe_default"
PROBE_GPU_QUEUE = "system.probe_gpu"
BUILD_EXPORT_SNAPSHOT = "exports.build_snapshot"
KNOWN_TASKS = frozenset({PROBE_DEFAULT_QUEUE, PROBE_GPU_QUEUE, BUILD_EXPORT_SNAPSHOT})


def enqueue_after_commit(task_name: str, *ids: int) -> None:
    if task_name not in KNOWN_TASKS:
        raise ValueError(f"Unknown background task {task_name!r}.")
    if not all(isinstance(pk, int) for pk in ids):
        raise TypeError("Background tasks carry primary keys (integers) only.")
    transaction.on_commit(lambda: app.send_task(task_name, args=list(ids)), robust=False)
