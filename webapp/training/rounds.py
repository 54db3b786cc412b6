"""The round state machine: every change of a round's state is one conditional UPDATE here.

    QUEUED --claim--> RUNNING --succeed--> SUCCEEDED
      |                  |----fail-------> FAILED ----resume--> QUEUED
      |                  '----cancelled--> CANCELLED --resume--> QUEUED
      '----cancel (before it starts)-----> CANCELLED

`claim` succeeds for one worker only, so a redelivered or re-sent task finds the round taken
and does nothing. The worker that holds a round proves it with its name on every later update
(`_mine`): once the reconciler has failed a round whose heartbeat stopped, the old worker's
late updates change nothing. Cancelling a RUNNING round only raises `cancel_requested`; the
worker sees it with its next heartbeat, stops at a safe point and marks the round CANCELLED.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from webapp import background
from webapp.training.models import RoundLog, RoundMetric, RoundState, TrainingRound


class RoundError(Exception):
    """A change the round's state does not allow; the message says why."""


def heartbeat_timeout() -> timedelta:
    return timedelta(seconds=settings.TRAINING_HEARTBEAT_TIMEOUT_SECONDS)


def resend_after() -> timedelta:
    return timedelta(seconds=settings.TRAINING_RESEND_AFTER_SECONDS)


def send(round_id: int) -> None:
    """Send the round's task once the transaction commits; the round remembers when and which."""
    task_id = str(uuid.uuid4())
    TrainingRound.objects.filter(pk=round_id).update(task_id=task_id, sent_at=timezone.now())
    background.enqueue_after_commit(background.RUN_TRAINING_ROUND, round_id, task_id=task_id)


def claim(round_id: int, worker: str) -> bool:
    """QUEUED -> RUNNING for `worker`, unless the round is taken, finished or being cancelled,
    or this worker already runs another round (the database refuses two)."""
    now = timezone.now()
    try:
        with transaction.atomic():
            claimed = TrainingRound.objects.filter(
                pk=round_id, state=RoundState.QUEUED, cancel_requested=False
            ).update(
                state=RoundState.RUNNING,
                worker=worker,
                heartbeat_at=now,
                started_at=now,
                finished_at=None,
                error="",
                attempts=F("attempts") + 1,
            )
    except IntegrityError:
        return False  # one_running_round_per_worker
    if claimed:
        log(round_id, f"Started by {worker} (attempt {_attempts(round_id)}).")
    return claimed == 1


def _attempts(round_id: int) -> int:
    return TrainingRound.objects.filter(pk=round_id).values_list("attempts", flat=True).get()


def _mine(round_id: int, worker: str) -> QuerySet[TrainingRound]:
    return TrainingRound.objects.filter(pk=round_id, state=RoundState.RUNNING, worker=worker)


def heartbeat(round_id: int, worker: str, **progress: Any) -> str:
    """Renew the heartbeat (with any progress fields). Returns "ok", "cancel" when an admin
    asked to stop, or "lost" when the round is no longer this worker's (failed by the
    reconciler, or finished): the caller must stop without writing anything more."""
    updated = _mine(round_id, worker).update(heartbeat_at=timezone.now(), **progress)
    if not updated:
        return "lost"
    wanted = TrainingRound.objects.filter(pk=round_id).values_list("cancel_requested", flat=True)
    return "cancel" if wanted.get() else "ok"


def finish_stage(round_id: int, worker: str, stage: str) -> bool:
    with transaction.atomic():
        row = _mine(round_id, worker).select_for_update().first()
        if row is None:
            return False
        if stage not in row.stages_done:
            row.stages_done = [*row.stages_done, stage]
        row.heartbeat_at = timezone.now()
        row.save(update_fields=["stages_done", "heartbeat_at"])
    return True


def record_resolved_config(
    round_id: int, worker: str, stage: str, values: Mapping[str, Any]
) -> bool:
    """Keep a stage's settings as the worker resolved them (every field of the rlhf_core
    dataclass, defaults included) under config["resolved"][stage]."""
    with transaction.atomic():
        row = _mine(round_id, worker).select_for_update(of=("self",)).first()
        if row is None:
            return False
        resolved = {**row.config.get("resolved", {}), stage: dict(values)}
        row.config = {**row.config, "resolved": resolved}
        row.save(update_fields=["config"])
    return True


def succeed(round_id: int, worker: str, summary: Mapping[str, Any]) -> bool:
    done = _mine(round_id, worker).update(
        state=RoundState.SUCCEEDED,
        summary=dict(summary),
        finished_at=timezone.now(),
        message="Finished.",
    )
    if done:
        log(round_id, "Succeeded.")
    return done == 1


def fail(round_id: int, worker: str, error: str) -> bool:
    done = _mine(round_id, worker).update(
        state=RoundState.FAILED, error=error, finished_at=timezone.now(), message="Failed."
    )
    if done:
        log(round_id, f"Failed: {error}", level="error")
    return done == 1


