"""`manage.py export`: create a snapshot from the command line, in the background or here.

    python manage.py export --project SLUG --format pairs_parquet --format likert_jsonl \
        --filter gold=exclude --filter min_agreement=0.8 --option include_ties=true --sync
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from webapp.accounts.models import User
from webapp.annotation.models import Project
from webapp.exports.building import run_snapshot, snapshot_dir
from webapp.exports.filters import FILTER_DEFAULTS, OPTION_DEFAULTS
from webapp.exports.formats import FORMATS
from webapp.exports.models import ExportSnapshot, SnapshotStatus
from webapp.exports.services import ExportError, create_snapshot


def _assignments(pairs: list[str], known: dict[str, Any], what: str) -> dict[str, Any]:
    """NAME=VALUE pairs; a value is read as JSON when it parses (numbers, true, lists), else
    kept as text (a date, a comma-separated list of names)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise CommandError(f"--{what} takes NAME=VALUE, got {pair!r}.")
        if name not in known:
            raise CommandError(f"Unknown {what} {name!r}. Known: {', '.join(known)}.")
        try:
            values[name] = json.loads(text)
        except json.JSONDecodeError:
            values[name] = text
    return values


class Command(BaseCommand):
    help = (
        "Create an export snapshot of a project's labels (built by a worker, or here with --sync)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", required=True, help="the project's slug")
        parser.add_argument(
            "--format",
            action="append",
            required=True,
            dest="formats",
            metavar="FORMAT",
            help=f"repeat for several: {', '.join(FORMATS)}",
        )
        parser.add_argument(
            "--filter",
            action="append",
            default=[],
            dest="filters",
            metavar="NAME=VALUE",
            help=f"repeat for several: {', '.join(FILTER_DEFAULTS)}",
        )
        parser.add_argument(
            "--option",
            action="append",
            default=[],
            dest="options",
            metavar="NAME=VALUE",
            help=f"repeat for several: {', '.join(OPTION_DEFAULTS)}",
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--test-share", type=float, default=0.1)
        parser.add_argument("--user", help="username recorded as the snapshot's creator")
        parser.add_argument(
            "--sync", action="store_true", help="build it here, with a progress bar, and wait"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"No project with the slug {options['project']!r}.")
        user = None
        if options["user"]:
            user = User.objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"No user {options['user']!r}.")
        try:
            snapshot = create_snapshot(
                project,
                user,
                _assignments(options["filters"], FILTER_DEFAULTS, "filter"),
                options["formats"],
                seed=options["seed"],
                test_share=options["test_share"],
                options=_assignments(options["options"], OPTION_DEFAULTS, "option"),
                run_in_background=not options["sync"],
            )
        except ExportError as error:
            raise CommandError(error.message) from None
        if not options["sync"]:
            self.stdout.write(
                f"Snapshot {snapshot.pk} queued; a worker on the default queue builds it."
            )
            return
        self._build(snapshot)

    def _build(self, snapshot: ExportSnapshot) -> None:
        with tqdm(total=0, unit=" rows", desc=f"snapshot {snapshot.pk}") as bar:

            def show(done: int, total: int, current_file: str) -> None:
                bar.total = total
                bar.set_postfix_str(current_file, refresh=False)
                bar.update(done - bar.n)

            run_snapshot(snapshot.pk, on_progress=show)
        snapshot.refresh_from_db()
        if snapshot.status != SnapshotStatus.SUCCEEDED:
            raise CommandError(f"Snapshot {snapshot.pk} failed: {snapshot.error}")
        for entry in snapshot.manifest["files"]:
            rows = "" if entry["rows"] is None else f"{entry['rows']} rows"
            self.stdout.write(f"  {entry['name']:<32} {rows}")
        self.stdout.write(f"Snapshot {snapshot.pk} written to {snapshot_dir(snapshot)}")
