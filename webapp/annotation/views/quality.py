"""Quality pages: admins see and act; researchers see everything and change nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.middleware import HtmxDetails

from webapp.accounts.decorators import role_required
from webapp.accounts.models import Role, User
from webapp.annotation import quality_reports as reports
from webapp.annotation import reviews
from webapp.annotation.models import FlagStatus, Item, Membership, Project
from webapp.annotation.questions import QuestionKind
from webapp.storable import unstorable_character

VIEWERS = (Role.ADMIN, Role.RESEARCHER)
PERIODS = {"7": 7, "30": 30, "all": None}
FLAG_PAGE_SIZE = 20
COLUMNS = [  # header, sort key (quality_reports.SORT_KEYS)
    ("Annotator", "name"),
    ("Submissions", "submissions"),
    ("Per active hour", "active_rate"),
    ("Per wall hour", "wall_rate"),
    ("Median time", "median_time"),
    ("Gold", "gold"),
    ("Agrees with others", "consensus"),
    ("Skips", "skips"),
    ("Flags", "flags"),
    ("Undos", "undos"),
]


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)
    return request.user


@role_required(*VIEWERS)
@require_GET
def overview(request: HtmxHttpRequest) -> HttpResponse:
    summaries = reports.project_summaries(list(Project.objects.all()))
    context = {"summaries": summaries, "cap": reports.OVERVIEW_ITEM_CAP}
    return render(request, "annotation/quality/overview.html", context)


@role_required(*VIEWERS)
@require_GET
def project_quality(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """Agreement, scale distributions and gold of a project; below, the consensus of every
    answered item, or of the disputed ones (`?show=disputed`), paged with htmx."""
    project = get_object_or_404(Project, slug=slug)
    questions = list(project.questions.all())
    disputed = request.GET.get("show") == "disputed"
    sample = reports.label_sample(project) if disputed or not request.htmx else None
    split = reports.disputed_items(questions, sample) if sample else []
    page, consensus = reports.consensus_page(
        project, request.GET.get("page"), only=split if disputed else None
    )
    context: dict[str, Any] = {
        "project": project,
        "page": page,
        "consensus": consensus,
        "show": "disputed" if disputed else "all",
        "disputed_count": len(split),
    }
    if request.htmx:
        return render(request, "annotation/quality/project.html#consensus", context)
    assert sample is not None  # read for every full page
    gold = reports.gold_by_question(project)
    context |= {
        "sample": sample,
        "cap": reports.AGREEMENT_ITEM_CAP,
        "agreements": reports.project_agreement(questions, sample),
        "distributions": [
            (question, histogram(reports.likert_distribution(question)))
            for question in questions
            if question.kind == QuestionKind.LIKERT
        ],
        "gold": reports.pooled(gold.values()),
        "gold_questions": [(q, gold[q.pk]) for q in questions if q.pk in gold],
    }
    return render(request, "annotation/quality/project.html", context)


@role_required(*VIEWERS)
@require_GET
def annotators(request: HtmxHttpRequest, slug: str | None = None) -> HttpResponse:
    project = get_object_or_404(Project, slug=slug) if slug else None
    period = request.GET.get("period", "30")
    period = period if period in PERIODS else "30"
    days = PERIODS[period]
    since = timezone.now() - timedelta(days=days) if days else None
    stats = reports.annotator_stats(project, since)
    rows, sort = reports.sort_stats(stats, request.GET.get("sort", "name"))
    context = {
        "project": project,
        "rows": rows,
        "sort": sort,
        "period": period,
        "periods": PERIODS,
        "columns": COLUMNS,
        "can_act": _user(request).has_role(Role.ADMIN),
        "cap": reports.AGREEMENT_ITEM_CAP if project else reports.OVERVIEW_ITEM_CAP,
    }
    template = "annotation/quality/annotators.html"
    return render(request, template + "#table" if request.htmx else template, context)


@role_required(*VIEWERS)
@require_GET
def flags(request: HtmxHttpRequest) -> HttpResponse:
    status = request.GET.get("status", FlagStatus.OPEN)
    status = status if status in FlagStatus.values else FlagStatus.OPEN
    items = reports.flagged_items(status)
    project = None
    if slug := request.GET.get("project"):
        if unstorable_character(slug):  # no project has it, and PostgreSQL refuses to look
            raise Http404("No such project.")
        project = get_object_or_404(Project, slug=slug)
        items = items.filter(project=project)
    page = Paginator(items, FLAG_PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "status": status,
        "statuses": FlagStatus.choices,
        "project": project,
        "projects": Project.objects.filter(items__flags__isnull=False).distinct(),
        "can_act": _user(request).has_role(Role.ADMIN),
    }
    return render(request, "annotation/quality/flags.html", context)


@role_required(Role.ADMIN)
@require_POST
def review_flags(request: HtmxHttpRequest, item_id: int) -> HttpResponse:
    item = get_object_or_404(Item, pk=item_id)
    status, note = request.POST.get("status", ""), request.POST.get("note", "")
    try:
        reviewed = reviews.review_flags(item, _user(request), status, note)
    except ValidationError as error:
        item = reports.flagged_items(FlagStatus.OPEN).filter(pk=item.pk).first() or item
        context = {"item": item, "can_act": True, "error": error.messages[0], "note": note}
        code = 409 if error.code == "stale" else 400
        return render(request, "annotation/quality/flags.html#flag-card", context, status=code)
    if not request.htmx:
        return redirect("annotation:quality-flags")
    item = reports.flagged_items(reviewed[0].status).get(pk=item.pk)
    context = {"item": item, "can_act": True, "reviewed": True}
    response = render(request, "annotation/quality/flags.html#flag-card", context)
    response["HX-Trigger"] = "flagsReviewed"
    return response


@role_required(Role.ADMIN)
@require_POST
def pause(request: HtmxHttpRequest, slug: str, user_id: int) -> HttpResponse:
    membership = get_object_or_404(
        Membership.objects.select_related("user", "project"), project__slug=slug, user_id=user_id
    )
    wanted, reason = request.POST.get("paused"), request.POST.get("reason", "")
    context: dict[str, Any] = {"membership": membership, "can_act": True, "reason": reason}
    try:
        if wanted not in ("0", "1"):
            raise ValidationError("Say whether to pause (1) or unpause (0).", code="invalid")
        context["membership"] = reviews.set_paused(membership, wanted == "1", reason)
    except ValidationError as error:
        context["error"] = error.messages[0]
        code = 409 if error.code == "stale" else 400
        return render(request, "annotation/quality/annotators.html#pause", context, status=code)
    if not request.htmx:
        return redirect("annotation:quality-project-annotators", slug=slug)
    response = render(request, "annotation/quality/annotators.html#pause", context)
    response["HX-Trigger"] = "membershipChanged"
    return response


def histogram(counts: list[tuple[int, int]], height: int = 90) -> dict[str, Any]:
    """An inline SVG bar chart's geometry: each score's count scaled to `height` pixels."""
    top = max((n for _, n in counts), default=0) or 1
    bars = []
    for index, (score, n) in enumerate(counts):
        bar = round(height * n / top)
        bars.append({"score": score, "count": n, "x": index * 36, "y": height - bar, "h": bar})
    return {"bars": bars, "width": max(len(counts) * 36, 36)}
