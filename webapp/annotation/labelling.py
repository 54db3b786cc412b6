"""What annotators do with an item: submit answers, skip, flag, undo, and write prompts.

Each service runs in one transaction and either does everything or raises AnnotationError
before anything is written. State the queue depends on (`Item.live_submissions`,
`Item.is_complete`) changes only under a row lock on the item.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from webapp.accounts.models import User
from webapp.annotation import queue
from webapp.annotation.models import (
    AnnotationEvent,
    EventKind,
    Flag,
    Item,
    Label,
    Lease,
    Project,
    Prompt,
    PromptSource,
    Question,
    Skip,
    Submission,
    text_digest,
)
from webapp.annotation.questions import MAX_TEXT, QuestionKind, TaskType, clean_answer
from webapp.annotation.queue import AnnotationError
from webapp.storable import storable_problem

__all__ = [
    "AnnotationError",
    "flag",
    "flag_options",
    "previous_answers",
    "skip",
    "submit",
    "undo_last",
    "write_prompt",
]

OTHER_FLAG = "other"
MAX_REASON = 500


def _response_ids_and_original(item: Item) -> tuple[list[int], str]:
    placements = list(item.placements.select_related("response").order_by("position"))
    ids = [p.response_id for p in placements]
    original = placements[0].response.text if placements else ""
    return ids, original


def clean_answers(item: Item, answers: Mapping[str, Any]) -> list[tuple[Question, dict[str, Any]]]:
    """Each of the project's questions with the value to store; AnnotationError(400) if an
    answer is missing, unknown or invalid."""
    if not isinstance(answers, Mapping):
        raise AnnotationError("Answers must be given per question.", 400)
    questions = list(item.project.questions.all())
    known = {q.key for q in questions}
    unknown = sorted(str(key) for key in answers if key not in known)
    if unknown:
        raise AnnotationError(f"Unknown question(s): {', '.join(unknown)}.", 400)
    response_ids, original = _response_ids_and_original(item)
    cleaned: list[tuple[Question, dict[str, Any]]] = []
    for question in questions:
        raw = answers.get(question.key)
        if raw is None:
            if question.required:
                raise AnnotationError(f"Please answer: {question.text}", 400, field=question.key)
            continue
        if not isinstance(raw, Mapping):
            raise AnnotationError(f"{question.text}: malformed answer.", 400, field=question.key)
        try:
            value = clean_answer(
                question.kind,
                question.config,
                raw,
                response_ids=response_ids,
                original_text=original,
            )
        except ValidationError as error:
            message = " ".join(error.messages)
            raise AnnotationError(f"{question.text}: {message}", 400, field=question.key) from None
        if question.required and question.kind == QuestionKind.TEXT and not value["text"].strip():
            raise AnnotationError(f"Please answer: {question.text}", 400, field=question.key)
        cleaned.append((question, value))
    return cleaned


def _lock_item(item: Item) -> Item:
    locked = Item.objects.select_for_update().get(pk=item.pk)
    locked.project = item.project  # already loaded, with its questions
    return locked


def _live_submission(item: Item, annotator: User) -> Submission | None:
    return Submission.objects.filter(item=item, annotator=annotator, undone_at__isnull=True).first()


def _held_lease(item: Item, annotator: User, now: datetime) -> Lease:
    """The annotator's lease on the locked item, or 409 when it is gone, its slot was taken, or
    they answered already (a lease ends with the answer, so only a missing one needs the look)."""
    lease = Lease.objects.filter(item=item, annotator=annotator).first()
    if lease is None:
        if _live_submission(item, annotator) is not None:
            raise AnnotationError("You have already answered this item.", 409)
        raise AnnotationError(
            "This item is no longer reserved for you (it was released). Load the next item.", 409
        )
    if lease.expires_at <= now and not queue.slot_is_free(item, annotator, now):
        raise AnnotationError(
            "Your time on this item ran out and it went to someone else. Load the next item.", 409
        )
    if item.is_complete and not item.is_gold:
        raise AnnotationError("This item has all the answers it needs. Load the next item.", 409)
    return lease


def submit(
    item: Item,
    annotator: User,
    answers: Mapping[str, Mapping[str, Any]],
    *,
    active_ms: int,
    now: datetime | None = None,
) -> Submission:
    """Store the annotator's answers to `item` (held under their lease) as one submission."""
    now = now or timezone.now()
    if isinstance(active_ms, bool) or not isinstance(active_ms, int):
        raise AnnotationError("active_ms must be a whole number of milliseconds.", 400)
    with transaction.atomic():
        queue.check_can_annotate(item.project, annotator)
        cleaned = clean_answers(item, answers)
        locked = _lock_item(item)
        lease = _held_lease(locked, annotator, now)
        served_at = min(lease.created_at, now)
        elapsed_ms = int((now - served_at).total_seconds() * 1000)
        submission = Submission.objects.create(
            item=locked,
            annotator=annotator,
            served_at=served_at,
            submitted_at=now,
            active_ms=max(0, min(active_ms, elapsed_ms)),
        )
        Label.objects.bulk_create(
            Label(
                submission=submission,
                item=locked,
                annotator=annotator,
                question=question,
                value=value,
                created_at=now,
            )
            for question, value in cleaned
        )
        locked.live_submissions += 1
        if not locked.is_gold and locked.live_submissions >= locked.project.overlap:
            locked.is_complete = True
        locked.save(update_fields=["live_submissions", "is_complete"])
        lease.delete()
        _event(EventKind.SUBMITTED, locked, annotator, now, active_ms=submission.active_ms)
    return submission


