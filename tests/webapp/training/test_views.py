"""Training pages for every role, the start form (and its 422 answers), the round's live
fragment, cancel and resume (409 when refused), versions, promote, compare and leaderboard."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from tests.conftest import client_for
from tests.webapp.annotation.conftest import MakeProject, make_project  # noqa: F401 (fixture)
from tests.webapp.training import factories
from webapp import background
from webapp.accounts.models import User
from webapp.annotation.models import ModelVersion, Project
from webapp.annotation.questions import TaskType
from webapp.training import rounds
from webapp.training.models import RoundState, TrainingRound
from webapp.training.versions import GALLERY_SIZE

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}
Sent = list[tuple[str, list[int]]]


# What a round's evaluate stage records on the version it registers (workers/round_stages.py).
EVALUATION = {
    "held_out": {"pairwise_accuracy": 0.71},
    "proxy_win_rate": 0.8,
    "proxy_win_rate_low": 0.6,
    "proxy_win_rate_high": 0.9,
    "kl": 0.5,
}


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    calls: Sent = []
    monkeypatch.setattr(
        background.app, "send_task", lambda name, args, **options: calls.append((name, args))
    )
    return calls


@pytest.fixture
def project(make_project: MakeProject, annotator: User) -> Project:  # noqa: F811
    """Base (serving) and r1 (its child, from a round), with voted pairs and shared prompts."""
    project = make_project(TaskType.PAIRWISE, name="Support answers", slug="support")
    base = factories.version("tiny-base", metrics={"pretrain": {"val_loss": 4.25}})
    child = factories.version("support-r1", parent=base, metrics=EVALUATION)
    project.serving_version = base
    project.save()
    factories.training_round(
        project,
        RoundState.SUCCEEDED,
        base_version=base,
        result_version=child,
        labels_sha256="ab" * 32,
        labels_count=42,
        summary={"evaluate": {"kl": 0.031}},
    )
    factories.votes(project, annotator, child, base, a_wins=7, b_wins=3)
    return project


@pytest.fixture
def running(project: Project) -> TrainingRound:
    training_round = factories.training_round(
        project, RoundState.RUNNING, stage="reward", stage_step=3, stage_steps=10
    )
    for step, loss in enumerate([0.9, 0.7, 0.6], 1):
        rounds.record_metrics(training_round.pk, "reward", step, {"loss": loss, "accuracy": 0.5})
    rounds.log(training_round.pk, "first line")
    rounds.log(training_round.pk, "last line")
    return training_round


def versions(project: Project) -> tuple[ModelVersion, ModelVersion]:
    return ModelVersion.objects.get(name="support-r1"), ModelVersion.objects.get(name="tiny-base")


def read_pages(project: Project, training_round: TrainingRound) -> list[str]:
    child, base = versions(project)
    return [
        reverse("training:rounds"),
        reverse("training:round", args=[training_round.pk]),
        reverse("training:versions", args=[project.slug]),
        reverse("training:compare", args=[project.slug]) + f"?a={child.pk}&b={base.pk}",
        reverse("training:leaderboard", args=[project.slug]),
    ]


def admin_posts(project: Project, training_round: TrainingRound) -> list[str]:
    child, _ = versions(project)
    return [
        reverse("training:start"),
        reverse("training:cancel", args=[training_round.pk]),
        reverse("training:resume", args=[training_round.pk]),
        reverse("training:promote", args=[project.slug, child.pk]),
    ]


# --- who may see and do what -------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["annotator", "outsider"])
def test_people_without_a_research_role_get_403_everywhere(
    persona: str, project: Project, running: TrainingRound, request: pytest.FixtureRequest
) -> None:
    client = client_for(request.getfixturevalue(persona))
    for url in [*read_pages(project, running), reverse("training:start")]:
        assert client.get(url).status_code == 403, url
    for url in admin_posts(project, running):
        assert client.post(url).status_code == 403, url
    running.refresh_from_db()
    assert running.state == RoundState.RUNNING and not running.cancel_requested


def test_anonymous_visitors_are_sent_to_log_in(project: Project, running: TrainingRound) -> None:
    visits = [("get", url) for url in read_pages(project, running)]
    visits += [("post", url) for url in admin_posts(project, running)]
    for method, url in visits:
        response = getattr(Client(), method)(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], url


def test_researchers_read_every_page_and_change_nothing(
    project: Project, running: TrainingRound, researcher: User
) -> None:
    client = client_for(researcher)
    for url in read_pages(project, running):
        page = client.get(url)
        assert page.status_code == 200, url
        html = page.content.decode()
        assert "Cancel round" not in html and "Promote to serving" not in html, url
        assert "Start a round" not in html, url
    assert client.get(reverse("training:start")).status_code == 403
    for url in admin_posts(project, running):
        assert client.post(url).status_code == 403, url
    project.refresh_from_db()
    assert project.serving_version.name == "tiny-base"  # type: ignore[union-attr]


def test_admins_see_every_page_with_its_actions(
    project: Project, running: TrainingRound, admin_user: User
) -> None:
    client = client_for(admin_user)
    for url in [*read_pages(project, running), reverse("training:start")]:
        assert client.get(url).status_code == 200, url
    assert "Cancel round" in client.get(read_pages(project, running)[1]).content.decode()
    assert "Promote to serving" in client.get(read_pages(project, running)[2]).content.decode()


@pytest.mark.parametrize(
    ("persona", "shown"), [("researcher", True), ("admin_user", True), ("annotator", False)]
)
def test_the_nav_link_is_for_researchers_and_admins(
    persona: str, shown: bool, request: pytest.FixtureRequest
) -> None:
    page = client_for(request.getfixturevalue(persona)).get(reverse("home")).content.decode()
    assert ('href="/training/"' in page) is shown


# --- the start form ------------------------------------------------------------------------------


def form(project: Project, **changes: str) -> dict[str, str]:
    return {"project": project.slug, "kind": "full", "preset": "ci", "algorithm": "ppo"} | {
        "flagged": "exclude",
        **changes,
    }


def test_the_form_queues_a_round_and_lands_on_its_page(
    project: Project, admin_user: User, sent: Sent, django_capture_on_commit_callbacks: Any
) -> None:
    data = form(
        project,
        algorithm="dpo",
        since="2026-11-01T09:30",
        min_agreement="0.6",
        overrides='{"dpo": {"max_steps": 5}}',
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(admin_user).post(reverse("training:start"), data)
    created = TrainingRound.objects.get(state=RoundState.QUEUED)
    assert response.status_code == 302
    assert response["Location"] == reverse("training:round", args=[created.pk])
    assert created.config["algorithm"] == "dpo" and created.config["dpo"]["max_steps"] == 5
    assert created.label_filter["min_agreement"] == 0.6
    assert created.label_filter["since"] == "2026-11-01T09:30:00+00:00"
    assert created.base_version == project.serving_version and created.created_by == admin_user
    assert sent == [("training.run_round", [created.pk])]


def test_with_htmx_the_form_answers_with_a_client_redirect(
    project: Project, admin_user: User, sent: Sent
) -> None:
    response = client_for(admin_user).post(reverse("training:start"), form(project), **HTMX)
    created = TrainingRound.objects.get(state=RoundState.QUEUED)
    assert response.status_code == 200
    assert response["HX-Redirect"] == reverse("training:round", args=[created.pk])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"overrides": '{"ppo": {"steps": 4}'}, "Overrides are not valid JSON: Expecting"),
        ({"overrides": "[1, 2]"}, "Overrides must be a JSON object of sections"),
        ({"overrides": '{"ppo_typo": {}}'}, "Unknown config section &#x27;ppo_typo&#x27;"),
        ({"since": "2026-12-01T00:00", "until": "2026-11-01T00:00"}, "must be before"),
        ({"min_agreement": "1.5"}, "less than or equal to 1"),
        ({"preset": "huge"}, "Select a valid choice"),
    ],
)
def test_a_bad_form_answers_422_with_the_message_and_writes_nothing(
    project: Project, admin_user: User, sent: Sent, change: dict[str, str], message: str
) -> None:
    before = TrainingRound.objects.count()
    client = client_for(admin_user)
    full = client.post(reverse("training:start"), form(project, **change))
    fragment = client.post(reverse("training:start"), form(project, **change), **HTMX)
    for response in (full, fragment):
        assert response.status_code == 422 and message in response.content.decode()
    assert "<html" in full.content.decode() and "<html" not in fragment.content.decode()
    assert 'id="round-form"' in fragment.content.decode()
    assert TrainingRound.objects.count() == before and sent == []


def test_the_form_offers_every_algorithm_with_ppo_and_the_recommended_preset_preselected(
    project: Project, admin_user: User
) -> None:
    page = client_for(admin_user).get(reverse("training:start")).content.decode()
    algorithms = page.split('name="algorithm"')[1].split("</select>")[0]
    assert re.findall(r'<option value="(\w+)"', algorithms) == ["ppo", "dpo", "rejection_sampling"]
    assert '<option value="ppo" selected>PPO</option>' in algorithms
    assert '<option value="rejection_sampling">Rejection sampling</option>' in algorithms
    chosen = page.split('name="preset"')[1].split("</select>")[0]
    assert '<option value="recommended" selected>' in chosen


def test_the_form_preselects_the_project_from_the_query(project: Project, admin_user: User) -> None:
    page = client_for(admin_user).get(reverse("training:start") + "?project=support")
    assert '<option value="support" selected>' in page.content.decode()


# --- rounds list and round page ----------------------------------------------------------------


def test_the_list_shows_each_queued_round_s_place_in_the_queue(
    project: Project, running: TrainingRound, researcher: User
) -> None:
    second = factories.training_round(project, minutes_ago=1)
    first = factories.training_round(project, minutes_ago=5)
    page = client_for(researcher).get(reverse("training:rounds")).content.decode()
    for queued, place in ((first, 1), (second, 2)):
        row = page.split(f'data-round="{queued.pk}"')[1].split("</tr>")[0]
        assert f"#{place} in queue" in row
    running_row = page.split(f'data-round="{running.pk}"')[1].split("</tr>")[0]
    # Stage 1 of 7 (reward), 3 of its 10 steps: 0.3 of one stage in seven.
    assert "in queue" not in running_row and "4%" in running_row
    assert 'hx-trigger="every 2s"' in page


def test_the_list_stops_polling_when_every_round_is_finished(
    project: Project, researcher: User
) -> None:
    fragment = client_for(researcher).get(reverse("training:rounds"), **HTMX).content.decode()
    assert 'id="rounds"' in fragment and "<html" not in fragment
    assert "hx-trigger" not in fragment


def test_a_running_round_s_fragment_polls_with_progress_charts_and_logs(
    running: TrainingRound, researcher: User
) -> None:
    url = reverse("training:round", args=[running.pk])
    fragment = client_for(researcher).get(url, **HTMX).content.decode()
    assert "<html" not in fragment and 'data-state="running"' in fragment
    assert 'hx-trigger="every 2s"' in fragment and f'hx-get="{url}"' in fragment
    assert "step 3 of 10" in fragment
    assert 'data-metric="reward:loss"' in fragment and 'data-metric="reward:accuracy"' in fragment
    assert "<polyline" in fragment
    assert fragment.index("first line") < fragment.index("last line")  # newest last


def test_the_round_page_shows_the_main_curves_and_the_rest_on_request(
    running: TrainingRound, researcher: User
) -> None:
    rounds.record_metrics(running.pk, "reward", 4, {"loss": 0.5, "accuracy": 0.6, "lr": 1e-3})
    url = reverse("training:round", args=[running.pk])
    main = client_for(researcher).get(url, **HTMX).content.decode()
    assert 'data-metric="reward:loss"' in main and 'data-metric="reward:lr"' not in main
    assert 'href="?metrics=all"' in main and "1 more" in main
    every = client_for(researcher).get(url + "?metrics=all", **HTMX).content.decode()
    assert 'data-metric="reward:lr"' in every
    assert f'hx-get="{url}?metrics=all"' in every  # polling keeps showing them all


def test_a_finished_round_s_fragment_stops_polling(project: Project, admin_user: User) -> None:
    child = ModelVersion.objects.get(name="support-r1")
    done = TrainingRound.objects.get(result_version=child)
    fragment = client_for(admin_user).get(reverse("training:round", args=[done.pk]), **HTMX)
    html = fragment.content.decode()
    assert 'data-state="succeeded"' in html and "hx-trigger" not in html
    assert "support-r1" in html and "Cancel round" not in html and "Resume" not in html


def test_the_round_page_says_when_a_round_may_not_have_learned(
    running: TrainingRound, researcher: User
) -> None:
    url = reverse("training:round", args=[running.pk])
    client = client_for(researcher)
    assert "may not have learned" not in client.get(url).content.decode()
    warning = "reward: only 3 held-out preference(s): the reward model's accuracy says little"
    rounds.log(running.pk, warning, level=rounds.WARNING)
    for page in (client.get(url), client.get(url, **HTMX)):  # the page and its live fragment
        html = page.content.decode()
        box = html.split('class="learning-warnings"')[1].split("</div>")[0]
        assert "This round may not have learned" in box
        assert "<li>reward: only 3 held-out preference(s)" in box


def test_the_round_page_shows_its_inputs_and_config(project: Project, researcher: User) -> None:
    done = TrainingRound.objects.get(result_version__name="support-r1")
    page = client_for(researcher).get(reverse("training:round", args=[done.pk])).content.decode()
    assert "42 labels" in page and "sha256 abababababababab" in page
    assert "&quot;stages&quot;" in page and 'id="config"' in page


def test_cancel_answers_with_the_fragment_and_409_when_the_state_does_not_allow_it(
    running: TrainingRound, admin_user: User
) -> None:
    client = client_for(admin_user)
    url = reverse("training:cancel", args=[running.pk])
    asked = client.post(url, **HTMX)
    assert asked.status_code == 200 and "cancelling" in asked.content.decode()
    running.refresh_from_db()
    assert running.cancel_requested
    rounds.mark_cancelled(running.pk, running.worker)
    refused = client.post(url, **HTMX)
    assert refused.status_code == 409
    assert "A cancelled round cannot be cancelled." in refused.content.decode()
    assert 'data-state="cancelled"' in refused.content.decode()


def test_resume_queues_a_cancelled_round_and_refuses_a_queued_one(
    running: TrainingRound, admin_user: User, sent: Sent, django_capture_on_commit_callbacks: Any
) -> None:
    client = client_for(admin_user)
    rounds.cancel(running.pk)
    rounds.mark_cancelled(running.pk, running.worker)
    url = reverse("training:resume", args=[running.pk])
    with django_capture_on_commit_callbacks(execute=True):
        resumed = client.post(url)
    assert resumed.status_code == 302
    running.refresh_from_db()
    assert running.state == RoundState.QUEUED and sent == [("training.run_round", [running.pk])]
    refused = client.post(url, **HTMX)
    assert refused.status_code == 409
    assert "Only a failed or cancelled round can be resumed" in refused.content.decode()
    full = client.post(url)
    assert full.status_code == 409 and "<html" in full.content.decode()


def test_an_unknown_round_is_404(admin_user: User) -> None:
    client = client_for(admin_user)
    assert client.get(reverse("training:round", args=[999])).status_code == 404
    assert client.post(reverse("training:cancel", args=[999])).status_code == 404


# --- versions, compare, leaderboard -------------------------------------------------------------


def test_the_versions_page_lists_lineage_round_labels_and_figures(
    project: Project, researcher: User
) -> None:
    page = client_for(researcher).get(reverse("training:versions", args=["support"]))
    html = page.content.decode()
    child_row = html.split('data-version="support-r1"')[1].split("</tr>")[0]
    assert "tiny-base" in child_row and "round " in child_row and "#config" in child_row
    assert "42" in child_row and "abababab" in child_row
    assert "held_out.pairwise_accuracy" in child_row and "0.71" in child_row
    assert "round.evaluate.kl" in child_row and "0.031" in child_row
    base_row = html.split('data-version="tiny-base"')[1].split("</tr>")[0]
    assert "serving" in base_row and "pretrain.val_loss" in base_row


def test_an_admin_promotes_a_version_with_htmx(project: Project, admin_user: User) -> None:
    child, _ = versions(project)
    url = reverse("training:promote", args=["support", child.pk])
    response = client_for(admin_user).post(url, **HTMX)
    assert response.status_code == 200 and response["HX-Trigger"] == "versionPromoted"
    html = response.content.decode()
    assert "<html" not in html
    assert "serving" in html.split('data-version="support-r1"')[1].split("</tr>")[0]
    project.refresh_from_db()
    assert project.serving_version == child


def test_promoting_a_version_of_another_project_answers_409(
    project: Project, admin_user: User
) -> None:
    stranger = factories.version("elsewhere")
    url = reverse("training:promote", args=["support", stranger.pk])
    response = client_for(admin_user).post(url, **HTMX)
    assert response.status_code == 409 and "not one of project" in response.content.decode()


def test_compare_shows_the_same_prompts_figures_and_the_head_to_head(
    project: Project, researcher: User
) -> None:
    child, base = versions(project)
    url = reverse("training:compare", args=["support"]) + f"?a={child.pk}&b={base.pk}"
    html = client_for(researcher).get(url).content.decode()
    assert "70%" in html  # 7 of 10 votes
    assert "95% Wilson interval 40\N{EN DASH}89%" in html
    assert html.count('class="sample"') == GALLERY_SIZE  # the newest of the 10 shared prompts
    assert "support-r1 answers Prompt 9" in html and "tiny-base answers Prompt 9" in html
    assert "answers Prompt 3 " not in html
    assert "held_out.pairwise_accuracy" in html and "round.evaluate.kl" in html


def test_compare_defaults_to_the_serving_version_and_its_parent(
    project: Project, researcher: User
) -> None:
    child, base = versions(project)
    project.serving_version = child
    project.save()
    html = (
        client_for(researcher).get(reverse("training:compare", args=["support"])).content.decode()
    )
    assert (
        f'<option value="{child.pk}" selected>' in html.split('name="a"')[1].split("</select>")[0]
    )
    assert f'<option value="{base.pk}" selected>' in html.split('name="b"')[1].split("</select>")[0]


def test_the_leaderboard_ranks_versions_by_human_votes(project: Project, researcher: User) -> None:
    factories.training_round(project, result_version=factories.version("support-r2"))
    html = (
        client_for(researcher)
        .get(reverse("training:leaderboard", args=["support"]))
        .content.decode()
    )
    order = [
        html.index(f'data-version="{name}"') for name in ("support-r1", "tiny-base", "support-r2")
    ]
    assert order == sorted(order)
    unvoted = html.split('data-version="support-r2"')[1].split("</tr>")[0]
    assert "no votes yet" in unvoted
    top = html.split('data-version="support-r1"')[1].split("</tr>")[0]
    assert "70%" in top and ">10<" in top
    assert "reward-model win rate vs parent" in top and "0.8 (0.6 to 0.9)" in top
    assert "round.evaluate" not in top  # the main figures only; all of them on the versions page
    assert "10 human votes" in html


def test_the_versions_fragment_is_just_the_table(project: Project, researcher: User) -> None:
    url = reverse("training:versions", args=["support"])
    html = client_for(researcher).get(url, **HTMX).content.decode()
    assert html.lstrip().startswith('<div id="versions">') and "<html" not in html


def test_pages_of_an_unknown_project_are_404(admin_user: User) -> None:
    client = client_for(admin_user)
    for name in ("versions", "compare", "leaderboard"):
        assert client.get(reverse(f"training:{name}", args=["nope"])).status_code == 404


def test_a_project_without_versions_says_so(
    make_project: MakeProject,  # noqa: F811
    researcher: User,
) -> None:
    bare = make_project(TaskType.PAIRWISE, slug="bare")
    client = client_for(researcher)
    compare = client.get(reverse("training:compare", args=["bare"])).content.decode()
    assert "needs two model versions" in compare
    board = client.get(reverse("training:leaderboard", args=["bare"])).content.decode()
    assert "No model version yet." in board and bare.name in board
    listing = client.get(reverse("training:versions", args=["bare"])).content.decode()
    assert "No model version yet" in listing
