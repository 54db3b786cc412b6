"""Uploading prompts (and their responses and gold answers) from a JSONL or CSV file.

The file is read line by line (`import_formats`) and every line is checked before anything is
written: one bad line and nothing is imported, and the admin sees each line's problem. When
every line passes, one transaction writes the prompts, responses and items.

JSONL, one object a line:
    {"prompt": "...", "metadata": {...}, "responses": ["...", {"text": "...", "model": "v3",
     "sampling": {"temperature": 0.7}}], "gold": {"helpfulness": 4}}
CSV, with a header: prompt, metadata (a JSON object), response_1 ... response_K, gold (JSON).

Gold answers take the stored shape of `questions.clean_answer` or a short form: a number for a
Likert scale, "left" / "right" / "tie" / "both_bad" for a preference (left is the first response
of the line), a list of response numbers (1 = the first response of the line) for a ranking, a
list of flags, a text. A gold line must make exactly one item.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from webapp.accounts.models import User
from webapp.annotation.import_formats import RowError, csv_rows, is_csv, jsonl_rows
from webapp.annotation.items import BATCH, ItemPlan, create_items_in_bulk, item_groups
from webapp.annotation.models import (
    GoldAnswer,
    ModelVersion,
    Project,
    Prompt,
    PromptSource,
    Question,
    Response,
    text_digest,
)
from webapp.annotation.questions import QuestionKind, TaskType, clean_answer
from webapp.storable import storable_problem

MAX_BYTES = 20 * 1024 * 1024
MAX_ROWS = 50_000
MAX_ERRORS_KEPT = 100
MAX_PROMPT_CHARS = 50_000
MAX_RESPONSES = 20
RESPONSE_FIELDS = {"text", "model", "sampling"}


@dataclass(frozen=True)
class LineError:
    line: int
    message: str


@dataclass(frozen=True)
class ResponseRow:
    text: str
    model: str = ""
    sampling: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptRow:
    line: int
    text: str
    metadata: dict[str, Any]
    responses: list[ResponseRow]
    # question key -> (stored value with response numbers 1..n in place of ids, tolerance)
    gold: dict[str, tuple[dict[str, Any], int]]


@dataclass
class ImportReport:
    """What an upload did: the counts written, or the errors that stopped it."""

    rows: int = 0
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0
    prompts: int = 0
    responses: int = 0
    items: int = 0
    gold_items: int = 0
    prompt_ids: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    @property
    def hidden_errors(self) -> int:
        return self.error_count - len(self.errors)

    def add_error(self, line: int, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(LineError(line, message))


# Reading


def import_prompts(
    project: Project, upload: IO[bytes], *, filename: str, created_by: User
) -> ImportReport:
    """Check every line of `upload`, then import all of it or nothing."""
    report = ImportReport()
    size = _size(upload)
    if size > MAX_BYTES:
        report.add_error(
            0, f"The file is {size / 1e6:.1f} MB; the limit is {MAX_BYTES // 10**6} MB."
        )
        return report
    if size == 0:
        report.add_error(0, "The file is empty.")
        return report
    if project.task_type == TaskType.PROMPT_WRITING:
        report.add_error(0, "Annotators write this project's prompts; it takes no uploads.")
        return report
    checker = RowChecker(project)
    rows: list[PromptRow] = []
    lines = csv_rows(upload) if is_csv(upload, filename) else jsonl_rows(upload)
    for line, raw in lines:
        report.rows += 1
        if report.rows > MAX_ROWS:
            report.add_error(line, f"The file has more than {MAX_ROWS} rows; split it.")
            break
        if isinstance(raw, RowError):
            report.add_error(line, str(raw))
            continue
        try:
            rows.append(checker.check(line, raw))
        except RowError as error:
            report.add_error(line, str(error))
    if report.ok and not rows:
        report.add_error(0, "The file has no prompts.")
    if report.ok:
        try:
            _write(project, rows, created_by, report)
        except IntegrityError:  # another upload wrote one of these prompts meanwhile
            report.add_error(0, "Some of these prompts were added meanwhile; upload again.")
    return report


def _size(upload: IO[bytes]) -> int:
    upload.seek(0, io.SEEK_END)
    size = upload.tell()
    upload.seek(0)
    return size


# Checking


class RowChecker:
    """Checks rows one at a time against the project and the rows before them."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.questions = {q.key: q for q in project.questions.all()}
        self.existing = set(Prompt.objects.filter(project=project).values_list("digest", flat=True))
        self.seen: dict[str, int] = {}

    def check(self, line: int, raw: Mapping[str, Any]) -> PromptRow:
        for name, value in raw.items():
            if problem := storable_problem(value, f"“{name}”"):
                raise RowError(problem)
        text = self._prompt(line, raw.get("prompt"))
        metadata = raw.get("metadata", {})
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise RowError("“metadata” must be a JSON object.")
        responses = self._responses(raw.get("responses", []))
        gold = self._gold(raw.get("gold"), responses)
        return PromptRow(line, text, metadata, responses, gold)

    def _prompt(self, line: int, value: object) -> str:
        if value is None:
            raise RowError("The “prompt” is missing.")
        if not isinstance(value, str):
            raise RowError("The “prompt” must be a string.")
        text = value.strip()
        if not text:
            raise RowError("The “prompt” is empty.")
        if len(text) > MAX_PROMPT_CHARS:
            raise RowError(f"The prompt is longer than {MAX_PROMPT_CHARS} characters.")
        digest = text_digest(text)
        if digest in self.existing:
            raise RowError("This prompt is already in the project.")
        if digest in self.seen:
            raise RowError(f"The same prompt as line {self.seen[digest]}.")
        self.seen[digest] = line
        return text

    def _responses(self, value: object) -> list[ResponseRow]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise RowError("“responses” must be a list.")
        if len(value) > MAX_RESPONSES:
            raise RowError(f"At most {MAX_RESPONSES} responses per prompt.")
        responses = [self._response(number, entry) for number, entry in enumerate(value, 1)]
        texts = [r.text for r in responses]
        if len(set(texts)) != len(texts):
            raise RowError("Two responses of this prompt are the same text.")
        needed = self._responses_needed()
        if responses and len(responses) < needed:
            task = TaskType(self.project.task_type).label.lower()
            raise RowError(
                f"{len(responses)} response(s) are too few to {task}: give at least {needed} "
                "(or none, to have a model sample them)."
            )
        return responses

    def _responses_needed(self) -> int:
        if self.project.task_type == TaskType.PAIRWISE:
            return 2
        if self.project.task_type == TaskType.RANKING:
            return self.project.ranking_size
        return 1

    @staticmethod
    def _response(number: int, entry: object) -> ResponseRow:
        if isinstance(entry, str):
            entry = {"text": entry}
        if not isinstance(entry, dict):
            raise RowError(f"Response {number} must be a string or an object with a “text”.")
        unknown = sorted(set(entry) - RESPONSE_FIELDS)
        if unknown:
            raise RowError(f"Response {number} has unknown field(s) {', '.join(unknown)}.")
        text, model, sampling = entry.get("text"), entry.get("model", ""), entry.get("sampling", {})
        if not isinstance(text, str) or not text.strip():
            raise RowError(f"Response {number} has no text.")
        if model is None:
            model = ""
        if not isinstance(model, str) or len(model) > 200:
            raise RowError(f"Response {number}: “model” must be a name (at most 200 characters).")
        if not isinstance(sampling, dict):
            raise RowError(f"Response {number}: “sampling” must be a JSON object.")
        return ResponseRow(text.strip(), model.strip(), sampling)

    def _gold(
        self, value: object, responses: Sequence[ResponseRow]
    ) -> dict[str, tuple[dict[str, Any], int]]:
        if value is None:
            return {}
        if not isinstance(value, dict) or not value:
            raise RowError("“gold” must be an object of question keys and answers.")
        if len(responses) != self._responses_needed():
            raise RowError(
                f"A gold line must make exactly one item: give exactly "
                f"{self._responses_needed()} response(s)."
            )
        numbers = list(range(1, len(responses) + 1))
        gold = {}
        for key, answer in value.items():
            question = self.questions.get(key)
            if question is None:
                raise RowError(f"Gold answer for {key!r}: the project has no such question.")
            raw, tolerance = _expand_gold(question, answer)
            try:
                cleaned = clean_answer(
                    question.kind,
                    question.config,
                    raw,
                    response_ids=numbers,
                    original_text=responses[0].text,
                )
            except ValidationError as error:
                raise RowError(f"Gold answer for {key!r}: {' '.join(error.messages)}") from None
            gold[key] = (cleaned, tolerance)
        return gold


