"""Training rounds end to end, the task run in this process: it claims the round and runs its
stages in child processes (rlhf_core on the CPU, the "ci" preset, a tiny model). The rounds on
real worker processes, under faults, are in test_training_faults.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.webapp.annotation.conftest import AddItems, MakeProject
from tests.webapp.exports.conftest import AddLabel
from tests.workers.training_fixtures import (  # noqa: F401 (fixtures)
    add_items,
    add_label,
    base_version,
    make_project,
    make_round,
    model_store,
    project,
    tiny_checkpoint,
)
from webapp.accounts.models import User
from webapp.annotation.models import Item, ModelVersion, Project, Response
from webapp.annotation.questions import TaskType
from webapp.training import presets
from webapp.training.models import RoundKind, RoundLog, RoundMetric, RoundState
from workers.training import run_round


def queued_items(version: ModelVersion) -> list[Item]:
    return list(Item.objects.filter(responses__model_version=version).distinct())


@pytest.mark.slow
@pytest.mark.django_db
def test_a_generate_round_queues_blind_pairs_once_however_often_it_is_delivered(
    project: Project,  # noqa: F811
    base_version: ModelVersion,  # noqa: F811
    model_store: Path,  # noqa: F811
) -> None:
    child = ModelVersion.objects.create(
        name="child", parent=base_version, checkpoint_dir=base_version.checkpoint_dir
    )
    project.serving_version = child
    project.save(update_fields=["serving_version"])
    training_round = make_round(project, RoundKind.GENERATE)
    assert run_round.apply(args=[training_round.pk]).get() == RoundState.SUCCEEDED
    training_round.refresh_from_db()
    assert training_round.error == "" and training_round.state == RoundState.SUCCEEDED
    config = training_round.config["generate"]
    expected = config["prompts"] * config["samples_per_prompt"]
    assert training_round.samples_added == 2 * expected  # the child's and its parent's
    items = queued_items(child)
    assert len(items) == expected
    for item in items:  # every item: child against parent on one prompt, blind
        versions = {r.model_version_id for r in item.responses.all()}
        assert versions == {child.pk, base_version.pk}
        assert {r.prompt_id for r in item.responses.all()} == {item.prompt_id}
    sampled = Response.objects.filter(model_version=child).first()
    assert sampled is not None and sampled.sampling["round"] == training_round.pk
    assert "temperature" in sampled.sampling
    # Delivered again, or re-sent: nothing more happens.
    assert run_round.apply(args=[training_round.pk]).get() == "skipped"
    assert Response.objects.filter(model_version=child).count() == expected
    assert len(queued_items(child)) == expected


@pytest.mark.slow
@pytest.mark.django_db
def test_a_full_dpo_round_registers_one_version_and_queues_its_samples_against_the_parent(
    project: Project,  # noqa: F811
    base_version: ModelVersion,  # noqa: F811
    model_store: Path,  # noqa: F811
) -> None:
    training_round = make_round(project, RoundKind.FULL, algorithm=presets.DPO)
    assert run_round.apply(args=[training_round.pk]).get() == RoundState.SUCCEEDED
    training_round.refresh_from_db()
    assert training_round.stages_done == presets.plan(RoundKind.FULL, presets.DPO)
    assert training_round.labels_count == 12 and len(training_round.labels_sha256) == 64
    # Each trained stage's settings as rlhf_core's dataclass resolved them, defaults included.
    resolved = training_round.config["resolved"]
    assert resolved["dpo"]["dataclass"] == "DPOConfig" and "beta" in resolved["dpo"]
    assert resolved["reward"]["dataclass"] == "RewardTrainingConfig"
    assert resolved["reward"]["max_steps"] == training_round.config["reward"]["max_steps"]
    assert training_round.summary["sft"] == {"skipped": "no demonstrations"}
    version = training_round.result_version
    assert version is not None and version.parent == base_version
    assert version.name == f"loop-r{training_round.pk}"
    assert (model_store / version.checkpoint_dir / "metadata.json").is_file()
    assert not Path(version.checkpoint_dir).is_absolute()
    assert {"proxy_win_rate", "kl", "held_out"} <= set(version.metrics)
    stages = set(RoundMetric.objects.filter(round=training_round).values_list("stage", flat=True))
    assert {"reward", "dpo", "evaluate"} <= stages
    reward_rows = RoundMetric.objects.filter(round=training_round, stage="reward")
    assert all("loss" in row.values or "val_loss" in row.values for row in reward_rows)
    generate = training_round.config["generate"]
    pairs = generate["prompts"] * generate["samples_per_prompt"]
    assert training_round.samples_added == 2 * pairs  # new and parent, on the same prompts
    assert len(queued_items(version)) == pairs
    assert ModelVersion.objects.filter(produced_by=training_round).count() == 1
    files = json.loads(
        (model_store / training_round.run_dir / "stages/reward/result.json").read_text()
    )
    assert files["summary"]["labels"] > 0


@pytest.mark.slow
@pytest.mark.django_db
def test_a_reward_round_trains_on_two_processes_through_accelerate_launch(
    project: Project,  # noqa: F811
    model_store: Path,  # noqa: F811
) -> None:
    # Half the prompts held out, so the project's few prompts surely give an evaluation.
    training_round = make_round(
        project,
        RoundKind.REWARD,
        launch={"num_processes": 2},
        reward={"held_out_fraction": 0.5},
    )
    assert run_round.apply(args=[training_round.pk]).get() == RoundState.SUCCEEDED
    training_round.refresh_from_db()
    assert RoundLog.objects.filter(
        round=training_round, message="reward: running on 2 processes."
    ).exists()
    steps = RoundMetric.objects.filter(round=training_round, stage="reward").order_by("step")
    assert steps and all("loss" in row.values for row in steps)
    assert "val_pairwise_accuracy" in steps.last().values  # the held-out evaluation joins it
    assert (model_store / training_round.run_dir / "stages/reward/model").is_dir()


@pytest.mark.django_db
def test_a_ppo_round_on_two_processes_is_refused_with_the_reason(
    project: Project,  # noqa: F811
    model_store: Path,  # noqa: F811
) -> None:
    training_round = make_round(project, RoundKind.PPO, launch={"num_processes": 2})
    assert run_round.apply(args=[training_round.pk]).get() == RoundState.FAILED
    training_round.refresh_from_db()
    assert "runs on one process only" in training_round.error
    assert training_round.stages_done == []


@pytest.mark.slow
@pytest.mark.django_db
def test_a_pretrain_round_registers_a_version_without_a_parent(
    project: Project,  # noqa: F811
    model_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {n}: the cat sat on the mat." for n in range(400)))
    settings = {"corpus": [str(corpus)], "vocab_size": 300, "block_size": 32, "steps": 2}
    training_round = make_round(
        project, RoundKind.PRETRAIN, pretrain={**settings, "batch_size": 2, "eval_every": 2}
    )
    assert run_round.apply(args=[training_round.pk]).get() == RoundState.SUCCEEDED
    training_round.refresh_from_db()
    version = training_round.result_version
    assert version is not None and version.parent is None
    assert (model_store / version.checkpoint_dir / "model.safetensors").is_file()
    assert RoundMetric.objects.filter(round=training_round, stage="pretrain").exists()


@pytest.mark.slow
@pytest.mark.django_db
def test_an_sft_round_fine_tunes_the_base_on_the_rewrites(
    make_project: MakeProject,  # noqa: F811
    add_items: AddItems,  # noqa: F811
    add_label: AddLabel,  # noqa: F811
    annotator: User,
    base_version: ModelVersion,  # noqa: F811
) -> None:
    rewriting = make_project(TaskType.REWRITE, slug="rewrites", serving_version=base_version)
    for number, item in enumerate(add_items(rewriting, prompts=8, responses=1)):
        add_label(item, annotator, "rewrite", {"text": f"see the tree {number}"})
    training_round = make_round(rewriting, RoundKind.SFT)
    assert run_round.apply(args=[training_round.pk]).get() == RoundState.SUCCEEDED
    training_round.refresh_from_db()
    assert training_round.summary["sft"]["demonstrations"] > 0
    version = training_round.result_version
    assert version is not None and version.parent == base_version
    assert version.checkpoint_dir.endswith("stages/sft/model")
    assert RoundMetric.objects.filter(round=training_round, stage="sft", step=1).exists()
