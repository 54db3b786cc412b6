"""Convert state dicts of lucidrains' PaLM-rlhf-pytorch into `rlhf_core.palm.PaLM`'s layout.

The reference keeps each block under `layers.{i}.fn.` (a Residual wrapper) with the same fused
projection layout as ours, so conversion is mostly renaming. What differs by release is the
bias-free LayerNorm, which stores a parameter `gamma` and a zero buffer `beta`:

- "gamma" (2023 releases, the public 150M/410M/1B checkpoints): the weight is `gamma`.
- "offset_one" (current releases): the weight is `gamma + 1` (`gamma` starts at zero).

Both store a tensor called `gamma` with the same shape, so the caller must say which it is;
`detect_layernorm_convention` only helps, and refuses when the values do not make it clear.
`import_reference` refuses a stated convention that the detection contradicts, unless forced.

Buffers the reference saves but we recompute (rotary `inv_freq`, xPos `scale`) are dropped, as
is `to_logits.weight`, which is tied to the token embedding in both models.

Logits are taken from the final LayerNorm's output, as in the 2022 and current releases. Some
early-2023 revisions computed `embeds = norm(x)` but took logits from the un-normalised `x`;
a checkpoint trained with one of those would not reproduce its logits here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

from rlhf_core.palm import PaLMConfig

LayerNormConvention = Literal["gamma", "offset_one"]

_LAYER_KEY = re.compile(r"layers\.(\d+)\.fn\.(.+)")
_BLOCK_RENAMES = {
    "fused_attn_ff_proj.weight": "fused_proj.weight",
    "attn_out.weight": "attn_out.weight",
    "q_scale": "attention.q_scale",
    "k_scale": "attention.k_scale",
}
_RECOMPUTED_BUFFERS = ("rotary_emb.inv_freq", "rotary_emb.scale")
_FF_OUT = re.compile(r"ff_out\.\d+\.weight")  # index 1 or 2: depends on the release's Dropout


class LayerNormConventionError(ValueError):
    """A stated LayerNorm convention that the stored `gamma` values contradict."""

    def __init__(self, stated: LayerNormConvention, detected: LayerNormConvention) -> None:
        super().__init__(
            f"layernorm_convention {stated!r} contradicts the weights: their LayerNorm gammas "
            f"say {detected!r}"
        )
        self.stated = stated
        self.detected = detected


def detect_layernorm_convention(state_dict: Mapping[str, Tensor]) -> LayerNormConvention:
    """Guess the LayerNorm convention from the stored `gamma` values, or refuse.

    Weights near 1 mean "gamma", near 0 "offset_one"; trained weights far from both are
    ambiguous and raise, since a wrong guess silently scales every activation.
    """
    gammas = [t.flatten().float() for k, t in state_dict.items() if k.endswith("norm.gamma")]
    if not gammas:
        raise ValueError("no LayerNorm `gamma` in this state dict: not a PaLM-rlhf-pytorch model")
    median = torch.cat(gammas).median().item()
    if abs(median - 1) < 0.25:
        return "gamma"
    if abs(median) < 0.25:
        return "offset_one"
    raise ValueError(
        f"cannot tell the LayerNorm convention (median gamma {median:.3f}); pass "
        "layernorm_convention='gamma' or 'offset_one' explicitly"
    )


def check_layernorm_convention(
    state_dict: Mapping[str, Tensor], stated: LayerNormConvention
) -> None:
    """Raise LayerNormConventionError where the detection contradicts `stated`; where it
    cannot tell, `stated` stands."""
    try:
        detected = detect_layernorm_convention(state_dict)
    except ValueError:
        return
    if detected != stated:
        raise LayerNormConventionError(stated, detected)


def reference_config(
    state_dict: Mapping[str, Tensor],
    *,
    qk_norm_scale: float | None = None,
    xpos_scale_base: int = 512,
) -> PaLMConfig:
    """Our config for a reference state dict, read from its tensor shapes.

    xPos is on when the dict holds the xPos `scale` buffer (the reference enables it for every
    causal model). With qk-norm weights present, `qk_norm_scale` must be given: releases
    differ (8 where the block applies `qk_scale`, dim_head ** -0.5 where the separate
    Attention class ignores it) and the tensors cannot tell.
    """
    num_tokens, dim = state_dict["token_emb.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := _LAYER_KEY.fullmatch(k)))
    dim_head = 2 * state_dict["layers.0.fn.rotary_emb.inv_freq"].numel()
    heads = state_dict["layers.0.fn.attn_out.weight"].shape[1] // dim_head
    ff_inner = next(t for k, t in state_dict.items() if _is_layer0_ff_out(k)).shape[1]
    qk_norm = "layers.0.fn.q_scale" in state_dict
    if qk_norm and qk_norm_scale is None:
        raise ValueError("this model uses qk-norm: pass its softmax scale as qk_norm_scale")
    if ff_inner % dim:
        raise ValueError(f"feed-forward width {ff_inner} is not a multiple of dim {dim}")
    return PaLMConfig(
        num_tokens=num_tokens,
        dim=dim,
        depth=depth,
        heads=heads,
        dim_head=dim_head,
        kv_heads=1,
        ff_mult=ff_inner // dim,
        use_xpos="layers.0.fn.rotary_emb.scale" in state_dict,
        xpos_scale_base=xpos_scale_base,
        qk_norm=qk_norm,
        qk_norm_scale=qk_norm_scale if qk_norm_scale is not None else 8.0,
    )


def _is_layer0_ff_out(key: str) -> bool:
    match = _LAYER_KEY.fullmatch(key)
    return match is not None and match.group(1) == "0" and bool(_FF_OUT.fullmatch(match.group(2)))


def convert_reference_state_dict(
    state_dict: Mapping[str, Tensor], *, layernorm_convention: LayerNormConvention
) -> dict[str, Tensor]:
    """Our state dict for a reference one; raises on anything it does not understand.

    Unmerged LoRA scopes (`finetune_modules.*`) are refused rather than dropped: merge them in
    the reference first, or the converted model would silently lose the fine-tuning.
    """
    if layernorm_convention not in ("gamma", "offset_one"):
        raise ValueError("layernorm_convention must be 'gamma' or 'offset_one'")
    converted: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        target = _convert_key(key, tensor, state_dict)
        if target is None:
            continue
        if key.endswith("norm.gamma") and layernorm_convention == "offset_one":
            tensor = tensor + 1
        converted[target] = tensor.clone()
    return converted


def _convert_key(key: str, tensor: Tensor, state_dict: Mapping[str, Tensor]) -> str | None:
    """Our name for a reference key; None for one we drop after checking it carries nothing."""
    if key == "token_emb.weight":
        return key
    if key == "to_logits.weight":
        if not torch.equal(tensor, state_dict["token_emb.weight"]):
            raise ValueError("to_logits is not tied to token_emb; this model cannot hold it")
        return None
    if key.endswith("norm.beta"):
        if torch.count_nonzero(tensor):
            raise ValueError(f"{key} is not zero; our LayerNorm has no bias")
        return None
    if key == "norm.gamma":
        return "norm.weight"
    match = _LAYER_KEY.fullmatch(key)
    if match is None:
        raise ValueError(f"unexpected key {key!r} (merge LoRA scopes before converting)")
    layer, name = match.groups()
    if name in _RECOMPUTED_BUFFERS:
        return None
    if name == "norm.gamma":
        return f"layers.{layer}.norm.weight"
    if _FF_OUT.fullmatch(name):
        return f"layers.{layer}.ff_out.weight"
    if name in _BLOCK_RENAMES:
        return f"layers.{layer}.{_BLOCK_RENAMES[name]}"
    raise ValueError(f"unexpected key {key!r}")


def import_reference(
    state_dict: Mapping[str, Tensor],
    *,
    layernorm_convention: LayerNormConvention,
    force_layernorm_convention: bool = False,
    qk_norm_scale: float | None = None,
    xpos_scale_base: int = 512,
) -> tuple[PaLMConfig, dict[str, Tensor]]:
    """Config and state dict for `PaLM(config).load_state_dict(state)` from a reference dict.

    A `layernorm_convention` that `detect_layernorm_convention` contradicts raises
    LayerNormConventionError unless `force_layernorm_convention` is set.
    """
    config = reference_config(
        state_dict, qk_norm_scale=qk_norm_scale, xpos_scale_base=xpos_scale_base
    )
    if not force_layernorm_convention:
        check_layernorm_convention(state_dict, layernorm_convention)
    return config, convert_reference_state_dict(
        state_dict, layernorm_convention=layernorm_convention
    )
