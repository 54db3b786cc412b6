"""The annotator's side: their projects, the annotate page (one item at a time, swapped in by
htmx), submit / skip / flag / undo, prompt writing, and their history.

Every POST answers with the next item's fragment, or with a 4xx fragment carrying the message
that the services gave (retargeted to the item's message box so a half-filled form survives).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from django.core.paginator import Paginator
from django.db.models import Prefetch, prefetch_related_objects
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect, trigger_client_event
from django_htmx.middleware import HtmxDetails

from webapp.accounts.decorators import role_required
from webapp.accounts.models import Role, User
from webapp.annotation import labelling, queue
from webapp.annotation.models import (
    Item,
    Label,
    Membership,
    Project,
    Submission,
)
from webapp.annotation.questions import MAX_TEXT, TaskType
from webapp.annotation.queue import AnnotationError
from webapp.core.oversized import answers_too_large

PAGE = "annotation/workspace/annotate.html"
HISTORY_PAGE_SIZE = 25
# Form fields that carry several values (a ranking's order, ticked flags).
LIST_FIELDS = {"order", "flags"}


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)
    return request.user


def _project_for(request: HttpRequest, slug: str) -> Project:
    """The project, if the user is a member of it; 404 otherwise (no hint that it exists).

    Its questions come along: a submit checks the answers against them, then the next item shows
    them and offers flag reasons from them (one query instead of three).
    """
    memberships = Membership.objects.filter(project__slug=slug, user=_user(request))
    membership = memberships.select_related("project").first()
    if membership is None:
        raise Http404("No such project.")
    prefetch_related_objects([membership.project], "questions")
    return membership.project


def _item_for(project: Project, item_id: int) -> Item:
    """An item of `project`; a guessed id of another project's item is a 404."""
    item = get_object_or_404(Item, pk=item_id, project=project)
    item.project = project  # the same object, with its questions already loaded
    return item


def _answers_from_post(data: QueryDict) -> dict[str, dict[str, Any]]:
    """Fields named q-<question key>-<field> grouped by question key."""
    answers: dict[str, dict[str, Any]] = {}
    for name in data:
        if not name.startswith("q-") or name.count("-") < 2:
            continue
        key, field = name[2:].rsplit("-", 1)
        value = data.getlist(name) if field in LIST_FIELDS else data.get(name)
        answers.setdefault(key, {})[field] = value
    return answers


def _active_ms(data: QueryDict) -> int:
    raw = data.get("active_ms", "0").strip()
    if not re.fullmatch(r"\d{1,10}", raw, re.ASCII):
        raise AnnotationError("active_ms must be a whole number of milliseconds.", 400)
    return int(raw)


def _error(request: HttpRequest, project: Project | None, error: AnnotationError) -> HttpResponse:
    context = {"project": project, "error": error}
    response = render(request, f"{PAGE}#error", context, status=error.status)
    response["HX-Retarget"] = "#item-message"
    response["HX-Reswap"] = "innerHTML"
    return response


def _too_large(request: HttpRequest, field: str) -> HttpResponse:
    """A form too large to read at all (webapp.core.oversized): a text far past its maxlength.
    The refusal goes where every refusal goes, so the item and what was typed stay."""
    key = field[2:].rsplit("-", 1)[0] if field.startswith("q-") and field.count("-") >= 2 else field
    limit = labelling.MAX_REASON if key == "reason" else MAX_TEXT
    message = f"This text is far too long to send: shorten it to at most {limit:,} characters."
    return _error(request, None, AnnotationError(message, 413, field=key))


def item_context(project: Project, user: User) -> dict[str, Any]:
    """What the item partial needs: the next lease (or none left) and the annotator's progress."""
    lease = queue.next_item(project, user)
    context: dict[str, Any] = {"project": project, "lease": lease, "item": None}
    if lease is not None:
        item = lease.item
        placements = item.placements.select_related("response").order_by("position")
        context |= {
            "item": item,
            "questions": list(project.questions.all()),
            "responses": [p.response for p in placements],
            "previous": labelling.previous_answers(item, user),
        }
    context["progress"] = progress = queue.progress(project, user)
    context["flag_options"] = labelling.flag_options(project)
    context["can_undo"] = _in_undo_window(project, progress.last_answer_at)
    return context


def _in_undo_window(project: Project, answered_at: datetime | None) -> bool:
    if answered_at is None:
        return False
    return (timezone.now() - answered_at).total_seconds() <= project.undo_window_seconds


def _undoable(project: Project, user: User) -> Submission | None:
    """The submission an undo would take back now, if any."""
    last = (
        Submission.objects.filter(item__project=project, annotator=user, undone_at__isnull=True)
        .order_by("-submitted_at", "-id")
        .first()
    )
    if last is None:
        return None
    return last if _in_undo_window(project, last.submitted_at) else None


