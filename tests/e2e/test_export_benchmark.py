"""The export benchmark's smoke run: seeded in bulk SQL, exported, the JSON line complete.

Timings are never asserted (the machines are noisy); the script must run end to end and write
the rows its seed implies: every tenth answer is a tie, which the pairs file leaves out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_export_benchmark_runs_and_reports_its_figures(postgres: None) -> None:
    database = settings.DATABASES["default"]
    host, port = database["HOST"] or "127.0.0.1", database["PORT"] or 5432
    password = f":{database['PASSWORD']}" if database.get("PASSWORD") else ""
    result = subprocess.run(
        [
            *(sys.executable, "benchmarks/export_parquet.py", "--labels", "4000"),
            *("--database-url", f"postgres://{database['USER']}{password}@{host}:{port}"),
            *("--database-name", f"bench_export_smoke_{os.getpid()}"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["labels"] == 4000 and line["rows_written"] == 3600
    assert line["seconds"] > 0 and line["peak_rss_mb"] >= line["rss_before_export_mb"] > 0
    assert line["files"] == [
        "pairs-train.parquet",
        "pairs-test.parquet",
        "README.md",
        "manifest.json",
    ]
