"""The annotation workspace's data: projects and their questions, prompts, model versions,
responses, the items annotators see, and what annotators do with them.

Item kinds follow the project's task type: one response (rating, rewrite), a blind pair whose
left/right order is drawn once and stored (pairwise), or a K-set (ranking). The order of an
item's responses is `ItemResponse.position`.

A `Submission` is one annotator's answer to one item: its labels (one per question), the active
time, and whether it was undone. Undone submissions and their labels stay in the tables with
`undone_at` set (the history); the database allows at most one live submission per (item,
annotator) and one live label per (item, annotator, question). Every action also leaves an
`AnnotationEvent`, the raw log the exports publish.

Counts the queue needs often are kept on the item (`live_submissions`), changed only inside the
services' transactions, under a row lock on the item.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from webapp.annotation.questions import QuestionKind, TaskType

# /annotate/<slug>/ shares its prefix with these pages (webapp/annotation/urls.py).
RESERVED_SLUGS = ("manage", "quality")


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Project(models.Model):
    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=80, unique=True)
    description = models.TextField(blank=True)
    guidelines = models.TextField(blank=True, help_text="Markdown, shown to annotators in a panel.")
    task_type = models.CharField(max_length=20, choices=TaskType.choices)
    # Annotators who must answer each (non-gold) item before it is complete.
    overlap = models.PositiveSmallIntegerField(default=1)
    # Share of served items drawn from the gold items, in [0, 1].
    gold_share = models.FloatField(default=0.0)
    ranking_size = models.PositiveSmallIntegerField(default=4, help_text="K of a ranking item")
    undo_window_seconds = models.PositiveIntegerField(default=300)
    lease_seconds = models.PositiveIntegerField(default=600)
    is_active = models.BooleanField(default=True)
    # Set by the training issue: the model version that samples new responses for this project.
    serving_version = models.ForeignKey(
        "ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(task_type__in=TaskType.values), name="project_task_type_is_known"
            ),
            models.CheckConstraint(
                condition=Q(overlap__gte=1, overlap__lte=50), name="project_overlap_in_range"
            ),
            models.CheckConstraint(
                condition=Q(gold_share__gte=0, gold_share__lte=1),
                name="project_gold_share_in_range",
            ),
            models.CheckConstraint(
                condition=Q(ranking_size__gte=2, ranking_size__lte=9),
                name="project_ranking_size_in_range",
            ),
            models.CheckConstraint(
                condition=Q(lease_seconds__gte=30), name="project_lease_at_least_30s"
            ),
            models.CheckConstraint(
                condition=~Q(slug__in=RESERVED_SLUGS),
                name="project_slug_not_reserved",
                violation_error_message="This slug names a part of the site; choose another.",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """An annotator assigned to a project. A paused annotator gets no items from it."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    paused = models.BooleanField(default=False)
    paused_reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="membership_once_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.project}"


