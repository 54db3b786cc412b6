"""Round presets and stage plans: the recommended preset leaves every trainer to the recipe for
the base model's size, and a full round runs PPO unless asked otherwise."""

from __future__ import annotations

import pytest

from webapp.training import presets
from webapp.training.models import RoundKind

# Ours, not a trainer's: how many prompts a round evaluates and samples, and how it launches.
OWN_SECTIONS = {presets.EVALUATE, presets.GENERATE, "launch"}


def test_the_recommended_preset_overrides_no_trainer_setting() -> None:
    recommended = presets.PRESETS["recommended"]
    assert set(recommended) - {"description"} == OWN_SECTIONS
    config = presets.build_config(RoundKind.FULL, "recommended")
    trainers = set(presets.SECTIONS) - OWN_SECTIONS
    assert not trainers & set(config)  # every stage resolves to its recipe on the worker


def test_the_recommended_preset_is_the_default() -> None:
    assert presets.DEFAULT_PRESET == "recommended"


def test_a_full_round_runs_ppo_unless_asked_otherwise() -> None:
    assert presets.DEFAULT_ALGORITHM == presets.PPO
    config = presets.build_config(RoundKind.FULL, presets.DEFAULT_PRESET)
    assert config["algorithm"] == presets.PPO
    assert config["stages"] == [
        *(presets.LABELS, presets.SFT, presets.REWARD, presets.PPO),
        *(presets.EVALUATE, presets.REGISTER, presets.GENERATE),
    ]


@pytest.mark.parametrize("algorithm", [presets.PPO, presets.DPO, presets.REJECTION_SAMPLING])
def test_a_full_round_runs_the_algorithm_asked_for_between_reward_and_evaluate(
    algorithm: str,
) -> None:
    stages = presets.build_config(RoundKind.FULL, "ci", algorithm=algorithm)["stages"]
    assert stages[stages.index(presets.REWARD) + 1 : stages.index(presets.EVALUATE)] == [algorithm]
    others = set(presets.ALGORITHMS) - {algorithm}
    assert not others & set(stages)


def test_a_rejection_sampling_round_samples_against_an_earlier_reward_model() -> None:
    assert presets.plan(RoundKind.REJECTION_SAMPLING) == [
        *(presets.LABELS, presets.REJECTION_SAMPLING, presets.EVALUATE, presets.REGISTER)
    ]


def test_an_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="algorithm must be one of ppo, dpo, rejection_sampling"):
        presets.plan(RoundKind.FULL, "reinforce")
