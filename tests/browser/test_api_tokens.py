"""A researcher creates an API token over htmx, calls the API with it against the live server,
then revokes it, in real Chromium."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from playwright.sync_api import Dialog, Page, expect
from pytest_django.live_server_helper import LiveServer

from tests.browser.conftest import SCREENSHOTS
from tests.browser.test_manage import sign_in
from tests.webapp.annotation.conftest import MakeProject, make_project  # noqa: F401 (fixtures)
from webapp.accounts.models import User
from webapp.annotation.questions import TaskType
from webapp.api.models import ApiToken

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def call_api(live_server: LiveServer, path: str, secret: str) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of a GET on the API, over real HTTP."""
    request = urllib.request.Request(
        f"{live_server.url}/api/v1{path}", headers={"Authorization": f"Bearer {secret}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_researcher_creates_uses_and_revokes_a_token(
    page: Page,
    live_server: LiveServer,
    researcher: User,
    make_project: MakeProject,  # noqa: F811
) -> None:
    make_project(TaskType.PAIRWISE, name="Support answers", slug="support-answers")
    sign_in(page, live_server, researcher, "/api/tokens/")
    expect(page.get_by_text("No tokens yet.")).to_be_visible()
    page.evaluate("window.notReloaded = true")
    page.get_by_label("Name").fill("training cluster")
    page.get_by_label("Expires").select_option("30")
    with page.expect_response(f"{live_server.url}/api/tokens/") as response_info:
        page.get_by_role("button", name="Create token").click()
    assert response_info.value.status == 200
    secret_box = page.get_by_label("The new API token")
    expect(secret_box).to_be_visible()
    secret = secret_box.input_value()
    assert secret.startswith("rlhf_")
    token = ApiToken.objects.get(user=researcher)
    row = page.locator(f'tr[data-token-row="{token.pk}"]')
    expect(row).to_contain_text("training cluster")
    expect(row).to_contain_text(f"{token.prefix}…")
    expect(row).to_contain_text("live")
    assert page.evaluate("window.notReloaded") is True  # htmx swapped the fragment in
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "api-tokens.png", full_page=True)

    status, body = call_api(live_server, "/projects", secret)
    assert status == 200
    assert [project["slug"] for project in body["items"]] == ["support-answers"]

    page.once("dialog", lambda dialog: accept(dialog, "training cluster"))
    row.get_by_role("button", name="Revoke training cluster").click()
    expect(page.get_by_role("status")).to_contain_text("Revoked “training cluster”")
    expect(row).to_contain_text("revoked")
    expect(row.get_by_role("button")).to_have_count(0)
    assert secret not in page.content()  # shown that once only
    status, body = call_api(live_server, "/projects", secret)
    assert status == 401
    assert "revoked" in body["detail"]


def accept(dialog: Dialog, token_name: str) -> None:
    assert token_name in dialog.message
    dialog.accept()
