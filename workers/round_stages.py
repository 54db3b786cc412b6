"""The stages of a training round, as the Celery task (workers/training.py) runs them.

Each takes the round's run (`RoundRun`: its row, files and heartbeat) and returns the stage's
summary. The stages that touch the database do their work here; the ones that train or sample
hand it to a stage process through `RoundRun.run_child`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings

from webapp.annotation.models import ModelVersion
from webapp.training import presets, registry, rounds

if TYPE_CHECKING:
    from workers.training import RoundRun

# Policy training samples the prompts of the label snapshot's training side, up to this many;
# evaluation the other side's, which the policy never saw.
POLICY_PROMPTS = 100_000


class RoundLost(Exception):
    """The round is no longer this worker's (failed by the reconciler, or finished)."""


class RoundCancelled(Exception):
    """An admin asked to stop; the stage stopped at a safe point."""


class StageFailed(Exception):
    """A stage that did not complete; the message says why."""


def stage_labels(run: RoundRun) -> dict[str, Any]:
    stopped: list[Exception] = []

    def progress(done: int, total: int, current: str) -> None:
        # Raised here, a cancel would fail the snapshot: remember it, raise it after.
        try:
            run.beat(stage_step=done, stage_steps=total, message=f"labels: {current}")
        except (RoundCancelled, RoundLost) as answer:
            stopped.append(answer)

    snapshot = registry.snapshot_labels(run.round, progress)
    if stopped:
        raise stopped[0]
    if not run.round.labels_count:
        raise StageFailed(
            "The label filter keeps no labels: nothing to train on "
            f"(snapshot {snapshot.pk} is empty)."
        )
    rounds.log(
        run.round_id,
        f"labels: snapshot {snapshot.pk}, {run.round.labels_count} rows, "
        f"sha256 {run.round.labels_sha256[:12]}.",
    )
    return {
        "snapshot": snapshot.pk,
        "rows": run.round.labels_count,
        "sha256": run.round.labels_sha256,
    }


def stage_sft(run: RoundRun) -> dict[str, Any]:
    labels = run.labels()
    if not labels["rows"].get("sft"):
        if run.round.kind == presets.SFT:
            raise StageFailed("The label snapshot holds no demonstrations to fine-tune on.")
        rounds.log(run.round_id, "sft: the snapshot holds no demonstrations; skipped.")
        return {"skipped": "no demonstrations"}
    summary: dict[str, Any] = run.run_child(
        presets.SFT, {**labels, "policy": str(registry.checkpoint_of(run.base()))}
    )
    return summary


def stage_reward(run: RoundRun) -> dict[str, Any]:
    inputs = {**run.labels(), "policy": str(registry.checkpoint_of(run.base()))}
    summary: dict[str, Any] = run.run_child(presets.REWARD, inputs)
    return summary


def stage_ppo(run: RoundRun) -> dict[str, Any]:
    return _policy_stage(run, presets.PPO)


def stage_rejection_sampling(run: RoundRun) -> dict[str, Any]:
    return _policy_stage(run, presets.REJECTION_SAMPLING)


def _policy_stage(run: RoundRun, stage: str) -> dict[str, Any]:
    inputs = {
        "policy": str(run.start_policy()),
        "reward": str(run.reward_model()),
        "prompts": str(run.prompts_file(stage, POLICY_PROMPTS, split="train")),
    }
    summary: dict[str, Any] = run.run_child(stage, inputs)
    return summary


def stage_dpo(run: RoundRun) -> dict[str, Any]:
    start = str(run.start_policy())
    inputs = {**run.labels(), "policy": start, "reference": start}
    summary: dict[str, Any] = run.run_child(presets.DPO, inputs)
    return summary


