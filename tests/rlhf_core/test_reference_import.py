"""Import parity against an independent re-implementation of PaLM-rlhf-pytorch's forward pass.

`reference_logits` below is written from the reference's description, in its own key layout
and with its own conventions (xPos exponent centred on the sequence middle, masking with
-finfo.max, logits from the tied embedding), deliberately not reusing any rlhf_core code.
"""

import pytest
import torch
import torch.nn.functional as F

from rlhf_core.palm import PaLM, palm_150m
from rlhf_core.reference_import import (
    LayerNormConventionError,
    detect_layernorm_convention,
    import_reference,
    reference_config,
)

VOCAB, DIM, DEPTH, HEADS, DIM_HEAD, FF_MULT = 48, 32, 2, 4, 8, 4


def reference_state_dict(
    convention: str, *, xpos: bool = True, qk_norm: bool = False, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random weights in the reference's key layout (and, with xpos=False, its 2022 layout)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    def gamma() -> torch.Tensor:
        return randn(DIM, std=0.1) + (1.0 if convention == "gamma" else 0.0)

    emb = randn(VOCAB, DIM)
    half = torch.arange(0, DIM_HEAD, 2).float()
    fused_rows = HEADS * DIM_HEAD + 2 * DIM_HEAD + 2 * FF_MULT * DIM
    state = {"token_emb.weight": emb, "to_logits.weight": emb}
    for i in range(DEPTH):
        p = f"layers.{i}.fn."
        state[p + "norm.gamma"], state[p + "norm.beta"] = gamma(), torch.zeros(DIM)
        state[p + "rotary_emb.inv_freq"] = 1.0 / 10000 ** (half / DIM_HEAD)
        if xpos:
            state[p + "rotary_emb.scale"] = (half + 0.4 * DIM_HEAD) / (1.4 * DIM_HEAD)
        state[p + "fused_attn_ff_proj.weight"] = randn(fused_rows, DIM, std=DIM**-0.5)
        state[p + "attn_out.weight"] = randn(DIM, HEADS * DIM_HEAD, std=0.3)
        state[p + ("ff_out.2.weight" if xpos else "ff_out.1.weight")] = randn(
            DIM, FF_MULT * DIM, std=0.1
        )
        if qk_norm:
            state[p + "q_scale"] = 1 + randn(DIM_HEAD, std=0.1)
            state[p + "k_scale"] = 1 + randn(DIM_HEAD, std=0.1)
    state["norm.gamma"], state["norm.beta"] = gamma(), torch.zeros(DIM)
    return state


def rotate_half(t: torch.Tensor) -> torch.Tensor:
    return torch.cat((-t[..., DIM_HEAD // 2 :], t[..., : DIM_HEAD // 2]), dim=-1)


def reference_logits(
    state: dict[str, torch.Tensor],
    tokens: torch.Tensor,
    convention: str,
    qk_scale: float,
    xpos_scale_base: int = 512,
) -> torch.Tensor:
    batch, n = tokens.shape
    offset = 1.0 if convention == "offset_one" else 0.0

    def norm(x: torch.Tensor, prefix: str) -> torch.Tensor:
        weight = state[prefix + "norm.gamma"] + offset
        return F.layer_norm(x, (DIM,), weight, state[prefix + "norm.beta"])

    t = torch.arange(n).float()
    freqs = torch.outer(t, state["layers.0.fn.rotary_emb.inv_freq"])
    freqs = torch.cat((freqs, freqs), dim=-1)
    if "layers.0.fn.rotary_emb.scale" in state:
        power = (t - n // 2) / xpos_scale_base  # centred on the sequence middle, as the reference
        scale = state["layers.0.fn.rotary_emb.scale"] ** power[:, None]
        scale = torch.cat((scale, scale), dim=-1)
    else:
        scale = torch.ones(1)
    future = torch.ones(n, n, dtype=torch.bool).triu(1)

    x = state["token_emb.weight"][tokens]
    for i in range(DEPTH):
        p = f"layers.{i}.fn."
        fused = norm(x, p) @ state[p + "fused_attn_ff_proj.weight"].T
        sizes = (HEADS * DIM_HEAD, DIM_HEAD, DIM_HEAD, 2 * FF_MULT * DIM)
        q, k, v, ff = fused.split(sizes, dim=-1)
        q = q.reshape(batch, n, HEADS, DIM_HEAD).transpose(1, 2)
        if p + "q_scale" in state:
            q = F.normalize(q, dim=-1) * state[p + "q_scale"]
            k = F.normalize(k, dim=-1) * state[p + "k_scale"]
        q = (q * freqs.cos() + rotate_half(q) * freqs.sin()) * scale
        k = (k * freqs.cos() + rotate_half(k) * freqs.sin()) * scale**-1
        sim = torch.einsum("bhid,bjd->bhij", q, k) * qk_scale
        sim = sim.masked_fill(future, -torch.finfo(sim.dtype).max)
        out = torch.einsum("bhij,bjd->bhid", sim.softmax(dim=-1), v)
        out = out.transpose(1, 2).reshape(batch, n, HEADS * DIM_HEAD)
        value, gate = ff.chunk(2, dim=-1)
        ff_key = next(key for key in state if key.startswith(p + "ff_out."))
        x = x + out @ state[p + "attn_out.weight"].T + (F.silu(gate) * value) @ state[ff_key].T
    return norm(x, "") @ state["to_logits.weight"].T


@pytest.mark.parametrize(
    ("convention", "xpos", "qk_norm"),
    [
        ("gamma", True, False),
        ("offset_one", True, False),
        ("offset_one", True, True),
        ("gamma", False, False),
    ],
)
def test_imported_model_reproduces_the_reference_logits(
    convention: str, xpos: bool, qk_norm: bool
) -> None:
    state = reference_state_dict(convention, xpos=xpos, qk_norm=qk_norm)
    qk_scale = 8.0 if qk_norm else DIM_HEAD**-0.5
    config, converted = import_reference(
        state,
        layernorm_convention=convention,
        qk_norm_scale=8.0 if qk_norm else None,
        xpos_scale_base=4,  # a small base makes xPos matter over 11 tokens
    )
    model = PaLM(config)
    model.load_state_dict(converted)  # strict: every key matches, none is left over
    tokens = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference_logits(state, tokens, convention, qk_scale, xpos_scale_base=4)
        torch.testing.assert_close(model(tokens), expected, rtol=1e-4, atol=1e-4)
    assert config.use_xpos == xpos and config.qk_norm == qk_norm


def test_the_wrong_convention_gives_different_logits() -> None:
    state = reference_state_dict("gamma")
    _, converted = import_reference(
        state, layernorm_convention="offset_one", force_layernorm_convention=True
    )
    config, _ = import_reference(state, layernorm_convention="gamma")
    model = PaLM(config)
    model.load_state_dict(converted)
    tokens = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        expected = reference_logits(state, tokens, "gamma", DIM_HEAD**-0.5)
        assert not torch.allclose(model(tokens), expected, atol=1e-2)


def test_detection_recognises_each_convention_and_refuses_when_unclear() -> None:
    assert detect_layernorm_convention(reference_state_dict("gamma")) == "gamma"
    assert detect_layernorm_convention(reference_state_dict("offset_one")) == "offset_one"
    unclear = reference_state_dict("gamma")
    for key in unclear:
        if key.endswith("norm.gamma"):
            unclear[key] = torch.full((DIM,), 0.5)
    with pytest.raises(ValueError, match="explicitly"):
        detect_layernorm_convention(unclear)


def test_a_stated_convention_that_the_detection_contradicts_is_refused_unless_forced() -> None:
    state = reference_state_dict("gamma")
    with pytest.raises(LayerNormConventionError, match="'offset_one' contradicts") as error:
        import_reference(state, layernorm_convention="offset_one")
    assert (error.value.stated, error.value.detected) == ("offset_one", "gamma")
    _, forced = import_reference(
        state, layernorm_convention="offset_one", force_layernorm_convention=True
    )
    assert torch.equal(forced["norm.weight"], state["norm.gamma"] + 1)


def test_where_the_detection_cannot_tell_the_stated_convention_decides() -> None:
    state = reference_state_dict("gamma")
    for key in state:
        if key.endswith("norm.gamma"):
            state[key] = torch.full((DIM,), 0.5)
    for convention, weight in (("gamma", 0.5), ("offset_one", 1.5)):
        _, converted = import_reference(state, layernorm_convention=convention)
        assert torch.equal(converted["norm.weight"], torch.full((DIM,), weight))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("norm.beta", torch.ones(DIM), "not zero"),
        ("to_logits.weight", torch.zeros(VOCAB, DIM), "not tied"),
        ("finetune_modules.actor.0.0.A", torch.zeros(DIM, 8), "merge LoRA"),
    ],
)
def test_import_refuses_what_our_model_cannot_hold(
    key: str, value: torch.Tensor, message: str
) -> None:
    state = reference_state_dict("gamma") | {key: value}
    with pytest.raises(ValueError, match=message):
        import_reference(state, layernorm_convention="gamma")


def test_qk_norm_import_needs_its_softmax_scale_stated() -> None:
    with pytest.raises(ValueError, match="qk_norm_scale"):
        import_reference(reference_state_dict("gamma", qk_norm=True), layernorm_convention="gamma")


def test_the_public_150m_layout_maps_onto_the_palm_150m_preset() -> None:
    vocab, dim, depth, dim_head, inner = 50304, 768, 12, 128, 8 * 128
    state = {"token_emb.weight": torch.empty(vocab, dim, device="meta")}
    for i in range(depth):
        p = f"layers.{i}.fn."
        state[p + "rotary_emb.inv_freq"] = torch.empty(dim_head // 2, device="meta")
        state[p + "rotary_emb.scale"] = torch.empty(dim_head // 2, device="meta")
        state[p + "attn_out.weight"] = torch.empty(dim, inner, device="meta")
        state[p + "ff_out.2.weight"] = torch.empty(dim, 4 * dim, device="meta")
    assert reference_config(state) == palm_150m()
