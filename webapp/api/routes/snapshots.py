"""Export snapshots: list, create, follow, download. The exports app validates and builds them
(webapp/exports/services.py); this module only translates between it and HTTP."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import FileResponse, HttpRequest
from django.urls import reverse
from ninja import Field, Query, Router, Schema, Status
from pydantic import ConfigDict, StrictBool, StrictFloat, StrictInt

from webapp.accounts.models import User
from webapp.annotation.models import Project
from webapp.api.errors import FieldError
from webapp.api.models import ApiToken
from webapp.api.params import Id, Moment, Page, PageSize, Slug, paged
from webapp.api.pseudonyms import pseudonyms
from webapp.api.routes.projects import project_or_404
from webapp.api.schemas import PageInfo, responses
from webapp.exports import services as exports
from webapp.exports.filters import FLAGGED_CHOICES, GOLD_CHOICES, RANKING_PAIR_POLICIES
from webapp.exports.formats import FORMATS
from webapp.exports.models import ExportSnapshot, SnapshotStatus
from webapp.storable import storable_problem

router = Router(tags=["snapshots"])


# Numbers and booleans of the body are strict: JSON's `false` is no seed and `"0.5"` no share.


class SnapshotFilters(Schema):
    """The exports' filters, typed here so that the schema documents them; which values are
    allowed is the exports app's judgement (a 400 naming the field)."""

    model_config = ConfigDict(extra="forbid")

    since: Moment | None = Field(default=None, description="Labels given at or after this time.")
    until: Moment | None = Field(default=None, description="Labels given before this time.")
    model_versions: list[str] | None = Field(default=None, description="Names of model versions.")
    label_kinds: list[str] | None = Field(default=None, description="Question kinds to keep.")
    min_agreement: StrictFloat | None = Field(
        default=None, description="0-1: keep items whose majority share reaches it."
    )
    gold: str | None = Field(default=None, description=f"One of: {', '.join(GOLD_CHOICES)}.")
    flagged: str | None = Field(default=None, description=f"One of: {', '.join(FLAGGED_CHOICES)}.")


class SnapshotOptions(Schema):
    model_config = ConfigDict(extra="forbid")

    include_ties: StrictBool | None = None
    ranking_pairs: str | None = Field(
        default=None, description=f"One of: {', '.join(RANKING_PAIR_POLICIES)}."
    )
    sft_min_score: StrictFloat | None = None


class SnapshotIn(Schema):
    project: Slug
    formats: list[str] = Field(
        description=f"One or more of: {', '.join(FORMATS)}.", examples=[["likert_jsonl"]]
    )
    filters: SnapshotFilters = Field(
        SnapshotFilters(),
        description="See the README. The browser's `annotators` filter is not offered: it "
        "names people by username, which the API never shows.",
    )
    options: SnapshotOptions = SnapshotOptions()
    seed: StrictInt = Field(0, description="Seeds the train/test split; same seed, same split.")
    test_share: StrictFloat = Field(
        0.1, description="Share of prompts in the test split, in [0, 1)."
    )


class FileOut(Schema):
    name: str
    url: str


class SnapshotOut(Schema):
    id: int
    project: str
    status: str = Field(description="queued, running, succeeded or failed.")
    progress_percent: int
    rows_done: int
    rows_total: int = Field(description="An estimate, counted before writing.")
    current_file: str
    formats: list[str]
    filters: dict[str, Any] = Field(description="The filters as validated, defaults filled in.")
    options: dict[str, Any]
    seed: int
    test_share: float
    error: str = Field(description="Why the build failed; empty otherwise.")
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    manifest: dict[str, Any] = Field(description="Row counts and checksums; {} until complete.")
    files: list[FileOut] = Field(description="Downloadable files; empty until complete.")


class SnapshotPage(PageInfo):
    items: list[SnapshotOut]


class SnapshotQuery(Schema):
    project: Slug | None = Field(default=None, description="Only snapshots of this project.")
    status: SnapshotStatus | None = None
    page: Page = 1
    page_size: PageSize = 50


