"""Many simulated annotators against the production server: throughput, latency, no lost label.

Creates its own PostgreSQL database, seeds it in bulk SQL (one rating project with one required
Likert question, `--items` items, `--annotators` annotators), starts gunicorn on 127.0.0.1 with
DEBUG off, and runs the annotators from one asyncio process (aiohttp). Each logs in through the
real log-in form, opens the annotate page, then submits answers as the browser does: an htmx POST
whose response is the next item's fragment, so one request per submission. Annotators pace
themselves so that together they offer `--rate` submissions/s (0: as fast as they can).

Prints JSON lines: the load (submissions/s, submit latency, errors by status, CPU of client,
server and machine), the integrity check read from the database afterwards (every accepted
submit has exactly one live submission with the label sent; no (annotator, item) twice, no item
over its overlap), and "next item" latency with all the items in the table: the HTTP request,
the `queue.next_item` service call, and EXPLAIN ANALYZE of the queue's candidate query.

    .venv/bin/python benchmarks/annotation_load.py            # the issue's targets
    .venv/bin/python benchmarks/annotation_load.py --quick    # a smoke run, well under a minute

--count-queries adds a line with the SQL statements per request (gunicorn hooks in _load_seed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _load_seed as seeding  # noqa: E402

SUBMIT_URL = re.compile(r'hx-post="(/annotate/[^"]+/items/(\d+)/submit/)"')
CSRF_HEADER = re.compile(r"hx-headers='\{\"X-CSRFToken\": \"([^\"]+)\"\}'")
CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
READY_TIMEOUT_S = 60


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))], 2)


def latency_summary(values_ms: list[float]) -> dict[str, Any]:
    return {
        "n": len(values_ms),
        "p50_ms": percentile(values_ms, 0.50),
        "p95_ms": percentile(values_ms, 0.95),
        "p99_ms": percentile(values_ms, 0.99),
        "max_ms": round(max(values_ms), 2) if values_ms else None,
    }


@dataclass
class Tally:
    """What the annotators saw: latencies inside the measured window, every accepted submit."""

    window: tuple[float, float] = (0.0, 0.0)
    submit_ms: list[float] = field(default_factory=list)
    next_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    accepted: dict[tuple[str, int], int] = field(default_factory=dict)
    in_window: int = 0
    exhausted: int = 0
    cpu: dict[str, Any] = field(default_factory=dict)
    log_in_s: float = 0.0

    def record(self, kind: str, started: float, elapsed_ms: float, status: int | str) -> None:
        if not self.window[0] <= started < self.window[1]:
            return
        (self.submit_ms if kind == "submit" else self.next_ms).append(elapsed_ms)
        self.statuses[f"{kind} {status}"] += 1
        if kind == "submit" and status == 200:
            self.in_window += 1


class Annotator:
    def __init__(self, base: str, username: str, tally: Tally, seed: int) -> None:
        import aiohttp

        self.base, self.username, self.tally = base, username, tally
        self.random = random.Random(seed)
        # unsafe=True: aiohttp otherwise ignores cookies set by an IP address such as 127.0.0.1.
        self.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=aiohttp.TCPConnector(limit=1),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        self.csrf = ""
        self.item: tuple[str, int] | None = None

    async def log_in(self) -> None:
        async with self.session.get(f"{self.base}/accounts/login/") as response:
            token = CSRF_FIELD.search(await response.text())
        assert token, "no CSRF field on the log-in page"
        form = {
            "username": self.username,
            "password": seeding.PASSWORD,
            "csrfmiddlewaretoken": token.group(1),
        }
        login = f"{self.base}/accounts/login/"
        async with self.session.post(login, data=form, allow_redirects=False) as response:
            assert response.status == 302, f"log-in of {self.username}: HTTP {response.status}"

    async def open_page(self) -> None:
        """The full annotate page, as the browser loads it: CSRF header and the first item."""
        async with self.session.get(f"{self.base}/annotate/{seeding.SLUG}/") as response:
            page = await response.text()
        token = CSRF_HEADER.search(page)
        assert response.status == 200 and token, f"annotate page: HTTP {response.status}"
        self.csrf = token.group(1)
        self._take_item(page)

    def _take_item(self, fragment: str) -> None:
        found = SUBMIT_URL.search(fragment)
        self.item = (found.group(1), int(found.group(2))) if found else None

    def _headers(self) -> dict[str, str]:
        return {"HX-Request": "true", "X-CSRFToken": self.csrf}

    async def next_item(self) -> None:
        """What the page's "Load the next item" button does: GET the item fragment."""
        started = time.monotonic()
        url = f"{self.base}/annotate/{seeding.SLUG}/"
        async with self.session.get(url, headers=self._headers()) as response:
            body = await response.text()
        self.tally.record("next", started, (time.monotonic() - started) * 1000, response.status)
        self._take_item(body)

    async def submit(self) -> None:
        import aiohttp

        assert self.item is not None
        url, item_id = self.item
        score = self.random.randint(1, 5)
        form = {f"q-{seeding.QUESTION_KEY}-score": str(score), "active_ms": "2500"}
        started = time.monotonic()
        status: int | str
        try:
            async with self.session.post(
                self.base + url, data=form, headers=self._headers()
            ) as response:
                body, status = await response.text(), response.status
        except TimeoutError:
            body, status = "", "timeout"
        except aiohttp.ClientError as error:
            body, status = "", type(error).__name__
        self.tally.record("submit", started, (time.monotonic() - started) * 1000, status)
        if status == 200:
            self.tally.accepted[(self.username, item_id)] = score
            self._take_item(body)
        else:
            await self.next_item()

    async def run(self, stop_at: float, interval: float) -> None:
        due = time.monotonic() + self.random.uniform(0, interval)
        while True:
            if interval:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            if time.monotonic() >= stop_at:
                return
            if self.item is None:
                self.tally.exhausted += 1
                return
            await self.submit()
            due = max(due + interval, time.monotonic())

    async def close(self) -> None:
        await self.session.close()


