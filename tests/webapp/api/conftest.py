"""Fixtures of the API tests: tokens of every persona, and a project with labels.

The personas come from tests/conftest.py; the project factories from the annotation tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from tests.conftest import MakeUser
from tests.webapp.annotation.conftest import AddItems, MakeProject, add_items, make_project  # noqa: F401 (fixtures)
from tests.webapp.annotation.scripted import T0, response_ids, submit
from webapp.accounts.models import Role, User
from webapp.annotation.models import GoldAnswer, Item, Project
from webapp.annotation.questions import TaskType
from webapp.api import services
from webapp.api.models import ApiToken

API = "/api/v1"
MakeToken = Callable[..., str]

# Who calls, and what authentication answers them before any endpoint runs.
ALLOWED = ["researcher", "admin_user"]
FORBIDDEN = ["annotator", "second_annotator", "outsider", "inactive_researcher"]
UNAUTHENTICATED = ["no_token", "wrong_token", "revoked_token", "expired_token", "not_bearer"]
CALLERS = ALLOWED + FORBIDDEN + UNAUTHENTICATED


@pytest.fixture(autouse=True)
def fresh_rate_limits(settings: Any) -> None:
    """Rate-limit counts live in the cache, which outlives a test's database transaction: each
    test gets a cache of its own (not clear(), which on a Redis cache would flush a database
    that other processes may be using)."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"api-test-{uuid.uuid4().hex}",
        }
    }


@pytest.fixture
def make_token(db: None) -> MakeToken:
    def make(user: User, name: str = "script", **fields: Any) -> str:
        _, secret = services.create_token(user, name, **fields)
        return secret

    return make


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def inactive_researcher(make_user: MakeUser) -> User:
    return make_user("gone", Role.RESEARCHER, is_active=False)


@pytest.fixture
def caller_headers(
    request: pytest.FixtureRequest, make_token: MakeToken, make_user: MakeUser
) -> Callable[[str], dict[str, str]]:
    """caller_headers(name) -> the request headers of one of CALLERS."""

    def headers(name: str) -> dict[str, str]:
        if name == "no_token":
            return {}
        if name == "wrong_token":
            return bearer("rlhf_" + "x" * 43)
        if name == "not_bearer":
            return {"Authorization": "Token abc"}
        if name in ("revoked_token", "expired_token"):
            owner = make_user(f"owner-{name}", Role.RESEARCHER)
            secret = make_token(owner)
            token = ApiToken.objects.get(user=owner)
            if name == "revoked_token":
                services.revoke_token(token)
            else:
                past = timezone.now() - timedelta(days=2)
                ApiToken.objects.filter(pk=token.pk).update(
                    created_at=past - timedelta(days=1), expires_at=past
                )
            return bearer(secret)
        return bearer(make_token(request.getfixturevalue(name)))

    return headers


def expected_auth_status(caller: str) -> int | None:
    """The status authentication answers `caller` with; None when the call gets through."""
    if caller in UNAUTHENTICATED:
        return 401
    if caller in FORBIDDEN:
        return 403
    return None


@dataclass
class Scene:
    ratings: Project
    pairs: Project
    rated: list[Item]
    gold: Item
    pair: Item


@pytest.fixture
def scene(request: pytest.FixtureRequest, annotator: User, second_annotator: User) -> Scene:
    """A rating project both annotators answered (a gold item among them, one answer undone)
    and a pairwise project with one pair both preferred the same way."""
    new_project: MakeProject = request.getfixturevalue("make_project")
    new_items: AddItems = request.getfixturevalue("add_items")
    ratings = new_project(
        TaskType.RATING, members=[annotator, second_annotator], slug="ratings", name="Ratings"
    )
    rated = new_items(ratings, prompts=3, responses=1)
    gold = new_items(ratings, prompts=1, responses=1, gold=True)[0]
    helpfulness = ratings.questions.get(key="helpfulness")
    GoldAnswer.objects.create(item=gold, question=helpfulness, value={"score": 5})
    scores = [(5, 5), (1, 2), (3, 3), (5, 1)]
    for minutes, (item, (a, b)) in enumerate(zip([*rated, gold], scores, strict=True)):
        served = T0 + timedelta(minutes=10 * minutes)
        submit(item, annotator, {"helpfulness": {"score": a}}, served=served)
        submit(item, second_annotator, {"helpfulness": {"score": b}}, served=served)
    submit(rated[0], annotator, {"helpfulness": {"score": 2}}, served=T0, undone=True)
    pairs = new_project(TaskType.PAIRWISE, members=[annotator], slug="pairs", name="Pairs")
    (pair,) = new_items(pairs, prompts=1, responses=2)
    winner = {"outcome": "win", "winner": response_ids(pair)[0], "strength": 2}
    submit(pair, annotator, {"preference": winner}, served=T0)
    submit(pair, second_annotator, {"preference": winner}, served=T0)
    return Scene(ratings, pairs, rated, gold, pair)


@pytest.fixture
def researcher_client(researcher: User, make_token: MakeToken) -> Client:
    """A client whose every request carries a researcher's token."""
    return Client(headers=bearer(make_token(researcher)))
