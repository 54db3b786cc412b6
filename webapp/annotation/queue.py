"""Which item an annotator sees next, held for them by a lease.

An item is open to an annotator when the project is active, they are an unpaused member, the
item is not complete, has no open flag, and they have neither a live submission on it nor a
skip. A non-gold item also needs a free slot: its live submissions and the unexpired leases of
other annotators stay below the project's overlap. Gold items are answered once by everyone and
never count towards the overlap. Expired leases count for nothing anywhere.

The candidate is read in the order of the partial index `item_queue_order` (most live
submissions, newest model version, oldest item) with NOT EXISTS filters and LIMIT 1, so the
first open row ends the scan. Every lease is created under a row lock on its item, so the lock
plus a re-count of the leases in a fresh statement makes the last slot go to one annotator only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from webapp.accounts.models import Role, User
from webapp.annotation.models import (
    AnnotationEvent,
    EventKind,
    Flag,
    FlagStatus,
    Item,
    Lease,
    Membership,
    Project,
    Skip,
    Submission,
)

# An open flag withholds its item until reviewed; a resolved one (the reviewer agreed) for good.
# A dismissed flag lets the item back into the queue.
WITHHOLDING_FLAGS = (FlagStatus.OPEN, FlagStatus.RESOLVED)
# How many locked-then-taken candidates next_item steps over before it gives up for now.
_MAX_ATTEMPTS = 8
# Progress counts stop here: "1000+" is all an annotator needs to know.
AVAILABLE_CAP = 1000


class AnnotationError(Exception):
    """A request the workspace refuses: `status` is the HTTP status a view answers with
    (400 malformed or out of range, 403 not allowed, 409 duplicate or stale)."""

    def __init__(self, message: str, status: int = 400, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field


@dataclass(frozen=True)
class Progress:
    done: int
    available: int

    @property
    def available_label(self) -> str:
        return f"{AVAILABLE_CAP}+" if self.available >= AVAILABLE_CAP else str(self.available)


def check_can_annotate(project: Project, annotator: User, *, lock: bool = False) -> Membership:
    """The annotator's membership, or AnnotationError(403) saying why they may not annotate."""
    if not (annotator.is_active and annotator.has_role(Role.ANNOTATOR, Role.ADMIN)):
        raise AnnotationError("Only annotators and admins can annotate.", 403)
    memberships = Membership.objects.filter(project=project, user=annotator)
    membership = (memberships.select_for_update() if lock else memberships).first()
    if membership is None:
        raise AnnotationError("You are not a member of this project.", 403)
    if not project.is_active:
        raise AnnotationError("This project is closed for annotation.", 403)
    if membership.paused:
        reason = f": {membership.paused_reason}" if membership.paused_reason else "."
        raise AnnotationError(f"You are paused on this project{reason}", 403)
    return membership


def open_items(project: Project, annotator: User, *, gold: bool) -> QuerySet[Item]:
    """The project's items this annotator may still answer, before the overlap check."""
    own_submission = Submission.objects.filter(
        item=OuterRef("pk"), annotator=annotator, undone_at__isnull=True
    )
    own_skip = Skip.objects.filter(item=OuterRef("pk"), annotator=annotator)
    open_flag = Flag.objects.filter(item=OuterRef("pk"), status__in=WITHHOLDING_FLAGS)
    items = Item.objects.filter(project=project, is_gold=gold, is_complete=False)
    if not gold:
        items = items.filter(live_submissions__lt=project.overlap)
    return items.filter(~Exists(own_submission), ~Exists(own_skip), ~Exists(open_flag))


def with_free_slot(
    items: QuerySet[Item], project: Project, annotator: User, now: datetime
) -> QuerySet[Item]:
    """Non-gold `items` whose live submissions and others' unexpired leases leave a slot."""
    others = Lease.objects.filter(item=OuterRef("pk"), expires_at__gt=now).exclude(
        annotator=annotator
    )
    if project.overlap == 1:
        # The common case, expressed so that no lease needs counting at all.
        return items.filter(~Exists(others))
    held = others.order_by().values("item").annotate(n=Count("pk")).values("n")
    return items.alias(held=Coalesce(Subquery(held), 0)).filter(
        live_submissions__lt=project.overlap - F("held")
    )


