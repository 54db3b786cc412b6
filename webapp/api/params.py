"""Query and path parameters shared by the operations, with the bounds the OpenAPI schema
publishes. Bounds keep every value inside what the database accepts (a 64-bit id, a slug without
NUL bytes), so a bad value is a 422 from validation and never a database error."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from django.db.models import QuerySet
from pydantic import AfterValidator, Field

MAX_ID = 2**63 - 1  # PostgreSQL bigint
MAX_PAGE = 100_000
MAX_PAGE_SIZE = 200
MAX_LABEL_LIMIT = 1000

T = TypeVar("T")


def _aware(moment: datetime) -> datetime:
    """A time without a zone is UTC (the server's zone), and is checked to convert to UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range once converted to UTC") from None


Slug = Annotated[
    str,
    Field(
        pattern=r"^[-a-zA-Z0-9_]{1,80}$",
        description="A project's slug.",
        examples=["demo-rating"],  # a project `bin/run` seeds
    ),
]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Moment = Annotated[
    datetime,
    AfterValidator(_aware),
    Field(description="ISO 8601; without a zone it is UTC."),
]
Page = Annotated[int, Field(ge=1, le=MAX_PAGE, description="1 is the first page.")]
PageSize = Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)]


def page_slice(page: int, page_size: int) -> slice:
    return slice((page - 1) * page_size, page * page_size)


def paged(rows: QuerySet[Any] | Sequence[T], page: int, page_size: int) -> dict[str, Any]:
    """One page of `rows` and the page fields of PageInfo."""
    count = rows.count() if isinstance(rows, QuerySet) else len(rows)
    shown = list(rows[page_slice(page, page_size)])
    return {
        "items": shown,
        "page": page,
        "page_size": page_size,
        "count": count,
        "next_page": page + 1 if page * page_size < count else None,
    }
