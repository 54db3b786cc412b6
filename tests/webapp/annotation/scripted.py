"""Answers written straight into the tables, with explicit times, for the quality tests: they
must not depend on the labelling services, which have their own tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import F
from django.utils import timezone

from webapp.accounts.models import User
from webapp.annotation.models import Item, Label, Question, Submission

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.get_current_timezone())


def submit(
    item: Item,
    annotator: User,
    answers: dict[str, dict[str, Any]],
    *,
    served: datetime | None = None,
    seconds: float = 30,
    active_ms: int = 20_000,
    undone: bool = False,
) -> Submission:
    """A submission of `answers` (question key -> Label.value) to `item`, served at `served`
    and submitted `seconds` later; undone a second after that when `undone`. Keeps the item's
    count of live submissions, as the labelling services do."""
    served = served or timezone.now() - timedelta(minutes=5)
    submitted = served + timedelta(seconds=seconds)
    undone_at = submitted + timedelta(seconds=1) if undone else None
    submission = Submission.objects.create(
        item=item,
        annotator=annotator,
        served_at=served,
        submitted_at=submitted,
        active_ms=active_ms,
        undone_at=undone_at,
    )
    if not undone:
        Item.objects.filter(pk=item.pk).update(live_submissions=F("live_submissions") + 1)
    for key, value in answers.items():
        Label.objects.create(
            submission=submission,
            item=item,
            annotator=annotator,
            question=Question.objects.get(project=item.project, key=key),
            value=value,
            created_at=submitted,
            undone_at=undone_at,
        )
    return submission


def response_ids(item: Item) -> list[int]:
    return list(item.placements.order_by("position").values_list("response_id", flat=True))
