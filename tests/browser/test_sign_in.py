"""Signing in and an htmx request, in a real Chromium."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from tests.browser.conftest import SCREENSHOTS
from tests.conftest import PASSWORD
from webapp.accounts.models import User
from webapp.core.models import WorkerProbe

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(page: Page, live_server: LiveServer, username: str, password: str) -> None:
    page.goto(f"{live_server.url}/")
    expect(page).to_have_url(f"{live_server.url}/accounts/login/?next=/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_an_admin_signs_in_and_checks_the_workers_over_htmx(
    page: Page, live_server: LiveServer, admin_user: User
) -> None:
    sign_in(page, live_server, admin_user.username, PASSWORD)
    expect(page.get_by_role("heading", name="Welcome, boss")).to_be_visible()
    assert page.evaluate("typeof window.htmx") == "object"

    page.get_by_role("navigation").get_by_role("link", name="System").click()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with page.expect_response("**/system/probes/") as response_info:
        page.get_by_role("button", name="Check workers").click()
    # The POST went through CSRF protection only because htmx sent the token header.
    assert response_info.value.status == 200
    expect(page.locator("#probes tbody tr")).to_have_count(2)
    expect(page.locator("#probes")).to_contain_text("waiting…")
    assert WorkerProbe.objects.count() == 2
    page.screenshot(path=SCREENSHOTS / "system.png")


def test_a_wrong_password_keeps_the_visitor_out(
    page: Page, live_server: LiveServer, annotator: User
) -> None:
    sign_in(page, live_server, annotator.username, "not the password")
    expect(page.get_by_role("alert")).to_contain_text("correct username and password")
    page.screenshot(path=SCREENSHOTS / "login-error.png")


def test_an_annotator_signs_out_from_the_top_bar(
    page: Page, live_server: LiveServer, annotator: User
) -> None:
    sign_in(page, live_server, annotator.username, PASSWORD)
    expect(page.get_by_text("You are an annotator")).to_be_visible()
    expect(page.get_by_role("link", name="System")).to_have_count(0)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.goto(f"{live_server.url}/system/")
    expect(page).to_have_url(f"{live_server.url}/accounts/login/?next=/system/")
