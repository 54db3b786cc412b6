"""The annotation load benchmark's data: a throw-away PostgreSQL database, seeded in bulk SQL.

One rating project (one required Likert question, overlap 3), one prompt + one response + one
item per row of generate_series (a million items take well under a minute), and annotators who
share one password hash (hashing is deliberately slow; logging in still checks it, over HTTP).
Run with Django set up on the benchmark's database (annotation_load.py does that).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

SLUG = "load-bench"
QUESTION_KEY = "quality"
PASSWORD = "load-bench-password-1"


def database_url(server_url: str, name: str) -> str:
    """`server_url` (postgres://user@host:port[/anything]) pointing at database `name`."""
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def create_database(server_url: str, name: str) -> None:
    with psycopg.connect(database_url(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(database_url(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def seed(*, items: int, annotators: int, overlap: int) -> list[str]:
    """Create the project, `items` items and the annotators; return the annotators' usernames."""
    from django.contrib.auth.hashers import make_password
    from django.db import connection

    from webapp.accounts.models import Role, User
    from webapp.annotation.models import Membership, Project, Question
    from webapp.annotation.questions import QuestionKind, TaskType

    project = Project.objects.create(
        name="Load benchmark", slug=SLUG, task_type=TaskType.RATING, overlap=overlap
    )
    Question.objects.create(
        project=project,
        key=QUESTION_KEY,
        kind=QuestionKind.LIKERT,
        text="How good is the response?",
        config={"min": 1, "max": 5, "labels": {}},
    )
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO annotation_prompt (project_id, text, digest, source, metadata, created_at)
            SELECT %s, t, encode(sha256(convert_to(t, 'UTF8')), 'hex'), 'seed', '{}', now()
            FROM (SELECT 'Benchmark prompt number ' || g || ': explain something.' AS t
                  FROM generate_series(1, %s) AS g) AS texts
            """,
            [project.pk, items],
        )
        cursor.execute(
            """
            INSERT INTO annotation_response (prompt_id, text, sampling, created_at)
            SELECT id, 'A **response** to prompt ' || id || ', in a few words of Markdown.',
                   '{}', now()
            FROM annotation_prompt WHERE project_id = %s
            """,
            [project.pk],
        )
        cursor.execute(
            """
            INSERT INTO annotation_item (project_id, prompt_id, is_gold, version_rank,
                                         live_submissions, is_complete, created_at)
            SELECT %s, id, false, 0, 0, false, now()
            FROM annotation_prompt WHERE project_id = %s ORDER BY id
            """,
            [project.pk, project.pk],
        )
        cursor.execute(
            """
            INSERT INTO annotation_itemresponse (item_id, response_id, position)
            SELECT i.id, r.id, 0
            FROM annotation_item i JOIN annotation_response r ON r.prompt_id = i.prompt_id
            WHERE i.project_id = %s
            """,
            [project.pk],
        )
        # As a long-lived table would be: vacuumed (so autovacuum does not start on these
        # million fresh rows in the middle of a run) and analysed.
        cursor.execute("VACUUM ANALYZE")
    password = make_password(PASSWORD)
    users = User.objects.bulk_create(
        User(username=f"annotator-{n:04d}", password=password, role=Role.ANNOTATOR)
        for n in range(annotators)
    )
    Membership.objects.bulk_create(Membership(project=project, user=user) for user in users)
    return [user.username for user in users]


def stored_answers(overlap: int) -> tuple[list[tuple[str, int, int, int]], dict[str, int]]:
    """Live submissions as (username, item id, live labels, score), and the database's own
    checks: (annotator, item) stored twice, items over `overlap`, items miscounted, and the
    "submitted" events."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT u.username, s.item_id, count(l.id), min((l.value->>'score')::int)
            FROM annotation_submission s
            JOIN accounts_user u ON u.id = s.annotator_id
            LEFT JOIN annotation_label l ON l.submission_id = s.id AND l.undone_at IS NULL
            WHERE s.undone_at IS NULL
            GROUP BY s.id, u.username, s.item_id
            """
        )
        stored = cursor.fetchall()
        cursor.execute(
            """
            SELECT
              (SELECT count(*) FROM (SELECT 1 FROM annotation_submission
                GROUP BY item_id, annotator_id HAVING count(*) > 1) d),
              (SELECT count(*) FROM annotation_item WHERE live_submissions > %s),
              (SELECT count(*) FROM annotation_item i LEFT JOIN (
                SELECT item_id, count(*) AS n FROM annotation_submission
                WHERE undone_at IS NULL GROUP BY item_id) c ON c.item_id = i.id
                WHERE i.live_submissions <> coalesce(c.n, 0)),
              (SELECT count(*) FROM annotation_annotationevent WHERE kind = 'submitted')
            """,
            [overlap],
        )
        duplicated, over_overlap, miscounted, submitted_events = cursor.fetchone()
    checks = {
        "duplicated_annotator_item": duplicated,
        "items_over_overlap": over_overlap,
        "items_miscounted": miscounted,
        "submitted_events": submitted_events,
    }
    return stored, checks


def integrity(submitted: dict[tuple[str, int], int], overlap: int) -> dict[str, object]:
    """Compare what the clients saw accepted (username, item id) -> score with the database."""
    stored, checks = stored_answers(overlap)
    in_database = {(name, item): score for name, item, _, score in stored}
    return {
        "accepted_submits": len(submitted),
        "submission_rows": len(stored),
        "lost": len(submitted.keys() - in_database.keys()),
        "unexpected": len(in_database.keys() - submitted.keys()),
        "wrong_label": sum(
            1
            for key, score in submitted.items()
            if key in in_database and in_database[key] != score
        ),
        "submissions_without_one_label": sum(1 for row in stored if row[2] != 1),
        **checks,
    }


# gunicorn hooks, loaded with `-c python:benchmarks._load_seed` when the benchmark runs with
# --count-queries: each worker appends "<method> <path> <status> <queries>" per request to
# $QUERY_LOG, so the figures say how many SQL statements a submit costs under concurrency.
def pre_request(worker: object, request: object) -> None:
    from django.db import connection

    connection.force_debug_cursor = True
    connection.queries_log.clear()


def post_request(worker: object, request: Any, environ: object, response: Any) -> None:
    import os

    from django.db import connection

    path = re.sub(r"/\d+/", "/<id>/", request.path)
    line = f"{request.method} {path} {response.status_code} {len(connection.queries_log)}\n"
    with open(os.environ["QUERY_LOG"], "a") as log:
        log.write(line)
