from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods

from webapp.accounts.decorators import role_required
from webapp.accounts.models import Role, User
from webapp.core import services


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "core/home.html")


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """For load balancers and container health checks: is the database reachable?"""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as error:
        return JsonResponse({"database": "unreachable", "error": str(error)}, status=503)
    return JsonResponse({"database": "ok"})


@role_required(Role.ADMIN)
@require_GET
def system(request: HttpRequest) -> HttpResponse:
    context = {"probes": services.latest_worker_probes()}
    return render(request, "core/system.html", context)


@role_required(Role.ADMIN)
@require_http_methods(["GET", "POST"])
def system_probes(request: HttpRequest) -> HttpResponse:
    """POST asks every queue for a round trip; GET is the polled fragment showing the answers."""
    if request.method == "POST":
        assert isinstance(request.user, User)
        probes = services.request_worker_probes(request.user)
    else:
        probes = services.latest_worker_probes()
    return render(request, "core/system.html#probes", {"probes": probes})
