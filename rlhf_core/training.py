"""Pieces of a training loop that the trainers share, over accelerate.

The callback protocol through which a caller (a Celery task, a test) follows a run and stops
it, and the gradient work of one optimizer step: accumulation over micro-batches that equals
the whole batch, and clipping that reports the norm.

Axes: b blocks, n tokens of a block, v vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from einops import rearrange
from torch import Tensor, nn

Metrics = Mapping[str, float]


class TrainingCallback(Protocol):
    """Progress of a run, for a caller such as a Celery task. Hooks run on the main process.

    Return False from any hook to stop the run after the current step: the trainer saves a
    state to resume from and a checkpoint, then returns (`pretrain`: `stopped_early=True`).
    Any other return value (None included) lets it continue. An exception from a hook ends the
    run without saving and propagates. Subclass this to inherit hooks that do nothing.
    """

    def on_step(self, metrics: Metrics) -> bool | None:
        """After every optimizer step (pretrain: step, loss, lr, grad_norm, tokens_per_second,
        tokens_seen, elapsed)."""
        return None

    def on_eval(self, metrics: Metrics) -> bool | None:
        """After every validation (pretrain: step, val_loss, val_perplexity)."""
        return None

    def on_checkpoint(self, path: Path) -> bool | None:
        """After an exportable checkpoint (and the state to resume from) is complete."""
        return None


class NoCallback(TrainingCallback):
    """Follows nothing, stops nothing."""


def next_token_loss_sum(model: nn.Module, blocks: Tensor) -> Tensor:
    """Summed cross-entropy of predicting blocks[:, 1:] from blocks[:, :-1] (b n)."""
    logits = model(blocks[:, :-1])
    targets = blocks[:, 1:]
    return F.cross_entropy(
        rearrange(logits, "b n v -> (b n) v"), rearrange(targets, "b n -> (b n)"), reduction="sum"
    )


def accumulate_gradients(
    accelerator: Accelerator, model: nn.Module, micro_batches: Sequence[Tensor]
) -> Tensor:
    """Backpropagate the mean token loss of all `micro_batches` together, one at a time.

    Each micro-batch's summed loss is divided by the token count of the whole batch, so the
    gradients add up to exactly those of the batch's mean loss (a mean of micro-batch means
    would not be, as soon as micro-batches differ in size). Processes synchronise gradients on
    the last micro-batch only. Returns that mean loss, detached.
    """
    total_tokens = sum(blocks[:, 1:].numel() for blocks in micro_batches)
    mean_loss = torch.zeros((), device=accelerator.device)
    for index, blocks in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        with nullcontext() if last else accelerator.no_sync(model):
            loss = next_token_loss_sum(model, blocks) / total_tokens
            accelerator.backward(loss)
        mean_loss += loss.detach()
    return mean_loss


def clip_gradients(accelerator: Accelerator, model: nn.Module, max_norm: float | None) -> float:
    """Scale the gradients to a global norm of at most `max_norm`; returns the norm before."""
    # With no limit the norm is still wanted for the metrics: an infinite limit scales by 1.
    limit = math.inf if max_norm is None else max_norm
    return float(accelerator.clip_grad_norm_(model.parameters(), limit))
