"""Smoke test of the README's run command, `bin/run`, on its embedded default.

No DATABASE_URL and no BROKER_URL: SQLite and the file-system broker under a fresh data directory,
the web server and both workers as real processes. An admin signs in over HTTP and sees both
queues answer a probe.
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningApp:
    process: subprocess.Popen[str]
    url: str
    banner: str
    data_dir: Path


def embedded_env(data_dir: Path) -> dict[str, str]:
    unset = {"DATABASE_URL", "BROKER_URL", "SECRET_KEY", "STATIC_MANIFEST"}
    env = {key: value for key, value in os.environ.items() if key not in unset}
    # Reuse the virtual environment running the tests instead of building another one.
    return env | {"DATA_DIR": str(data_dir), "VENV": sys.prefix, "PYTHONUNBUFFERED": "1"}


def read_banner(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Press Ctrl+C to stop." in line:
            return "".join(lines)
    process.kill()
    raise AssertionError("bin/run did not start:\n" + "".join(lines))


@pytest.fixture
def running_app(tmp_path: Path) -> Iterator[RunningApp]:
    port = free_port()
    process = subprocess.Popen(
        # Two pretraining steps: the whole demo path runs, in seconds rather than minutes.
        [str(ROOT / "bin" / "run"), "--port", str(port), "--demo-steps", "2"],
        cwd=tmp_path,
        env=embedded_env(tmp_path / "data"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    banner = read_banner(process, timeout=300)
    yield RunningApp(process, f"http://127.0.0.1:{port}", banner, tmp_path / "data")
    if process.poll() is None:
        process.kill()
        process.wait()


class Browser:
    """Just enough of a browser: cookies, and the CSRF token Django asks for."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def get(self, path: str) -> str:
        with self.opener.open(self.base_url + path, timeout=10) as response:
            return str(response.read().decode())

    def post(self, path: str, data: dict[str, str], headers: dict[str, str]) -> str:
        body = urllib.parse.urlencode(data).encode()
        request = urllib.request.Request(self.base_url + path, body, headers)
        with self.opener.open(request, timeout=10) as response:
            return str(response.read().decode())

    def csrf_token(self) -> str:
        return next(c.value for c in self.cookies if c.name == "csrftoken" and c.value)


@pytest.mark.slow
def test_the_run_command_serves_the_app_and_its_workers_answer(running_app: RunningApp) -> None:
    assert "admin / demo-admin" in running_app.banner
    assert "annotator / demo-annotator" in running_app.banner
    assert (running_app.data_dir / "db.sqlite3").is_file()  # the embedded default is SQLite
    demo_model = running_app.data_dir / "models" / "demo" / "run" / "final"
    assert (demo_model / "model.safetensors").is_file()
    assert "demo model: step 2" in running_app.banner

    browser = Browser(running_app.url)
    login_page = browser.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page)
    assert token is not None
    home = browser.post(
        "/accounts/login/",
        {"username": "admin", "password": "demo-admin", "csrfmiddlewaretoken": token.group(1)},
        {"Referer": running_app.url + "/accounts/login/"},
    )
    assert "You are an <strong>admin</strong>" in home

    htmx = {"HX-Request": "true", "X-CSRFToken": browser.csrf_token()}
    fragment = browser.post("/system/probes/", {}, htmx)
    deadline = time.monotonic() + 90
    while fragment.count(">answered<") < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        fragment = browser.get("/system/probes/")
    assert fragment.count(">answered<") == 2, fragment
    assert "torch=" in fragment  # the gpu queue's worker described its accelerators

    # The demo projects are seeded: the admin (a member) is served an item and answers it.
    page = browser.get("/annotate/demo-rating/")
    served = re.search(r'action="/annotate/demo-rating/items/(\d+)/submit/"', page)
    assert served is not None, page
    answer = {"q-helpfulness-score": "4", "q-correctness-score": "5", "active_ms": "1500"}
    after = browser.post(served.group(0)[8:-1], answer, htmx)
    following = re.search(r'action="/annotate/demo-rating/items/(\d+)/submit/"', after)
    assert following is not None and following.group(1) != served.group(1), after

    running_app.process.send_signal(signal.SIGINT)
    assert running_app.process.wait(timeout=30) == 0


@pytest.mark.slow
def test_the_run_command_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [str(ROOT / "bin" / "run"), "--port", str(port)],
            env=embedded_env(tmp_path / "data"),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert f"Port {port} on 127.0.0.1 is already in use" in result.stderr
