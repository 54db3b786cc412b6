"""The soak benchmark's short variant: real gunicorn, PostgreSQL and Redis, with gunicorn workers
SIGKILLed and Redis restarted under simulated annotators.

Timings are never asserted (the machines are noisy); what must hold is that no acknowledged
answer is lost, none is stored twice, and no 5xx comes outside the Redis restart.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import missing_service
from tests.e2e.test_annotation_load_benchmark import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_killed_workers_and_a_redis_restart_lose_and_duplicate_no_answer(postgres: None) -> None:
    if shutil.which("redis-server") is None:
        missing_service("redis-server is not installed (apt-get install redis-server)")
    database = settings.DATABASES["default"]
    host, port = database["HOST"] or "127.0.0.1", database["PORT"] or 5432
    credentials = database["USER"]
    if database.get("PASSWORD"):
        credentials += f":{database['PASSWORD']}"
    result = subprocess.run(
        [
            *(sys.executable, "benchmarks/soak.py", "--quick"),
            *("--database-url", f"postgres://{credentials}@{host}:{port}"),
            *("--database-name", f"bench_soak_{os.getpid()}"),
            *("--port", str(free_port())),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    measures = {line["measure"]: line for line in lines}
    load, integrity = measures["load"], measures["integrity"]
    assert load["worker_kills"] == 4 and load["redis_restart_window_s"] is not None
    assert load["server_errors_outside_restart"] == 0, load
    assert integrity["ok"] is True and integrity["failed"] == [], integrity
    assert integrity["accepted_submits"] > 0
    assert integrity["lost"] == integrity["duplicated_annotator_item"] == 0
