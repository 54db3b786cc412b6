import pytest
import torch

from rlhf_core.attention import (
    KVCache,
    RelativePositionBias,
    Rotary,
    additive_mask,
    causal_relative_bucket,
    positions_from_mask,
    visibility_mask,
)
from rlhf_core.palm import PaLMConfig
from tests.rlhf_core.model_variants import VARIANTS, make_model


@pytest.mark.parametrize("xpos_scale_base", [None, 32])
def test_rotary_scores_depend_only_on_the_distance_between_positions(
    xpos_scale_base: int | None,
) -> None:
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, 16).unbind(0)

    def score(query_position: int, key_position: int) -> torch.Tensor:
        query = Rotary.at(torch.tensor([[query_position]]), 16, xpos_scale_base)
        key = Rotary.at(torch.tensor([[key_position]]), 16, xpos_scale_base)
        return (query.rotate_queries(q) * key.rotate_keys(k)).sum()

    near, far = score(7, 3), score(107, 103)
    torch.testing.assert_close(near, far, rtol=1e-4, atol=1e-5)


def test_xpos_shrinks_the_score_of_a_distant_key() -> None:
    q = torch.ones(1, 1, 1, 16)
    plain = Rotary.at(torch.tensor([[0]]), 16, None)
    query = Rotary.at(torch.tensor([[40]]), 16, 8)
    key = Rotary.at(torch.tensor([[0]]), 16, 8)
    decayed = (query.rotate_queries(q) * key.rotate_keys(q)).norm()
    assert decayed < (plain.rotate_queries(q) * plain.rotate_keys(q)).norm()


