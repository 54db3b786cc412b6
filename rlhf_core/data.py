"""Packed token datasets: a corpus becomes fixed-length blocks in a memory-mapped file, and back.

`prepare_dataset` streams a corpus (see `rlhf_core.corpus`) through a tokenizer, appends
end-of-text after every document and packs the token stream GPT-style: documents run across block
boundaries. Each document goes to the train or validation split by a hash of its content, so it
lands in the same split whatever the order or company it comes in. A directory holds, per split,
`<split>.bin` (the tokens: uint16 when the vocabulary fits, else uint32) and `<split>.json` (its
`SplitMetadata`), plus the tokenizer under `tokenizer/`. The metadata file is written last: a split
without one is incomplete.

Block i of a split is tokens [i * B, (i + 1) * B + 1): B + 1 tokens, so inputs = block[:-1] and
targets = block[1:]. The file keeps num_blocks * B + 1 tokens for that; a shorter tail of the
stream is dropped (and counted).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from rlhf_core.corpus import (
    DataError,
    TextPiece,
    add_source_arguments,
    atomic_output,
    iter_pieces,
    source_files_from_args,
)
from rlhf_core.tokenizer import Tokenizer, load_tokenizer

SPLITS = ("train", "validation")
FORMAT_VERSION = 1
TOKENIZER_DIRECTORY = "tokenizer"
# Characters tokenized per encode_batch call: large enough to keep the tokenizer's threads busy,
# small enough that memory stays a few tens of MB whatever the corpus size.
BATCH_CHARS = 1 << 20


@dataclass(frozen=True)
class SplitMetadata:
    """What `<split>.json` records about `<split>.bin`."""

    split: str
    dtype: str
    block_size: int
    num_blocks: int
    num_tokens: int  # tokens in the file: num_blocks * block_size + 1, or 0 without a full block
    num_documents: int
    dropped_tokens: int  # tokens at the end of the stream that did not fill a block
    vocab_size: int
    eos_id: int
    pad_id: int
    tokenizer_fingerprint: str
    validation_fraction: float
    sources: list[str]
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """The smallest unsigned integer type that holds every id below `vocab_size`."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def split_of(document_key: bytes, validation_fraction: float) -> str:
    """The split of a document: its key (a content hash) read as a uniform number in [0, 1)."""
    position = int.from_bytes(document_key[:8], "big") / 2**64
    return "validation" if position < validation_fraction else "train"


def prepare_dataset(
    files: Sequence[Path],
    out_dir: Path,
    tokenizer: Tokenizer,
    *,
    block_size: int,
    validation_fraction: float = 0.05,
    text_field: str = "text",
    show_progress: bool = False,
) -> dict[str, SplitMetadata]:
    """Tokenize and pack `files` (from `rlhf_core.corpus.find_source_files`) into `out_dir`.

    Streams: memory does not depend on the corpus size. Every file is written under a temporary
    name and renamed only once complete, so a failure leaves no partial output behind and any
    previous dataset in `out_dir` untouched.
    """
    if block_size < 1:
        raise DataError(f"block size must be positive, not {block_size}")
    if not 0.0 <= validation_fraction <= 1.0:
        raise DataError(f"validation fraction must be within [0, 1], not {validation_fraction}")
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    with ExitStack() as outputs:
        writers = {
            split: _SplitWriter(outputs.enter_context(atomic_output(out_dir / f"{split}.bin")))
            for split in SPLITS
        }
        progress = outputs.enter_context(
            tqdm(
                total=sum(path.stat().st_size for path in files),
                unit="B",
                unit_scale=True,
                desc="tokenizing",
                disable=not show_progress,
            )
        )
        for batch in _batches(iter_pieces(files, text_field), BATCH_CHARS):
            _write_batch(batch, tokenizer, writers, dtype, validation_fraction)
            progress.update(sum(piece.source_bytes for piece in batch))
        for split, writer in writers.items():
            writer.finish(block_size, dtype.itemsize)
            # Old metadata must not outlive the old tokens it describes.
            (out_dir / f"{split}.json").unlink(missing_ok=True)
    tokenizer.save(out_dir / TOKENIZER_DIRECTORY)
    shared = _SharedMetadata(dtype.name, block_size, tokenizer, validation_fraction, files)
    metadata = {split: shared.for_split(split, writer) for split, writer in writers.items()}
    for split, description in metadata.items():
        with atomic_output(out_dir / f"{split}.json") as handle:
            handle.write(description.to_json().encode("utf-8"))
    return metadata


