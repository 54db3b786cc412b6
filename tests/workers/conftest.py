"""Real Celery workers, started as processes against a real broker and the test database."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def test_database_url() -> str:
    """The URL of the database this test runs in, for processes started by the test."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


def process_env(broker_url: str | None, data_dir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "BROKER_URL"}
    env |= {"DATABASE_URL": test_database_url(), "DATA_DIR": str(data_dir)}
    if broker_url is not None:
        env["BROKER_URL"] = broker_url
    return env


RunManage = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[str | None], dict[str, str]]]:
    """Start `celery -A workers.app worker` on both queues; returns the environment it uses."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(broker_url: str | None) -> dict[str, str]:
        env = process_env(broker_url, tmp_path / "data")
        command = [
            *(sys.executable, "-m", "celery", "-A", "workers.app", "worker"),
            *("-Q", "default,gpu", "--pool", "solo", "-n", f"test-{uuid.uuid4().hex[:8]}@%h"),
            *("--without-mingle", "--without-gossip", "--loglevel", "INFO"),
        ]
        log = (tmp_path / "worker.log").open("wb")
        processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log))
        return env

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


def run_manage(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
