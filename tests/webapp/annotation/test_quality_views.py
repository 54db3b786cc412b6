"""The quality pages: who may see them, who may act, and their htmx fragments."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.conftest import client_for
from tests.webapp.annotation.conftest import AddItems, MakeProject
from tests.webapp.annotation.scripted import response_ids, submit
from webapp.accounts.models import User
from webapp.annotation.models import Flag, FlagStatus, GoldAnswer, Item, Membership, Project
from webapp.annotation.questions import TaskType

VIEWERS = ["admin_user", "researcher"]
SHUT_OUT = ["annotator", "outsider"]
HTMX = {"HTTP_HX_REQUEST": "true"}


@dataclass
class Scene:
    project: Project
    pairs: Project
    flagged: Item


@pytest.fixture
def scene(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> Scene:
    """A rating project both annotators answered, a pairwise one, and a flagged item."""
    project = make_project(
        TaskType.RATING, members=[annotator, second_annotator], slug="ratings", name="Ratings"
    )
    first, second, flagged = add_items(project, prompts=3, responses=1)
    gold = add_items(project, prompts=1, responses=1, gold=True)[0]
    helpfulness = project.questions.get(key="helpfulness")
    GoldAnswer.objects.create(item=gold, question=helpfulness, value={"score": 5})
    for item, (a, b) in [(first, (5, 5)), (second, (1, 2)), (gold, (5, 1))]:
        submit(item, annotator, {"helpfulness": {"score": a}})
        submit(item, second_annotator, {"helpfulness": {"score": b}})
    Flag.objects.create(item=flagged, annotator=annotator, reason="unsafe", note="a slur")
    pairs = make_project(TaskType.PAIRWISE, members=[annotator], slug="pairs", name="Pairs")
    (pair,) = add_items(pairs, prompts=1, responses=2)
    winner = {"outcome": "win", "winner": response_ids(pair)[0], "strength": 2}
    submit(pair, annotator, {"preference": winner})
    submit(pair, second_annotator, {"preference": winner})
    return Scene(project, pairs, flagged)


def pages(scene: Scene) -> list[str]:
    return [
        reverse("annotation:quality"),
        reverse("annotation:quality-annotators"),
        reverse("annotation:quality-flags"),
        reverse("annotation:quality-project", args=["ratings"]),
        reverse("annotation:quality-project", args=["pairs"]),
        reverse("annotation:quality-project-annotators", args=["ratings"]),
    ]


def persona(request: pytest.FixtureRequest, name: str) -> User:
    user: User = request.getfixturevalue(name)
    return user


def review_url(item: Item) -> str:
    return reverse("annotation:quality-flag-review", args=[item.pk])


def pause_url(user: User, slug: str = "ratings") -> str:
    return reverse("annotation:quality-pause", args=[slug, user.pk])


# --- who may see --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VIEWERS)
def test_admins_and_researchers_see_every_quality_page(
    name: str, scene: Scene, request: pytest.FixtureRequest
) -> None:
    client = client_for(persona(request, name))
    for url in pages(scene):
        response = client.get(url)
        assert response.status_code == 200, url
        assert b"<html" in response.content


@pytest.mark.parametrize("name", SHUT_OUT)
def test_annotators_and_outsiders_get_403_on_every_quality_page(
    name: str, scene: Scene, request: pytest.FixtureRequest
) -> None:
    client = client_for(persona(request, name))
    for url in pages(scene):
        assert client.get(url).status_code == 403, url


def test_anonymous_visitors_are_sent_to_the_login_page(scene: Scene) -> None:
    for url in [*pages(scene), review_url(scene.flagged)]:
        response = Client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")


def test_an_unknown_project_is_404(admin_user: User) -> None:
    client = client_for(admin_user)
    assert client.get(reverse("annotation:quality-project", args=["nope"])).status_code == 404
    url = reverse("annotation:quality-project-annotators", args=["nope"])
    assert client.get(url).status_code == 404
    assert client.get(reverse("annotation:quality-flags") + "?project=nope").status_code == 404


# --- what the pages show ------------------------------------------------------------------------


def test_the_overview_lists_each_project_with_its_figures(scene: Scene, admin_user: User) -> None:
    page = client_for(admin_user).get(reverse("annotation:quality")).content.decode()
    assert 'data-project="ratings"' in page and 'data-project="pairs"' in page
    assert "helpfulness" in page
    assert "50%" in page  # gold: one of two answers to the gold item is right


def test_the_project_page_shows_agreement_a_chart_and_consensus(
    scene: Scene, researcher: User
) -> None:
    page = client_for(researcher).get(reverse("annotation:quality-project", args=["ratings"]))
    html = page.content.decode()
    assert 'data-question="helpfulness"' in html
    assert "<svg" in html and "5 chosen 3 times" in html  # gold answers count too
    assert f'data-item="{scene.flagged.pk}"' not in html  # unanswered items have no consensus
    assert "mean 1.50, median 1.5" in html


def test_the_pair_page_gives_the_bradley_terry_probability(scene: Scene, admin_user: User) -> None:
    html = client_for(admin_user).get(reverse("annotation:quality-project", args=["pairs"]))
    assert "P(A ≻ B) = 0.9" in html.content.decode()


def test_the_consensus_table_pages_through_htmx(scene: Scene, admin_user: User) -> None:
    url = reverse("annotation:quality-project", args=["ratings"])
    response = client_for(admin_user).get(url + "?page=1", **HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="consensus">') and "<html" not in html


def test_the_annotator_table_sorts_by_a_query_parameter(scene: Scene, admin_user: User) -> None:
    url = reverse("annotation:quality-project-annotators", args=["ratings"])
    client = client_for(admin_user)
    ascending = client.get(url + "?sort=gold").content.decode()
    descending = client.get(url + "?sort=-gold").content.decode()
    # ann answered the gold item right (5), ann2 wrongly (1)
    assert ascending.index('data-annotator="ann2"') < ascending.index('data-annotator="ann"')
    assert descending.index('data-annotator="ann"') < descending.index('data-annotator="ann2"')


def test_sorting_the_annotator_table_with_htmx_returns_the_table_only(
    scene: Scene, researcher: User
) -> None:
    url = reverse("annotation:quality-annotators") + "?sort=-submissions&period=all"
    response = client_for(researcher).get(url, **HTMX)
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="annotator-table">') and "<html" not in html
    assert "▼" in html


def test_researchers_see_no_buttons(scene: Scene, researcher: User) -> None:
    client = client_for(researcher)
    flags = client.get(reverse("annotation:quality-flags")).content.decode()
    assert "a slur" in flags and "hx-post" not in flags
    url = reverse("annotation:quality-project-annotators", args=["ratings"])
    assert "hx-post" not in client.get(url).content.decode()


def test_admins_get_the_buttons(scene: Scene, admin_user: User) -> None:
    client = client_for(admin_user)
    assert (
        review_url(scene.flagged)
        in client.get(reverse("annotation:quality-flags")).content.decode()
    )
    url = reverse("annotation:quality-project-annotators", args=["ratings"])
    assert pause_url(persona_user("ann")) in client.get(url).content.decode()


def persona_user(username: str) -> User:
    return User.objects.get(username=username)


def test_the_flag_queue_filters_by_status_and_project(scene: Scene, admin_user: User) -> None:
    client = client_for(admin_user)
    url = reverse("annotation:quality-flags")
    assert f'data-item="{scene.flagged.pk}"' in client.get(url).content.decode()
    assert (
        f'data-item="{scene.flagged.pk}"' not in client.get(url + "?project=pairs").content.decode()
    )
    resolved = client.get(url + "?status=resolved").content.decode()
    assert "Nothing to review" in resolved


# --- flag review --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "label"), [("resolved", "Resolved"), ("dismissed", "Dismissed")]
)
def test_an_admin_reviews_a_flag_with_htmx(
    status: str, label: str, scene: Scene, admin_user: User
) -> None:
    response = client_for(admin_user).post(
        review_url(scene.flagged), {"status": status, "note": "looked at it"}, **HTMX
    )
    assert response.status_code == 200
    assert response["HX-Trigger"] == "flagsReviewed"
    html = response.content.decode()
    assert html.lstrip().startswith("<article") and "looked at it" in html and label in html
    flag = Flag.objects.get(item=scene.flagged)
    assert flag.status == status and flag.reviewed_by == admin_user


def test_a_resolved_item_leaves_the_open_queue_and_shows_under_resolved(
    scene: Scene, admin_user: User
) -> None:
    client = client_for(admin_user)
    client.post(review_url(scene.flagged), {"status": "resolved"}, **HTMX)
    url = reverse("annotation:quality-flags")
    assert f'data-item="{scene.flagged.pk}"' not in client.get(url).content.decode()
    assert (
        f'data-item="{scene.flagged.pk}"' in client.get(url + "?status=resolved").content.decode()
    )


def test_reviewing_without_htmx_goes_back_to_the_queue(scene: Scene, admin_user: User) -> None:
    response = client_for(admin_user).post(review_url(scene.flagged), {"status": "dismissed"})
    assert response.status_code == 302
    assert response["Location"] == reverse("annotation:quality-flags")


def test_a_second_review_is_refused_as_stale(scene: Scene, admin_user: User) -> None:
    client = client_for(admin_user)
    client.post(review_url(scene.flagged), {"status": "dismissed", "note": "fine"}, **HTMX)
    response = client.post(review_url(scene.flagged), {"status": "resolved"}, **HTMX)
    assert response.status_code == 409
    assert "already reviewed" in response.content.decode()
    assert Flag.objects.get(item=scene.flagged).status == FlagStatus.DISMISSED


@pytest.mark.parametrize(
    "data", [{}, {"status": "open"}, {"status": "resolved", "note": "x" * 2001}]
)
def test_a_malformed_review_is_400_and_writes_nothing(
    data: dict[str, str], scene: Scene, admin_user: User
) -> None:
    response = client_for(admin_user).post(review_url(scene.flagged), data, **HTMX)
    assert response.status_code == 400
    assert 'role="alert"' in response.content.decode()
    assert Flag.objects.get(item=scene.flagged).status == FlagStatus.OPEN


def test_reviewing_an_unknown_item_is_404(scene: Scene, admin_user: User) -> None:
    url = reverse("annotation:quality-flag-review", args=[999_999])
    assert client_for(admin_user).post(url, {"status": "resolved"}).status_code == 404


@pytest.mark.parametrize("name", ["researcher", *SHUT_OUT])
def test_only_admins_may_review_flags(
    name: str, scene: Scene, request: pytest.FixtureRequest
) -> None:
    response = client_for(persona(request, name)).post(
        review_url(scene.flagged), {"status": "resolved"}, **HTMX
    )
    assert response.status_code == 403
    assert Flag.objects.get(item=scene.flagged).status == FlagStatus.OPEN


def test_a_review_must_be_posted(scene: Scene, admin_user: User) -> None:
    assert client_for(admin_user).get(review_url(scene.flagged)).status_code == 405


# --- pausing ------------------------------------------------------------------------------------


def test_an_admin_pauses_and_unpauses_an_annotator_with_htmx(
    scene: Scene, admin_user: User, annotator: User
) -> None:
    client = client_for(admin_user)
    response = client.post(
        pause_url(annotator), {"paused": "1", "reason": "gold below 50%"}, **HTMX
    )
    assert response.status_code == 200
    assert response["HX-Trigger"] == "membershipChanged"
    html = response.content.decode()
    assert html.lstrip().startswith(f'<div class="pause" id="pause-{annotator.pk}">')
    assert "gold below 50%" in html and "Unpause" in html
    membership = Membership.objects.get(project=scene.project, user=annotator)
    assert membership.paused and membership.paused_reason == "gold below 50%"

    response = client.post(pause_url(annotator), {"paused": "0"}, **HTMX)
    membership.refresh_from_db()
    assert response.status_code == 200 and not membership.paused
    assert "Pause" in response.content.decode()


def test_pausing_a_paused_annotator_is_refused_as_stale(
    scene: Scene, admin_user: User, annotator: User
) -> None:
    client = client_for(admin_user)
    client.post(pause_url(annotator), {"paused": "1", "reason": "first"}, **HTMX)
    response = client.post(pause_url(annotator), {"paused": "1", "reason": "second"}, **HTMX)
    assert response.status_code == 409 and "already paused" in response.content.decode()
    assert Membership.objects.get(project=scene.project, user=annotator).paused_reason == "first"


@pytest.mark.parametrize("data", [{}, {"paused": "yes"}, {"paused": "1", "reason": "x" * 501}])
def test_a_malformed_pause_is_400_and_writes_nothing(
    data: dict[str, str], scene: Scene, admin_user: User, annotator: User
) -> None:
    response = client_for(admin_user).post(pause_url(annotator), data, **HTMX)
    assert response.status_code == 400
    assert 'role="alert"' in response.content.decode()
    assert not Membership.objects.get(project=scene.project, user=annotator).paused


def test_pausing_someone_who_is_not_a_member_is_404(
    scene: Scene, admin_user: User, second_annotator: User, outsider: User
) -> None:
    client = client_for(admin_user)
    assert client.post(pause_url(outsider), {"paused": "1"}).status_code == 404
    # second_annotator answered in "pairs" but is not one of its members
    assert client.post(pause_url(second_annotator, "pairs"), {"paused": "1"}).status_code == 404


def test_pausing_without_htmx_goes_back_to_the_annotator_table(
    scene: Scene, admin_user: User, annotator: User
) -> None:
    response = client_for(admin_user).post(pause_url(annotator), {"paused": "1"})
    assert response.status_code == 302
    assert response["Location"] == reverse(
        "annotation:quality-project-annotators", args=["ratings"]
    )


@pytest.mark.parametrize("name", ["researcher", *SHUT_OUT])
def test_only_admins_may_pause(
    name: str, scene: Scene, annotator: User, request: pytest.FixtureRequest
) -> None:
    response = client_for(persona(request, name)).post(
        pause_url(annotator), {"paused": "1", "reason": "no"}, **HTMX
    )
    assert response.status_code == 403
    assert not Membership.objects.get(project=scene.project, user=annotator).paused


def test_anonymous_pause_is_sent_to_the_login_page(scene: Scene, annotator: User) -> None:
    response = Client().post(pause_url(annotator), {"paused": "1"})
    assert response.status_code == 302
    assert not Membership.objects.get(project=scene.project, user=annotator).paused


# --- cost ---------------------------------------------------------------------------------------


def queries_for(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured.captured_queries)


def test_the_pages_make_as_many_queries_for_many_items_as_for_few(
    scene: Scene, add_items: AddItems, admin_user: User, annotator: User, second_annotator: User
) -> None:
    client = client_for(admin_user)
    urls = [
        reverse("annotation:quality"),
        reverse("annotation:quality-project", args=["ratings"]),
        reverse("annotation:quality-project-annotators", args=["ratings"]),
        reverse("annotation:quality-annotators"),
        reverse("annotation:quality-flags"),
    ]
    before = [queries_for(client, url) for url in urls]
    for item in add_items(scene.project, prompts=12, responses=1):
        submit(item, annotator, {"helpfulness": {"score": 3}})
        submit(item, second_annotator, {"helpfulness": {"score": 4}})
        Flag.objects.create(item=item, annotator=annotator, reason="unsafe")
    assert [queries_for(client, url) for url in urls] == before


def test_the_disputed_tab_lists_only_items_with_disagreement(
    scene: Scene, admin_user: User
) -> None:
    url = reverse("annotation:quality-project", args=["ratings"])
    client = client_for(admin_user)
    html = client.get(url + "?show=disputed").content.decode()
    first, second = Item.objects.filter(project=scene.project, is_gold=False).order_by("id")[:2]
    assert f'data-item="{second.pk}"' in html  # 1 vs 2
    assert f'data-item="{first.pk}"' not in html  # 5 and 5
    assert "Disputed (1)" in html
    fragment = client.get(url + "?show=disputed&page=1", **HTMX).content.decode()
    assert fragment.lstrip().startswith('<div id="consensus">')
    assert f'data-item="{first.pk}"' not in fragment
