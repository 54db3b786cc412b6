"""Shared fixtures: the cast of personas and the real services the tests talk to.

Under CI=true a missing PostgreSQL, Redis or Chromium fails the run instead of skipping tests,
so a green CI always means the tests ran against the real parts.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connections
from django.test import Client

from webapp.accounts.models import Role, User

# Playwright's sync API runs an event loop in the test thread; Django's ORM refuses to be called
# from such a thread unless told that this is deliberate.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

IN_CI = os.environ.get("CI", "").lower() == "true"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def pytest_configure(config: pytest.Config) -> None:
    # Tests render templates without running collectstatic first.
    settings.STATIC_ROOT = tempfile.mkdtemp(prefix="rlhf-test-static-")
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    # A million PBKDF2 rounds (Django's production cost, about 0.2 s a password) for every user
    # a fixture creates would be most of the suite's time: this process hashes with a fast
    # hasher first, and still checks the production hashers' passwords.
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        *settings.PASSWORD_HASHERS,
    ]
    # Sessions are cached: in this process's memory, never in the checkout's data directory.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    engine = settings.DATABASES["default"]["ENGINE"]
    if os.environ.get("TEST_DATABASE") == "sqlite":  # bin/test's second run of both_databases
        if engine != "django.db.backends.sqlite3":
            raise pytest.UsageError("TEST_DATABASE=sqlite, but DATABASE_URL names another one.")
    elif IN_CI and engine != "django.db.backends.postgresql":
        raise pytest.UsageError("CI=true: the tests must run on PostgreSQL; set DATABASE_URL.")


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    """Each test starts with an empty cache (this process's memory, see pytest_configure):
    cached sessions and counts keyed by ids must not leak into a test that reuses the ids."""
    cache.clear()


def missing_service(reason: str) -> None:
    """Skip a test that needs an absent service, or fail it under CI=true."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def tcp_reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or default_port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not tcp_reachable(REDIS_URL, 6379):
        missing_service(f"Redis is not reachable at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture
def postgres(db: None) -> None:
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        missing_service("this test needs PostgreSQL (DATABASE_URL=postgres://...)")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not os.path.exists(CHROMIUM):
        missing_service(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


PASSWORD = "correct horse battery staple"

MakeUser = Callable[..., User]


@pytest.fixture
def make_user(db: None) -> MakeUser:
    def make(username: str, role: Role | str = "", **fields: object) -> User:
        return User.objects.create_user(username=username, password=PASSWORD, role=role, **fields)

    return make


@pytest.fixture
def annotator(make_user: MakeUser) -> User:
    return make_user("ann", Role.ANNOTATOR)


@pytest.fixture
def second_annotator(make_user: MakeUser) -> User:
    return make_user("ann2", Role.ANNOTATOR)


@pytest.fixture
def researcher(make_user: MakeUser) -> User:
    return make_user("res", Role.RESEARCHER)


@pytest.fixture
def admin_user(make_user: MakeUser) -> User:
    return make_user("boss", Role.ADMIN)


@pytest.fixture
def outsider(make_user: MakeUser) -> User:
    """Signed in, but given no role by anyone."""
    return make_user("stranger")


def client_for(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """pytest-django's test database, with every session still open on it ended before the drop.

    Django keeps connections per thread and per context; after the browser tests (Playwright's
    sync API switches greenlets) the connection opened first in the main thread is no longer the
    one Django closes, and its idle session would keep the test database from being dropped.
    """
    yield
    database = connections["default"]
    if database.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), database._nodb_cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [database.settings_dict["NAME"]],
        )
