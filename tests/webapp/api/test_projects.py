"""Projects, labels and statistics over the API: who may call them, and what they answer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.test import Client

from tests.webapp.annotation.scripted import T0
from tests.webapp.api.conftest import (
    API,
    CALLERS,
    Scene,
    expected_auth_status,
)
from webapp.accounts.models import User
from webapp.api.pseudonyms import annotator_pseudonym

READS = [
    "/projects",
    "/projects/ratings",
    "/projects/ratings/labels",
    "/projects/ratings/statistics",
    "/projects/ratings/statistics/annotators",
]


@pytest.mark.parametrize("path", READS)
@pytest.mark.parametrize("caller", CALLERS)
def test_only_researchers_and_admins_read(
    scene: Scene, caller_headers: Callable[[str], dict[str, str]], caller: str, path: str
) -> None:
    response = Client().get(API + path, headers=caller_headers(caller))
    expected = expected_auth_status(caller) or 200
    assert response.status_code == expected, response.content
    assert response["Content-Type"].startswith("application/json")
    if expected != 200:
        assert isinstance(response.json()["detail"], str) and response.json()["detail"]


@pytest.mark.parametrize("path", READS[1:])
def test_an_unknown_project_is_a_404_with_its_slug(researcher_client: Client, path: str) -> None:
    response = researcher_client.get(API + path.replace("ratings", "nope"))
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


def test_projects_list_every_project_with_its_questions(
    scene: Scene, researcher_client: Client
) -> None:
    body = researcher_client.get(API + "/projects").json()
    assert [p["slug"] for p in body["items"]] == ["pairs", "ratings"]
    assert body["count"] == 2 and body["next_page"] is None
    ratings = body["items"][1]
    assert ratings["task_type"] == "rating"
    assert "helpfulness" in [q["key"] for q in ratings["questions"]]


def test_projects_page_by_number(scene: Scene, researcher_client: Client) -> None:
    first = researcher_client.get(API + "/projects?page_size=1").json()
    second = researcher_client.get(API + "/projects?page_size=1&page=2").json()
    beyond = researcher_client.get(API + "/projects?page_size=1&page=3").json()
    assert [first["next_page"], second["next_page"]] == [2, None]
    assert [p["slug"] for p in first["items"] + second["items"]] == ["pairs", "ratings"]
    assert beyond["items"] == [] and beyond["count"] == 2


@pytest.mark.parametrize(
    "query",
    ["page=0", "page=-1", "page=abc", "page_size=0", "page_size=201", "page=100001"],
)
def test_page_numbers_out_of_range_are_a_422(researcher_client: Client, query: str) -> None:
    response = researcher_client.get(f"{API}/projects?{query}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] in ("page", "page_size")


# --- labels -------------------------------------------------------------------------------------


def test_labels_show_pseudonyms_never_usernames_or_ids(
    scene: Scene, researcher_client: Client, annotator: User, second_annotator: User
) -> None:
    response = researcher_client.get(API + "/projects/ratings/labels")
    body = response.json()
    names = {row["annotator"] for row in body["items"]}
    project = scene.ratings.pk
    assert names == {
        annotator_pseudonym(project, annotator.pk),
        annotator_pseudonym(project, second_annotator.pk),
    }
    text = response.content.decode()
    assert "ann" not in text.replace("annotator", "")
    assert all("annotator_id" not in row for row in body["items"])


def test_pseudonyms_are_stable_in_a_project_and_differ_across_projects(
    scene: Scene, researcher_client: Client, annotator: User
) -> None:
    in_ratings = annotator_pseudonym(scene.ratings.pk, annotator.pk)
    in_pairs = annotator_pseudonym(scene.pairs.pk, annotator.pk)
    assert in_ratings != in_pairs
    pairs = researcher_client.get(API + "/projects/pairs/labels").json()["items"]
    assert in_pairs in {row["annotator"] for row in pairs}
    assert in_ratings not in {row["annotator"] for row in pairs}


def test_labels_carry_the_item_and_answer(scene: Scene, researcher_client: Client) -> None:
    (row,) = researcher_client.get(API + "/projects/pairs/labels?limit=1").json()["items"]
    assert row["item_id"] == scene.pair.pk and row["prompt_id"] == scene.pair.prompt_id
    assert row["question"] == "preference" and row["kind"] == "preference"
    assert row["value"]["winner"] == row["response_ids"][0] and len(row["response_ids"]) == 2
    assert row["active_ms"] == 20_000 and row["undone_at"] is None and row["is_gold"] is False


def test_labels_page_through_every_live_label_once(scene: Scene, researcher_client: Client) -> None:
    seen: list[int] = []
    cursor = 0
    for _ in range(10):
        body = researcher_client.get(f"{API}/projects/ratings/labels?limit=3&after={cursor}")
        page = body.json()
        seen += [row["id"] for row in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert len(seen) == 8 == len(set(seen)) and seen == sorted(seen)


def test_undone_labels_only_when_asked(scene: Scene, researcher_client: Client) -> None:
    url = API + "/projects/ratings/labels?include_undone=true"
    rows = researcher_client.get(url).json()["items"]
    assert len(rows) == 9
    assert [row["value"] for row in rows if row["undone_at"]] == [{"score": 2}]


def test_labels_filter_by_time_question_annotator_and_gold(
    scene: Scene, researcher_client: Client, annotator: User
) -> None:
    def ids(query: str) -> list[int]:
        response = researcher_client.get(f"{API}/projects/ratings/labels?{query}")
        assert response.status_code == 200, response.content
        return [row["item_id"] for row in response.json()["items"]]

    # Items were served 10 minutes apart from T0 and answered 30 seconds later.
    since = (T0 + timedelta(minutes=10)).isoformat()
    until = (T0 + timedelta(minutes=21)).isoformat()
    first, second, third = scene.rated
    assert ids(f"since={since.replace('+', '%2B')}&until={until.replace('+', '%2B')}") == [
        second.pk,
        second.pk,
        third.pk,
        third.pk,
    ]
    assert ids("since=2026-01-05T09:30:00") == [scene.gold.pk] * 2  # no zone: UTC
    assert ids("question=helpfulness&gold=true") == [scene.gold.pk] * 2
    assert len(ids("gold=false")) == 6
    pseudonym = annotator_pseudonym(scene.ratings.pk, annotator.pk)
    assert ids(f"annotator={pseudonym}") == [first.pk, second.pk, third.pk, scene.gold.pk]


def test_an_unknown_question_or_annotator_is_a_400_naming_the_field(
    scene: Scene, researcher_client: Client, annotator: User
) -> None:
    response = researcher_client.get(API + "/projects/ratings/labels?question=harmlessness")
    assert response.status_code == 400
    assert response.json()["field"] == "question"
    assert "helpfulness" in response.json()["detail"]  # the questions it does have
    elsewhere = annotator_pseudonym(scene.ratings.pk + 1000, annotator.pk)
    response = researcher_client.get(f"{API}/projects/ratings/labels?annotator={elsewhere}")
    assert response.status_code == 400 and response.json()["field"] == "annotator"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("after=-1", "after"),
        ("after=9223372036854775808", "after"),
        ("since=yesterday", "since"),
        ("until=2026-13-01", "until"),
        ("question=a%20b", "question"),
        ("question=%00", "question"),
        ("annotator=ann", "annotator"),
        ("gold=maybe", "gold"),
    ],
)
def test_malformed_label_filters_are_a_422_naming_the_parameter(
    scene: Scene, researcher_client: Client, query: str, field: str
) -> None:
    response = researcher_client.get(f"{API}/projects/ratings/labels?{query}")
    assert response.status_code == 422, response.content
    assert field in str(response.json()["detail"])


def test_since_after_until_is_a_422_that_says_so(scene: Scene, researcher_client: Client) -> None:
    url = f"{API}/projects/ratings/labels?since=2026-02-01T00:00:00&until=2026-01-01T00:00:00"
    response = researcher_client.get(url)
    assert response.status_code == 422
    assert "since must be earlier than until" in str(response.json()["detail"])


# --- statistics ---------------------------------------------------------------------------------


def test_statistics_are_the_quality_pages_figures(scene: Scene, researcher_client: Client) -> None:
    body = researcher_client.get(API + "/projects/ratings/statistics").json()
    assert (body["items"], body["labels"], body["open_flags"]) == (4, 8, 0)
    # Gold: annotator 5 of 5 right, the second 1 of 5 wrong.
    assert body["gold"] == {"correct": 1, "total": 2, "accuracy": 0.5, "mean_tau": None}
    assert body["gold_by_question"] == [
        {"question": "helpfulness", "correct": 1, "total": 2, "accuracy": 0.5, "mean_tau": None}
    ]
    (helpfulness,) = [row for row in body["agreement"] if row["question"] == "helpfulness"]
    assert helpfulness["level"] == "ordinal" and helpfulness["items"] == 3
    assert helpfulness["pairwise"] == pytest.approx(2 / 3)
    assert helpfulness["alpha"] is not None and body["agreement_capped"] is False


def test_annotator_statistics_are_pseudonymous_and_paged(
    scene: Scene, researcher_client: Client, annotator: User, second_annotator: User
) -> None:
    url = API + "/projects/ratings/statistics/annotators?page_size=1"
    first = researcher_client.get(url).json()
    assert first["count"] == 2 and first["next_page"] == 2
    second = researcher_client.get(url + "&page=2").json()
    rows = first["items"] + second["items"]
    project = scene.ratings.pk
    assert {row["annotator"] for row in rows} == {
        annotator_pseudonym(project, annotator.pk),
        annotator_pseudonym(project, second_annotator.pk),
    }
    mine = next(r for r in rows if r["annotator"] == annotator_pseudonym(project, annotator.pk))
    assert (mine["submissions"], mine["undos"], mine["gold"]["accuracy"]) == (4, 1, 1.0)
    assert "ann" not in str(rows).replace("annotator", "")


def test_annotator_statistics_since_a_time(scene: Scene, researcher_client: Client) -> None:
    url = API + "/projects/ratings/statistics/annotators?since=2026-01-05T09:25:00Z"
    rows = researcher_client.get(url).json()["items"]
    assert sorted(row["submissions"] for row in rows) == [1, 1]