def read_split_metadata(directory: Path, split: str) -> SplitMetadata:
    """The metadata of a split prepared in `directory`, checked to be complete and readable."""
    path = directory / f"{split}.json"
    if not path.is_file():
        raise DataError(f"no {path.name}: not a prepared dataset (run prepare-data)", directory)
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
        metadata = SplitMetadata(**fields)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
        raise DataError(f"corrupt dataset metadata ({error})", path) from error
    if metadata.format_version != FORMAT_VERSION:
        raise DataError(
            f"dataset format {metadata.format_version}, expected {FORMAT_VERSION}", path
        )
    return metadata


class PackedDataset(Dataset[torch.Tensor]):
    """The blocks of one prepared split, read lazily from the memory-mapped token file.

    Item i is a LongTensor of block_size + 1 ids (see the module docstring for inputs/targets).
    """

    def __init__(self, directory: Path, split: str = "train") -> None:
        self.metadata = read_split_metadata(directory, split)
        self.path = directory / f"{split}.bin"
        self.block_size = self.metadata.block_size
        expected = self.metadata.num_tokens * np.dtype(self.metadata.dtype).itemsize
        actual = self.path.stat().st_size if self.path.is_file() else None
        if actual != expected:
            raise DataError(f"holds {actual} bytes, its metadata says {expected}", self.path)
        self._tokens: np.ndarray[Any, Any] | None = None

    def __len__(self) -> int:
        return self.metadata.num_blocks

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} of {len(self)}")
        return self.blocks([index])[0]

    def blocks(self, indices: Sequence[int]) -> torch.Tensor:
        """Blocks `indices` stacked: (len(indices), block_size + 1) int64."""
        starts = np.asarray(indices, dtype=np.int64)[:, None] * self.block_size
        positions = starts + np.arange(self.block_size + 1)
        return torch.from_numpy(self._memmap()[positions].astype(np.int64))

    def _memmap(self) -> np.ndarray[Any, Any]:
        # Opened on first use, not in __init__, so that the dataset pickles cheaply into
        # DataLoader worker processes, each of which then maps the file itself.
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.metadata.dtype, mode="r")
        return self._tokens

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": None}


@dataclass(frozen=True)
class LoaderState:
    """Where a `BlockLoader` stands: everything a trainer must store to resume it exactly."""

    seed: int = 0
    epoch: int = 0
    position: int = 0  # blocks of this epoch's order already served


class BlockLoader:
    """Endless batches of blocks, in an order that depends only on (seed, epoch).

    Because the order is a pure function of the state, `BlockLoader(dataset, n, state=s)` yields
    exactly the batches that followed the moment `state` was read: store `loader.state` with a
    checkpoint to resume at the same data position. A batch that runs past the end of an epoch
    continues into the next epoch's order. Holds one epoch's order: 8 bytes per block.
    """

    def __init__(
        self,
        dataset: PackedDataset,
        batch_size: int,
        *,
        state: LoaderState | None = None,
        shuffle: bool = True,
    ) -> None:
        if len(dataset) == 0:
            raise DataError(f"no complete block of {dataset.block_size} tokens", dataset.path)
        if batch_size < 1:
            raise DataError(f"batch size must be positive, not {batch_size}")
        self.state = state or LoaderState()
        if min(self.state.seed, self.state.epoch, self.state.position) < 0 or (
            self.state.position >= len(dataset)
        ):
            raise DataError(f"{self.state} does not fit a dataset of {len(dataset)} blocks")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self._cached_order: tuple[int, np.ndarray[Any, Any]] | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        """The next batch, (batch_size, block_size + 1) int64."""
        indices: list[int] = []
        state = self.state
        while len(indices) < self.batch_size:
            order = self._order(state.epoch)
            taken = order[state.position : state.position + self.batch_size - len(indices)]
            indices.extend(taken.tolist())
            state = replace(state, position=state.position + len(taken))
            if state.position == len(order):
                state = replace(state, epoch=state.epoch + 1, position=0)
        self.state = state
        return self.dataset.blocks(indices)

    def _order(self, epoch: int) -> np.ndarray[Any, Any]:
        if self._cached_order is None or self._cached_order[0] != epoch:
            size = len(self.dataset)
            # SeedSequence mixes (seed, epoch) into independent streams: no two epochs (or seeds)
            # share an order by accident.
            rng = np.random.default_rng([self.state.seed, epoch])
            self._cached_order = (epoch, rng.permutation(size) if self.shuffle else np.arange(size))
        return self._cached_order[1]