def test_the_xpos_centre_cancels_in_the_attention_scores() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 1, 3, 16).unbind(0)
    positions = torch.tensor([[0, 900, 4000]])

    def scores(centre: int) -> torch.Tensor:
        rotary = Rotary.at(positions, 16, 512, centre)
        return torch.einsum("bhid,bhjd->bhij", rotary.rotate_queries(q), rotary.rotate_keys(k))

    torch.testing.assert_close(scores(0), scores(2000), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_xpos_stays_finite_over_the_public_checkpoints_8k_context(dtype: torch.dtype) -> None:
    # The public PaLM checkpoints' xPos (scale base 512) at their training length. From position
    # 0 instead of the sequence middle, keys overflow float16 from about position 4.5k.
    config = PaLMConfig(
        num_tokens=64, dim=64, depth=1, heads=2, dim_head=64, use_xpos=True, xpos_scale_base=512
    )
    model = make_model(config).to(dtype)
    tokens = torch.randint(0, 64, (1, 8192), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(tokens)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_cached_xpos_keys_stay_finite_to_the_end_of_an_8k_cache(dtype: torch.dtype) -> None:
    config = PaLMConfig(
        num_tokens=64, dim=64, depth=1, heads=2, dim_head=64, use_xpos=True, xpos_scale_base=512
    )
    model = make_model(config).to(dtype)
    cache = model.new_cache(batch=1, max_len=8192)
    prompt = torch.randint(0, 64, (1, 8191), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(prompt, cache=cache)
        logits = model(prompt[:, -1:], cache=cache)
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(keys).all() for keys in cache.keys)


def test_relative_buckets_are_exact_near_and_logarithmic_far() -> None:
    distance = torch.tensor([-3, 0, 1, 15, 16, 40, 127, 128, 10_000])
    buckets = causal_relative_bucket(distance, num_buckets=32, max_distance=128)
    assert buckets[:4].tolist() == [0, 0, 1, 15]  # the future and the exact half
    assert buckets[4] == 16 and buckets[5] > 16
    assert buckets[6] <= 31 and buckets[7:].tolist() == [31, 31]
    assert (buckets[1:].diff() >= 0).all()


def test_relative_bias_depends_only_on_distance() -> None:
    torch.manual_seed(0)
    bias = RelativePositionBias(heads=2, num_buckets=8, max_distance=16)
    torch.nn.init.normal_(bias.embedding.weight)
    first = bias(torch.tensor([[5]]), torch.tensor([[1]]))
    shifted = bias(torch.tensor([[105]]), torch.tensor([[101]]))
    assert first.shape == (1, 2, 1, 1)
    torch.testing.assert_close(first, shifted)


def test_positions_skip_left_padding() -> None:
    mask = torch.tensor([[False, False, True, True], [True, True, True, True]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]


def test_a_padding_query_sees_only_itself_and_a_real_one_never_sees_padding() -> None:
    slots = torch.arange(3)
    mask = visibility_mask(slots, slots, torch.tensor([[False, True, True]]))[0, 0]
    assert mask.tolist() == [[True, False, False], [False, True, False], [False, True, True]]


def test_the_cache_refuses_more_tokens_than_it_has_slots() -> None:
    cache = KVCache.empty(layers=1, batch=1, max_len=2, kv_heads=1, dim_head=4, like=torch.ones(1))
    cache.reserve(torch.tensor([[0, 1]]), torch.tensor([[True, True]]))
    with pytest.raises(ValueError, match="overflow"):
        cache.reserve(torch.tensor([[2]]), torch.tensor([[True]]))


def test_the_cache_writes_at_its_device_cursor_and_counts_on_the_host() -> None:
    cache = KVCache.empty(layers=2, batch=2, max_len=4, kv_heads=1, dim_head=3, like=torch.ones(1))
    first = cache.reserve(
        torch.tensor([[0, 1], [0, 0]]), torch.tensor([[True, True], [False, True]])
    )
    second = cache.reserve(torch.tensor([[2], [1]]), torch.tensor([[True], [True]]))
    assert first.tolist() == [0, 1] and second.tolist() == [2]
    assert cache.cursor.item() == cache.length == 3
    assert cache.valid.tolist() == [[True, True, True, False], [False, True, True, False]]
    assert cache.positions[:, :3].tolist() == [[0, 1, 2], [0, 0, 1]]
    keys = torch.randn(2, 1, 1, 3)
    stored, _ = cache.write(1, second, keys, -keys)
    torch.testing.assert_close(stored[:, :, 2:3], keys)
    assert (cache.keys[0] == 0).all() and (cache.values[1][:, :, 2:3] == -keys).all()


def test_the_additive_mask_is_the_bias_where_visible_and_minus_infinity_elsewhere() -> None:
    visible = torch.tensor([[[[True, False], [True, True]]]])
    bias = torch.tensor([[[[0.5, 0.75], [0.25, -1.5]]]])
    inf = float("-inf")
    assert additive_mask(visible, None, torch.float32).tolist() == [[[[0.0, inf], [0.0, 0.0]]]]
    assert additive_mask(visible, bias, torch.float32).tolist() == [[[[0.5, inf], [0.25, -1.5]]]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_decoding_equals_full_recompute(variant: str) -> None:
    """Prefill a left-padded batch, decode token by token; every step's logits must equal
    those of one forward pass over the whole (padded) sequence."""
    model = make_model(VARIANTS[variant])
    torch.manual_seed(1)
    prompt = torch.randint(1, 64, (2, 5))
    prompt_mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    steps = torch.randint(1, 64, (2, 4))
    cache = model.new_cache(batch=2, max_len=12)
    with torch.no_grad():
        cached = [model(prompt, attention_mask=prompt_mask, cache=cache)[:, -1]]
        cached += [model(steps[:, i : i + 1], cache=cache)[:, -1] for i in range(4)]
        full_tokens = torch.cat((prompt, steps), dim=1)
        full_mask = torch.cat((prompt_mask, torch.ones_like(steps, dtype=torch.bool)), dim=1)
        full = model(full_tokens, attention_mask=full_mask)
    torch.testing.assert_close(torch.stack(cached, dim=1), full[:, 4:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["multi_query", "relative_bias_geglu"])
def test_a_prefill_in_chunks_equals_one_prefill(variant: str) -> None:
    model = make_model(VARIANTS[variant])
    tokens = torch.randint(1, 64, (1, 6))
    whole, chunked = model.new_cache(1, 6), model.new_cache(1, 6)
    with torch.no_grad():
        expected = model(tokens, cache=whole)
        got = torch.cat(
            (model(tokens[:, :4], cache=chunked), model(tokens[:, 4:], cache=chunked)), 1
        )
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
