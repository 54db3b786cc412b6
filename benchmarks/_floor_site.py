"""The request floor benchmark's site: the production settings with one URL, a logged-in view
that runs one `SELECT 1` and returns a one-line fragment (request_floor.py serves it)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.urls import path

from webapp.settings import *  # noqa: F403  (this module is the benchmark server's settings)

ROOT_URLCONF = "benchmarks._floor_site"


@login_required
def floor(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return HttpResponse(f"<div>{request.user.pk}</div>")


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [path("floor/", floor), path("healthz", healthz)]
