"""Training rounds under faults, each for real: Celery worker processes on Redis, PostgreSQL,
stage processes training on the CPU. A worker SIGKILLed mid-PPO, a Redis that restarts empty,
one worker offered two rounds, a disk that fills up, a corrupt checkpoint, a cancel."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from tests.workers.training_fixtures import (  # noqa: F401 (fixtures)
    PrivateRedis,
    Workers,
    add_items,
    add_label,
    base_version,
    finished,
    make_project,
    make_round,
    model_store,
    pid_alive,
    private_redis,
    project,
    sender,
    tiny_checkpoint,
    wait_for,
    workers,
)
from webapp.annotation.models import Item, ModelVersion, Project
from webapp.exports.models import ExportSnapshot
from webapp.training import rounds
from webapp.training.models import RoundKind, RoundLog, RoundMetric, RoundState, TrainingRound

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("postgres"),
    pytest.mark.django_db(transaction=True),
]
Sender = Callable[[str], None]


@pytest.fixture
def broker(
    redis_url: str,
    sender: Sender,  # noqa: F811
) -> str:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    sender(redis_url)
    return redis_url


def stage_pid(training_round: TrainingRound, stage: str) -> int:
    logs = RoundLog.objects.filter(round=training_round, message__startswith=f"{stage}: started")
    found = re.search(r"process (\d+)", logs.latest("id").message)
    assert found is not None
    return int(found.group(1))


def read_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def pending_signals(pid: int) -> set[signal.Signals]:
    """Signals waiting for a (stopped) process, from the SigPnd and ShdPnd masks of /proc."""
    pending = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("SigPnd", "ShdPnd"):
            pending |= int(value, 16)
    return {sig for sig in signal.Signals if pending >> (sig - 1) & 1}


def logged(training_round: TrainingRound, text: str) -> bool:
    return RoundLog.objects.filter(round=training_round, message__contains=text).exists()


def test_a_round_survives_a_killed_worker_and_a_cancel_continuing_each_time_from_its_state(
    project: Project,  # noqa: F811
    broker: str,
    workers: Workers,  # noqa: F811
    model_store: Path,  # noqa: F811
    settings: Any,
) -> None:
    settings.TRAINING_HEARTBEAT_TIMEOUT_SECONDS = 5
    first = workers.start(broker)
    steps = 60  # enough that a cancel usually lands while PPO still runs (see below)
    training_round = make_round(project, RoundKind.FULL, ppo={"steps": steps})
    rounds.send(training_round.pk)
    run_dir = model_store / f"rounds/{training_round.pk}"
    state = run_dir / "stages/ppo.partial/state.pt"
    ppo = RoundMetric.objects.filter(round=training_round, stage="ppo")

    # 1. The worker is SIGKILLed in the middle of PPO: its stage process dies with it, and
    # the reconciler fails the round once the heartbeat is older than the timeout.
    wait_for(
        lambda: state.exists() and ppo.filter(step__gte=3).exists(),
        what="PPO to save its state",
        log=workers.log,
    )
    child = stage_pid(training_round, "ppo")
    workers.kill(first)
    wait_for(lambda: not pid_alive(child), timeout=30, what="the PPO process to die with it")
    wait_for(lambda: training_round.pk in rounds.reconcile()["failed"], what="the reconciler")
    training_round.refresh_from_db()
    assert training_round.state == RoundState.FAILED
    assert "stopped sending heartbeats" in training_round.error
    assert training_round.stages_done == ["labels", "sft", "reward"]
    reward_done = (run_dir / "stages/reward/result.json").stat().st_mtime_ns

    # 2. Resumed on a new worker, then cancelled by an admin while PPO runs again: PPO stops
    # after its current step and saves its state. The PPO process is frozen (SIGSTOP) the
    # moment it says it continued, and thawed once the cancel's SIGTERM is pending, so the
    # cancel always lands mid-PPO, however fast its remaining steps would run.
    resumed_at = timezone.now()
    rounds.resume(training_round.pk)
    workers.start(broker)
    events = run_dir / "logs/ppo.events.jsonl"
    wait_for(
        lambda: "PPO continues from its saved state" in read_text(events),
        what="PPO again",
        log=workers.log,
        every=0.005,
    )
    child = stage_pid(training_round, "ppo")
    os.killpg(child, signal.SIGSTOP)
    try:
        assert not (run_dir / "stages/ppo").exists()  # frozen before its last step
        assert rounds.cancel(training_round.pk) == RoundState.RUNNING
        wait_for(lambda: signal.SIGTERM in pending_signals(child), what="the cancel's SIGTERM")
    finally:
        os.killpg(child, signal.SIGCONT)
    wait_for(finished(training_round), what="the cancel", log=workers.log)
    assert training_round.state == RoundState.CANCELLED, training_round.error
    assert state.exists()  # kept for the resume
    assert ppo.filter(at__lt=resumed_at).count() >= 3  # the first attempt's steps were kept
    cancelled_at_step = ppo.count()
    assert cancelled_at_step < steps

    # 3. Resumed again: it finishes, finished stages never ran twice, and the loop is closed.
    rounds.resume(training_round.pk)
    wait_for(finished(training_round), what="the resumed round", log=workers.log)
    assert training_round.state == RoundState.SUCCEEDED, training_round.error
    assert training_round.attempts == 3
    assert (run_dir / "stages/reward/result.json").stat().st_mtime_ns == reward_done
    assert ExportSnapshot.objects.filter(project=project).count() == 1
    continued = RoundLog.objects.filter(round=training_round, message__contains="PPO continues")
    assert continued.count() == 2
    assert sorted(ppo.values_list("step", flat=True)) == list(range(1, steps + 1))
    assert {"score", "kl", "policy_loss"} <= set(ppo.get(step=1).values)
    assert not state.exists()
    version = ModelVersion.objects.get(produced_by=training_round)
    assert version.parent == project.serving_version and version.metrics["prompts"] > 0
    # Half the samples are the new version's, each paired with its parent's sample beside it,
    # but for one with the same text as that sample (`registry._item_plan`): it is paired with
    # another parent sample or another new one, or left out, so each takes at most one item.
    new = training_round.samples_added // 2
    identical = training_round.summary["generate"]["identical_samples"]
    items = Item.objects.filter(responses__model_version=version).distinct()
    assert new - identical <= items.count() <= new and items.count() > 0
    for item in items:
        texts = [response.text.strip() for response in item.responses.all()]
        assert len(set(texts)) == len(texts) == 2
    assert training_round.progress_percent == 100


def test_redis_restarting_empty_loses_no_queued_round(
    project: Project,  # noqa: F811
    private_redis: PrivateRedis,  # noqa: F811
    sender: Sender,  # noqa: F811
    workers: Workers,  # noqa: F811
    settings: Any,
) -> None:
    import redis

    sender(private_redis.url)
    training_round = make_round(project, RoundKind.GENERATE)
    rounds.send(training_round.pk)
    assert redis.Redis.from_url(private_redis.url).llen("gpu") == 1
    private_redis.kill()
    private_redis.start()  # empty: the message is gone, the round is still in PostgreSQL
    assert redis.Redis.from_url(private_redis.url).llen("gpu") == 0

    assert rounds.reconcile()["resent"] == []  # sent recently: a worker may still take it
    later = timezone.now() + timedelta(seconds=settings.TRAINING_RESEND_AFTER_SECONDS + 1)
    assert rounds.reconcile(now=later)["resent"] == [training_round.pk]
    workers.start(private_redis.url)
    wait_for(finished(training_round), what="the re-sent round", log=workers.log)
    assert training_round.state == RoundState.SUCCEEDED, training_round.error
    assert training_round.samples_added


def test_one_worker_never_runs_two_rounds_at_once(
    project: Project,  # noqa: F811
    broker: str,
    workers: Workers,  # noqa: F811
) -> None:
    # Two pool processes under one worker name: the database lets one round run at a time.
    workers.start(broker, concurrency=2)
    both = [make_round(project, RoundKind.GENERATE) for _ in range(2)]
    for training_round in both:
        rounds.send(training_round.pk)
    ids = [training_round.pk for training_round in both]
    most_running = 0

    def all_done() -> bool:
        nonlocal most_running
        states = dict(TrainingRound.objects.filter(pk__in=ids).values_list("pk", "state"))
        most_running = max(most_running, list(states.values()).count(RoundState.RUNNING))
        return all(state == RoundState.SUCCEEDED for state in states.values())

    wait_for(all_done, what="both rounds", log=workers.log)
    assert most_running == 1
    workers_used = set(TrainingRound.objects.filter(pk__in=ids).values_list("worker", flat=True))
    assert len(workers_used) == 1


def test_a_full_disk_fails_the_round_with_a_clear_message(
    project: Project,  # noqa: F811
    broker: str,
    workers: Workers,  # noqa: F811
) -> None:
    # Every file the worker and its stages write may grow to 200 kB: less than the model.
    workers.start(broker, file_size_limit=200_000)
    training_round = make_round(project, RoundKind.REWARD)
    rounds.send(training_round.pk)
    wait_for(finished(training_round), what="the round", log=workers.log)
    assert training_round.state == RoundState.FAILED
    assert training_round.error.startswith("reward: out of disk space")
    assert "File too large" in training_round.error


def test_a_corrupt_checkpoint_fails_the_round_with_a_clear_message(
    project: Project,  # noqa: F811
    broker: str,
    workers: Workers,  # noqa: F811
    model_store: Path,  # noqa: F811
    base_version: ModelVersion,  # noqa: F811
) -> None:
    weights = model_store / base_version.checkpoint_dir / "model.safetensors"
    assert weights.is_file()
    weights.write_bytes(b"garbage" * 100)
    workers.start(broker)
    training_round = make_round(project, RoundKind.GENERATE)
    rounds.send(training_round.pk)
    wait_for(finished(training_round), what="the round", log=workers.log)
    assert training_round.state == RoundState.FAILED
    assert training_round.error.startswith("generate: CheckpointError")
    assert "model.safetensors: SHA-256 differs" in training_round.error
