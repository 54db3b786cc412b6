"""Training rounds end to end, the task run in this process: it claims the round and runs its
stages in child processes (rlhf_core on the CPU, the "ci" preset, a tiny model). The rounds on
real worker processes, under faults, are in test_training_faults.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from rlhf_core.checkpoint import CONFIG_FILE, read_model_config
from rlhf_core.recipes import recipe_for
from rlhf_core.reward_io import load_reward_model
from rlhf_core.sequences import collate, encode_responses
from tests.webapp.annotation.conftest import AddItems, MakeProject
from tests.webapp.exports.conftest import AddLabel
from tests.workers.training_fixtures import (  # noqa: F401 (fixtures)
    BASE_CHECKPOINT,
    add_items,
    add_label,
    base_version,
    likert_project,
    make_project,
    make_round,
    model_store,
    prefer_the_tree,
    project,
    tiny_checkpoint,
)
from webapp.accounts.models import User
from webapp.annotation.models import Item, ModelVersion, Project, Prompt, Response
from webapp.annotation.questions import TaskType
from webapp.exports.rows import split_of
from webapp.training import presets, rounds
from webapp.training.models import RoundKind, RoundLog, RoundMetric, RoundState, TrainingRound
from workers.stage_runner import MIN_JUDGE_PREFERENCES
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
    # The child is its parent's checkpoint sampled with the same seed: each of its samples is
    # the parent's beside it, so every pair takes the parent's other sample of the prompt.
    assert training_round.summary["generate"]["identical_samples"] == expected
    items = queued_items(child)
    assert len(items) == expected
    for item in items:  # every item: child against parent on one prompt, blind
        versions = {r.model_version_id for r in item.responses.all()}
        assert versions == {child.pk, base_version.pk}
        assert {r.prompt_id for r in item.responses.all()} == {item.prompt_id}
        assert len({r.text.strip() for r in item.responses.all()}) == 2
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
    assert resolved["reward_head"]["dataclass"] == "RewardHeadConfig"
    assert resolved["reward_head"]["members"] == training_round.config["reward"]["head"]["members"]
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
    # Step 0 is the linear probe's held-out evaluation, before any fine-tuning step.
    assert steps and all("loss" in row.values or "val_loss" in row.values for row in steps)
    assert "val_pairwise_accuracy" in steps.last().values  # the held-out evaluation joins it
    output = model_store / training_round.run_dir / "stages/reward"
    assert (output / "model").is_dir()
    # The size of the process group the stage trained in, not the launcher's environment: on
    # a machine without GPUs, two processes that never joined would each train alone.
    assert json.loads((output / "result.json").read_text())["processes"] == 2


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


def logged(training_round: TrainingRound) -> list[str]:
    return list(
        RoundLog.objects.filter(round=training_round)
        .order_by("pk")
        .values_list("message", flat=True)
    )


def prompt_ids(store: Path, training_round: TrainingRound, use: str) -> list[int]:
    """The prompts the round chose for `use` (its prompts-<use>.jsonl)."""
    lines = (store / training_round.run_dir / f"prompts-{use}.jsonl").read_text()
    return [json.loads(line)["id"] for line in lines.splitlines() if line.strip()]


def sides(training_round: TrainingRound) -> dict[str, set[int]]:
    """The project's prompts on each side of the round's label snapshot's train/test split."""
    snapshot = training_round.label_snapshot
    assert snapshot is not None
    found: dict[str, set[int]] = {"train": set(), "test": set()}
    for pk, digest in Prompt.objects.filter(project=training_round.project).values_list(
        "pk", "digest"
    ):
        found[split_of(digest, snapshot.seed, snapshot.test_share)].add(pk)
    return found


def base_recipe(store: Path) -> Any:
    """The recipe for the size of the tests' base model."""
    return recipe_for(read_model_config(store / BASE_CHECKPOINT / CONFIG_FILE))


