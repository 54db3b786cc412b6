"""What the training-round tests share: a tiny base model in a model store, a pairwise project
whose annotators prefer one kind of answer, rounds, a private Redis and GPU-queue workers.

The model is a random PaLM of ~150k parameters with a small byte-level BPE: each stage of a
"ci" round runs in about a second on a CPU, most of it spent importing torch.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing_service
from tests.webapp.annotation.conftest import AddItems, MakeProject, add_items, make_project  # noqa: F401 (fixtures)
from tests.webapp.exports.conftest import AddLabel, add_label, win  # noqa: F401 (fixtures)
from tests.workers.conftest import process_env
from webapp.accounts.models import User
from webapp.annotation.models import Item, ModelVersion, Project, Response
from webapp.annotation.questions import TaskType
from webapp.celery_app import app
from webapp.training import presets
from webapp.training.models import RoundState, TrainingRound

ROOT = Path(__file__).resolve().parents[2]
BASE_CHECKPOINT = "versions/base"
TEXTS = [
    "the cat sat on the mat and looked at the tree",
    "see the green tree by the river, said the old man",
    "a calm cat sleeps in the sun all day long",
    "explain why the sky is blue in one short sentence",
] * 20


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny PaLM checkpoint (built once per session), to copy into a model store."""
    from rlhf_core.checkpoint import save_checkpoint
    from rlhf_core.palm import PaLM, PaLMConfig
    from rlhf_core.tokenizer import Tokenizer

    tokenizer = Tokenizer.train_bpe(TEXTS, 320)
    config = PaLMConfig(num_tokens=tokenizer.vocab_size, dim=64, depth=2, heads=2, dim_head=32)
    directory = tmp_path_factory.mktemp("tiny") / "model"
    save_checkpoint(directory, PaLM(config), tokenizer)
    return directory


@pytest.fixture
def model_store(tmp_path: Path, settings: Any, tiny_checkpoint: Path) -> Path:
    """This test's model store (and export directory), holding the base model."""
    settings.MODEL_STORE_DIR = tmp_path / "models"
    settings.EXPORT_DIR = tmp_path / "exports"
    shutil.copytree(tiny_checkpoint, settings.MODEL_STORE_DIR / BASE_CHECKPOINT)
    return Path(settings.MODEL_STORE_DIR)


@pytest.fixture
def base_version(model_store: Path) -> ModelVersion:
    return ModelVersion.objects.create(name="base", checkpoint_dir=BASE_CHECKPOINT)


@pytest.fixture
def project(
    make_project: MakeProject,  # noqa: F811
    add_items: AddItems,  # noqa: F811
    add_label: AddLabel,  # noqa: F811
    annotator: User,
    base_version: ModelVersion,
) -> Project:
    """A pairwise project serving the base model, with 12 labelled pairs: the annotator
    prefers the answer about the tree. One of the 12 prompts is on the test side of a label
    snapshot's split (the default seed and test share)."""
    project = make_project(TaskType.PAIRWISE, slug="loop", serving_version=base_version)
    prefer_the_tree(add_items(project, prompts=12, responses=2), annotator, add_label)
    return project


def prefer_the_tree(items: list[Item], annotator: User, add_label: AddLabel) -> None:  # noqa: F811
    """Each pair becomes an answer about the tree against one about a cat, and the annotator
    prefers the tree (by 1 to 3 grades)."""
    for number, item in enumerate(items):
        first, second = item.placements.order_by("position")
        Response.objects.filter(pk=first.response_id).update(text=f"see the tree {number}")
        Response.objects.filter(pk=second.response_id).update(text=f"a calm cat {number}")
        add_label(item, annotator, "preference", win(item, 0, 1 + number % 3))


