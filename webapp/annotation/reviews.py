"""What an admin does after looking at the quality pages: review flagged items, and pause or
unpause an annotator on a project. Each function is one transaction that writes everything or
nothing and raises ValidationError (code "invalid" or "stale") when it writes nothing.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from webapp.accounts.models import User
from webapp.annotation.models import Flag, FlagStatus, Item, Membership
from webapp.storable import storable_problem

MAX_NOTE = 2000
MAX_REASON = 500  # Membership.paused_reason


@transaction.atomic
def review_flags(item: Item, reviewer: User, status: str, note: str = "") -> list[Flag]:
    """Close every open flag of `item`: RESOLVED (the item was acted on and stays out of the
    queue) or DISMISSED (nothing wrong; the item goes back to the queue). Returns the flags."""
    if status not in (FlagStatus.RESOLVED, FlagStatus.DISMISSED):
        raise ValidationError("Choose resolve or dismiss.", code="invalid")
    note = note.strip()
    if len(note) > MAX_NOTE:
        raise ValidationError(f"The note is longer than {MAX_NOTE} characters.", code="invalid")
    if problem := storable_problem(note, "The note"):
        raise ValidationError(problem, code="invalid")
    flags = list(Flag.objects.select_for_update().filter(item=item, status=FlagStatus.OPEN))
    if not flags:
        raise ValidationError("This item has no open flag: it was already reviewed.", code="stale")
    now = timezone.now()
    for flag in flags:
        flag.status, flag.reviewed_by, flag.reviewed_at, flag.review_note = (
            status,
            reviewer,
            now,
            note,
        )
    Flag.objects.bulk_update(flags, ["status", "reviewed_by", "reviewed_at", "review_note"])
    return flags


@transaction.atomic
def set_paused(membership: Membership, paused: bool, reason: str = "") -> Membership:
    """Pause an annotator on a project (they get no more of its items) or let them go on.
    The reason is shown to them; unpausing clears it."""
    reason = reason.strip()
    if len(reason) > MAX_REASON:
        raise ValidationError(f"The reason is longer than {MAX_REASON} characters.", code="invalid")
    if problem := storable_problem(reason, "The reason"):
        raise ValidationError(problem, code="invalid")
    locked = (
        Membership.objects.select_for_update()
        .select_related("user", "project")
        .get(pk=membership.pk)
    )
    if locked.paused == paused:
        state = "already paused" if paused else "not paused"
        raise ValidationError(f"{locked.user} is {state} on this project.", code="stale")
    locked.paused, locked.paused_reason = paused, reason if paused else ""
    locked.save(update_fields=["paused", "paused_reason"])
    return locked
