"""The reconciler task: in process, and sent by name to a real worker on Redis, as beat sends it."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from tests.workers.conftest import run_manage
from webapp import background
from webapp.annotation.models import Project
from webapp.training.models import RoundKind, RoundState, TrainingRound
from workers.app import app
from workers.maintenance import reconcile_rounds

StartWorker = Callable[[str | None], dict[str, str]]


@pytest.fixture
def project(db: None) -> Project:
    return Project.objects.create(name="P", slug="p", task_type="pairwise")


def a_round(project: Project, **fields: Any) -> TrainingRound:
    return TrainingRound.objects.create(
        project=project, kind=RoundKind.FULL, preset="ci", config={"stages": []}, **fields
    )


def long_ago() -> Any:
    return timezone.now() - timedelta(hours=1)


def test_it_is_registered_and_beat_sends_it_every_minute_to_the_default_queue() -> None:
    assert background.RECONCILE_TRAINING_ROUNDS in app.tasks
    [entry] = [
        e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == reconcile_rounds.name
    ]
    assert entry["schedule"] == 60.0
    route = app.amqp.router.route({}, reconcile_rounds.name)
    assert route["queue"].name == "default"


def test_it_fails_a_round_whose_heartbeat_stopped_and_resends_a_lost_one(
    project: Project, django_capture_on_commit_callbacks: Any
) -> None:
    dead = a_round(project, state=RoundState.RUNNING, worker="gpu@dead", heartbeat_at=long_ago())
    alive = a_round(
        project, state=RoundState.RUNNING, worker="gpu@alive", heartbeat_at=timezone.now()
    )
    lost = a_round(project, task_id="old", sent_at=long_ago())
    with django_capture_on_commit_callbacks() as sent:
        done = reconcile_rounds.apply().get()
    assert done == {"failed": [dead.pk], "resent": [lost.pk]}
    dead.refresh_from_db()
    assert dead.state == RoundState.FAILED and "gpu@dead stopped sending heartbeats" in dead.error
    alive.refresh_from_db()
    assert alive.state == RoundState.RUNNING
    lost.refresh_from_db()
    assert lost.task_id != "old" and len(sent) == 1


def test_with_nothing_to_do_it_changes_nothing(project: Project) -> None:
    running = a_round(
        project, state=RoundState.RUNNING, worker="gpu@a", heartbeat_at=timezone.now()
    )
    assert reconcile_rounds.apply().get() == {"failed": [], "resent": []}
    assert reconcile_rounds.apply().get() == {"failed": [], "resent": []}
    running.refresh_from_db()
    assert running.state == RoundState.RUNNING


@pytest.mark.slow
@pytest.mark.usefixtures("postgres")
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_it_by_name_and_fails_the_dead_round(
    project: Project, redis_url: str, start_worker: StartWorker
) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    dead = a_round(project, state=RoundState.RUNNING, worker="gpu@dead", heartbeat_at=long_ago())
    env = start_worker(redis_url)
    send = f"from webapp.celery_app import app; app.send_task({reconcile_rounds.name!r})"
    result = run_manage(env, "shell", "-c", send)
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dead.refresh_from_db()
        if dead.state == RoundState.FAILED:
            break
        time.sleep(0.5)
    assert dead.state == RoundState.FAILED, "the worker did not run the reconciler within 60 s"
