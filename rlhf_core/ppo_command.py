"""`python -m rlhf_core ppo`: PPO from a policy checkpoint against a saved reward model.

It only translates options into `rlhf_core.ppo_trainer.train_ppo` and writes the run directory:
  OUT/state.pt        everything needed to resume (run the same command again to continue)
  OUT/metrics.jsonl   one line of metrics per iteration
  OUT/final/          the trained policy as a PaLM checkpoint (LoRA merged), after the last step
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import torch

from rlhf_core.checkpoint import CheckpointMetadata, load_checkpoint, save_checkpoint
from rlhf_core.commands import FROM_RECIPE, checkpoint_recipe, given_options, print_warnings
from rlhf_core.lora import merge, unmerge
from rlhf_core.ppo import POLICY_SCOPE, PPOConfig, PPOError, PPOPolicy
from rlhf_core.ppo_trainer import PPOResult, train_ppo
from rlhf_core.pretrain import MixedPrecision
from rlhf_core.reward import critic_for
from rlhf_core.reward_io import load_reward_model
from rlhf_core.rollout import reward_model_scorer
from rlhf_core.tokenizer import Tokenizer

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

# Options that set a PPOConfig field of the same name (dashes for underscores), with their help.
_CONFIG_OPTIONS: dict[str, tuple[type[int] | type[float], str]] = {
    "steps": (int, "PPO iterations"),
    "rollout_batch_size": (int, "prompts sampled per iteration"),
    "minibatch_size": (int, "rollout rows per optimizer step"),
    "grad_accum_steps": (int, "micro-batches per minibatch"),
    "ppo_epochs": (int, "passes over each rollout"),
    "max_new_tokens": (int, "response tokens sampled at most"),
    "max_prompt_length": (int, "prompt tokens kept, the last ones"),
    "temperature": (float, "sampling temperature"),
    "lr": (float, "learning rate"),
    "init_kl_coef": (float, "initial coefficient of the KL penalty"),
    "kl_target": (float, "KL per response, in nats, that the adaptive coefficient aims at"),
    "no_eos_penalty": (
        float,
        "subtracted from an unended response's score; a blank one scores lowest; 0: none",
    ),
    "normalization_samples": (int, "initial-policy samples that fix the score scale; 0: none"),
    "vf_coef": (float, "weight of the value loss"),
    "entropy_coef": (float, "weight of the entropy bonus"),
    "target_kl": (float, "stop an update past this approx-KL"),
    "checkpoint_every": (int, "iterations between saved run states"),
    "seed": (int, "random seed"),
}


def add_ppo_command(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "ppo",
        help="fine-tune a policy with PPO against a reward model",
        description="PPO (RLHF) from a PaLM checkpoint against a reward model saved by the "
        "reward trainer. Writes OUT/state.pt, OUT/metrics.jsonl and OUT/final; run the same "
        "command again to resume.",
    )
    parser.add_argument("--policy", type=Path, required=True, metavar="CKPT")
    parser.add_argument("--reward", type=Path, required=True, metavar="RM_DIR")
    parser.add_argument(
        "--prompts", type=Path, required=True, metavar="FILE", help='JSONL rows {"prompt": ...}'
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="run directory")
    for name, (kind, text) in _CONFIG_OPTIONS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            metavar="N" if kind is int else "F",
            help=f"{text} {FROM_RECIPE}",
        )
    parser.add_argument(
        "--mixed-precision",
        choices=get_args(MixedPrecision),
        help="bf16 autocast with float32 weights; auto: on a CUDA GPU with bf16 " + FROM_RECIPE,
    )
    parser.add_argument("--lora-rank", type=int, help="train LoRA adapters of this rank only")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.set_defaults(run=_run_ppo)


def read_prompts(path: Path) -> list[str]:
    """The "prompt" of every non-blank line of a JSONL file."""
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompts.append(str(row["prompt"]))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise PPOError(f'{path}:{number}: not a JSON object with a "prompt"') from error
    if not prompts:
        raise PPOError(f"{path}: no prompts")
    return prompts


def _run_ppo(args: argparse.Namespace) -> None:
    # Checks the values before the (slow) loads.
    options = given_options(args, [*_CONFIG_OPTIONS, "mixed_precision"])
    config = dataclasses.replace(checkpoint_recipe(args.policy).ppo, **options)
    prompts = read_prompts(args.prompts)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = load_checkpoint(args.policy, device=device)
    reward_model, reward_tokenizer = load_reward_model(args.reward, device=device)
    # The critic starts as the reward model when it reads the policy's tokens (critic_for).
    critic = critic_for(reward_model, reward_tokenizer, checkpoint.model, checkpoint.tokenizer)
    policy = PPOPolicy(checkpoint.model.train(), critic, lora_rank=args.lora_rank)
    args.out.mkdir(parents=True, exist_ok=True)
    result = train_ppo(
        policy,
        # Scored with the reward model's own tokenizer, whatever the policy's.
        reward_model_scorer(reward_model, reward_tokenizer),
        checkpoint.tokenizer,
        prompts,
        config,
        metrics_file=args.out / "metrics.jsonl",
        state_file=args.out / "state.pt",
    )
    if not result.stopped_early:
        export_policy(policy, checkpoint.tokenizer, args.out / "final", result, config)
    print(_summary(result))
    print_warnings(result.warnings)


def _summary(result: PPOResult) -> str:
    """The run's length and its last iteration: a mean score alone cannot tell a policy that
    learned from one whose responses never end and all carry the no-EOS penalty."""
    if not result.history:
        return f"PPO: {result.steps} steps; none left to run"
    metrics = result.metrics
    return (
        f"PPO: {result.steps} steps; last iteration: mean score {metrics['score']:.4f}, "
        f"KL {metrics['kl']:.4f} nats, eos_rate {metrics['eos_rate']:.2f}"
    )


def export_policy(
    policy: PPOPolicy, tokenizer: Tokenizer, directory: Path, result: PPOResult, config: PPOConfig
) -> None:
    """Save the policy as a plain PaLM checkpoint: LoRA adapters folded into the weights."""
    model = policy.policy
    metadata = CheckpointMetadata(
        step=result.steps,
        metrics={key: result.metrics[key] for key in ("score", "kl") if key in result.metrics},
        extra={"trainer": "ppo", "ppo": dataclasses.asdict(config)},
    )
    if policy.lora_scope is None:
        save_checkpoint(directory, model, tokenizer, metadata=metadata)
        return
    merge(model, POLICY_SCOPE)
    try:
        weights = {k: v for k, v in model.state_dict().items() if ".adapters." not in k}
        save_checkpoint(directory, model, tokenizer, metadata=metadata, state_dict=weights)
    finally:
        unmerge(model, POLICY_SCOPE)
