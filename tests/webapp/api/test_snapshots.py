"""Export snapshots over the API: list, create, follow and download. Building itself is the
exports app's (tests/webapp/exports); here a snapshot is built in the test when a finished one is
needed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from tests.webapp.api.conftest import (
    API,
    CALLERS,
    Scene,
    expected_auth_status,
)
from webapp.accounts.models import User
from webapp.api.pseudonyms import annotator_pseudonym
from webapp.exports import building
from webapp.exports.models import ExportSnapshot, SnapshotStatus
from webapp.exports.services import create_snapshot, open_snapshot_file

SNAPSHOTS = API + "/snapshots"


@pytest.fixture(autouse=True)
def export_dir(tmp_path: Path, settings: Any) -> Path:
    settings.EXPORT_DIR = tmp_path / "exports"
    return Path(settings.EXPORT_DIR)


@pytest.fixture
def built(scene: Scene, researcher: User) -> ExportSnapshot:
    """A finished snapshot of the pairwise project."""
    snapshot = create_snapshot(
        scene.pairs, researcher, {}, ["pairs_jsonl"], run_in_background=False
    )
    assert building.run_snapshot(snapshot.pk)
    snapshot.refresh_from_db()
    assert snapshot.status == SnapshotStatus.SUCCEEDED, snapshot.error
    return snapshot


@pytest.fixture
def queued(scene: Scene, researcher: User) -> ExportSnapshot:
    return create_snapshot(scene.ratings, researcher, {}, ["likert_jsonl"], run_in_background=False)


def post(client: Client, body: Any) -> Any:
    return client.post(SNAPSHOTS, json.dumps(body), content_type="application/json")


# --- who may call -------------------------------------------------------------------------------


@pytest.mark.parametrize("caller", CALLERS)
def test_only_researchers_and_admins_use_snapshots(
    built: ExportSnapshot, caller_headers: Callable[[str], dict[str, str]], caller: str
) -> None:
    client = Client(headers=caller_headers(caller))
    calls = {
        "list": client.get(SNAPSHOTS),
        "get": client.get(f"{SNAPSHOTS}/{built.pk}"),
        "download": client.get(f"{SNAPSHOTS}/{built.pk}/files/manifest.json"),
        "create": post(client, {"project": "pairs", "formats": ["pairs_jsonl"]}),
    }
    denied = expected_auth_status(caller)
    expected = {"list": 200, "get": 200, "download": 200, "create": 201}
    assert {name: r.status_code for name, r in calls.items()} == {
        name: denied or status for name, status in expected.items()
    }
    if denied:
        assert ExportSnapshot.objects.count() == 1  # only `built`


# --- create -------------------------------------------------------------------------------------


def test_creating_queues_a_snapshot_by_the_tokens_owner(
    scene: Scene, researcher_client: Client, researcher: User
) -> None:
    body = {
        "project": "pairs",
        "formats": ["pairs_jsonl", "pairs_parquet"],
        "filters": {"since": "2026-01-01", "gold": "exclude"},
        "options": {"include_ties": True},
        "seed": 7,
        "test_share": 0.25,
    }
    response = post(researcher_client, body)
    assert response.status_code == 201, response.content
    shown = response.json()
    snapshot = ExportSnapshot.objects.get(pk=shown["id"])
    assert snapshot.created_by == researcher and snapshot.project == scene.pairs
    assert shown["status"] == "queued" and shown["progress_percent"] == 0
    assert shown["filters"]["since"] == "2026-01-01T00:00:00+00:00"
    assert (shown["seed"], shown["test_share"], shown["files"]) == (7, 0.25, [])


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"formats": ["pairs_xml"]}, "formats", "Unknown format"),
        ({"formats": []}, "formats", "at least one format"),
        ({"formats": ["likert_jsonl"]}, "formats", "asks none"),
        ({"filters": {"since": "2026-02-01", "until": "2026-01-01"}}, "until", "before"),
        ({"filters": {"model_versions": ["v9"]}}, "model_versions", "Unknown model version"),
        ({"filters": {"gold": "sometimes"}}, "gold", "one of"),
        ({"options": {"ranking_pairs": "best"}}, "ranking_pairs", "one of"),
        ({"seed": -1}, "seed", "whole number"),
        ({"test_share": 1.0}, "test_share", "[0, 1)"),
        ({"filters": {"model_versions": ["v\x00"]}}, "filters", "NUL"),
        ({"filters": {"model_versions": ["v\ud800"]}}, "filters", "unpaired surrogate"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    scene: Scene, researcher_client: Client, body: dict[str, Any], field: str, words: str
) -> None:
    response = post(researcher_client, {"project": "pairs", "formats": ["pairs_jsonl"], **body})
    assert response.status_code == 400, response.content
    assert response.json()["field"] == field
    assert words in response.json()["detail"]
    assert not ExportSnapshot.objects.exists()


def test_a_body_too_large_to_read_is_a_413_in_json(scene: Scene, researcher_client: Client) -> None:
    body = {"project": "pairs", "formats": ["pairs_jsonl"], "filters": {"x": "y" * 3_000_000}}
    response = post(researcher_client, body)
    assert response.status_code == 413
    assert "larger than the server accepts" in response.json()["detail"]
    assert not ExportSnapshot.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {"formats": ["pairs_jsonl"]},  # no project
        {"project": "pairs"},  # no formats
        {"project": "pairs", "formats": "pairs_jsonl"},
        {"project": "pairs", "formats": ["pairs_jsonl"], "seed": "seven"},
        {"project": "pairs", "formats": ["pairs_jsonl"], "filters": []},
        {"project": "../etc", "formats": ["pairs_jsonl"]},
        {"project": "pairs", "formats": ["pairs_jsonl"], "filters": {"colour": "red"}},
        {"project": "pairs", "formats": ["pairs_jsonl"], "filters": {"since": "last week"}},
        {"project": "pairs", "formats": ["pairs_jsonl"], "filters": {"since": "0001-01-01+01:00"}},
        {"project": "pairs", "formats": ["pairs_jsonl"], "options": {"include_ties": "maybe"}},
        {"project": "pairs", "formats": ["pairs_jsonl"], "seed": False},
        {"project": "pairs", "formats": ["pairs_jsonl"], "test_share": "0.2"},
        {"project": "pairs", "formats": ["pairs_jsonl"], "options": {"include_ties": 1}},
    ],
)
def test_a_malformed_body_is_a_422(
    scene: Scene, researcher_client: Client, body: dict[str, Any]
) -> None:
    response = post(researcher_client, body)
    assert response.status_code == 422
    assert all(error["msg"] for error in response.json()["detail"])
    assert not ExportSnapshot.objects.exists()


def test_the_annotators_filter_is_not_offered_because_it_names_people(
    scene: Scene, researcher_client: Client
) -> None:
    body = {"project": "pairs", "formats": ["pairs_jsonl"], "filters": {"annotators": ["ann"]}}
    response = post(researcher_client, body)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"][-1] == "annotators" and "not permitted" in error["msg"]


def test_a_body_that_is_not_json_is_a_4xx(scene: Scene, researcher_client: Client) -> None:
    response = researcher_client.post(SNAPSHOTS, "{oops", content_type="application/json")
    assert 400 <= response.status_code < 500


def test_creating_for_an_unknown_project_is_a_404(researcher_client: Client) -> None:
    response = post(researcher_client, {"project": "nope", "formats": ["pairs_jsonl"]})
    assert response.status_code == 404 and "nope" in response.json()["detail"]


# --- list and get -------------------------------------------------------------------------------


def test_the_list_filters_by_project_and_status(
    built: ExportSnapshot, queued: ExportSnapshot, researcher_client: Client
) -> None:
    def ids(query: str) -> list[int]:
        response = researcher_client.get(f"{SNAPSHOTS}?{query}")
        assert response.status_code == 200, response.content
        return [row["id"] for row in response.json()["items"]]

    assert ids("") == [queued.pk, built.pk]  # newest first
    assert ids("project=pairs") == [built.pk]
    assert ids("status=queued") == [queued.pk]
    assert ids("status=succeeded&project=ratings") == []
    assert ids("page_size=1&page=2") == [built.pk]


@pytest.mark.parametrize("query", ["status=done", "project=a%20b", "page=0", "page_size=500"])
def test_bad_list_parameters_are_a_422(researcher_client: Client, query: str) -> None:
    assert researcher_client.get(f"{SNAPSHOTS}?{query}").status_code == 422


def test_listing_an_unknown_project_is_a_404(researcher_client: Client) -> None:
    assert researcher_client.get(f"{SNAPSHOTS}?project=nope").status_code == 404


def test_a_finished_snapshot_shows_its_manifest_and_files(
    built: ExportSnapshot, researcher_client: Client
) -> None:
    shown = researcher_client.get(f"{SNAPSHOTS}/{built.pk}").json()
    assert shown["status"] == "succeeded" and shown["progress_percent"] == 100
    assert shown["manifest"]["snapshot_id"] == built.pk
    names = [f["name"] for f in shown["files"]]
    assert "pairs-train.jsonl" in names and names[-1] == "manifest.json"
    assert shown["files"][0]["url"] == (
        f"http://testserver{SNAPSHOTS}/{built.pk}/files/{shown['files'][0]['name']}"
    )


def test_a_queued_snapshot_shows_no_files(
    queued: ExportSnapshot, researcher_client: Client
) -> None:
    shown = researcher_client.get(f"{SNAPSHOTS}/{queued.pk}").json()
    assert (shown["status"], shown["manifest"], shown["files"]) == ("queued", {}, [])


@pytest.mark.parametrize("snapshot_id", ["999999", "9223372036854775807"])
def test_an_unknown_snapshot_is_a_404(researcher_client: Client, snapshot_id: str) -> None:
    response = researcher_client.get(f"{SNAPSHOTS}/{snapshot_id}")
    assert response.status_code == 404 and snapshot_id in response.json()["detail"]


@pytest.mark.parametrize("snapshot_id", ["0", "9223372036854775808"])
def test_a_snapshot_id_out_of_range_is_a_422(researcher_client: Client, snapshot_id: str) -> None:
    assert researcher_client.get(f"{SNAPSHOTS}/{snapshot_id}").status_code == 422


def test_usernames_in_a_browser_made_snapshots_filters_show_as_pseudonyms(
    scene: Scene, researcher: User, annotator: User, researcher_client: Client
) -> None:
    snapshot = create_snapshot(
        scene.pairs,
        researcher,
        {"annotators": [annotator.username]},
        ["pairs_jsonl"],
        run_in_background=False,
    )
    assert building.run_snapshot(snapshot.pk)
    snapshot.refresh_from_db()
    response = researcher_client.get(f"{SNAPSHOTS}/{snapshot.pk}")
    pseudonym = annotator_pseudonym(scene.pairs.pk, annotator.pk)
    assert response.json()["filters"]["annotators"] == [pseudonym]
    with open_snapshot_file(snapshot, "manifest.json") as handle:
        published = json.loads(handle.read())
    assert response.json()["manifest"] == published  # the file's own, snapshot pseudonyms
    assert len(published["filters"]["annotators"]) == 1
    assert '"ann"' not in response.content.decode()


# --- download -----------------------------------------------------------------------------------


def test_a_file_downloads_with_the_manifests_checksum(
    built: ExportSnapshot, researcher_client: Client
) -> None:
    entry = next(f for f in built.manifest["files"] if f["name"] == "pairs-train.jsonl")
    response = researcher_client.get(f"{SNAPSHOTS}/{built.pk}/files/pairs-train.jsonl")
    assert response.status_code == 200
    assert 'attachment; filename="pairs-train.jsonl"' in response["Content-Disposition"]
    content = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert hashlib.sha256(content).hexdigest() == entry["sha256"]
    assert len(content.splitlines()) == entry["rows"] > 0


@pytest.mark.parametrize("name", ["nope.jsonl", "%00", "README", "..", "manifest.json%20"])
def test_a_file_the_snapshot_does_not_have_is_a_404(
    built: ExportSnapshot, researcher_client: Client, name: str
) -> None:
    response = researcher_client.get(f"{SNAPSHOTS}/{built.pk}/files/{name}")
    assert response.status_code == 404
    assert response.json()["field"] == "name"


@pytest.mark.parametrize("path", ["/files/..%2Fmanifest.json", "/files/a/b", "/x", "/files"])
def test_a_path_that_names_no_endpoint_is_a_json_404(
    built: ExportSnapshot, researcher_client: Client, path: str
) -> None:
    response = researcher_client.get(f"{SNAPSHOTS}/{built.pk}{path}")
    assert response.status_code == 404
    assert "No API endpoint" in response.json()["detail"]


def test_a_file_of_an_unfinished_snapshot_is_a_409(
    queued: ExportSnapshot, researcher_client: Client
) -> None:
    response = researcher_client.get(f"{SNAPSHOTS}/{queued.pk}/files/likert-train.jsonl")
    assert response.status_code == 409 and "not complete" in response.json()["detail"]


def test_a_file_of_an_unknown_snapshot_is_a_404(researcher_client: Client) -> None:
    assert researcher_client.get(f"{SNAPSHOTS}/999999/files/manifest.json").status_code == 404
