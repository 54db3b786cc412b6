"""Best-of-n and policy comparison on tiny byte-level models, with hand-made scorers."""

from __future__ import annotations

import argparse
import json
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from torch import Tensor

from rlhf_core.checkpoint import save_checkpoint
from rlhf_core.commands import CommandLineError
from rlhf_core.evaluation import (
    Sampling,
    add_best_of_n_command,
    add_evaluate_command,
    best_of_n,
    compare_policies,
    draw_samples,
    evaluate_policy,
    response_kl,
    wilson_interval,
)
from rlhf_core.generation import left_pad
from rlhf_core.palm import PaLM, PaLMConfig
from rlhf_core.ppo import PPOConfig, PPOPolicy
from rlhf_core.reward_io import save_reward_model
from rlhf_core.rollout import recompute, response_mask
from rlhf_core.simulation import LetterShare
from rlhf_core.tokenizer import Tokenizer
from tests.rlhf_core.training_data import plumbing_reward_model

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

TOKENIZER = Tokenizer.byte_fallback()
MODEL = PaLMConfig(num_tokens=258, dim=32, depth=2, heads=2, dim_head=16)
PROMPTS = ["ab", "hello there", "x", "", "eeee", "cd:", "what?", "zz"]
# An untrained byte model writes noise: the share of lowercase letters in it varies from sample
# to sample, which is all a selection test needs.
PREFERENCE = LetterShare(string.ascii_lowercase)


def tiny_model(seed: int) -> PaLM:
    torch.manual_seed(seed)
    return PaLM(MODEL).eval()


def preference_scorer(prompts: list[str], responses: list[str]) -> Tensor:
    return torch.tensor([PREFERENCE(text) for text in responses])


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Matrices of this size gain nothing from threads, which only slow a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_best_of_n_keeps_the_argmax_which_beats_the_mean_of_its_candidates() -> None:
    results = best_of_n(
        tiny_model(0), TOKENIZER, PROMPTS, preference_scorer, n=6, max_new_tokens=8, seed=1
    )
    assert [result.prompt for result in results] == PROMPTS
    for result in results:
        assert len(result.candidates) == len(result.rewards) == 6
        best = max(range(6), key=lambda index: (result.rewards[index], -index))
        assert result.best == result.candidates[best]
        assert result.best_reward == result.rewards[best] == pytest.approx(PREFERENCE(result.best))
        assert result.best_reward >= sum(result.rewards) / 6


def test_best_of_n_scores_higher_on_average_than_a_single_sample() -> None:
    model = tiny_model(0)

    def mean_best(n: int) -> float:
        results = best_of_n(
            model, TOKENIZER, PROMPTS * 2, preference_scorer, n=n, max_new_tokens=8, seed=3
        )
        return sum(result.best_reward for result in results) / len(results)

    assert mean_best(8) > mean_best(1)


def test_best_of_n_is_determined_by_its_seed() -> None:
    model = tiny_model(0)

    def run(seed: int) -> list[tuple[str, ...]]:
        results = best_of_n(
            model, TOKENIZER, PROMPTS, preference_scorer, n=4, max_new_tokens=6, seed=seed
        )
        return [result.candidates for result in results]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_a_prompts_samples_share_one_generate_call_however_small_the_batch() -> None:
    sampling = Sampling(per_prompt=3, max_new_tokens=4, batch_size=2)
    samples = draw_samples(tiny_model(0), TOKENIZER, ["ab", "cde"], sampling)
    prompt_ids = [TOKENIZER.encode(text) for text in ("ab", "cde")]
    assert samples.prompt_ids == [prompt_ids[0]] * 3 + [prompt_ids[1]] * 3
    assert samples.prompts == ["ab"] * 3 + ["cde"] * 3
    assert samples.tokens.shape == (6, 4) and len(samples.texts) == 6


def test_best_of_n_accepts_a_reward_model_and_scores_with_it() -> None:
    torch.manual_seed(0)
    reward_model = plumbing_reward_model(MODEL)
    results = best_of_n(
        tiny_model(0), TOKENIZER, PROMPTS[:3], reward_model, n=3, max_new_tokens=5, seed=0
    )
    for result in results:
        expected = reward_model.score([result.prompt] * 3, list(result.candidates), TOKENIZER)
        # Batched with other rows, the reward model's sums may differ in the last bits.
        torch.testing.assert_close(torch.tensor(result.rewards), expected, atol=1e-5, rtol=1e-4)


def test_a_policy_against_itself_ties_every_pair_and_has_no_kl_to_itself() -> None:
    model = tiny_model(0)
    comparison = compare_policies(
        model,
        model,
        model,
        TOKENIZER,
        PROMPTS,
        preference_scorer,
        max_new_tokens=6,
        seed=0,
        samples_per_prompt=2,
    )
    assert comparison.win_rate == 0.5
    assert comparison.ties == comparison.a.samples == len(PROMPTS) * 2
    assert comparison.a == comparison.b
    assert comparison.a.kl == 0.0
    assert comparison.win_rate_low < 0.5 < comparison.win_rate_high
    assert json.loads(json.dumps(comparison.to_dict()))["a"]["kl"] == 0.0