def _queue_order(items: QuerySet[Item]) -> QuerySet[Item]:
    return items.order_by("-live_submissions", "-version_rank", "id")


def _others_leases(item: Item, annotator: User, now: datetime) -> QuerySet[Lease]:
    return Lease.objects.filter(item=item, expires_at__gt=now).exclude(annotator=annotator)


def slot_is_free(item: Item, annotator: User, now: datetime) -> bool:
    """Whether `annotator` may take a (non-gold) item: read under the item's row lock."""
    if item.is_gold:
        return True
    if item.is_complete:
        return False
    taken = item.live_submissions + _others_leases(item, annotator, now).count()
    return taken < item.project.overlap


def current_lease(project: Project, annotator: User, now: datetime) -> Lease | None:
    """The annotator's newest unexpired lease in the project whose item is still open."""
    leases = Lease.objects.filter(
        item__project=project, annotator=annotator, expires_at__gt=now
    ).select_related("item", "item__project", "item__prompt")
    for lease in leases.order_by("-created_at", "-id"):
        has_open_flag = Flag.objects.filter(item=lease.item, status__in=WITHHOLDING_FLAGS).exists()
        if has_open_flag or lease.item.is_complete:
            lease.delete()
            continue
        return lease
    return None


def next_item(project: Project, annotator: User, *, now: datetime | None = None) -> Lease | None:
    """The lease on the item the annotator should answer now, or None when nothing is left.

    AnnotationError(403) when they may not annotate this project.
    """
    now = now or timezone.now()
    with transaction.atomic():
        # One next_item at a time per annotator and project: two tabs never take two items.
        check_can_annotate(project, annotator, lock=True)
        Lease.objects.filter(
            item__project=project, annotator=annotator, expires_at__lte=now
        ).delete()
        held = current_lease(project, annotator, now)
        if held is not None:
            return held
        first_gold = random.random() < project.gold_share
        for gold in (first_gold, not first_gold):
            lease = _lease_from_pool(project, annotator, now, gold=gold)
            if lease is not None:
                return lease
    return None


def _lease_from_pool(
    project: Project, annotator: User, now: datetime, *, gold: bool
) -> Lease | None:
    candidates = open_items(project, annotator, gold=gold)
    if not gold:
        candidates = with_free_slot(candidates, project, annotator, now)
    passed: list[int] = []
    skip_locked = True
    for _ in range(_MAX_ATTEMPTS):
        item = (
            _queue_order(candidates.exclude(pk__in=passed))
            .select_for_update(skip_locked=skip_locked, of=("self",))
            .select_related("project", "prompt")  # the item page shows the prompt
            .first()
        )
        if item is None and skip_locked:
            # Only rows being leased right now are left: wait for them, they may keep a slot.
            skip_locked = False
            continue
        if item is None:
            return None
        # A fresh statement sees leases committed since the scan began: the lock makes it final.
        if slot_is_free(item, annotator, now):
            return _grant(item, annotator, now)
        passed.append(item.pk)
    return None


def _grant(item: Item, annotator: User, now: datetime) -> Lease:
    lease = Lease.objects.create(
        item=item,
        annotator=annotator,
        created_at=now,
        expires_at=now + timedelta(seconds=item.project.lease_seconds),
    )
    AnnotationEvent.objects.create(
        kind=EventKind.SERVED, project=item.project, item=item, annotator=annotator, at=now
    )
    return lease


def grant_lease(item: Item, annotator: User, now: datetime) -> Lease:
    """A fresh lease on `item` for `annotator` (the caller holds the item's row lock)."""
    Lease.objects.filter(item=item, annotator=annotator).delete()
    return _grant(item, annotator, now)


def progress(project: Project, annotator: User) -> Progress:
    """What the annotator has done here, and how many items they could still get (capped)."""
    done = Submission.objects.filter(
        item__project=project, annotator=annotator, undone_at__isnull=True
    ).count()
    regular = with_free_slot(
        open_items(project, annotator, gold=False), project, annotator, timezone.now()
    )
    gold = open_items(project, annotator, gold=True)
    available = regular[:AVAILABLE_CAP].count()
    if available < AVAILABLE_CAP:
        available += gold[: AVAILABLE_CAP - available].count()
    return Progress(done=done, available=available)
