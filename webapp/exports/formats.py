"""What a snapshot can contain: data sets, the file types each is written as, and their columns.

A format is `<dataset>_<file type>`, e.g. `pairs_parquet`. Every data set's columns are fixed
here (one schema for JSONL, Parquet and CSV alike), so a file has the same columns whether it has
rows or not, and the dataset card and the README describe the same thing the writers write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from webapp.annotation.questions import QuestionKind

FILE_TYPES = ("jsonl", "parquet", "csv")
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    kinds: frozenset[str]  # the question kinds it is made from; empty: the raw event log
    file_types: tuple[str, ...]
    split: bool  # written as <name>-train and <name>-test files
    fields: tuple[tuple[str, str], ...]  # fixed columns and what they mean


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "pairs",
            "Preference pairs, one row per annotator's strict preference (TRL reward / DPO).",
            frozenset({QuestionKind.PREFERENCE}),
            FILE_TYPES,
            True,
            (
                ("prompt", "the prompt text"),
                ("chosen", "the response the annotator preferred"),
                ("rejected", "the other response"),
                ("margin", "the strength grade |strength| (0.0 for a tie when ties are included)"),
            ),
        ),
        Dataset(
            "hh",
            "The same pairs as Anthropic HH-RLHF transcripts.",
            frozenset({QuestionKind.PREFERENCE}),
            FILE_TYPES,
            True,
            (
                ("chosen", "'\\n\\nHuman: <prompt>\\n\\nAssistant: <chosen response>'"),
                ("rejected", "'\\n\\nHuman: <prompt>\\n\\nAssistant: <rejected response>'"),
            ),
        ),
        Dataset(
            "rankings",
            "One row per annotator's ranking of K responses, best first.",
            frozenset({QuestionKind.RANKING}),
            ("jsonl", "parquet"),  # a list column has no CSV form
            True,
            (
                ("prompt", "the prompt text"),
                ("responses", "the responses, best first"),
                ("annotator_id", "the annotator's pseudonym in this snapshot"),
            ),
        ),
        Dataset(
            "ranking_pairs",
            "Rankings converted to preference pairs by the snapshot's ranking_pairs policy.",
            frozenset({QuestionKind.RANKING}),
            FILE_TYPES,
            True,
            (
                ("prompt", "the prompt text"),
                ("chosen", "the response ranked higher"),
                ("rejected", "the response ranked lower"),
            ),
        ),
        Dataset(
            "likert",
            "One row per (response, annotator), one integer column per Likert attribute.",
            frozenset({QuestionKind.LIKERT}),
            FILE_TYPES,
            True,
            (
                ("prompt", "the prompt text"),
                ("response", "the rated response"),
                ("annotator_id", "the annotator's pseudonym in this snapshot"),
            ),
        ),
        Dataset(
            "likert_aggregated",
            "One row per (prompt, response): each attribute's mean over annotators.",
            frozenset({QuestionKind.LIKERT}),
            FILE_TYPES,
            True,
            (
                ("prompt", "the prompt text"),
                ("response", "the rated response"),
                ("num_annotators", "how many annotators rated it"),
            ),
        ),
        Dataset(
            "sft",
            "Demonstrations: annotators' rewrites and top-rated responses.",
            frozenset({QuestionKind.REWRITE, QuestionKind.LIKERT}),
            FILE_TYPES,
            True,
            (
                ("prompt", "the prompt text"),
                ("completion", "the response to imitate"),
                ("source", "'rewrite' or 'top_rated'"),
            ),
        ),
        Dataset(
            "events",
            "Every label (undone ones too), skip, undo, flag, serving and submission, in time "
            "order, with active time; annotators by pseudonym.",
            frozenset(),
            FILE_TYPES,
            False,
            (
                ("at", "when (UTC)"),
                ("event", "label, served, submitted, skipped, undone, flagged, prompt_written"),
                ("annotator_id", "the annotator's pseudonym in this snapshot"),
                ("item_id", "the item (empty for a written prompt)"),
                ("question", "the question's key (label rows)"),
                ("value", "the answer as JSON (label rows)"),
                ("active_ms", "measured active time of a submission, in milliseconds"),
                ("details", "the event's details as JSON (reasons, ids)"),
                ("undone_at", "when a label was undone (label rows), else empty"),
            ),
        ),
    )
}

FORMATS: tuple[str, ...] = tuple(
    f"{dataset.name}_{file_type}"
    for dataset in DATASETS.values()
    for file_type in dataset.file_types
)


def parse_format(name: str) -> tuple[Dataset, str]:
    """(data set, file type) of a format name; KeyError if unknown."""
    if name not in FORMATS:
        raise KeyError(name)
    dataset, _, file_type = name.rpartition("_")
    return DATASETS[dataset], file_type


def file_names(dataset: Dataset, file_type: str) -> dict[str, str]:
    """The files of a data set in one file type, by split ("all" for the event log)."""
    if not dataset.split:
        return {"all": f"{dataset.name}.{file_type}"}
    return {split: f"{dataset.name}-{split}.{file_type}" for split in ("train", "test")}


def schema(dataset: Dataset, likert_attributes: Sequence[str] = ()) -> pa.Schema:
    """The columns of `dataset`; Likert data sets add one column per attribute of the project."""
    text = pa.string()
    if dataset.name == "pairs":
        return pa.schema(
            [("prompt", text), ("chosen", text), ("rejected", text), ("margin", pa.float64())]
        )
    if dataset.name == "hh":
        return pa.schema([("chosen", text), ("rejected", text)])
    if dataset.name == "rankings":
        return pa.schema([("prompt", text), ("responses", pa.list_(text)), ("annotator_id", text)])
    if dataset.name == "ranking_pairs":
        return pa.schema([("prompt", text), ("chosen", text), ("rejected", text)])
    if dataset.name == "likert":
        scores = [(name, pa.int64()) for name in likert_attributes]
        return pa.schema([("prompt", text), ("response", text), ("annotator_id", text), *scores])
    if dataset.name == "likert_aggregated":
        means = [(name, pa.float64()) for name in likert_attributes]
        return pa.schema(
            [("prompt", text), ("response", text), *means, ("num_annotators", pa.int64())]
        )
    if dataset.name == "sft":
        return pa.schema([("prompt", text), ("completion", text), ("source", text)])
    moment = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            ("at", moment),
            ("event", text),
            ("annotator_id", text),
            ("item_id", pa.int64()),
            ("question", text),
            ("value", text),
            ("active_ms", pa.int64()),
            ("details", text),
            ("undone_at", moment),
        ]
    )
