"""Training pages. Admins start, cancel and resume rounds and promote versions; researchers see
everything (rounds, versions, leaderboard, comparisons) and change nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from webapp.accounts.decorators import role_required
from webapp.accounts.models import Role, User
from webapp.annotation.models import ModelVersion, Project
from webapp.training import leaderboard, rounds, services
from webapp.training import versions as registry_pages
from webapp.training.charts import FRAME, metric_charts
from webapp.training.forms import StartRoundForm
from webapp.training.models import RoundState, TrainingRound
from webapp.training.presets import ALGORITHM_NAMES, PRESETS

VIEWERS = (Role.RESEARCHER, Role.ADMIN)
LIST_SIZE = 50
LOG_TAIL = 60


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)
    return request.user


def _round(round_id: int) -> TrainingRound:
    return get_object_or_404(
        TrainingRound.objects.select_related(
            "project", "base_version", "result_version", "label_snapshot", "created_by"
        ),
        pk=round_id,
    )


def queue_positions() -> dict[int, int]:
    """Round id -> its place (1 = next) among QUEUED rounds, oldest first."""
    queued = TrainingRound.objects.filter(state=RoundState.QUEUED).order_by("created_at", "id")
    return {pk: place for place, pk in enumerate(queued.values_list("pk", flat=True), 1)}


@role_required(*VIEWERS)
@require_GET
def round_list(request: HtmxHttpRequest) -> HttpResponse:
    """The newest rounds; the table polls itself while one of them is not finished."""
    rows = list(
        TrainingRound.objects.select_related("project", "result_version", "created_by")[:LIST_SIZE]
    )
    positions = queue_positions()
    context = {
        "rows": [(r, positions.get(r.pk)) for r in rows],
        "active": any(not r.is_finished for r in rows),
        "projects": Project.objects.select_related("serving_version"),
        "can_act": _user(request).has_role(Role.ADMIN),
    }
    template = "training/rounds.html"
    return render(request, template + "#rounds" if request.htmx else template, context)


@role_required(Role.ADMIN)
@require_http_methods(["GET", "POST"])
def start(request: HtmxHttpRequest) -> HttpResponse:
    """The start form; a valid POST queues the round and lands on its page. Errors answer 422
    with the form (just the form for htmx), and nothing is written."""
    form = StartRoundForm(request.POST or None, initial={"project": request.GET.get("project")})
    if request.method == "POST" and form.is_valid():
        try:
            created = services.create_round(_user(request), **form.round_request())
        except services.RoundInputError as error:
            form.add_error(error.field if error.field in form.fields else None, error.message)
        else:
            url = reverse("training:round", args=[created.pk])
            return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    status = 422 if request.method == "POST" else 200
    context = {"form": form, "presets": PRESETS}
    template = "training/start.html"
    return render(request, template + "#form" if request.htmx else template, context, status=status)


@role_required(*VIEWERS)
@require_GET
def round_detail(request: HtmxHttpRequest, round_id: int) -> HttpResponse:
    """A round's page; htmx polls its progress fragment (charts, logs) until it finishes."""
    template = "training/round.html"
    context = _round_context(request, _round(round_id))
    return render(request, template + "#progress" if request.htmx else template, context)


def _round_context(request: HttpRequest, training_round: TrainingRound) -> dict[str, Any]:
    planned = training_round.config.get("stages", []) or [training_round.kind]
    metrics = training_round.metrics.values_list("stage", "step", "values")
    logs = list(training_round.logs.order_by("-at", "-id")[:LOG_TAIL])[::-1]
    charts = metric_charts(metrics, planned)
    all_metrics = request.GET.get("metrics") == "all"
    return {
        "round": training_round,
        "position": queue_positions().get(training_round.pk),
        "stages": [(stage, stage in training_round.stages_done) for stage in planned],
        "charts": [chart for chart in charts if chart.primary or all_metrics],
        "hidden_charts": 0 if all_metrics else len([c for c in charts if not c.primary]),
        "all_metrics": all_metrics,
        "frame": FRAME,
        "logs": logs,
        "warnings": rounds.warnings_of(training_round.pk),
        "algorithm_name": ALGORITHM_NAMES.get(training_round.config.get("algorithm", ""), ""),
        "config_json": json.dumps(training_round.config, indent=2, sort_keys=True),
        "can_act": _user(request).has_role(Role.ADMIN),
    }


@role_required(Role.ADMIN)
@require_POST
def cancel(request: HtmxHttpRequest, round_id: int) -> HttpResponse:
    return _act(request, round_id, services.cancel_round)


@role_required(Role.ADMIN)
@require_POST
def resume(request: HtmxHttpRequest, round_id: int) -> HttpResponse:
    return _act(request, round_id, services.resume_round)


