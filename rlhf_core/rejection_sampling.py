"""Rejection-sampling fine-tuning: best-of-n against a reward model, then SFT on the winners.

Each iteration samples `samples_per_prompt` responses of the current policy for every prompt,
scores them, keeps each prompt's best one (Touvron et al. 2023, Llama 2's rejection sampling;
Dong et al. 2023, RAFT; Gulcehre et al. 2023, ReST) and fine-tunes the policy on those winners
with the SFT loss. It needs no critic, no reference model in memory and no on-policy update
loop, and its KL to the start is bounded by the best-of-n distribution's, log n - (n - 1) / n
nats per response for one iteration: the robust first step many RLHF pipelines take before
(or instead of) PPO.

A prompt whose candidates all score alike teaches nothing, so a winner is kept only when it
beats the mean of its prompt's candidates by `min_margin` (in the scorer's units).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rlhf_core.checkpoint import load_checkpoint
from rlhf_core.commands import FROM_RECIPE, checkpoint_recipe, given_options, print_warnings
from rlhf_core.diagnostics import policy_warnings, warn
from rlhf_core.evaluation import Sampling, draw_samples
from rlhf_core.finetuning import (
    FineTuneConfig,
    FineTuneError,
    add_finetune_options,
    finetune_options,
)
from rlhf_core.lora import merge_and_remove
from rlhf_core.palm import PaLM
from rlhf_core.ppo_command import read_prompts
from rlhf_core.records import Demonstration
from rlhf_core.reward_io import load_reward_model
from rlhf_core.rollout import Scorer, ends_with_eos
from rlhf_core.sft import LORA_SCOPE as SFT_LORA_SCOPE
from rlhf_core.sft import SFTConfig, train_sft
from rlhf_core.tokenizer import Tokenizer
from rlhf_core.training import NoCallback, TrainingCallback

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

# The command's options that set a RejectionSamplingConfig field beside the fine-tuning ones.
_OPTIONS: dict[str, tuple[type[int] | type[float], str]] = {
    "iterations": (int, "rounds of sample, select and fine-tune"),
    "samples_per_prompt": (int, "n of best-of-n"),
    "temperature": (float, "sampling temperature"),
    "top_p": (float, "nucleus of the sampling"),
    "max_new_tokens": (int, "response tokens sampled at most"),
    "min_margin": (float, "how much a winner must beat its prompt's mean score by"),
}


@dataclass(frozen=True)
class RejectionSamplingConfig(FineTuneConfig):
    """A rejection-sampling run; `FineTuneConfig` holds the SFT settings of each iteration.

    iterations: rounds of sample -> select -> fine-tune, each from the policy the last left.
    samples_per_prompt: n of best-of-n.
    temperature, top_p, max_new_tokens: how candidates are sampled.
    min_margin: a winner must beat its prompt's mean score by this much to be kept.
    """

    lr: float = 1e-4
    epochs: int = 2
    iterations: int = 2
    samples_per_prompt: int = 8
    temperature: float = 1.0
    top_p: float | None = None
    max_new_tokens: int = 64
    min_margin: float = 0.0

    def checks(self) -> dict[str, bool]:
        return {
            **super().checks(),
            "iterations, samples_per_prompt and max_new_tokens must be >= 1": min(
                self.iterations, self.samples_per_prompt, self.max_new_tokens
            )
            >= 1,
            "samples_per_prompt must be >= 2 (best of one is no choice)": (
                self.samples_per_prompt >= 2
            ),
            "temperature must be > 0": self.temperature > 0,
            "min_margin must be >= 0": self.min_margin >= 0,
        }

    def sft(self, iteration: int) -> SFTConfig:
        """The SFT settings of one iteration (its own seed)."""
        shared = {name: getattr(self, name) for name in FineTuneConfig.__dataclass_fields__}
        return SFTConfig(**{**shared, "seed": self.seed + iteration, "log_file": None})


@dataclass(frozen=True)
class RejectionSamplingResult:
    """metrics: the last iteration's; history: one row per iteration (score of the candidates,
    of the winners, the winners kept, SFT loss)."""

    steps: int
    stopped_early: bool
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(repr=False)
    warnings: list[str] = field(default_factory=list)


def select_winners(
    prompts: Sequence[str], texts: Sequence[str], scores: torch.Tensor, n: int, min_margin: float
) -> list[tuple[str, str, float]]:
    """(prompt, best response, its score) of each prompt whose best beats its mean by
    `min_margin`; `texts` and `scores` are prompt-major, n per prompt."""
    winners = []
    for index, prompt in enumerate(prompts):
        row = scores[index * n : (index + 1) * n]
        best = int(row.argmax())
        text = texts[index * n + best]
        # An empty answer cannot be a demonstration; a prompt whose candidates tie teaches nothing.
        # The mean of the differences is exactly 0 on a tie; `row[best] - row.mean()` may not be
        # (the mean of eight scores of 0.3 rounds below 0.3 in float32).
        if text.strip() and float((row[best] - row).mean()) > min_margin:
            winners.append((prompt, text, float(row[best])))
    return winners


def train_rejection_sampling(
    policy: PaLM,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    scorer: Scorer,
    config: RejectionSamplingConfig,
    *,
    callback: TrainingCallback | None = None,
) -> RejectionSamplingResult:
    """Train `policy` in place; returns it in eval mode. `scorer` reads (prompts, responses)."""
    if not prompts:
        raise FineTuneError("rejection sampling needs at least one prompt")
    callback = callback or NoCallback()
    history: list[dict[str, float]] = []
    steps, stopped = 0, False
    n = config.samples_per_prompt
    for iteration in range(1, config.iterations + 1):
        sampling = Sampling(
            n, config.max_new_tokens, config.temperature, config.top_p, config.seed + iteration
        )
        samples = draw_samples(policy, tokenizer, prompts, sampling)
        scores = scorer(samples.prompts, samples.texts).float().cpu()
        winners = select_winners(prompts, samples.texts, scores, n, config.min_margin)
        ended = ends_with_eos(samples.tokens, samples.lengths, tokenizer.eos_id)
        row = {
            "iteration": float(iteration),
            "score": float(scores.mean()),
            "score_std": float(scores.std(correction=0)),
            "winner_score": statistics.fmean(w[2] for w in winners) if winners else float("nan"),
            "winners": float(len(winners)),
            "eos_rate": float(ended.float().mean()),
        }
        if winners:
            demonstrations = [Demonstration(p, r, "rejection_sampling") for p, r, _ in winners]
            result = train_sft(policy, tokenizer, demonstrations, config.sft(iteration))
            if config.lora_rank is not None:
                # The next iteration's SFT adds its own adapter, and refuses an active one.
                merge_and_remove(policy, SFT_LORA_SCOPE)
            steps += result.steps
            row["loss"] = result.metrics.get("loss", float("nan"))
        history.append(row)
        if callback.on_step({"step": iteration, **row}) is False and iteration < config.iterations:
            stopped = True
            break
    found = policy_warnings(history, None)
    warn(found)
    policy.eval()
    return RejectionSamplingResult(steps, stopped, history[-1], history, found)


def add_rejection_sampling_command(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "rejection-sampling",
        help="fine-tune a policy on its own best samples by a reward model",
        description="Rejection-sampling fine-tuning from a PaLM checkpoint against a reward "
        "model saved by the reward trainer: each iteration samples responses to every prompt, "
        "keeps each prompt's best by the reward model and fine-tunes the policy on them (SFT). "
        "Saves the result as a checkpoint.",
    )
    parser.add_argument("--policy", type=Path, required=True, metavar="CKPT")
    parser.add_argument("--reward", type=Path, required=True, metavar="RM_DIR")
    parser.add_argument(
        "--prompts", type=Path, required=True, metavar="FILE", help='JSONL rows {"prompt": ...}'
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="new checkpoint")
    for name, (kind, text) in _OPTIONS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            metavar="N" if kind is int else "F",
            help=f"{text} {FROM_RECIPE}",
        )
    add_finetune_options(parser)
    parser.set_defaults(run=_run_rejection_sampling)


def _run_rejection_sampling(args: argparse.Namespace) -> None:
    # Imported here rather than above: policy_training imports this module.
    from rlhf_core.policy_training import save_trained_policy, train_policy

    options = {**finetune_options(args), **given_options(args, _OPTIONS)}
    config = dataclasses.replace(checkpoint_recipe(args.policy).rejection_sampling, **options)
    prompts = read_prompts(args.prompts)
    # Where accelerate fine-tunes: sampling and scoring run there from the first iteration.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    checkpoint = load_checkpoint(args.policy, device=device)
    reward_model, reward_tokenizer = load_reward_model(args.reward, device=device)
    result = train_policy(
        "rejection_sampling",
        checkpoint.model,
        checkpoint.tokenizer,
        prompts,
        reward_model,
        reward_tokenizer,
        config,
    )
    save_trained_policy(args.out, result, checkpoint.tokenizer, config.to_dict())
    last = result.metrics
    print(
        f"rejection sampling: {len(prompts)} prompts, {len(result.history)} iterations, "
        f"{result.steps} SFT steps; last iteration: mean score {last['score']:.4f}, "
        f"{last['winners']:.0f} winners, eos_rate {last['eos_rate']:.2f} -> {args.out}"
    )
    print_warnings(result.warnings)
