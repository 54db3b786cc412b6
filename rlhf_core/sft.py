"""Supervised fine-tuning (SFT) on demonstrations: the usual first step before a reward model
and PPO (Ouyang et al. 2022, §3.5), or before DPO.

The loss is next-token cross-entropy on the response tokens and the EOS after them only: the
prompt is context, not something the policy should learn to write, and padding never counts.

Axes: b batch, n sequence, v vocabulary.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from rlhf_core.checkpoint import load_checkpoint
from rlhf_core.commands import checkpoint_recipe
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
from rlhf_core.losses import token_logprobs
from rlhf_core.palm import PaLM
from rlhf_core.records import (
    KINDS,
    Demonstration,
    LikertRating,
    PairwisePreference,
    Ranking,
    Record,
    Rewrite,
    read_records,
)
from rlhf_core.sequences import EncodedResponse, collate, encode_responses
from rlhf_core.tokenizer import Tokenizer
from rlhf_core.training import TrainingCallback

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

LORA_SCOPE = "sft"


@dataclass(frozen=True)
class SFTConfig(FineTuneConfig):
    """An SFT run; see `FineTuneConfig` for the shared settings."""

    lr: float = 1e-4


class SFTResult(FineTuneResult):
    """How an SFT run ended (metrics: step, loss, tokens, lr, grad_norm, elapsed)."""


def response_nll(
    logits: Tensor, tokens: Tensor, response_mask: Tensor, weights: Tensor | None = None
) -> Tensor:
    """Mean -log p over response tokens, each row's tokens weighted by weights (b): () .

    Alignment as `losses.token_logprobs`: response_mask (b n) is True on the tokens to predict;
    column 0 is never predicted, so it never counts. Rows weigh by their token count (a long
    demonstration teaches more tokens), scaled by their record weight.
    """
    mask = response_mask.bool().clone()
    mask[:, 0] = False
    row_weights = torch.ones(tokens.shape[0], device=tokens.device) if weights is None else weights
    token_weights = mask.to(logits.dtype) * row_weights[:, None].to(logits.dtype)
    logprobs = torch.where(mask, token_logprobs(logits, tokens), 0.0)
    return -(logprobs * token_weights).sum() / token_weights.sum().clamp(min=1e-8)


def train_sft(
    model: PaLM,
    tokenizer: Tokenizer,
    demonstrations: Sequence[Demonstration],
    config: SFTConfig,
    *,
    callback: TrainingCallback | None = None,
) -> SFTResult:
    """Fine-tune `model` in place on `demonstrations`; returns it in eval mode.

    With `config.lora_rank` the model gets an active LoRA scope "sft" and its base weights stay
    as they were; `finetuning.save_policy` folds the adapters in when saving.
    """
    if not demonstrations:
        raise FineTuneError("no demonstrations to train on")
    rows = encode_responses(
        tokenizer,
        [item.prompt for item in demonstrations],
        [item.response for item in demonstrations],
        config.max_length,
    )
    weights = torch.tensor([item.weight for item in demonstrations])
    make_trainable(model, config, LORA_SCOPE)
    steps = config.steps_for(len(rows))
    loop = FineTuneLoop(model, config, steps)

    def step(forward: nn.Module, batch: list[int]) -> tuple[Tensor, dict[str, float]]:
        return _sft_step(forward, [rows[index] for index in batch], weights[batch], tokenizer, loop)

    result = loop.run(shuffled_batches(len(rows), config, steps), step, callback)
    return SFTResult(result.steps, result.stopped_early, result.metrics, result.history)


def _sft_step(
    forward: nn.Module,
    rows: list[EncodedResponse],
    weights: Tensor,
    tokenizer: Tokenizer,
    loop: FineTuneLoop,
) -> tuple[Tensor, dict[str, float]]:
    batch = collate(rows, tokenizer.pad_id).to(loop.accelerator.device)
    logits = forward(batch.tokens, attention_mask=batch.attention_mask)
    loss = response_nll(logits, batch.tokens, batch.response_mask, weights.to(logits.device))
    tokens = float(batch.response_mask[:, 1:].sum())
    return loss, {"loss": loss.item(), "tokens": tokens}


def demonstrations_from(
    records: Iterable[Record], *, min_likert: float = 0.75, likert_attribute: str | None = None
) -> list[Demonstration]:
    """Demonstrations worth imitating among labelled records, each (prompt, response) once.

    - a Demonstration: itself;  a Rewrite: the rewrite (the annotator's own better answer);
    - a Ranking: its best response;
    - a PairwisePreference: the chosen response, unless it is a tie or both were bad;
    - a LikertRating: the response if its score reaches `min_likert` on the scale mapped to
      0..1 (the `likert_attribute` score, or the mean of all rated attributes when None).
    Repeats (several annotators agreeing) are kept once, with the first record's weight, so
    that popular prompts do not dominate the fine-tuning.
    """
    seen: set[tuple[str, str]] = set()
    found: list[Demonstration] = []
    for record in records:
        demonstration = _demonstration(record, min_likert, likert_attribute)
        if (
            demonstration is not None
            and (key := (record.prompt, demonstration.response)) not in seen
        ):
            seen.add(key)
            found.append(demonstration)
    return found


def _demonstration(
    record: Record, min_likert: float, likert_attribute: str | None
) -> Demonstration | None:
    kind = KINDS[type(record)]
    if isinstance(record, Demonstration):
        return record
    if isinstance(record, Rewrite):
        return Demonstration(record.prompt, record.rewrite, kind, record.weight)
    if isinstance(record, Ranking):
        return Demonstration(record.prompt, record.responses[0], kind, record.weight)
    if isinstance(record, PairwisePreference):
        if record.tie or record.both_bad:
            return None
        return Demonstration(record.prompt, record.chosen, kind, record.weight)
    if _likert_share(record, likert_attribute) >= min_likert:
        return Demonstration(record.prompt, record.response, kind, record.weight)
    return None


def _likert_share(rating: LikertRating, attribute: str | None) -> float:
    """The score (or mean score) of `rating` on its scale mapped to 0..1; -1 if not rated."""
    if attribute is not None and attribute not in rating.scores:
        return -1.0
    scores = [rating.scores[attribute]] if attribute is not None else list(rating.scores.values())
    low, high = rating.scale
    return (sum(scores) / len(scores) - low) / (high - low)


def add_sft_command(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "sft",
        help="supervised fine-tuning of a checkpoint on demonstrations",
        description="Fine-tune a checkpoint on the demonstrations in a record file (SFT rows, "
        "rewrites, the best of rankings, chosen responses of pairs, top Likert ratings) and "
        "save the result as a checkpoint.",
    )
    parser.add_argument("--base", type=Path, required=True, metavar="CKPT")
    parser.add_argument("--data", type=Path, required=True, metavar="FILE", help=".jsonl/.parquet")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="new checkpoint")
    parser.add_argument("--min-likert", type=float, default=0.75, metavar="F")
    add_finetune_options(parser)
    parser.set_defaults(run=_run_sft)


def _run_sft(args: argparse.Namespace) -> None:
    config = replace(checkpoint_recipe(args.base).sft, **finetune_options(args))
    demonstrations = demonstrations_from(read_records(args.data), min_likert=args.min_likert)
    # Loaded on the CPU: accelerate moves the model to its device when the run starts.
    base = load_checkpoint(args.base)
    result = train_sft(base.model, base.tokenizer, demonstrations, config)
    save_policy(
        args.out,
        base.model,
        base.tokenizer,
        trainer="sft",
        config=config,
        result=result,
        base_metadata=base.metadata,
    )
    print(f"sft: {len(demonstrations)} demonstrations, {summary(result)} -> {args.out}")
