"""Personal API tokens: created, revoked and checked. State changes run inside
`transaction.atomic`; none of these functions sees an HTTP object."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from webapp.accounts.models import User
from webapp.api.models import ApiToken

# Secret scanners (and people) recognise a token by this start.
TOKEN_START = "rlhf_"
PREFIX_LENGTH = len(TOKEN_START) + 6
# Enough for a laptop, a cluster and a notebook each; more is usually a forgotten token.
MAX_LIVE_TOKENS = 20
# last_used_at is a hint for the owner, not an audit log: writing it on every call would turn
# each read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)
NAME_LENGTH = ApiToken._meta.get_field("name").max_length or 100


class TokenError(Exception):
    """A token that cannot be made or used, with a message meant for the person."""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_token(
    user: User, name: str, *, expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """A new token of `user` and its secret, which is stored nowhere and shown once."""
    name = name.strip()
    if not name:
        raise TokenError("Give the token a name, so you can recognise it later.")
    if len(name) > NAME_LENGTH:
        raise TokenError(f"A token's name has at most {NAME_LENGTH} characters.")
    now = timezone.now()
    if expires_at is not None and expires_at <= now:
        raise TokenError("The expiry date must lie in the future.")
    secret = TOKEN_START + secrets.token_urlsafe(32)
    with transaction.atomic():
        # The row lock makes two concurrent creations count each other.
        User.objects.select_for_update().filter(pk=user.pk).first()
        if live_tokens(user).count() >= MAX_LIVE_TOKENS:
            raise TokenError(
                f"You have {MAX_LIVE_TOKENS} live tokens already; revoke one you no longer use."
            )
        token = ApiToken.objects.create(
            user=user,
            name=name,
            prefix=secret[:PREFIX_LENGTH],
            digest=token_digest(secret),
            created_at=now,
            expires_at=expires_at,
        )
    return token, secret


def live_tokens(user: User) -> QuerySet[ApiToken]:
    now = timezone.now()
    return ApiToken.objects.filter(user=user, revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )


def revoke_token(token: ApiToken) -> ApiToken:
    """Revoke `token` for good; revoking it again keeps the first time."""
    with transaction.atomic():
        ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        token.refresh_from_db(fields=["revoked_at"])
    return token


def authenticate_token(secret: str) -> ApiToken:
    """The live token whose secret this is, with its user; TokenError says why not.

    The lookup is by the secret's digest, so nothing compares the secret itself character by
    character, and the time taken tells nothing about how much of a guess was right.
    """
    token = ApiToken.objects.select_related("user").filter(digest=token_digest(secret)).first()
    now = timezone.now()
    if token is None:
        raise TokenError("This API token is not valid. Create one at /api/tokens/.")
    if token.revoked_at is not None:
        raise TokenError(f"This API token was revoked on {token.revoked_at:%Y-%m-%d %H:%M} UTC.")
    if token.is_expired(now):
        assert token.expires_at is not None
        raise TokenError(f"This API token expired on {token.expires_at:%Y-%m-%d %H:%M} UTC.")
    if token.last_used_at is None or token.last_used_at < now - LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
