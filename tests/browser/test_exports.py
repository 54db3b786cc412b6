"""A researcher takes an export snapshot, watches it finish and downloads a file, in real
Chromium. The snapshot is built here, in the test, not by a Celery worker (tests/workers covers
the worker)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from tests.browser.conftest import SCREENSHOTS
from tests.browser.test_manage import sign_in
from tests.conftest import MakeUser
from tests.webapp.annotation.conftest import AddItems, MakeProject, add_items, make_project  # noqa: F401 (fixtures)
from tests.webapp.exports.conftest import AddLabel, add_label, export_dir, win  # noqa: F401 (fixtures)
from webapp import background
from webapp.accounts.models import User
from webapp.annotation.models import Project
from webapp.annotation.questions import TaskType
from webapp.exports.building import run_snapshot
from webapp.exports.models import ExportSnapshot, SnapshotStatus

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def labelled_project(
    make_user: MakeUser,
    make_project: MakeProject,  # noqa: F811
    add_items: AddItems,  # noqa: F811
    add_label: AddLabel,  # noqa: F811
) -> Project:
    """A pairwise project whose items two annotators have compared."""
    team = [make_user(name, "annotator") for name in ("ada", "bo")]
    project = make_project(
        TaskType.PAIRWISE, members=team, name="Support answers", slug="support-answers"
    )
    for number, item in enumerate(add_items(project, prompts=6)):
        for who, side in zip(team, (0, number % 2), strict=True):
            add_label(item, who, "preference", win(item, side), minutes=number)
    return project


@pytest.fixture
def sent_tasks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[int]]]:
    """Background tasks the web side sends, recorded instead of reaching a broker."""
    sent: list[tuple[str, list[int]]] = []
    monkeypatch.setattr(background.app, "send_task", lambda name, args: sent.append((name, args)))
    return sent


def test_a_researcher_takes_a_snapshot_watches_it_finish_and_downloads_a_file(
    page: Page,
    live_server: LiveServer,
    researcher: User,
    labelled_project: Project,
    sent_tasks: list[tuple[str, list[int]]],
    export_dir: Path,  # noqa: F811
) -> None:
    sign_in(page, live_server, researcher, "/exports/")
    expect(page.get_by_text("No snapshot yet.")).to_be_visible()
    form = page.locator("form.export-form")
    form.get_by_label("Project").select_option("support-answers")
    form.get_by_label("pairs_jsonl", exact=True).check()
    form.get_by_label("hh_parquet", exact=True).check()
    form.get_by_label("Seed").fill("7")
    form.get_by_label("Test share").fill("0.25")
    form.get_by_role("button", name="Create snapshot").click()

    expect(page).to_have_url(re.compile(r"/exports/\d+/$"))
    snapshot = ExportSnapshot.objects.get()
    assert page.url == f"{live_server.url}/exports/{snapshot.pk}/"
    expect(page.get_by_role("heading", name="Support answers")).to_be_visible()
    status = page.locator("#snapshot-status")
    expect(status).to_have_attribute("data-status", "queued")
    expect(status).to_contain_text("Queued")
    assert sent_tasks == [("exports.build_snapshot", [snapshot.pk])]
    assert snapshot.formats == ["pairs_jsonl", "hh_parquet"] and snapshot.seed == 7

    # The page polls its status fragment; it shows the result without being reloaded.
    page.evaluate("window.notReloaded = true")
    assert run_snapshot(snapshot.pk)
    expect(status).to_have_attribute("data-status", "succeeded")
    assert page.evaluate("window.notReloaded") is True
    expect(status).to_contain_text("Succeeded")
    expect(status.get_by_role("link", name="pairs-train.jsonl")).to_be_visible()
    expect(status.get_by_role("link", name="hh-test.parquet")).to_be_visible()
    expect(status.get_by_role("link", name="manifest.json")).to_be_visible()
    # Six items, each compared by both annotators.
    expect(status.locator("dl")).to_contain_text('"pairs": {"strict_preferences": 12}')
    expect(page.locator("section.card > p.muted")).to_contain_text("seed 7, test share 0.25")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "exports-snapshot.png", full_page=True)

    with page.expect_download() as download_info:
        status.get_by_role("link", name="pairs-train.jsonl").click()
    download = download_info.value
    assert download.suggested_filename == "pairs-train.jsonl"
    on_disk = export_dir / str(snapshot.pk) / "pairs-train.jsonl"
    assert Path(download.path()).read_bytes() == on_disk.read_bytes()
    assert on_disk.stat().st_size > 0

    page.get_by_role("link", name="All snapshots").click()
    row = page.locator(f'tr[data-snapshot="{snapshot.pk}"]')
    expect(row).to_contain_text("Support answers")
    expect(row).to_contain_text(SnapshotStatus.SUCCEEDED.label)
    page.screenshot(path=SCREENSHOTS / "exports-list.png", full_page=True)


def test_an_annotator_gets_403_on_the_exports_page(
    page: Page, live_server: LiveServer, annotator: User
) -> None:
    sign_in(page, live_server, annotator, "/")
    response = page.goto(f"{live_server.url}/exports/")
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="403 Forbidden")).to_be_visible()
