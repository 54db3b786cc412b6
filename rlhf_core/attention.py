"""Attention for PaLM: rotary/xPos, T5 relative position bias, SDPA on a chosen backend, KV cache.

Axes: b batch, n new (query) positions, j key slots, h query heads, g key/value heads, r query
heads per key/value head (h = g r), d head dim, f rotary frequencies (d / 2), l layers.
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


@torch.library.custom_op("rlhf_core::rotary_tables", mutates_args=())
def rotary_tables(
    positions: Tensor, dim_head: int, xpos_scale_base: int | None, xpos_centre: int
) -> Tensor:
    """(4 b 1 n d) float32: query cos, query sin, key cos, key sin for `positions` (b n).

    xPos scales a query at position p by zeta^((p - xpos_centre) / xpos_scale_base) and a key by
    the inverse; see `Rotary.at` for the centre.

    A custom op, so that it is opaque to torch.compile: inductor would otherwise inline these
    cos/sin/pow computations into every layer's rotation kernel and redo them for every batch
    row and head (a compiled palm_150m training step on an H100: 49.6 ms inlined, 45.8 ms not).
    """
    exponents = torch.arange(0, dim_head, 2, device=positions.device, dtype=torch.float32)
    inv_freq = ROTARY_THETA ** -(exponents / dim_head)
    angles = positions.float()[..., None] * inv_freq
    cos = repeat(angles.cos(), "b n f -> b 1 n (two f)", two=2)
    sin = angles.sin()
    sin = rearrange([-sin, sin], "two b n f -> b 1 n (two f)")  # the sign of rotate_half
    if xpos_scale_base is None:
        return torch.stack((cos, sin, cos, sin))
    zeta = (exponents / dim_head + XPOS_GAMMA) / (1 + XPOS_GAMMA)
    power = (positions.float()[..., None] - xpos_centre) / xpos_scale_base
    scale = repeat(zeta**power, "b n f -> b 1 n (two f)", two=2)
    # Keys take the inverse scale so that q.k decays with the distance between them.
    return torch.stack((cos * scale, sin * scale, cos / scale, sin / scale))


@rotary_tables.register_fake
def _rotary_tables_shape(
    positions: Tensor, dim_head: int, xpos_scale_base: int | None, xpos_centre: int
) -> Tensor:
    batch, n = positions.shape
    return positions.new_empty((4, batch, 1, n, dim_head), dtype=torch.float32)


@dataclass(frozen=True)
class Rotary:
    """Rotary angles for a set of positions, (b 1 n d) float32, with any xPos scale folded in.

    A rotation is t * cos + rotate_half(t) * sin, where rotate_half(t) = (-t2, t1) pairs
    dimension i with i + d/2 (the GPT-NeoX layout of the reference). That equals
    roll(t, d/2) * (-1, +1), so the sign is folded into `sin`, once per forward: each layer's
    rotation is then four kernels (mul, roll, addcmul, cast) instead of about ten, which matters
    for a decode step made of hundreds of tiny kernels.
    """

    query_cos: Tensor
    query_sin: Tensor
    key_cos: Tensor
    key_sin: Tensor

    @classmethod
    def at(
        cls,
        positions: Tensor,
        dim_head: int,
        xpos_scale_base: int | None,
        xpos_centre: int = 0,
    ) -> Rotary:
        """Angles for `positions` (b n); `xpos_scale_base=None` turns xPos off.

        `xpos_centre` is the position whose scale is 1. Any centre cancels in q.k (the query
        gets zeta^(p - c), the key zeta^-(p' - c)), but not in the half-precision q and k
        themselves: from position 0, the slowest-decaying frequency's key scale passes float16's
        range near position 4.5k. The reference centres on the middle of the sequence, so the
        exponent never exceeds half the length over the scale base; callers pass that middle,
        and with a KV cache the middle of the cache, fixed for all of its steps so that cached
        keys stay valid.

        Computed in float32 from the positions every call, never from a buffer: a model cast to
        bf16 would otherwise round its angles, and float32 angles are what make a cached key equal
        to a recomputed one.
        """
        tables = rotary_tables(positions, dim_head, xpos_scale_base, xpos_centre)
        return cls(*tables.unbind(0))

    def rotate_queries(self, q: Tensor) -> Tensor:
        return self._rotate(q, self.query_cos, self.query_sin)

    def rotate_keys(self, k: Tensor) -> Tensor:
        return self._rotate(k, self.key_cos, self.key_sin)

    @staticmethod
    def _rotate(t: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        # A bf16 `t` times float32 angles computes in float32 without a separate upcast kernel.
        half = t.shape[-1] // 2
        return torch.addcmul(t * cos, t.roll(half, dims=-1), sin).to(t.dtype)


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
    unused ones masked out, so kernels see one shape per step. The next free slot lives on the
    device (`cursor`) and every write goes through `index_copy_` at slots computed from it, so
    one decode step can be captured as a CUDA graph and replayed: a Python int would be baked
    into the graph. `length` counts the same slots on the host, to refuse an overflow without
    a device sync. Rows are aligned by slot: a left-padded batch keeps its padding in the early
    slots, marked invalid, and each row carries its own position ids.
    """

    # One (b g j d) tensor per layer rather than one (l b g j d) tensor: torch.compile writes a
    # slot in place only into a whole tensor; into a slice of one it copied the entire cache
    # every step.
    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    positions: Tensor  # (b j) position id of the token in each slot
    valid: Tensor  # (b j) the slot holds a real (non-padding) token
    cursor: Tensor  # () long, on the cache's device: slots filled so far, the same for every row
    length: int = 0  # the host's count of the same slots

    @classmethod
    def empty(
        cls,
        *,
        layers: int,
        batch: int,
        max_len: int,
        kv_heads: int,
        dim_head: int,
        like: Tensor,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty cache on the device of `like` (e.g. a model weight), in `dtype` or its."""
        shape = (batch, kv_heads, max_len, dim_head)
        positions = torch.zeros(batch, max_len, dtype=torch.long, device=like.device)
        dtype = dtype or like.dtype
        return cls(
            keys=tuple(like.new_zeros(shape, dtype=dtype) for _ in range(layers)),
            values=tuple(like.new_zeros(shape, dtype=dtype) for _ in range(layers)),
            positions=positions,
            valid=torch.zeros_like(positions, dtype=torch.bool),
            cursor=torch.zeros((), dtype=torch.long, device=like.device),
        )

    @property
    def max_len(self) -> int:
        return self.positions.shape[-1]

    def next_positions(self, mask: Tensor) -> Tensor:
        """Position ids for new tokens (b n) with padding `mask`: they continue each row's count."""
        seen = self.valid.sum(dim=-1, keepdim=True)
        return seen + positions_from_mask(mask)

    # Host bookkeeping that torch.compile must not trace: it would specialise on each count and
    # recompile, possibly in the middle of a CUDA-graph capture.
    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def claim(self, n: int) -> None:
        """Count n more slots on the host, refusing to overflow (the device writes no checks)."""
        if self.length + n > self.max_len:
            raise ValueError(f"KV cache overflow: {self.length} + {n} tokens > {self.max_len}")
        self.length += n

    def reserve(self, positions: Tensor, mask: Tensor) -> Tensor:
        """Claim the next n slots for tokens at `positions` (b|1 n); returns their indices (n)."""
        n = positions.shape[-1]
        self.claim(n)
        slots = self.cursor + torch.arange(n, device=self.cursor.device)
        self.positions.index_copy_(1, slots, positions.expand(self.positions.shape[0], n))
        self.valid.index_copy_(1, slots, mask)
        self.cursor += n
        return slots

    def write(
        self, layer: int, slots: Tensor, keys: Tensor, values: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Store one layer's new (b g n d) keys and values at `slots`; returns all of its slots."""
        self.keys[layer].index_copy_(2, slots, keys)
        self.values[layer].index_copy_(2, slots, values)
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


def additive_mask(visible: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    """The float mask (b|1 h|1 n j) that SDPA adds to its scores: the relative bias (or 0) where
    `visible`, -inf elsewhere.

    Built once per forward: SDPA would otherwise turn a boolean mask into this in three kernels
    in every layer, a tenth of a decode step's launches.
    """
    scores = visible.new_zeros(visible.shape, dtype=dtype) if bias is None else bias.to(dtype)
    return scores.masked_fill(~visible, float("-inf"))


@dataclass(frozen=True)
class AttentionInputs:
    """What every layer's attention needs for one forward pass, computed once by the model."""

    rotary: Rotary | None
    mask: Tensor | None  # (b|1 h|1 n j) from `additive_mask`; None means plain causal
    cache: KVCache | None = None
    cache_slots: Tensor | None = None  # (n) the cache slots of the new tokens


def sdpa_backends(query: Tensor, backends: Sequence[str]) -> AbstractContextManager[None]:
    """Restrict SDPA to `backends`, in that priority, for CUDA tensors.

    Chosen on purpose rather than left to the dispatcher: on the GPU image a decode loop whose
    shapes change each step lost ~50 ms per step inside the cuDNN backend, so it is left out of
    the default list for masked attention (decoding, padded rows) and kept first only for plain
    causal attention, where it is the fastest. On the CPU PyTorch picks between its own kernels,
    so nothing is forced.
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
        causal_backends: Sequence[str],
    ) -> None:
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads
        self.dropout = dropout
        self.backends, self.causal_backends = tuple(backends), tuple(causal_backends)
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
        if inputs.cache is not None and inputs.cache_slots is not None:
            k, v = inputs.cache.write(layer, inputs.cache_slots, k, v)
        out = self._attend(q, k, v, inputs)
        return rearrange(out, "b h n d -> b n (h d)")

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, inputs: AttentionInputs) -> Tensor:
        mask, r = inputs.mask, self.heads // self.kv_heads
        if r == 1 or mask is None:
            # Unmasked grouped attention stays grouped: flash takes fewer k/v heads itself.
            return self._sdpa(q, k, v, mask, grouped=r > 1)
        # With a mask, flash is out (it takes none) and the efficient kernel refuses fewer k/v
        # heads than query heads (torch 2.11), which would leave only math (or cuDNN).
        if q.shape[-2] == 1:
            # One query per head (a decode step): the r query heads of a k/v head become r
            # queries of that head, so its keys and values are read once instead of r times
            # (palm_150m, batch 64, H100: a replayed decode step went from 1.26 to 1.18 ms).
            folded = rearrange(q, "b (g r) 1 d -> b g r d", r=r)
            mask = rearrange(mask.expand(-1, self.heads, -1, -1), "b (g r) 1 j -> b g r j", r=r)
            out = self._sdpa(folded, k, v, mask, grouped=False)
            return rearrange(out, "b g r d -> b (g r) 1 d")
        # Longer inputs broadcast k/v to every head instead (a stride-0 view with one k/v head),
        # which keeps the efficient kernel without copying the mask r times.
        k, v = (repeat(t, "b g j d -> b (g r) j d", r=r) for t in (k, v))
        return self._sdpa(q, k, v, mask, grouped=False)

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, grouped: bool) -> Tensor:
        with sdpa_backends(q, self.backends if exists(mask) else self.causal_backends):
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
