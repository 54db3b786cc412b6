"""An annotator labels every task type with the keyboard alone, in a real Chromium."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from tests.browser.conftest import SCREENSHOTS
from tests.browser.test_sign_in import sign_in
from tests.conftest import PASSWORD
from tests.webapp.annotation.conftest import AddItems, MakeProject, add_items, make_project  # noqa: F401 (fixtures)
from webapp.accounts.models import User
from webapp.annotation.models import Flag, Item, Label, Project, Skip, Submission
from webapp.annotation.questions import TaskType

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PER_TYPE = 10


def current_item(page: Page) -> str:
    form = page.locator("#item-form")
    expect(form).to_be_visible()
    return form.get_attribute("data-item") or ""


def submit_and_wait(page: Page, keys: Callable[[], None]) -> str:
    """Answer the shown item with `keys` (which end by submitting); the next item's id."""
    before = current_item(page)
    keys()
    page.wait_for_function(
        "old => { const f = document.querySelector('#item-form');"
        " return f && f.dataset.item !== old; }",
        arg=before,
    )
    return before


def rating_keys(page: Page) -> None:
    page.keyboard.press("4")  # helpfulness: the first unanswered scale
    page.keyboard.press("5")  # correctness: the next one
    page.keyboard.press("Enter")


def pairwise_keys(page: Page) -> None:
    page.keyboard.press("ArrowLeft")  # A is better
    page.keyboard.press("2")  # ... clearly
    page.keyboard.press("Enter")


def ranking_keys(page: Page) -> None:
    page.keyboard.press("3")  # select the third response
    page.keyboard.press("ArrowUp")
    page.keyboard.press("k")  # now first
    page.keyboard.press("Enter")


def rewrite_keys(page: Page) -> None:
    page.keyboard.press("e")  # into the rewrite, caret at the end
    page.keyboard.type(" Better.")
    page.keyboard.press("Control+Enter")


def project_of(make: MakeProject, add: AddItems, annotator: User, task_type: str) -> Project:
    project = make(
        task_type, members=[annotator], ranking_size=3, guidelines="Prefer **honest** answers."
    )
    responses = {TaskType.PAIRWISE: 2, TaskType.RANKING: 3}.get(task_type, 1)
    add(project, prompts=PER_TYPE + 2, responses=responses)
    return project


def live(project: Project) -> list[Submission]:
    return list(Submission.objects.filter(item__project=project, undone_at__isnull=True))


def test_an_annotator_labels_every_task_type_with_the_keyboard(
    page: Page,
    live_server: LiveServer,
    annotator: User,
    make_project: MakeProject,  # noqa: F811
    add_items: AddItems,  # noqa: F811
) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    sign_in(page, live_server, annotator.username, PASSWORD)
    plans = {
        TaskType.RATING: rating_keys,
        TaskType.PAIRWISE: pairwise_keys,
        TaskType.RANKING: ranking_keys,
        TaskType.REWRITE: rewrite_keys,
    }
    projects = {t: project_of(make_project, add_items, annotator, t) for t in plans}
    answered: dict[str, list[int]] = {}

    for task_type, keys in plans.items():
        project = projects[task_type]
        page.goto(f"{live_server.url}/annotate/{project.slug}/")
        expect(page.get_by_role("heading", name=project.name)).to_be_visible()
        if task_type == TaskType.RATING:
            page.keyboard.press("g")  # the guidelines panel, for the screenshot
            expect(page.locator("#guidelines")).to_contain_text("honest")
        page.screenshot(path=SCREENSHOTS / f"annotate-{task_type}.png", full_page=True)
        if task_type == TaskType.PAIRWISE:  # on a phone the two sides stack
            page.set_viewport_size({"width": 390, "height": 844})
            page.screenshot(path=SCREENSHOTS / "annotate-pairwise-phone.png", full_page=True)
            page.set_viewport_size({"width": 1200, "height": 760})
        answered[task_type] = [
            int(submit_and_wait(page, partial(keys, page))) for _ in range(PER_TYPE)
        ]
        expect(page.locator("[data-done]")).to_have_text(str(PER_TYPE))

    rating = projects[TaskType.RATING]
    page.goto(f"{live_server.url}/annotate/{rating.slug}/")
    held = current_item(page)
    page.keyboard.press("u")  # the tenth rating comes back, pre-filled
    expect(page.locator("#item-form")).to_have_attribute("data-item", str(answered["rating"][-1]))
    expect(page.locator("[data-done]")).to_have_text(str(PER_TYPE - 1))
    submit_and_wait(page, lambda: page.keyboard.press("Enter"))  # the same answers again
    assert current_item(page) == held
    submit_and_wait(page, lambda: page.keyboard.press("s"))
    page.keyboard.press("Enter")  # nothing scored yet: the server says what is missing
    expect(page.locator(".ws-error")).to_contain_text("Please answer")
    expect(page.locator("fieldset.q-missing")).to_have_count(1)
    flagged = current_item(page)
    page.keyboard.press("f")
    page.keyboard.press("2")  # the second reason: factual error
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Nothing left for you here")).to_be_visible()
    page.keyboard.press("?")
    expect(page.locator("#shortcuts")).to_be_visible()

    for task_type, project in projects.items():
        submissions = live(project)
        assert sorted(s.item_id for s in submissions) == sorted(answered[task_type])
        assert all(s.active_ms > 0 for s in submissions)
    assert Submission.objects.filter(undone_at__isnull=False).count() == 1
    assert Skip.objects.get().item_id == int(held)
    flag = Flag.objects.get()
    assert (flag.item_id, flag.reason) == (int(flagged), "factual error")

    values = _live_values(rating, "helpfulness") + _live_values(rating, "correctness")
    assert values == [{"score": 4}] * PER_TYPE + [{"score": 5}] * PER_TYPE
    for item_id, value in _by_item(projects[TaskType.PAIRWISE], "preference"):
        left = Item.objects.get(pk=item_id).placements.get(position=0).response_id
        assert value == {"outcome": "win", "winner": left, "strength": 2}
    for item_id, value in _by_item(projects[TaskType.RANKING], "ranking"):
        ids = list(Item.objects.get(pk=item_id).placements.values_list("response_id", flat=True))
        assert value == {"order": [ids[2], ids[0], ids[1]]}
    for item_id, value in _by_item(projects[TaskType.REWRITE], "rewrite"):
        original = Item.objects.get(pk=item_id).placements.get().response.text
        assert value == {"text": original + " Better."}


def _live_values(project: Project, key: str) -> list[object]:
    return [value for _, value in _by_item(project, key)]


def _by_item(project: Project, key: str) -> list[tuple[int, object]]:
    labels = Label.objects.filter(
        item__project=project, question__key=key, undone_at__isnull=True
    ).order_by("item_id")
    found = [(label.item_id, label.value) for label in labels]
    assert len(found) == PER_TYPE
    return found
