"""The embedded demo's model: tokenizer, data and pretraining on the bundled corpus, once."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_core.checkpoint import load_checkpoint
from rlhf_core.cli import main
from rlhf_core.demo import DemoSettings, build_demo_model
from rlhf_core.tokenizer import Tokenizer

QUICK = DemoSettings(vocab_size=300, block_size=64, steps=2, batch_size=4, eval_every=2)


@pytest.mark.slow
def test_the_demo_model_is_built_once_and_then_reused(tmp_path: Path) -> None:
    final = build_demo_model(tmp_path, QUICK, show_progress=False)
    checkpoint = load_checkpoint(final)
    assert checkpoint.metadata.step == 2
    assert checkpoint.tokenizer.vocab_size == 300
    assert checkpoint.config.num_tokens >= 300
    weights = final / "model.safetensors"
    written = weights.stat().st_mtime_ns

    assert build_demo_model(tmp_path, QUICK, show_progress=False) == final
    assert weights.stat().st_mtime_ns == written  # nothing was trained again


@pytest.mark.slow
def test_the_demo_command_builds_and_reports_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A tokenizer already in place is reused (training the full one takes seconds more).
    Tokenizer.train_bpe(["to be or not to be, that is the question"] * 50, 300).save(
        tmp_path / "tokenizer"
    )
    assert main(["demo", "--out", str(tmp_path), "--steps", "2"]) == 0
    assert "demo model: step 2, validation loss" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "run" / "final").metadata.step == 2
