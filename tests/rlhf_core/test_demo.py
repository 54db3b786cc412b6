"""The embedded demo's model: tokenizer, data and pretraining on the bundled corpus, once."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from rlhf_core.checkpoint import load_checkpoint
from rlhf_core.cli import main
from rlhf_core.corpus import demo_corpus_paths
from rlhf_core.demo import (
    MAX_PROMPT_CHARS,
    SPEAKER,
    DemoSettings,
    build_demo_model,
    demo_exchanges,
    demo_prompts,
)
from rlhf_core.tokenizer import Tokenizer

QUICK = DemoSettings(vocab_size=300, block_size=64, steps=2, batch_size=4, eval_every=2)


@pytest.mark.slow
def test_the_demo_model_is_built_once_and_then_reused(tmp_path: Path) -> None:
    # Into a folder that does not exist yet, as on a fresh machine.
    final = build_demo_model(tmp_path / "models" / "demo", QUICK, show_progress=False)
    checkpoint = load_checkpoint(final)
    assert checkpoint.metadata.step == 2
    assert checkpoint.tokenizer.vocab_size == 300
    assert checkpoint.config.num_tokens >= 300
    weights = final / "model.safetensors"
    written = weights.stat().st_mtime_ns

    assert build_demo_model(tmp_path / "models" / "demo", QUICK, show_progress=False) == final
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


def test_the_corpus_is_each_speech_with_its_reply_one_document_each() -> None:
    exchanges = list(itertools.islice(demo_exchanges(demo_corpus_paths()), 200))
    for exchange in exchanges:
        first, second = exchange.split("\n\n")
        assert SPEAKER.fullmatch(first.splitlines()[0]) and SPEAKER.fullmatch(
            second.splitlines()[0]
        )
        assert all(line == line.rstrip() for line in exchange.splitlines())
    # Every reply is the next exchange's opening speech.
    assert exchanges[0].split("\n\n")[1] == exchanges[1].split("\n\n")[0]


def test_prompts_are_distinct_short_speeches_that_cue_a_reply() -> None:
    prompts = demo_prompts(500, seed=3)
    assert len(set(prompts)) == 500 and prompts == demo_prompts(500, seed=3)
    assert prompts != demo_prompts(500, seed=4)
    for prompt in prompts:
        header, speech = prompt.split("\n", 1)
        assert SPEAKER.fullmatch(header) and prompt.endswith("\n\n")
        assert 20 <= len(speech.strip()) <= MAX_PROMPT_CHARS