@dataclass
class _SplitWriter:
    """Appends one split's token stream to its (temporary) file and counts what went in."""

    handle: BinaryIO
    num_tokens: int = 0
    num_documents: int = 0
    num_blocks: int = 0
    num_kept: int = 0
    pending: list[int] = field(default_factory=list)

    def add(self, ids: list[int], end_of_document: int | None) -> None:
        self.pending.extend(ids)
        if end_of_document is not None:
            self.pending.append(end_of_document)
            self.num_documents += 1

    def flush(self, dtype: np.dtype[Any]) -> None:
        self.handle.write(np.asarray(self.pending, dtype=dtype).tobytes())
        self.num_tokens += len(self.pending)
        self.pending.clear()

    def finish(self, block_size: int, itemsize: int) -> None:
        """Cut the file to whole blocks plus the one token the last block predicts."""
        self.num_blocks = max(self.num_tokens - 1, 0) // block_size
        self.num_kept = self.num_blocks * block_size + 1 if self.num_blocks else 0
        self.handle.truncate(self.num_kept * itemsize)


@dataclass(frozen=True)
class _SharedMetadata:
    """The metadata that both splits of one `prepare_dataset` run have in common."""

    dtype: str
    block_size: int
    tokenizer: Tokenizer
    validation_fraction: float
    files: Sequence[Path]

    def for_split(self, split: str, writer: _SplitWriter) -> SplitMetadata:
        return SplitMetadata(
            split=split,
            dtype=self.dtype,
            block_size=self.block_size,
            num_blocks=writer.num_blocks,
            num_tokens=writer.num_kept,
            num_documents=writer.num_documents,
            dropped_tokens=writer.num_tokens - writer.num_kept,
            vocab_size=self.tokenizer.vocab_size,
            eos_id=self.tokenizer.eos_id,
            pad_id=self.tokenizer.pad_id,
            tokenizer_fingerprint=self.tokenizer.fingerprint,
            validation_fraction=self.validation_fraction,
            sources=[str(path) for path in self.files],
        )


def _write_batch(
    batch: list[TextPiece],
    tokenizer: Tokenizer,
    writers: dict[str, _SplitWriter],
    dtype: np.dtype[Any],
    validation_fraction: float,
) -> None:
    encoded = tokenizer.encode_batch([piece.text for piece in batch])
    for piece, ids in zip(batch, encoded, strict=True):
        eos = tokenizer.eos_id if piece.ends_document else None
        writers[split_of(piece.document_key, validation_fraction)].add(ids, eos)
    for writer in writers.values():
        writer.flush(dtype)


def _batches(pieces: Iterable[TextPiece], batch_chars: int) -> Iterator[list[TextPiece]]:
    batch: list[TextPiece] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece.text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def add_prepare_data_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = subparsers.add_parser(
        "prepare-data",
        help="tokenize a corpus into packed train/validation blocks",
        description="Tokenize text/Markdown, JSONL or Parquet files, end every document with "
        "end-of-text, pack the stream into blocks and write <split>.bin + <split>.json for the "
        "train and validation splits (and the tokenizer) into --out.",
    )
    add_source_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--tokenizer",
        default="bytes",
        metavar="SPEC",
        help="'bytes' (no file needed), a directory saved by train-tokenizer, or a "
        "tokenizer.json (default: %(default)s)",
    )
    parser.add_argument(
        "--block-size", type=int, default=1024, metavar="N", help="default: %(default)s"
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        metavar="F",
        default=0.05,
        help="share of documents held out, chosen by content hash (default: %(default)s)",
    )
    parser.set_defaults(run=_run_prepare_data)


def _run_prepare_data(args: argparse.Namespace) -> None:
    files = source_files_from_args(args)
    tokenizer = load_tokenizer(args.tokenizer)
    metadata = prepare_dataset(
        files,
        args.out,
        tokenizer,
        block_size=args.block_size,
        validation_fraction=args.validation_fraction,
        text_field=args.text_field,
        show_progress=True,
    )
    for split in metadata.values():
        print(
            f"{split.split}: {split.num_documents} documents, {split.num_blocks} blocks of "
            f"{split.block_size} tokens ({split.num_tokens} tokens, {split.dropped_tokens} "
            f"dropped) -> {args.out / (split.split + '.bin')}"
        )
