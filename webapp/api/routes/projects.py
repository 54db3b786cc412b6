"""Projects, and the labels and statistics of each."""

from __future__ import annotations

from typing import Annotated, Any, Self

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError
from pydantic import model_validator

from webapp.annotation.models import Project
from webapp.api import labels, statistics
from webapp.api.errors import FieldError
from webapp.api.params import MAX_ID, MAX_LABEL_LIMIT, Moment, Page, PageSize, Slug, paged
from webapp.api.pseudonyms import PATTERN
from webapp.api.schemas import (
    AnnotatorStatsPage,
    LabelPage,
    ProjectOut,
    ProjectPage,
    StatisticsOut,
    responses,
)

router = Router(tags=["projects"])


def project_or_404(slug: str) -> Project:
    project = Project.objects.filter(slug=slug).first()
    if project is None:
        raise HttpError(404, f"No project has the slug {slug!r}.")
    return project


class LabelQuery(Schema):
    after: int = Field(0, ge=0, le=MAX_ID, description="The next_cursor of the previous page.")
    limit: int = Field(100, ge=1, le=MAX_LABEL_LIMIT)
    since: Moment | None = Field(default=None, description="Labels created at or after this time.")
    until: Moment | None = Field(default=None, description="Labels created before this time.")
    question: Annotated[str, Field(pattern=r"^[-a-zA-Z0-9_]{1,50}$")] | None = Field(
        default=None, description="Only answers to the question with this key."
    )
    annotator: Annotated[str, Field(pattern=PATTERN)] | None = Field(
        default=None, description="Only labels of the annotator with this pseudonym."
    )
    gold: bool | None = Field(
        default=None, description="Only gold items (true) or only others (false)."
    )
    include_undone: bool = Field(False, description="Also labels that were undone (history).")

    @model_validator(mode="after")
    def since_before_until(self) -> Self:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must be earlier than until")
        return self


@router.get("", response=responses(ProjectPage), summary="List projects")
def list_projects(request: HttpRequest, page: Page = 1, page_size: PageSize = 50) -> Any:
    """Every project, by name, with its questions."""
    rows = Project.objects.prefetch_related("questions").order_by("name", "id")
    return paged(rows, page, page_size)


@router.get("/{slug}", response=responses(ProjectOut, 404), summary="Get a project")
def get_project(request: HttpRequest, slug: Slug) -> Any:
    return project_or_404(slug)


@router.get("/{slug}/labels", response=responses(LabelPage, 400, 404), summary="Page labels")
def list_labels(request: HttpRequest, slug: Slug, query: Query[LabelQuery]) -> Any:
    """The project's labels, oldest first, `limit` at a time: pass each page's `next_cursor` as
    `after` to get the next one. Annotators appear under pseudonyms that are stable within the
    project."""
    project = project_or_404(slug)
    try:
        page = labels.label_page(project, labels.LabelFilters(**query.dict()))
    except labels.FilterError as error:
        raise FieldError(400, str(error), error.field) from None
    return {"items": page.rows, "limit": query.limit, "next_cursor": page.next_cursor}


@router.get(
    "/{slug}/statistics", response=responses(StatisticsOut, 404), summary="Project statistics"
)
def project_statistics(request: HttpRequest, slug: Slug) -> Any:
    """Counts, gold accuracy and inter-annotator agreement (Krippendorff's alpha, pairwise
    agreement, Kendall tau for rankings), as the quality pages show them."""
    return statistics.project_statistics(project_or_404(slug))


@router.get(
    "/{slug}/statistics/annotators",
    response=responses(AnnotatorStatsPage, 404),
    summary="Annotator statistics",
)
def annotator_statistics(
    request: HttpRequest,
    slug: Slug,
    since: Moment | None = None,
    page: Page = 1,
    page_size: PageSize = 50,
) -> Any:
    """Each annotator's throughput, gold accuracy, agreement with the others' majority, skips,
    flags and undos (since `since`, or ever), under pseudonyms, busiest first."""
    rows = statistics.annotator_rows(project_or_404(slug), since)
    return paged(rows, page, page_size)
