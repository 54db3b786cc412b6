import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from rlhf_core import commands, evaluation, recipes
from rlhf_core.checkpoint import CONFIG_FILE, load_checkpoint, read_metadata, save_checkpoint
from rlhf_core.cli import main
from rlhf_core.commands import FROM_RECIPE
from rlhf_core.dpo import DPOConfig
from rlhf_core.finetuning import FineTuneConfig
from rlhf_core.palm import PaLM
from rlhf_core.ppo import PPOConfig
from rlhf_core.records import PairwisePreference, Ranking, write_records
from rlhf_core.rejection_sampling import RejectionSamplingConfig
from rlhf_core.reward import RewardHeadConfig
from rlhf_core.reward_io import load_reward_model, save_reward_model
from rlhf_core.reward_labels import LabelRecord, split_by_prompt
from rlhf_core.reward_training import RewardTrainingConfig, heads_for
from rlhf_core.sft import SFTConfig
from rlhf_core.tokenizer import Tokenizer
from tests.rlhf_core.test_checkpoint import flip_a_byte_inside_a_record
from tests.rlhf_core.test_reference_import import DIM, reference_state_dict
from tests.rlhf_core.training_data import (
    plumbing_reward_model,
    prepare_tiny_dataset,
    small_model,
)

# The commands that take settings from a recipe, and those that do not.
RECIPE_COMMANDS = (
    "generate",
    "sft",
    "train-reward",
    "dpo",
    "ppo",
    "rejection-sampling",
    "evaluate",
    "best-of-n",
)
COMMANDS = ("pretrain", "import-checkpoint", "recipe", *RECIPE_COMMANDS)
SMALL_MODEL = '{"dim": 32, "depth": 2, "heads": 2, "dim_head": 16}'
QUICK = ["--batch-size", "4", "--grad-accum", "2", "--eval-every", "2", "--eval-batches", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny_dataset(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    argv = ["pretrain", "--data", str(data), "--out", str(out), "--config", SMALL_MODEL]
    assert main([*argv, *QUICK, "--steps", "4", "--lr", "1e-2"]) == 0
    return out


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("command", COMMANDS)
def test_help_works_for_every_training_command(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: python -m rlhf_core {command}" in capsys.readouterr().out


@pytest.mark.parametrize("command", RECIPE_COMMANDS)
def test_options_left_out_say_they_take_the_recipes_values(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert FROM_RECIPE in " ".join(capsys.readouterr().out.split())


def test_pretrain_writes_a_run_and_reports_it(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = load_checkpoint(trained / "final")
    assert checkpoint.config.dim == 32
    assert checkpoint.config.num_tokens == 258  # filled in from the dataset
    assert checkpoint.metadata.step == 4
    assert (trained / "training_state" / "step-000004").is_dir()
    run = json.loads((trained / "run.json").read_text())
    assert run["pretrain"]["grad_accum_steps"] == 2


def test_pretrain_again_resumes_and_extends_the_run(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["pretrain", "--data", str(data), "--out", str(tmp_path), "--config", SMALL_MODEL]
    assert main([*argv, *QUICK, "--steps", "2"]) == 0
    assert main([*argv, *QUICK, "--steps", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("trained 3 steps (loss ")
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["step"] for row in rows if '"loss"' in row] == [1, 2, 3]


def test_generate_prints_each_prompt_with_its_completion(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "--checkpoint", str(trained / "final"), "--prompt", "the quick"]
    argv += ["--prompt", "", "--max-new-tokens", "8", "--seed", "0", "--top-k", "5"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first  # seeded
    completion, separator, _ = first.split("\n", 2)
    assert completion.startswith("the quick")
    assert separator == "-" * 40


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--top-p", "2"], "error: top_p must be in (0, 1]"),
        (["--temperature", "-1"], "error: temperature must be >= 0"),
        (["--max-new-tokens", "0"], "error: --max-new-tokens must be >= 1"),
    ],
)
def test_generate_refuses_bad_sampling_options(
    trained: Path, options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "--checkpoint", str(trained / "final"), "--prompt", "x", *options]
    assert main(argv) == 1
    assert error_lines(capsys) == [message]


def test_generate_names_a_missing_or_corrupt_checkpoint(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x"]) == 1
    assert error_lines(capsys) == [f"error: {tmp_path / 'nope'}: no such checkpoint directory"]

    broken = shutil.copytree(trained / "final", tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"\0" * 10)
    assert main(["generate", "--checkpoint", str(broken), "--prompt", "x"]) == 1
    [line] = error_lines(capsys)
    assert line.startswith(f"error: {broken / 'model.safetensors'}: SHA-256 differs")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--batch-size", "3"], "error: batch_size must be a multiple of grad_accum_steps"),
        (["--config", '{"dim": 32, "colour": 1}'], "error: --config: unknown PaLMConfig field"),
        (
            ["--config", '{"dim": 32, "depth": 1, "heads": 3, "kv_heads": 2}'],
            "error: --config: heads (3)",
        ),
        (["--config", '{"dim": 32}'], "error: --config: incomplete PaLMConfig"),
    ],
)
def test_pretrain_refuses_bad_settings_without_writing_anything(
    data: Path,
    tmp_path: Path,
    options: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    argv = ["pretrain", "--data", str(data), "--out", str(out), "--grad-accum", "2", *options]
    assert main(argv) == 1
    [line] = error_lines(capsys)
    assert line.startswith(message)
    assert not out.exists()


def test_pretrain_names_a_directory_that_is_not_a_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    [line] = error_lines(capsys)
    assert line == f"error: {tmp_path}: no train.json: not a prepared dataset (run prepare-data)"


def test_pretrain_refuses_a_config_that_is_not_json(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--data", str(data), "--out", str(tmp_path), "--config", "{dim"])
    assert exit_info.value.code == 2
    assert "argument --config: not a JSON object or a JSON file" in capsys.readouterr().err


def save_reference(path: Path) -> Path:
    state = reference_state_dict("offset_one")
    state["token_emb.weight"] = state["to_logits.weight"] = torch.randn(258, DIM)
    torch.save(state, path)
    return path


def test_import_checkpoint_converts_a_reference_file_that_generate_can_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = save_reference(tmp_path / "palm.pt"), tmp_path / "imported"
    argv = ["import-checkpoint", str(source), "--out", str(out)]
    assert main([*argv, "--layernorm-convention", "offset_one", "--dim", str(DIM)]) == 0
    assert capsys.readouterr().out.startswith(f"imported {source} -> {out}")
    assert load_checkpoint(out).metadata.extra["layernorm_convention"] == "offset_one"

    assert main(["generate", "--checkpoint", str(out), "--prompt", "hi", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("hi")


@pytest.mark.parametrize(
    ("setup", "options", "message"),
    [
        ("missing", [], "no such file"),
        ("garbage", [], "not a readable PyTorch file"),
        ("reference", ["--heads", "8"], "heads=8 but the weights say 4"),
        ("reference", ["--config", '{"colour": 1}'], "--config: unknown PaLMConfig field"),
        ("reference", ["--tokenizer", "nope.json"], "no such tokenizer file"),
    ],
)
def test_import_checkpoint_reports_bad_input_in_one_line_and_writes_nothing(
    tmp_path: Path,
    setup: str,
    options: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "palm.pt"
    if setup == "reference":
        save_reference(source)
    elif setup == "garbage":
        source.write_bytes(b"garbage")
    argv = ["import-checkpoint", str(source), "--out", str(tmp_path / "out")]
    assert main([*argv, "--layernorm-convention", "offset_one", *options]) == 1
    [line] = error_lines(capsys)
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / "out").exists()


def test_import_checkpoint_refuses_a_file_whose_checksums_fail_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = save_reference(tmp_path / "palm.pt")
    record = flip_a_byte_inside_a_record(source)
    torch.load(source, weights_only=True)  # torch.load alone takes it
    argv = ["import-checkpoint", str(source), "--out", str(tmp_path / "out")]
    assert main([*argv, "--layernorm-convention", "offset_one"]) == 1
    [line] = error_lines(capsys)
    assert line == (
        f"error: {source}: record '{record}' does not match its CRC-32: the file is corrupt "
        "(damaged on disk or in transfer)"
    )
    assert sorted(tmp_path.iterdir()) == [source]


def test_import_checkpoint_refuses_a_contradicting_layernorm_convention_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = save_reference(tmp_path / "palm.pt"), tmp_path / "out"
    argv = ["import-checkpoint", str(source), "--out", str(out), "--layernorm-convention", "gamma"]
    assert main(argv) == 1
    [line] = error_lines(capsys)
    assert line == (
        f"error: --layernorm-convention gamma: the weights of {source} say 'offset_one'; pass "
        "--layernorm-convention offset_one, or add --force-layernorm-convention to import them "
        "as stated"
    )
    assert not out.exists()

    assert main([*argv, "--force-layernorm-convention"]) == 0
    assert load_checkpoint(out).metadata.extra["layernorm_convention"] == "gamma"


def test_import_checkpoint_warns_that_a_legacy_file_has_no_checksums(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "palm.pt"
    torch.save(
        torch.load(save_reference(source), weights_only=True),
        source,
        _use_new_zipfile_serialization=False,
    )
    argv = ["import-checkpoint", str(source), "--out", str(tmp_path / "out")]
    assert main([*argv, "--layernorm-convention", "offset_one"]) == 0
    assert error_lines(capsys) == [
        f"warning: {source}: no checksums to verify (legacy format, or saved without CRC-32s)"
    ]


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(
    data: Path, tmp_path: Path
) -> None:
    """DDP over gloo on the CPU, through `accelerate launch` and the CLI.

    `accelerate launch --cpu` starts more than one process only through MPI, which these
    machines lack; its torchrun launcher (`--multi_gpu`) with ACCELERATE_USE_CPU=true gives
    the same CPU processes over gloo.
    """
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    options = ["--data", str(data), "--config", SMALL_MODEL, "--steps", "3"]
    options += ["--eval-every", "2", "--eval-batches", "1", "--checkpoint-every", "2"]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    per_process = ["--out", str(two), "--batch-size", "4", "--grad-accum", "2", *options]
    result = subprocess.run(
        [*launch, "-m", "rlhf_core", "pretrain", *per_process],
        capture_output=True,
        text=True,
        env=environment,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trained 3 steps") == 1  # printed by the main process only
    assert load_checkpoint(two / "checkpoints" / "step-000002").metadata.step == 2
    assert load_checkpoint(two / "final").metadata.tokens_seen == 3 * 8 * 32

    # The same 8 blocks a step, in 4 micro-batches of 2 here; evaluated on 2 micro-batches.
    one = tmp_path / "one"
    single = ["--batch-size", "8", "--grad-accum", "4", "--eval-batches", "2"]
    assert main(["pretrain", "--out", str(one), *options, *single]) == 0
    for row_two, row_one in zip(rows(two), rows(one), strict=True):
        assert row_two.keys() == row_one.keys()
        for key in ("loss", "val_loss", "grad_norm"):
            if key in row_one:
                assert row_two[key] == pytest.approx(row_one[key], rel=1e-5), key


def rows(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# Defaults from the recipe: every command fills the options left out from the recipe for the size
# of the model it loads. A recipe whose every value differs from the trainers' own defaults (and
# is small: a run takes a second) shows which values a command used.

TOKENIZER = Tokenizer.byte_fallback()
PROMPTS = ["ab", "hello there", "x", "eeee"]
PAIRS = [
    *(PairwisePreference(f"q{index}:", "eee", "abc") for index in range(10)),
    PairwisePreference("tie:", "ea", "ae", tie=True),
]
RANKINGS = [Ranking(f"rank{index}:", ("eee", "eab", "abc")) for index in range(3)]
LABELS: list[LabelRecord] = [*PAIRS, *RANKINGS]
FINE_TUNING: dict[str, Any] = {
    "lr": 2e-3,
    "batch_size": 3,
    "epochs": 1,
    "max_steps": 2,
    "warmup_steps": 1,
    "weight_decay": 0.02,
    "grad_clip": 0.5,
    "max_length": 40,
    "seed": 3,
    "mixed_precision": "no",
}
RECIPE = dataclasses.replace(
    recipes.cpu_small(),
    sampling=recipes.SamplingDefaults(temperature=0.7, top_p=0.9, max_new_tokens=5),
    reward_head=RewardHeadConfig(pooling="last", members=2, max_length=48),
    reward=RewardTrainingConfig(
        lr=2e-3,
        batch_size=4,
        epochs=1,
        warmup_steps=1,
        patience=2,
        held_out_fraction=0.3,
        seed=5,
        mixed_precision="no",
    ),
    sft=SFTConfig(**FINE_TUNING),
    dpo=DPOConfig(**FINE_TUNING, beta=0.3, label_smoothing=0.1, weight_by_strength=True),
    ppo=PPOConfig(
        steps=1,
        rollout_batch_size=4,
        minibatch_size=2,
        ppo_epochs=1,
        max_new_tokens=5,
        max_prompt_length=9,
        temperature=0.7,
        lr=2e-5,
        init_kl_coef=0.03,
        kl_target=2.5,
        no_eos_penalty=0.5,
        normalization_samples=4,
        seed=3,
        mixed_precision="no",
    ),
    rejection_sampling=RejectionSamplingConfig(
        **FINE_TUNING, samples_per_prompt=3, iterations=1, temperature=0.7, max_new_tokens=5
    ),
)
# Per trainer: the recipe's config it trains with, and options with the settings they change.
TRAINERS: dict[str, tuple[FineTuneConfig | PPOConfig, list[str], dict[str, Any]]] = {
    "sft": (RECIPE.sft, ["--lr", "0.005", "--grad-clip", "0"], {"lr": 0.005, "grad_clip": None}),
    "dpo": (
        RECIPE.dpo,
        ["--beta", "0.5", "--no-weight-by-strength"],
        {"beta": 0.5, "weight_by_strength": False},
    ),
    "ppo": (
        RECIPE.ppo,
        ["--no-eos-penalty", "0", "--kl-target", "3.5", "--max-new-tokens", "3"],
        {"no_eos_penalty": 0.0, "kl_target": 3.5, "max_new_tokens": 3},
    ),
    "rejection-sampling": (
        RECIPE.rejection_sampling,
        ["--samples-per-prompt", "2", "--max-length", "32"],
        {"samples_per_prompt": 2, "max_length": 32},
    ),
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, which only slow a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def recipe(monkeypatch: pytest.MonkeyPatch) -> recipes.Recipe:
    monkeypatch.setattr(recipes, "recipe_for", lambda config: RECIPE)
    return RECIPE


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny policy, a reward model that scores, prompts, preference pairs and rankings."""
    directory = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    save_checkpoint(directory / "policy", PaLM(small_model()), TOKENIZER)
    save_reward_model(directory / "reward", plumbing_reward_model(small_model()), TOKENIZER)
    lines = "".join(json.dumps({"prompt": prompt}) + "\n" for prompt in PROMPTS)
    (directory / "prompts.jsonl").write_text(lines)
    write_records(directory / "pairs.jsonl", PAIRS)
    write_records(directory / "rankings.jsonl", RANKINGS)
    return directory


def trainer_argv(command: str, world: Path, out: Path) -> list[str]:
    policy, labels = str(world / "policy"), str(world / "pairs.jsonl")
    on_prompts = ["--reward", str(world / "reward"), "--prompts", str(world / "prompts.jsonl")]
    inputs = {
        "sft": ["--base", policy, "--data", labels],
        "dpo": ["--base", policy, "--pairs", labels],
        "ppo": ["--policy", policy, *on_prompts],
        "rejection-sampling": ["--policy", policy, *on_prompts],
    }
    return [command, *inputs[command], "--out", str(out)]


def saved_config(command: str, out: Path) -> FineTuneConfig | PPOConfig:
    """The settings a training command stored with the checkpoint it wrote, as its config."""
    if command == "ppo":
        return PPOConfig(**read_metadata(out / "final" / "metadata.json").extra["ppo"])
    extra = read_metadata(out / "metadata.json").extra
    kind = {"sft": SFTConfig, "dpo": DPOConfig, "rejection-sampling": RejectionSamplingConfig}
    return kind[command](**extra[extra["trainer"]])


@pytest.mark.parametrize("command", TRAINERS)
@pytest.mark.parametrize("given", [False, True], ids=["no-options", "options"])
@pytest.mark.usefixtures("recipe")
def test_a_trainer_uses_the_recipes_settings_but_for_the_options_given(
    command: str, given: bool, world: Path, tmp_path: Path
) -> None:
    config, options, changes = TRAINERS[command]
    argv = trainer_argv(command, world, tmp_path / "out")
    assert main([*argv, *(options if given else [])]) == 0
    expected = dataclasses.replace(config, **changes) if given else config
    assert saved_config(command, tmp_path / "out") == expected


def held_out_preferences(labels: list[LabelRecord], fraction: float) -> int:
    _, held = split_by_prompt(labels, fraction)
    pairs = sum(isinstance(label, PairwisePreference) and not label.tie for label in held)
    return pairs + sum(math.comb(len(r.responses), 2) for r in held if isinstance(r, Ranking))


@pytest.mark.usefixtures("recipe")
def test_train_reward_uses_the_recipes_head_and_training_but_for_the_options_given(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = ["--labels", str(world / "pairs.jsonl"), "--labels", str(world / "rankings.jsonl")]
    argv = ["train-reward", "--base", str(world / "policy"), *labels]
    for name, options, head_changes, training_changes in (
        ("recipe", [], {}, {}),
        (
            "given",
            ["--members", "3", "--patience", "0", "--probe-steps", "7"],
            {"members": 3},
            {"patience": None, "probe_steps": 7},
        ),
    ):
        out = tmp_path / name
        assert main([*argv, "--out", str(out), *options]) == 0
        model, _ = load_reward_model(out)
        head = dataclasses.replace(RECIPE.reward_head, **head_changes)
        assert model.config == heads_for(LABELS, base=head)
        log_file = out.with_name(f"{name}.metrics.jsonl")
        training = dataclasses.replace(RECIPE.reward, log_file=log_file, **training_changes)
        saved = read_metadata(out / "backbone" / "metadata.json").extra["reward_training"]
        assert saved == json.loads(json.dumps(training.to_dict()))
        # Too few held-out preferences for the accuracy to say anything: a warning says so.
        pairs = held_out_preferences(LABELS, RECIPE.reward.held_out_fraction)
        assert 0 < pairs < 20
        warning = f"warning: only {pairs} held-out preference(s): the reward model's accuracy"
        assert capsys.readouterr().err.startswith(warning)


def spy(monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str) -> list[dict[str, Any]]:
    """The keyword arguments of every call of `module.name`, which still runs."""
    calls: list[dict[str, Any]] = []
    real = getattr(module, name)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, recorded)
    return calls


@pytest.mark.parametrize(
    ("command", "module", "function", "sampled"),
    [
        ("generate", commands, "generate", ("temperature", "top_p", "max_new_tokens")),
        ("best-of-n", evaluation, "best_of_n", ("temperature", "top_p", "max_new_tokens")),
        ("evaluate", evaluation, "evaluate_policy", ("temperature", "max_new_tokens")),
    ],
)
@pytest.mark.usefixtures("recipe")
def test_a_sampling_command_samples_as_the_recipe_says_but_for_the_options_given(
    command: str,
    module: ModuleType,
    function: str,
    sampled: tuple[str, ...],
    world: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = spy(monkeypatch, module, function)
    policy, reward = str(world / "policy"), str(world / "reward")
    argv = {
        "generate": ["--checkpoint", policy, "--prompt", "ab"],
        "best-of-n": ["--policy", policy, "--reward", reward, "--prompt", "ab", "--n", "2"],
        "evaluate": ["--policy", policy, "--reward", reward],
    }[command]
    if command == "evaluate":
        argv += ["--prompts", str(world / "prompts.jsonl"), "--device", "cpu"]
    assert main([command, *argv]) == 0
    assert main([command, *argv, "--temperature", "0.5", "--max-new-tokens", "3"]) == 0
    recipe_values = dataclasses.asdict(RECIPE.sampling)
    given = {**recipe_values, "temperature": 0.5, "max_new_tokens": 3}
    assert [{name: call[name] for name in sampled} for call in calls] == [
        {name: values[name] for name in sampled} for values in (recipe_values, given)
    ]


def test_rejection_sampling_fine_tunes_the_policy_on_its_best_samples(
    recipe: recipes.Recipe, world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rs"
    argv = trainer_argv("rejection-sampling", world, out)
    assert main([*argv, "--iterations", "2", "--min-margin", "0.001"]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith(f"rejection sampling: {len(PROMPTS)} prompts, 2 iterations, ")
    assert summary.strip().endswith(f"-> {out}")
    trained, base = load_checkpoint(out), load_checkpoint(world / "policy")
    assert trained.metadata.extra["trainer"] == "rejection_sampling"
    assert trained.metadata.extra["rejection_sampling"]["min_margin"] == 0.001
    assert trained.metadata.step > 0  # it found winners and fine-tuned on them
    weights = base.model.state_dict()
    assert any(
        not torch.equal(tensor, weights[name])
        for name, tensor in trained.model.state_dict().items()
    )


@pytest.mark.usefixtures("recipe")
def test_a_trainers_warnings_are_printed_once_after_its_summary(
    world: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    recwarn: pytest.WarningsRecorder,
) -> None:
    # A reward model whose heads are zero gives every response the same score.
    reward = plumbing_reward_model(small_model())
    for name, parameter in reward.named_parameters():
        if not name.startswith("backbone."):
            torch.nn.init.zeros_(parameter)
    save_reward_model(tmp_path / "flat", reward, TOKENIZER)
    argv = trainer_argv("rejection-sampling", world, tmp_path / "out")
    assert main([*argv, "--reward", str(tmp_path / "flat")]) == 0
    output = capsys.readouterr()
    assert ", 0 winners," in output.out
    lines = output.err.strip().splitlines()
    assert all(line.startswith("warning: ") for line in lines)
    assert any("every response got the same score" in line for line in lines)
    assert not recwarn.list  # not also as Python warnings


def test_recipe_prints_the_recipe_for_the_models_size_from_its_config_alone(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["recipe", "--base", str(world / "policy")]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(
        json.dumps(recipes.cpu_small().to_dict())
    )
    # A config of a 150M-parameter model, without its weights, is enough.
    big = tmp_path / "big"
    big.mkdir()
    config = json.loads((world / "policy" / CONFIG_FILE).read_text())
    config.update(dim=768, depth=12, heads=12, dim_head=64)
    (big / CONFIG_FILE).write_text(json.dumps(config))
    assert main(["recipe", "--base", str(big)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "gpu"
    assert printed["ppo"]["max_new_tokens"] == recipes.gpu().ppo.max_new_tokens
    assert main(["recipe", "--base", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.strip().endswith("no such checkpoint directory")