@pytest.mark.slow
@pytest.mark.django_db
def test_a_likert_only_reward_round_trains_a_reward_model_whose_reward_is_the_expected_score(
    likert_project: Project,  # noqa: F811
    model_store: Path,  # noqa: F811
) -> None:
    training_round = make_round(likert_project, RoundKind.REWARD)
    assert run_round.apply(args=[training_round.pk]).get() == RoundState.SUCCEEDED
    training_round.refresh_from_db()
    assert training_round.summary["reward"]["heads"] == ["likert"]
    model, tokenizer = load_reward_model(
        model_store / training_round.run_dir / "stages/reward/model", "cpu"
    )
    # No scalar head: nothing could have trained it (before, every reward model had one).
    assert model.config.pairwise is False and model.scalar_head is None
    assert model.config.attributes == ("helpfulness", "correctness")
    assert model.trained_heads == {"likert"}
    prompts = ["Prompt 0: explain item 0."] * 2
    responses = ["see the tree 0", "a calm cat 1"]
    batch = collate(encode_responses(tokenizer, prompts, responses), tokenizer.pad_id)
    with torch.no_grad():
        output = model(batch.tokens, batch.attention_mask, batch.response_mask)
    assert output.member_rewards is None and output.expected_scores is not None
    # The reward is the expected helpfulness on the 1-5 scale, and the model scores with it.
    torch.testing.assert_close(output.rewards, output.expected_scores[:, 0])
    assert ((output.rewards >= 1) & (output.rewards <= 5)).all()
    assert model.score(prompts, responses, tokenizer).isfinite().all()


@pytest.mark.slow
@pytest.mark.django_db
def test_a_reward_round_starts_from_the_recipe_for_the_base_models_size(
    project: Project,  # noqa: F811
    model_store: Path,  # noqa: F811
) -> None:
    training_round = make_round(project, RoundKind.REWARD)
    assert run_round.apply(args=[training_round.pk]).get() == RoundState.SUCCEEDED
    training_round.refresh_from_db()
    resolved = training_round.config["resolved"]["reward"]
    recipe = base_recipe(model_store)
    assert recipe.name == "cpu_small"  # the tiny model's size
    # What the "ci" preset does not set comes from the recipe, not the dataclass's defaults...
    assert "lr" not in presets.PRESETS["ci"]["reward"]
    assert resolved["lr"] == recipe.reward.lr != type(recipe.reward)().lr
    assert resolved["warmup_steps"] == recipe.reward.warmup_steps
    assert resolved["held_out_fraction"] == recipe.reward.held_out_fraction
    # ... and what it sets overrides the recipe.
    assert resolved["max_steps"] == presets.PRESETS["ci"]["reward"]["max_steps"]


@pytest.mark.slow
@pytest.mark.django_db
def test_a_reward_model_with_too_few_held_out_preferences_warns_the_round(
    project: Project,  # noqa: F811
    model_store: Path,  # noqa: F811
) -> None:
    # Half of the 11 training prompts held out: a handful of preferences, too few to tell.
    training_round = make_round(project, RoundKind.REWARD, reward={"held_out_fraction": 0.5})
    assert run_round.apply(args=[training_round.pk]).get() == RoundState.SUCCEEDED
    training_round.refresh_from_db()
    summary = training_round.summary["reward"]
    assert 0 < summary["held_out_preferences"] < 20
    [warning] = summary["warnings"]
    assert warning.startswith(f"only {summary['held_out_preferences']} held-out preference(s)")
    assert rounds.warnings_of(training_round.pk) == [f"reward: {warning}"]
    assert RoundLog.objects.get(round=training_round, level="warning").message == (
        f"reward: {warning}"
    )


@pytest.mark.slow
@pytest.mark.django_db
def test_a_ppo_round_trains_on_the_snapshots_training_prompts_and_evaluates_on_its_test_prompts(
    project: Project,  # noqa: F811
    add_items: AddItems,  # noqa: F811
    model_store: Path,  # noqa: F811
) -> None:
    add_items(project, prompts=8, responses=2)  # unlabelled prompts: two more on the test side
    training_round = make_round(project, RoundKind.FULL)
    assert run_round.apply(args=[training_round.pk]).get() == RoundState.SUCCEEDED
    training_round.refresh_from_db()
    split = sides(training_round)
    assert len(split["test"]) == 3 and len(split["train"]) == 17
    trained_on = prompt_ids(model_store, training_round, presets.PPO)
    evaluated_on = prompt_ids(model_store, training_round, presets.EVALUATE)
    assert not set(trained_on) & set(evaluated_on)
    assert set(trained_on) == split["train"]  # every training prompt, and only those
    assert set(evaluated_on) == split["test"]  # fewer than the preset's 4 prompts: all of them
    evaluation = training_round.summary["evaluate"]
    assert evaluation["prompts"] == 3 and evaluation["held_out_labels"] == 1
    # The round's own reward model judges; one held-out preference is too few for a judge.
    version = training_round.result_version
    assert version is not None
    assert {"proxy_win_rate", "proxy_win_rate_low", "proxy_win_rate_high"} <= set(version.metrics)
    assert "judge_win_rate" not in version.metrics
    assert (
        f"evaluate: 1 held-out preference(s), fewer than {MIN_JUDGE_PREFERENCES}: "
        "no independent judge this round."
    ) in logged(training_round)


