from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

# A worker that has not answered a probe within this time is reported as not answering.
PROBE_TIMEOUT = timedelta(seconds=30)


class Queue(models.TextChoices):
    DEFAULT = "default", "CPU queue (exports, statistics)"
    GPU = "gpu", "GPU queue (training, generation)"


class WorkerProbe(models.Model):
    """A round trip through one task queue: asked for by an admin, answered by a worker.

    It is how an admin (and the test suite) sees that the broker, the workers and the database
    work together: the worker writes its answer into this row.
    """

    queue = models.CharField(max_length=16, choices=Queue.choices)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    requested_at = models.DateTimeField(default=timezone.now, db_index=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(queue__in=Queue.values), name="workerprobe_queue_is_known"
            ),
            models.CheckConstraint(
                condition=models.Q(answered_at__isnull=True)
                | models.Q(answered_at__gte=models.F("requested_at")),
                name="workerprobe_answered_after_request",
            ),
        ]

    def __str__(self) -> str:
        return f"probe of {self.queue} at {self.requested_at:%Y-%m-%d %H:%M:%S}"

    @property
    def is_answered(self) -> bool:
        return self.answered_at is not None

    @property
    def is_overdue(self) -> bool:
        return not self.is_answered and timezone.now() - self.requested_at > PROBE_TIMEOUT

    @property
    def round_trip_ms(self) -> int | None:
        if self.answered_at is None:
            return None
        return round((self.answered_at - self.requested_at).total_seconds() * 1000)