def skip(item: Item, annotator: User, reason: str = "", *, now: datetime | None = None) -> Skip:
    """Pass on `item`: it is never served to this annotator again."""
    now = now or timezone.now()
    if len(reason) > MAX_REASON:
        raise AnnotationError(
            f"The reason is longer than {MAX_REASON} characters.", 400, field="reason"
        )
    _check_storable(reason, "The reason", "reason")
    with transaction.atomic():
        queue.check_can_annotate(item.project, annotator)
        locked = _lock_item(item)
        if _live_submission(locked, annotator) is not None:
            raise AnnotationError("You have already answered this item.", 409)
        if Skip.objects.filter(item=locked, annotator=annotator).exists():
            raise AnnotationError("You have already skipped this item.", 409)
        created = Skip.objects.create(
            item=locked, annotator=annotator, reason=reason.strip(), created_at=now
        )
        Lease.objects.filter(item=locked, annotator=annotator).delete()
        _event(EventKind.SKIPPED, locked, annotator, now, details={"reason": created.reason})
    return created


def flag_options(project: Project) -> list[str]:
    """The reasons an annotator may flag an item with: the project's flag options, then other."""
    options: list[str] = []
    for question in project.questions.all():
        if question.kind == QuestionKind.FLAGS:
            options += [o for o in question.config.get("options", []) if o not in options]
    return [*options, OTHER_FLAG]


def flag(
    item: Item, annotator: User, reason: str, note: str = "", *, now: datetime | None = None
) -> Flag:
    """Report `item`, served to the annotator, for review; it leaves everyone's queue while the
    flag is open. AnnotationError(403) for an item never served to them: a flag withholds its
    item from every annotator, so an id guessed in the URL must not."""
    now = now or timezone.now()
    if reason not in flag_options(item.project):
        allowed = ", ".join(flag_options(item.project))
        raise AnnotationError(f"Choose a reason among: {allowed}.", 400, field="reason")
    if reason == OTHER_FLAG and not note.strip():
        raise AnnotationError("Say what is wrong when the reason is 'other'.", 400, field="note")
    if len(note) > MAX_TEXT:
        raise AnnotationError(f"The note is longer than {MAX_TEXT} characters.", 400, field="note")
    _check_storable(note, "The note", "note")
    with transaction.atomic():
        queue.check_can_annotate(item.project, annotator)
        locked = _lock_item(item)
        if not _was_served(locked, annotator):
            raise AnnotationError("You can only flag an item that was served to you.", 403)
        if Flag.objects.filter(item=locked, annotator=annotator).exists():
            raise AnnotationError("You have already flagged this item.", 409)
        created = Flag.objects.create(
            item=locked, annotator=annotator, reason=reason, note=note.strip(), created_at=now
        )
        Lease.objects.filter(item=locked, annotator=annotator).delete()
        _event(EventKind.FLAGGED, locked, annotator, now, details={"reason": reason})
    return created


def _was_served(item: Item, annotator: User) -> bool:
    """Whether the queue ever handed `item` to `annotator` (every lease is granted with a SERVED
    event, and the event outlives the lease: an answered or expired item counts too)."""
    return AnnotationEvent.objects.filter(
        item=item, annotator=annotator, kind=EventKind.SERVED
    ).exists()


