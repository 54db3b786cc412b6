"""Log-in throttling: django-axes counts the failures, this module tells it who the client is and
what a locked-out visitor sees.

Failures are counted per account and, separately, per address (AXES_LOCKOUT_PARAMETERS in the
settings); the counts live in the database, so every web process shares them on SQLite and on
PostgreSQL alike.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def client_ip(request: HttpRequest) -> str | None:
    """The address the failures of this request count against.

    Behind the TLS proxy every request comes from the proxy's address, so the client's is the
    last entry of X-Forwarded-For: the one the proxy appended. Entries before it were sent by
    the client and could be anything.
    """
    if settings.SECURE_PROXY_SSL_HEADER is not None:
        forwarded = str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",")[-1].strip()
        if forwarded:
            return forwarded
    return str(request.META["REMOTE_ADDR"]) if "REMOTE_ADDR" in request.META else None


def lockout_message() -> str:
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    return (
        "Too many failed sign-ins for this account or from this address. "
        f"Try again in {minutes} minutes, or ask an admin to unlock it."
    )


def locked_out(
    request: HttpRequest, original_response: HttpResponse | None, credentials: dict[str, Any]
) -> HttpResponse:
    """The sign-in page again, with the reason instead of the form's error, as a 429."""
    username = (credentials or {}).get("username") or ""
    form = AuthenticationForm(request, initial={"username": username})
    context = {"form": form, "locked_out": lockout_message(), "next": request.POST.get("next", "")}
    return render(request, "registration/login.html", context, status=429)
