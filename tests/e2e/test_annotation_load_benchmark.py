"""The load benchmark's smoke run: real gunicorn, PostgreSQL and simulated annotators over HTTP.

Timings are never asserted (the machines are noisy); what must hold is that the script runs end
to end and its integrity check finds every accepted answer stored once and nothing else.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_the_quick_load_run_loses_and_duplicates_no_answer(postgres: None) -> None:
    database = settings.DATABASES["default"]
    host, port = database["HOST"] or "127.0.0.1", database["PORT"] or 5432
    url = f"postgres://{database['USER']}@{host}:{port}"
    if database.get("PASSWORD"):
        url = f"postgres://{database['USER']}:{database['PASSWORD']}@{host}:{port}"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/annotation_load.py",
            "--quick",
            "--database-url",
            url,
            "--database-name",
            f"bench_smoke_{os.getpid()}",
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    measures = {line["measure"]: line for line in lines}
    assert set(measures) >= {"submit", "integrity", "next_item"}, result.stdout
    integrity = measures["integrity"]
    assert integrity["ok"] is True, integrity
    assert integrity["accepted_submits"] > 0
    assert integrity["lost"] == integrity["unexpected"] == integrity["wrong_label"] == 0
