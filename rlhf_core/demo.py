"""The embedded demo's model: a small PaLM pretrained on the bundled Shakespeare corpus.

`python -m rlhf_core demo --out DIR` turns the plays into dialogue *exchanges* (one speech and
the reply to it, each a document that ends with EOS), trains a small BPE tokenizer on them,
packs them into blocks and pretrains the `mini` preset, each with a progress bar; minutes on
two CPU cores. Every stage is skipped when its output is already complete, and an interrupted
pretraining resumes, so running it again costs nothing once the model exists.

Why exchanges: a model pretrained on whole plays never ends a reply (its only EOS is at the end
of a play), so every sample of it runs to the token limit, and RLHF's penalty for unfinished
answers hits every one. Pretrained on exchanges, the model answers a speech with one speech and
stops: prompts are speeches (`demo_prompts`) and responses are replies.

Why a small vocabulary (512): the reward model reads the policy's hidden states, and a tiny
model keeps in them what each token is but not how it is spelled. With 512 tokens of about two
characters each, a reward model fitted on a few hundred labels can still see letters,
punctuation and line breaks, not only whole words (measured in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf_core.checkpoint import METADATA_FILE, CheckpointError, read_metadata
from rlhf_core.corpus import DataError, atomic_output, demo_corpus_paths, iter_texts
from rlhf_core.data import SPLITS, prepare_dataset, read_split_metadata
from rlhf_core.palm import mini
from rlhf_core.pretrain import PretrainConfig, PretrainError, pretrain
from rlhf_core.tokenizer import Tokenizer, TokenizerError
from rlhf_core.training import TrainingCallback

SPEAKER = re.compile(r"\*\*([A-Z][A-Z0-9 .,'&-]*)\*\*")
MAX_PROMPT_CHARS = 200  # demo prompts are speeches of at most this many characters

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


@dataclass(frozen=True)
class DemoSettings:
    """Sized for about six minutes on two idle CPU cores (measured: ~1.6 steps/s at batch
    16 x 256 for the 3.9M-parameter `mini` preset)."""

    vocab_size: int = 512
    block_size: int = 256
    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3  # a few-million-parameter model trains well at a larger rate
    warmup_steps: int = 20
    eval_every: int = 150
    seed: int = 0


def demo_speeches(paths: Sequence[Path]) -> Iterator[tuple[str, str]]:
    """(speaker, speech) of every speech of the plays, in order; a speech is a speaker's bold
    name on a line of its own and the lines under it, up to the next blank line. Trailing
    Markdown line breaks (two spaces) are dropped."""
    for path in paths:
        text = path.read_text(encoding="utf-8")
        for block in re.split(r"\n\s*\n", text):
            lines = block.strip().splitlines()
            if len(lines) < 2:
                continue
            speaker = SPEAKER.fullmatch(lines[0].strip())
            if speaker:
                yield speaker.group(1), "\n".join(line.rstrip() for line in lines[1:])


def format_speech(speaker: str, speech: str) -> str:
    return f"**{speaker}**\n{speech}"


def demo_exchanges(paths: Sequence[Path]) -> Iterator[str]:
    """Each speech followed by the reply to it (the next speech of the play), one document."""
    for path in paths:
        speeches = list(demo_speeches([path]))
        for (first, said), (second, reply) in itertools.pairwise(speeches):
            yield f"{format_speech(first, said)}\n\n{format_speech(second, reply)}"


def demo_prompts(count: int, *, seed: int = 0) -> list[str]:
    """`count` distinct prompts in the demo model's format: a speech of at most
    MAX_PROMPT_CHARS characters and the blank line after it, the model's cue to reply. Drawn
    from the plays in a random order fixed by `seed`."""
    speeches = list(
        dict.fromkeys(
            format_speech(speaker, speech) + "\n\n"
            for speaker, speech in demo_speeches(demo_corpus_paths())
            if 20 <= len(speech) <= MAX_PROMPT_CHARS
        )
    )
    random.Random(seed).shuffle(speeches)
    if count > len(speeches):
        raise DataError(f"the demo corpus has {len(speeches)} prompts, not {count}")
    return speeches[:count]


def write_demo_corpus(path: Path) -> Path:
    """The exchanges as JSONL (one {"text": ...} document per line), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as handle:
        for exchange in demo_exchanges(demo_corpus_paths()):
            handle.write((json.dumps({"text": exchange}) + "\n").encode("utf-8"))
    return path


