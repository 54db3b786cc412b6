"""Small helpers shared by every rlhf_core module: one home, not a copy per file."""

from __future__ import annotations

from typing import TypeVar

import torch

T = TypeVar("T")


def exists(value: object) -> bool:
    return value is not None


def default(value: T | None, fallback: T) -> T:
    return fallback if value is None else value


def masked_mean(
    values: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Mean of `values` where `mask` is true; positions outside the mask never contribute.

    With `dim=None` the mean runs over every masked element. An all-false mask gives 0, not NaN,
    so a batch that happens to hold no response tokens cannot poison a loss.
    """
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim=dim) / mask.sum(dim=dim).clamp(min=1.0)
