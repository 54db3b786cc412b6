"""The fastest any logged-in request can be on this machine: the floor under the load targets.

Serves one view with the production stack of annotation_load.py (gunicorn gthread, the same
settings and middleware, sessions in Redis, PostgreSQL) that checks the session, loads the user,
runs `SELECT 1` and returns a one-line fragment; then `--annotators` clients on 127.0.0.1 request
it as fast as they can. A real submission does all of this and much more (a transaction with
its checks and inserts, the next item's query and the fragment's template), so its throughput
is at most this figure, and in practice a fraction of it.

    .venv/bin/python benchmarks/request_floor.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _load_seed as seeding  # noqa: E402
from benchmarks.annotation_load import CpuMeter, latency_summary, start_server  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database-name", default="bench_floor")
    parser.add_argument("--cache-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--annotators", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--count-queries", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def sessions(count: int) -> list[str]:
    """A logged-in session per client, made as the log-in view would."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )

    User = get_user_model()
    store = import_module(settings.SESSION_ENGINE).SessionStore
    keys = []
    for number in range(count):
        user = User.objects.create(username=f"floor-{number}")
        session = store()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        keys.append(session.session_key)
    return keys


async def load(base: str, keys: list[str], args: argparse.Namespace, pid: int) -> dict[str, Any]:
    latencies: list[float] = []
    begin = time.monotonic() + args.warmup
    end = begin + args.seconds
    meter = CpuMeter(pid)

    async def client(key: str) -> None:
        async with aiohttp.ClientSession(cookies={"sessionid": key}) as http:
            while (now := time.monotonic()) < end:
                async with http.get(base + "floor/", allow_redirects=False) as response:
                    await response.read()
                    if response.status != 200:
                        raise SystemExit(f"the floor view answered {response.status}")
                if now >= begin:
                    latencies.append(1000 * (time.monotonic() - now))

    jobs = [asyncio.create_task(client(key)) for key in keys]
    await asyncio.sleep(args.warmup)
    meter.start()
    await asyncio.sleep(args.seconds)
    cpu = meter.stop()
    await asyncio.gather(*jobs)
    return {
        "benchmark": "request_floor",
        "annotators": len(keys),
        "requests_per_s": round(len(latencies) / args.seconds, 1),
        "latency": latency_summary(latencies),
        "cpu": cpu,
    }


def run_clients(base: str, keys: list[str], args: argparse.Namespace, pid: int) -> dict[str, Any]:
    return asyncio.run(load(base, keys, args, pid))


def main() -> None:
    args = parse_args()
    seeding.create_database(args.database_url, args.database_name)
    env = os.environ | {
        "DATABASE_URL": seeding.database_url(args.database_url, args.database_name),
        "DEBUG": "false",
        "DATA_DIR": tempfile.mkdtemp(prefix="rlhf-floor-"),
        "SECRET_KEY": "floor-benchmark-only-" + "x" * 32,
        "STATIC_MANIFEST": "false",
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "benchmarks._floor_site",
        "CACHE_URL": args.cache_url,
    }
    os.environ.update(env)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    keys = sessions(args.annotators)
    server = start_server(args, env)
    try:
        base = f"http://127.0.0.1:{args.port}/"
        # The clients run in a process of their own, without Django (as a real client would).
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            line = pool.apply(run_clients, (base, keys, args, server.pid))
        print(json.dumps(line), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
        from django.db import connections

        connections.close_all()
        seeding.drop_database(args.database_url, args.database_name)


if __name__ == "__main__":
    main()
