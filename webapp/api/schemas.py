"""The API's request and response shapes (pydantic, through ninja), and the error answers every
operation documents, so the OpenAPI schema lists each status code a client can meet."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ninja import Schema
from pydantic import Field


class ErrorOut(Schema):
    detail: str = Field(description="What went wrong, in words meant for a person.")
    field: str | None = Field(
        default=None, description="The parameter at fault, when there is one."
    )


class ValidationErrorOut(Schema):
    detail: list[dict[str, Any]] = Field(
        description="One entry per parameter that does not validate (pydantic's errors)."
    )


# 401 wrong/revoked/expired/missing token, 403 wrong role, 422 a parameter of the wrong type or
# out of range, 429 rate limit.
COMMON_ERRORS: dict[int, type[Schema]] = {
    401: ErrorOut,
    403: ErrorOut,
    422: ValidationErrorOut,
    429: ErrorOut,
}


def responses(ok: Any, *errors: int, status: int = 200) -> dict[int, Any]:
    """An operation's `response=` mapping: its success shape, the common errors and `errors`
    (each answered with ErrorOut)."""
    return {status: ok, **COMMON_ERRORS, **dict.fromkeys(errors, ErrorOut)}


class PageInfo(Schema):
    page: int
    page_size: int
    count: int = Field(description="Rows on all pages together.")
    next_page: int | None = Field(description="The next page's number; null on the last page.")


# --- projects -----------------------------------------------------------------------------------


class QuestionOut(Schema):
    key: str
    kind: str
    text: str
    required: bool
    config: dict[str, Any]


class ProjectOut(Schema):
    id: int
    slug: str
    name: str
    description: str
    task_type: str
    overlap: int
    gold_share: float
    is_active: bool
    created_at: datetime
    questions: list[QuestionOut]


class ProjectPage(PageInfo):
    items: list[ProjectOut]


# --- labels -------------------------------------------------------------------------------------


class LabelOut(Schema):
    id: int = Field(description="Increasing; the cursor pages by it.")
    item_id: int
    prompt_id: int
    is_gold: bool
    response_ids: list[int] = Field(description="The item's responses in shown order (A, B, ...).")
    question: str = Field(description="The question's key.")
    kind: str
    value: Any = Field(description="The answer as stored; its shape depends on the kind.")
    annotator: str = Field(description="The annotator's pseudonym, stable within the project.")
    created_at: datetime
    active_ms: int = Field(description="Active time the annotator spent on the item.")
    undone_at: datetime | None


class LabelPage(Schema):
    items: list[LabelOut]
    limit: int
    next_cursor: int | None = Field(
        description="Pass as `after` to get the next page; null when there is none yet."
    )


# --- statistics ---------------------------------------------------------------------------------


class AccuracyOut(Schema):
    correct: int
    total: int
    accuracy: float | None
    mean_tau: float | None = Field(description="Rankings: mean Kendall tau with the gold order.")


class QuestionGoldOut(AccuracyOut):
    question: str


class AgreementOut(Schema):
    question: str
    name: str = Field(description="The question's key, or 'key: option' for a flag option.")
    level: str
    alpha: float | None = Field(description="Krippendorff's alpha.")
    pairwise: float | None
    mean_tau: float | None
    items: int = Field(description="Items answered by two or more annotators.")
    labels: int


class StatisticsOut(Schema):
    project: str
    items: int
    complete_items: int
    labels: int = Field(description="Live (not undone) labels.")
    open_flags: int
    gold: AccuracyOut
    gold_by_question: list[QuestionGoldOut]
    agreement: list[AgreementOut]
    agreement_items: int = Field(description="Items the agreement figures rest on.")
    agreement_capped: bool = Field(description="True when older items were left out.")


class AnnotatorStatsOut(Schema):
    annotator: str
    submissions: int
    active_seconds: float
    wall_seconds: float
    median_active_seconds: float | None
    per_active_hour: float | None
    per_wall_hour: float | None
    gold: AccuracyOut
    agreement_with_others: AccuracyOut
    skips: int
    flags: int
    undos: int
    paused: bool


class AnnotatorStatsPage(PageInfo):
    items: list[AnnotatorStatsOut]
