"""The whole loop in one command, on the CPU: `bin/run --simulate` with a tiny demo model.

The README's run command on its embedded default (SQLite, the file-system broker, a real worker
per queue and celery beat), a demo model pretrained for two steps, rounds of the "ci" preset,
and the simulated annotators labelling without a pause: the base model's samples enter the
queue, enough labels start a full round, the round trains a reward model and PPO and registers
a new version, whose samples (blind pairs against the base) the annotators judge, so that the
leaderboard holds votes for both versions. Everything is read back through the app itself: the
database through `manage.py shell`, the pages over HTTP as the demo admin.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_embedded_run import (
    ROOT,
    Browser,
    RunningApp,
    embedded_env,
    free_port,
    read_banner,
)

LOOP_TIMEOUT_S = 420  # bounded: a hang fails with the logs, never blocks CI
LABELS_BEFORE_THE_ROUND = 12

# Run inside the app's own environment: what the loop left in the database, as JSON.
FACTS = """
import json
from webapp.annotation.models import Item, ModelVersion, Project
from webapp.training import leaderboard
from webapp.training.models import TrainingRound
project = Project.objects.get(slug="demo-pairwise")
rounds = [
    {"pk": r.pk, "kind": r.kind, "state": r.state, "error": r.error,
     "version": r.result_version.name if r.result_version else None,
     "samples": r.samples_added}
    for r in TrainingRound.objects.order_by("pk")
]
versions = {v.pk: {"name": v.name, "parent": v.parent.name if v.parent else None}
            for v in ModelVersion.objects.all()}
items = []
for item in Item.objects.filter(project=project, model_version__isnull=False):
    made_by = sorted(versions[r.model_version_id]["name"] for r in item.responses.all())
    items.append({"versions": made_by, "complete": item.is_complete})
votes = leaderboard.project_votes(project)
standings = leaderboard.standings(list(versions), votes)
print(json.dumps({
    "rounds": rounds,
    "versions": list(versions.values()),
    "serving": project.serving_version.name,
    "items": items,
    "votes": [[versions[v.first]["name"], versions[v.second]["name"], v.outcome] for v in votes],
    "standings": {versions[s.version_id]["name"]: s.votes for s in standings},
}))
"""


@pytest.fixture
def simulated_loop(tmp_path: Path) -> Iterator[RunningApp]:
    port = free_port()
    command = [
        *(str(ROOT / "bin" / "run"), "--port", str(port), "--demo-steps", "2"),
        *("--round-preset", "ci", "--simulate", "--simulate-pace", "0"),
        *("--simulate-labels", str(LABELS_BEFORE_THE_ROUND)),
        *("--simulate-preference", "punctuation"),  # any taste, not only the default one
    ]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=embedded_env(tmp_path / "data"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    banner = read_banner(process, timeout=300)
    yield RunningApp(process, f"http://127.0.0.1:{port}", banner, tmp_path / "data")
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_log(app: RunningApp, log: str, pattern: str, timeout: float) -> str:
    """The log's text once `pattern` appears in it; fails with every log's tail otherwise."""
    path = app.data_dir / "logs" / log
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        if app.process.poll() is not None:
            break
        time.sleep(1)
    raise AssertionError(f"{pattern!r} not in {log} within {timeout:.0f} s.\n" + all_logs(app))


def all_logs(app: RunningApp) -> str:
    tails = []
    for path in sorted((app.data_dir / "logs").glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()[-25:]
        tails.append(f"--- {path.name}\n" + "\n".join(lines))
    return "\n".join(tails)


def facts(app: RunningApp) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v", "0", "-c", FACTS],
        cwd=ROOT,
        env=embedded_env(app.data_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def log_in_as_admin(app: RunningApp) -> Browser:
    browser = Browser(app.url)
    page = browser.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None
    browser.post(
        "/accounts/login/",
        {"username": "admin", "password": "demo-admin", "csrfmiddlewaretoken": token.group(1)},
        {"Referer": app.url + "/accounts/login/"},
    )
    return browser


@pytest.mark.slow
def test_one_command_runs_a_whole_round_from_labels_to_votes_on_the_new_version(
    simulated_loop: RunningApp,
) -> None:
    app = simulated_loop
    assert "Simulated annotators are labelling demo-pairwise" in app.banner
    assert "/training/" in app.banner
    log = wait_for_log(app, "simulation.log", r"Done: 1 round|Round \d+ (failed|cancelled)", 420)
    assert "Done: 1 round" in log, all_logs(app)
    assert "their hidden taste is 'punctuation': Punctuation marks" in log

    found = facts(app)
    by_kind = {r["kind"]: r for r in found["rounds"]}
    assert by_kind["generate"]["state"] == "succeeded", found["rounds"]  # the base's samples
    full = by_kind["full"]
    assert full["state"] == "succeeded", full["error"]
    new = full["version"]
    assert {"name": new, "parent": "demo-base"} in found["versions"]
    assert {"name": "demo-base", "parent": None} in found["versions"]
    assert full["samples"] > 0
    # The new version's samples are in the queue, blind pairs against its parent among them,
    # and the simulated annotators judged every one of those.
    against_parent = [i for i in found["items"] if i["versions"] == sorted(["demo-base", new])]
    assert against_parent and all(item["complete"] for item in against_parent)
    # The leaderboard ranks both versions from those votes.
    assert found["standings"][new] > 0 and found["standings"]["demo-base"] > 0
    assert len(found["votes"]) >= 3 * len(against_parent)

    browser = log_in_as_admin(app)
    board = browser.get("/training/projects/demo-pairwise/leaderboard/")
    assert new in board and "demo-base" in board
    round_page = browser.get(f"/training/{full['pk']}/")
    assert new in round_page

    # Celery beat, embedded in the default worker, sends the reconciler once a minute.
    wait_for_log(app, "worker-default.log", r"maintenance\.reconcile_rounds\[.*\] succeeded", 90)

    app.process.send_signal(signal.SIGINT)
    assert app.process.wait(timeout=30) == 0
