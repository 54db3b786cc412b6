"""Round presets and stage plans: plain data on the web side.

Every training stage starts from the recommended settings for the base model's size
(`rlhf_core.recipes`: the same defaults as the command line and the README). A preset holds only
*overrides* per stage, named after the fields of rlhf_core's config dataclasses (`reward` ->
RewardTrainingConfig and its `head` -> RewardHeadConfig, `ppo` -> PPOConfig, `dpo` ->
DPOConfig, `sft` -> SFTConfig, `rejection_sampling` -> RejectionSamplingConfig, `pretrain` ->
the demo's DemoSettings) plus our own `generate`, `evaluate` and `launch` sections. The
`recommended` preset overrides nothing that trains. The web side never imports rlhf_core: the
worker merges these values into the recipe (their checks run there, and a bad value fails the
round with the dataclass's message) and writes the full, resolved settings back into the
round's config.
"""

from __future__ import annotations

import copy
from typing import Any

from webapp.training.models import RoundKind

# Stage names, in the order a full round runs them.
LABELS = "labels"  # snapshot the labels (an export snapshot; its manifest's checksums are the hash)
PRETRAIN = "pretrain"
SFT = "sft"  # skipped when the snapshot holds no new demonstrations
REWARD = "reward"
PPO = "ppo"
DPO = "dpo"
REJECTION_SAMPLING = "rejection_sampling"  # best-of-n against the reward model, then SFT
EVALUATE = "evaluate"  # held-out reward accuracy, KL and reward-model win rate vs the parent
REGISTER = "register"  # the trained policy becomes a model version
GENERATE = "generate"  # fresh samples (and blind pairs against the parent) into the queue

ALGORITHMS = (PPO, DPO, REJECTION_SAMPLING)
ALGORITHM_NAMES = {PPO: "PPO", DPO: "DPO", REJECTION_SAMPLING: "Rejection sampling"}
# The recipes' algorithm (rlhf_core.recipes): what a full round runs unless asked otherwise.
DEFAULT_ALGORITHM = PPO


def plan(kind: str, algorithm: str = DEFAULT_ALGORITHM) -> list[str]:
    """The stages a round of `kind` runs, in order."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
    plans = {
        RoundKind.FULL: [LABELS, SFT, REWARD, algorithm, EVALUATE, REGISTER, GENERATE],
        RoundKind.PRETRAIN: [PRETRAIN, REGISTER],
        RoundKind.GENERATE: [GENERATE],
        RoundKind.SFT: [LABELS, SFT, REGISTER],
        RoundKind.REWARD: [LABELS, REWARD],
        RoundKind.PPO: [LABELS, PPO, EVALUATE, REGISTER],
        RoundKind.REJECTION_SAMPLING: [LABELS, REJECTION_SAMPLING, EVALUATE, REGISTER],
        RoundKind.DPO: [LABELS, DPO, EVALUATE, REGISTER],
        RoundKind.EVALUATE: [LABELS, EVALUATE],
    }
    return list(plans[RoundKind(kind)])


PRESETS: dict[str, dict[str, Any]] = {
    # The recipe for the base model's size, unchanged: what the README recommends and the
    # learning benchmark measures. Only how many prompts a round samples is set here.
    "recommended": {
        "description": "The recommended settings for the base model's size (rlhf_core.recipes)",
        "evaluate": {"prompts": 64, "samples_per_prompt": 4},
        "generate": {"prompts": 30, "samples_per_prompt": 4},
        "launch": {"num_processes": 1},
    },
    # Seconds on a CPU: the tests' preset. Too short to learn much; every stage still runs.
    "ci": {
        "description": "Seconds on a CPU; for tests, learns little",
        "pretrain": {"steps": 4, "batch_size": 4, "eval_every": 2},
        "sft": {"max_steps": 2, "batch_size": 4},
        "reward": {"epochs": 1, "max_steps": 4, "batch_size": 4, "head": {"members": 2}},
        "ppo": {
            "steps": 2,
            "rollout_batch_size": 4,
            "minibatch_size": 4,
            "max_new_tokens": 8,
            "normalization_samples": 4,
            "ppo_epochs": 1,
            "checkpoint_every": 1,
        },
        "rejection_sampling": {
            "iterations": 1,
            "samples_per_prompt": 2,
            "max_new_tokens": 8,
            "max_steps": 2,
        },
        "dpo": {"max_steps": 2, "batch_size": 4},
        "evaluate": {
            "prompts": 4,
            "samples_per_prompt": 1,
            "max_new_tokens": 8,
            "judge": {"epochs": 1, "max_steps": 4, "batch_size": 4},
        },
        "generate": {"prompts": 4, "samples_per_prompt": 2, "max_new_tokens": 12},
        "launch": {"num_processes": 1},
    },
}
DEFAULT_PRESET = "recommended"


def preset_choices() -> list[tuple[str, str]]:
    return [(name, f"{name}: {values['description']}") for name, values in PRESETS.items()]


def build_config(
    kind: str,
    preset: str,
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The round's stored config: the preset's sections, `overrides` merged in per section
    (unknown sections are refused here; unknown fields by the worker's dataclasses), and the
    plan of stages."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    config = copy.deepcopy({k: v for k, v in PRESETS[preset].items() if k != "description"})
    for section, values in (overrides or {}).items():
        if section not in SECTIONS:
            raise ValueError(f"Unknown config section {section!r}; known: {', '.join(SECTIONS)}.")
        if not isinstance(values, dict):
            raise ValueError(f"Config section {section!r} must be an object of settings.")
        config.setdefault(section, {}).update(values)
    config["stages"] = plan(kind, algorithm)
    config["algorithm"] = algorithm
    return config


SECTIONS = (
    "pretrain",
    "sft",
    "reward",
    "ppo",
    "dpo",
    "rejection_sampling",
    "evaluate",
    "generate",
    "launch",
)
