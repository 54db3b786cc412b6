"""Direct preference optimisation (Rafailov et al. 2023): a policy from preference pairs, no
reward model and no sampling.

The reference log-probs log π_ref(y | x) of every chosen and rejected response are computed once,
before the first step, and kept as two tensors: the reference never changes, so recomputing them
each step (as a frozen second model would) only costs time and memory. The reference is
- the base weights with the adapters off (`adapters_disabled`) when training LoRA adapters;
- else the `reference` model given, or the policy itself before its first step (the same numbers
  a frozen copy would give, without holding a copy).

Which pairs train, and how much:
- ties are skipped: DPO's likelihood has no term for "equally good" (Rafailov et al. eq. 7
  models a strict preference);
- both-bad pairs are skipped: raising the chosen one's likelihood would teach a response the
  annotator called unacceptable; the reward-model path uses them instead (`both_bad_loss`);
- each pair weighs `weight` (annotator reliability, 1/C(K,2) for ranking pairs), times its
  `strength` grade when `weight_by_strength` is set: a clear preference counts more.

Axes: b pairs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from rlhf_core.checkpoint import load_checkpoint
from rlhf_core.commands import FROM_RECIPE, checkpoint_recipe, given_options
from rlhf_core.finetuning import (
    FineTuneConfig,
    FineTuneError,
    FineTuneLoop,
    FineTuneResult,
    add_finetune_options,
    finetune_options,
    make_trainable,
    save_policy,
    shuffled_batches,
    summary,
)
from rlhf_core.lora import adapters_disabled
from rlhf_core.losses import dpo_loss
from rlhf_core.palm import PaLM
from rlhf_core.records import PairwisePreference, Ranking, Record, Rewrite, read_records
from rlhf_core.sequences import EncodedResponse, collate, encode_groups, response_logprobs
from rlhf_core.tokenizer import Tokenizer
from rlhf_core.training import TrainingCallback

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

LORA_SCOPE = "dpo"
# The dpo command's options that set a DPOConfig field beside the shared fine-tuning ones.
_DPO_OPTIONS = ("beta", "label_smoothing", "weight_by_strength")


@dataclass(frozen=True)
class DPOConfig(FineTuneConfig):
    """A DPO run; see `FineTuneConfig` for the shared settings.

    beta: β of eq. 7, the strength of the implicit KL constraint (smaller drifts further).
    label_smoothing: the probability that a label is flipped (conservative DPO).
    """

    lr: float = 1e-6
    beta: float = 0.1
    label_smoothing: float = 0.0
    weight_by_strength: bool = False

    def checks(self) -> dict[str, bool]:
        return {
            **super().checks(),
            "beta must be > 0": self.beta > 0,
            "label_smoothing must be in [0, 0.5)": 0 <= self.label_smoothing < 0.5,
        }


@dataclass(frozen=True)
class DPOResult(FineTuneResult):
    """How a DPO run ended. Metrics per step: loss, reward_accuracy, reward_margin,
    chosen_reward, rejected_reward, kl (see `dpo_metrics`), lr, grad_norm, elapsed."""

    pairs_used: int
    pairs_skipped: int  # ties and both-bad pairs


@dataclass(frozen=True)
class PairRows:
    """The usable pairs, encoded: chosen and rejected rows, with weights (b)."""

    chosen: list[EncodedResponse]
    rejected: list[EncodedResponse]
    weights: Tensor


@dataclass(frozen=True)
class ReferenceLogprobs:
    """Σ log π_ref of each pair's chosen and rejected response (b), computed once."""

    chosen: Tensor
    rejected: Tensor


def usable_pairs(
    pairs: Sequence[PairwisePreference], *, weight_by_strength: bool = False
) -> tuple[list[PairwisePreference], Tensor]:
    """The pairs DPO trains on (no ties, no both-bad) and their weights (b); see the module."""
    kept = [pair for pair in pairs if not (pair.tie or pair.both_bad)]
    weights = [pair.weight * ((pair.strength or 1) if weight_by_strength else 1) for pair in kept]
    return kept, torch.tensor(weights, dtype=torch.float32)


