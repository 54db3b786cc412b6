"""Streaming writers: rows go to disk as they come, so memory stays flat however big the export.

JSONL writes a line per row; Parquet buffers BATCH_ROWS rows into one record batch (the only
thing held in memory) and appends it to the file; CSV writes a line per row with lists, objects
and times as JSON / ISO text. Every writer takes the data set's schema, so the columns and their
types are the same whatever the rows, and an empty file still has them.
"""

from __future__ import annotations

import csv
import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

BATCH_ROWS = 16_384


class RowWriter(Protocol):
    rows: int

    def write(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


class JsonlWriter:
    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.names = schema.names
        self.rows = 0
        self._file: IO[str] = path.open("w", encoding="utf-8", newline="\n")

    def write(self, row: dict[str, Any]) -> None:
        ordered = {name: row.get(name) for name in self.names}
        self._file.write(json.dumps(ordered, ensure_ascii=False, default=_json_default) + "\n")
        self.rows += 1

    def close(self) -> None:
        self._file.close()


class CsvWriter:
    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.names = schema.names
        self.rows = 0
        self._file: IO[str] = path.open("w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(self.names)

    def write(self, row: dict[str, Any]) -> None:
        self._csv.writerow([_csv_cell(row.get(name)) for name in self.names])
        self.rows += 1

    def close(self) -> None:
        self._file.close()


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return value


class ParquetWriter:
    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.schema = schema
        self.rows = 0
        self._batch: list[dict[str, Any]] = []
        self._writer = pq.ParquetWriter(path, schema, compression="zstd")

    def write(self, row: dict[str, Any]) -> None:
        self._batch.append(row)
        self.rows += 1
        if len(self._batch) >= BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            batch = pa.RecordBatch.from_pylist(self._batch, schema=self.schema)
            self._writer.write_batch(batch)
            self._batch.clear()

    def close(self) -> None:
        self._flush()
        self._writer.close()


WRITERS: dict[str, type[JsonlWriter | CsvWriter | ParquetWriter]] = {
    "jsonl": JsonlWriter,
    "csv": CsvWriter,
    "parquet": ParquetWriter,
}


def open_writer(path: Path, file_type: str, schema: pa.Schema) -> RowWriter:
    return WRITERS[file_type](path, schema)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
