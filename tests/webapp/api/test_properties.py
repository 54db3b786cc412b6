"""Property tests over the API's parameters: whatever a client sends, the answer is a success
that honours every parameter, or a 4xx that says what is wrong; never a 5xx."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import pytest
from django.test import Client
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.webapp.api.conftest import API, Scene, bearer
from webapp.api.pseudonyms import annotator_pseudonym
from webapp.exports.formats import FORMATS
from webapp.exports.models import ExportSnapshot

pytestmark = pytest.mark.both_databases

EXAMPLES = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(autouse=True)
def no_rate_limit(settings: Any) -> None:
    """Every example is a call; the limit has its own tests."""
    settings.API_RATE_LIMIT_PER_MINUTE = 10**9


def explained(response: Any) -> bool:
    """A 4xx body says what is wrong: a message, or pydantic's list of errors with messages."""
    detail = response.json()["detail"]
    if isinstance(detail, str):
        return bool(detail.strip())
    return bool(detail) and all(entry.get("msg") for entry in detail)


junk = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["", "0", "-1", "true", "false", "null", "1e9", "NaN", "\x00", "%00"]),
)


def mostly(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """`valid` three times in four, junk otherwise: examples that pass validation must be
    common, or the properties of a success are hardly checked."""
    return st.one_of(valid, valid, valid, junk)


moments = mostly(
    st.one_of(
        st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(
            datetime.isoformat
        ),
        st.sampled_from(["2026-01-05T09:10:00Z", "2026-01-05", "0001-01-01T00:00:00+14:00"]),
    )
)


def numbers(low: int, high: int, *edges: int) -> st.SearchStrategy[str]:
    """Whole numbers in [low, high] and the edges given, as query-string text."""
    return mostly(st.one_of(st.integers(low, high), st.sampled_from(edges)).map(str))


label_params = st.fixed_dictionaries(
    {},
    optional={
        "after": numbers(0, 10**6, -1, 2**63 - 1, 2**63),
        "limit": numbers(1, 1000, 0, 1001),
        "since": moments,
        "until": moments,
        "question": mostly(st.sampled_from(["helpfulness", "honesty", "flags"])),
        "annotator": mostly(st.just("PSEUDONYM")),
        "gold": mostly(st.sampled_from(["true", "false", "1", "0"])),
        "include_undone": mostly(st.sampled_from(["true", "false"])),
        "unknown": junk,
    },
)


@EXAMPLES
@given(params=label_params)
def test_label_pages_honour_every_filter_or_refuse_with_a_reason(
    scene: Scene, researcher_client: Client, params: dict[str, str]
) -> None:
    pseudonym = annotator_pseudonym(scene.ratings.pk, scene_annotator_id(scene))
    if params.get("annotator") == "PSEUDONYM":
        params["annotator"] = pseudonym
    response = researcher_client.get(f"{API}/projects/ratings/labels?{urlencode(params)}")
    assert response.status_code in (200, 400, 422), response.content
    if response.status_code != 200:
        event(f"refused {response.status_code}")
        assert explained(response)
        return
    event("answered")
    page = response.json()
    rows = page["items"]
    assert len(rows) <= page["limit"] == int(params.get("limit", 100))
    ids = [row["id"] for row in rows]
    assert ids == sorted(ids) and all(i > int(params.get("after", 0)) for i in ids)
    if "question" in params:
        assert all(row["question"] == params["question"] for row in rows)
    if "annotator" in params:
        assert all(row["annotator"] == params["annotator"] for row in rows)
    if params.get("include_undone") != "true":
        assert all(row["undone_at"] is None for row in rows)
    if page["next_cursor"] is not None:
        assert page["next_cursor"] == ids[-1] and len(rows) == page["limit"]


def scene_annotator_id(scene: Scene) -> int:
    return int(scene.rated[0].submissions.order_by("id").values_list("annotator", flat=True)[0])


page_params = st.fixed_dictionaries(
    {},
    optional={
        "page": numbers(1, 5, 0, 100_000, 100_001),
        "page_size": numbers(1, 200, 0, 201),
        "status": mostly(st.sampled_from(["queued", "succeeded"])),
        "project": mostly(st.sampled_from(["ratings", "pairs", "nope"])),
        "since": moments,
    },
)
PAGED = [
    "/projects",
    "/snapshots",
    "/projects/ratings/statistics/annotators",
]


@EXAMPLES
@given(path=st.sampled_from(PAGED), params=page_params)
def test_numbered_pages_are_consistent_or_refused_with_a_reason(
    scene: Scene, researcher_client: Client, path: str, params: dict[str, str]
) -> None:
    response = researcher_client.get(f"{API}{path}?{urlencode(params)}")
    assert response.status_code in (200, 404, 422), response.content
    if response.status_code != 200:
        event(f"refused {response.status_code}")
        assert explained(response)
        return
    event("answered")
    page = response.json()
    assert (page["page"], page["page_size"]) == (
        int(params.get("page", 1)),
        int(params.get("page_size", 50)),
    )
    assert len(page["items"]) <= page["page_size"]
    shown_before = (page["page"] - 1) * page["page_size"]
    assert len(page["items"]) == max(0, min(page["page_size"], page["count"] - shown_before))
    assert (page["next_page"] is not None) == (shown_before + len(page["items"]) < page["count"])


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False),
        st.text(max_size=20),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
