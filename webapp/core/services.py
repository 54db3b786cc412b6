"""State changes of the operations side, each in one transaction. No HTTP objects here."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from webapp import background
from webapp.accounts.models import User
from webapp.core.models import Queue, WorkerProbe

_PROBE_TASK = {
    Queue.DEFAULT: background.PROBE_DEFAULT_QUEUE,
    Queue.GPU: background.PROBE_GPU_QUEUE,
}


@transaction.atomic
def request_worker_probes(requested_by: User | None) -> list[WorkerProbe]:
    """One probe per queue; the tasks leave for the broker only once the rows are committed."""
    probes = []
    for queue in Queue:
        probe = WorkerProbe.objects.create(queue=queue, requested_by=requested_by)
        background.enqueue_after_commit(_PROBE_TASK[queue], probe.pk)
        probes.append(probe)
    return probes


def answer_worker_probe(probe_id: int, *, worker: str, details: dict[str, Any]) -> bool:
    """Record a worker's answer once. A redelivered task finds the probe answered and does nothing.

    Returns whether this call recorded the answer.
    """
    updated = WorkerProbe.objects.filter(pk=probe_id, answered_at__isnull=True).update(
        answered_at=timezone.now(), worker=worker[:255], details=details
    )
    return updated == 1


def latest_worker_probes() -> list[WorkerProbe]:
    """The newest probe of each queue, in the order of `Queue`."""
    latest = []
    for queue in Queue:
        probe = WorkerProbe.objects.filter(queue=queue).first()
        if probe is not None:
            latest.append(probe)
    return latest
