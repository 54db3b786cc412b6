"""Authentication and rate limits of the API (webapp/api/security.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from django.core.cache.backends.redis import RedisCache
from django.test import Client, override_settings

from tests.conftest import MakeUser
from tests.webapp.api.conftest import API, MakeToken, bearer
from webapp.accounts.models import Role, User
from webapp.api import security

PROJECTS = API + "/projects"


@pytest.mark.parametrize(
    ("caller", "message"),
    [
        ("no_token", "Authorization: Bearer <token>"),
        ("not_bearer", "must read 'Bearer <token>'"),
        ("wrong_token", "not valid"),
        ("revoked_token", "was revoked on"),
        ("expired_token", "expired on"),
    ],
)
def test_a_bad_token_is_a_401_that_says_why(
    caller_headers: Callable[[str], dict[str, str]], caller: str, message: str
) -> None:
    response = Client().get(PROJECTS, headers=caller_headers(caller))
    assert response.status_code == 401
    assert message in response.json()["detail"]
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("caller", "message"),
    [
        ("annotator", "owner is an annotator"),
        ("outsider", "owner is a user without a role"),
        ("inactive_researcher", "deactivated"),
    ],
)
def test_a_valid_token_of_someone_without_api_access_is_a_403(
    caller_headers: Callable[[str], dict[str, str]], caller: str, message: str
) -> None:
    response = Client().get(PROJECTS, headers=caller_headers(caller))
    assert response.status_code == 403
    assert message in response.json()["detail"]


def test_a_superuser_without_a_role_may_call(make_user: MakeUser, make_token: MakeToken) -> None:
    root = make_user("root", is_superuser=True)
    assert Client().get(PROJECTS, headers=bearer(make_token(root))).status_code == 200


def test_a_researcher_demoted_to_annotator_is_shut_out_at_once(
    researcher: User, make_token: MakeToken
) -> None:
    client = Client(headers=bearer(make_token(researcher)))
    assert client.get(PROJECTS).status_code == 200
    User.objects.filter(pk=researcher.pk).update(role=Role.ANNOTATOR)
    assert client.get(PROJECTS).status_code == 403


def test_a_session_cookie_is_not_enough(researcher: User) -> None:
    """The API takes tokens only, so a page on another site cannot call it with the cookie."""
    client = Client()
    client.force_login(researcher)
    assert client.get(PROJECTS).status_code == 401


def test_the_schema_and_docs_need_no_token() -> None:
    schema = Client().get(API + "/openapi.json")
    assert schema.status_code == 200
    assert schema.json()["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    assert Client().get(API + "/docs").status_code == 200


# --- rate limit ---------------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The throttle's clock, stopped in the middle of a window (a test that straddled a
    window's end would see its count reset); move it by changing clock[0]."""
    now = [1_000_000 * security.RATE_WINDOW_SECONDS + 30.0]
    monkeypatch.setattr(security.time, "time", lambda: now[0])
    return now


@override_settings(API_RATE_LIMIT_PER_MINUTE=3)
def test_calls_beyond_the_limit_get_429_with_retry_after(
    researcher: User, make_token: MakeToken, clock: list[float]
) -> None:
    client = Client(headers=bearer(make_token(researcher)))
    assert [client.get(PROJECTS).status_code for _ in range(3)] == [200, 200, 200]
    response = client.get(PROJECTS)
    assert response.status_code == 429
    assert response["Retry-After"] == "30"  # the window's end
    assert "Too many requests" in response.json()["detail"]


@override_settings(API_RATE_LIMIT_PER_MINUTE=2)
def test_each_token_has_its_own_allowance(
    researcher: User, admin_user: User, make_token: MakeToken, clock: list[float]
) -> None:
    first = Client(headers=bearer(make_token(researcher)))
    second = Client(headers=bearer(make_token(admin_user)))
    for _ in range(2):
        first.get(PROJECTS)
    assert first.get(PROJECTS).status_code == 429
    assert second.get(PROJECTS).status_code == 200


@override_settings(API_RATE_LIMIT_PER_MINUTE=2)
def test_the_allowance_comes_back_in_the_next_window(
    researcher: User, make_token: MakeToken, clock: list[float]
) -> None:
    client = Client(headers=bearer(make_token(researcher)))
    for _ in range(2):
        client.get(PROJECTS)
    assert client.get(PROJECTS).status_code == 429
    clock[0] += 29.0
    assert client.get(PROJECTS).status_code == 429
    clock[0] += 1.0
    assert client.get(PROJECTS).status_code == 200


@pytest.mark.services
def test_with_redis_every_web_process_counts_against_one_limit(
    researcher: User,
    make_token: MakeToken,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    clock: list[float],
) -> None:
    """Two cache clients stand for two gunicorn processes sharing the Redis cache. (A prefix
    of its own instead of clear(), which would flush a database other test runs may use; the
    keys expire within two minutes.)"""
    prefix = f"rlhf-test-rate-{uuid.uuid4().hex}"
    processes = [RedisCache(redis_url, {"KEY_PREFIX": prefix}) for _ in range(2)]
    client = Client(headers=bearer(make_token(researcher)))
    statuses = []
    with override_settings(API_RATE_LIMIT_PER_MINUTE=4):
        for number in range(6):
            monkeypatch.setattr(security, "cache", processes[number % 2])
            statuses.append(client.get(PROJECTS).status_code)
    assert statuses == [200, 200, 200, 200, 429, 429]


def test_the_schema_documents_auth_and_errors_of_every_operation() -> None:
    schema = Client().get(API + "/openapi.json").json()
    operations = [
        (path, method, operation)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    ]
    assert len(operations) == 9
    for path, method, operation in operations:
        assert operation["security"] == [{"BearerToken": []}], (method, path)
        assert {"401", "403", "422", "429"} <= set(operation["responses"]), (method, path)
    download = schema["paths"]["/api/v1/snapshots/{snapshot_id}/files/{name}"]["get"]
    assert {"200", "404", "409"} <= set(download["responses"])
