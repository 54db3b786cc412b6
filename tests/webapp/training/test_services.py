"""Starting, cancelling and resuming rounds and promoting versions: who may, what is written,
what is sent, and the clear refusals that write nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied

from tests.webapp.annotation.conftest import MakeProject, make_project  # noqa: F401 (fixture)
from tests.webapp.training import factories
from webapp import background
from webapp.accounts.models import User
from webapp.annotation.models import ModelVersion, Project
from webapp.annotation.questions import TaskType
from webapp.training import services
from webapp.training.models import RoundLog, RoundState, TrainingRound
from webapp.training.presets import PRESETS

pytestmark = pytest.mark.django_db
Sent = list[tuple[str, list[int]]]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    """Tasks sent by name, recorded instead of reaching a broker."""
    calls: Sent = []
    monkeypatch.setattr(
        background.app, "send_task", lambda name, args, **options: calls.append((name, args))
    )
    return calls


@pytest.fixture
def base() -> ModelVersion:
    return factories.version("tiny-base")


@pytest.fixture
def project(make_project: MakeProject, base: ModelVersion) -> Project:  # noqa: F811
    project = make_project(TaskType.PAIRWISE, slug="support")
    project.serving_version = base
    project.save()
    return project


@pytest.fixture
def on_commit(django_capture_on_commit_callbacks: Any) -> Callable[[], Any]:
    return lambda: django_capture_on_commit_callbacks(execute=True)


def test_an_admin_queues_a_round_sent_by_name_after_commit(
    project: Project, admin_user: User, base: ModelVersion, sent: Sent, on_commit: Any
) -> None:
    with on_commit():
        created = services.create_round(
            admin_user,
            project,
            "full",
            "ci",
            algorithm="dpo",
            label_filter={"since": "2026-11-01T12:00", "min_agreement": 0.5},
            overrides={"dpo": {"max_steps": 3}, "generate": {"prompts": 2}},
        )
    assert created.state == RoundState.QUEUED and created.created_by == admin_user
    assert created.base_version == base  # the project's serving version
    assert created.config["stages"] == [
        "labels",
        "sft",
        "reward",
        "dpo",
        "evaluate",
        "register",
        "generate",
    ]
    assert created.config["algorithm"] == "dpo"
    assert created.config["dpo"] == {**PRESETS["ci"]["dpo"], "max_steps": 3}
    assert created.config["generate"]["prompts"] == 2
    assert created.label_filter["since"] == "2026-11-01T12:00:00+00:00"
    assert created.label_filter["min_agreement"] == 0.5
    assert created.label_filter["flagged"] == "exclude"  # the exports' default
    assert created.task_id and created.sent_at is not None
    assert sent == [("training.run_round", [created.pk])]
    assert "Queued by boss" in RoundLog.objects.get(round=created).message


def test_a_ppo_or_dpo_round_is_its_own_algorithm(
    project: Project, admin_user: User, sent: Sent
) -> None:
    created = services.create_round(admin_user, project, "dpo", "ci", algorithm="ppo")
    assert created.config["algorithm"] == "dpo"
    assert created.config["stages"] == ["labels", "dpo", "evaluate", "register"]


def test_a_chosen_base_version_must_belong_to_the_project(
    project: Project, admin_user: User, base: ModelVersion, sent: Sent
) -> None:
    child = factories.version("tiny-r1", parent=base)
    factories.training_round(project, RoundState.SUCCEEDED, result_version=child)
    created = services.create_round(admin_user, project, "ppo", "ci", base_version=child)
    assert created.base_version == child
    stranger = factories.version("elsewhere")
    with pytest.raises(services.RoundInputError, match="not one of project") as refused:
        services.create_round(admin_user, project, "ppo", "ci", base_version=stranger)
    assert refused.value.field == "base_version"


def test_without_a_serving_version_only_pretraining_starts(
    make_project: MakeProject,  # noqa: F811
    admin_user: User,
    sent: Sent,
) -> None:
    bare = make_project(TaskType.PAIRWISE)
    with pytest.raises(services.RoundInputError, match="serves no model version") as refused:
        services.create_round(admin_user, bare, "full", "ci")
    assert refused.value.field == "base_version"
    pretrain = services.create_round(admin_user, bare, "pretrain", "ci")
    assert pretrain.base_version is None and pretrain.config["stages"] == ["pretrain", "register"]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"preset": "huge"}, "preset", "Unknown preset 'huge'"),
        ({"overrides": {"ppo_typo": {}}}, "overrides", "Unknown config section 'ppo_typo'"),
        ({"overrides": {"ppo": 3}}, "overrides", "must be an object"),
        ({"kind": "magic"}, "kind", "Unknown round kind"),
        ({"algorithm": "reinforce"}, "algorithm", "algorithm must be one of ppo, dpo"),
        (
            {"label_filter": {"since": "2026-12-01", "until": "2026-11-01"}},
            "until",
            "'since' must be before 'until'",
        ),
        ({"label_filter": {"min_agreement": 2}}, "min_agreement", r"in \[0, 1\]"),
        ({"label_filter": {"gold": "only"}}, "gold", "Unknown label filter"),
    ],
)
def test_a_bad_request_is_refused_with_its_field_and_writes_nothing(
    project: Project,
    admin_user: User,
    sent: Sent,
    on_commit: Any,
    change: dict[str, Any],
    field: str,
    message: str,
) -> None:
    request: dict[str, Any] = {"kind": "full", "preset": "ci"} | change
    with on_commit(), pytest.raises(services.RoundInputError, match=message) as refused:
        services.create_round(admin_user, project, **request)
    assert refused.value.field == field
    assert not TrainingRound.objects.exists() and not RoundLog.objects.exists() and sent == []


@pytest.mark.parametrize("persona", ["researcher", "annotator", "outsider"])
def test_only_admins_start_cancel_resume_and_promote(
    persona: str, project: Project, base: ModelVersion, request: pytest.FixtureRequest, sent: Sent
) -> None:
    user = request.getfixturevalue(persona)
    queued = factories.training_round(project)
    for act in (
        lambda: services.create_round(user, project, "full", "ci"),
        lambda: services.cancel_round(user, queued),
        lambda: services.resume_round(user, queued),
        lambda: services.promote_version(user, project, base),
    ):
        with pytest.raises(PermissionDenied):
            act()
    assert TrainingRound.objects.get() == queued and sent == []


def test_cancelling_a_queued_round_is_at_once_and_a_running_one_is_asked(
    project: Project, admin_user: User
) -> None:
    queued = factories.training_round(project)
    assert services.cancel_round(admin_user, queued) == RoundState.CANCELLED
    running = factories.training_round(project, RoundState.RUNNING)
    assert services.cancel_round(admin_user, running) == RoundState.RUNNING
    running.refresh_from_db()
    assert running.cancel_requested and running.state == RoundState.RUNNING
    messages = list(RoundLog.objects.filter(round=queued).values_list("message", flat=True))
    assert messages == ["boss asked to cancel.", "Cancelled before it started."]


def test_a_finished_round_cannot_be_cancelled_and_the_refusal_leaves_no_log(
    project: Project, admin_user: User
) -> None:
    done = factories.training_round(project, RoundState.SUCCEEDED)
    with pytest.raises(services.RoundError, match="A succeeded round cannot be cancelled"):
        services.cancel_round(admin_user, done)
    assert not RoundLog.objects.filter(round=done).exists()


def test_resuming_a_failed_round_queues_and_sends_it_again(
    project: Project, admin_user: User, sent: Sent, on_commit: Any
) -> None:
    failed = factories.training_round(project, RoundState.FAILED, error="worker died")
    with on_commit():
        services.resume_round(admin_user, failed)
    failed.refresh_from_db()
    assert failed.state == RoundState.QUEUED and failed.error == ""
    assert sent == [("training.run_round", [failed.pk])]
    queued = factories.training_round(project)
    with pytest.raises(services.RoundError, match="Only a failed or cancelled round"):
        services.resume_round(admin_user, queued)


def test_promoting_a_version_makes_it_serve_the_project(
    project: Project, admin_user: User, base: ModelVersion
) -> None:
    child = factories.version("tiny-r1", parent=base)
    factories.training_round(project, RoundState.SUCCEEDED, result_version=child)
    assert services.promote_version(admin_user, project, child).serving_version == child
    project.refresh_from_db()
    assert project.serving_version == child


def test_a_version_of_another_project_or_without_checkpoint_is_not_promoted(
    project: Project, admin_user: User, base: ModelVersion
) -> None:
    with pytest.raises(services.RoundInputError, match="not one of project"):
        services.promote_version(admin_user, project, factories.version("elsewhere"))
    empty = factories.version("no-files", checkpoint_dir="")
    factories.training_round(project, RoundState.SUCCEEDED, result_version=empty)
    with pytest.raises(services.RoundInputError, match="no checkpoint"):
        services.promote_version(admin_user, project, empty)
    project.refresh_from_db()
    assert project.serving_version == base