async def run_load(
    base: str, usernames: list[str], args: argparse.Namespace, server_pid: int
) -> Tally:
    tally = Tally()
    annotators = [Annotator(base, name, tally, n) for n, name in enumerate(usernames)]
    try:
        started = time.monotonic()
        gate = asyncio.Semaphore(8)  # log-ins check a deliberately slow password hash

        async def enter(annotator: Annotator) -> None:
            async with gate:
                await annotator.log_in()
                await annotator.open_page()

        await asyncio.gather(*(enter(a) for a in annotators))
        tally.log_in_s = time.monotonic() - started
        interval = len(annotators) / args.rate if args.rate else 0.0
        begin = time.monotonic() + args.warmup
        tally.window = (begin, begin + args.seconds)
        cpu = CpuMeter(server_pid)
        jobs = [asyncio.create_task(a.run(tally.window[1], interval)) for a in annotators]
        await asyncio.sleep(max(0.0, begin - time.monotonic()))
        cpu.start()
        await asyncio.sleep(max(0.0, tally.window[1] - time.monotonic()))
        tally.cpu = cpu.stop()
        await asyncio.gather(*jobs)
    finally:
        await asyncio.gather(*(a.close() for a in annotators))
    return tally


class CpuMeter:
    """CPU seconds used by this process, the server's processes, PostgreSQL, and the machine."""

    def __init__(self, server_pid: int) -> None:
        self.server = psutil.Process(server_pid)

    def _sample(self) -> dict[str, float]:
        me = psutil.Process().cpu_times()
        server = 0.0
        for proc in [self.server, *self.server.children(recursive=True)]:
            times = proc.cpu_times()
            server += times.user + times.system
        postgres = 0.0
        for proc in psutil.process_iter(["name", "cpu_times"]):
            if proc.info["name"] and proc.info["name"].startswith("postgres"):
                postgres += proc.info["cpu_times"].user + proc.info["cpu_times"].system
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        return {
            "client": me.user + me.system,
            "server": server,
            "postgres": postgres,
            "machine": busy,
            "wall": time.monotonic(),
        }

    def start(self) -> None:
        self.first = self._sample()

    def stop(self) -> dict[str, Any]:
        last = self._sample()
        wall = last["wall"] - self.first["wall"]
        cores = {
            f"{name}_cores": round((last[name] - self.first[name]) / wall, 2)
            for name in ("client", "server", "postgres", "machine")
        }
        return cores | {"machine_cores_total": psutil.cpu_count()}


