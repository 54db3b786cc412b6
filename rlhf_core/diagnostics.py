"""Signs that a training run cannot learn, said loudly.

A trainer that cannot learn usually still runs to the end and prints numbers, so these checks
read its metrics and name what went wrong: every score equal, no response ever ending, a reward
model at or below chance on held-out labels, a KL that runs away. Each check returns the
warnings as sentences; `warn` issues them as `LearningWarning`s (Python's warnings, so a caller
can turn them into errors) and the trainers return them with their results, from which the
command line prints them and a training round shows them on its page. A round whose trainers
warned is never promoted automatically.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

# Below this many held-out pairs an accuracy says little (a 95% interval of about ±0.2).
MIN_HELD_OUT_PAIRS = 20
# KL beyond this many times its target, or beyond KL_RUNAWAY nats outright, is runaway drift.
KL_RUNAWAY_FACTOR = 3.0
KL_RUNAWAY = 20.0


class LearningWarning(UserWarning):
    """A run whose metrics say it cannot learn (or has gone wrong)."""


def warn(messages: Sequence[str]) -> None:
    for message in messages:
        warnings.warn(message, LearningWarning, stacklevel=2)


def reward_model_warnings(held_out: Mapping[str, float], held_out_pairs: int) -> list[str]:
    """A reward model at or below chance on its held-out preferences, or with too few of them
    to tell."""
    accuracy = held_out.get("pairwise_accuracy")
    if accuracy is None:
        return []
    if held_out_pairs < MIN_HELD_OUT_PAIRS:
        return [
            f"only {held_out_pairs} held-out preference(s): the reward model's accuracy "
            f"({accuracy:.2f}) says little; collect more labels"
        ]
    if accuracy <= 0.5:
        return [
            f"the reward model is at or below chance on {held_out_pairs} held-out preferences "
            f"(accuracy {accuracy:.2f}): it has not learned the labels' taste, and a policy "
            "trained on it would optimise noise; collect more labels or check them"
        ]
    return []


def policy_warnings(history: Sequence[Mapping[str, float]], kl_target: float | None) -> list[str]:
    """From per-iteration PPO (or sampling fine-tuning) metrics: scores that never differ,
    responses that never end, a runaway KL."""
    if not history:
        return []
    found = []
    spreads = [row["score_std"] for row in history if "score_std" in row]
    if spreads and max(spreads) == 0:
        found.append(
            f"every response got the same score in all {len(spreads)} iterations: the policy "
            "has nothing to learn from (does the scorer read the response?)"
        )
    ends = [row["eos_rate"] for row in history if "eos_rate" in row]
    if ends and max(ends) == 0:
        found.append(
            f"no response ended with EOS in {len(ends)} iterations: every score carried the "
            "no-EOS penalty; raise max_new_tokens, lower no_eos_penalty, or fine-tune the base "
            "model on answers that end"
        )
    kl = history[-1].get("kl", 0.0)
    limit = KL_RUNAWAY if kl_target is None else max(KL_RUNAWAY_FACTOR * kl_target, KL_RUNAWAY)
    if not math.isfinite(kl) or kl > limit:
        found.append(
            f"the KL to the reference reached {kl:.1f} nats per response (limit {limit:.0f}): "
            "the policy has drifted far from its base and is likely exploiting the reward "
            "model; lower the learning rate or raise the KL coefficient"
        )
    return found