filter_values = st.fixed_dictionaries(
    {},
    optional={
        "since": moments,
        "until": moments,
        "gold": st.sampled_from(["include", "exclude", "only", "x"]),
        "flagged": st.sampled_from(["include", "exclude", "only"]),
        "label_kinds": st.lists(st.sampled_from(["likert", "preference", "x"]), max_size=2),
        "min_agreement": st.one_of(st.floats(min_value=-1, max_value=2), json_values),
        "model_versions": st.one_of(st.lists(st.text(max_size=5), max_size=2), json_values),
    },
)
# Mostly bodies of the right shape (so the exports app's own checks are reached and some
# snapshots are made), and any JSON at all for the rest.
snapshot_bodies = st.one_of(
    st.fixed_dictionaries(
        {
            "project": st.sampled_from(["pairs", "ratings", "nope"]),
            "formats": st.lists(st.sampled_from([*FORMATS, "xml"]), min_size=1, max_size=3),
        },
        optional={
            "filters": st.one_of(filter_values, filter_values, json_values),
            "options": st.one_of(
                st.fixed_dictionaries(
                    {}, optional={"include_ties": st.booleans(), "ranking_pairs": junk}
                ),
                json_values,
            ),
            "seed": st.one_of(st.integers(min_value=-1, max_value=2**64), json_values),
            "test_share": st.one_of(st.floats(min_value=-1, max_value=2), json_values),
        },
    ),
    st.dictionaries(
        st.sampled_from(["project", "formats", "filters", "options", "seed", "x"]), json_values
    ),
)


@EXAMPLES
@given(body=snapshot_bodies)
def test_a_snapshot_is_made_or_refused_with_a_reason_and_nothing_written(
    scene: Scene, researcher_client: Client, body: dict[str, Any]
) -> None:
    before = ExportSnapshot.objects.count()
    response = researcher_client.post(
        f"{API}/snapshots", json.dumps(body), content_type="application/json"
    )
    assert response.status_code in (201, 400, 404, 422), response.content
    if response.status_code != 201:
        event(f"refused {response.status_code}")
        assert explained(response)
        assert ExportSnapshot.objects.count() == before
        return
    event("created")
    assert ExportSnapshot.objects.count() == before + 1
    assert response.json()["status"] == "queued"
    assert response.json()["project"] == body["project"]


@EXAMPLES
@given(header=st.text(max_size=80))
def test_any_authorization_header_but_a_token_is_a_401(
    db: None, researcher_client: Client, header: str
) -> None:
    response = Client().get(f"{API}/projects", headers={"Authorization": header})
    assert response.status_code == 401, response.content
    assert explained(response)


def test_the_property_tests_reach_success_too(scene: Scene, researcher_client: Client) -> None:
    """The properties above are only worth something if some examples get through: check that
    the shapes they draw from can succeed."""
    labels = researcher_client.get(f"{API}/projects/ratings/labels?limit=5&gold=false")
    assert labels.status_code == 200
    body = {"project": "pairs", "formats": ["pairs_jsonl"], "filters": {"gold": "only"}}
    created = researcher_client.post(
        f"{API}/snapshots", json.dumps(body), content_type="application/json"
    )
    assert created.status_code == 201, created.content
    assert bearer("x")["Authorization"] == "Bearer x"
