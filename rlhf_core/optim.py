"""The optimizer and learning-rate schedule of the trainers: AdamW and warm-up + cosine decay."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on the matrices of linear layers, none elsewhere.

    Norm gains, qk-norm scales and biases (every tensor of fewer than two dimensions) are left
    alone: decay would pull a gain towards zero instead of regularising how features mix.
    Embeddings too: a row only gets gradient when its token occurs, but decoupled decay shrinks
    every row every step, so rare tokens would fade towards zero.
    """
    embeddings = {
        id(parameter)
        for module in model.modules()
        if isinstance(module, nn.Embedding)
        for parameter in module.parameters(recurse=False)
    }
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        skip = parameter.ndim < 2 or id(parameter) in embeddings
        (no_decay if skip else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_adamw(
    model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019): decay is decoupled from the gradient statistics."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=betas)


def warmup_cosine(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """The learning-rate multiplier for optimizer step `step` (counted from 0).

    Linear warm-up that reaches 1 at `warmup_steps` (starting at 1 / (warmup_steps + 1), so that
    the first step already learns), then half a cosine down to `min_lr_ratio` at `max_steps`,
    flat after that.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min((step - warmup_steps) / max(max_steps - warmup_steps, 1), 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, max_steps: int, min_lr_ratio: float
) -> LambdaLR:
    """`warmup_cosine` as a scheduler: call `step()` once after every optimizer step."""
    multiplier = partial(
        warmup_cosine, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio
    )
    return LambdaLR(optimizer, multiplier)
