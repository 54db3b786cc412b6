"""An admin reads the quality pages, reviews a flag and pauses an annotator, in real Chromium."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from tests.browser.conftest import SCREENSHOTS
from tests.browser.test_sign_in import sign_in
from tests.conftest import PASSWORD
from tests.webapp.annotation.conftest import AddItems, MakeProject, add_items, make_project  # noqa: F401 (fixtures)
from tests.webapp.annotation.scripted import T0, response_ids, submit
from webapp.accounts.models import User
from webapp.annotation.models import Flag, FlagStatus, GoldAnswer, Membership
from webapp.annotation.questions import TaskType

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def team(make_user: Callable[..., User]) -> list[User]:
    return [make_user(name, "annotator") for name in ("ada", "bo", "cy")]


def test_an_admin_reviews_quality_flags_and_pauses_an_annotator(
    page: Page,
    live_server: LiveServer,
    admin_user: User,
    team: list[User],
    make_project: MakeProject,  # noqa: F811
    add_items: AddItems,  # noqa: F811
) -> None:
    ada, bo, cy = team
    ratings = make_project(TaskType.RATING, members=team, name="Ratings", slug="ratings")
    items = add_items(ratings, prompts=8, responses=1)
    scores = [(5, 5, 4), (2, 2, 1), (4, 4, 4), (1, 2, 1), (3, 3, 5), (5, 4, 5), (2, 2, 2)]
    for item, trio in zip(items, scores, strict=False):
        for who, score in zip(team, trio, strict=True):
            submit(item, who, {"helpfulness": {"score": score}, "correctness": {"score": 3}})
    (gold,) = add_items(ratings, prompts=1, responses=1, gold=True)
    GoldAnswer.objects.create(
        item=gold,
        question=ratings.questions.get(key="helpfulness"),
        value={"score": 5},
        tolerance=1,
    )
    for who, score in [(ada, 5), (bo, 4), (cy, 1)]:
        submit(gold, who, {"helpfulness": {"score": score}})
    Flag.objects.create(item=items[7], annotator=cy, reason="unsafe", note="Rude answer.")
    Flag.objects.create(item=items[6], annotator=bo, reason="off topic")
    pairs = make_project(TaskType.PAIRWISE, members=team, name="Pairs", slug="pairs")
    for pair in add_items(pairs, prompts=3, responses=2):
        left, right = response_ids(pair)
        for who, winner in zip(team, (left, left, right), strict=True):
            submit(pair, who, {"preference": {"outcome": "win", "winner": winner, "strength": 1}})

    sign_in(page, live_server, admin_user.username, PASSWORD)
    page.goto(f"{live_server.url}/annotate/quality/")
    expect(page.locator('tr[data-project="ratings"]')).to_contain_text("helpfulness")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "quality-overview.png", full_page=True)

    page.get_by_role("link", name="Ratings").first.click()
    expect(page.locator("figure.histogram")).to_have_count(2)
    page.screenshot(path=SCREENSHOTS / "quality-project.png", full_page=True)
    page.get_by_role("link", name="Disputed").click()
    expect(page.locator("#consensus tbody tr")).to_have_count(
        5
    )  # all but the 4, 4, 4 and 2, 2, 2 items
    page.goto(f"{live_server.url}/annotate/quality/projects/pairs/")
    expect(page.locator("#consensus")).to_contain_text("P(A ≻ B)")

    page.goto(f"{live_server.url}/annotate/quality/projects/ratings/annotators/")
    page.get_by_role("link", name="Gold").click()  # sorts with htmx, URL kept in history
    expect(page).to_have_url(
        f"{live_server.url}/annotate/quality/projects/ratings/annotators/?period=30&sort=gold"
    )
    expect(page.locator("tbody tr").first).to_have_attribute("data-annotator", "cy")
    row = page.locator('tr[data-annotator="cy"]')
    row.get_by_label("Reason for pausing cy").fill("Gold accuracy too low")
    row.get_by_role("button", name="Pause").click()
    expect(row.locator(".pause")).to_contain_text("Gold accuracy too low")
    expect(row.get_by_role("button", name="Unpause")).to_be_visible()
    membership = Membership.objects.get(project=ratings, user=cy)
    assert membership.paused and membership.paused_reason == "Gold accuracy too low"
    page.screenshot(path=SCREENSHOTS / "quality-annotators.png", full_page=True)

    page.goto(f"{live_server.url}/annotate/quality/flags/")
    card = page.locator(f'article[data-item="{items[7].pk}"]')
    expect(card).to_contain_text("Rude answer.")
    page.screenshot(path=SCREENSHOTS / "quality-flags.png", full_page=True)
    card.get_by_label("Note").fill("Rewrote the response.")
    card.get_by_role("button", name="Resolve").click()
    expect(card).to_contain_text("Resolved (acted on) by boss")
    assert Flag.objects.get(item=items[7]).status == FlagStatus.RESOLVED

    # Another admin dismissed the other flag meanwhile: the 409 answer is shown in place.
    Flag.objects.filter(item=items[6]).update(status=FlagStatus.DISMISSED, reviewed_at=T0)
    stale = page.locator(f'article[data-item="{items[6].pk}"]')
    stale.get_by_role("button", name="Resolve").click()
    expect(stale.get_by_role("alert")).to_contain_text("already reviewed")
    assert Flag.objects.get(item=items[6]).status == FlagStatus.DISMISSED
