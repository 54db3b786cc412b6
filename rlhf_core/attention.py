"""Attention for PaLM: rotary/xPos, T5 relative position bias, SDPA on a chosen backend, KV cache.

Axes: b batch, n new (query) positions, j key slots, h query heads, g key/value heads, d head dim,
f rotary frequencies (d / 2), l layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from rlhf_core.helpers import exists

SDPA_BACKENDS: dict[str, SDPBackend] = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}

ROTARY_THETA = 10_000.0
# xPos (Sun et al. 2022): per-frequency decay base zeta_i = (i / (d/2) + gamma) / (1 + gamma).
XPOS_GAMMA = 0.4


def rotate_half(t: Tensor) -> Tensor:
    """The 'rotate half' layout: dimension i pairs with i + d/2 (GPT-NeoX and the reference)."""
    first, second = t.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


@dataclass(frozen=True)
class Rotary:
    """Rotary angles (and the optional xPos scale) for a set of positions, shaped (b 1 n d)."""

    cos: Tensor
    sin: Tensor
    xpos_scale: Tensor | None

    @classmethod
    def at(cls, positions: Tensor, dim_head: int, xpos_scale_base: int | None) -> Rotary:
        """Angles for `positions` (b n); `xpos_scale_base=None` turns xPos off.

        Computed in float32 from the positions every call, never from a buffer: a model cast to
        bf16 would otherwise round its angles, and float32 angles are what make a cached key equal
        to a recomputed one.
        """
        exponents = torch.arange(0, dim_head, 2, device=positions.device, dtype=torch.float32)
        inv_freq = ROTARY_THETA ** -(exponents / dim_head)
        angles = positions.float()[..., None] * inv_freq
        angles = repeat(angles, "b n f -> b 1 n (two f)", two=2)
        if xpos_scale_base is None:
            return cls(angles.cos(), angles.sin(), None)
        zeta = (exponents / dim_head + XPOS_GAMMA) / (1 + XPOS_GAMMA)
        # The paper centres the exponent on the sequence middle; any offset cancels in q.k (q gets
        # zeta^p, k gets zeta^-p'), and a fixed origin at position 0 keeps cached keys valid.
        power = positions.float()[..., None] / xpos_scale_base
        scale = repeat(zeta**power, "b n f -> b 1 n (two f)", two=2)
        return cls(angles.cos(), angles.sin(), scale)

    def rotate_queries(self, q: Tensor) -> Tensor:
        return self._rotate(q, self.xpos_scale)

    def rotate_keys(self, k: Tensor) -> Tensor:
        # Keys take the inverse xPos scale so that q.k decays with the distance between them.
        return self._rotate(k, None if self.xpos_scale is None else self.xpos_scale.reciprocal())

    def _rotate(self, t: Tensor, scale: Tensor | None) -> Tensor:
        rotated = t.float() * self.cos + rotate_half(t.float()) * self.sin
        if scale is not None:
            rotated = rotated * scale
        return rotated.to(t.dtype)


def causal_relative_bucket(distance: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5's unidirectional bucketing (Raffel et al. 2020) of how far back each key lies.

    Half the buckets hold exact distances 0.. num_buckets/2 - 1; the rest are log-spaced up to
    `max_distance`, beyond which everything shares the last bucket. Future keys (negative
    distance) fall in bucket 0; the causal mask removes them anyway.
    """
    distance = distance.clamp(min=0)
    max_exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(
        max_distance / max_exact
    )
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return torch.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """One learned scalar per (distance bucket, head), added to attention scores (T5 / LaMDA).

    Shared by every layer, as in T5, so it lives on the model and is computed once per forward.
    """

    def __init__(self, heads: int, num_buckets: int, max_distance: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, heads)

    def forward(self, query_positions: Tensor, key_positions: Tensor) -> Tensor:
        """(b n) query and (b j) key positions to a (b h n j) bias."""
        distance = rearrange(query_positions, "b n -> b n 1") - rearrange(
            key_positions, "b j -> b 1 j"
        )
        buckets = causal_relative_bucket(distance, self.num_buckets, self.max_distance)
        bias: Tensor = rearrange(self.embedding(buckets), "b n j h -> b h n j")
        return bias


