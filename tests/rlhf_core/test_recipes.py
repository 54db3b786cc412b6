"""Recipes: the parameter count they are chosen by, the choice, and their inner consistency."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rlhf_core import recipes
from rlhf_core.checkpoint import CONFIG_FILE, CheckpointError, save_checkpoint
from rlhf_core.palm import PaLM, PaLMConfig, mini, palm_150m, tiny
from rlhf_core.recipes import RECIPES, Recipe, parameter_count, recipe_for, recipe_for_checkpoint
from rlhf_core.tokenizer import Tokenizer
from tests.rlhf_core.training_data import small_model

SMALL = small_model()


@pytest.mark.parametrize(
    "config",
    [
        SMALL,
        tiny(),
        dataclasses.replace(SMALL, kv_heads=2, ff_mult=2),
        dataclasses.replace(SMALL, qk_norm=True),
        dataclasses.replace(SMALL, position_encoding="relative_bias", ff_activation="geglu"),
    ],
    ids=["small", "tiny", "grouped_query", "qk_norm", "relative_bias"],
)
def test_the_parameter_count_is_that_of_the_built_model(config: PaLMConfig) -> None:
    built = sum(parameter.numel() for parameter in PaLM(config).parameters())
    assert parameter_count(config) == built


@pytest.mark.parametrize("preset", [tiny, mini])
def test_models_below_twenty_million_parameters_get_the_cpu_recipe(
    preset: Callable[[], PaLMConfig],
) -> None:
    assert parameter_count(preset()) < 20_000_000
    assert recipe_for(preset()).name == "cpu_small"


def test_the_public_palm_sizes_get_the_gpu_recipe() -> None:
    assert parameter_count(palm_150m()) > 100_000_000
    assert recipe_for(palm_150m()).name == "gpu"


def test_a_model_of_exactly_the_threshold_is_no_longer_small(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(recipes, "SMALL_MODEL_PARAMETERS", parameter_count(tiny()))
    assert recipe_for(tiny()).name == "gpu"
    monkeypatch.setattr(recipes, "SMALL_MODEL_PARAMETERS", parameter_count(tiny()) + 1)
    assert recipe_for(tiny()).name == "cpu_small"


@pytest.mark.parametrize("make", RECIPES.values(), ids=RECIPES.keys())
def test_every_trainer_samples_as_the_recipe_says(make: Callable[[], Recipe]) -> None:
    recipe = make()
    sampling = recipe.sampling
    for trainer in (recipe.ppo, recipe.rejection_sampling):
        assert trainer.temperature == sampling.temperature
        assert trainer.max_new_tokens == sampling.max_new_tokens
    assert recipe.rejection_sampling.top_p == sampling.top_p


def test_the_recipe_for_a_checkpoint_is_read_from_its_config(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "small", PaLM(SMALL), Tokenizer.byte_fallback())
    assert recipe_for_checkpoint(tmp_path / "small").name == "cpu_small"
    # Only the config is read: a directory with nothing but a large model's config will do.
    large = tmp_path / "large"
    large.mkdir()
    (large / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(palm_150m())))
    assert recipe_for_checkpoint(large).name == "gpu"


def test_a_missing_checkpoint_directory_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        recipe_for_checkpoint(tmp_path / "absent")