def _act(
    request: HtmxHttpRequest, round_id: int, action: Callable[[User, TrainingRound], object]
) -> HttpResponse:
    """Cancel or resume; 409 with the reason when the round's state does not allow it."""
    training_round = _round(round_id)
    error, status = "", 200
    try:
        action(_user(request), training_round)
    except services.RoundError as refused:
        error, status = str(refused), 409
    if not request.htmx and not error:
        return redirect("training:round", round_id=round_id)
    context = _round_context(request, _round(round_id)) | {"error": error}
    template = "training/round.html"
    response = render(request, template + "#progress" if request.htmx else template, context)
    response.status_code = status
    return response


@role_required(*VIEWERS)
@require_GET
def version_list(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(Project.objects.select_related("serving_version"), slug=slug)
    return _versions_page(request, project)


def _versions_page(
    request: HtmxHttpRequest, project: Project, error: str = "", status: int = 200
) -> HttpResponse:
    rows = list(registry_pages.project_versions(project))
    produced = registry_pages.producing_rounds(rows)
    context = {
        "project": project,
        "rows": [
            (v, produced.get(v.pk), registry_pages.version_figures(v, produced.get(v.pk)))
            for v in rows
        ],
        "can_act": _user(request).has_role(Role.ADMIN),
        "error": error,
    }
    template = "training/versions.html"
    partial = "#versions" if request.htmx else ""
    return render(request, template + partial, context, status=status)


@role_required(Role.ADMIN)
@require_POST
def promote(request: HtmxHttpRequest, slug: str, version_id: int) -> HttpResponse:
    project = get_object_or_404(Project, slug=slug)
    version = get_object_or_404(ModelVersion, pk=version_id)
    try:
        project = services.promote_version(_user(request), project, version)
    except services.RoundInputError as error:
        return _versions_page(request, project, error.message, status=409)
    if not request.htmx:
        return redirect("training:versions", slug=slug)
    response = _versions_page(request, project)
    response["HX-Trigger"] = "versionPromoted"
    return response


@role_required(*VIEWERS)
@require_GET
def compare(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    """Two versions side by side: their answers to the same prompts, their figures, and how
    people judged them head to head. Defaults: the serving version against its parent."""
    project = get_object_or_404(Project.objects.select_related("serving_version"), slug=slug)
    choices = list(registry_pages.project_versions(project))
    a, b = _pair(request, project, choices)
    context: dict[str, Any] = {"project": project, "choices": choices, "a": a, "b": b}
    if a is not None and b is not None:
        produced = registry_pages.producing_rounds([a, b])
        context |= {
            "gallery": registry_pages.gallery(project, a, b),
            "figures": _side_by_side(
                registry_pages.version_figures(a, produced.get(a.pk)),
                registry_pages.version_figures(b, produced.get(b.pk)),
            ),
            "duel": leaderboard.head_to_head(leaderboard.project_votes(project), a.pk, b.pk),
        }
    return render(request, "training/compare.html", context)


def _pair(
    request: HttpRequest, project: Project, choices: list[ModelVersion]
) -> tuple[ModelVersion | None, ModelVersion | None]:
    by_id = {str(v.pk): v for v in choices}
    a = by_id.get(request.GET.get("a", "")) or project.serving_version or next(iter(choices), None)
    b = by_id.get(request.GET.get("b", ""))
    if b is None and a is not None:
        b = a.parent or next((v for v in choices if v.pk != a.pk), None)
    return a, b


def _side_by_side(a: dict[str, str], b: dict[str, str]) -> list[tuple[str, str, str]]:
    keys = list(a) + [key for key in b if key not in a]
    return [(key, a.get(key, "—"), b.get(key, "—")) for key in keys]


@role_required(*VIEWERS)
@require_GET
def leaderboard_page(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(Project.objects.select_related("serving_version"), slug=slug)
    versions = {v.pk: v for v in registry_pages.project_versions(project)}
    votes = leaderboard.project_votes(project)
    ranked = leaderboard.standings(list(versions), votes)
    bars = leaderboard.interval_bars(ranked)
    rows = [
        (
            versions[row.version_id],
            row,
            bars.get(row.version_id),
            registry_pages.key_figures(versions[row.version_id]),
        )
        for row in ranked
    ]
    context = {
        "project": project,
        "rows": rows,
        "votes": len([v for v in votes if v.outcome != "both_bad"]),
        "both_bad": len([v for v in votes if v.outcome == "both_bad"]),
        "resamples": leaderboard.RESAMPLES,
    }
    return render(request, "training/leaderboard.html", context)
