"""One stage of a training round, in a process of its own: `python -m workers.stage_runner SPEC`.

The Celery task (workers/training.py) writes SPEC (JSON: the stage, its settings, absolute paths
of its inputs and output) and supervises this process. It imports rlhf_core only, never Django:
it reads the label files of the round's export snapshot and checkpoints, and tells the task what
happens through the *channel*, a JSON-lines file the task tails:

    {"event": "total", "steps": 40}              the stage's planned steps
    {"event": "metric", "step": 3, "values": {}}  a logged step (loss, reward, KL, accuracy...)
    {"event": "log", "message": "..."}            a line for the round's log
    {"event": "error", "message": "..."}          why the stage failed (exit code 1)

A stage writes its output under `<output>.partial` and renames it to `<output>` when complete,
with `result.json` inside, so a complete output is recognisable and reused on resume. PPO and
pretraining keep their resumable state in the `.partial` directory across attempts.

SIGTERM asks the stage to stop at its next step (PPO saves its state); it then exits with
STOPPED. The process dies with its parent (PR_SET_PDEATHSIG), so a worker killed with SIGKILL
leaves no training behind. Under `accelerate launch` every process trains and only the main one
(RANK 0) writes the channel and the output.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from workers.stage_channel import (
    RESULT,
    STOPPED,
    Channel,
    Follow,
    StageError,
    Stopped,
    describe,
    die_with_parent,
    finite,
    is_main_process,
)


def settings_for(
    defaults: Any, section: Mapping[str, Any], channel: Channel, *, part: str | None = None
) -> Any:
    """`defaults` (a config dataclass: the recipe's, `rlhf_core.recipes`) with the round's
    `section` merged in, refusing unknown names with the known ones listed. The resolved
    settings (every field) go to the round's stored config under the stage's name, or
    `<stage>_<part>` for a second dataclass of one stage (the reward model's head)."""
    cls = type(defaults)
    known = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise StageError(
            f"unknown {cls.__name__} setting(s): {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    try:
        settings = dataclasses.replace(defaults, **section)
    except (TypeError, ValueError) as error:
        raise StageError(f"{cls.__name__}: {error}") from error
    resolved = json.loads(json.dumps(dataclasses.asdict(settings), default=str))
    channel.send("config", dataclass=cls.__name__, values=resolved, part=part)
    return settings


def recipe(spec: Mapping[str, Any]) -> Any:
    """The recipe for the size of the stage's base model (its "policy" input)."""
    from rlhf_core.recipes import recipe_for_checkpoint

    return recipe_for_checkpoint(Path(spec["inputs"]["policy"]))


def warn(channel: Channel, messages: Sequence[str]) -> None:
    """A trainer's warnings (rlhf_core.diagnostics) to the round: its page shows them, and a
    version from a round that warned is never promoted automatically."""
    for message in messages:
        channel.send("warning", message=message)


def read_labels(spec: Mapping[str, Any], split: str) -> list[Any]:
    """The records of the snapshot's label files of one split (train or test)."""
    from rlhf_core.records import read_records

    likert = spec["inputs"].get("likert", {})
    attributes = tuple(likert.get("attributes", ()))
    scale = tuple(likert["scale"]) if likert.get("scale") else None
    records: list[Any] = []
    for path in spec["inputs"].get("labels", {}).get(split, []):
        records += read_records(path, likert_attributes=attributes, likert_scale=scale)
    return records


def read_prompts(path: str) -> list[dict[str, Any]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# The stages. Each gets the spec, its work directory (`<output>.partial`) and the channel, writes
# its files into the work directory and returns the summary that goes into result.json.


def run_sft(spec: Mapping[str, Any], work: Path, channel: Channel) -> dict[str, Any]:
    from rlhf_core.checkpoint import load_checkpoint
    from rlhf_core.finetuning import save_policy
    from rlhf_core.records import Demonstration
    from rlhf_core.sft import demonstrations_from, train_sft

    config = settings_for(recipe(spec).sft, spec["config"], channel)
    # The snapshot's demonstrations only (rewrites, top-rated answers): its pairs teach the
    # reward model, not imitation.
    demonstrations = demonstrations_from(
        record for record in read_labels(spec, "train") if isinstance(record, Demonstration)
    )
    if not demonstrations:
        raise StageError("the label snapshot holds no demonstrations to fine-tune on")
    base = load_checkpoint(Path(spec["inputs"]["policy"]))
    channel.total(config.steps_for(len(demonstrations)))
    result = train_sft(base.model, base.tokenizer, demonstrations, config, callback=Follow(channel))
    if result.stopped_early:
        raise Stopped
    if is_main_process():
        save_policy(
            work / "model",
            base.model,
            base.tokenizer,
            trainer="sft",
            config=config,
            result=result,
            base_metadata=base.metadata,
        )
    return {"demonstrations": len(demonstrations), "steps": result.steps, **result.metrics}


def run_reward(spec: Mapping[str, Any], work: Path, channel: Channel) -> dict[str, Any]:
    from rlhf_core.checkpoint import CheckpointMetadata, load_checkpoint
    from rlhf_core.diagnostics import reward_model_warnings
    from rlhf_core.records import Demonstration
    from rlhf_core.reward import RewardModel
    from rlhf_core.reward_io import save_reward_model
    from rlhf_core.reward_training import heads_for, train_reward_model

    section = dict(spec["config"])
    defaults = recipe(spec)
    head = settings_for(defaults.reward_head, section.pop("head", {}), channel, part="head")
    config = settings_for(defaults.reward, section, channel)
    labels = [r for r in read_labels(spec, "train") if not isinstance(r, Demonstration)]
    if not labels:
        raise StageError("the label snapshot holds no pairwise, Likert or ranking labels")
    likert = spec["inputs"].get("likert", {})
    # A scalar head only when pairs, rankings or rewrites can train it: a Likert-only
    # project's reward is the expected score (heads_for).
    heads = heads_for(labels, attributes=likert.get("attributes") or None, base=head)
    base = load_checkpoint(Path(spec["inputs"]["policy"]))
    model = RewardModel(base.model.train(), heads)
    steps = config.epochs * math.ceil(
        len(labels) * (1 - config.held_out_fraction) / config.batch_size
    )
    channel.total(min(steps, config.max_steps or steps))
    result = train_reward_model(model, base.tokenizer, labels, config, callback=Follow(channel))
    if result.stopped_early and channel.stop_requested:
        raise Stopped
    held_out = {k: v for k, v in result.eval_metrics.items() if k not in ("step", "epoch")}
    found = reward_model_warnings(held_out, result.held_out_preferences)
    warn(channel, found)
    if is_main_process():
        extra = {"trainer": "reward", "reward_training": config.to_dict(), "warnings": found}
        metadata = CheckpointMetadata(step=result.steps, metrics=result.eval_metrics, extra=extra)
        save_reward_model(work / "model", model, base.tokenizer, metadata=metadata)
    return {
        "labels": len(labels),
        "steps": result.steps,
        "held_out": held_out,
        "held_out_preferences": result.held_out_preferences,
        "heads": sorted(model.trained_heads),
        "warnings": found,
    }


def run_ppo(spec: Mapping[str, Any], work: Path, channel: Channel) -> dict[str, Any]:
    return _run_policy("ppo", spec, work, channel)


def run_rejection_sampling(spec: Mapping[str, Any], work: Path, channel: Channel) -> dict[str, Any]:
    return _run_policy("rejection_sampling", spec, work, channel)


def _run_policy(
    algorithm: str, spec: Mapping[str, Any], work: Path, channel: Channel
) -> dict[str, Any]:
    """PPO or rejection sampling against the round's reward model (policy_training)."""
    from rlhf_core.checkpoint import load_checkpoint
    from rlhf_core.policy_training import save_trained_policy, train_policy
    from rlhf_core.reward_io import load_reward_model

    defaults = recipe(spec)
    config = settings_for(getattr(defaults, algorithm), spec["config"], channel)
    prompts = [row["prompt"] for row in read_prompts(spec["inputs"]["prompts"])]
    where = device()
    checkpoint = load_checkpoint(Path(spec["inputs"]["policy"]), device=where)
    reward_model, reward_tokenizer = load_reward_model(Path(spec["inputs"]["reward"]), where)
    state_file = work / "state.pt"
    if state_file.exists():
        name = {"ppo": "PPO", "rejection_sampling": "Rejection sampling"}[algorithm]
        channel.log(f"{name} continues from its saved state ({state_file.name}).")
    channel.total(config.steps if algorithm == "ppo" else config.iterations)
    result = train_policy(
        algorithm,
        checkpoint.model,
        checkpoint.tokenizer,
        prompts,
        reward_model,
        reward_tokenizer,
        config,
        callback=Follow(channel),
        state_file=state_file if algorithm == "ppo" else None,
    )
    if result.stopped_early:
        raise Stopped
    warn(channel, result.warnings)
    settings = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    save_trained_policy(work / "model", result, checkpoint.tokenizer, settings)
    state_file.unlink(missing_ok=True)  # the exported model replaces it; it holds the optimizer
    return {"steps": result.steps, "warnings": result.warnings, **result.metrics}


def run_dpo(spec: Mapping[str, Any], work: Path, channel: Channel) -> dict[str, Any]:
    from rlhf_core.checkpoint import load_checkpoint
    from rlhf_core.dpo import pairs_from, train_dpo, usable_pairs
    from rlhf_core.finetuning import save_policy

    config = settings_for(recipe(spec).dpo, spec["config"], channel)
    pairs = pairs_from(read_labels(spec, "train"))
    if not usable_pairs(pairs)[0]:
        raise StageError("the label snapshot holds no strict preference pairs for DPO")
    policy = load_checkpoint(Path(spec["inputs"]["policy"]))
    reference = load_checkpoint(Path(spec["inputs"]["reference"])).model
    channel.total(config.steps_for(len(usable_pairs(pairs)[0])))
    result = train_dpo(
        policy.model,
        policy.tokenizer,
        pairs,
        config,
        reference=reference,
        callback=Follow(channel),
    )
    if result.stopped_early:
        raise Stopped
    if is_main_process():
        save_policy(
            work / "model",
            policy.model,
            policy.tokenizer,
            trainer="dpo",
            config=config,
            result=result,
            base_metadata=policy.metadata,
        )
    return {"pairs": result.pairs_used, "steps": result.steps, **result.metrics}


def run_evaluate(spec: Mapping[str, Any], work: Path, channel: Channel) -> dict[str, Any]:
    """The new policy against its parent on held-out prompts (the snapshot's test split, which
    the round's policy training never sampled): its KL to the parent; the win rate by a judge
    the round did not optimise (a reward model fitted on the held-out labels alone); the win
    rate by the round's own reward model (the proxy the policy optimised: a proxy win rate far
    above the judge's is over-optimisation); and that reward model's held-out accuracy."""

    from rlhf_core.checkpoint import load_checkpoint
    from rlhf_core.evaluation import compare_policies, evaluate_policy
    from rlhf_core.records import Demonstration
    from rlhf_core.reward_io import load_reward_model
    from rlhf_core.reward_training import evaluate_reward_model
    from rlhf_core.rollout import Scorer, reward_model_scorer

    section, inputs, where = dict(spec["config"]), spec["inputs"], device()
    defaults = recipe(spec)
    count = int(section.get("prompts", 16))
    samples = int(section.get("samples_per_prompt", 2))
    held = [r for r in read_labels(spec, "test") if not isinstance(r, Demonstration)]
    prompts = [row["prompt"] for row in read_prompts(inputs["prompts"]) if row["prompt"]][:count]
    if not prompts:
        raise StageError("no held-out prompts to evaluate on (the snapshot's test split is empty)")
    channel.total(3)
    summary: dict[str, Any] = {"prompts": len(prompts), "held_out_labels": len(held)}
    policy = load_checkpoint(Path(inputs["policy"]), device=where)
    parent = load_checkpoint(Path(inputs["parent"]), device=where) if inputs.get("parent") else None
    scorers: dict[str, Scorer] = {}
    if inputs.get("reward"):
        reward_model, reward_tokenizer = load_reward_model(Path(inputs["reward"]), where)
        if held:
            summary["held_out"] = evaluate_reward_model(reward_model, reward_tokenizer, held)
        scorers["proxy"] = reward_model_scorer(reward_model, reward_tokenizer)
    channel.metric(1, {})
    judge = fit_judge(spec, held, defaults, channel, section.get("judge", {}))
    if judge is not None:
        scorers["judge"] = judge
    channel.metric(2, {})
    common: dict[str, Any] = {
        "max_new_tokens": int(section.get("max_new_tokens", defaults.sampling.max_new_tokens)),
        "temperature": float(section.get("temperature", defaults.sampling.temperature)),
        "seed": 0,
        "samples_per_prompt": samples,
    }
    for name, scorer in scorers.items() or {"none": _zero_scorer}.items():
        if parent is None:
            alone = evaluate_policy(policy.model, None, policy.tokenizer, prompts, scorer, **common)
            summary[f"{name}_reward"] = alone.mean_reward
            continue
        comparison = compare_policies(
            policy.model, parent.model, parent.model, policy.tokenizer, prompts, scorer, **common
        )
        summary["kl"] = comparison.a.kl
        if name != "none":
            summary |= {
                f"{name}_win_rate": comparison.win_rate,
                f"{name}_win_rate_low": comparison.win_rate_low,
                f"{name}_win_rate_high": comparison.win_rate_high,
            }
    flat = {k: v for k, v in summary.items() if isinstance(v, float)}
    flat |= {f"held_out_{k}": v for k, v in summary.get("held_out", {}).items()}
    channel.metric(3, flat)
    return summary


def _zero_scorer(prompts: Sequence[str], responses: Sequence[str]) -> Any:
    import torch

    return torch.zeros(len(responses))


MIN_JUDGE_PREFERENCES = 20


def fit_judge(
    spec: Mapping[str, Any],
    held: Sequence[Any],
    defaults: Any,
    channel: Channel,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """A reward model fitted on the held-out labels alone, from the parent's backbone: a judge
    that neither the round's reward model nor its policy ever saw. None, with a log line, when
    the held-out labels hold fewer than MIN_JUDGE_PREFERENCES strict preferences. `overrides`
    (the evaluate section's "judge") change the recipe's reward-training settings."""
    from rlhf_core.checkpoint import load_checkpoint
    from rlhf_core.reward import RewardModel
    from rlhf_core.reward_labels import to_items
    from rlhf_core.reward_training import heads_for, strict_preferences, train_reward_model
    from rlhf_core.rollout import reward_model_scorer

    inputs = spec["inputs"]
    labels = [r for r in held if not hasattr(r, "scores")]  # preferences, rankings, rewrites
    if not inputs.get("parent"):
        return None  # nothing to compare the new policy with
    if not labels:
        channel.log("no held-out preferences, so no independent judge.")
        return None
    heads = heads_for(labels, base=defaults.reward_head)
    preferences = strict_preferences(to_items(labels, heads, defaults.reward.losses))
    if preferences < MIN_JUDGE_PREFERENCES:
        channel.log(
            f"{preferences} held-out preference(s), fewer than "
            f"{MIN_JUDGE_PREFERENCES}: no independent judge this round."
        )
        return None
    base = load_checkpoint(Path(inputs["parent"]), device=device())
    judge = RewardModel(base.model.train(), heads)
    # Every held-out label trains the judge: none is left to stop early on.
    config = dataclasses.replace(
        defaults.reward, held_out_fraction=0.0, patience=None, **(overrides or {})
    )
    train_reward_model(judge, base.tokenizer, labels, config)
    channel.log(f"a judge fitted on {preferences} held-out preferences.")
    return reward_model_scorer(judge, base.tokenizer)


def run_generate(spec: Mapping[str, Any], work: Path, channel: Channel) -> dict[str, Any]:
    """`samples_per_prompt` samples of the policy per prompt, and as many of the parent with
    the same seed when blind pairs against it are wanted; into samples.jsonl. Sampled as the
    recipe says (`recipe.sampling`) unless the round's config overrides it."""
    from rlhf_core.checkpoint import load_checkpoint
    from rlhf_core.evaluation import Sampling, draw_samples

    section, inputs, where = dict(spec["config"]), spec["inputs"], device()
    sampling_defaults = recipe(spec).sampling
    prompts = read_prompts(inputs["prompts"])
    sampling = Sampling(
        per_prompt=int(section.get("samples_per_prompt", 2)),
        max_new_tokens=int(section.get("max_new_tokens", sampling_defaults.max_new_tokens)),
        temperature=float(section.get("temperature", sampling_defaults.temperature)),
        top_p=section.get("top_p", sampling_defaults.top_p),
        seed=int(section.get("seed", spec["round_id"])),
    )
    models = {"new": inputs["policy"]}
    if inputs.get("parent"):
        models["parent"] = inputs["parent"]
    channel.total(len(models))
    rows = []
    for step, (which, path) in enumerate(models.items(), start=1):
        checkpoint = load_checkpoint(Path(path), device=where)
        texts = [row["prompt"] for row in prompts]
        samples = draw_samples(checkpoint.model, checkpoint.tokenizer, texts, sampling)
        for index, text in enumerate(samples.texts):
            prompt = prompts[index // sampling.per_prompt]
            rows.append({"prompt_id": prompt["id"], "which": which, "text": text})
        channel.metric(step, {"samples": len(samples.texts)})
    with (work / "samples.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return {"samples": len(rows), "sampling": dataclasses.asdict(sampling)}


def run_pretrain(spec: Mapping[str, Any], work: Path, channel: Channel) -> dict[str, Any]:
    """The demo's model (`rlhf_core.demo.build_demo_model`: the mini PaLM on the plays'
    dialogue, or on the text files of `corpus`), sized by DemoSettings; resumes from its own
    checkpoints in the work directory."""
    from rlhf_core.demo import DemoSettings, build_demo_model
    from rlhf_core.pretrain import PretrainError

    section = dict(spec["config"])
    sources = [Path(p) for p in section.pop("corpus", [])] or None
    settings = settings_for(DemoSettings(), section, channel)
    channel.total(settings.steps)
    try:
        final = build_demo_model(
            work, settings, sources=sources, show_progress=False, callback=Follow(channel)
        )
    except PretrainError as error:
        if channel.stop_requested:
            raise Stopped from error
        raise
    shutil.copytree(final, work / "model")
    for scratch in ("data", "run", "corpus.jsonl"):
        target = work / scratch
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    return {"steps": settings.steps}


STAGES: dict[str, Callable[[Mapping[str, Any], Path, Channel], dict[str, Any]]] = {
    "sft": run_sft,
    "reward": run_reward,
    "ppo": run_ppo,
    "rejection_sampling": run_rejection_sampling,
    "dpo": run_dpo,
    "evaluate": run_evaluate,
    "generate": run_generate,
    "pretrain": run_pretrain,
}
RESUMABLE = frozenset({"ppo", "pretrain"})  # their work directory survives an interruption


def join_process_group() -> int:
    """How many processes train this stage together: the launch's count, checked.

    Under `accelerate launch --multi_gpu` on a machine without GPUs, accelerate forms a group
    over gloo only when told to use the CPU; without that, each of the N processes would train
    alone on its own share, and the round would report N processes for N separate trainings.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched == 1:
        return 1
    import torch
    from accelerate import PartialState

    on_cpu = not torch.cuda.is_available()
    if on_cpu:
        os.environ["ACCELERATE_USE_CPU"] = "true"  # for the trainers' Accelerator too
    joined = PartialState(cpu=on_cpu).num_processes
    if joined != launched:
        raise StageError(f"launched on {launched} processes, but they joined a group of {joined}")
    return int(joined)


def run(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    stage, output = spec["stage"], Path(spec["output"])
    channel = Channel(Path(spec["channel"]))
    signal.signal(signal.SIGTERM, lambda *_: setattr(channel, "stop_requested", True))
    work = output.with_name(output.name + ".partial")
    try:
        if is_main_process():
            if stage not in RESUMABLE and work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True, exist_ok=True)
        processes = join_process_group()
        channel.log(f"running on {processes} process{'es' if processes > 1 else ''}.")
        summary = STAGES[stage](spec, work, channel)
        if is_main_process():
            result = json.dumps(
                {"summary": finite(summary), "processes": processes},
                default=float,
                allow_nan=False,
            )
            (work / RESULT).write_text(result)
            os.replace(work, output)
    except Stopped:
        channel.log(f"{stage} stopped on request; its saved state is kept for a resume.")
        return STOPPED
    except Exception as error:
        traceback.print_exc()
        channel.send("error", message=describe(error))
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    die_with_parent()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) != 1:
        print("usage: python -m workers.stage_runner SPEC.json", file=sys.stderr)
        return 2
    return run(Path(arguments[0]))


if __name__ == "__main__":
    sys.exit(main())
