"""The output directory of a training run: resumable state, checkpoints and metrics.

    run.json                  what the run trains (model config, tokenizer) and its settings
    metrics.jsonl             one JSON object per training step or evaluation
    training_state/step-N/    accelerate's state after step N: what a resumed run starts from
    checkpoints/step-N/       the exportable model checkpoint of step N (rlhf_core.checkpoint)
    final/                    the exportable checkpoint at the end of the run
    pretrain/                 tensorboard event files (only where tensorboard is installed)

Every directory appears complete or not at all (written under a hidden name, then renamed), so
the latest `training_state/step-N` is always safe to resume from.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from rlhf_core.checkpoint import replace_directory
from rlhf_core.corpus import atomic_output

_STEP_DIRECTORY = re.compile(r"step-(\d+)")


class RunDirectory:
    """Where one run keeps its files; `metrics_file` defaults to `root/metrics.jsonl`."""

    def __init__(self, root: Path, metrics_file: Path | None = None) -> None:
        self.root = root
        self.run_file = root / "run.json"
        self.metrics_file = metrics_file or root / "metrics.jsonl"
        self.states = root / "training_state"
        self.checkpoints = root / "checkpoints"
        self.final = root / "final"

    def state(self, step: int) -> Path:
        return self.states / f"step-{step:06d}"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:06d}"

    def latest_state(self) -> Path | None:
        steps = _steps_in(self.states)
        return self.state(steps[-1]) if steps else None

    def start(self, description: Mapping[str, Any]) -> None:
        """Begin a new run here, deleting an earlier run's state, checkpoints and metrics.

        A leftover `training_state` would otherwise be resumed later instead of this run's, and
        old step numbers would outlive this run's when pruning.
        """
        for directory in (self.states, self.checkpoints, self.final):
            if directory.exists():
                shutil.rmtree(directory)
        self.metrics_file.unlink(missing_ok=True)
        self.describe(description)

    def describe(self, description: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.run_file) as handle:
            handle.write(json.dumps(description, indent=2).encode("utf-8"))

    def description(self) -> dict[str, Any] | None:
        """What run.json says, or None where there is none (or it is unreadable)."""
        try:
            described = json.loads(self.run_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return described if isinstance(described, dict) else None

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
        with self.metrics_file.open("a", encoding="utf-8") as file:
            file.write(json.dumps(row) + "\n")

    def rewind_metrics(self, step: int) -> None:
        """Drop the rows logged after `step`: a run resumed from `step` logs those steps again.

        A line cut short by a crash is dropped as well.
        """
        if not self.metrics_file.is_file():
            return
        kept = []
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("step", 0) <= step:
                kept.append(line + "\n")
        with atomic_output(self.metrics_file) as handle:
            handle.write("".join(kept).encode("utf-8"))

    def save_state(self, accelerator: Accelerator, step: int) -> Path:
        """Save accelerate's state as `state(step)`; every process must call this together.

        Each process writes its own part (RNG states, FSDP shards) into one hidden directory,
        whose name is the same on every process; the main process renames it when all are done.
        """
        target = self.state(step)
        partial = target.with_name(f".{target.name}.partial")
        if accelerator.is_main_process and partial.exists():
            shutil.rmtree(partial)  # left by a run that died while saving
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            replace_directory(partial, target)
        accelerator.wait_for_everyone()
        return target

    def prune(self, keep_last: int | None) -> None:
        """Keep the `keep_last` latest states and step checkpoints (all when None)."""
        if keep_last is None:
            return
        for tree, path_of in ((self.states, self.state), (self.checkpoints, self.checkpoint)):
            for step in _steps_in(tree)[:-keep_last]:
                shutil.rmtree(path_of(step))


def _steps_in(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    matches = (_STEP_DIRECTORY.fullmatch(path.name) for path in directory.iterdir())
    return sorted(int(match.group(1)) for match in matches if match)
