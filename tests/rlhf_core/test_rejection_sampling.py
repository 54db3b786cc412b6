"""Rejection sampling: which candidates win, what a run records, and a run that learns."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor

from rlhf_core.diagnostics import LearningWarning
from rlhf_core.evaluation import Sampling, draw_samples
from rlhf_core.finetuning import FineTuneError
from rlhf_core.lora import lora_layers
from rlhf_core.palm import PaLM
from rlhf_core.rejection_sampling import (
    RejectionSamplingConfig,
    select_winners,
    train_rejection_sampling,
)
from rlhf_core.simulation import LetterShare
from rlhf_core.training import Metrics, NoCallback
from tests.rlhf_core.test_ppo import (
    LEARNING_PROMPTS,
    MODEL,
    TOKENIZER,
    pretrain_random_strings,
)

SHARE_OF_E = LetterShare("e")
QUICK = RejectionSamplingConfig(
    iterations=2,
    samples_per_prompt=2,
    max_new_tokens=4,
    batch_size=4,
    mixed_precision="no",
    max_length=None,
)
# A random policy rarely samples EOS, which the run rightly warns about; not these tests' subject.
never_ends = pytest.mark.filterwarnings(
    "ignore:no response ended with EOS:rlhf_core.diagnostics.LearningWarning"
)


def letter_e_scorer(prompts: list[str], responses: list[str]) -> Tensor:
    return torch.tensor([SHARE_OF_E(response) for response in responses])


def length_scorer(prompts: list[str], responses: list[str]) -> Tensor:
    return torch.tensor([float(len(response)) for response in responses])


def tiny_policy(seed: int = 0) -> PaLM:
    torch.manual_seed(seed)
    return PaLM(MODEL)


def test_each_prompts_best_candidate_wins() -> None:
    texts = ["a0", "a1", "a2", "b0", "b1", "b2"]
    scores = torch.tensor([0.1, 0.9, 0.2, 0.5, 0.0, 0.1])
    winners = select_winners(["a", "b"], texts, scores, n=3, min_margin=0.0)
    assert [(prompt, text) for prompt, text, _ in winners] == [("a", "a1"), ("b", "b0")]
    assert [score for *_, score in winners] == pytest.approx([0.9, 0.5])


def test_a_best_that_does_not_beat_the_mean_by_the_margin_is_skipped() -> None:
    scores = torch.tensor([0.0, 1.0])  # the best beats the mean by 0.5
    assert select_winners(["p"], ["low", "high"], scores, n=2, min_margin=0.5) == []
    kept = select_winners(["p"], ["low", "high"], scores, n=2, min_margin=0.49)
    assert kept == [("p", "high", 1.0)]


def test_a_prompt_whose_candidates_all_tie_is_skipped() -> None:
    # In float32 the mean of eight 0.3s rounds below 0.3: a tie must still count as one.
    scores = torch.full((8,), 0.3)
    assert select_winners(["p"], [f"t{i}" for i in range(8)], scores, n=8, min_margin=0.0) == []


@pytest.mark.parametrize("empty", ["", " \n "])
def test_an_empty_best_is_skipped(empty: str) -> None:
    scores = torch.tensor([0.0, 1.0, 0.2, 0.1])
    winners = select_winners(["a", "b"], ["x", empty, "y", "z"], scores, n=2, min_margin=0.0)
    assert [(prompt, text) for prompt, text, _ in winners] == [("b", "y")]


def test_the_config_refuses_fewer_than_two_samples_per_prompt() -> None:
    with pytest.raises(FineTuneError, match="samples_per_prompt must be >= 2"):
        RejectionSamplingConfig(samples_per_prompt=1)
    RejectionSamplingConfig(samples_per_prompt=2)


@never_ends
def test_the_history_has_one_row_per_iteration_with_the_documented_keys() -> None:
    result = train_rejection_sampling(
        tiny_policy(), TOKENIZER, LEARNING_PROMPTS, length_scorer, QUICK
    )
    keys = {"iteration", "score", "score_std", "winner_score", "winners", "eos_rate", "loss"}
    assert [set(row) for row in result.history] == [keys, keys]
    assert [row["iteration"] for row in result.history] == [1.0, 2.0]
    assert result.metrics == result.history[-1]
    assert all(row["winner_score"] >= row["score"] for row in result.history)
    assert result.steps > 0 and not result.stopped_early


@never_ends
def test_an_iteration_without_winners_trains_nothing_and_the_run_warns() -> None:
    policy = tiny_policy()
    before = [parameter.detach().clone() for parameter in policy.parameters()]

    def constant(prompts: list[str], responses: list[str]) -> Tensor:
        return torch.full((len(responses),), 0.5)

    with pytest.warns(LearningWarning, match="every response got the same score"):
        result = train_rejection_sampling(policy, TOKENIZER, LEARNING_PROMPTS, constant, QUICK)
    assert result.steps == 0
    assert all(row["winners"] == 0 and "loss" not in row for row in result.history)
    assert math.isnan(result.metrics["winner_score"])
    assert any("same score" in warning for warning in result.warnings)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


@never_ends
def test_a_callback_can_stop_the_run_after_an_iteration() -> None:
    class StopAfterOne(NoCallback):
        def on_step(self, metrics: Metrics) -> bool:
            return False

    result = train_rejection_sampling(
        tiny_policy(), TOKENIZER, LEARNING_PROMPTS, length_scorer, QUICK, callback=StopAfterOne()
    )
    assert result.stopped_early and len(result.history) == 1


@never_ends
def test_with_lora_every_iteration_trains_and_the_policy_ends_without_adapters() -> None:
    policy = tiny_policy()
    before = [parameter.detach().clone() for parameter in policy.parameters()]
    config = dataclasses.replace(QUICK, lora_rank=2, lr=1e-2)
    result = train_rejection_sampling(policy, TOKENIZER, LEARNING_PROMPTS, length_scorer, config)
    assert [row["iteration"] for row in result.history] == [1.0, 2.0]
    assert all("loss" in row for row in result.history)
    assert all(layer.active_scope is None and not layer.adapters for layer in lora_layers(policy))
    assert not all(torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


def mean_share_of_e(policy: PaLM, seed: int) -> float:
    samples = draw_samples(policy, TOKENIZER, LEARNING_PROMPTS, Sampling(8, 10, seed=seed))
    return sum(map(SHARE_OF_E, samples.texts)) / len(samples.texts)


def test_two_iterations_raise_the_share_of_the_rewarded_letter_in_fresh_samples() -> None:
    policy = tiny_policy()
    pretrain_random_strings(policy, steps=100)  # strings over "abcde": a fifth of them "e"
    start = mean_share_of_e(policy, seed=99)
    config = RejectionSamplingConfig(
        iterations=2,
        samples_per_prompt=8,
        max_new_tokens=10,
        lr=3e-3,
        epochs=4,
        batch_size=8,
        mixed_precision="no",
        max_length=None,
    )
    train_rejection_sampling(policy, TOKENIZER, LEARNING_PROMPTS, letter_e_scorer, config)
    assert mean_share_of_e(policy, seed=99) > start + 0.1
