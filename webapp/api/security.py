"""Who may call the API, and how often.

A call carries `Authorization: Bearer <token>`. A missing, wrong, revoked or expired token is a 401
that says which; a valid token of someone who may not use the API (an annotator, a user without a
role, a deactivated account) is a 403. Each token may make API_RATE_LIMIT_PER_MINUTE calls a
minute; more get 429 with Retry-After.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from ninja.errors import AuthenticationError, AuthorizationError
from ninja.security import HttpBearer
from ninja.throttling import BaseThrottle

from webapp.accounts.models import Role
from webapp.api.models import ApiToken
from webapp.api.services import TokenError, authenticate_token

API_ROLES = (Role.RESEARCHER, Role.ADMIN)
RATE_WINDOW_SECONDS = 60


class BearerToken(HttpBearer):
    """Sets `request.auth` to the caller's ApiToken (its `user` loaded)."""

    def __call__(self, request: HttpRequest) -> ApiToken:
        header = request.headers.get(self.header, "")
        if not header:
            raise AuthenticationError(
                message="Send your API token as 'Authorization: Bearer <token>'; "
                "create one at /api/tokens/."
            )
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise AuthenticationError(
                message="The Authorization header must read 'Bearer <token>'."
            )
        return self.authenticate(request, secret.strip())

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken:
        try:
            api_token = authenticate_token(token)
        except TokenError as error:
            raise AuthenticationError(message=str(error)) from None
        user = api_token.user
        if not user.is_active:
            raise AuthorizationError(message="The account this token belongs to is deactivated.")
        if not user.has_role(*API_ROLES):
            who = "an annotator" if user.role == Role.ANNOTATOR else "a user without a role"
            raise AuthorizationError(
                message=f"The API is for researchers and admins; this token's owner is {who}."
            )
        return api_token


class TokenRateThrottle(BaseThrottle):
    """A fixed one-minute window per token, counted with the cache's atomic increment.

    The count lives in Django's cache: with Redis it is shared by every web process; with the
    embedded default's local-memory cache each process counts for itself. An increment (rather
    than ninja's read-modify-write list of timestamps) cannot lose a concurrent call's count.
    """

    def allow_request(self, request: HttpRequest) -> bool:
        token = getattr(request, "auth", None)
        if not isinstance(token, ApiToken):
            return True  # authentication runs first; nothing unauthenticated gets here
        window = int(time.time() // RATE_WINDOW_SECONDS)
        key = f"api-rate:{token.pk}:{window}"
        cache.add(key, 0, timeout=2 * RATE_WINDOW_SECONDS)
        try:
            count = cache.incr(key)
        except ValueError:  # the key expired between add and incr
            cache.set(key, 1, timeout=2 * RATE_WINDOW_SECONDS)
            count = 1
        return count <= int(settings.API_RATE_LIMIT_PER_MINUTE)

    def wait(self) -> float:
        """Seconds until the current window ends (a function of the clock, so the shared
        throttle object keeps no per-request state)."""
        return max(1.0, RATE_WINDOW_SECONDS - time.time() % RATE_WINDOW_SECONDS)
