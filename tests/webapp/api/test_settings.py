"""The cache that holds the rate-limit counts, and the limit, as the environment sets them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
SHOW = (
    "import json, django; from django.conf import settings; django.setup(); "
    "print(json.dumps([settings.CACHES['default'], settings.API_RATE_LIMIT_PER_MINUTE]))"
)


def settings_with(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SHOW],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "DATA_DIR": str(tmp_path),
            "DJANGO_SETTINGS_MODULE": "webapp.settings",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def shown(tmp_path: Path, **env: str) -> tuple[dict[str, Any], int]:
    result = settings_with(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    cache, limit = json.loads(result.stdout)
    return cache, limit


def test_the_embedded_default_counts_in_files_every_web_process_shares(tmp_path: Path) -> None:
    cache, limit = shown(tmp_path)
    assert cache["BACKEND"].endswith("FileBasedCache") and limit == 120
    assert cache["LOCATION"] == str(tmp_path / "cache")


def test_with_a_redis_broker_the_counts_live_in_that_redis(tmp_path: Path) -> None:
    cache, _ = shown(tmp_path, BROKER_URL="redis://redis:6379/0")
    assert cache["BACKEND"].endswith("RedisCache")
    assert cache["LOCATION"] == "redis://redis:6379/0"


def test_cache_url_and_the_limit_can_be_set(tmp_path: Path) -> None:
    cache, limit = shown(
        tmp_path, CACHE_URL="redis://cache:6379/2", API_RATE_LIMIT_PER_MINUTE="600"
    )
    assert cache["LOCATION"] == "redis://cache:6379/2" and limit == 600


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CACHE_URL", "memcached://x", "CACHE_URL must be file:// or start with redis://"),
        ("API_RATE_LIMIT_PER_MINUTE", "0", "API_RATE_LIMIT_PER_MINUTE must be at least 1"),
        ("API_RATE_LIMIT_PER_MINUTE", "lots", "must be a whole number"),
    ],
)
def test_a_bad_value_stops_the_start(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    result = settings_with(tmp_path, **{variable: value})
    assert result.returncode != 0 and message in result.stderr
