"""Personal API tokens: made, revoked and checked (webapp/api/services.py)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.conftest import MakeUser
from webapp.accounts.models import Role, User
from webapp.api import services
from webapp.api.models import ApiToken


def test_it_stores_only_the_digest_and_a_prefix_of_the_secret(researcher: User) -> None:
    token, secret = services.create_token(researcher, "laptop")
    stored = ApiToken.objects.get(pk=token.pk)
    assert secret.startswith("rlhf_") and len(secret) > 40
    assert stored.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert stored.prefix == secret[: len(stored.prefix)] and len(stored.prefix) < 16
    row = ApiToken.objects.filter(pk=token.pk).values().get()
    assert all(secret not in str(value) for value in row.values())


def test_every_token_gets_its_own_secret(researcher: User) -> None:
    secrets = {services.create_token(researcher, f"t{n}")[1] for n in range(5)}
    assert len(secrets) == 5


def test_it_refuses_a_blank_or_long_name_and_a_past_expiry(researcher: User) -> None:
    with pytest.raises(services.TokenError, match="name"):
        services.create_token(researcher, "   ")
    with pytest.raises(services.TokenError, match="at most 100"):
        services.create_token(researcher, "x" * 101)
    with pytest.raises(services.TokenError, match="future"):
        services.create_token(researcher, "old", expires_at=timezone.now() - timedelta(days=1))
    assert not ApiToken.objects.exists()


def test_it_refuses_more_live_tokens_than_the_cap(researcher: User) -> None:
    for number in range(services.MAX_LIVE_TOKENS):
        services.create_token(researcher, f"t{number}")
    with pytest.raises(services.TokenError, match="revoke one"):
        services.create_token(researcher, "one too many")
    services.revoke_token(ApiToken.objects.filter(user=researcher).first())  # type: ignore[arg-type]
    services.create_token(researcher, "after revoking one")


def test_authentication_finds_the_token_and_its_user(researcher: User) -> None:
    token, secret = services.create_token(researcher, "laptop")
    found = services.authenticate_token(secret)
    assert found.pk == token.pk and found.user == researcher


@pytest.mark.parametrize("secret", ["", "rlhf_", "rlhf_nope", "x" * 500, "\u00e9\u00e8"])
def test_authentication_refuses_an_unknown_secret(researcher: User, secret: str) -> None:
    services.create_token(researcher, "laptop")
    with pytest.raises(services.TokenError, match="not valid"):
        services.authenticate_token(secret)


def test_a_revoked_token_is_refused_and_revoking_twice_keeps_the_first_time(
    researcher: User,
) -> None:
    token, secret = services.create_token(researcher, "laptop")
    first = services.revoke_token(token).revoked_at
    assert first is not None
    assert services.revoke_token(token).revoked_at == first
    with pytest.raises(services.TokenError, match="revoked"):
        services.authenticate_token(secret)


def test_an_expired_token_is_refused(researcher: User) -> None:
    token, secret = services.create_token(
        researcher, "short", expires_at=timezone.now() + timedelta(hours=1)
    )
    an_hour_ago = timezone.now() - timedelta(hours=1)
    ApiToken.objects.filter(pk=token.pk).update(
        created_at=an_hour_ago, expires_at=an_hour_ago + timedelta(minutes=59)
    )
    with pytest.raises(services.TokenError, match="expired"):
        services.authenticate_token(secret)


def test_last_used_is_written_at_most_once_a_minute(researcher: User) -> None:
    token, secret = services.create_token(researcher, "laptop")
    services.authenticate_token(secret)
    first = ApiToken.objects.get(pk=token.pk).last_used_at
    assert first is not None
    services.authenticate_token(secret)
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    services.authenticate_token(secret)
    assert ApiToken.objects.get(pk=token.pk).last_used_at > first - timedelta(seconds=1)  # type: ignore[operator]


def test_authentication_does_not_judge_the_role(make_user: MakeUser) -> None:
    """Roles are the API's business (403), not the token's (401): see test_auth."""
    annotator = make_user("someone", Role.ANNOTATOR)
    _, secret = services.create_token(annotator, "x")
    assert services.authenticate_token(secret).user == annotator
