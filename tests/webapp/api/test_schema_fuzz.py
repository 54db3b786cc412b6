"""Schemathesis over the served OpenAPI schema: every operation, with inputs that fit the schema
and inputs that break it, called in-process (WSGI) with a researcher's token. No input may make
a server error; responses must match the documented shapes and status codes.

The number of examples per operation is bounded so the whole run takes seconds, not minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from tests.webapp.api.conftest import API, MakeToken, Scene, bearer
from webapp.accounts.models import User
from webapp.annotation.models import Project

pytestmark = pytest.mark.both_databases

EXAMPLES_PER_OPERATION = 30


@pytest.fixture(autouse=True)
def in_process(scene: Scene, settings: Any, tmp_path: Any) -> Iterator[None]:
    """A project with labels to read; requests inside the test's transaction, as in Django's
    test client (so without the per-request connection clean-up, which would close the test's
    connection); no rate limit, every example being a call; exports under a temporary dir."""
    settings.API_RATE_LIMIT_PER_MINUTE = 10**9
    settings.EXPORT_DIR = tmp_path / "exports"
    # The schema's example slug, so that the examples phase reads a project with labels.
    Project.objects.filter(pk=scene.ratings.pk).update(slug="demo-rating")
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def token(researcher: User, make_token: MakeToken) -> str:
    return make_token(researcher)


# Loaded when the module is collected (serving the schema touches no database).
# schemathesis.pytest.from_fixture, the lazy loader, would be the natural choice, but 4.x
# reaches into a private attribute of pytest's test items that pytest 9 no longer has.
schema = schemathesis.openapi.from_wsgi(API + "/openapi.json", get_wsgi_application())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=EXAMPLES_PER_OPERATION,
    deterministic=True,  # the same examples each run: a failure here is reproducible
)


@schema.parametrize()
# The fixtures (a project, a token) are read by every example and changed by none but the
# snapshots the POST examples create, which no other check depends on.
@hypothesis_settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_input_makes_a_server_error(case: schemathesis.Case, token: str) -> None:
    case.call_and_validate(
        headers=bearer(token),
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
    )
