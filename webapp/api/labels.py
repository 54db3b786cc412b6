"""Pages of a project's labels for the API, oldest first, by a cursor (the last label id seen):
new labels only ever append, so a client that pages to the end and later resumes from its last
cursor sees each label exactly once, which page numbers would not guarantee."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import F, QuerySet

from webapp.annotation.models import Label, Project
from webapp.annotation.quality_reports import response_orders
from webapp.api.pseudonyms import pseudonyms, user_with_pseudonym


class FilterError(Exception):
    """A filter that is well-formed but names nothing in this project."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class LabelFilters:
    after: int = 0
    limit: int = 100
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    question: str | None = None
    annotator: str | None = None  # a pseudonym
    gold: bool | None = None
    include_undone: bool = False


@dataclass(frozen=True)
class LabelPage:
    rows: list[dict[str, Any]]
    next_cursor: int | None


def label_page(project: Project, filters: LabelFilters) -> LabelPage:
    rows = _filtered(project, filters).order_by("id")
    found = list(
        rows.values(
            "id",
            "item_id",
            "value",
            "annotator_id",
            "created_at",
            "undone_at",
            prompt_id=F("item__prompt_id"),
            is_gold=F("item__is_gold"),
            question_key=F("question__key"),
            kind=F("question__kind"),
            active_ms=F("submission__active_ms"),
        )[: filters.limit + 1]
    )
    more, found = len(found) > filters.limit, found[: filters.limit]
    orders = response_orders({row["item_id"] for row in found})
    names = pseudonyms(project.pk, {row["annotator_id"] for row in found})
    shown = [
        {
            "id": row["id"],
            "item_id": row["item_id"],
            "prompt_id": row["prompt_id"],
            "is_gold": row["is_gold"],
            "response_ids": orders.get(row["item_id"], []),
            "question": row["question_key"],
            "kind": row["kind"],
            "value": row["value"],
            # Never the id or username: the pseudonym is all a researcher sees of a person.
            "annotator": names[row["annotator_id"]],
            "created_at": row["created_at"],
            "active_ms": row["active_ms"],
            "undone_at": row["undone_at"],
        }
        for row in found
    ]
    return LabelPage(shown, found[-1]["id"] if more else None)


def _filtered(project: Project, filters: LabelFilters) -> QuerySet[Label]:
    rows = Label.objects.filter(item__project=project, id__gt=filters.after)
    if not filters.include_undone:
        rows = rows.filter(undone_at__isnull=True)
    if filters.since is not None:
        rows = rows.filter(created_at__gte=filters.since)
    if filters.until is not None:
        rows = rows.filter(created_at__lt=filters.until)
    if filters.gold is not None:
        rows = rows.filter(item__is_gold=filters.gold)
    if filters.question is not None:
        rows = rows.filter(question=_question_id(project, filters.question))
    if filters.annotator is not None:
        rows = rows.filter(annotator_id=_annotator_id(project, filters.annotator))
    return rows


def _question_id(project: Project, key: str) -> int:
    keys = dict(project.questions.values_list("key", "id"))
    if key not in keys:
        known = ", ".join(sorted(keys)) or "none"
        raise FilterError(
            f"Project {project.slug!r} has no question {key!r}; its questions are: {known}.",
            "question",
        )
    return keys[key]


def _annotator_id(project: Project, pseudonym: str) -> int:
    user_id = user_with_pseudonym(project.pk, pseudonym)
    if user_id is None:
        raise FilterError(
            f"No annotator has the pseudonym {pseudonym!r} in this project.", "annotator"
        )
    return user_id
