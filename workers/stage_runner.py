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


def settings_for(cls: type[Any], section: Mapping[str, Any], channel: Channel, **extra: Any) -> Any:
    """`cls(**section, **extra)`, refusing unknown names with the known ones listed. The
    resolved settings (every field, defaults included) go to the round's stored config."""
    known = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise StageError(
            f"unknown {cls.__name__} setting(s): {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    try:
        settings = cls(**{**section, **extra})
    except (TypeError, ValueError) as error:
        raise StageError(f"{cls.__name__}: {error}") from error
    resolved = json.loads(json.dumps(dataclasses.asdict(settings), default=str))
    channel.send("config", dataclass=cls.__name__, values=resolved)
    return settings


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
    from rlhf_core.sft import SFTConfig, demonstrations_from, train_sft

    config = settings_for(SFTConfig, spec["config"], channel)
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
    from rlhf_core.records import Demonstration
    from rlhf_core.reward import RewardModel
    from rlhf_core.reward_io import save_reward_model
    from rlhf_core.reward_training import RewardTrainingConfig, heads_for, train_reward_model

    config = settings_for(RewardTrainingConfig, spec["config"], channel)
    labels = [r for r in read_labels(spec, "train") if not isinstance(r, Demonstration)]
    if not labels:
        raise StageError("the label snapshot holds no pairwise, Likert or ranking labels")
    likert = spec["inputs"].get("likert", {})
    # A scalar head only when pairs, rankings or rewrites can train it: a Likert-only
    # project's reward is the expected score (heads_for).
    heads = heads_for(labels, attributes=likert.get("attributes") or None)
    base = load_checkpoint(Path(spec["inputs"]["policy"]))
    model = RewardModel(base.model.train(), heads)
    steps = config.epochs * math.ceil(
        len(labels) * (1 - config.held_out_fraction) / config.batch_size
    )
    channel.total(min(steps, config.max_steps or steps))
    result = train_reward_model(model, base.tokenizer, labels, config, callback=Follow(channel))
    if result.stopped_early and channel.stop_requested:
        raise Stopped
    if is_main_process():
        extra = {"trainer": "reward", "reward_training": config.to_dict()}
        metadata = CheckpointMetadata(step=result.steps, metrics=result.eval_metrics, extra=extra)
        save_reward_model(work / "model", model, base.tokenizer, metadata=metadata)
    held_out = {k: v for k, v in result.eval_metrics.items() if k not in ("step", "epoch")}
    return {"labels": len(labels), "steps": result.steps, "held_out": held_out}


def run_ppo(spec: Mapping[str, Any], work: Path, channel: Channel) -> dict[str, Any]:
    from rlhf_core.checkpoint import load_checkpoint
    from rlhf_core.ppo import PPOConfig, PPOPolicy
    from rlhf_core.ppo_command import export_policy
    from rlhf_core.ppo_trainer import train_ppo
    from rlhf_core.reward import critic_for
    from rlhf_core.reward_io import load_reward_model
    from rlhf_core.rollout import reward_model_scorer

    config = settings_for(PPOConfig, spec["config"], channel)
    prompts = [row["prompt"] for row in read_prompts(spec["inputs"]["prompts"])]
    where = device()
    checkpoint = load_checkpoint(Path(spec["inputs"]["policy"]), device=where)
    reward_model, reward_tokenizer = load_reward_model(Path(spec["inputs"]["reward"]), where)
    critic = critic_for(reward_model, reward_tokenizer, checkpoint.model, checkpoint.tokenizer)
    policy = PPOPolicy(checkpoint.model.train(), critic)
    state_file = work / "state.pt"
    if state_file.exists():
        channel.log(f"PPO continues from its saved state ({state_file.name}).")
    channel.total(config.steps)
    result = train_ppo(
        policy,
        reward_model_scorer(reward_model, reward_tokenizer),
        checkpoint.tokenizer,
        prompts,
        config,
        callback=Follow(channel),
        state_file=state_file,
    )
    if result.stopped_early:
        raise Stopped
    export_policy(policy, checkpoint.tokenizer, work / "model", result, config)
    state_file.unlink()  # the exported model replaces it; it holds the optimizer too
    return {"steps": result.steps, **result.metrics}


def run_dpo(spec: Mapping[str, Any], work: Path, channel: Channel) -> dict[str, Any]:
    from rlhf_core.checkpoint import load_checkpoint
    from rlhf_core.dpo import DPOConfig, pairs_from, train_dpo, usable_pairs
    from rlhf_core.finetuning import save_policy

    config = settings_for(DPOConfig, spec["config"], channel)
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
    """Held-out reward accuracy, KL of the new policy to its parent and the reward model's win
    rate of new over parent on held-out prompts (the snapshot's test prompts, else the
    project's)."""
    import torch

    from rlhf_core.checkpoint import load_checkpoint
    from rlhf_core.evaluation import compare_policies, evaluate_policy
    from rlhf_core.records import Demonstration
    from rlhf_core.reward_io import load_reward_model
    from rlhf_core.reward_training import evaluate_reward_model
    from rlhf_core.rollout import reward_model_scorer

    section = dict(spec["config"])
    count, max_new_tokens = int(section.get("prompts", 16)), int(section.get("max_new_tokens", 32))
    inputs, where = spec["inputs"], device()
    summary: dict[str, Any] = {}
    held = [r for r in read_labels(spec, "test") if not isinstance(r, Demonstration)]
    prompts = list(dict.fromkeys(record.prompt for record in held))
    prompts += [row["prompt"] for row in read_prompts(inputs["prompts"]) if row["prompt"]]
    prompts = list(dict.fromkeys(prompts))[:count]
    channel.total(1)
    policy = load_checkpoint(Path(inputs["policy"]), device=where)
    parent = load_checkpoint(Path(inputs["parent"]), device=where) if inputs.get("parent") else None
    if inputs.get("reward"):
        reward_model, reward_tokenizer = load_reward_model(Path(inputs["reward"]), where)
        if held:
            accuracy = evaluate_reward_model(reward_model, reward_tokenizer, held)
            summary["held_out"] = accuracy
            summary["held_out_labels"] = len(held)
        scorer = reward_model_scorer(reward_model, reward_tokenizer)
    else:
        channel.log("No reward model: the win rate is not measured, only the KL.")

        def scorer(prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
            return torch.zeros(len(responses))

    common = {"max_new_tokens": max_new_tokens, "seed": 0, "samples_per_prompt": 1}
    if parent is not None:
        comparison = compare_policies(
            policy.model, parent.model, parent.model, policy.tokenizer, prompts, scorer, **common
        )
        summary |= {
            "kl": comparison.a.kl,
            "reward": comparison.a.mean_reward,
            "parent_reward": comparison.b.mean_reward,
            "win_rate": comparison.win_rate,
            "win_rate_low": comparison.win_rate_low,
            "win_rate_high": comparison.win_rate_high,
        }
    else:
        alone = evaluate_policy(policy.model, None, policy.tokenizer, prompts, scorer, **common)
        summary["reward"] = alone.mean_reward
    summary["prompts"] = len(prompts)
    flat = {k: v for k, v in summary.items() if isinstance(v, float)}
    flat |= {f"held_out_{k}": v for k, v in summary.get("held_out", {}).items()}
    channel.metric(1, flat)
    return summary


def run_generate(spec: Mapping[str, Any], work: Path, channel: Channel) -> dict[str, Any]:
    """`samples_per_prompt` samples of the policy per prompt, and as many of the parent with
    the same seed when blind pairs against it are wanted; into samples.jsonl."""
    from rlhf_core.checkpoint import load_checkpoint
    from rlhf_core.evaluation import Sampling, draw_samples

    section, inputs, where = dict(spec["config"]), spec["inputs"], device()
    prompts = read_prompts(inputs["prompts"])
    sampling = Sampling(
        per_prompt=int(section.get("samples_per_prompt", 2)),
        max_new_tokens=int(section.get("max_new_tokens", 48)),
        temperature=float(section.get("temperature", 1.0)),
        top_p=section.get("top_p"),
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
    """The demo's tiny PaLM on the bundled corpus (or the text files of `corpus`), sized by
    DemoSettings; resumes from its own checkpoints in the work directory."""
    from rlhf_core.corpus import demo_corpus_paths, iter_texts
    from rlhf_core.data import prepare_dataset
    from rlhf_core.demo import DemoSettings
    from rlhf_core.pretrain import PretrainConfig, pretrain
    from rlhf_core.tokenizer import Tokenizer, TokenizerError

    section = dict(spec["config"])
    corpus = [Path(p) for p in section.pop("corpus", [])] or demo_corpus_paths()
    settings = settings_for(DemoSettings, section, channel)
    try:
        tokenizer = Tokenizer.load(work / "tokenizer")
    except TokenizerError:
        tokenizer = Tokenizer.train_bpe(iter_texts(corpus), settings.vocab_size)
        tokenizer.save(work / "tokenizer")
    if not (work / "data.done").exists():
        prepare_dataset(corpus, work / "data", tokenizer, block_size=settings.block_size)
        (work / "data.done").touch()
    channel.total(settings.steps)
    config = PretrainConfig(
        data_dir=work / "data",
        out_dir=work / "run",
        model="tiny",
        batch_size=settings.batch_size,
        max_steps=settings.steps,
        lr=settings.lr,
        warmup_steps=min(settings.warmup_steps, settings.steps),
        eval_every=settings.eval_every,
        checkpoint_every=settings.eval_every,
        seed=settings.seed,
    )
    result = pretrain(config, callback=Follow(channel), show_progress=False)
    if result.final_checkpoint is None:
        raise Stopped
    shutil.copytree(result.final_checkpoint, work / "model")
    for scratch in ("data", "run"):
        shutil.rmtree(work / scratch)
    return {"steps": settings.steps}


STAGES: dict[str, Callable[[Mapping[str, Any], Path, Channel], dict[str, Any]]] = {
    "sft": run_sft,
    "reward": run_reward,
    "ppo": run_ppo,
    "dpo": run_dpo,
    "evaluate": run_evaluate,
    "generate": run_generate,
    "pretrain": run_pretrain,
}
RESUMABLE = frozenset({"ppo", "pretrain"})  # their work directory survives an interruption


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
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        channel.log(f"running on {processes} process{'es' if processes > 1 else ''}.")
        summary = STAGES[stage](spec, work, channel)
        if is_main_process():
            result = json.dumps({"summary": finite(summary)}, default=float, allow_nan=False)
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
