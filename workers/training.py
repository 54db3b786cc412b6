"""Training rounds on the `gpu` queue: the task claims a round, runs its stages and supervises them.

The stages (workers/round_stages.py) that touch the database (labels, register, the insert of
generated samples) run in this process; every stage that trains or samples runs in a child
process (`workers.stage_runner`,
which imports rlhf_core and never Django), under `accelerate launch` when the round asks for
several processes. While a child runs, this task tails its event file into the round's metrics
and log, renews the heartbeat, and on a cancel asks the child to stop (SIGTERM: PPO saves its
state) or, when the round is no longer this worker's, kills it and writes nothing more.

A stage whose output is complete (`stages/<stage>/result.json`) is never run twice, and the
stages already in `stages_done` are skipped, so resuming a failed round continues where it
stopped. Any error fails the round with a message that names the stage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery import Task
from django.conf import settings

from webapp import background
from webapp.annotation.models import ModelVersion
from webapp.celery_app import app
from webapp.training import presets, registry, rounds
from webapp.training.models import RoundState, TrainingRound
from workers.round_stages import STAGES, RoundCancelled, RoundLost, StageFailed
from workers.stage_channel import RESULT, STOPPED, die_with_parent

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 120  # after SIGTERM, then SIGKILL
SINGLE_PROCESS_STAGES = frozenset({presets.PPO, presets.REJECTION_SAMPLING, presets.PRETRAIN})
LOG_TAIL_LINES = 8


@app.task(name=background.RUN_TRAINING_ROUND, bind=True, max_retries=None)
def run_round(self: Task[Any, Any], round_id: int) -> str:
    """Claim and run the round; returns what became of it. A redelivered or duplicate message
    finds the round taken or finished and does nothing."""
    worker = worker_name(self)
    if not rounds.claim(round_id, worker):
        if _busy(round_id, worker):
            # This worker runs another round (the database allows one): try again later.
            raise self.retry(countdown=3 * settings.TRAINING_HEARTBEAT_EVERY_SECONDS)
        logger.info("round %s: not claimed (taken, finished or cancelled); nothing to do", round_id)
        return "skipped"
    return RoundRun(round_id, worker).run()


def worker_name(task: Task[Any, Any]) -> str:
    hostname = task.request.hostname
    return str(hostname) if hostname else f"{socket.gethostname()}:{os.getpid()}"


def _busy(round_id: int, worker: str) -> bool:
    waiting = TrainingRound.objects.filter(
        pk=round_id, state=RoundState.QUEUED, cancel_requested=False
    ).exists()
    return (
        waiting and TrainingRound.objects.filter(worker=worker, state=RoundState.RUNNING).exists()
    )


class RoundRun:
    """One attempt at a claimed round."""

    def __init__(self, round_id: int, worker: str) -> None:
        self.round_id, self.worker = round_id, worker
        self.round = TrainingRound.objects.select_related(
            "project", "base_version", "label_snapshot"
        ).get(pk=round_id)
        if not self.round.run_dir:
            self.round.run_dir = registry.round_dir(round_id)
            TrainingRound.objects.filter(pk=round_id).update(run_dir=self.round.run_dir)
        self.dir = registry.store_path(self.round.run_dir)
        self.config: dict[str, Any] = self.round.config
        self.stage = ""
        self.last_beat = 0.0
        self.summary: dict[str, Any] = dict(self.round.summary)

    def run(self) -> str:
        try:
            self._check_launch()
            for stage in self.config.get("stages") or presets.plan(self.round.kind):
                self.stage = stage
                if stage in self.round.stages_done:
                    continue
                self.beat(force=True, stage=stage, stage_step=0, stage_steps=0)
                self.summary[stage] = STAGES[stage](self)
                self.beat(force=True, summary=self.summary, message=f"{stage} done.")
                if not rounds.finish_stage(self.round_id, self.worker, stage):
                    raise RoundLost
                self.round.stages_done = [*self.round.stages_done, stage]
            rounds.succeed(self.round_id, self.worker, self.summary)
            return RoundState.SUCCEEDED
        except RoundLost:
            logger.warning("round %s is no longer %s's; stopped", self.round_id, self.worker)
            return "lost"
        except RoundCancelled:
            rounds.mark_cancelled(self.round_id, self.worker)
            return RoundState.CANCELLED
        except Exception as error:
            logger.exception("round %s failed in %s", self.round_id, self.stage)
            rounds.fail(self.round_id, self.worker, f"{self.stage or 'start'}: {_message(error)}")
            return RoundState.FAILED

    # Heartbeat and progress

    def beat(self, *, force: bool = False, **progress: Any) -> None:
        """Renew the heartbeat (at most every TRAINING_HEARTBEAT_EVERY_SECONDS unless forced);
        raise RoundCancelled or RoundLost as its answer says."""
        now = time.monotonic()
        if not force and now - self.last_beat < settings.TRAINING_HEARTBEAT_EVERY_SECONDS:
            return
        self.last_beat = now
        if "message" in progress:
            progress["message"] = str(progress["message"])[:500]
        answer = rounds.heartbeat(self.round_id, self.worker, **progress)
        if answer == "lost":
            raise RoundLost
        if answer == "cancel":
            raise RoundCancelled

    def _check_launch(self) -> None:
        processes = self.processes()
        if processes > 1:
            refused = sorted(SINGLE_PROCESS_STAGES & set(self.config.get("stages", [])))
            if refused:
                raise StageFailed(
                    f"launch.num_processes is {processes}, but {', '.join(refused)} runs on one "
                    "process only (rlhf_core's PPO and this pretraining are not distributed); "
                    "set it to 1 for this round."
                )

    def processes(self) -> int:
        value = self.config.get("launch", {}).get("num_processes", 1)
        if not isinstance(value, int) or value < 1:
            raise StageFailed(f"launch.num_processes must be a whole number >= 1, got {value!r}.")
        return value

    # Files

    def output(self, stage: str) -> Path:
        return registry.store_path(registry.stage_output(self.round, stage))

    def complete(self, stage: str) -> bool:
        return (self.output(stage) / RESULT).is_file()

    def result(self, stage: str) -> dict[str, Any]:
        summary: dict[str, Any] = json.loads((self.output(stage) / RESULT).read_text())["summary"]
        return summary

    def prompts_file(self, use: str, count: int, split: str | None = None) -> Path:
        """The prompts a stage samples, chosen once per round and use (a resume samples the
        same ones); with `split`, only that side of the label snapshot's train/test split."""
        path = self.dir / f"prompts-{use}.jsonl"
        if not path.exists():
            snapshot = self.round.label_snapshot if split is not None else None
            prompts = registry.project_prompts(
                self.round.project, count, seed=self.round_id, split=split, snapshot=snapshot
            )
            if not prompts:
                side = f" on the {split} side of the label snapshot's split" if split else ""
                raise StageFailed(
                    f"Project {self.round.project.slug} has no prompts{side} to sample."
                )
            rows = "".join(json.dumps({"id": p.pk, "prompt": p.text}) + "\n" for p in prompts)
            _write_atomically(path, rows)
        return path

    # Versions

    def base(self) -> ModelVersion:
        version = registry.base_version(self.round)
        if version is None:
            raise StageFailed(
                "No base version: choose one for the round, or promote a version to serving "
                f"for project {self.round.project.slug}."
            )
        return version

    def policy_path(self) -> Path:
        """The newest policy of this round: the last completed training stage's, else base."""
        for stage in (
            presets.PRETRAIN,
            presets.PPO,
            presets.REJECTION_SAMPLING,
            presets.DPO,
            presets.SFT,
        ):
            if stage in self.round.stages_done and self.complete(stage):
                return self.output(stage) / "model"
        return registry.checkpoint_of(self.base())

    def start_policy(self) -> Path:
        """What PPO/DPO start from: the SFT model of this round if it ran, else the base."""
        if presets.SFT in self.round.stages_done and self.complete(presets.SFT):
            return self.output(presets.SFT) / "model"
        return registry.checkpoint_of(self.base())

    def reward_model(self) -> Path:
        if presets.REWARD in self.config.get("stages", []):
            return self.output(presets.REWARD) / "model"
        found = registry.latest_reward_model(self.round.project, exclude=self.round_id)
        if found is None:
            raise StageFailed(
                "No reward model: this round fits none and no earlier round of project "
                f"{self.round.project.slug} succeeded with one; run a full or reward round first."
            )
        return registry.store_path(found)

    def labels(self) -> dict[str, Any]:
        snapshot = self.round.label_snapshot
        if snapshot is None:
            return {"labels": {}, "rows": {}, "likert": {}}
        return registry.label_inputs(snapshot)

    # Child processes

    def run_child(self, stage: str, inputs: dict[str, Any], section: str | None = None) -> Any:
        """Run `stage` in a child process (or reuse its complete output); its summary."""
        if self.complete(stage):
            rounds.log(self.round_id, f"{stage}: its complete output is reused.")
            return self.result(stage)
        for folder in ("specs", "logs", "stages"):
            (self.dir / folder).mkdir(parents=True, exist_ok=True)
        events = self.dir / "logs" / f"{stage}.events.jsonl"
        # Metrics an interrupted attempt logged after its last read (its state may hold those
        # steps already, so a resumed PPO does not log them again).
        left: dict[int, dict[str, Any]] = {}
        for event in EventReader(events).read():
            if event.get("event") == "metric":
                left.setdefault(int(event["step"]), {}).update(event["values"])
        for step, values in left.items():
            rounds.record_metrics(self.round_id, stage, step, values)
        events.write_text("")
        spec = {
            "stage": stage,
            "round_id": self.round_id,
            "output": str(self.output(stage)),
            "channel": str(events),
            "config": self.config.get(section or stage, {}),
            "inputs": inputs,
        }
        spec_path = self.dir / "specs" / f"{stage}.json"
        _write_atomically(spec_path, json.dumps(spec, indent=2))
        command = self._command(stage, spec_path)
        with (self.dir / "logs" / f"{stage}.log").open("ab") as log:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signals reach accelerate's ranks
                preexec_fn=die_with_parent,
            )
        rounds.log(self.round_id, f"{stage}: started in process {process.pid}.")
        try:
            code, error = self._supervise(stage, process, events)
        finally:
            _kill_group(process, signal.SIGKILL)
        if code == STOPPED:
            raise RoundCancelled
        if code != 0:
            raise StageFailed(error or self._exit_reason(stage, code))
        return self.result(stage)

    def _command(self, stage: str, spec: Path) -> list[str]:
        processes = self.processes() if stage not in SINGLE_PROCESS_STAGES else 1
        if stage in (presets.EVALUATE, presets.GENERATE) or processes == 1:
            return [sys.executable, "-m", "workers.stage_runner", str(spec)]
        # torchrun-style ranks; on a machine without GPUs they train on the CPU (gloo).
        return [
            *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"),
            *("--num_processes", str(processes), "--num_machines", "1"),
            *("--mixed_precision", "no", "--dynamo_backend", "no"),
            *("--module", "workers.stage_runner", str(spec)),
        ]

    def _supervise(
        self, stage: str, process: subprocess.Popen[bytes], events: Path
    ) -> tuple[int, str]:
        reader = EventReader(events)
        error, step, steps, stop_sent = "", 0, 0, 0.0
        logged: dict[int, dict[str, Any]] = {}  # an evaluation joins its step's training row
        while True:
            try:
                code: int | None = process.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                code = None
            for event in reader.read():
                kind = event.get("event")
                if kind == "metric":
                    step = int(event["step"])
                    values = logged.setdefault(step, {})
                    values.update(event["values"])
                    rounds.record_metrics(self.round_id, stage, step, values)
                elif kind == "total":
                    steps = int(event["steps"])
                elif kind == "log":
                    rounds.log(self.round_id, f"{stage}: {event['message']}")
                elif kind == "warning":
                    rounds.log(self.round_id, f"{stage}: {event['message']}", level="warning")
                elif kind == "config":
                    resolved = {"dataclass": event["dataclass"], **event["values"]}
                    key = f"{stage}_{event['part']}" if event.get("part") else stage
                    rounds.record_resolved_config(self.round_id, self.worker, key, resolved)
                elif kind == "error":
                    error = str(event["message"])
            if code is not None:
                if stop_sent and code == -signal.SIGTERM:
                    # Stopped before it could catch the signal (still starting): nothing new to
                    # save, so a resume continues from the state saved before.
                    return STOPPED, error
                return code, error
            message = f"{stage}: step {step} of {steps}" if steps else f"{stage}…"
            try:
                self.beat(
                    stage_step=min(step, steps) if steps else step,
                    stage_steps=steps,
                    message=message,
                )
            except RoundCancelled:
                if not stop_sent:
                    rounds.log(self.round_id, f"{stage}: asked to stop at its next step.")
                    _kill_group(process, signal.SIGTERM)
                    stop_sent = time.monotonic()
                elif time.monotonic() - stop_sent > STOP_GRACE_SECONDS:
                    _kill_group(process, signal.SIGKILL)

    def _exit_reason(self, stage: str, code: int) -> str:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        log = self.dir / "logs" / f"{stage}.log"
        lines = (
            log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if log.exists() else []
        )
        tail = " | ".join(line.strip() for line in lines if line.strip())
        return f"the stage process {how}" + (f"; its log ends: {tail}" if tail else "")


class EventReader:
    """The complete lines a child appended to its event file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def read(self) -> Iterator[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            if line.strip():
                yield json.loads(line)


def _message(error: BaseException) -> str:
    if isinstance(error, StageFailed | registry.RegistryError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _kill_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the child's whole process group (accelerate's ranks too); SIGKILL waits."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    if sig == signal.SIGKILL:
        process.wait()


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
