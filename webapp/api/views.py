"""The page where researchers and admins create and revoke their personal API tokens."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.middleware import HtmxDetails

from webapp.accounts.decorators import role_required
from webapp.accounts.models import User
from webapp.api import services
from webapp.api.forms import TokenForm
from webapp.api.models import ApiToken
from webapp.api.security import API_ROLES

INVALID = 422  # a form with errors, re-rendered in place


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _owner(request: HttpRequest) -> User:
    assert isinstance(request.user, User)
    return request.user


def _tokens_page(request: HtmxHttpRequest, form: TokenForm, **extra: Any) -> HttpResponse:
    template = "api/tokens.html" + ("#tokens" if request.htmx else "")
    context = {
        "form": form,
        "tokens": ApiToken.objects.filter(user=_owner(request)),
        "api_root": request.build_absolute_uri(reverse("api-v1:api-root")),
        **extra,
    }
    status = INVALID if form.errors or extra.get("token_error") else 200
    return render(request, template, context, status=status)


@never_cache  # the answer to a creation holds the secret, which no cache may keep
@role_required(*API_ROLES)
@require_http_methods(["GET", "POST"])
def tokens(request: HtmxHttpRequest) -> HttpResponse:
    """Your tokens; POST creates one and shows its secret, this once."""
    form = TokenForm(request.POST if request.method == "POST" else None)
    if request.method != "POST" or not form.is_valid():
        return _tokens_page(request, form)
    try:
        token, secret = services.create_token(
            _owner(request), form.cleaned_data["name"], expires_at=form.expires_at()
        )
    except services.TokenError as error:
        return _tokens_page(request, form, token_error=str(error))
    return _tokens_page(request, TokenForm(), created=token, secret=secret)


@never_cache
@role_required(*API_ROLES)
@require_POST
def revoke(request: HtmxHttpRequest, token_id: int) -> HttpResponse:
    """Revoke one of your tokens; someone else's answers 404, as if it did not exist."""
    token = get_object_or_404(ApiToken, pk=token_id, user=_owner(request))
    return _tokens_page(request, TokenForm(), revoked=services.revoke_token(token))


def no_such_endpoint(request: HttpRequest) -> JsonResponse:
    """Under /api/v1/, a path that names no operation answers JSON, as the operations do."""
    docs = reverse("api-v1:openapi-view")
    detail = f"No API endpoint at {request.path}; the operations are listed at {docs}."
    return JsonResponse({"detail": detail}, status=404)
