"""Export snapshots: a researcher's request for data sets, and the files it became.

A snapshot moves QUEUED -> RUNNING -> SUCCEEDED | FAILED, only by atomic conditional updates in
`building.py`, so a redelivered task never builds it twice. Once SUCCEEDED its directory under
settings.EXPORT_DIR and its manifest never change.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class SnapshotStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


def new_salt() -> str:
    return secrets.token_hex(32)


class ExportSnapshot(models.Model):
    project = models.ForeignKey(
        "annotation.Project", on_delete=models.PROTECT, related_name="export_snapshots"
    )
    # The validated, normalised filters and options (filters.py); what the manifest repeats.
    filters = models.JSONField(default=dict)
    options = models.JSONField(default=dict)
    formats = models.JSONField(default=list)
    seed = models.BigIntegerField(default=0)
    test_share = models.FloatField(default=0.1)
    status = models.CharField(
        max_length=16, choices=SnapshotStatus.choices, default=SnapshotStatus.QUEUED
    )
    rows_done = models.BigIntegerField(default=0)
    rows_total = models.BigIntegerField(default=0)  # an estimate, counted before writing
    current_file = models.CharField(max_length=200, blank=True)
    manifest = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    # The secret of the per-snapshot annotator pseudonyms; never written into the snapshot.
    salt = models.CharField(max_length=64, default=new_salt, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Written with every progress update: a RUNNING snapshot whose heartbeat stopped belongs to
    # a worker that died, and may be claimed again.
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=SnapshotStatus.values), name="snapshot_status_is_known"
            ),
            models.CheckConstraint(
                condition=Q(test_share__gte=0, test_share__lt=1),
                name="snapshot_test_share_in_range",
            ),
        ]

    def __str__(self) -> str:
        return f"export {self.pk} of {self.project_id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (SnapshotStatus.SUCCEEDED, SnapshotStatus.FAILED)

    @property
    def progress_percent(self) -> int:
        if self.status == SnapshotStatus.SUCCEEDED:
            return 100
        if not self.rows_total:
            return 0
        return min(99, int(100 * self.rows_done / self.rows_total))