def start_server(args: argparse.Namespace, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [
        *(sys.executable, "-m", "gunicorn", "webapp.wsgi:application"),
        *("--bind", f"127.0.0.1:{args.port}", "--workers", str(args.workers)),
        *("--worker-class", "gthread", "--threads", str(args.threads)),
        *("--keep-alive", "30", "--backlog", "2048"),
    ]
    if args.count_queries:
        command += ["-c", "python:benchmarks._load_seed"]
    log = Path(env["DATA_DIR"]) / "gunicorn.log"
    with log.open("ab") as output:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=output)
    deadline = time.monotonic() + READY_TIMEOUT_S
    url = f"http://127.0.0.1:{args.port}/healthz"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            raise SystemExit(f"gunicorn exited with code {server.returncode}:\n" + "\n".join(tail))
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.terminate()
    raise SystemExit(f"gunicorn did not answer {url} within {READY_TIMEOUT_S} s")


async def http_next_item(base: str, username: str, samples: int) -> list[float]:
    """GET the item fragment `samples` times, the annotator's lease released before each: every
    request then runs the queue's scan, not the shortcut back to a held item."""
    from asgiref.sync import sync_to_async

    from webapp.annotation.models import Lease

    release = sync_to_async(lambda: Lease.objects.filter(annotator__username=username).delete())
    tally = Tally(window=(0.0, float("inf")))
    annotator = Annotator(base, username, tally, 0)
    try:
        await annotator.log_in()
        await annotator.open_page()
        for _ in range(samples):
            await release()
            await annotator.next_item()
    finally:
        await annotator.close()
    assert set(tally.statuses) == {"next 200"}, tally.statuses
    return tally.next_ms


def service_next_item(username: str, samples: int) -> tuple[list[float], float]:
    """`queue.next_item` timed alone, and EXPLAIN ANALYZE of its candidate query (ms)."""
    from django.db import connection, transaction
    from django.utils import timezone

    from webapp.accounts.models import User
    from webapp.annotation import queue
    from webapp.annotation.models import Lease, Project

    project = Project.objects.get(slug=seeding.SLUG)
    user = User.objects.get(username=username)
    timings = []
    for _ in range(samples):
        Lease.objects.filter(annotator=user).delete()
        started = time.perf_counter()
        assert queue.next_item(project, user) is not None
        timings.append((time.perf_counter() - started) * 1000)
    Lease.objects.filter(annotator=user).delete()
    sql, params = queue.candidate_sql(project, user, timezone.now(), gold=False)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN ANALYZE {sql} FOR UPDATE OF i SKIP LOCKED", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    execution = re.search(r"Execution Time: ([\d.]+) ms", plan)
    return timings, float(execution.group(1)) if execution else float("nan")


def query_counts(log: Path) -> dict[str, Any]:
    """SQL statements per request, by request kind, from the gunicorn hooks' log."""
    counts: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        method, path, status, queries = line.split()
        counts.setdefault(f"{method} {path} {status}", []).append(int(queries))
    return {
        "benchmark": "annotation_load",
        "measure": "queries_per_request",
        "requests": {
            kind: {"n": len(n), "mean": round(sum(n) / len(n), 1), "max": max(n)}
            for kind, n in sorted(counts.items())
        },
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database-name", default="bench_annotation")
    parser.add_argument("--cache-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--annotators", type=int, default=100)
    parser.add_argument("--overlap", type=int, default=3)
    parser.add_argument("--rate", type=float, default=300, help="submissions/s offered; 0: max")
    parser.add_argument("--seconds", type=float, default=30, help="measured window")
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--samples", type=int, default=300, help="next-item requests timed")
    # Requests are CPU-bound Python that waits on PostgreSQL for about a quarter of its time: two
    # processes left a quarter of the 2 cores idle, four keep both busy, and a second thread
    # lets each overlap a database wait (measured: 4 x 2 and 4 x 1 beat 2 x 4, 3 x 2, 3 x 4).
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=2, help="threads per gunicorn worker")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--count-queries", action="store_true", help="report SQL statements per request (slower)"
    )
    parser.add_argument("--quick", action="store_true", help="10 annotators, 5 s, 10k items")
    args = parser.parse_args()
    if args.quick:
        args.items, args.annotators, args.seconds, args.warmup, args.samples = 10_000, 10, 5, 1, 50
        args.rate = min(args.rate, 100)
    return args