def _next(request: HtmxHttpRequest, project: Project, event: str) -> HttpResponse:
    if not request.htmx:  # a form posted without JavaScript: back to the page
        return redirect("annotation:annotate", slug=project.slug)
    response = render(request, f"{PAGE}#item", item_context(project, _user(request)))
    trigger_client_event(response, event)
    return response


@role_required(Role.ANNOTATOR, Role.ADMIN)
@require_GET
def projects(request: HtmxHttpRequest) -> HttpResponse:
    user = _user(request)
    memberships = (
        Membership.objects.filter(user=user).select_related("project").order_by("project__name")
    )
    rows = [
        {
            "membership": m,
            "project": m.project,
            "progress": queue.progress(m.project, user),
            "can_annotate": m.project.is_active and not m.paused,
        }
        for m in memberships
    ]
    return render(request, "annotation/workspace/projects.html", {"rows": rows})


@role_required(Role.ANNOTATOR, Role.ADMIN)
@require_GET
def annotate(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = _project_for(request, slug)
    try:
        context = item_context(project, _user(request))
    except AnnotationError as error:
        blocked = {"project": project, "blocked": error}
        return render(request, PAGE, blocked, status=error.status)
    if project.task_type == TaskType.PROMPT_WRITING:
        context["written"] = labelling.written_prompts(project, _user(request))
    template = f"{PAGE}#item" if request.htmx else PAGE
    return render(request, template, context)


@answers_too_large(_too_large)
@role_required(Role.ANNOTATOR, Role.ADMIN)
@require_POST
def submit(request: HtmxHttpRequest, slug: str, item_id: int) -> HttpResponse:
    project = _project_for(request, slug)
    item = _item_for(project, item_id)
    try:
        active_ms = _active_ms(request.POST)
        labelling.submit(
            item, _user(request), _answers_from_post(request.POST), active_ms=active_ms
        )
    except AnnotationError as error:
        return _error(request, project, error)
    return _next(request, project, "annotation:submitted")


@answers_too_large(_too_large)
@role_required(Role.ANNOTATOR, Role.ADMIN)
@require_POST
def skip(request: HtmxHttpRequest, slug: str, item_id: int) -> HttpResponse:
    project = _project_for(request, slug)
    item = _item_for(project, item_id)
    try:
        labelling.skip(item, _user(request), request.POST.get("reason", ""))
    except AnnotationError as error:
        return _error(request, project, error)
    return _next(request, project, "annotation:skipped")


@answers_too_large(_too_large)
@role_required(Role.ANNOTATOR, Role.ADMIN)
@require_POST
def flag(request: HtmxHttpRequest, slug: str, item_id: int) -> HttpResponse:
    project = _project_for(request, slug)
    item = _item_for(project, item_id)
    reason, note = request.POST.get("reason", ""), request.POST.get("note", "")
    try:
        labelling.flag(item, _user(request), reason, note)
    except AnnotationError as error:
        return _error(request, project, error)
    return _next(request, project, "annotation:flagged")


@role_required(Role.ANNOTATOR, Role.ADMIN)
@require_POST
def undo(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = _project_for(request, slug)
    try:
        labelling.undo_last(project, _user(request))
    except AnnotationError as error:
        return _error(request, project, error)
    if request.htmx and request.POST.get("from") == "history":
        return HttpResponseClientRedirect(reverse("annotation:annotate", args=[project.slug]))
    return _next(request, project, "annotation:undone")


@answers_too_large(_too_large)
@role_required(Role.ANNOTATOR, Role.ADMIN)
@require_POST
def write_prompt(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = _project_for(request, slug)
    user = _user(request)
    try:
        labelling.write_prompt(project, user, request.POST.get("text", ""), {})
    except AnnotationError as error:
        return _error(request, project, error)
    context = item_context(project, user) | {"written": labelling.written_prompts(project, user)}
    response = render(request, f"{PAGE}#item", context)
    trigger_client_event(response, "annotation:prompt-written")
    return response


@role_required(Role.ANNOTATOR, Role.ADMIN)
@require_GET
def history(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = _project_for(request, slug)
    user = _user(request)
    submissions = (
        Submission.objects.filter(item__project=project, annotator=user)
        .select_related("item__prompt")
        .prefetch_related(
            Prefetch("labels", Label.objects.select_related("question"), to_attr="label_list")
        )
        .order_by("-submitted_at", "-id")
    )
    page = Paginator(submissions, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    undoable = _undoable(project, user)
    context = {"project": project, "page": page, "undoable_id": undoable.pk if undoable else None}
    template = "annotation/workspace/history.html"
    return render(request, f"{template}#rows" if request.htmx else template, context)
