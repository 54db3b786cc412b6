"""How long a task takes from the web side's commit to a worker's answer in the database.

Starts a real worker on both queues, sends probes one after another through the configured broker
and prints one JSON line per queue with the round-trip percentiles. The database and broker come
from the environment (DATABASE_URL, BROKER_URL), as for the application; by default a throw-away
embedded set-up (SQLite and the file broker in a temporary directory).

    python benchmarks/queue_round_trip.py --probes 50
    BROKER_URL=redis://127.0.0.1:6379/14 python benchmarks/queue_round_trip.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=50, help="round trips per queue")
    parser.add_argument("--timeout", type=float, default=30, help="seconds to wait for one answer")
    args = parser.parse_args()

    os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="rlhf-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from webapp.core import services
    from webapp.core.models import WorkerProbe

    call_command("migrate", verbosity=0)
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "default,gpu"),
            *("--pool", "solo", "--without-mingle", "--without-gossip", "-n", "bench@%h"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    round_trips: dict[str, list[float]] = {"default": [], "gpu": []}
    try:
        services.request_worker_probes(None)  # warm-up: the worker starts and imports torch
        for _ in range(args.probes + 1):
            probes = services.request_worker_probes(None)
            deadline = time.monotonic() + args.timeout
            while WorkerProbe.objects.filter(
                pk__in=[p.pk for p in probes], answered_at__isnull=True
            ).exists():
                if time.monotonic() > deadline:
                    raise SystemExit("a probe was not answered in time; is the broker reachable?")
                time.sleep(0.005)
            if _ == 0:
                continue  # the first round still waits for the worker to start
            for probe in WorkerProbe.objects.filter(pk__in=[p.pk for p in probes]):
                round_trips[probe.queue].append(probe.round_trip_ms or 0.0)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    broker = settings.CELERY_BROKER_URL.split(":")[0]
    database = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    for queue, values in round_trips.items():
        line = {
            "benchmark": "queue_round_trip",
            "broker": broker,
            "database": database,
            "queue": queue,
            "probes": len(values),
            "p50_ms": statistics.median(values),
            "p99_ms": percentile(values, 0.99),
            "max_ms": max(values),
        }
        print(json.dumps(line))


if __name__ == "__main__":
    main()
