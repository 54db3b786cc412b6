"""What the PaLM throughput benchmarks share: presets by name, the device, timing, JSON lines."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from rlhf_core.palm import PaLMConfig, lamda_small, palm_1b, palm_150m, palm_410m, tiny

PRESETS: dict[str, Callable[[], PaLMConfig]] = {
    "tiny": tiny,
    "palm_150m": palm_150m,
    "palm_410m": palm_410m,
    "palm_1b": palm_1b,
    "lamda_small": lamda_small,
}


def pick_device(name: str) -> torch.device:
    """`auto` is the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of `fn` including the device work it queued (host clock after a sync)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    """Peak memory allocated by tensors on a CUDA device (None on the CPU, which has no counter)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 1e9, 2)


def emit(record: dict[str, Any]) -> None:
    """One JSON line per configuration on stdout, flushed so a killed run keeps what it printed."""
    print(json.dumps({**record, "torch": torch.__version__}), flush=True)