def test_a_scorer_that_prefers_b_gives_a_a_win_rate_below_one_half() -> None:
    policy_a, policy_b = tiny_model(0), tiny_model(1)
    samples = draw_samples(policy_b, TOKENIZER, PROMPTS, Sampling(1, max_new_tokens=6, seed=0))
    b_texts = set(samples.texts)

    def prefers_b(prompts: list[str], responses: list[str]) -> Tensor:
        return torch.tensor([float(text in b_texts) for text in responses])

    comparison = compare_policies(
        policy_a, policy_b, None, TOKENIZER, PROMPTS, prefers_b, max_new_tokens=6, seed=0
    )
    assert comparison.win_rate < 0.5
    assert comparison.b.mean_reward == 1.0
    assert comparison.a.kl is None and comparison.b.kl is None


def test_the_kl_to_another_model_is_positive_and_to_the_same_model_zero() -> None:
    policy, reference = tiny_model(0), tiny_model(1)

    def kl(to: PaLM) -> float | None:
        return evaluate_policy(
            policy,
            to,
            TOKENIZER,
            PROMPTS,
            preference_scorer,
            max_new_tokens=6,
            seed=0,
            samples_per_prompt=4,
        ).kl

    other = kl(reference)
    assert other is not None and other > -1e-3
    assert kl(policy) == 0.0


def test_the_evaluation_restores_each_models_training_mode() -> None:
    policy, reference = tiny_model(0).train(), tiny_model(1)
    evaluate_policy(
        policy, reference, TOKENIZER, PROMPTS[:2], preference_scorer, max_new_tokens=3, seed=0
    )
    assert policy.training and not reference.training


def test_the_wilson_interval_matches_hand_computed_values() -> None:
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    with pytest.raises(ValueError, match="at least one pair"):
        wilson_interval(0, 0)


def run_command(add: Callable[[Subparsers], None], *argv: str) -> None:
    parser = argparse.ArgumentParser()
    add(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    args.run(args)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    save_checkpoint(tmp_path / "policy", tiny_model(0), TOKENIZER)
    save_checkpoint(tmp_path / "baseline", tiny_model(1), TOKENIZER)
    torch.manual_seed(2)
    save_reward_model(tmp_path / "reward", plumbing_reward_model(MODEL), TOKENIZER)
    lines = "".join(json.dumps({"prompt": prompt}) + "\n" for prompt in PROMPTS)
    (tmp_path / "prompts.jsonl").write_text(lines)
    return tmp_path


def test_the_evaluate_command_compares_and_writes_json(
    saved: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = saved / "results.json"
    run_command(
        add_evaluate_command,
        "evaluate",
        *("--policy", str(saved / "policy"), "--baseline", str(saved / "baseline")),
        *("--reference", str(saved / "baseline"), "--reward", str(saved / "reward")),
        *("--prompts", str(saved / "prompts.jsonl"), "--max-new-tokens", "4"),
        *("--samples-per-prompt", "2", "--device", "cpu", "--out", str(out)),
    )
    results = json.loads(out.read_text())
    assert results["a"]["samples"] == len(PROMPTS) * 2
    assert results["b"]["kl"] == 0.0 and results["a"]["kl"] > -1e-3
    assert 0.0 <= results["win_rate_low"] <= results["win_rate"] <= results["win_rate_high"]
    assert "win rate of policy over baseline" in capsys.readouterr().out


def test_the_evaluate_command_reports_one_policy_and_refuses_bad_counts(
    saved: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["evaluate", "--policy", str(saved / "policy"), "--reward", str(saved / "reward")]
    common += ["--prompts", str(saved / "prompts.jsonl"), "--max-new-tokens", "3"]
    run_command(add_evaluate_command, *common, "--device", "cpu")
    assert capsys.readouterr().out.startswith("policy: mean reward")
    message = "--samples-per-prompt must be >= 1; --temperature must be >= 0"
    with pytest.raises(CommandLineError, match=message):
        run_command(add_evaluate_command, *common, "--samples-per-prompt", "0", "--temperature=-1")


def test_the_best_of_n_command_prints_one_line_per_prompt(
    saved: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_command(
        add_best_of_n_command,
        *("best-of-n", "--policy", str(saved / "policy"), "--reward", str(saved / "reward")),
        *("--prompt", "ab", "--prompt", "cd", "--n", "3", "--max-new-tokens", "4"),
        *("--device", "cpu"),
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prompt"] for line in lines] == ["ab", "cd"]


def test_the_kl_sums_the_log_ratios_of_the_rollouts_recomputation() -> None:
    policy, reference = tiny_model(0), tiny_model(1)
    sampling = Sampling(per_prompt=2, max_new_tokens=5, temperature=0.7, seed=0)
    samples = draw_samples(policy, TOKENIZER, PROMPTS, sampling)
    ppo_policy = PPOPolicy(policy)
    ppo_policy.reference = reference
    prompt = left_pad(samples.prompt_ids, TOKENIZER.pad_id)
    mask = response_mask(samples.lengths, samples.tokens.shape[1])
    config = PPOConfig(temperature=0.7, minibatch_size=4, rollout_batch_size=16)
    logprobs, _, ref_logprobs = recompute(ppo_policy, prompt, (samples.tokens, mask), config)
    expected = ((logprobs - ref_logprobs) * mask).sum(dim=-1)
    kl = response_kl(policy, reference, samples, temperature=0.7, batch_size=5)
    torch.testing.assert_close(kl, expected, atol=1e-5, rtol=1e-4)
