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

The reads that run on every answer (the membership check, the annotator's held lease, the
candidate, the slot re-count and the count of what is left) are written in SQL rather than built
with the ORM: PostgreSQL runs each in about 0.1 ms, while composing the same queries from
querysets cost 1-4 ms of CPU every time, most of a request's budget. The SQL is plain enough
for SQLite too (the embedded default), which has no row locks; its transactions take the write
lock up front instead.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Count, Max
from django.utils import timezone

from webapp.accounts.models import Role, User
from webapp.annotation.models import (
    AnnotationEvent,
    EventKind,
    FlagStatus,
    Item,
    Lease,
    Project,
    Submission,
)

# An open flag withholds its item until reviewed; a resolved one (the reviewer agreed) for good.
# A dismissed flag lets the item back into the queue.
WITHHOLDING_FLAGS = (FlagStatus.OPEN.value, FlagStatus.RESOLVED.value)
# How many locked-then-taken candidates next_item steps over before it gives up for now.
_MAX_ATTEMPTS = 8
# Progress counts stop here: "20+" is all an annotator needs to know, and the count runs after
# every answer, so it must stay a short index scan (at 1,000 it cost 9 ms of PostgreSQL per
# answer; at 100 a few ms more than at 20 under load, measured with benchmarks/annotation_load.py).
AVAILABLE_CAP = 20
FULL_COUNT_SECONDS = 60


