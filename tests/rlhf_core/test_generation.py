import pytest
import torch

from rlhf_core.generation import (
    Sampler,
    apply_repetition_penalty,
    cache_slots,
    generate,
    last_token_logits,
    left_pad,
    min_p_filter,
    top_k_filter,
    top_p_filter,
)
from rlhf_core.palm import PaLM, PaLMConfig

SMALL = PaLMConfig(num_tokens=64, dim=32, depth=2, heads=4, dim_head=8, kv_heads=2)
PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]


@pytest.fixture
def model() -> PaLM:
    torch.manual_seed(0)
    return PaLM(SMALL).eval()


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_left_padding_aligns_prompts_to_the_right() -> None:
    tokens, mask = left_pad([torch.tensor([1, 2, 3]), [4]], pad_token_id=0)
    assert tokens.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], pad_token_id=0)


def test_top_k_keeps_the_k_largest_logits() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    assert kept(top_k_filter(logits, 2)) == [1, 3]
    assert kept(top_k_filter(logits, 10)) == [0, 1, 2, 3, 4]


def test_top_p_keeps_the_smallest_set_whose_probability_reaches_p() -> None:
    logits = torch.tensor([[0.05, 0.5, 0.3, 0.15]]).log()
    assert kept(top_p_filter(logits, 0.5)) == [1]  # 0.5 alone reaches 0.5
    assert kept(top_p_filter(logits, 0.6)) == [1, 2]  # 0.5 < 0.6 <= 0.8
    assert kept(top_p_filter(logits, 0.85)) == [1, 2, 3]  # 0.8 < 0.85 <= 0.95
    assert kept(top_p_filter(logits, 0.99)) == [0, 1, 2, 3]
    assert kept(top_p_filter(logits, 0.01)) == [1]  # the top token always survives


def large_vocabulary_logits() -> torch.Tensor:
    # Spread out like a trained model's logits: in float32 the running sum of the 50,000 sorted
    # probabilities reaches 1.0 while thousands of tail tokens still have probability left.
    generator = torch.Generator().manual_seed(0)
    return 3 * torch.randn(2, 50_000, generator=generator)


def test_top_p_of_one_keeps_every_token_of_a_large_vocabulary() -> None:
    dropped = torch.isinf(top_p_filter(large_vocabulary_logits(), 1.0)).sum().item()
    assert dropped == 0


def test_top_p_near_one_keeps_the_smallest_set_that_reaches_p_in_a_large_vocabulary() -> None:
    logits, p = large_vocabulary_logits(), 0.99999
    probs = logits.double().softmax(dim=-1)
    kept_probs = torch.where(torch.isfinite(top_p_filter(logits, p)), probs, 0.0)
    kept_mass = kept_probs.sum(dim=-1)
    least_kept = torch.where(kept_probs > 0, kept_probs, 1.0).amin(dim=-1)
    assert (kept_mass >= p).all()  # the set reaches p ...
    assert (kept_mass - least_kept < p).all()  # ... and is the smallest that does


