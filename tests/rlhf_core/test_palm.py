import dataclasses
import json
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from rlhf_core.palm import (
    PaLM,
    PaLMConfig,
    lamda_small,
    palm_1b,
    palm_150m,
    palm_410m,
    tiny,
)
from tests.rlhf_core.model_variants import SMALL, VARIANTS, make_model


def parameter_count(config: PaLMConfig) -> int:
    with torch.device("meta"):  # counts shapes without allocating a billion floats
        return sum(p.numel() for p in PaLM(config).parameters())


def test_the_familiar_keyword_form_has_exactly_the_reference_parameter_count() -> None:
    import rlhf_core  # the package itself exports the model, as the reference packages do

    with torch.device("meta"):
        model = rlhf_core.PaLM(num_tokens=20000, dim=512, depth=12, heads=8, dim_head=64)
    assert sum(p.numel() for p in model.parameters()) == 55_073_280
    assert model.config == PaLMConfig(num_tokens=20000, dim=512, depth=12, heads=8, dim_head=64)


# Per block: norm e + fused e*(h*d + 2*d + 2*4e) + attn_out h*d*e + ff_out 4e*e; plus the tied
# embedding v*e and the final norm e. With v = 50304, h*d = 1024:
#   150m: 50304*768 + 12*(768 + 768*7424 + 1024*768 + 3072*768) + 768
#   410m: 50304*1024 + 24*(1024 + 1024*9472 + 1024*1024 + 4096*1024) + 1024
#   1b:   50304*2048 + 16*(2048 + 2048*17664 + 1024*2048 + 8192*2048) + 2048
# lamda_small (32000 tokens, 8 full heads of 64, relative bias 32 buckets x 8 heads):
#   32000*512 + 32*8 + 8*(512 + 512*(512 + 2*512 + 2*2048) + 512*512 + 2048*512) + 512
@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        (palm_150m, 144_811_776),
        (palm_410m, 410_149_888),
        (palm_1b, 983_861_248),
        (lamda_small, 49_943_296),
    ],
)
def test_presets_have_the_parameter_counts_of_their_shapes(
    preset: Callable[[], PaLMConfig], expected: int
) -> None:
    assert parameter_count(preset()) == expected


def test_presets_take_a_vocabulary_override() -> None:
    assert palm_150m(num_tokens=1000).num_tokens == 1000
    assert tiny(num_tokens=300).num_tokens == 300
    assert lamda_small().position_encoding == "relative_bias"
    assert lamda_small().ff_activation == "geglu"


def test_the_config_survives_a_json_round_trip() -> None:
    config = dataclasses.replace(tiny(), qk_norm=True, sdpa_backends=("efficient", "math"))
    assert PaLMConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"heads": 4, "kv_heads": 3}, "multiple of kv_heads"),
        ({"sdpa_backends": ("warp",)}, "sdpa_backends"),
        ({"sdpa_causal_backends": ()}, "sdpa_causal_backends"),
        ({"use_xpos": True, "position_encoding": "relative_bias"}, "xPos"),
        ({"ff_activation": "relu"}, "ff_activation"),
    ],
)
def test_the_config_rejects_inconsistent_fields(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SMALL, **fields)


def test_the_model_takes_a_config_or_keywords_but_not_both() -> None:
    with pytest.raises(TypeError):
        PaLM(SMALL, dim=16)


def test_there_are_no_biases_and_the_output_head_is_the_embedding() -> None:
    model = PaLM(SMALL)
    assert not [name for name, _ in model.named_parameters() if "bias" in name]
    tokens = torch.randint(0, 64, (1, 5))
    hidden = model(tokens, return_hidden=True)
    torch.testing.assert_close(model(tokens), hidden @ model.token_emb.weight.T)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_future_token_never_changes_past_logits(variant: str) -> None:
    model = make_model(VARIANTS[variant])
    tokens = torch.randint(0, 64, (1, 8))
    changed = tokens.clone()
    changed[0, 5:] = (changed[0, 5:] + 1) % 64
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