def undo_last(project: Project, annotator: User, *, now: datetime | None = None) -> Submission:
    """Take back the annotator's latest live submission in `project` within the undo window;
    the item comes back to them under a fresh lease. The undone rows stay as history."""
    now = now or timezone.now()
    with transaction.atomic():
        queue.check_can_annotate(project, annotator)
        last = (
            Submission.objects.filter(
                item__project=project, annotator=annotator, undone_at__isnull=True
            )
            .order_by("-submitted_at", "-id")
            .first()
        )
        if last is None:
            raise AnnotationError("There is nothing to undo.", 409)
        if (now - last.submitted_at).total_seconds() > project.undo_window_seconds:
            raise AnnotationError("Your last answer is older than the undo window.", 409)
        locked = _lock_item(last.item)
        last.undone_at = now
        last.save(update_fields=["undone_at"])
        last.labels.update(undone_at=now)
        locked.live_submissions = max(0, locked.live_submissions - 1)
        locked.is_complete = False
        locked.save(update_fields=["live_submissions", "is_complete"])
        queue.grant_lease(locked, annotator, now)
        _event(EventKind.UNDONE, locked, annotator, now, details={"submission": last.pk})
    return last


def previous_answers(item: Item, annotator: User) -> dict[str, dict[str, Any]]:
    """The annotator's last undone answers to `item` (by question key), to pre-fill the form.

    Asked for every item served, and almost always empty: one short SQL statement.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT q.key, l.value FROM annotation_label l
            JOIN annotation_question q ON q.id = l.question_id
            WHERE l.submission_id = (
                SELECT s.id FROM annotation_submission s
                WHERE s.item_id = %s AND s.annotator_id = %s AND s.undone_at IS NOT NULL
                ORDER BY s.undone_at DESC, s.id DESC LIMIT 1)""",
            [item.pk, annotator.pk],
        )
        rows = cursor.fetchall()
    # JSON columns come back as text from both databases (Django decodes them in the field).
    return {key: json.loads(value) if isinstance(value, str) else value for key, value in rows}


def write_prompt(
    project: Project,
    annotator: User,
    text: str,
    metadata: Mapping[str, Any] | None = None,
    *,
    now: datetime | None = None,
) -> Prompt:
    """A prompt written by an annotator for a prompt-writing project."""
    now = now or timezone.now()
    if project.task_type != TaskType.PROMPT_WRITING:
        raise AnnotationError("This project does not take written prompts.", 400)
    if not isinstance(text, str) or not text.strip():
        raise AnnotationError("The prompt is empty.", 400, field="text")
    if len(text) > MAX_TEXT:
        raise AnnotationError(
            f"The prompt is longer than {MAX_TEXT} characters.", 400, field="text"
        )
    if metadata is not None and not isinstance(metadata, Mapping):
        raise AnnotationError("Metadata must be an object.", 400)
    _check_storable(text, "The prompt", "text")
    _check_storable(metadata, "The metadata")
    text = text.strip().replace("\r\n", "\n")
    with transaction.atomic():
        queue.check_can_annotate(project, annotator)
        if Prompt.objects.filter(project=project, digest=text_digest(text)).exists():
            raise AnnotationError("This prompt is already in the project.", 409, field="text")
        try:
            with transaction.atomic():
                prompt = Prompt.objects.create(
                    project=project,
                    text=text,
                    source=PromptSource.ANNOTATOR,
                    metadata=dict(metadata or {}),
                    created_by=annotator,
                    created_at=now,
                )
        except IntegrityError:  # the same text written at the same moment by someone else
            raise AnnotationError("This prompt is already in the project.", 409) from None
        AnnotationEvent.objects.create(
            kind=EventKind.PROMPT_WRITTEN,
            project=project,
            annotator=annotator,
            at=now,
            details={"prompt": prompt.pk},
        )
    return prompt


def written_prompts(project: Project, annotator: User) -> int:
    return Prompt.objects.filter(
        project=project, created_by=annotator, source=PromptSource.ANNOTATOR
    ).count()


def _check_storable(value: object, what: str, field: str = "") -> None:
    if problem := storable_problem(value, what):
        raise AnnotationError(problem, 400, field=field)


def _event(
    kind: str,
    item: Item,
    annotator: User,
    now: datetime,
    *,
    active_ms: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    AnnotationEvent.objects.create(
        kind=kind,
        project=item.project,
        item=item,
        annotator=annotator,
        at=now,
        active_ms=active_ms,
        details=details or {},
    )
