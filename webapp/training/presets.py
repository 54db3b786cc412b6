"""Round presets and stage plans: plain data on the web side.

A preset holds overrides per stage, named after the fields of rlhf_core's config dataclasses
(`reward` -> RewardTrainingConfig, `ppo` -> PPOConfig, `dpo` -> DPOConfig, `sft` -> SFTConfig,
`pretrain` -> PretrainConfig) plus our own `generate`, `evaluate` and `launch` sections. The web
side never imports rlhf_core: the worker builds the dataclasses from these values (their checks
run there, and a bad value fails the round with the dataclass's message) and writes the full,
resolved settings back into the round's config.
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
EVALUATE = "evaluate"  # held-out reward accuracy, KL and reward-model win rate vs the parent
REGISTER = "register"  # the trained policy becomes a model version
GENERATE = "generate"  # fresh samples (and blind pairs against the parent) into the queue

ALGORITHMS = (PPO, DPO)


def plan(kind: str, algorithm: str = PPO) -> list[str]:
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
        RoundKind.DPO: [LABELS, DPO, EVALUATE, REGISTER],
        RoundKind.EVALUATE: [LABELS, EVALUATE],
    }
    return list(plans[RoundKind(kind)])


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a CPU: the tests' preset. Too short to learn much; every stage still runs.
    "ci": {
        "description": "Seconds on a CPU; for tests, learns little",
        "pretrain": {"steps": 4, "batch_size": 4, "eval_every": 2},
        "sft": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "max_length": 96},
        "reward": {"epochs": 1, "max_steps": 4, "batch_size": 4, "lr": 3e-3},
        "ppo": {
            "steps": 2,
            "rollout_batch_size": 4,
            "minibatch_size": 4,
            "max_new_tokens": 8,
            "no_eos_penalty": None,
            "normalization_samples": 4,
            "ppo_epochs": 1,
            "checkpoint_every": 1,
            "lr": 1e-4,
        },
        "dpo": {"max_steps": 2, "batch_size": 4, "lr": 1e-4, "max_length": 96},
        "evaluate": {"prompts": 4, "max_new_tokens": 8},
        "generate": {"prompts": 4, "samples_per_prompt": 2, "max_new_tokens": 12},
        "launch": {"num_processes": 1},
    },
    # A few minutes on 2 CPU cores with the embedded tiny model: the README's walkthrough.
    "demo": {
        "description": "A few minutes on 2 CPU cores (the embedded tiny model)",
        "pretrain": {"steps": 400, "batch_size": 16},
        "sft": {"epochs": 1, "batch_size": 8, "lr": 3e-4, "max_length": 160},
        # The simulated loop (workers/simulation.py) labels all 60 blind pairs of the base model's
        # samples before its round (see "generate"): fewer distinct pairs left the reward model
        # guessing, and PPO then optimised noise (new versions won about half the votes).
        "reward": {"epochs": 2, "batch_size": 8, "lr": 1e-3},
        "ppo": {
            "steps": 40,
            "rollout_batch_size": 8,
            "minibatch_size": 8,
            "max_new_tokens": 32,
            # The Shakespeare model never ends a reply within 32 tokens: a penalty for a missing
            # end of sequence would replace every score, and PPO would learn nothing.
            "no_eos_penalty": None,
            "ppo_epochs": 2,
            "checkpoint_every": 2,
            "lr": 1e-4,
            # Sample as "generate" does, so PPO improves the texts people are shown.
            "temperature": 0.7,
            # A stronger KL penalty than the default 0.05: the reward model learns from few
            # labels, and a policy that drifts 10+ nats from its parent exploits its errors.
            "init_kl_coef": 0.15,
            "kl_target": 4.0,
        },
        "dpo": {"epochs": 1, "batch_size": 8, "lr": 5e-5, "max_length": 160},
        "evaluate": {"prompts": 12, "max_new_tokens": 32},
        # 30 prompts x 4 samples: 60 blind pairs of a base (120 of a new version against its
        # parent, so its win rate rests on 360 votes); as long as PPO's responses, and at 0.7,
        # which makes the tiny model's text more readable and a trained preference more visible.
        "generate": {
            "prompts": 30,
            "samples_per_prompt": 4,
            "max_new_tokens": 32,
            "temperature": 0.7,
        },
        "launch": {"num_processes": 1},
    },
    # One GPU; rlhf_core's own defaults otherwise (they follow the papers).
    "gpu": {
        "description": "One GPU, rlhf_core's defaults (hours for a large model)",
        "reward": {},
        "ppo": {"steps": 200},
        "dpo": {},
        "sft": {},
        "evaluate": {"prompts": 64, "max_new_tokens": 128},
        "generate": {"prompts": 200, "samples_per_prompt": 2, "max_new_tokens": 256},
        "launch": {"num_processes": 1},
    },
}
DEFAULT_PRESET = "demo"


def preset_choices() -> list[tuple[str, str]]:
    return [(name, f"{name}: {values['description']}") for name, values in PRESETS.items()]


def build_config(
    kind: str, preset: str, *, algorithm: str = PPO, overrides: dict[str, Any] | None = None
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


SECTIONS = ("pretrain", "sft", "reward", "ppo", "dpo", "evaluate", "generate", "launch")
