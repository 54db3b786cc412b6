"""PaLM (Chowdhery et al. 2022): a decoder of parallel attention + feed-forward blocks.

Axes: b batch, n sequence, j key slots, e model dim, v vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlhf_core.attention import (
    SDPA_BACKENDS,
    Attention,
    AttentionInputs,
    KVCache,
    RelativePositionBias,
    Rotary,
    additive_mask,
    positions_from_mask,
    visibility_mask,
)
from rlhf_core.helpers import default, exists

PositionEncoding = Literal["rotary", "relative_bias"]
FeedForward = Literal["swiglu", "geglu"]


@dataclass(frozen=True)
class PaLMConfig:
    """Everything needed to rebuild a PaLM; stored with checkpoints (`dataclasses.asdict`).

    The defaults with `num_tokens=20000, dim=512, depth=12` give the reference implementations'
    55,073,280 parameters: multi-query attention (`kv_heads=1`), `ff_mult=4`, tied embedding.
    LaMDA's variant: `position_encoding="relative_bias"` and `ff_activation="geglu"`.
    """

    num_tokens: int
    dim: int
    depth: int
    heads: int = 8
    dim_head: int = 64
    kv_heads: int = 1  # 1: multi-query (PaLM); `heads`: multi-head; in between: grouped-query
    ff_mult: int = 4
    ff_activation: FeedForward = "swiglu"
    position_encoding: PositionEncoding = "rotary"
    use_xpos: bool = False
    xpos_scale_base: int = 512
    relative_buckets: int = 32
    relative_max_distance: int = 128
    qk_norm: bool = False
    # With unit-length q and k the logits are cosines times the learned gains; this fixed
    # factor sets the softmax temperature (the reference's `qk_scale`).
    qk_norm_scale: float = 8.0
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    # SDPA backends allowed on CUDA, by priority; cuDNN is left out on purpose (see attention.py).
    sdpa_backends: tuple[str, ...] = ("flash", "efficient", "math")
    # The same for plain causal attention with no mask (training on packed rows): there cuDNN's
    # kernel is the fastest on an H100 (palm_150m training step 40.8 ms, 45.8 with flash). Its
    # per-shape set-up is paid once per (batch, length), which a training run keeps fixed.
    sdpa_causal_backends: tuple[str, ...] = ("cudnn", "flash", "efficient", "math")

    def __post_init__(self) -> None:
        # Accept a list, as a JSON round trip of `asdict` gives, so checkpoints rebuild equal.
        for name in ("sdpa_backends", "sdpa_causal_backends"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads")
        if self.position_encoding == "rotary" and self.dim_head % 2:
            raise ValueError("rotary embeddings need an even dim_head")
        if self.use_xpos and self.position_encoding != "rotary":
            raise ValueError("xPos scales rotary embeddings; it needs position_encoding='rotary'")
        if self.ff_activation not in GATES:
            raise ValueError(f"ff_activation must be one of {sorted(GATES)}")
        if self.position_encoding not in ("rotary", "relative_bias"):
            raise ValueError("position_encoding must be 'rotary' or 'relative_bias'")
        for name in ("sdpa_backends", "sdpa_causal_backends"):
            backends = getattr(self, name)
            if set(backends) - set(SDPA_BACKENDS) or not backends:
                raise ValueError(f"{name} must be a non-empty subset of {sorted(SDPA_BACKENDS)}")


def swiglu(x: Tensor) -> Tensor:
    """SwiGLU (Shazeer 2020): the first half is the value, the second half its gate."""
    value, gate = x.chunk(2, dim=-1)
    return value * F.silu(gate)


def geglu(x: Tensor) -> Tensor:
    value, gate = x.chunk(2, dim=-1)
    return value * F.gelu(gate)


GATES: dict[str, Callable[[Tensor], Tensor]] = {"swiglu": swiglu, "geglu": geglu}


class ParallelBlock(nn.Module):
    """y = x + attention(norm(x)) + feed_forward(norm(x)), one fused input projection for both.

    The projection's output is laid out [q (h d), k (g d), v (g d), ff value (f), ff gate (f)],
    the reference implementation's order, so its weights import without reshuffling.
    """

    def __init__(self, config: PaLMConfig) -> None:
        super().__init__()
        attn_inner = config.heads * config.dim_head
        kv_inner = config.kv_heads * config.dim_head
        ff_inner = config.dim * config.ff_mult
        self.split_sizes = (attn_inner, kv_inner, kv_inner, 2 * ff_inner)
        self.norm = nn.LayerNorm(config.dim, bias=False)
        self.fused_proj = nn.Linear(config.dim, sum(self.split_sizes), bias=False)
        self.attention = Attention(
            heads=config.heads,
            kv_heads=config.kv_heads,
            dim_head=config.dim_head,
            qk_norm_scale=config.qk_norm_scale if config.qk_norm else None,
            dropout=config.attn_dropout,
            backends=config.sdpa_backends,
            causal_backends=config.sdpa_causal_backends,
        )
        self.attn_out = nn.Linear(attn_inner, config.dim, bias=False)
        self.gate = GATES[config.ff_activation]
        self.ff_dropout = nn.Dropout(config.ff_dropout)
        self.ff_out = nn.Linear(ff_inner, config.dim, bias=False)

    def forward(self, x: Tensor, inputs: AttentionInputs, layer: int) -> Tensor:
        q, k, v, ff = self.fused_proj(self.norm(x)).split(self.split_sizes, dim=-1)
        attended = self.attn_out(self.attention(q, k, v, inputs, layer))
        out: Tensor = x + attended + self.ff_out(self.ff_dropout(self.gate(ff)))
        return out


class PaLM(nn.Module):
    """The language model. `PaLM(config)` or the familiar `PaLM(num_tokens=..., dim=..., ...)`."""

    def __init__(self, config: PaLMConfig | None = None, **fields: Any) -> None:
        super().__init__()
        if exists(config) == bool(fields):
            raise TypeError("pass either a PaLMConfig or its fields as keywords, not both")
        self.config = config if config is not None else PaLMConfig(**fields)
        c = self.config
        self.token_emb = nn.Embedding(c.num_tokens, c.dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.relative_bias = (
            RelativePositionBias(c.heads, c.relative_buckets, c.relative_max_distance)
            if c.position_encoding == "relative_bias"
            else None
        )
        self.layers = nn.ModuleList(ParallelBlock(c) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, bias=False)

    def forward(
        self,
        tokens: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
    ) -> Tensor:
        """Next-token logits (b n v), float32, for `tokens` (b n).

        attention_mask (b n): True for real tokens. Rows may be left- or right-padded; padding
            never changes a real token's output, and positions skip it unless `position_ids`
            (b n) are given.
        cache: a KVCache from `new_cache`; the tokens are appended to it and attend to all
            earlier ones.
        return_hidden: return the final normalised embeddings (b n e) instead of logits.
        """
        inputs = self._attention_inputs(tokens, attention_mask, position_ids, cache)
        x = self.token_emb(tokens)
        for layer, block in enumerate(self.layers):
            x = block(x, inputs, layer)
        hidden = self.norm(x)
        return hidden if return_hidden else self.logits_from_hidden(hidden)

    def logits_from_hidden(self, hidden: Tensor) -> Tensor:
        """The tied output head; float32 so losses and sampling never run in half precision."""
        return F.linear(hidden, self.token_emb.weight).float()

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty KV cache for `batch` rows of up to `max_len` tokens, beside the weights.

        In the dtype the keys will have: the weights', or autocast's when it is on (float32
        weights under bf16 autocast produce bf16 keys, and a float32 cache would refuse them).
        """
        c = self.config
        weight = self.token_emb.weight
        device_type = weight.device.type
        autocast = torch.is_autocast_enabled(device_type)
        return KVCache.empty(
            layers=c.depth,
            batch=batch,
            max_len=max_len,
            kv_heads=c.kv_heads,
            dim_head=c.dim_head,
            like=weight,
            dtype=torch.get_autocast_dtype(device_type) if autocast else weight.dtype,
        )

    def _attention_inputs(
        self,
        tokens: Tensor,
        mask: Tensor | None,
        position_ids: Tensor | None,
        cache: KVCache | None,
    ) -> AttentionInputs:
        mask = None if mask is None else mask.bool()
        slots = None
        if cache is None:
            positions, visible = self._uncached_layout(tokens, mask, position_ids)
            key_positions = positions
        else:
            mask = default(mask, torch.ones_like(tokens, dtype=torch.bool))
            positions = position_ids if position_ids is not None else cache.next_positions(mask)
            slots = cache.reserve(positions, mask)
            every_slot = torch.arange(cache.max_len, device=tokens.device)
            visible = visibility_mask(slots, every_slot, cache.valid)
            key_positions = cache.positions
        scores_mask = None
        if visible is not None:
            bias = None
            if self.relative_bias is not None:
                bias = self.relative_bias(positions, key_positions)
            scores_mask = additive_mask(visible, bias, self.token_emb.weight.dtype)
        # xPos centre: the reference's (the middle of the sequence), or the middle of the cache,
        # the same for every step of one generation.
        centre = (tokens.shape[-1] if cache is None else cache.max_len) // 2
        return AttentionInputs(self._rotary(positions, centre), scores_mask, cache, slots)

    def _uncached_layout(
        self, tokens: Tensor, mask: Tensor | None, position_ids: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """Positions (b|1 n) and the visibility mask of a forward pass without a cache."""
        n = tokens.shape[-1]
        if position_ids is not None:
            positions = position_ids
        elif mask is not None:
            positions = positions_from_mask(mask)
        else:
            positions = torch.arange(n, device=tokens.device)[None]
        if mask is None and self.relative_bias is None:
            return positions, None  # None lets SDPA run its fused causal kernel
        slots = torch.arange(n, device=tokens.device)
        return positions, visibility_mask(slots, slots, mask)

    def _rotary(self, positions: Tensor, xpos_centre: int) -> Rotary | None:
        c = self.config
        if c.position_encoding != "rotary":
            return None
        scale_base = c.xpos_scale_base if c.use_xpos else None
        return Rotary.at(positions, c.dim_head, scale_base, xpos_centre)


# Presets: plain functions, so a run stores the resulting config, not a name.


def tiny(num_tokens: int = 256) -> PaLMConfig:
    """For CPU tests and the demo: about 1M parameters with a byte-sized vocabulary."""
    return PaLMConfig(num_tokens=num_tokens, dim=128, depth=4, heads=4, dim_head=32)


def mini(num_tokens: int = 512) -> PaLMConfig:
    """The embedded demo's model: about 4M parameters with a 512-token vocabulary, trained in
    minutes on two CPU cores (`rlhf_core.demo`)."""
    return PaLMConfig(num_tokens=num_tokens, dim=256, depth=4, heads=4, dim_head=64)


def _public_palm(num_tokens: int, dim: int, depth: int) -> PaLMConfig:
    # The public PaLM checkpoints (GPT-NeoX vocabulary padded to 50304, 8 heads of 128) were
    # trained with xPos; matching it lets their weights import into these presets.
    return PaLMConfig(
        num_tokens=num_tokens, dim=dim, depth=depth, heads=8, dim_head=128, use_xpos=True
    )


def palm_150m(num_tokens: int = 50304) -> PaLMConfig:
    return _public_palm(num_tokens, dim=768, depth=12)


def palm_410m(num_tokens: int = 50304) -> PaLMConfig:
    return _public_palm(num_tokens, dim=1024, depth=24)


def palm_1b(num_tokens: int = 50304) -> PaLMConfig:
    return _public_palm(num_tokens, dim=2048, depth=16)


def lamda_small(num_tokens: int = 32000) -> PaLMConfig:
    """LaMDA-style (Thoppilan et al. 2022): T5 relative position bias, GEGLU, multi-head."""
    return PaLMConfig(
        num_tokens=num_tokens,
        dim=512,
        depth=8,
        heads=8,
        dim_head=64,
        kv_heads=8,
        ff_activation="geglu",
        position_encoding="relative_bias",
    )
