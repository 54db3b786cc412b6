"""The probe tasks, run by real workers on the real Redis and on the embedded file broker."""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.workers.conftest import run_manage
from webapp.core.models import Queue, WorkerProbe
from workers.system import describe_accelerators, describe_host, probe_default_queue

StartWorker = Callable[[str | None], dict[str, str]]


def test_the_host_description_names_host_process_and_python() -> None:
    assert set(describe_host()) == {"host", "pid", "python"}


def test_the_accelerator_description_lists_torch_and_its_devices() -> None:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    assert describe_accelerators() == {"torch": torch.__version__, "devices": gpus or ["cpu"]}


def test_the_accelerator_description_says_when_torch_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    assert describe_accelerators() == {"torch": "not installed"}


@pytest.mark.django_db
def test_a_probe_task_run_in_process_answers_its_probe() -> None:
    probe = WorkerProbe.objects.create(queue=Queue.DEFAULT)
    assert probe_default_queue.apply(args=[probe.pk]).get() is True
    assert probe_default_queue.apply(args=[probe.pk]).get() is False  # redelivered: no-op
    probe.refresh_from_db()
    assert probe.is_answered


def assert_both_queues_answered(result_stdout: str) -> None:
    probes = {probe.queue: probe for probe in WorkerProbe.objects.all()}
    assert set(probes) == {"default", "gpu"}
    assert all(probe.is_answered for probe in probes.values()), result_stdout
    # The GPU queue's worker (this virtual environment's Python) reports its accelerators.
    assert probes["gpu"].details["torch"] == importlib.metadata.version("torch")
    assert probes["gpu"].details["devices"]


@pytest.mark.slow
@pytest.mark.usefixtures("postgres")
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_on_redis_runs_tasks_sent_by_name(
    redis_url: str, start_worker: StartWorker
) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()  # no messages left over from an earlier run
    env = start_worker(redis_url)
    result = run_manage(env, "probe_workers", "--wait", "90")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "default: answered" in result.stdout and "gpu: answered" in result.stdout
    assert_both_queues_answered(result.stdout)


@pytest.mark.slow
@pytest.mark.usefixtures("postgres")
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_on_the_embedded_file_broker_runs_tasks_sent_by_name(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    env = start_worker(None)  # no BROKER_URL: the embedded default
    result = run_manage(env, "probe_workers", "--wait", "90")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_both_queues_answered(result.stdout)
    assert (tmp_path / "data" / "broker" / "queue").is_dir()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_probing_without_a_worker_fails_with_a_clear_message(tmp_path: Path) -> None:
    from tests.workers.conftest import process_env

    result = run_manage(process_env(None, tmp_path / "data"), "probe_workers", "--wait", "1")
    assert result.returncode == 1
    assert "No worker answered within 1 s on: default, gpu." in result.stderr