@dataclass
class KVCache:
    """A preallocated cache of every layer's keys and values, one slot per token.

    Shapes never change while decoding: attention always runs over all `max_len` slots, with the
    unused ones masked out, so kernels see one shape per step. (A CUDA-graph capture would also
    need `length` as a device tensor, with writes through `index_copy_`, since a Python int is
    baked into a graph.) Rows are aligned by slot: a left-padded batch keeps its padding in the
    early slots, marked invalid, and each row carries its own position ids.
    """

    keys: Tensor  # (l b g j d)
    values: Tensor  # (l b g j d)
    positions: Tensor  # (b j) position id of the token in each slot
    valid: Tensor  # (b j) the slot holds a real (non-padding) token
    length: int = 0  # slots filled so far, the same for every row

    @classmethod
    def empty(
        cls, *, layers: int, batch: int, max_len: int, kv_heads: int, dim_head: int, like: Tensor
    ) -> KVCache:
        """An empty cache on the device and in the dtype of `like` (e.g. a model weight)."""
        keys = like.new_zeros(layers, batch, kv_heads, max_len, dim_head)
        positions = torch.zeros(batch, max_len, dtype=torch.long, device=like.device)
        return cls(
            keys=keys,
            values=torch.zeros_like(keys),
            positions=positions,
            valid=torch.zeros_like(positions, dtype=torch.bool),
        )

    @property
    def max_len(self) -> int:
        return self.keys.shape[-2]

    def next_positions(self, mask: Tensor) -> Tensor:
        """Position ids for new tokens (b n) with padding `mask`: they continue each row's count."""
        seen = self.valid.sum(dim=-1, keepdim=True)
        return seen + positions_from_mask(mask)

    def reserve(self, positions: Tensor, mask: Tensor) -> int:
        """Claim the next n slots for tokens at `positions` (b n); returns the first slot."""
        start, n = self.length, positions.shape[-1]
        if start + n > self.max_len:
            raise ValueError(f"KV cache overflow: {start} + {n} tokens > {self.max_len} slots")
        self.positions[:, start : start + n] = positions
        self.valid[:, start : start + n] = mask
        self.length = start + n
        return start

    def write(self, layer: int, start: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store one layer's new (b g n d) keys and values; returns all of its slots."""
        end = start + keys.shape[-2]
        self.keys[layer, :, :, start:end] = keys
        self.values[layer, :, :, start:end] = values
        return self.keys[layer], self.values[layer]


def positions_from_mask(mask: Tensor) -> Tensor:
    """Position ids (b n) that skip padding, so a left-padded row counts from 0 at its first token.

    Padding slots get the position of their neighbour; they are masked out, so it never matters.
    """
    return (mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def visibility_mask(query_slots: Tensor, key_slots: Tensor, key_valid: Tensor | None) -> Tensor:
    """Boolean (b|1 1 n j) mask, True where a query may look: causal, and never at padding.

    Every query may always see itself, even a padding query: a row of all-False would make
    SDPA return NaN there, and the NaN would leak through the values into real rows.
    """
    causal = rearrange(key_slots, "j -> 1 j") <= rearrange(query_slots, "n -> n 1")
    if key_valid is None:
        return rearrange(causal, "n j -> 1 1 n j")
    itself = rearrange(key_slots, "j -> 1 j") == rearrange(query_slots, "n -> n 1")
    visible = rearrange(key_valid, "b j -> b 1 1 j") | itself
    return causal & visible


@dataclass(frozen=True)
class AttentionInputs:
    """What every layer's attention needs for one forward pass, computed once by the model."""

    rotary: Rotary | None
    mask: Tensor | None  # (b|1 1 n j) bool; None means plain causal over the new tokens
    bias: Tensor | None  # (b|1 h n j) relative position bias
    cache: KVCache | None = None
    cache_start: int = 0

    def __post_init__(self) -> None:
        if exists(self.bias) and self.mask is None:
            raise ValueError("a relative position bias needs an explicit causal mask")


def sdpa_backends(query: Tensor, backends: Sequence[str]) -> AbstractContextManager[None]:
    """Restrict SDPA to `backends`, in that priority, for CUDA tensors.

    Chosen on purpose rather than left to the dispatcher: on the GPU image a decode loop whose
    shapes change each step lost ~50 ms per step inside the cuDNN backend, so it is left out of
    the default list. On the CPU PyTorch picks between its own kernels, so nothing is forced.
    """
    if not query.is_cuda:
        return nullcontext()
    return sdpa_kernel([SDPA_BACKENDS[name] for name in backends], set_priority=True)


class Attention(nn.Module):
    """Multi-query / grouped-query attention between the fused projection and the output one."""

    def __init__(
        self,
        *,
        heads: int,
        kv_heads: int,
        dim_head: int,
        qk_norm_scale: float | None,
        dropout: float,
        backends: Sequence[str],
    ) -> None:
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads
        self.dropout = dropout
        self.backends = tuple(backends)
        # qk-norm (Henry et al. 2020): unit-length q and k with learned per-dimension gains bound
        # the logits, so the softmax temperature becomes an explicit, fixed `qk_norm_scale`.
        self.qk_norm = exists(qk_norm_scale)
        self.scale = qk_norm_scale if exists(qk_norm_scale) else dim_head**-0.5
        if self.qk_norm:
            self.q_scale = nn.Parameter(torch.ones(dim_head))
            self.k_scale = nn.Parameter(torch.ones(dim_head))

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, inputs: AttentionInputs, layer: int
    ) -> Tensor:
        """(b n (h d)) queries and (b n (g d)) keys/values to a (b n (h d)) output."""
        q = rearrange(q, "b n (h d) -> b h n d", h=self.heads)
        k = rearrange(k, "b n (g d) -> b g n d", g=self.kv_heads)
        v = rearrange(v, "b n (g d) -> b g n d", g=self.kv_heads)
        if self.qk_norm:
            # Normalised before the rotation (which keeps norms) and before xPos (which does not).
            q = F.normalize(q, dim=-1) * self.q_scale
            k = F.normalize(k, dim=-1) * self.k_scale
        if inputs.rotary is not None:
            q, k = inputs.rotary.rotate_queries(q), inputs.rotary.rotate_keys(k)
        if inputs.cache is not None:
            k, v = inputs.cache.write(layer, inputs.cache_start, k, v)
        out = self._attend(q, k, v, inputs)
        return rearrange(out, "b h n d -> b n (h d)")

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, inputs: AttentionInputs) -> Tensor:
        mask = inputs.mask
        if inputs.bias is not None and mask is not None:
            # An additive float mask carries both the bias and the causal/padding structure.
            mask = inputs.bias.to(q.dtype).masked_fill(~mask, float("-inf"))
        grouped = self.heads != self.kv_heads
        if grouped and mask is not None:
            # With a mask, flash is out (it takes none) and the efficient kernel refuses fewer
            # k/v heads than query heads (torch 2.11), which would leave only math (or cuDNN).
            # Broadcasting k/v to every head keeps the efficient kernel; with one kv head the
            # broadcast is a stride-0 view, not a copy.
            r = self.heads // self.kv_heads
            k, v = (repeat(t, "b g j d -> b (g r) j d", r=r) for t in (k, v))
            grouped = False
        with sdpa_backends(q, self.backends):
            return F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=mask is None,
                scale=self.scale,
                enable_gqa=grouped,
            )