def build_demo_model(
    out_dir: Path,
    settings: DemoSettings = DemoSettings(),
    *,
    sources: Sequence[Path] | None = None,
    show_progress: bool = True,
    callback: TrainingCallback | None = None,
) -> Path:
    """The demo model's checkpoint directory, built first if it is missing or incomplete.

    sources: corpus files to pretrain on instead of the demo's exchanges (text, JSONL or
        Parquet; see `rlhf_core.corpus`).
    callback: gets pretraining's steps, evaluations and checkpoints (`pretrain`); None when it
        stops the run, which then raises PretrainError (run again to resume).
    """
    final = out_dir / "run" / "final"
    if _is_checkpoint(final):
        return final
    corpus = out_dir / "corpus.jsonl"
    if sources is None and not corpus.is_file():
        write_demo_corpus(corpus)
    files = list(sources) if sources is not None else [corpus]
    tokenizer = _demo_tokenizer(out_dir / "tokenizer", files, settings, show_progress)
    data_dir = out_dir / "data"
    if not _is_prepared(data_dir, settings.block_size):
        prepare_dataset(
            files,
            data_dir,
            tokenizer,
            block_size=settings.block_size,
            show_progress=show_progress,
        )
    config = PretrainConfig(
        data_dir=data_dir,
        out_dir=out_dir / "run",
        model=mini(tokenizer.vocab_size),
        batch_size=settings.batch_size,
        max_steps=settings.steps,
        lr=settings.lr,
        warmup_steps=min(settings.warmup_steps, settings.steps),
        eval_every=settings.eval_every,
        checkpoint_every=settings.eval_every,
        seed=settings.seed,
    )
    result = pretrain(config, show_progress=show_progress, callback=callback)
    if result.final_checkpoint is None:
        raise PretrainError("the demo's pretraining stopped early; run the command again to resume")
    return result.final_checkpoint


def _demo_tokenizer(
    directory: Path, files: Sequence[Path], settings: DemoSettings, show_progress: bool
) -> Tokenizer:
    try:
        return Tokenizer.load(directory)
    except TokenizerError:
        tokenizer = Tokenizer.train_bpe(
            iter_texts(files), settings.vocab_size, show_progress=show_progress
        )
        tokenizer.save(directory)
        return tokenizer


def _is_prepared(data_dir: Path, block_size: int) -> bool:
    try:
        return all(read_split_metadata(data_dir, s).block_size == block_size for s in SPLITS)
    except DataError:
        return False


def _is_checkpoint(directory: Path) -> bool:
    try:
        read_metadata(directory / METADATA_FILE)
    except CheckpointError:
        return False
    return True


def add_demo_command(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="build the embedded demo's model (a small PaLM on Shakespeare's dialogue)",
        description="Turn the bundled Shakespeare plays into dialogue exchanges, train a BPE "
        "tokenizer on them, pack them, and pretrain the mini preset. Stages already done are "
        "skipped; an interrupted run resumes.",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="demo directory")
    parser.add_argument(
        "--steps", type=int, default=DemoSettings.steps, metavar="N", help="default: %(default)s"
    )
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> None:
    final = build_demo_model(args.out, DemoSettings(steps=args.steps))
    metadata = read_metadata(final / METADATA_FILE)
    val_loss = metadata.metrics.get("val_loss")
    print(f"demo model: step {metadata.step}, validation loss {val_loss} -> {final}")
