"""The embedded demo's model: a `tiny` PaLM pretrained on the bundled Shakespeare corpus.

`python -m rlhf_core demo --out DIR` trains a BPE tokenizer on the corpus, packs it into blocks
and pretrains the `tiny` preset, each with a progress bar; a few minutes on two CPU cores. Every
stage is skipped when its output is already complete, and an interrupted pretraining resumes, so
running it again costs nothing once the model exists.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf_core.checkpoint import METADATA_FILE, CheckpointError, read_metadata
from rlhf_core.corpus import DataError, demo_corpus_paths, iter_texts
from rlhf_core.data import SPLITS, prepare_dataset, read_split_metadata
from rlhf_core.pretrain import PretrainConfig, PretrainError, pretrain
from rlhf_core.tokenizer import Tokenizer, TokenizerError

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


@dataclass(frozen=True)
class DemoSettings:
    """Sized for about three minutes on two CPU cores (measured: ~2 steps/s at batch 16 x 256)."""

    vocab_size: int = 4096
    block_size: int = 256
    steps: int = 400
    batch_size: int = 16
    lr: float = 1e-3  # a 1M-parameter model trains well at a larger rate than the default
    warmup_steps: int = 20
    eval_every: int = 100
    seed: int = 0


def build_demo_model(
    out_dir: Path, settings: DemoSettings = DemoSettings(), *, show_progress: bool = True
) -> Path:
    """The demo model's checkpoint directory, built first if it is missing or incomplete."""
    final = out_dir / "run" / "final"
    if _is_checkpoint(final):
        return final
    tokenizer = _demo_tokenizer(out_dir / "tokenizer", settings, show_progress)
    data_dir = out_dir / "data"
    if not _is_prepared(data_dir, settings.block_size):
        prepare_dataset(
            demo_corpus_paths(),
            data_dir,
            tokenizer,
            block_size=settings.block_size,
            show_progress=show_progress,
        )
    config = PretrainConfig(
        data_dir=data_dir,
        out_dir=out_dir / "run",
        model="tiny",
        batch_size=settings.batch_size,
        max_steps=settings.steps,
        lr=settings.lr,
        warmup_steps=settings.warmup_steps,
        eval_every=settings.eval_every,
        checkpoint_every=settings.eval_every,
        seed=settings.seed,
    )
    result = pretrain(config, show_progress=show_progress)
    if result.final_checkpoint is None:
        raise PretrainError("the demo's pretraining stopped early; run the command again to resume")
    return result.final_checkpoint


def _demo_tokenizer(directory: Path, settings: DemoSettings, show_progress: bool) -> Tokenizer:
    try:
        return Tokenizer.load(directory)
    except TokenizerError:
        tokenizer = Tokenizer.train_bpe(
            iter_texts(demo_corpus_paths()), settings.vocab_size, show_progress=show_progress
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
        help="build the embedded demo's model (tiny PaLM on Shakespeare)",
        description="Train a BPE tokenizer on the bundled Shakespeare corpus, pack it, and "
        "pretrain the tiny preset. Stages already done are skipped; an interrupted run resumes.",
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
