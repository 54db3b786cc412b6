import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_core.cli import main
from rlhf_core.data import PackedDataset
from rlhf_core.tokenizer import Tokenizer

COMMANDS = ("train-tokenizer", "prepare-data")


def write_corpus(directory: Path) -> Path:
    directory.mkdir()
    for index in range(6):
        lines = [f"Scene {index}.", "To be, or not to be, that is the question."] * 10
        (directory / f"scene{index}.md").write_text("\n".join(lines), encoding="utf-8")
    return directory


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("argv", [["--help"], *[[command, "--help"] for command in COMMANDS]])
def test_help_works_for_every_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: python -m rlhf_core" in capsys.readouterr().out


def test_module_runs_as_a_program() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_core", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert all(command in result.stdout for command in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_path_exits_non_zero_with_a_one_line_message(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-corpus"
    assert main([command, str(missing), "--out", str(tmp_path / "out")]) == 1
    assert error_lines(capsys) == [f"error: {missing}: no such file or directory"]
    assert not (tmp_path / "out").exists()


def test_a_corrupt_tokenizer_exits_non_zero_with_a_one_line_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    (tmp_path / "tokenizer.json").write_text("not json", encoding="utf-8")
    argv = ["prepare-data", str(corpus), "--out", str(tmp_path / "out")]
    assert main([*argv, "--tokenizer", str(tmp_path / "tokenizer.json")]) == 1
    [line] = error_lines(capsys)
    assert line.startswith(f"error: {tmp_path / 'tokenizer.json'}: not a valid tokenizer.json")


def test_no_corpus_or_bad_options_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prepare-data", "--out", str(tmp_path)]) == 1
    assert error_lines(capsys) == [
        "error: no corpus given: name INPUT files or directories, or pass --demo"
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare-data", str(tmp_path), "--out", str(tmp_path), "--block-size", "many"])
    assert exit_info.value.code == 2
    assert "invalid int value: 'many'" in capsys.readouterr().err
    corpus = write_corpus(tmp_path / "corpus")
    assert main(["prepare-data", str(corpus), "--out", str(tmp_path), "--block-size", "0"]) == 1
    assert error_lines(capsys) == ["error: block size must be positive, not 0"]


def test_train_tokenizer_then_prepare_data_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    tokenizer_dir, out = tmp_path / "tokenizer", tmp_path / "data"
    assert (
        main(["train-tokenizer", str(corpus), "--out", str(tokenizer_dir), "--vocab-size", "300"])
        == 0
    )
    argv = ["prepare-data", str(corpus), "--out", str(out), "--tokenizer", str(tokenizer_dir)]
    assert main([*argv, "--block-size", "16", "--validation-fraction", "0.3"]) == 0

    report = capsys.readouterr().out
    assert "train: " in report and "validation: " in report
    tokenizer = Tokenizer.load(tokenizer_dir)
    train = PackedDataset(out, "train")
    assert train.metadata.tokenizer_fingerprint == tokenizer.fingerprint
    assert train.metadata.vocab_size == tokenizer.vocab_size <= 300
    total_documents = sum(
        json.loads((out / f"{split}.json").read_text())["num_documents"]
        for split in ("train", "validation")
    )
    assert total_documents == 6
    assert tokenizer.decode(train[0].tolist()).startswith("Scene")
