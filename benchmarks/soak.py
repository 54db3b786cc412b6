"""A soak run: simulated annotators for minutes while the server's parts are killed under them.

The production stack of `annotation_load.py` (gunicorn gthread, PostgreSQL, sessions and the
shared cache in Redis), seeded the same way, with `--annotators` annotators offering `--rate`
submissions/s (by default about half of the capacity that script measured on 2 cores) for
`--seconds`. Meanwhile one gunicorn worker, chosen at random, is killed with SIGKILL every
`--kill-every` seconds (the master starts another), and Redis is killed once at
`--redis-restart-at` and started again, empty, `--redis-down` seconds later.

An annotator whose answer got no reply (the connection dropped with its worker, a timeout, a
5xx) sends the same answer again, as the page's retry would: the answer may or may not have been
stored, and a second copy must never be. Afterwards the database is compared with what the
annotators saw: every answer acknowledged with 200 is stored once with the score sent; a stored
answer that was never acknowledged is one whose reply was lost, with the score sent; no
(annotator, item) twice; no item over its overlap.

Prints JSON lines: the load, with latencies and statuses inside and outside the Redis restart
window (requests in flight at any moment from the kill until `--restart-grace` seconds after
it answers again), and the
integrity check. Exit status 1 when anything was lost or duplicated, or a 5xx came outside the
restart window; the latency target (p99 < 150 ms outside the window) is reported, not enforced.

    .venv/bin/python benchmarks/soak.py           # 100 annotators, 10 minutes
    .venv/bin/python benchmarks/soak.py --quick   # the CI variant: 10 annotators, 30 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _load_seed as seeding  # noqa: E402
from benchmarks.annotation_load import (  # noqa: E402
    Annotator,
    Tally,
    latency_summary,
    server_env,
    start_server,
)

P99_TARGET_MS = 150
RETRIES = 8


@dataclass
class Request:
    kind: str  # "submit" (the answer path) or "next"
    started: float
    elapsed_ms: float
    status: int | str


@dataclass
class Soak:
    """Everything the annotators and the fault injector saw, on one clock (time.monotonic)."""

    requests: list[Request] = field(default_factory=list)
    accepted: dict[tuple[str, int], int] = field(default_factory=dict)
    unacknowledged: dict[tuple[str, int], int] = field(default_factory=dict)
    retries: int = 0
    kills: list[float] = field(default_factory=list)
    redis_window: tuple[float, float] | None = None
    # Annotator.run (the load benchmark's pacing loop) counts annotators out of items here.
    tally: Tally = field(default_factory=lambda: Tally(window=(0.0, float("inf"))))
    begin: float = 0.0  # when the load (and the clock of the faults) started


class SoakAnnotator(Annotator):
    def __init__(self, base: str, username: str, soak: Soak, seed: int) -> None:
        super().__init__(base, username, soak.tally, seed)
        self.soak = soak

    async def request(
        self, kind: str, method: str, url: str, **options: Any
    ) -> tuple[str, int | str]:
        """Body and status (or the client error's name) of one htmx request, recorded."""
        import aiohttp

        started = time.monotonic()
        body, status = "", "?"
        try:
            async with self.session.request(
                method, url, headers=self._headers(), **options
            ) as response:
                body, status = await response.text(), response.status
        except TimeoutError:
            status = "timeout"
        except aiohttp.ClientError as error:
            status = type(error).__name__
        elapsed = (time.monotonic() - started) * 1000
        self.soak.requests.append(Request(kind, started, elapsed, status))
        return body, status

    async def submit(self) -> None:
        assert self.item is not None
        url, item_id = self.item
        answer = (self.username, item_id)
        score = self.random.randint(1, 5)
        form = {f"q-{seeding.QUESTION_KEY}-score": str(score), "active_ms": "2500"}
        for attempt in range(RETRIES):
            if attempt:
                self.soak.retries += 1
                await asyncio.sleep(0.25 * attempt)
            body, status = await self.request("submit", "POST", self.base + url, data=form)
            if status == 200:
                self.soak.accepted[answer] = score
                self.soak.unacknowledged.pop(answer, None)
                self._take_item(body)
                return
            if isinstance(status, str) or status >= 500:
                self.soak.unacknowledged[answer] = score  # stored or not: ask again
                continue
            break  # a 4xx: answered before (by the lost attempt) or the lease is gone
        await self.next_item_retrying()

    async def next_item_retrying(self) -> None:
        """GET the next item until the server answers 200 (with an item or without any left)."""
        url = f"{self.base}/annotate/{seeding.SLUG}/"
        for attempt in range(RETRIES):
            body, status = await self.request("next", "GET", url)
            if status == 200:
                self._take_item(body)
                return
            await asyncio.sleep(0.25 * (attempt + 1))
        raise SystemExit(f"{self.username}: no next item after {RETRIES} tries (last: {status})")


class PrivateRedis:
    """A redis-server of this run's own, without persistence: killed, it comes back empty."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            command, cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"redis-server did not answer on port {self.port}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


async def inject_faults(
    args: argparse.Namespace, soak: Soak, server_pid: int, redis: PrivateRedis, begin: float
) -> None:
    """SIGKILL a random gunicorn worker every `--kill-every` s; restart Redis once."""
    chooser = random.Random(args.seed)
    master = psutil.Process(server_pid)
    next_kill = begin + args.kill_every
    restart_at = begin + args.redis_restart_at
    end = begin + args.seconds
    while True:
        now = time.monotonic()
        if now >= end:
            return
        if restart_at is not None and now >= restart_at:
            restart_at = None
            down = time.monotonic()
            redis.kill()
            await asyncio.sleep(args.redis_down)
            await asyncio.to_thread(redis.start)
            soak.redis_window = (down, time.monotonic() + args.restart_grace)
        if now >= next_kill:
            workers = master.children()
            if workers:
                os.kill(chooser.choice(workers).pid, signal.SIGKILL)
                soak.kills.append(time.monotonic())
            next_kill += args.kill_every
        await asyncio.sleep(0.05)


async def run_soak(
    base: str, usernames: list[str], args: argparse.Namespace, server_pid: int, redis: PrivateRedis
) -> Soak:
    soak = Soak()
    annotators = [SoakAnnotator(base, name, soak, n) for n, name in enumerate(usernames)]
    try:
        gate = asyncio.Semaphore(8)  # log-ins check a deliberately slow password hash

        async def enter(annotator: SoakAnnotator) -> None:
            async with gate:
                await annotator.log_in()
                await annotator.open_page()

        await asyncio.gather(*(enter(a) for a in annotators))
        interval = len(annotators) / args.rate
        begin = soak.begin = time.monotonic()
        faults = asyncio.create_task(inject_faults(args, soak, server_pid, redis, begin))
        await asyncio.gather(*(a.run(begin + args.seconds, interval) for a in annotators))
        await faults
    finally:
        await asyncio.gather(*(a.close() for a in annotators))
    return soak


def load_line(args: argparse.Namespace, soak: Soak) -> dict[str, Any]:
    window = soak.redis_window or (float("inf"), float("inf"))

    def during_restart(r: Request) -> bool:  # in flight at any moment of the window
        return r.started < window[1] and r.started + r.elapsed_ms / 1000 >= window[0]

    inside = [r for r in soak.requests if during_restart(r)]
    outside = [r for r in soak.requests if not during_restart(r)]
    server_errors_outside = sum(isinstance(r.status, int) and r.status >= 500 for r in outside)
    latency_outside = latency_summary(
        [r.elapsed_ms for r in outside if r.kind == "submit" and r.status == 200]
    )
    p99 = latency_outside["p99_ms"]
    return {
        "benchmark": "soak",
        "measure": "load",
        "annotators": args.annotators,
        "offered_per_s": args.rate,
        "seconds": args.seconds,
        "submissions_per_s": round(len(soak.accepted) / args.seconds, 1),
        "worker_kills": len(soak.kills),
        "redis_restart_window_s": round(window[1] - window[0], 2) if soak.redis_window else None,
        "answer_outside_restart": latency_outside,
        "answer_in_restart": latency_summary(
            [r.elapsed_ms for r in inside if r.kind == "submit" and r.status == 200]
        ),
        "statuses_outside_restart": dict(Counter(str(r.status) for r in outside)),
        "statuses_in_restart": dict(Counter(str(r.status) for r in inside)),
        "server_errors_outside_restart": server_errors_outside,
        # Seconds into the run, to read beside the server's log.
        "server_errors_outside_restart_at_s": [
            round(r.started - soak.begin, 2)
            for r in outside
            if isinstance(r.status, int) and r.status >= 500
        ],
        "worker_kills_at_s": [round(t - soak.begin, 2) for t in soak.kills],
        "redis_restart_window_at_s": [round(t - soak.begin, 2) for t in soak.redis_window]
        if soak.redis_window
        else None,
        "retries": soak.retries,
        "annotators_out_of_items": soak.tally.exhausted,
        "p99_target_ms": P99_TARGET_MS,
        "p99_target_met": p99 is not None and p99 < P99_TARGET_MS,
        "server": f"gunicorn gthread {args.workers} workers x {args.threads} threads",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def integrity_line(soak: Soak, overlap: int) -> dict[str, Any]:
    """The database against what the annotators saw; an unacknowledged answer may be stored."""
    rows, checks = seeding.stored_answers(overlap)
    stored = {(name, item): score for name, item, _, score in rows}
    unacknowledged = stored.keys() - soak.accepted.keys()
    checked = {
        "accepted_submits": len(soak.accepted),
        "submission_rows": len(rows),
        "lost": len(soak.accepted.keys() - stored.keys()),
        "wrong_label": sum(stored[k] != v for k, v in soak.accepted.items() if k in stored),
        "stored_without_reply": len(unacknowledged),
        "stored_never_sent": sum(k not in soak.unacknowledged for k in unacknowledged),
        "stored_without_reply_wrong_label": sum(
            stored[k] != soak.unacknowledged[k] for k in unacknowledged if k in soak.unacknowledged
        ),
        "submissions_without_one_label": sum(row[2] != 1 for row in rows),
        **{name: value for name, value in checks.items() if name != "submitted_events"},
    }
    counts = ("accepted_submits", "submission_rows", "stored_without_reply")
    bad = [name for name, value in checked.items() if name not in counts and value]
    return {"benchmark": "soak", "measure": "integrity", "ok": not bad, "failed": bad, **checked}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database-name", default="bench_soak")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--annotators", type=int, default=100)
    parser.add_argument("--overlap", type=int, default=3)
    # annotation_load.py measured 69-78 submissions/s at saturation on 2 cores (RESULTS.md).
    parser.add_argument("--rate", type=float, default=35, help="submissions/s offered")
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--kill-every", type=float, default=60, help="s between worker kills")
    parser.add_argument("--redis-restart-at", type=float, default=300, help="s into the run")
    parser.add_argument("--redis-down", type=float, default=2, help="s Redis stays down")
    parser.add_argument(
        "--restart-grace", type=float, default=5, help="s after Redis answers again"
    )
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=2, help="threads per gunicorn worker")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="10 annotators at 20/s for 30 s, a kill every 6 s, Redis restarted at 15 s",
    )
    args = parser.parse_args()
    if args.quick:
        args.items, args.annotators, args.rate, args.seconds = 10_000, 10, 20, 30
        args.kill_every, args.redis_restart_at = 6, 15
    args.count_queries = False  # start_server's option
    return args


def main() -> None:
    args = parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    redis_dir = Path(tempfile.mkdtemp(prefix="rlhf-soak-redis-"))
    redis = PrivateRedis(redis_dir)
    redis.start()
    args.cache_url = redis.url
    env = server_env(args)
    os.environ.update(env)
    import django

    seeding.create_database(args.database_url, args.database_name)
    server = None
    try:
        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        usernames = seeding.seed(items=args.items, annotators=args.annotators, overlap=args.overlap)
        server = start_server(args, env)
        base = f"http://127.0.0.1:{args.port}"
        soak = asyncio.run(run_soak(base, usernames, args, server.pid, redis))
        load = load_line(args, soak)
        print(json.dumps(load), flush=True)
        integrity = integrity_line(soak, args.overlap)
        print(json.dumps(integrity), flush=True)
        if not integrity["ok"]:
            raise SystemExit("integrity check failed: " + ", ".join(integrity["failed"]))
        if load["server_errors_outside_restart"]:
            raise SystemExit("5xx answers outside the Redis restart window")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        redis.kill()
        shutil.rmtree(redis_dir, ignore_errors=True)
        from django.db import connections

        connections.close_all()
        if not args.keep:
            seeding.drop_database(args.database_url, args.database_name)
            shutil.rmtree(env["DATA_DIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
