"""Snapshot pages for every role, the create form, the htmx progress fragment and downloads."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from tests.conftest import client_for
from tests.webapp.annotation.conftest import AddItems, MakeProject
from tests.webapp.exports.conftest import AddLabel, win
from webapp.accounts.models import User
from webapp.annotation.models import Project
from webapp.annotation.questions import TaskType
from webapp.exports import building
from webapp.exports.models import ExportSnapshot, SnapshotStatus
from webapp.exports.services import create_snapshot

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def project(
    make_project: MakeProject, add_items: AddItems, annotator: User, add_label: AddLabel
) -> Project:
    project = make_project(TaskType.PAIRWISE, slug="compare")
    for item in add_items(project, prompts=2):
        add_label(item, annotator, "preference", win(item, 0))
    return project


@pytest.fixture
def queued(project: Project, researcher: User) -> ExportSnapshot:
    return create_snapshot(project, researcher, {}, ["pairs_jsonl"], run_in_background=False)


@pytest.fixture
def built(queued: ExportSnapshot) -> ExportSnapshot:
    assert building.run_snapshot(queued.pk)
    queued.refresh_from_db()
    return queued


def pages(snapshot: ExportSnapshot) -> list[str]:
    return [
        reverse("exports:snapshots"),
        reverse("exports:detail", args=[snapshot.pk]),
        reverse("exports:download", args=[snapshot.pk, "manifest.json"]),
    ]


@pytest.mark.parametrize("persona", ["annotator", "second_annotator", "outsider"])
def test_people_without_a_research_role_get_403(
    persona: str, built: ExportSnapshot, request: pytest.FixtureRequest
) -> None:
    client = client_for(request.getfixturevalue(persona))
    for url in pages(built):
        assert client.get(url).status_code == 403, url
    assert client.post(reverse("exports:snapshots"), {}).status_code == 403


def test_anonymous_visitors_are_sent_to_log_in(built: ExportSnapshot) -> None:
    for url in pages(built):
        response = Client().get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


@pytest.mark.parametrize("persona", ["researcher", "admin_user"])
def test_researchers_and_admins_see_the_list_and_the_nav_link(
    persona: str, built: ExportSnapshot, request: pytest.FixtureRequest
) -> None:
    response = client_for(request.getfixturevalue(persona)).get(reverse("exports:snapshots"))
    assert response.status_code == 200
    page = response.content.decode()
    assert f'data-snapshot="{built.pk}"' in page and 'href="/exports/"' in page


def test_the_nav_link_is_not_shown_to_annotators(annotator: User) -> None:
    page = client_for(annotator).get(reverse("home")).content.decode()
    assert 'href="/exports/"' not in page


def test_the_form_creates_a_queued_snapshot_and_lands_on_its_page(
    project: Project,
    researcher: User,
    django_capture_on_commit_callbacks: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from webapp import background

    sent: list[tuple[str, list[int]]] = []
    monkeypatch.setattr(background.app, "send_task", lambda name, args: sent.append((name, args)))
    form = {
        "project": project.slug,
        "formats": ["pairs_parquet", "hh_jsonl"],
        "gold": "exclude",
        "flagged": "exclude",
        "seed": "7",
        "test_share": "0.2",
        "ranking_pairs": "adjacent",
        "min_agreement": "0.5",
        "annotators": "ann",
    }
    with django_capture_on_commit_callbacks(execute=True):  # type: ignore[operator]
        response = client_for(researcher).post(reverse("exports:snapshots"), form)
    snapshot = ExportSnapshot.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("exports:detail", args=[snapshot.pk])
    assert snapshot.formats == ["pairs_parquet", "hh_jsonl"] and snapshot.seed == 7
    assert snapshot.filters["gold"] == "exclude" and snapshot.filters["annotators"] == ["ann"]
    assert snapshot.options["ranking_pairs"] == "adjacent" and snapshot.created_by == researcher
    assert sent == [("exports.build_snapshot", [snapshot.pk])]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"formats": ["likert_csv"]}, "needs likert questions"),
        ({"annotators": "nobody"}, "Unknown annotator(s): nobody"),
        ({"since": "soon"}, "ISO 8601"),
        ({"formats": ["pairs_xml"]}, "Select a valid choice"),
    ],
)
def test_bad_input_is_shown_in_the_form_with_400(
    project: Project, researcher: User, change: dict[str, object], message: str
) -> None:
    form = {
        "project": project.slug,
        "formats": ["pairs_jsonl"],
        "gold": "include",
        "flagged": "exclude",
        "seed": "0",
        "test_share": "0.1",
        "ranking_pairs": "all",
    }
    response = client_for(researcher).post(reverse("exports:snapshots"), form | change)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not ExportSnapshot.objects.exists()


def test_the_status_fragment_polls_while_running_and_stops_when_done(
    queued: ExportSnapshot, researcher: User
) -> None:
    client = client_for(researcher)
    url = reverse("exports:detail", args=[queued.pk])
    fragment = client.get(url, **HTMX).content.decode()
    assert fragment.lstrip().startswith('<div id="snapshot-status"')
    assert 'hx-trigger="every 1s"' in fragment and "<html" not in fragment
    ExportSnapshot.objects.filter(pk=queued.pk).update(
        status=SnapshotStatus.RUNNING, rows_done=5, rows_total=10, current_file="pairs-train.jsonl"
    )
    running = client.get(url, **HTMX).content.decode()
    assert "5 of about 10 rows" in running and 'value="50"' in running
    ExportSnapshot.objects.filter(pk=queued.pk).update(status=SnapshotStatus.QUEUED)
    assert building.run_snapshot(queued.pk)
    done = client.get(url, **HTMX).content.decode()
    assert "hx-trigger" not in done and 'data-status="succeeded"' in done
    assert reverse("exports:download", args=[queued.pk, "pairs-train.jsonl"]) in done


def test_a_finished_snapshots_page_shows_the_manifest_and_its_files_download(
    built: ExportSnapshot, admin_user: User
) -> None:
    client = client_for(admin_user)
    page = client.get(reverse("exports:detail", args=[built.pk])).content.decode()
    assert "<html" in page and built.manifest["code_version"] in page
    assert "&quot;flagged&quot;: &quot;exclude&quot;" in page  # the filters, as JSON
    response = client.get(reverse("exports:download", args=[built.pk, "manifest.json"]))
    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]
    assert json.loads(b"".join(response.streaming_content))["snapshot_id"] == built.pk  # type: ignore[attr-defined]


def test_files_of_an_unfinished_snapshot_or_outside_it_are_refused(
    queued: ExportSnapshot, built: ExportSnapshot, researcher: User
) -> None:
    client = client_for(researcher)
    other = create_snapshot(built.project, researcher, {}, ["pairs_jsonl"], run_in_background=False)
    assert (
        client.get(reverse("exports:download", args=[other.pk, "manifest.json"])).status_code == 409
    )
    for name in ("secret.txt", "..", "%2e%2e%2fmanifest.json"):
        url = reverse("exports:snapshots") + f"{built.pk}/files/{name}"
        assert client.get(url).status_code == 404, name
    assert client.get(reverse("exports:detail", args=[99999])).status_code == 404
