"""An admin builds a project, watches the preview follow the question being written, and
uploads prompts, in a real Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from tests.browser.conftest import SCREENSHOTS
from tests.conftest import PASSWORD
from webapp.accounts.models import User
from webapp.annotation.models import Item, Project, Prompt
from webapp.annotation.projects import create_project
from webapp.annotation.questions import TaskType

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(page: Page, live_server: LiveServer, user: User, next_path: str) -> None:
    page.goto(f"{live_server.url}{next_path}")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live_server.url}{next_path}")


def test_an_admin_creates_a_project_adds_a_question_and_uploads_prompts(
    page: Page, live_server: LiveServer, admin_user: User, tmp_path: Path
) -> None:
    sign_in(page, live_server, admin_user, "/annotate/manage/")
    page.get_by_role("link", name="New project").click()
    page.get_by_label("Name").fill("Support answers")
    page.get_by_label("Task type").select_option("rating")
    page.get_by_label("Overlap").fill("2")
    page.get_by_role("button", name="Create project").click()
    expect(page.get_by_role("heading", name="Support answers")).to_be_visible()
    preview = page.locator("#preview")
    expect(preview).to_contain_text("How helpful is the response?")

    page.get_by_text("Add a question").click()
    form = page.locator("details.mg-add form")
    form.get_by_label("Question").fill("How concise is it?")
    # The preview shows the question as it is typed, before it is saved.
    expect(preview).to_contain_text("How concise is it?")
    form.get_by_label("Key").fill("concise")
    form.get_by_label("to").fill("7")
    expect(preview.locator('input[name="q-concise-score"]')).to_have_count(7)
    form.get_by_role("button", name="Add question").click()
    expect(page.locator("#questions li[data-key=concise]")).to_contain_text("How concise is it?")
    assert Project.objects.get(name="Support answers").questions.filter(key="concise").exists()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=SCREENSHOTS / "manage-project.png", full_page=True)

    lines = [
        {"prompt": "How do I reset my password?", "responses": ["Click *Forgot password*."]},
        {
            "prompt": "Can I change my plan mid-month?",
            "responses": ["Yes; the price is prorated.", "No."],
        },
        {
            "prompt": "Where is my invoice?",
            "metadata": {"channel": "chat"},
            "responses": [{"text": "Under **Billing → Invoices**.", "model": "support-v1"}],
        },
    ]
    upload = tmp_path / "support.jsonl"
    upload.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    page.get_by_role("navigation", name="Manage").get_by_role("link", name="Upload").click()
    page.get_by_label("File").set_input_files(upload)
    page.get_by_role("button", name="Upload").click()
    result = page.get_by_role("status")
    expect(result).to_contain_text("3 prompts")
    expect(result).to_contain_text("4 items")
    expect(result).to_contain_text("Can I change my plan mid-month?")
    page.screenshot(path=SCREENSHOTS / "manage-upload.png", full_page=True)
    assert Item.objects.filter(project__name="Support answers").count() == 4

    page.get_by_role("link", name="All prompts").click()
    expect(page.locator("table")).to_contain_text("Where is my invoice?")


def test_a_bad_file_shows_each_line_error_and_imports_nothing(
    page: Page, live_server: LiveServer, admin_user: User, tmp_path: Path
) -> None:
    project = create_project(
        Project(name="Pairs", slug="pairs", task_type=TaskType.PAIRWISE), created_by=admin_user
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "Fine prompt", "responses": ["one", "two"]}\n'
        '{"prompt": "Only one answer", "responses": ["lonely"]}\n'
        "{not json\n"
        '{"prompt": "Fine prompt", "responses": ["three", "four"]}\n',
        encoding="utf-8",
    )
    sign_in(page, live_server, admin_user, f"/annotate/manage/projects/{project.slug}/upload/")
    page.get_by_label("File").set_input_files(bad)
    page.get_by_role("button", name="Upload").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Nothing was imported")
    rows = alert.locator("tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("too few")
    expect(rows.nth(1)).to_contain_text("Malformed JSON")
    expect(rows.nth(2)).to_contain_text("The same prompt as line 1")
    page.screenshot(path=SCREENSHOTS / "manage-upload-errors.png", full_page=True)
    assert not Prompt.objects.filter(project=project).exists()