class Question(models.Model):
    """One thing annotators answer about each item; see `questions.py` for kinds and configs."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="questions")
    key = models.SlugField(max_length=50, help_text="e.g. helpfulness; used in exports")
    kind = models.CharField(max_length=16, choices=QuestionKind.choices)
    text = models.CharField(max_length=500, help_text="What the annotator is asked")
    help_text = models.TextField(blank=True)
    required = models.BooleanField(default=True)
    config = models.JSONField(default=dict, blank=True)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "key"], name="question_key_once_per_project"
            ),
            models.CheckConstraint(
                condition=Q(kind__in=QuestionKind.values), name="question_kind_is_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project}: {self.key}"


class PromptSource(models.TextChoices):
    UPLOAD = "upload", "Uploaded"
    ANNOTATOR = "annotator", "Written by an annotator"
    SEED = "seed", "Seed data"
    API = "api", "API"


class Prompt(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    text = models.TextField()
    digest = models.CharField(max_length=64, editable=False)  # sha256 of text: no duplicates
    source = models.CharField(max_length=16, choices=PromptSource.choices)
    metadata = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "digest"], name="prompt_once_per_project"),
            models.CheckConstraint(
                condition=Q(source__in=PromptSource.values), name="prompt_source_is_known"
            ),
            models.CheckConstraint(condition=~Q(text=""), name="prompt_not_empty"),
        ]

    def __str__(self) -> str:
        return self.text[:60]

    def save(self, *args: object, **kwargs: object) -> None:
        self.digest = text_digest(self.text)
        super().save(*args, **kwargs)  # type: ignore[arg-type]


class ModelVersionQuerySet(models.QuerySet["ModelVersion"]):
    def usable_in(self, project: Project) -> ModelVersionQuerySet:
        """The versions a project's filters offer: every trained one, and the names that this
        project's own uploads gave (never another project's)."""
        return self.filter(Q(project__isnull=True) | Q(project=project))


class ModelVersion(models.Model):
    """A trained model: one checkpoint directory in the model store. The training issue creates
    them; here they label responses and order the queue (newest first).

    A response upload may name the model each text came from (its `model` field): such a name
    becomes a version of that project only (`project` set, no checkpoint), apart from a trained
    version of the same name and from the same name in another project's upload."""

    name = models.CharField(max_length=200)
    project = models.ForeignKey(
        Project,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="uploaded_versions",
        help_text="Set for a name an upload gave; empty for a trained version.",
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    checkpoint_dir = models.CharField(max_length=1000, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["name"],
                condition=Q(project__isnull=True),
                name="trained_version_name_unique",
            ),
            models.UniqueConstraint(
                fields=["project", "name"],
                condition=Q(project__isnull=False),
                name="uploaded_version_name_unique_per_project",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Response(models.Model):
    """A reply to a prompt: sampled from a model version, or written by a person (no version)."""

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="responses")
    text = models.TextField()
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="responses"
    )
    sampling = models.JSONField(default=dict, blank=True)  # temperature, top_p, seed, ...
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.text[:60]


class Item(models.Model):
    """What an annotator is shown: a prompt with one, two or K of its responses."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="items")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="items")
    responses = models.ManyToManyField(Response, through="ItemResponse", related_name="items")
    is_gold = models.BooleanField(default=False)
    # The newest model version among the item's responses; the queue prefers newer ones.
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Live (not undone) submissions, and whether they reach the project's overlap (never for a
    # gold item: every annotator answers those once). Kept by the services under a lock on this
    # row; the queue's index covers only open items.
    # The model version's id, 0 without one: the queue's "newest version first" as a plain
    # descending integer, which every database can index (SQLite has no NULLS LAST in indexes).
    version_rank = models.BigIntegerField(default=0, db_default=0)
    live_submissions = models.PositiveIntegerField(default=0)
    is_complete = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        indexes = [
            # The queue's order: closest to completion, newest model version, oldest item.
            models.Index(
                "project",
                "is_gold",
                F("live_submissions").desc(),
                F("version_rank").desc(),
                "id",
                condition=Q(is_complete=False),
                name="item_queue_order",
            )
        ]

    def __str__(self) -> str:
        return f"item {self.pk} of {self.project}"


class ItemResponse(models.Model):
    """A response's place in an item: for a pair, position 0 is left and 1 is right."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="placements")
    response = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="placements")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["item", "position"], name="itemresponse_one_per_slot"),
            models.UniqueConstraint(fields=["item", "response"], name="itemresponse_no_repeat"),
        ]

    def __str__(self) -> str:
        return f"{self.item_id}[{self.position}] = response {self.response_id}"


class Lease(models.Model):
    """An item handed to an annotator and held for them until `expires_at`."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="leases")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="leases"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "annotator"], name="lease_once_per_annotator"),
            models.CheckConstraint(
                condition=Q(expires_at__gt=F("created_at")), name="lease_expires_after_start"
            ),
        ]

    def __str__(self) -> str:
        return f"lease of item {self.item_id} to {self.annotator_id} until {self.expires_at}"


class Submission(models.Model):
    """One annotator's answer to one item."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="submissions")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="submissions"
    )
    served_at = models.DateTimeField()  # when the lease began
    submitted_at = models.DateTimeField(default=timezone.now, db_index=True)
    active_ms = models.PositiveIntegerField(default=0)  # time the page was in use, measured
    undone_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-submitted_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["item", "annotator"],
                condition=Q(undone_at__isnull=True),
                name="submission_one_live_per_annotator",
            ),
            models.CheckConstraint(
                condition=Q(submitted_at__gte=F("served_at")), name="submission_after_serving"
            ),
        ]

    def __str__(self) -> str:
        return f"submission {self.pk}: item {self.item_id} by {self.annotator_id}"


