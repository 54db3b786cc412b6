import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf_core.checkpoint import load_checkpoint
from rlhf_core.cli import main
from tests.rlhf_core.test_reference_import import DIM, reference_state_dict
from tests.rlhf_core.training_data import prepare_tiny_dataset

COMMANDS = ("pretrain", "generate", "import-checkpoint")
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
    assert main([*argv, "--layernorm-convention", "gamma", *options]) == 1
    [line] = error_lines(capsys)
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / "out").exists()


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
