"""Reading an upload's lines into rows: JSONL (one object a line) or CSV (with a header).

Each reader yields (line number, row) with the row a mapping in the JSONL shape, or a RowError
saying what is wrong with that line; `imports` checks the rows and writes them. Text must be
UTF-8 (a byte order mark is fine); a line that is not is reported, and reading goes on.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

JSONL_FIELDS = {"prompt", "metadata", "responses", "gold"}
Row = Mapping[str, Any]


class RowError(Exception):
    """What is wrong with one line of an upload."""


def is_csv(upload: IO[bytes], filename: str) -> bool:
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if extension in ("jsonl", "ndjson", "json"):
        return False
    if extension in ("csv", "tsv"):
        return True
    start = upload.read(4096)
    upload.seek(0)
    return not start.lstrip(codecs.BOM_UTF8).lstrip().startswith(b"{")


def jsonl_rows(upload: IO[bytes]) -> Iterator[tuple[int, Row | RowError]]:
    for number, raw in enumerate(upload, start=1):
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield number, RowError("The line is not valid UTF-8 text.")
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            yield number, RowError(f"Malformed JSON: {error.msg} (column {error.colno}).")
            continue
        if not isinstance(value, dict):
            yield number, RowError("Each line must be a JSON object with a “prompt”.")
            continue
        unknown = sorted(set(value) - JSONL_FIELDS)
        if unknown:
            yield (
                number,
                RowError(
                    f"Unknown field {', '.join(map(repr, unknown))}; "
                    "put extra data under “metadata”."
                ),
            )
            continue
        yield number, value


def _decoded_lines(upload: IO[bytes], bad_lines: list[int]) -> Iterator[str]:
    """The file's lines as text; a line that is not UTF-8 is decoded with replacement
    characters and its number noted in `bad_lines`."""
    for number, raw in enumerate(upload, start=1):
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            bad_lines.append(number)
            yield raw.decode("utf-8", errors="replace")


def csv_rows(upload: IO[bytes]) -> Iterator[tuple[int, Row | RowError]]:
    bad_lines: list[int] = []
    reader = csv.reader(_decoded_lines(upload, bad_lines))
    try:
        header = [name.strip().lower() for name in next(reader)]
    except (StopIteration, csv.Error):
        yield 1, RowError("The CSV file has no header line.")
        return
    problem = "The header is not valid UTF-8 text." if bad_lines else _check_header(header)
    if problem:
        yield 1, RowError(problem)
        return
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            yield line, RowError(f"Malformed CSV: {error}.")
            continue
        if bad_lines:
            yield bad_lines[0], RowError("The line is not valid UTF-8 text.")
            bad_lines.clear()
            continue
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            yield (
                line,
                RowError(f"The line has {len(cells)} columns; the header has {len(header)}."),
            )
            continue
        yield line, _csv_row(dict(zip(header, cells, strict=True)))


def _check_header(header: Sequence[str]) -> str:
    if "prompt" not in header:
        return "The CSV header needs a “prompt” column."
    if len(set(header)) != len(header):
        return "The CSV header names a column twice."
    numbers = []
    for name in header:
        if name.startswith("response_") and name[9:].isdigit():
            numbers.append(int(name[9:]))
        elif name not in ("prompt", "metadata", "gold"):
            return (
                f"Unknown column {name!r}; the columns are prompt, metadata, gold and "
                "response_1 … response_K."
            )
    if sorted(numbers) != list(range(1, len(numbers) + 1)):
        return "Response columns must be numbered response_1, response_2, … without gaps."
    return ""


def _csv_row(cells: Mapping[str, str]) -> Row | RowError:
    row: dict[str, Any] = {"prompt": cells["prompt"]}
    for column in ("metadata", "gold"):
        if cells.get(column, "").strip():
            try:
                row[column] = json.loads(cells[column])
            except json.JSONDecodeError as error:
                return RowError(f"The {column} column is not valid JSON: {error.msg}.")
    responses = [(name, text) for name, text in cells.items() if name.startswith("response_")]
    responses.sort(key=lambda pair: int(pair[0][9:]))
    texts = [text for _, text in responses]
    while texts and not texts[-1].strip():
        texts.pop()  # rows may have fewer responses than the widest row
    if texts:
        row["responses"] = texts
    return row