@pytest.fixture
def likert_project(
    make_project: MakeProject,  # noqa: F811
    add_items: AddItems,  # noqa: F811
    add_label: AddLabel,  # noqa: F811
    annotator: User,
    base_version: ModelVersion,
) -> Project:
    """A rating project serving the base model, with 12 responses rated on its two Likert
    questions (helpfulness, correctness; 1 to 5): answers about the tree high, about a cat
    low. No pair, ranking or rewrite anywhere."""
    project = make_project(TaskType.RATING, slug="ratings", serving_version=base_version)
    for number, item in enumerate(add_items(project, prompts=12, responses=1)):
        tree = number % 2 == 0
        text = f"see the tree {number}" if tree else f"a calm cat {number}"
        Response.objects.filter(pk=item.responses.get().pk).update(text=text)
        add_label(item, annotator, "helpfulness", {"score": 5 if tree else 1})
        add_label(item, annotator, "correctness", {"score": 4 if tree else 2})
    return project


def make_round(
    project: Project, kind: str, *, algorithm: str = presets.PPO, **overrides: Any
) -> TrainingRound:
    """A QUEUED "ci" round (not sent)."""
    config = presets.build_config(kind, "ci", algorithm=algorithm, overrides=overrides)
    return TrainingRound.objects.create(project=project, kind=kind, preset="ci", config=config)


def wait_for(
    check: Callable[[], Any],
    *,
    timeout: float = 120,
    what: str = "",
    log: Path | None = None,
    every: float = 0.2,
) -> Any:
    """Poll `check` every `every` seconds until it returns something true; fail (with the
    worker's log) on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


def finished(training_round: TrainingRound) -> Callable[[], bool]:
    def check() -> bool:
        training_round.refresh_from_db()
        return training_round.state not in (RoundState.QUEUED, RoundState.RUNNING)

    return check


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test's own, without persistence: killed, it restarts empty."""

    def __init__(self, directory: Path) -> None:
        self.port, self.directory = free_port(), directory
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            command, cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self._answers, timeout=20, what="redis-server to start")

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url).ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        missing_service("redis-server is not installed (apt-get install redis-server)")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def sender(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """sender(url): this process's Celery app sends its tasks (rounds.send) to `url`."""

    def point_at(url: str) -> None:
        monkeypatch.setitem(app.conf, "broker_url", url)
        monkeypatch.setitem(app.conf, "broker_transport_options", {"visibility_timeout": 3600})
        monkeypatch.setattr(app, "_pool", None)
        monkeypatch.setattr(app.amqp, "_producer_pool", None)

    return point_at


class Workers:
    """GPU-queue Celery workers (solo pool: one task at a time) as real processes."""

    def __init__(self, tmp_path: Path, store: Path) -> None:
        self.tmp_path, self.store = tmp_path, store
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        broker_url: str,
        *,
        file_size_limit: int | None = None,
        concurrency: int = 1,
        **env: str,
    ) -> subprocess.Popen[bytes]:
        environment = process_env(broker_url, self.tmp_path / "data") | {
            "MODEL_STORE_DIR": str(self.store),
            "EXPORT_DIR": str(self.tmp_path / "exports"),
            "TRAINING_HEARTBEAT_EVERY_SECONDS": "1",
            **env,
        }
        pool = ["--pool", "solo"] if concurrency == 1 else ["--concurrency", str(concurrency)]
        command = [
            *(sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "gpu"),
            *(*pool, "-n", f"gpu-{uuid.uuid4().hex[:8]}@%h"),
            *("--without-mingle", "--without-gossip"),
            *("--without-heartbeat", "--loglevel", "INFO"),
        ]

        def limit_files() -> None:
            if file_size_limit is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

        log = self.log.open("ab")
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=log,
            preexec_fn=limit_files,
        )
        self.processes.append(process)
        return process

    @property
    def log(self) -> Path:
        return self.tmp_path / "worker.log"

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGQUIT)  # a cold shutdown: nothing left to finish
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def workers(tmp_path: Path, model_store: Path) -> Iterator[Workers]:
    started = Workers(tmp_path, model_store)
    yield started
    started.stop_all()


def pid_alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        return os.path.exists(f"/proc/{pid}")
