"""Training rounds: an admin's request to turn labels into a new model, and what it became.

A round moves QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED, only by the atomic
conditional updates in `rounds.py`, so a redelivered task never runs it twice. A RUNNING round
carries the worker that claimed it and that worker's heartbeat; the reconciler fails a round
whose heartbeat stopped and re-sends a QUEUED round whose message may have been lost. A failed
or cancelled round can be resumed: it goes back to QUEUED and its stages continue from the
checkpoints already in its directory.

The model registry is `annotation.ModelVersion`; a round that registers a version points at it
(`TrainingRound.result_version`, unique), so a round never registers two.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class RoundKind(models.TextChoices):
    FULL = "full", "Full round (SFT → reward → policy → evaluate → register → generate)"
    PRETRAIN = "pretrain", "Pretrain a base model"
    GENERATE = "generate", "Generate samples"
    SFT = "sft", "Supervised fine-tuning"
    REWARD = "reward", "Fit the reward model"
    PPO = "ppo", "PPO"
    DPO = "dpo", "DPO"
    REJECTION_SAMPLING = "rejection_sampling", "Rejection sampling (best-of-n, then SFT)"
    EVALUATE = "evaluate", "Evaluate"


class RoundState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINISHED_STATES = (RoundState.SUCCEEDED, RoundState.FAILED, RoundState.CANCELLED)


class TrainingRound(models.Model):
    project = models.ForeignKey(
        "annotation.Project", on_delete=models.PROTECT, related_name="training_rounds"
    )
    kind = models.CharField(max_length=24, choices=RoundKind.choices)
    preset = models.CharField(max_length=40)
    # Every stage's settings, as rlhf_core's config dataclasses write them (`to_dict`), plus
    # "stages" (the plan), "launch" (processes per round) and "samples" (what goes back).
    config = models.JSONField(default=dict)
    # Which labels go in (the export filters); the snapshot records which ones did.
    label_filter = models.JSONField(default=dict, blank=True)
    base_version = models.ForeignKey(
        "annotation.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="rounds_based_on",
    )
    label_snapshot = models.ForeignKey(
        "exports.ExportSnapshot",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="training_rounds",
    )
    labels_sha256 = models.CharField(max_length=64, blank=True)
    labels_count = models.PositiveIntegerField(default=0)

    state = models.CharField(max_length=16, choices=RoundState.choices, default=RoundState.QUEUED)
    stage = models.CharField(max_length=40, blank=True)  # the stage running or last run
    stage_step = models.PositiveIntegerField(default=0)
    stage_steps = models.PositiveIntegerField(default=0)
    stages_done = models.JSONField(default=list, blank=True)
    message = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)  # times a worker claimed it

    # The last message sent for it (a reconciler re-sends a QUEUED round with none alive).
    task_id = models.CharField(max_length=64, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    run_dir = models.CharField(max_length=1000, blank=True)  # under settings.MODEL_STORE_DIR
    result_version = models.OneToOneField(
        "annotation.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="produced_by",
    )
    samples_added = models.PositiveIntegerField(null=True, blank=True)  # set once, with them
    summary = models.JSONField(default=dict, blank=True)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=RoundState.values), name="round_state_is_known"
            ),
            models.CheckConstraint(
                condition=Q(kind__in=RoundKind.values), name="round_kind_is_known"
            ),
            # One round at a time per worker, whatever its concurrency setting says.
            models.UniqueConstraint(
                fields=["worker"],
                condition=Q(state="running"),
                name="one_running_round_per_worker",
            ),
            models.CheckConstraint(
                condition=~Q(state="running") | ~Q(worker=""), name="running_round_has_worker"
            ),
        ]
        indexes = [models.Index(fields=["state", "heartbeat_at"], name="round_state_heartbeat")]

    def __str__(self) -> str:
        return f"round {self.pk} ({self.get_kind_display()}, {self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def progress_percent(self) -> int:
        """Across the planned stages, the running one counted by its steps."""
        if self.state == RoundState.SUCCEEDED:
            return 100
        planned = list(self.config.get("stages", [])) or [self.kind]
        done = len([stage for stage in self.stages_done if stage in planned])
        share = self.stage_step / self.stage_steps if self.stage_steps else 0.0
        if self.stage in self.stages_done:
            share = 0.0
        return min(99, int(100 * (done + share) / max(len(planned), 1)))


class RoundMetric(models.Model):
    """One logged step of one stage: a point of the round's charts. (round, stage, step) is
    unique, so a resumed stage that logs a step again replaces it."""

    round = models.ForeignKey(TrainingRound, on_delete=models.CASCADE, related_name="metrics")
    stage = models.CharField(max_length=40)
    step = models.PositiveIntegerField()
    values = models.JSONField()
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["round", "stage", "step"]
        constraints = [
            models.UniqueConstraint(fields=["round", "stage", "step"], name="one_metric_per_step")
        ]

    def __str__(self) -> str:
        return f"{self.stage} step {self.step} of round {self.round_id}"


class RoundLog(models.Model):
    round = models.ForeignKey(TrainingRound, on_delete=models.CASCADE, related_name="logs")
    at = models.DateTimeField(default=timezone.now)
    level = models.CharField(max_length=10, default="info")
    message = models.TextField()

    class Meta:
        ordering = ["round", "at", "id"]

    def __str__(self) -> str:
        return f"[{self.level}] {self.message[:80]}"