def stage_evaluate(run: RoundRun) -> dict[str, Any]:
    trained = run.policy_path()
    base = registry.checkpoint_of(run.base())
    parent = base if trained != base else _parent_checkpoint(run.base())
    reward: Path | None
    try:
        reward = run.reward_model()
    except StageFailed:
        reward = None
    count = int(run.config.get(presets.EVALUATE, {}).get("prompts", 16))
    inputs = {
        **run.labels(),
        "policy": str(trained),
        "parent": None if parent is None else str(parent),
        "reward": None if reward is None else str(reward),
        "prompts": str(run.prompts_file(presets.EVALUATE, count, split="test")),
    }
    summary: dict[str, Any] = run.run_child(presets.EVALUATE, inputs)
    return summary


def stage_pretrain(run: RoundRun) -> dict[str, Any]:
    summary: dict[str, Any] = run.run_child(presets.PRETRAIN, {})
    return summary


def stage_register(run: RoundRun) -> dict[str, Any]:
    checkpoint = run.policy_path()
    metrics = run.summary.get(presets.EVALUATE) or {}
    if not metrics and run.complete(presets.EVALUATE):
        metrics = run.result(presets.EVALUATE)
    relative = str(checkpoint.relative_to(settings.MODEL_STORE_DIR))
    version = registry.register_version(run.round_id, run.worker, relative, metrics)
    if version is None:
        raise RoundLost
    run.round.result_version = version
    rounds.log(run.round_id, f"register: model version {version.name} ({relative}).")
    return {"version": version.name, "version_id": version.pk}


def stage_generate(run: RoundRun) -> dict[str, Any]:
    """Fresh samples of the new version (a generate round: of the base) into the queue, with
    its parent's on the same prompts for blind pairs."""
    run.round.refresh_from_db(fields=["result_version", "samples_added"])
    if run.round.samples_added is not None:
        return {"samples_added": run.round.samples_added}
    # A round that trained samples its new version, a generate round its base; each against
    # its parent (the round's base, or the base's own), when the project judges them together.
    version = run.round.result_version or run.base()
    parent = version.parent if registry.wants_parent_samples(run.round.project) else None
    count = int(run.config.get("generate", {}).get("prompts", 16))
    inputs = {
        "policy": str(registry.checkpoint_of(version)),
        "parent": None if parent is None else str(registry.checkpoint_of(parent)),
        "prompts": str(run.prompts_file(presets.GENERATE, count)),
    }
    summary = run.run_child(presets.GENERATE, inputs)
    lines = (run.output(presets.GENERATE) / "samples.jsonl").read_text().splitlines()
    samples = [json.loads(line) for line in lines if line.strip()]
    added = registry.add_samples(
        run.round_id, run.worker, version, parent, samples, summary["sampling"]
    )
    if added is None:
        run.beat(force=True)  # lost: raises; else another attempt added them already
    blank = registry.blank_samples(samples)
    identical = registry.identical_samples(samples)
    rounds.log(
        run.round_id,
        f"generate: {len(samples)} samples of {version.name} queued"
        + (f"; {blank} of them blank (an empty answer, judged like any other)" if blank else "")
        + (
            f"; {identical} the same text as the parent's beside them (never a pair with it)"
            if identical
            else ""
        )
        + ".",
    )
    return {
        "samples_added": len(samples),
        "blank_samples": blank,
        "identical_samples": identical,
        "version": version.name,
    }


def _parent_checkpoint(version: ModelVersion) -> Path | None:
    parent = version.parent
    return registry.checkpoint_of(parent) if parent is not None else None


STAGES: dict[str, Callable[[RoundRun], dict[str, Any]]] = {
    presets.LABELS: stage_labels,
    presets.PRETRAIN: stage_pretrain,
    presets.SFT: stage_sft,
    presets.REWARD: stage_reward,
    presets.PPO: stage_ppo,
    presets.REJECTION_SAMPLING: stage_rejection_sampling,
    presets.DPO: stage_dpo,
    presets.EVALUATE: stage_evaluate,
    presets.REGISTER: stage_register,
    presets.GENERATE: stage_generate,
}