@router.get("", response=responses(SnapshotPage, 404), summary="List snapshots")
def list_snapshots(request: HttpRequest, query: Query[SnapshotQuery]) -> Any:
    """Snapshots, newest first, of every project or of one, in any status or in one."""
    rows = ExportSnapshot.objects.select_related("project").order_by("-created_at", "-id")
    if query.project is not None:
        rows = rows.filter(project=project_or_404(query.project))
    if query.status is not None:
        rows = rows.filter(status=query.status)
    page = paged(rows, query.page, query.page_size)
    return {**page, "items": [_shown(request, snapshot) for snapshot in page["items"]]}


@router.post("", response=responses(SnapshotOut, 400, 404, status=201), summary="Take a snapshot")
def create_snapshot(request: HttpRequest, body: SnapshotIn) -> Status[dict[str, Any]]:
    """Queue a snapshot of a project; a worker builds it. Follow it at its `id` until its
    status is succeeded (or failed), then download its files."""
    for field, value in body.model_dump().items():
        if problem := storable_problem(value, field):
            raise FieldError(400, problem, field)
    project = project_or_404(body.project)
    try:
        snapshot = exports.create_snapshot(
            project,
            _caller(request),
            body.filters.model_dump(exclude_none=True, mode="json"),
            body.formats,
            seed=body.seed,
            test_share=body.test_share,
            options=body.options.model_dump(exclude_none=True),
        )
    except exports.ExportError as error:
        raise FieldError(error.status, error.message, error.field) from None
    return Status(201, _shown(request, snapshot))


@router.get("/{snapshot_id}", response=responses(SnapshotOut, 404), summary="Get a snapshot")
def get_snapshot(request: HttpRequest, snapshot_id: Id) -> Any:
    """Status, progress, manifest and files of one snapshot."""
    return _shown(request, _snapshot_or_404(snapshot_id))


@router.get(
    "/{snapshot_id}/files/{name}",
    response=responses(None, 404, 409),
    url_name="snapshot-file",
    summary="Download a snapshot file",
    openapi_extra={
        "responses": {
            200: {
                "description": "The file, streamed.",
                "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            }
        }
    },
)
def download_file(request: HttpRequest, snapshot_id: Id, name: str) -> Any:
    """One file of a complete snapshot (404 for a name it does not have, 409 while it is
    being built). Check it against the sha256 in the manifest."""
    snapshot = _snapshot_or_404(snapshot_id)
    try:
        handle = exports.open_snapshot_file(snapshot, name)
    except exports.ExportError as error:
        raise FieldError(
            error.status, error.message, "name" if error.status == 404 else None
        ) from None
    return FileResponse(handle, as_attachment=True, filename=name)


def _caller(request: HttpRequest) -> User:
    token = request.auth  # type: ignore[attr-defined]
    assert isinstance(token, ApiToken)
    return token.user


def _snapshot_or_404(snapshot_id: int) -> ExportSnapshot:
    snapshot = ExportSnapshot.objects.select_related("project").filter(pk=snapshot_id).first()
    if snapshot is None:
        raise FieldError(404, f"No snapshot has the id {snapshot_id}.", None)
    return snapshot


def _shown(request: HttpRequest, snapshot: ExportSnapshot) -> dict[str, Any]:
    files = [
        {
            "name": path.name,
            "url": request.build_absolute_uri(
                reverse("api-v1:snapshot-file", args=[snapshot.pk, path.name])
            ),
        }
        for path in exports.snapshot_files(snapshot)
    ]
    return {
        **{field: getattr(snapshot, field) for field in _COPIED},
        "project": snapshot.project.slug,
        "progress_percent": snapshot.progress_percent,
        "filters": _without_usernames(snapshot.project, snapshot.filters),
        # As the snapshot's manifest.json has it: annotators already by the snapshot's pseudonyms.
        "manifest": snapshot.manifest,
        "files": files,
    }


_COPIED = (
    "id",
    "status",
    "rows_done",
    "rows_total",
    "current_file",
    "formats",
    "options",
    "seed",
    "test_share",
    "error",
    "created_at",
    "started_at",
    "completed_at",
)


def _without_usernames(project: Project, filters: dict[str, Any]) -> dict[str, Any]:
    """A snapshot made in the browser may filter by usernames; the API shows pseudonyms."""
    names = filters.get("annotators")
    if not names:
        return filters
    ids = dict(User.objects.filter(username__in=names).values_list("username", "id"))
    shown = pseudonyms(project.pk, ids.values())
    return {**filters, "annotators": sorted(shown[ids[n]] for n in names if n in ids)}
