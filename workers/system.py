"""Probes: a round trip through each queue that proves broker, worker and database work together."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

from webapp import background
from webapp.celery_app import app
from webapp.core.services import answer_worker_probe


def describe_host() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "python": platform.python_version()}


def describe_accelerators() -> dict[str, Any]:
    """What the GPU queue's worker can train on. torch is imported here, never on the web side."""
    try:
        import torch
    except ImportError:
        return {"torch": "not installed"}
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"torch": torch.__version__, "devices": devices or ["cpu"]}


@app.task(name=background.PROBE_DEFAULT_QUEUE)
def probe_default_queue(probe_id: int) -> bool:
    return answer_worker_probe(probe_id, worker=_worker_name(), details=describe_host())


@app.task(name=background.PROBE_GPU_QUEUE)
def probe_gpu_queue(probe_id: int) -> bool:
    details = describe_host() | describe_accelerators()
    return answer_worker_probe(probe_id, worker=_worker_name(), details=details)


def _worker_name() -> str:
    task = app.current_task
    hostname = task.request.hostname if task is not None else None
    return str(hostname) if hostname else socket.gethostname()