def server_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment of the server and of this process: the production settings module."""
    data_dir = tempfile.mkdtemp(prefix="rlhf-load-")
    return os.environ | {
        "DATABASE_URL": seeding.database_url(args.database_url, args.database_name),
        "DEBUG": "false",
        "DATA_DIR": data_dir,
        "SECRET_KEY": "load-benchmark-only-" + "x" * 32,
        "STATIC_MANIFEST": "false",  # no collectstatic here; the item fragment links no file
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "webapp.settings",
        # As in production (docker-compose.yml): sessions read from Redis.
        "CACHE_URL": args.cache_url,
        "QUERY_LOG": str(Path(data_dir) / "queries.log"),
    }


def load_line(args: argparse.Namespace, tally: Tally, seed_s: float) -> dict[str, Any]:
    return {
        "benchmark": "annotation_load",
        "measure": "submit",
        "items": args.items,
        "annotators": args.annotators,
        "offered_per_s": args.rate or "max",
        "seconds": args.seconds,
        "submissions_per_s": round(tally.in_window / args.seconds, 1),
        "submit": latency_summary(tally.submit_ms),
        "next_item_after_error": latency_summary(tally.next_ms),
        "statuses": dict(sorted(tally.statuses.items())),
        "annotators_out_of_items": tally.exhausted,
        "server": f"gunicorn gthread {args.workers} workers x {args.threads} threads",
        "cpu": tally.cpu,
        "log_in_s": round(tally.log_in_s, 1),
        "seed_s": round(seed_s, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def integrity_line(tally: Tally, overlap: int) -> dict[str, Any]:
    checked = seeding.integrity(tally.accepted, overlap)
    ok = (
        checked["lost"] == checked["unexpected"] == checked["wrong_label"] == 0
        and checked["submissions_without_one_label"] == 0
        and checked["duplicated_annotator_item"] == checked["items_over_overlap"] == 0
        and checked["items_miscounted"] == 0
        and checked["accepted_submits"] == checked["submission_rows"]
    )
    return {"benchmark": "annotation_load", "measure": "integrity", "ok": ok, **checked}


def next_item_line(args: argparse.Namespace, base: str, tally: Tally) -> dict[str, Any]:
    """Next-item latency for the annotator who answered most during the load."""
    from django.db import connection

    # Statistics as autovacuum leaves them: the seed's ANALYZE saw no submission at all, and
    # with that estimate the planner rescans the annotator's submissions for every candidate.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    busiest, answered = Counter(name for name, _ in tally.accepted).most_common(1)[0]
    http_ms = asyncio.run(http_next_item(base, busiest, args.samples))
    service_ms, explain_ms = service_next_item(busiest, args.samples)
    return {
        "benchmark": "annotation_load",
        "measure": "next_item",
        "items": args.items,
        "annotator_answered": answered,
        "http": latency_summary(http_ms),
        "service": latency_summary(service_ms),
        "explain_analyze_ms": explain_ms,
    }


def main() -> None:
    args = parse_args()
    env = server_env(args)
    os.environ.update(env)
    import django

    seeding.create_database(args.database_url, args.database_name)
    server = None
    try:
        django.setup()
        from django.core.management import call_command

        started = time.monotonic()
        call_command("migrate", verbosity=0)
        usernames = seeding.seed(items=args.items, annotators=args.annotators, overlap=args.overlap)
        seed_s = time.monotonic() - started
        server = start_server(args, env)
        base = f"http://127.0.0.1:{args.port}"
        tally = asyncio.run(run_load(base, usernames, args, server.pid))
        print(json.dumps(load_line(args, tally, seed_s)), flush=True)
        if args.count_queries:
            print(json.dumps(query_counts(Path(env["QUERY_LOG"]))), flush=True)
        integrity = integrity_line(tally, args.overlap)
        print(json.dumps(integrity), flush=True)
        print(json.dumps(next_item_line(args, base, tally)), flush=True)
        if not integrity["ok"]:
            raise SystemExit("integrity check failed")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        from django.db import connections

        connections.close_all()
        if not args.keep:
            seeding.drop_database(args.database_url, args.database_name)
            shutil.rmtree(env["DATA_DIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
