"""Diagnostics: each warning fires on the metrics that describe it and on nothing healthy."""

from __future__ import annotations

import math
import warnings

import pytest

from rlhf_core.diagnostics import (
    LearningWarning,
    policy_warnings,
    reward_model_warnings,
    warn,
)

HEALTHY = [
    {"score": 0.1, "score_std": 0.3, "eos_rate": 0.8, "kl": 0.5},
    {"score": 0.4, "score_std": 0.2, "eos_rate": 0.9, "kl": 2.0},
]


def with_rows(**changes: float) -> list[dict[str, float]]:
    return [{**row, **changes} for row in HEALTHY]


def test_a_healthy_run_has_no_warnings() -> None:
    assert policy_warnings(HEALTHY, kl_target=6.0) == []
    assert policy_warnings(HEALTHY, kl_target=None) == []
    assert policy_warnings([], kl_target=6.0) == []


def test_scores_that_never_differ_are_named() -> None:
    (message,) = policy_warnings(with_rows(score_std=0.0), kl_target=6.0)
    assert "every response got the same score in all 2 iterations" in message


def test_scores_that_differ_in_one_iteration_are_not_a_warning() -> None:
    rows = with_rows(score_std=0.0)
    rows[1]["score_std"] = 0.01
    assert policy_warnings(rows, kl_target=6.0) == []


def test_responses_that_never_end_are_named() -> None:
    (message,) = policy_warnings(with_rows(eos_rate=0.0), kl_target=6.0)
    assert "no response ended with EOS in 2 iterations" in message


def test_responses_that_end_in_one_iteration_are_not_a_warning() -> None:
    rows = with_rows(eos_rate=0.0)
    rows[0]["eos_rate"] = 0.05
    assert policy_warnings(rows, kl_target=6.0) == []


def test_a_kl_beyond_three_times_its_target_is_runaway() -> None:
    # Target 10: the limit is max(3 * 10, 20) = 30 nats.
    assert policy_warnings(with_rows(kl=29.0), kl_target=10.0) == []
    (message,) = policy_warnings(with_rows(kl=31.0), kl_target=10.0)
    assert "the KL to the reference reached 31.0 nats per response (limit 30)" in message


def test_a_kl_beyond_twenty_nats_is_runaway_whatever_a_small_target_says() -> None:
    assert policy_warnings(with_rows(kl=19.0), kl_target=1.0) == []
    (message,) = policy_warnings(with_rows(kl=21.0), kl_target=1.0)
    assert "(limit 20)" in message
    (untargeted,) = policy_warnings(with_rows(kl=21.0), kl_target=None)
    assert "(limit 20)" in untargeted


def test_only_the_last_iterations_kl_counts() -> None:
    rows = with_rows()
    rows[0]["kl"] = 100.0
    assert policy_warnings(rows, kl_target=6.0) == []


@pytest.mark.parametrize("kl", [math.nan, math.inf])
def test_a_kl_that_is_not_finite_is_runaway(kl: float) -> None:
    assert len(policy_warnings(with_rows(kl=kl), kl_target=6.0)) == 1


def test_a_run_without_kl_such_as_rejection_sampling_is_not_warned_about_it() -> None:
    rows = [{k: v for k, v in row.items() if k != "kl"} for row in HEALTHY]
    assert policy_warnings(rows, kl_target=None) == []


def test_every_problem_at_once_gives_every_warning() -> None:
    found = policy_warnings(with_rows(score_std=0.0, eos_rate=0.0, kl=50.0), kl_target=6.0)
    assert len(found) == 3


def test_a_reward_model_above_chance_on_enough_pairs_is_healthy() -> None:
    assert reward_model_warnings({"pairwise_accuracy": 0.7}, held_out_pairs=20) == []


def test_a_reward_model_without_pairwise_accuracy_is_not_judged() -> None:
    assert reward_model_warnings({"likert_accuracy": 0.1}, held_out_pairs=0) == []


@pytest.mark.parametrize("accuracy", [0.5, 0.3])
def test_a_reward_model_at_or_below_chance_is_named(accuracy: float) -> None:
    (message,) = reward_model_warnings({"pairwise_accuracy": accuracy}, held_out_pairs=40)
    assert f"at or below chance on 40 held-out preferences (accuracy {accuracy:.2f})" in message


def test_too_few_held_out_pairs_say_little_whatever_the_accuracy() -> None:
    (message,) = reward_model_warnings({"pairwise_accuracy": 0.9}, held_out_pairs=19)
    assert message.startswith("only 19 held-out preference(s)")
    assert "(0.90)" in message


def test_warn_issues_each_message_as_a_learning_warning() -> None:
    with pytest.warns(LearningWarning) as record:
        warn(["first", "second"])
    assert [str(item.message) for item in record] == ["first", "second"]


def test_warn_without_messages_issues_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn([])


def test_learning_warnings_can_be_turned_into_errors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", LearningWarning)
        with pytest.raises(LearningWarning, match="stuck"):
            warn(["stuck"])
