"""The snapshot's data, read from the database as streams of plain dicts.

Labels come through a server-side cursor on PostgreSQL, ordered by item, in chunks: for each
chunk, two more queries fetch the texts of the chunk's items' responses. Memory holds a chunk,
never the table. The filters become SQL conditions here and nowhere else.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from django.db import connections
from django.db.models import Exists, OuterRef, Q, QuerySet

from webapp.annotation.models import (
    AnnotationEvent,
    Flag,
    FlagStatus,
    ItemResponse,
    Label,
    Project,
    Response,
)
from webapp.annotation.questions import QuestionKind
from webapp.exports.rows import LabelFact, Scale

CHUNK = 5_000


def _item_conditions(filters: Mapping[str, Any], *, optional_item: bool = False) -> list[Q]:
    """Conditions on the row's `item` (gold, flags, model versions). With `optional_item`
    (the event log), rows without an item pass unless only gold or flagged items are asked."""
    conditions: list[Q] = []
    flagged = Exists(
        Flag.objects.filter(item_id=OuterRef("item_id")).exclude(status=FlagStatus.DISMISSED)
    )
    gold, flags = filters["gold"], filters["flagged"]
    if gold == "only":
        conditions.append(Q(item__is_gold=True))
    elif gold == "exclude":
        not_gold = Q(item__is_gold=False)
        conditions.append(not_gold | Q(item__isnull=True) if optional_item else not_gold)
    if flags == "exclude":
        conditions.append(~Q(flagged))
    elif flags == "only":
        conditions.append(Q(flagged))
    if filters["model_versions"]:
        # Keep items none of whose responses comes from a version outside the list; responses
        # written by people have no version and never exclude an item.
        other_version = ItemResponse.objects.filter(
            item_id=OuterRef("item_id"), response__model_version__isnull=False
        ).exclude(response__model_version__name__in=filters["model_versions"])
        conditions.append(~Q(Exists(other_version)))
    return conditions


def labels(
    project: Project, filters: Mapping[str, Any], kinds: Iterable[str], *, live_only: bool = True
) -> QuerySet[Label]:
    """The project's labels of `kinds` that the filters keep (live ones unless `live_only` is
    False: the event log shows undone labels too)."""
    queryset = Label.objects.filter(item__project=project, question__kind__in=list(kinds))
    if live_only:
        queryset = queryset.filter(undone_at__isnull=True)
    if filters["since"]:
        queryset = queryset.filter(created_at__gte=filters["since"])
    if filters["until"]:
        queryset = queryset.filter(created_at__lt=filters["until"])
    if filters["annotators"]:
        queryset = queryset.filter(annotator__username__in=filters["annotators"])
    return queryset.filter(*_item_conditions(filters))


def kinds_for(dataset_kinds: Iterable[str], filters: Mapping[str, Any]) -> list[str]:
    wanted = set(dataset_kinds)
    if filters["label_kinds"]:
        wanted &= set(filters["label_kinds"])
    return sorted(wanted)


def label_facts(
    project: Project, filters: Mapping[str, Any], kinds: Iterable[str], chunk: int = CHUNK
) -> Iterator[LabelFact]:
    """Live labels of `kinds`, ordered by item (then annotator), with prompt and responses.

    The order follows the unique index on (item, annotator, question) of live labels, so
    PostgreSQL streams it without sorting the table.
    """
    questions = {q.pk: q for q in project.questions.all()}
    queryset = (
        labels(project, filters, kinds)
        .order_by("item_id", "annotator_id", "question_id")
        .values_list(
            "item_id",
            "item__prompt__text",
            "item__prompt__digest",
            "annotator_id",
            "question_id",
            "value",
        )
    )
    for batch in _raw_chunks(queryset, chunk):
        responses = _responses({row[0] for row in batch})
        for item_id, prompt, digest, annotator_id, question_id, value in batch:
            question = questions[question_id]
            yield {
                "item_id": item_id,
                "prompt": prompt,
                "prompt_digest": digest,
                "responses": responses[item_id],
                "annotator_id": annotator_id,
                "question": question.key,
                "kind": question.kind,
                "value": value if isinstance(value, dict) else json.loads(value),
            }


def _raw_chunks(queryset: QuerySet[Any, Any], chunk: int) -> Iterator[list[tuple[Any, ...]]]:
    """The queryset's rows in lists of `chunk`, through a server-side cursor on PostgreSQL.

    Raw rows, not `.iterator()`: Django's per-row converters (the JSON field's among them) cost
    a third of the export's time, and the JSON is decoded above, once, the same way.
    """
    sql, params = queryset.query.sql_with_params()
    with connections[queryset.db].chunked_cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(chunk):
            yield rows


def _responses(item_ids: set[int]) -> dict[int, list[tuple[int, str]]]:
    """The responses of the items, in their stored order, in two index scans: the placements
    by a range of item ids (a chunk's ids are consecutive in the label order), then the texts
    by primary key. One joined query made PostgreSQL scan the whole response table per chunk."""
    placements = (
        ItemResponse.objects.filter(item_id__gte=min(item_ids), item_id__lte=max(item_ids))
        .order_by("item_id", "position")
        .values_list("item_id", "response_id")
    )
    wanted = [(item_id, response_id) for item_id, response_id in placements if item_id in item_ids]
    texts = _texts([response_id for _, response_id in wanted])
    responses: dict[int, list[tuple[int, str]]] = {item_id: [] for item_id in item_ids}
    for item_id, response_id in wanted:
        responses[item_id].append((response_id, texts[response_id]))
    return responses


def _texts(response_ids: list[int]) -> dict[int, str]:
    connection = connections[Response.objects.db]
    if connection.vendor != "postgresql":
        return dict(Response.objects.filter(pk__in=response_ids).values_list("pk", "text"))
    # One array parameter instead of thousands of IN parameters: three times faster.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, text FROM {Response._meta.db_table} WHERE id = ANY(%s)", [response_ids]
        )
        return dict(cursor.fetchall())


def likert_scales(project: Project) -> dict[str, Scale]:
    """The project's Likert attributes (question keys, in question order) and their scales."""
    return {
        q.key: Scale(q.config["min"], q.config["max"])
        for q in project.questions.filter(kind=QuestionKind.LIKERT)
    }


def events(
    project: Project, filters: Mapping[str, Any], chunk: int = CHUNK
) -> Iterator[dict[str, Any]]:
    """Every annotation event and every label (live or undone) the filters keep, merged in
    time order from two streams."""
    event_rows = (
        {
            "at": at,
            "event": kind,
            "annotator_id": annotator_id,
            "item_id": item_id,
            "active_ms": active_ms,
            "details": details,
        }
        for at, kind, annotator_id, item_id, active_ms, details in _logged(project, filters)
        .order_by("at", "id")
        .values_list("at", "kind", "annotator_id", "item_id", "active_ms", "details")
        .iterator(chunk_size=chunk)
    )
    every_kind = kinds_for(QuestionKind.values, filters)
    label_rows = (
        {
            "at": at,
            "event": "label",
            "annotator_id": annotator_id,
            "item_id": item_id,
            "question": question,
            "value": value,
            "undone_at": undone_at,
        }
        for at, annotator_id, item_id, question, value, undone_at in labels(
            project, filters, every_kind, live_only=False
        )
        .order_by("created_at", "id")
        .values_list("created_at", "annotator_id", "item_id", "question__key", "value", "undone_at")
        .iterator(chunk_size=chunk)
    )
    return heapq.merge(event_rows, label_rows, key=_moment)


def _logged(project: Project, filters: Mapping[str, Any]) -> QuerySet[AnnotationEvent]:
    logged = AnnotationEvent.objects.filter(project=project)
    if filters["since"]:
        logged = logged.filter(at__gte=filters["since"])
    if filters["until"]:
        logged = logged.filter(at__lt=filters["until"])
    if filters["annotators"]:
        logged = logged.filter(annotator__username__in=filters["annotators"])
    return logged.filter(*_item_conditions(filters, optional_item=True))


def _moment(row: Mapping[str, Any]) -> datetime:
    moment: datetime = row["at"]
    return moment


def count_events(project: Project, filters: Mapping[str, Any]) -> int:
    logged = _logged(project, filters).count()
    every_kind = kinds_for(QuestionKind.values, filters)
    return logged + labels(project, filters, every_kind, live_only=False).count()


def estimate(project: Project, filters: Mapping[str, Any], kinds: Sequence[str]) -> int:
    return labels(project, filters, kinds).count() if kinds else 0