class AnnotationError(Exception):
    """A request the workspace refuses: `status` is the HTTP status a view answers with
    (400 malformed or out of range, 403 not allowed, 409 duplicate or stale, 413 a form too
    large to read)."""

    def __init__(self, message: str, status: int = 400, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field


@dataclass(frozen=True)
class Progress:
    done: int
    available: int
    # When the annotator's newest live answer here was given: whether undo is offered.
    last_answer_at: datetime | None = None

    @property
    def available_label(self) -> str:
        return f"{AVAILABLE_CAP}+" if self.available >= AVAILABLE_CAP else str(self.available)


def check_can_annotate(project: Project, annotator: User, *, lock: bool = False) -> None:
    """AnnotationError(403) saying why the annotator may not annotate `project`, if they may not.

    With `lock`, the membership row stays locked until the transaction ends. Every answer runs
    this check, so it reads the two columns it needs in SQL.
    """
    if not (annotator.is_active and annotator.has_role(Role.ANNOTATOR, Role.ADMIN)):
        raise AnnotationError("Only annotators and admins can annotate.", 403)
    sql = (
        "SELECT paused, paused_reason FROM annotation_membership"
        " WHERE project_id = %s AND user_id = %s"
    )
    if lock and connection.features.has_select_for_update:
        sql += " FOR UPDATE"
    with connection.cursor() as cursor:
        cursor.execute(sql, [project.pk, annotator.pk])
        membership = cursor.fetchone()
    if membership is None:
        raise AnnotationError("You are not a member of this project.", 403)
    if not project.is_active:
        raise AnnotationError("This project is closed for annotation.", 403)
    paused, paused_reason = membership
    if paused:
        reason = f": {paused_reason}" if paused_reason else "."
        raise AnnotationError(f"You are paused on this project{reason}", 403)


def open_items_sql(
    project: Project, annotator: User, now: datetime, *, gold: bool, passed: Sequence[int] = ()
) -> tuple[str, list[Any]]:
    """FROM and WHERE of the items (alias `i`) the annotator may take now, with their params.

    Non-gold items also need a free slot: live submissions plus other annotators' unexpired
    leases below the overlap. `passed` are item ids to leave out.
    """
    at = connection.ops.adapt_datetimefield_value(now)
    sql = """
        FROM annotation_item i
        WHERE i.project_id = %s AND i.is_gold = %s AND NOT i.is_complete
          AND NOT EXISTS (SELECT 1 FROM annotation_submission s
                          WHERE s.item_id = i.id AND s.annotator_id = %s AND s.undone_at IS NULL)
          AND NOT EXISTS (SELECT 1 FROM annotation_skip k
                          WHERE k.item_id = i.id AND k.annotator_id = %s)
          AND NOT EXISTS (SELECT 1 FROM annotation_flag f
                          WHERE f.item_id = i.id AND f.status IN (%s, %s))"""
    params: list[Any] = [project.pk, gold, annotator.pk, annotator.pk, *WITHHOLDING_FLAGS]
    if not gold and project.overlap == 1:
        # The common case, expressed so that no lease needs counting at all.
        sql += """
          AND i.live_submissions < 1
          AND NOT EXISTS (SELECT 1 FROM annotation_lease l
                          WHERE l.item_id = i.id AND l.expires_at > %s AND l.annotator_id <> %s)"""
        params += [at, annotator.pk]
    elif not gold:
        sql += """
          AND i.live_submissions < %s
          AND i.live_submissions + (SELECT count(*) FROM annotation_lease l
                                    WHERE l.item_id = i.id AND l.expires_at > %s
                                      AND l.annotator_id <> %s) < %s"""
        params += [project.overlap, at, annotator.pk, project.overlap]
    if passed:
        sql += f"\n          AND i.id NOT IN ({', '.join(['%s'] * len(passed))})"
        params += list(passed)
    return sql, params


def candidate_sql(
    project: Project, annotator: User, now: datetime, *, gold: bool, passed: Sequence[int] = ()
) -> tuple[str, list[Any]]:
    """The id of the first item in queue order the annotator may take (no lock)."""
    where, params = open_items_sql(project, annotator, now, gold=gold, passed=passed)
    order = "ORDER BY i.live_submissions DESC, i.version_rank DESC, i.id LIMIT 1"
    return f"SELECT i.id {where}\n        {order}", params


def slot_is_free(item: Item, annotator: User, now: datetime) -> bool:
    """Whether `annotator` may take a (non-gold) item: read under the item's row lock."""
    if item.is_gold:
        return True
    if item.is_complete:
        return False
    held_by_others: int = _scalar(
        """
        SELECT count(*) FROM annotation_lease
        WHERE item_id = %s AND expires_at > %s AND annotator_id <> %s""",
        [item.pk, connection.ops.adapt_datetimefield_value(now), annotator.pk],
    )
    return item.live_submissions + held_by_others < item.project.overlap


def current_lease(project: Project, annotator: User, now: datetime) -> Lease | None:
    """The annotator's newest unexpired lease in the project whose item is still open.

    A lease whose item was completed or flagged since is passed over, not deleted: it expires
    on its own, holds no slot that matters, and a later grant on its item renews it.
    """
    lease_id = _scalar(
        """
        SELECT l.id FROM annotation_lease l JOIN annotation_item i ON i.id = l.item_id
        WHERE l.annotator_id = %s AND i.project_id = %s AND l.expires_at > %s
          AND (i.is_gold OR NOT i.is_complete)
          AND NOT EXISTS (SELECT 1 FROM annotation_flag f
                          WHERE f.item_id = i.id AND f.status IN (%s, %s))
        ORDER BY l.created_at DESC, l.id DESC LIMIT 1""",
        [
            annotator.pk,
            project.pk,
            connection.ops.adapt_datetimefield_value(now),
            *WITHHOLDING_FLAGS,
        ],
    )
    if lease_id is None:
        return None
    lease = Lease.objects.select_related("item__prompt").get(pk=lease_id)
    lease.item.project = project
    return lease


def _scalar(sql: str, params: Sequence[Any]) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else row[0]


def next_item(project: Project, annotator: User, *, now: datetime | None = None) -> Lease | None:
    """The lease on the item the annotator should answer now, or None when nothing is left.

    AnnotationError(403) when they may not annotate this project.
    """
    now = now or timezone.now()
    with transaction.atomic():
        # One next_item at a time per annotator and project: two tabs never take two items.
        check_can_annotate(project, annotator, lock=True)
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
    passed: list[int] = []
    skip_locked = True
    for _ in range(_MAX_ATTEMPTS):
        sql, params = candidate_sql(project, annotator, now, gold=gold, passed=passed)
        if connection.features.has_select_for_update_skip_locked:
            sql += " FOR UPDATE OF i SKIP LOCKED" if skip_locked else " FOR UPDATE OF i"
        item_id = _scalar(sql, params)
        if item_id is None and skip_locked:
            # Only rows being leased right now are left: wait for them, they may keep a slot.
            skip_locked = False
            continue
        if item_id is None:
            return None
        item = Item.objects.select_related("prompt").get(pk=item_id)  # the page shows the prompt
        item.project = project
        # A fresh statement sees leases committed since the scan began: the lock makes it final.
        if slot_is_free(item, annotator, now):
            return grant_lease(item, annotator, now)
        passed.append(item.pk)
    return None


def grant_lease(item: Item, annotator: User, now: datetime) -> Lease:
    """A lease on `item` for `annotator` from `now` (the caller holds the item's row lock); one
    they held before (expired, or on an item given back by undo) is renewed in the same
    statement, so no delete runs first."""
    (lease,) = Lease.objects.bulk_create(
        [
            Lease(
                item=item,
                annotator=annotator,
                created_at=now,
                expires_at=now + timedelta(seconds=item.project.lease_seconds),
            )
        ],
        update_conflicts=True,
        unique_fields=["item", "annotator"],
        update_fields=["created_at", "expires_at"],
    )
    AnnotationEvent.objects.create(
        kind=EventKind.SERVED, project=item.project, item=item, annotator=annotator, at=now
    )
    return lease


def progress(project: Project, annotator: User) -> Progress:
    """What the annotator has done here, when they last answered, and how many items they could
    still get (capped at AVAILABLE_CAP)."""
    done = Submission.objects.filter(
        item__project=project, annotator=annotator, undone_at__isnull=True
    ).aggregate(n=Count("pk"), last=Max("submitted_at"))
    return Progress(
        done=done["n"], available=available_items(project, annotator), last_answer_at=done["last"]
    )


def available_items(project: Project, annotator: User) -> int:
    """How many items the annotator could still get, up to AVAILABLE_CAP.

    A count at the cap is kept in the shared cache for FULL_COUNT_SECONDS: a queue that deep
    stays "20+" for a while, and counting it after every answer was a third of PostgreSQL's
    work per answer. Below the cap the count is exact, read afresh each time.
    """
    key = f"annotation:available:{project.pk}:{annotator.pk}"
    if cache.get(key):
        return AVAILABLE_CAP
    now = timezone.now()
    available: int = 0
    for gold in (False, True):
        where, params = open_items_sql(project, annotator, now, gold=gold)
        sql = f"SELECT count(*) FROM (SELECT 1 {where} LIMIT %s) AS open_items"
        available += _scalar(sql, [*params, AVAILABLE_CAP - available])
        if available >= AVAILABLE_CAP:
            cache.set(key, True, FULL_COUNT_SECONDS)
            return available
    return available
