"""Factories for export tests: labels written straight into the tables (the labelling services
and their leases are tested elsewhere), and an export directory per test."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.webapp.annotation.conftest import add_items, make_project  # noqa: F401 (fixtures)
from tests.webapp.annotation.scripted import response_ids
from webapp.accounts.models import User
from webapp.annotation.models import AnnotationEvent, EventKind, Item, Label, Question, Submission

AddLabel = Callable[..., Label]
START = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def export_dir(tmp_path: Path, settings: Any) -> Path:
    settings.EXPORT_DIR = tmp_path / "exports"
    return settings.EXPORT_DIR


@pytest.fixture
def add_label(db: None) -> AddLabel:
    """add_label(item, annotator, question_key, value, minutes=0, active_ms=1000): a live
    label in the annotator's (new or existing) live submission, and its 'submitted' event."""

    def add(
        item: Item,
        annotator: User,
        key: str,
        value: dict[str, Any],
        *,
        minutes: int = 0,
        active_ms: int = 1000,
    ) -> Label:
        at = START + timedelta(minutes=minutes)
        submission = Submission.objects.filter(
            item=item, annotator=annotator, undone_at__isnull=True
        ).first()
        if submission is None:
            submission = Submission.objects.create(
                item=item, annotator=annotator, served_at=at, submitted_at=at, active_ms=active_ms
            )
            AnnotationEvent.objects.create(
                kind=EventKind.SUBMITTED,
                project=item.project,
                item=item,
                annotator=annotator,
                at=at,
                active_ms=active_ms,
            )
        question = Question.objects.get(project=item.project, key=key)
        return Label.objects.create(
            submission=submission,
            item=item,
            annotator=annotator,
            question=question,
            value=value,
            created_at=at,
        )

    return add


def win(item: Item, side: int, strength: int = 2) -> dict[str, Any]:
    return {"outcome": "win", "winner": response_ids(item)[side], "strength": strength}
