"""The round state machine: every change is one conditional update, so a second claim, a late
update from a worker that lost its round, or a resume of a running round changes nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from webapp import background
from webapp.annotation.models import Project
from webapp.training import rounds
from webapp.training.models import RoundKind, RoundLog, RoundMetric, RoundState, TrainingRound
from webapp.training.presets import build_config

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[int], str]]:
    """The tasks sent (name, args, task id), instead of a broker."""
    messages: list[tuple[str, list[int], str]] = []

    def send_task(name: str, args: list[int], task_id: str = "") -> None:
        messages.append((name, args, task_id))

    monkeypatch.setattr(background.app, "send_task", send_task)
    return messages


@pytest.fixture
def project() -> Project:
    return Project.objects.create(name="P", slug="p", task_type="pairwise")


def a_round(project: Project, **fields: Any) -> TrainingRound:
    config = build_config(RoundKind.GENERATE, "ci")
    return TrainingRound.objects.create(
        project=project, kind=RoundKind.GENERATE, preset="ci", config=config, **fields
    )


def state_of(training_round: TrainingRound) -> str:
    training_round.refresh_from_db()
    return training_round.state


def test_a_round_is_claimed_once(project: Project) -> None:
    training_round = a_round(project)
    assert rounds.claim(training_round.pk, "w1") is True
    assert rounds.claim(training_round.pk, "w2") is False  # a duplicate message
    assert rounds.claim(training_round.pk, "w1") is False  # redelivered to the same worker
    training_round.refresh_from_db()
    assert training_round.state == RoundState.RUNNING and training_round.worker == "w1"
    assert training_round.attempts == 1 and training_round.heartbeat_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_worker_runs_one_round_at_a_time(project: Project) -> None:
    first, second = a_round(project), a_round(project)
    assert rounds.claim(first.pk, "gpu-1") is True
    assert rounds.claim(second.pk, "gpu-1") is False  # the database refuses a second
    assert state_of(second) == RoundState.QUEUED
    assert rounds.claim(second.pk, "gpu-2") is True  # another worker may take it
    assert rounds.succeed(first.pk, "gpu-1", {}) is True
    third = a_round(project)
    assert rounds.claim(third.pk, "gpu-1") is True  # free again


def test_a_round_being_cancelled_or_finished_is_not_claimed(project: Project) -> None:
    cancelled = a_round(project)
    assert rounds.cancel(cancelled.pk) == RoundState.CANCELLED
    assert rounds.claim(cancelled.pk, "w") is False
    done = a_round(project, state=RoundState.SUCCEEDED)
    assert rounds.claim(done.pk, "w") is False


def test_heartbeat_says_ok_cancel_or_lost(project: Project) -> None:
    training_round = a_round(project)
    rounds.claim(training_round.pk, "w")
    assert rounds.heartbeat(training_round.pk, "w", stage="ppo", stage_step=3) == "ok"
    training_round.refresh_from_db()
    assert training_round.stage == "ppo" and training_round.stage_step == 3
    assert rounds.heartbeat(training_round.pk, "someone else") == "lost"
    assert rounds.cancel(training_round.pk) == RoundState.RUNNING
    assert rounds.heartbeat(training_round.pk, "w") == "cancel"
    assert rounds.mark_cancelled(training_round.pk, "w") is True
    assert rounds.heartbeat(training_round.pk, "w") == "lost"


def test_a_worker_that_lost_its_round_changes_nothing(project: Project) -> None:
    training_round = a_round(project)
    rounds.claim(training_round.pk, "old")
    stale = timezone.now() + timedelta(seconds=rounds.heartbeat_timeout().total_seconds() + 1)
    assert rounds.reconcile(now=stale)["failed"] == [training_round.pk]
    assert rounds.finish_stage(training_round.pk, "old", "labels") is False
    assert rounds.succeed(training_round.pk, "old", {"late": True}) is False
    assert rounds.fail(training_round.pk, "old", "late") is False
    training_round.refresh_from_db()
    assert training_round.state == RoundState.FAILED
    assert "stopped sending heartbeats" in training_round.error
    assert training_round.stages_done == [] and training_round.summary == {}


def test_finished_stages_are_recorded_once(project: Project) -> None:
    training_round = a_round(project)
    rounds.claim(training_round.pk, "w")
    assert rounds.finish_stage(training_round.pk, "w", "labels") is True
    assert rounds.finish_stage(training_round.pk, "w", "labels") is True
    assert rounds.finish_stage(training_round.pk, "w", "reward") is True
    training_round.refresh_from_db()
    assert training_round.stages_done == ["labels", "reward"]


def test_resume_requeues_a_failed_round_keeping_its_stages(
    project: Project,
    sent: list[tuple[str, list[int], str]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    training_round = a_round(project)
    rounds.claim(training_round.pk, "w")
    rounds.finish_stage(training_round.pk, "w", "labels")
    rounds.fail(training_round.pk, "w", "boom")
    with django_capture_on_commit_callbacks(execute=True):
        rounds.resume(training_round.pk)
    training_round.refresh_from_db()
    assert training_round.state == RoundState.QUEUED and training_round.error == ""
    assert training_round.stages_done == ["labels"] and training_round.worker == ""
    assert sent == [(background.RUN_TRAINING_ROUND, [training_round.pk], training_round.task_id)]
    assert rounds.claim(training_round.pk, "w2") is True
    assert TrainingRound.objects.get(pk=training_round.pk).attempts == 2


@pytest.mark.parametrize("state", [RoundState.QUEUED, RoundState.RUNNING, RoundState.SUCCEEDED])
def test_only_a_failed_or_cancelled_round_resumes(project: Project, state: str) -> None:
    training_round = a_round(project, state=state, worker="w" if state == "running" else "")
    with pytest.raises(rounds.RoundError, match="Only a failed or cancelled round"):
        rounds.resume(training_round.pk)
    assert state_of(training_round) == state


def test_a_finished_round_cannot_be_cancelled(project: Project) -> None:
    training_round = a_round(project, state=RoundState.FAILED)
    with pytest.raises(rounds.RoundError, match="cannot be cancelled"):
        rounds.cancel(training_round.pk)


def test_reconcile_resends_queued_rounds_nobody_took(
    project: Project,
    sent: list[tuple[str, list[int], str]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    fresh = a_round(project, sent_at=timezone.now())
    lost = a_round(project, sent_at=timezone.now() - rounds.resend_after() - timedelta(seconds=1))
    never = a_round(project)
    running = a_round(project, state=RoundState.RUNNING, worker="w", heartbeat_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        done = rounds.reconcile()
    assert {args[0] for _, args, _ in sent} == {lost.pk, never.pk}
    assert sorted(done["resent"]) == sorted([lost.pk, never.pk])
    assert done["failed"] == []
    assert state_of(fresh) == RoundState.QUEUED and state_of(running) == RoundState.RUNNING
    lost.refresh_from_db()
    assert lost.sent_at is not None and lost.sent_at > timezone.now() - timedelta(minutes=1)
    assert RoundLog.objects.filter(round=lost, message__contains="sent again").exists()


def test_reconcile_fails_only_rounds_whose_heartbeat_stopped(project: Project) -> None:
    now = timezone.now()
    alive = a_round(project, state=RoundState.RUNNING, worker="a", heartbeat_at=now)
    timeout = rounds.heartbeat_timeout()
    dead = a_round(project, state=RoundState.RUNNING, worker="b", heartbeat_at=now - 2 * timeout)
    assert rounds.reconcile(now=now)["failed"] == [dead.pk]
    assert state_of(alive) == RoundState.RUNNING
    assert state_of(dead) == RoundState.FAILED
    assert rounds.reconcile(now=now)["failed"] == []  # once


def test_a_metric_logged_again_replaces_the_step(project: Project) -> None:
    training_round = a_round(project)
    rounds.record_metrics(training_round.pk, "ppo", 3, {"kl": 1.0})
    rounds.record_metrics(training_round.pk, "ppo", 3, {"kl": 2.0})
    rows = RoundMetric.objects.filter(round=training_round)
    assert [(row.step, row.values) for row in rows] == [(3, {"kl": 2.0})]
