"""What the browser, the API and the command do with snapshots: create one (validated, then
queued after commit), list and open its files. Building lives in building.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from django.db import transaction

from webapp import background
from webapp.accounts.models import User
from webapp.annotation.models import ModelVersion, Project
from webapp.exports.building import MANIFEST, snapshot_dir
from webapp.exports.filters import (
    ExportError,
    clean_filters,
    clean_formats,
    clean_options,
    clean_seed,
    clean_test_share,
)
from webapp.exports.formats import parse_format
from webapp.exports.models import ExportSnapshot, SnapshotStatus

__all__ = ["ExportError", "create_snapshot", "open_snapshot_file", "snapshot_files"]


def create_snapshot(
    project: Project,
    user: User | None,
    filters: Mapping[str, Any],
    formats: Sequence[str],
    *,
    seed: int = 0,
    test_share: float = 0.1,
    options: Mapping[str, Any] | None = None,
    run_in_background: bool = True,
) -> ExportSnapshot:
    """A QUEUED snapshot of `project`, built by a worker once this transaction commits
    (`run_in_background=False`: the caller builds it, as `manage.py export --sync` does).
    Raises ExportError (status 400, with the field) for bad input."""
    if not isinstance(project, Project) or project.pk is None:
        raise ExportError("Choose a project.", field="project")
    cleaned = clean_filters(filters)
    chosen = clean_formats(formats, cleaned["label_kinds"])
    _check_project_can_fill(project, chosen)
    _check_names_exist(project, cleaned)
    with transaction.atomic():
        snapshot = ExportSnapshot.objects.create(
            project=project,
            filters=cleaned,
            options=clean_options(options),
            formats=chosen,
            seed=clean_seed(seed),
            test_share=clean_test_share(test_share),
            created_by=user,
        )
        if run_in_background:
            background.enqueue_after_commit(background.BUILD_EXPORT_SNAPSHOT, snapshot.pk)
    return snapshot


def _check_project_can_fill(project: Project, formats: Sequence[str]) -> None:
    """A format made from labels the project never asks for would be an empty file: say so."""
    asked = set(project.questions.values_list("kind", flat=True))
    for name in formats:
        dataset, _ = parse_format(name)
        if dataset.kinds and not dataset.kinds & asked:
            raise ExportError(
                f"{name} needs {' or '.join(sorted(dataset.kinds))} questions, and project "
                f"{project.slug!r} asks none.",
                field="formats",
            )


def _check_names_exist(project: Project, filters: Mapping[str, Any]) -> None:
    names = filters["model_versions"]
    usable = ModelVersion.objects.usable_in(project)
    known = set(usable.filter(name__in=names).values_list("name", flat=True))
    if missing := sorted(set(names) - known):
        raise ExportError(
            f"Unknown model version(s): {', '.join(missing)}.", field="model_versions"
        )
    names = filters["annotators"]
    known = set(User.objects.filter(username__in=names).values_list("username", flat=True))
    if missing := sorted(set(names) - known):
        raise ExportError(f"Unknown annotator(s): {', '.join(missing)}.", field="annotators")


def snapshot_files(snapshot: ExportSnapshot) -> list[Path]:
    """The files of a finished snapshot, as its manifest lists them, then the manifest."""
    if snapshot.status != SnapshotStatus.SUCCEEDED:
        return []
    directory = snapshot_dir(snapshot)
    return [directory / entry["name"] for entry in snapshot.manifest["files"]] + [
        directory / MANIFEST
    ]


def open_snapshot_file(snapshot: ExportSnapshot, name: str) -> IO[bytes]:
    """One file of a finished snapshot, opened for reading. ExportError 404 for a name that is
    not one of its files (a path such as '../x' never is), 409 while it is not finished."""
    if snapshot.status != SnapshotStatus.SUCCEEDED:
        raise ExportError("This snapshot is not complete; its files are not ready.", status=409)
    by_name = {path.name: path for path in snapshot_files(snapshot)}
    path = by_name.get(name)
    if path is None or not path.is_file():
        raise ExportError(f"Snapshot {snapshot.pk} has no file {name!r}.", status=404)
    return path.open("rb")