def encode_pairs_for_dpo(
    tokenizer: Tokenizer,
    pairs: Sequence[PairwisePreference],
    weights: Tensor,
    max_length: int | None,
) -> PairRows:
    """Each pair's chosen and rejected rows, cut together so both keep the same prompt tokens
    (`sequences.encode_groups`): DPO compares two responses in one context."""
    groups = encode_groups(
        tokenizer,
        [pair.prompt for pair in pairs],
        [(pair.chosen, pair.rejected) for pair in pairs],
        max_length,
    )
    return PairRows([chosen for chosen, _ in groups], [rejected for _, rejected in groups], weights)


def pair_logprobs(
    model: nn.Module, rows: PairRows, indices: Sequence[int], pad_id: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Chosen and rejected sequence log-probs (b) of the pairs at `indices` in one forward
    pass, and the number of chosen response tokens scored ()."""
    chosen = [rows.chosen[index] for index in indices]
    batch = collate(chosen + [rows.rejected[index] for index in indices], pad_id).to(device)
    chosen_logps, rejected_logps = response_logprobs(model, batch).chunk(2)
    return chosen_logps, rejected_logps, batch.response_mask[: len(indices), 1:].sum()


@torch.no_grad()
def reference_logprobs(
    model: nn.Module, rows: PairRows, pad_id: int, *, batch_size: int, device: torch.device
) -> ReferenceLogprobs:
    """One pass over every pair in eval mode: the reference's log-probs, kept on `device`."""
    was_training = model.training
    model.eval()
    try:
        parts = [
            pair_logprobs(
                model, rows, range(start, min(start + batch_size, len(rows.chosen))), pad_id, device
            )
            for start in range(0, len(rows.chosen), batch_size)
        ]
    finally:
        model.train(was_training)
    return ReferenceLogprobs(
        torch.cat([chosen for chosen, _, _ in parts]),
        torch.cat([rejected for _, rejected, _ in parts]),
    )


def dpo_metrics(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    chosen_log_ratio: Tensor,
    chosen_tokens: Tensor,
) -> dict[str, float]:
    """Metrics of a batch from the implicit rewards β(log π - log π_ref) (b).

    kl: the mean per-token log π - log π_ref on the chosen responses, Σ log-ratio / tokens (the
    k1 estimator of Schulman 2020, from sequence sums since only those are kept). The responses
    are not samples of π, so this is a drift indicator, 0 at the start and not an unbiased
    estimate of KL(π ‖ π_ref): it can even turn negative when DPO lowers the chosen responses'
    likelihood along with the rejected ones'.
    """
    return {
        "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
        "reward_margin": (chosen_rewards - rejected_rewards).mean().item(),
        "chosen_reward": chosen_rewards.mean().item(),
        "rejected_reward": rejected_rewards.mean().item(),
        "kl": (chosen_log_ratio.sum() / chosen_tokens.clamp(min=1)).item(),
    }


def train_dpo(
    policy: PaLM,
    tokenizer: Tokenizer,
    pairs: Sequence[PairwisePreference],
    config: DPOConfig,
    *,
    reference: PaLM | None = None,
    callback: TrainingCallback | None = None,
) -> DPOResult:
    """Train `policy` in place with DPO on `pairs`; returns it in eval mode.

    `reference` (moved to the training device) defaults as the module docstring says; it is
    refused together with LoRA, whose reference is the policy's own base.
    """
    if reference is not None and config.lora_rank is not None:
        raise FineTuneError("with LoRA the reference is the base model: pass no reference")
    kept, weights = usable_pairs(pairs, weight_by_strength=config.weight_by_strength)
    if not kept:
        raise FineTuneError(f"none of the {len(pairs)} pairs is usable (all ties or both bad)")
    rows = encode_pairs_for_dpo(tokenizer, kept, weights, config.max_length)
    make_trainable(policy, config, LORA_SCOPE)
    steps = config.steps_for(len(kept))
    loop = FineTuneLoop(policy, config, steps)
    device = loop.accelerator.device
    references = _reference_pass(loop, policy, reference, rows, tokenizer.pad_id, config)

    def step(forward: nn.Module, batch: list[int]) -> tuple[Tensor, dict[str, float]]:
        chosen, rejected, tokens = pair_logprobs(forward, rows, batch, tokenizer.pad_id, device)
        ref_chosen, ref_rejected = references.chosen[batch], references.rejected[batch]
        loss, chosen_rewards, rejected_rewards = dpo_loss(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            beta=config.beta,
            label_smoothing=config.label_smoothing,
            weights=rows.weights[batch].to(device),
        )
        log_ratio = (chosen - ref_chosen).detach()
        metrics = dpo_metrics(chosen_rewards, rejected_rewards, log_ratio, tokens)
        return loss, {"loss": loss.item(), **metrics}

    result = loop.run(shuffled_batches(len(kept), config, steps), step, callback)
    return DPOResult(
        result.steps,
        result.stopped_early,
        result.metrics,
        result.history,
        pairs_used=len(kept),
        pairs_skipped=len(pairs) - len(kept),
    )


def _reference_pass(
    loop: FineTuneLoop,
    policy: PaLM,
    reference: PaLM | None,
    rows: PairRows,
    pad_id: int,
    config: DPOConfig,
) -> ReferenceLogprobs:
    device = loop.accelerator.device
    compute = partial(
        reference_logprobs, rows=rows, pad_id=pad_id, batch_size=config.batch_size, device=device
    )
    # Under the run's autocast, so reference and policy log-probs share one precision.
    with loop.accelerator.autocast():
        if reference is not None:
            return compute(reference.to(device))
        unwrapped = loop.accelerator.unwrap_model(loop.model)
        base = adapters_disabled(unwrapped) if config.lora_rank is not None else nullcontext()
        with base:
            return compute(unwrapped)


def pairs_from(records: Sequence[Record]) -> list[PairwisePreference]:
    """Preference pairs of a record file: pairs, ranking pairs and rewrite-over-original."""
    pairs: list[PairwisePreference] = []
    for record in records:
        if isinstance(record, PairwisePreference):
            pairs.append(record)
        elif isinstance(record, Ranking):
            pairs.extend(record.to_pairs())
        elif isinstance(record, Rewrite):
            pairs.append(record.to_pair())
    return pairs


def add_dpo_command(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "dpo",
        help="direct preference optimisation of a checkpoint on preference pairs",
        description="Train a checkpoint with DPO on the pairs of a record file (pairwise rows, "
        "the pairs of rankings, rewrites over their originals) and save it as a checkpoint.",
    )
    parser.add_argument("--base", type=Path, required=True, metavar="CKPT")
    parser.add_argument("--pairs", type=Path, required=True, metavar="FILE", help=".jsonl/.parquet")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="new checkpoint")
    parser.add_argument("--reference", type=Path, metavar="CKPT", help="default: --base")
    parser.add_argument(
        "--beta", type=float, metavar="F", help=f"strength of the KL constraint {FROM_RECIPE}"
    )
    parser.add_argument(
        "--label-smoothing",
        type=float,
        metavar="F",
        help=f"probability that a label is flipped {FROM_RECIPE}",
    )
    parser.add_argument(
        "--weight-by-strength",
        action=argparse.BooleanOptionalAction,
        help=f"weigh each pair by its strength grade {FROM_RECIPE}",
    )
    add_finetune_options(parser)
    parser.set_defaults(run=_run_dpo)


def _run_dpo(args: argparse.Namespace) -> None:
    options = {**finetune_options(args), **given_options(args, _DPO_OPTIONS)}
    config = replace(checkpoint_recipe(args.base).dpo, **options)
    pairs = pairs_from(read_records(args.pairs))
    if not pairs:
        raise FineTuneError(f"{args.pairs}: no pairwise, ranking or rewrite records")
    base = load_checkpoint(args.base)
    reference = load_checkpoint(args.reference).model if args.reference else None
    result = train_dpo(base.model, base.tokenizer, pairs, config, reference=reference)
    save_policy(
        args.out,
        base.model,
        base.tokenizer,
        trainer="dpo",
        config=config,
        result=result,
        base_metadata=base.metadata,
    )
    skipped = f", {result.pairs_skipped} skipped" if result.pairs_skipped else ""
    print(f"dpo: {result.pairs_used} pairs{skipped}, {summary(result)} -> {args.out}")