@pytest.mark.slow
@pytest.mark.django_db
def test_the_evaluate_stage_judges_by_a_reward_model_fitted_on_the_held_out_labels(
    make_project: MakeProject,  # noqa: F811
    add_items: AddItems,  # noqa: F811
    add_label: AddLabel,  # noqa: F811
    annotator: User,
    base_version: ModelVersion,  # noqa: F811
    model_store: Path,  # noqa: F811
) -> None:
    judged = make_project(TaskType.PAIRWISE, slug="judged", serving_version=base_version)
    # 135 labelled prompts: 20 of them on the snapshot's test side (seed 0, test share 0.1).
    prefer_the_tree(add_items(judged, prompts=135, responses=2), annotator, add_label)
    training_round = make_round(judged, RoundKind.FULL)
    assert run_round.apply(args=[training_round.pk]).get() == RoundState.SUCCEEDED
    training_round.refresh_from_db()
    held_out = len(sides(training_round)["test"])
    assert held_out == MIN_JUDGE_PREFERENCES
    assert training_round.summary["evaluate"]["held_out_labels"] == held_out
    version = training_round.result_version
    assert version is not None
    for scorer in ("judge", "proxy"):  # the held-out judge beside the round's own reward model
        rate = version.metrics[f"{scorer}_win_rate"]
        low, high = (
            version.metrics[f"{scorer}_win_rate_low"],
            version.metrics[f"{scorer}_win_rate_high"],
        )
        assert 0 <= low <= rate <= high <= 1
    assert f"evaluate: a judge fitted on {held_out} held-out preferences." in logged(training_round)


@pytest.mark.slow
@pytest.mark.django_db
def test_evaluation_fails_with_the_reason_when_the_test_split_holds_no_prompt(
    make_project: MakeProject,  # noqa: F811
    add_items: AddItems,  # noqa: F811
    add_label: AddLabel,  # noqa: F811
    annotator: User,
    base_version: ModelVersion,  # noqa: F811
    model_store: Path,  # noqa: F811
) -> None:
    child = ModelVersion.objects.create(
        name="child", parent=base_version, checkpoint_dir=base_version.checkpoint_dir
    )
    unsplit = make_project(TaskType.PAIRWISE, slug="unsplit", serving_version=child)
    prefer_the_tree(add_items(unsplit, prompts=7, responses=2), annotator, add_label)
    training_round = make_round(unsplit, RoundKind.EVALUATE)
    assert run_round.apply(args=[training_round.pk]).get() == RoundState.FAILED
    training_round.refresh_from_db()
    assert sides(training_round)["test"] == set()  # prompts 0 to 6 all train
    assert training_round.error == (
        "evaluate: Project unsplit has no prompts on the test side of the label snapshot's "
        "split to sample."
    )
    assert training_round.stages_done == [presets.LABELS]


@pytest.mark.slow
@pytest.mark.django_db
def test_rejection_sampling_rounds_register_a_version_with_their_resolved_settings(
    project: Project,  # noqa: F811
    base_version: ModelVersion,  # noqa: F811
    model_store: Path,  # noqa: F811
) -> None:
    recipe = base_recipe(model_store)
    # A full round with rejection sampling fits the reward model that a rejection sampling
    # round (which fits none) then samples against.
    full = make_round(project, RoundKind.FULL, algorithm=presets.REJECTION_SAMPLING)
    assert run_round.apply(args=[full.pk]).get() == RoundState.SUCCEEDED
    alone = make_round(project, RoundKind.REJECTION_SAMPLING)
    assert run_round.apply(args=[alone.pk]).get() == RoundState.SUCCEEDED
    for training_round, kind in ((full, RoundKind.FULL), (alone, RoundKind.REJECTION_SAMPLING)):
        training_round.refresh_from_db()
        assert training_round.stages_done == presets.plan(kind, presets.REJECTION_SAMPLING)
        resolved = training_round.config["resolved"][presets.REJECTION_SAMPLING]
        assert resolved["dataclass"] == "RejectionSamplingConfig"
        assert resolved["iterations"] == 1  # the preset's
        assert resolved["lr"] == recipe.rejection_sampling.lr  # the recipe's
        version = training_round.result_version
        assert version is not None and version.parent == base_version
        assert version.checkpoint_dir.endswith("stages/rejection_sampling/model")
        assert (model_store / version.checkpoint_dir / "metadata.json").is_file()
        assert "proxy_win_rate" in version.metrics
    assert presets.REWARD not in alone.stages_done