@pytest.mark.parametrize("variant", VARIANTS)
def test_left_padding_never_changes_a_real_rows_logits(variant: str) -> None:
    model = make_model(VARIANTS[variant])
    row = torch.randint(1, 64, (1, 5))
    padded = torch.cat((torch.zeros(1, 3, dtype=torch.long), row), dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 5])
    with torch.no_grad():
        alone, in_padding = model(row), model(padded, attention_mask=mask)
    torch.testing.assert_close(in_padding[:, 3:], alone, rtol=1e-4, atol=1e-5)


def test_right_padding_never_changes_a_real_rows_logits() -> None:
    model = make_model(VARIANTS["relative_bias_geglu"])
    row = torch.randint(1, 64, (1, 5))
    padded = torch.cat((row, torch.zeros(1, 3, dtype=torch.long)), dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    with torch.no_grad():
        alone, in_padding = model(row), model(padded, attention_mask=mask)
    torch.testing.assert_close(in_padding[:, :5], alone, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(in_padding).all()


def test_batch_composition_never_changes_a_rows_logits() -> None:
    model = make_model(VARIANTS["grouped_query"])
    rows = torch.randint(1, 64, (3, 6))
    mask = torch.tensor([[True] * 6, [False, False] + [True] * 4, [True] * 3 + [False] * 3])
    with torch.no_grad():
        together = model(rows, attention_mask=mask)
        for i in range(3):
            alone = model(rows[i : i + 1], attention_mask=mask[i : i + 1])
            torch.testing.assert_close(together[i][mask[i]], alone[0][mask[i]])


def test_explicit_position_ids_override_the_ones_derived_from_padding() -> None:
    model = make_model(VARIANTS["relative_bias_geglu"])
    tokens = torch.randint(1, 64, (1, 4))
    with torch.no_grad():
        derived = model(tokens)
        shifted = model(tokens, position_ids=torch.tensor([[0, 2, 4, 6]]))
    assert not torch.allclose(derived, shifted)


def test_qk_norm_changes_outputs_and_its_scales_train() -> None:
    plain, normed = make_model(SMALL), make_model(VARIANTS["qk_norm"])
    tokens = torch.randint(0, 64, (2, 8))
    assert not torch.allclose(plain(tokens), normed(tokens))

    normed.train()
    optimiser = torch.optim.SGD(normed.parameters(), lr=0.5)
    q_scale = normed.layers[0].attention.q_scale
    start = q_scale.detach().clone()
    losses = []
    for _ in range(5):
        logits = normed(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(q_scale, start)


def test_xpos_and_relative_bias_each_change_the_outputs() -> None:
    tokens = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        outputs = [make_model(VARIANTS[v])(tokens) for v in ("multi_query", "xpos")]
        relative = make_model(VARIANTS["relative_bias_geglu"])
        with_bias = relative(tokens)
        torch.nn.init.zeros_(relative.relative_bias.embedding.weight)
        without_bias = relative(tokens)
    assert not torch.allclose(*outputs)
    assert not torch.allclose(with_bias, without_bias)


def test_grouped_query_attention_shares_each_kv_head_between_heads() -> None:
    model = PaLM(VARIANTS["grouped_query"])
    # q: 4 heads of 8; k and v: 2 heads of 8 each; feed-forward value and gate: 2 * 4 * 32.
    assert model.layers[0].fused_proj.weight.shape == (4 * 8 + 2 * 2 * 8 + 2 * 128, 32)
    assert model(torch.randint(0, 64, (2, 5))).shape == (2, 5, 64)


def test_logits_stay_float32_when_the_model_runs_in_bfloat16() -> None:
    model = PaLM(SMALL).to(torch.bfloat16)
    logits = model(torch.randint(0, 64, (1, 4)))
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