class Label(models.Model):
    """One answer to one question; `value`'s shape depends on the question's kind."""

    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="labels")
    # Copied from the submission so the database can enforce one live label per question.
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="labels")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="labels"
    )
    question = models.ForeignKey(Question, on_delete=models.PROTECT, related_name="labels")
    value = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)
    undone_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["item", "annotator", "question"],
                condition=Q(undone_at__isnull=True),
                name="label_one_live_per_question",
            ),
        ]

    def __str__(self) -> str:
        return f"label {self.pk}: {self.question_id} on item {self.item_id}"


class Skip(models.Model):
    """An item an annotator passed on; it is never served to them again."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="skips")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="skips"
    )
    reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "annotator"], name="skip_once_per_annotator")
        ]

    def __str__(self) -> str:
        return f"item {self.item_id} skipped by {self.annotator_id}"


class FlagStatus(models.TextChoices):
    OPEN = "open", "Open"
    RESOLVED = "resolved", "Resolved (acted on)"
    DISMISSED = "dismissed", "Dismissed"


class Flag(models.Model):
    """An annotator's report that an item needs a person's look (unsafe content, a broken
    item, ...). Reviewed in the flag queue; an item with an open flag leaves the queue."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="flags")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="flags"
    )
    reason = models.CharField(max_length=100)
    note = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=FlagStatus.choices, default=FlagStatus.OPEN)
    created_at = models.DateTimeField(default=timezone.now)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_note = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["item", "annotator"], name="flag_once_per_annotator"),
            models.CheckConstraint(
                condition=Q(status__in=FlagStatus.values), name="flag_status_is_known"
            ),
            models.CheckConstraint(
                condition=Q(status=FlagStatus.OPEN) | Q(reviewed_at__isnull=False),
                name="flag_reviewed_has_time",
            ),
        ]
        indexes = [
            # The queue asks, for every candidate item, whether a flag withholds it.
            models.Index(
                fields=["item"], condition=~Q(status="dismissed"), name="flag_withholds_item"
            )
        ]

    def __str__(self) -> str:
        return f"flag {self.reason!r} on item {self.item_id} ({self.status})"


class GoldAnswer(models.Model):
    """The known answer of a gold item to one question; checked silently against labels."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="gold_answers")
    question = models.ForeignKey(Question, on_delete=models.CASCADE, related_name="gold_answers")
    value = models.JSONField()  # the shape of Label.value for the question's kind
    # Likert: a label within this distance of the gold score counts as correct.
    tolerance = models.PositiveSmallIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "question"], name="gold_once_per_question")
        ]

    def __str__(self) -> str:
        return f"gold answer of item {self.item_id} to {self.question_id}"


class EventKind(models.TextChoices):
    SERVED = "served", "Served"
    SUBMITTED = "submitted", "Submitted"
    SKIPPED = "skipped", "Skipped"
    UNDONE = "undone", "Undone"
    FLAGGED = "flagged", "Flagged"
    PROMPT_WRITTEN = "prompt_written", "Prompt written"


class AnnotationEvent(models.Model):
    """Append-only log of what annotators did, for audits and the raw-events export."""

    kind = models.CharField(max_length=20, choices=EventKind.choices)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="events")
    item = models.ForeignKey(
        Item, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="annotation_events"
    )
    at = models.DateTimeField(default=timezone.now, db_index=True)
    active_ms = models.PositiveIntegerField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=EventKind.values), name="event_kind_is_known"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} by {self.annotator_id} at {self.at}"
