"""What a stage process and the task that supervises it share: exit codes, the result file,
the event channel, and the callback that feeds it. No Django and no torch here: both the Celery
task (workers/training.py) and the stage process (workers/stage_runner.py) import it."""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STOPPED = 75  # exit code: stopped on request, state saved where the stage can resume
PR_SET_PDEATHSIG = 1
RESULT = "result.json"


class StageError(Exception):
    """A stage that cannot run as asked; the message is shown to the admin as is."""


# Resolved once, here: after a fork, in a worker that has threads, loading a library could
# wait forever on a lock that another thread held.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (no orphaned training)."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class Channel:
    """Events for the supervising task, appended as JSON lines (main process only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stop_requested = False

    def send(self, event: str, **fields: Any) -> None:
        if not is_main_process():
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"event": event, **fields}, default=float) + "\n")

    def total(self, steps: int) -> None:
        self.send("total", steps=int(steps))

    def log(self, message: str) -> None:
        self.send("log", message=message)

    def metric(self, step: int, values: Mapping[str, Any]) -> None:
        scalars = {
            name: float(value)
            for name, value in values.items()
            if isinstance(value, int | float) and math.isfinite(value)
        }
        self.send("metric", step=int(step), values=scalars)


class Follow:
    """The trainers' callback: every step and evaluation into the channel; False (stop) once
    SIGTERM arrived. Evaluations are logged at the step they follow, with `val_` names."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def on_step(self, metrics: Mapping[str, float]) -> bool | None:
        self.channel.metric(int(metrics.get("step", 0)), metrics)
        return False if self.channel.stop_requested else None

    def on_eval(self, metrics: Mapping[str, float]) -> bool | None:
        named = {
            name if name.startswith("val_") else f"val_{name}": value
            for name, value in metrics.items()
            if name not in ("step", "epoch")
        }
        self.channel.metric(int(metrics.get("step", 0)), named)
        return False if self.channel.stop_requested else None

    def on_checkpoint(self, path: Path) -> bool | None:
        return False if self.channel.stop_requested else None


class Stopped(Exception):
    """The stage stopped on request before completing."""


def finite(value: Any) -> Any:
    """`value` with NaN and infinities as None: JSON (and PostgreSQL's jsonb) has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def describe(error: BaseException) -> str:
    """A message an admin can act on; a full disk or file-size limit said in words."""
    text = f"{type(error).__name__}: {error}"
    full = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    if (isinstance(error, OSError) and error.errno in full) or any(
        os.strerror(code) in text for code in full
    ):
        return f"out of disk space (disk full or a file-size limit reached): {text}"
    return text