def mark_cancelled(round_id: int, worker: str) -> bool:
    done = _mine(round_id, worker).update(
        state=RoundState.CANCELLED, finished_at=timezone.now(), message="Cancelled."
    )
    if done:
        log(round_id, "Cancelled; resume continues from its last checkpoint.")
    return done == 1


def cancel(round_id: int) -> str:
    """A queued round is cancelled at once; a running one is asked to stop (its worker stops at
    the next step). Returns the round's state afterwards."""
    now = timezone.now()
    if TrainingRound.objects.filter(pk=round_id, state=RoundState.QUEUED).update(
        state=RoundState.CANCELLED, finished_at=now, message="Cancelled before it started."
    ):
        log(round_id, "Cancelled before it started.")
        return RoundState.CANCELLED
    if TrainingRound.objects.filter(
        pk=round_id, state=RoundState.RUNNING, cancel_requested=False
    ).update(cancel_requested=True, message="Cancelling…"):
        log(round_id, "Cancel requested; the worker stops at its next step.")
        return RoundState.RUNNING
    state = TrainingRound.objects.filter(pk=round_id).values_list("state", flat=True).first()
    if state is None:
        raise RoundError("No such round.")
    if state == RoundState.RUNNING:
        return state  # already asked
    raise RoundError(f"A {state} round cannot be cancelled.")


def resume(round_id: int) -> None:
    """FAILED or CANCELLED -> QUEUED, and send it again: its finished stages are kept and the
    stage it stopped in continues from its last checkpoint."""
    with transaction.atomic():
        resumed = TrainingRound.objects.filter(
            pk=round_id, state__in=(RoundState.FAILED, RoundState.CANCELLED)
        ).update(
            state=RoundState.QUEUED,
            cancel_requested=False,
            worker="",
            error="",
            finished_at=None,
            message="Queued again (resume).",
        )
        if not resumed:
            state = TrainingRound.objects.filter(pk=round_id).values_list("state", flat=True)
            found = state.first()
            if found is None:
                raise RoundError("No such round.")
            raise RoundError(
                f"Only a failed or cancelled round can be resumed; this one is {found}."
            )
        log(round_id, "Resumed.")
        send(round_id)


def reconcile(now: Any = None) -> dict[str, list[int]]:
    """Fail RUNNING rounds whose worker stopped its heartbeat, and re-send QUEUED rounds whose
    last message is older than TRAINING_RESEND_AFTER_SECONDS (lost with a broker that
    restarted empty; a duplicate message is harmless, since only one claim succeeds)."""
    now = now or timezone.now()
    failed: list[int] = []
    stale = TrainingRound.objects.filter(
        state=RoundState.RUNNING, heartbeat_at__lt=now - heartbeat_timeout()
    ).values_list("pk", "worker", "heartbeat_at")
    for pk, worker, beat in stale:
        seconds = int((now - beat).total_seconds())
        reason = (
            f"Worker {worker} stopped sending heartbeats {seconds} s ago (it died or lost the "
            "database); resume the round to continue from its last checkpoint."
        )
        if TrainingRound.objects.filter(
            pk=pk, state=RoundState.RUNNING, worker=worker, heartbeat_at=beat
        ).update(state=RoundState.FAILED, error=reason, finished_at=now, message="Failed."):
            log(pk, f"Failed: {reason}", level="error")
            failed.append(pk)
    resent: list[int] = []
    lost = TrainingRound.objects.filter(state=RoundState.QUEUED, cancel_requested=False).filter(
        sent_at__lt=now - resend_after()
    ) | TrainingRound.objects.filter(state=RoundState.QUEUED, sent_at__isnull=True)
    for pk in lost.values_list("pk", flat=True):
        with transaction.atomic():
            log(pk, "No worker took it yet; sent again (a lost message after a broker restart).")
            send(pk)
        resent.append(pk)
    return {"failed": failed, "resent": resent}


def record_metrics(round_id: int, stage: str, step: int, values: Mapping[str, Any]) -> None:
    RoundMetric.objects.update_or_create(
        round_id=round_id, stage=stage, step=step, defaults={"values": dict(values)}
    )


WARNING = "warning"  # the RoundLog level of a trainer's warning


def log(round_id: int, message: str, *, level: str = "info") -> None:
    RoundLog.objects.create(round_id=round_id, message=message, level=level)


def warnings_of(round_id: int) -> list[str]:
    """What the round's trainers said could not learn (rlhf_core.diagnostics), oldest first: the
    round page shows them, and a version from such a round is never promoted automatically."""
    rows = RoundLog.objects.filter(round_id=round_id, level=WARNING).order_by("at", "pk")
    return list(rows.values_list("message", flat=True))
