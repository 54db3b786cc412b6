"""Export benchmark: one million preference labels to Parquet, with time and peak memory.

Seeds a throw-away PostgreSQL database in bulk SQL (a pairwise project: items of two responses,
each answered by `--annotators` annotators; a tenth of the answers are ties, which the pairs
file leaves out), then builds a `pairs_parquet` snapshot in this process exactly as a worker
would (`building.run_snapshot`), and prints one JSON line: labels, rows written, seconds,
labels/s, peak RSS (the process's high-water mark, which includes Django and pyarrow) and the
file size. The database is dropped afterwards unless --keep.

    .venv/bin/python benchmarks/export_parquet.py --labels 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _load_seed as seeding  # noqa: E402

SLUG = "export-bench"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database-name", default="bench_export")
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--annotators", type=int, default=4)
    parser.add_argument("--format", default="pairs_parquet")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    return parser.parse_args()


def seed(labels: int, annotators: int) -> int:
    """The project (its id) with labels // annotators items, each labelled by every annotator."""
    from django.contrib.auth.hashers import make_password
    from django.db import connection

    from webapp.accounts.models import Role, User
    from webapp.annotation.models import Project, Question
    from webapp.annotation.questions import QuestionKind, TaskType

    project = Project.objects.create(
        name="Export benchmark", slug=SLUG, task_type=TaskType.PAIRWISE
    )
    question = Question.objects.create(
        project=project,
        key="preference",
        kind=QuestionKind.PREFERENCE,
        text="Which response is better?",
        config={"allow_tie": True, "allow_both_bad": True, "max_strength": 3},
    )
    password = make_password(None)
    User.objects.bulk_create(
        User(username=f"export-annotator-{n}", password=password, role=Role.ANNOTATOR)
        for n in range(annotators)
    )
    statements = [
        # Prompts of ~60 characters, responses of ~250: a short chat turn.
        """INSERT INTO annotation_prompt (project_id, text, digest, source, metadata, created_at)
           SELECT %(p)s, t, encode(sha256(convert_to(t, 'UTF8')), 'hex'), 'seed', '{}', now()
           FROM (SELECT 'Benchmark prompt ' || g || ': explain how a hash table works.' AS t
                 FROM generate_series(1, %(items)s) AS g) AS texts""",
        """INSERT INTO annotation_response (prompt_id, text, sampling, created_at)
           SELECT id, side || ' response to prompt ' || id || '. ' || repeat('A hash table maps '
                  || 'keys to buckets through a hash function. ', 5), '{}', now()
           FROM annotation_prompt, (VALUES ('First'), ('Second')) AS sides(side)
           WHERE project_id = %(p)s""",
        """INSERT INTO annotation_item (project_id, prompt_id, is_gold, version_rank,
                                        live_submissions, is_complete, created_at)
           SELECT %(p)s, id, false, 0, %(a)s, true, now()
           FROM annotation_prompt WHERE project_id = %(p)s ORDER BY id""",
        """INSERT INTO annotation_itemresponse (item_id, response_id, position)
           SELECT i.id, r.id, row_number() OVER (PARTITION BY i.id ORDER BY r.id) - 1
           FROM annotation_item i JOIN annotation_response r ON r.prompt_id = i.prompt_id
           WHERE i.project_id = %(p)s""",
        """INSERT INTO annotation_submission (item_id, annotator_id, served_at, submitted_at,
                                              active_ms)
           SELECT i.id, u.id, now(), now(), 1000
           FROM annotation_item i CROSS JOIN accounts_user u
           WHERE i.project_id = %(p)s AND u.username LIKE 'export-annotator-%%'""",
        # A tenth of the answers are ties; the others prefer one side with strength 1..3.
        """INSERT INTO annotation_label (submission_id, item_id, annotator_id, question_id,
                                         value, created_at)
           SELECT s.id, s.item_id, s.annotator_id, %(q)s,
                  CASE WHEN s.id %% 10 = 0
                    THEN '{"outcome": "tie", "winner": null, "strength": 0}'::jsonb
                    ELSE jsonb_build_object('outcome', 'win', 'winner', ir.response_id,
                                            'strength', 1 + s.id %% 3) END,
                  now()
           FROM annotation_submission s
           JOIN annotation_itemresponse ir ON ir.item_id = s.item_id AND ir.position = s.id %% 2""",
        "VACUUM ANALYZE",
    ]
    params = {"p": project.pk, "q": question.pk, "items": labels // annotators, "a": annotators}
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement, params)
    return project.pk


def export(project_id: int, format_name: str) -> dict[str, Any]:
    from webapp.annotation.models import Project
    from webapp.exports.building import run_snapshot
    from webapp.exports.models import ExportSnapshot
    from webapp.exports.services import create_snapshot, snapshot_files

    project = Project.objects.get(pk=project_id)
    snapshot = create_snapshot(project, None, {}, [format_name], run_in_background=False)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.monotonic()
    assert run_snapshot(snapshot.pk), "the snapshot was not built"
    seconds = time.monotonic() - started
    snapshot = ExportSnapshot.objects.get(pk=snapshot.pk)
    if snapshot.status != "succeeded":
        raise SystemExit(f"export failed: {snapshot.error}")
    files = snapshot.manifest["files"]
    return {
        "seconds": round(seconds, 2),
        "labels_per_s": round(snapshot.rows_total / seconds),
        "rows_written": sum(f["rows"] or 0 for f in files),
        "bytes_written": sum(f["bytes"] for f in files),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_export_mb": round(rss_before, 1),
        "files": [p.name for p in snapshot_files(snapshot)],
    }


def main() -> None:
    args = parse_args()
    export_dir = tempfile.mkdtemp(prefix="rlhf-export-bench-")
    os.environ.update(
        {
            "DATABASE_URL": seeding.database_url(args.database_url, args.database_name),
            "DJANGO_SETTINGS_MODULE": "webapp.settings",
            "DATA_DIR": export_dir,
            "EXPORT_DIR": str(Path(export_dir) / "exports"),
            "SECRET_KEY": "export-benchmark-only-" + "x" * 32,
            "LOG_LEVEL": "WARNING",
        }
    )
    import django

    seeding.create_database(args.database_url, args.database_name)
    try:
        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        started = time.monotonic()
        project_id = seed(args.labels, args.annotators)
        seed_s = time.monotonic() - started
        line = {"benchmark": "export", "format": args.format, "labels": args.labels}
        line |= {"annotators": args.annotators, "seed_s": round(seed_s, 1)}
        print(json.dumps(line | export(project_id, args.format)), flush=True)
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            seeding.drop_database(args.database_url, args.database_name)
        shutil.rmtree(export_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
