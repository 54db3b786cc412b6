"""Recommended settings per model size: one source of truth for every trainer and sampler.

A recipe is a plain function returning every setting of a round, from how responses are
sampled to each trainer's config. The command line fills the options a user leaves out from
`recipe_for(<the base model>)`, the Python API takes `recipe.reward`, `recipe.ppo`... as its
defaults, and the web app's rounds start from the same recipe (their presets only override
it, e.g. for seconds-long CI runs). What the README recommends is what these functions return,
and the benchmarks and learning tests run them unchanged.

    cpu_small()   models up to ~20M parameters (the embedded demo's `mini`), on CPU cores
    gpu()         the public PaLM sizes (150M-1B) on one or more GPUs

`python -m rlhf_core recipe --base CKPT` prints the recipe for a checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rlhf_core.checkpoint import CONFIG_FILE, CheckpointError, read_model_config
from rlhf_core.commands import checkpoint_recipe
from rlhf_core.dpo import DPOConfig
from rlhf_core.palm import PaLMConfig
from rlhf_core.ppo import PPOConfig
from rlhf_core.rejection_sampling import RejectionSamplingConfig
from rlhf_core.reward import RewardHeadConfig
from rlhf_core.reward_training import RewardTrainingConfig
from rlhf_core.sft import SFTConfig

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

Algorithm = Literal["ppo", "dpo", "rejection_sampling"]
ALGORITHMS: tuple[Algorithm, ...] = ("ppo", "dpo", "rejection_sampling")
# Below this many parameters a model gets the CPU recipe.
SMALL_MODEL_PARAMETERS = 20_000_000


@dataclass(frozen=True)
class SamplingDefaults:
    """How responses are sampled: for the annotators' queue, evaluation and the trainers."""

    temperature: float = 1.0
    top_p: float | None = None
    max_new_tokens: int = 64


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    algorithm: Algorithm  # what a full round runs after the reward model
    sampling: SamplingDefaults
    reward_head: RewardHeadConfig
    reward: RewardTrainingConfig
    sft: SFTConfig
    dpo: DPOConfig
    ppo: PPOConfig
    rejection_sampling: RejectionSamplingConfig

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def cpu_small() -> Recipe:
    sampling = SamplingDefaults(temperature=1.0, max_new_tokens=64)
    return Recipe(
        name="cpu_small",
        description="models up to ~20M parameters on CPU cores (the embedded demo)",
        algorithm="ppo",
        sampling=sampling,
        reward_head=RewardHeadConfig(pooling="mean", members=4, max_length=128),
        reward=RewardTrainingConfig(
            lr=1e-3,
            batch_size=16,
            epochs=8,
            warmup_steps=10,
            patience=3,
            held_out_fraction=0.1,
            probe_steps=300,
        ),
        sft=SFTConfig(lr=3e-4, batch_size=16, epochs=2, max_length=256),
        dpo=DPOConfig(lr=1e-4, beta=0.1, batch_size=16, epochs=2, max_length=256),
        ppo=PPOConfig(
            steps=60,
            rollout_batch_size=32,
            minibatch_size=16,
            ppo_epochs=4,
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            lr=3e-5,
            init_kl_coef=0.4,
            kl_target=3.0,
            max_prompt_length=64,
        ),
        rejection_sampling=RejectionSamplingConfig(
            lr=3e-4,
            batch_size=16,
            epochs=2,
            iterations=2,
            samples_per_prompt=8,
            temperature=sampling.temperature,
            max_new_tokens=sampling.max_new_tokens,
            max_length=256,
        ),
    )


def gpu() -> Recipe:
    sampling = SamplingDefaults(temperature=1.0, max_new_tokens=256)
    return Recipe(
        name="gpu",
        description="the public PaLM sizes (150M-1B parameters) on GPUs",
        algorithm="ppo",
        sampling=sampling,
        reward_head=RewardHeadConfig(pooling="mean_last", members=4, max_length=1024),
        reward=RewardTrainingConfig(lr=3e-5, epochs=2, patience=1),
        sft=SFTConfig(lr=1e-5, max_length=1024),
        dpo=DPOConfig(lr=5e-7, beta=0.1, max_length=1024),
        ppo=PPOConfig(
            steps=200,
            rollout_batch_size=64,
            minibatch_size=16,
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            lr=1e-6,
            kl_target=6.0,
            max_prompt_length=768,
        ),
        rejection_sampling=RejectionSamplingConfig(
            lr=1e-5,
            samples_per_prompt=8,
            temperature=sampling.temperature,
            max_new_tokens=sampling.max_new_tokens,
            max_length=1024,
        ),
    )


RECIPES: dict[str, Callable[[], Recipe]] = {"cpu_small": cpu_small, "gpu": gpu}


def parameter_count(config: PaLMConfig) -> int:
    """Parameters of a PaLM of `config` (tied embedding), without building it."""
    inner = config.heads * config.dim_head
    kv = config.kv_heads * config.dim_head
    hidden = config.ff_mult * config.dim
    fused = config.dim * (inner + 2 * kv + 2 * hidden)
    qk_gains = 2 * config.dim_head if config.qk_norm else 0
    per_layer = fused + inner * config.dim + hidden * config.dim + config.dim + qk_gains
    # The relative position bias is one table shared by every layer.
    relative = config.relative_buckets * config.heads
    bias = relative if config.position_encoding == "relative_bias" else 0
    return config.num_tokens * config.dim + config.depth * per_layer + config.dim + bias


def recipe_for(config: PaLMConfig) -> Recipe:
    """The recipe for a model of `config`'s size."""
    small = parameter_count(config) < SMALL_MODEL_PARAMETERS
    return cpu_small() if small else gpu()


def recipe_for_checkpoint(directory: Path) -> Recipe:
    """The recipe for the PaLM checkpoint at `directory`, read from its config alone (before
    any weights load). Raises CheckpointError for a directory that is not a checkpoint."""
    if not directory.is_dir():
        raise CheckpointError("no such checkpoint directory", directory)
    return recipe_for(read_model_config(directory / CONFIG_FILE))


def add_recipe_command(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "recipe",
        help="print the recommended settings for a checkpoint's model size",
        description="Print as JSON the recipe for the size of the model at --base: the values "
        "that every training and sampling command uses for the options it is not given.",
    )
    parser.add_argument(
        "--base", type=Path, required=True, metavar="CKPT", help="PaLM checkpoint (its config)"
    )
    parser.set_defaults(run=_run_recipe)


def _run_recipe(args: argparse.Namespace) -> None:
    recipe = checkpoint_recipe(args.base)
    print(json.dumps(recipe.to_dict(), indent=2, default=str))  # paths as strings