def _expand_gold(question: Question, answer: object) -> tuple[dict[str, Any], int]:
    """The short forms of a gold answer, in clean_answer's input shape, and a Likert
    tolerance."""
    kind = question.kind
    if kind == QuestionKind.LIKERT and isinstance(answer, dict) and "tolerance" in answer:
        tolerance = answer["tolerance"]
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
            raise RowError(
                f"Gold answer for {question.key!r}: tolerance must be a whole number ≥ 0."
            )
        return {k: v for k, v in answer.items() if k != "tolerance"}, tolerance
    if isinstance(answer, dict):
        return answer, 0
    if kind == QuestionKind.LIKERT:
        return {"score": answer}, 0
    if kind == QuestionKind.PREFERENCE and isinstance(answer, str):
        return {"choice": answer, "strength": 1}, 0
    if kind == QuestionKind.RANKING:
        return {"order": answer}, 0
    if kind == QuestionKind.FLAGS:
        return {"flags": answer}, 0
    if kind in (QuestionKind.TEXT, QuestionKind.REWRITE):
        return {"text": answer}, 0
    raise RowError(f"Gold answer for {question.key!r} has the wrong shape.")


# Writing


@transaction.atomic
def _write(
    project: Project, rows: Sequence[PromptRow], created_by: User, report: ImportReport
) -> None:
    versions = _model_versions(project, {r.model for row in rows for r in row.responses if r.model})
    prompts = Prompt.objects.bulk_create(
        (
            Prompt(
                project=project,
                text=row.text,
                digest=text_digest(row.text),
                source=PromptSource.UPLOAD,
                metadata=row.metadata,
                created_by=created_by,
            )
            for row in rows
        ),
        batch_size=BATCH,
    )
    responses = Response.objects.bulk_create(
        (
            Response(
                prompt=prompt,
                text=response.text,
                model_version=versions.get(response.model),
                sampling=response.sampling,
            )
            for prompt, row in zip(prompts, rows, strict=True)
            for response in row.responses
        ),
        batch_size=BATCH,
    )
    plan: list[ItemPlan] = []
    golds: list[tuple[int, PromptRow, list[Response]]] = []  # (index in plan, row, responses)
    start = 0
    for prompt, row in zip(prompts, rows, strict=True):
        own = responses[start : start + len(row.responses)]
        start += len(row.responses)
        if row.gold:  # a gold line makes exactly one item
            golds.append((len(plan), row, own))
        plan += [(prompt, group, bool(row.gold)) for group in item_groups(project, own)]
    items = create_items_in_bulk(project, plan)
    questions = {q.key: q for q in project.questions.all()}
    GoldAnswer.objects.bulk_create(
        GoldAnswer(
            item=items[index],
            question=questions[key],
            value=_with_response_ids(value, [r.pk for r in own]),
            tolerance=tolerance,
        )
        for index, row, own in golds
        for key, (value, tolerance) in row.gold.items()
    )
    report.prompts, report.responses, report.items = len(prompts), len(responses), len(items)
    report.gold_items = sum(item.is_gold for item in items)
    report.prompt_ids = [p.pk for p in prompts]


def _model_versions(project: Project, names: set[str]) -> dict[str, ModelVersion]:
    """The project's own versions of these names: an uploaded text is never attributed to a
    trained version, nor to another project's upload, that happens to share its name."""
    versions = {}
    for name in sorted(names):
        versions[name], _ = ModelVersion.objects.get_or_create(project=project, name=name)
    return versions


def _with_response_ids(value: dict[str, Any], ids: Sequence[int]) -> dict[str, Any]:
    """A checked gold value with the line's response numbers (1..n) replaced by ids."""
    if value.get("winner") is not None:
        return {**value, "winner": ids[value["winner"] - 1]}
    if "order" in value:
        return {**value, "order": [ids[number - 1] for number in value["order"]]}
    return value
