"""Small PaLM configurations covering every attention and feed-forward variant, for CPU tests."""

from __future__ import annotations

import dataclasses

import torch

from rlhf_core.palm import PaLM, PaLMConfig

SMALL = PaLMConfig(num_tokens=64, dim=32, depth=2, heads=4, dim_head=8)
VARIANTS = {
    "multi_query": SMALL,
    "qk_norm": dataclasses.replace(SMALL, qk_norm=True),
    "xpos": dataclasses.replace(SMALL, use_xpos=True, xpos_scale_base=16),
    "relative_bias_geglu": dataclasses.replace(
        SMALL, position_encoding="relative_bias", ff_activation="geglu", relative_max_distance=8
    ),
    "grouped_query": dataclasses.replace(SMALL, kv_heads=2),
    "multi_head": dataclasses.replace(SMALL, kv_heads=4),
}


def make_model(config: PaLMConfig) -> PaLM:
    torch.manual_seed(0)
    model = PaLM(config).eval()
    if model.relative_bias is not None:
        # Zero-initialised biases would hide a wrong bucket; make every bucket distinct.
        torch.nn.init.normal_(model.relative_bias.embedding.weight)
    return model