def test_min_p_drops_tokens_below_a_fraction_of_the_top_probability() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert kept(min_p_filter(logits, 0.3)) == [0, 1, 2]  # threshold 0.15
    assert kept(min_p_filter(logits, 0.5)) == [0, 1]  # threshold 0.25


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 2.0, -2.0]]


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": -1.0},
        {"top_k": 0},
        {"top_p": 0.0},
        {"min_p": 1.5},
        {"repetition_penalty": 0},
    ],
)
def test_the_sampler_refuses_meaningless_settings(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Sampler(**settings)  # type: ignore[arg-type]


def test_the_sampler_never_picks_a_truncated_token() -> None:
    logits = torch.tensor([[3.0, 2.9, 2.8, -1.0]]).repeat(200, 1)
    seen = torch.zeros_like(logits, dtype=torch.bool)
    sampler = Sampler(temperature=5.0, top_k=2)
    tokens, _ = sampler(logits, seen, torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {0, 1}


def test_logprobs_are_of_the_tempered_distribution_before_truncation() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    seen = torch.zeros_like(logits, dtype=torch.bool)
    tokens, logprobs = Sampler(temperature=2.0, top_k=1)(logits, seen, None)
    assert tokens.item() == 0
    expected = (logits / 2.0).log_softmax(-1)[0, 0]
    torch.testing.assert_close(logprobs[0], expected)


def test_seeded_generation_is_deterministic(model: PaLM) -> None:
    first = generate(model, PROMPTS, max_new_tokens=6, top_p=0.9, seed=3)
    second = generate(model, PROMPTS, max_new_tokens=6, top_p=0.9, seed=3)
    other = generate(model, PROMPTS, max_new_tokens=6, top_p=0.9, seed=4)
    assert torch.equal(first.tokens, second.tokens)
    assert torch.equal(first.logprobs, second.logprobs)
    assert not torch.equal(first.tokens, other.tokens)


def greedy_by_full_recompute(model: PaLM, prompt: list[int], steps: int) -> list[int]:
    tokens = torch.tensor([prompt])
    for _ in range(steps):
        next_token = model(tokens)[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat((tokens, next_token), dim=1)
    return tokens[0, len(prompt) :].tolist()


def test_greedy_equals_argmax_decoding_by_full_recompute(model: PaLM) -> None:
    out = generate(model, PROMPTS, max_new_tokens=5, temperature=0.0)
    with torch.no_grad():
        expected = [greedy_by_full_recompute(model, prompt, 5) for prompt in PROMPTS]
    assert out.tokens.tolist() == expected
    assert out.lengths.tolist() == [5, 5, 5]


def test_logprobs_match_a_full_forward_over_prompt_and_completion(model: PaLM) -> None:
    out = generate(model, [PROMPTS[0]], max_new_tokens=4, temperature=1.0, seed=0)
    sequence = torch.cat((torch.tensor([PROMPTS[0]]), out.tokens), dim=1)
    with torch.no_grad():
        logprobs = model(sequence)[:, 2:-1].log_softmax(-1)
    expected = logprobs.gather(-1, out.tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(out.logprobs, expected, rtol=1e-4, atol=1e-4)


def test_each_row_stops_at_its_own_eos_and_is_padded_after(model: PaLM) -> None:
    greedy = generate(model, PROMPTS, max_new_tokens=6, temperature=0.0)
    eos = int(greedy.tokens[0, 1])  # row 0 emits it at its second step
    out = generate(
        model, PROMPTS, max_new_tokens=6, temperature=0.0, eos_token_id=eos, pad_token_id=63
    )
    for row, length in enumerate(out.lengths.tolist()):
        free = greedy.tokens[row].tolist()
        expected = free.index(eos) + 1 if eos in free else 6
        assert length == expected
        assert out.tokens[row, :length].tolist() == free[:length]
        assert (out.tokens[row, length:] == 63).all()
        assert (out.logprobs[row, length:] == 0).all()
    assert out.lengths[0] == 2


def test_prompts_generate_as_if_each_were_alone(model: PaLM) -> None:
    together = generate(model, PROMPTS, max_new_tokens=4, temperature=0.0)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, [prompt], max_new_tokens=4, temperature=0.0)
        assert together.tokens[row].tolist() == alone.tokens[0].tolist()
        torch.testing.assert_close(together.logprobs[row], alone.logprobs[0], atol=1e-4, rtol=1e-4)


def test_repetition_penalty_steers_greedy_decoding_away_from_seen_tokens(model: PaLM) -> None:
    out = generate(model, [[1]], max_new_tokens=8, temperature=0.0, repetition_penalty=1e6)
    assert len(set(out.tokens[0].tolist()) | {1}) == 9


def test_generation_restores_training_mode(model: PaLM) -> None:
    model.train()
    generate(model, [[1, 2]], max_new_tokens=1)
    assert model.training


def test_the_cache_is_rounded_up_to_whole_blocks_of_16_slots() -> None:
    assert [cache_slots(n) for n in (1, 16, 17, 320)] == [16, 16, 32, 320]


def test_last_token_logits_equal_the_last_column_of_a_full_forward(model: PaLM) -> None:
    tokens, mask = left_pad(PROMPTS, pad_token_id=0)
    with torch.no_grad():
        got = last_token_logits(model, tokens, model.new_cache(3, 8), mask)
        expected = model(tokens, attention_mask=mask)[:, -1]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_cuda_graphs_are_refused_for_a_model_on_the_cpu(model: PaLM) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        generate(model, PROMPTS, max_new_tokens=2, use_cuda_graph=True)


def test_generation_runs_under_bf16_autocast_with_a_cache_in_the_compute_dtype(
    model: PaLM,
) -> None:
    # Float32 weights under autocast make bf16 keys: the cache must hold bf16, not refuse them.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.new_cache(2, 8).keys[0].dtype == torch.bfloat16
        out = generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=4, seed=0)
    assert model.new_cache(2, 8).keys[0].dtype == torch.float32
    assert out.tokens.shape == (2, 4)
    assert torch.isfinite(out.logprobs).all()
