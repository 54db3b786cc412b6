"""Pretraining a PaLM on a prepared dataset (`rlhf_core.data`) with accelerate.

`pretrain(config)` is the same code on one CPU or GPU and under `accelerate launch` with DDP or
FSDP: every process runs it, accelerate wraps the model. An optimizer step takes `batch_size`
blocks on each process, as `grad_accum_steps` micro-batches whose gradients add up to exactly
those of the whole batch. Every process draws the same global batch from one `BlockLoader` and
keeps its own rows of it, so one `LoaderState` is the data position of all processes.

Every `checkpoint_every` steps, when a callback stops the run, and at the end, the run saves
accelerate's state (model, optimizer, scheduler, RNG states and `TrainingProgress`) and an
exportable checkpoint (see `rlhf_core.run_directory` for the layout). Started again on the same
`out_dir`, a run resumes from its latest state and continues as if it had never stopped: on the
CPU the weights and losses are bit for bit those of an uninterrupted run. On resume the
optimizer's hyperparameters (lr, betas, weight decay) come from the saved state, as PyTorch's
`load_state_dict` does; the schedule's shape and every other setting come from `config`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, cast

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import is_tensorboard_available, set_seed
from torch import Tensor, nn
from tqdm import tqdm

from rlhf_core.checkpoint import CheckpointMetadata, save_checkpoint
from rlhf_core.data import TOKENIZER_DIRECTORY, BlockLoader, LoaderState, PackedDataset
from rlhf_core.optim import build_adamw, warmup_cosine_schedule
from rlhf_core.palm import (
    PaLM,
    PaLMConfig,
    lamda_small,
    mini,
    palm_1b,
    palm_150m,
    palm_410m,
    tiny,
)
from rlhf_core.run_directory import RunDirectory
from rlhf_core.tokenizer import Tokenizer
from rlhf_core.training import (
    Metrics,
    NoCallback,
    TrainingCallback,
    accumulate_gradients,
    clip_gradients,
    next_token_loss_sum,
)

logger = get_logger(__name__)

MixedPrecision = Literal["auto", "bf16", "no"]
# Each preset takes the vocabulary size, which a run reads from its dataset.
MODEL_PRESETS = {
    "tiny": tiny,
    "mini": mini,
    "palm_150m": palm_150m,
    "palm_410m": palm_410m,
    "palm_1b": palm_1b,
    "lamda_small": lamda_small,
}


class PretrainError(Exception):
    """A pretraining run that cannot start: bad settings, or an out_dir holding another run."""


@dataclass(frozen=True)
class PretrainConfig:
    """Everything a pretraining run needs; stored in its run.json and checkpoints."""

    data_dir: Path  # a directory written by prepare_dataset
    out_dir: Path
    model: PaLMConfig | str = "tiny"  # a PaLMConfig, or the name of one of MODEL_PRESETS
    batch_size: int = 32  # blocks per optimizer step on each process
    grad_accum_steps: int = 1  # micro-batches of batch_size / grad_accum_steps blocks each
    max_steps: int = 1000
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0  # max global gradient norm; None: never clip
    eval_every: int = 100  # steps between validation losses (and one at the end)
    eval_batches: int = 8  # micro-batches of validation blocks per process; 0: no validation
    checkpoint_every: int = 500
    keep_last: int | None = 2  # training states and step checkpoints kept; None: all
    seed: int = 0
    mixed_precision: MixedPrecision = "auto"  # auto: bf16 on a GPU that has it, else none
    compile: bool = False  # torch.compile the model
    log_file: Path | None = None  # metrics as JSON lines; default out_dir/metrics.jsonl

    def __post_init__(self) -> None:
        for name in ("data_dir", "out_dir", "log_file"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "betas", tuple(self.betas))
        failed = [message for message, ok in self._checks().items() if not ok]
        if failed:
            raise PretrainError("; ".join(failed))

    def _checks(self) -> dict[str, bool]:
        return {
            f"model must be a PaLMConfig or one of {', '.join(MODEL_PRESETS)}": (
                isinstance(self.model, PaLMConfig) or self.model in MODEL_PRESETS
            ),
            "batch_size and grad_accum_steps must be >= 1": min(
                self.batch_size, self.grad_accum_steps
            )
            >= 1,
            "batch_size must be a multiple of grad_accum_steps": (
                self.batch_size % max(self.grad_accum_steps, 1) == 0
            ),
            "max_steps, eval_every and checkpoint_every must be >= 1": min(
                self.max_steps, self.eval_every, self.checkpoint_every
            )
            >= 1,
            "lr must be > 0": self.lr > 0,
            "min_lr_ratio must be in [0, 1]": 0 <= self.min_lr_ratio <= 1,
            "warmup_steps, weight_decay and eval_batches must be >= 0": min(
                self.warmup_steps, self.weight_decay, self.eval_batches
            )
            >= 0,
            "betas must be two numbers in [0, 1)": len(self.betas) == 2
            and all(0 <= beta < 1 for beta in self.betas),
            "grad_clip must be > 0 (or None)": self.grad_clip is None or self.grad_clip > 0,
            "keep_last must be >= 1 (or None)": self.keep_last is None or self.keep_last >= 1,
            "mixed_precision must be auto, bf16 or no": self.mixed_precision
            in ("auto", "bf16", "no"),
        }

    def model_config(self, vocab_size: int) -> PaLMConfig:
        """The model to train on a dataset of `vocab_size` ids."""
        if isinstance(self.model, str):
            return MODEL_PRESETS[self.model](vocab_size)
        if self.model.num_tokens < vocab_size:
            raise PretrainError(
                f"the model has {self.model.num_tokens} token ids, the dataset {vocab_size}"
            )
        return self.model

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields (paths as strings, a model config as its fields)."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        if isinstance(self.model, PaLMConfig):
            values["model"] = asdict(self.model)
        return {
            key: str(value) if isinstance(value, Path) else value for key, value in values.items()
        }


def resolve_mixed_precision(setting: MixedPrecision) -> Literal["bf16", "no"]:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


@dataclass(frozen=True)
class PretrainResult:
    """Where a `pretrain` call left the run."""

    step: int
    tokens_seen: int
    stopped_early: bool  # a callback asked to stop before max_steps
    final_checkpoint: Path | None  # out_dir/final; None when stopped early
    last_checkpoint: Path | None  # the latest exportable checkpoint this call wrote
    metrics: dict[str, float]  # of the last training step
    eval_metrics: dict[str, float]  # of the last validation (empty if none ran)


@dataclass
class TrainingProgress:
    """The trainer's own part of a saved state (accelerate keeps the model, optimizer, ...)."""

    step: int = 0  # optimizer steps done
    tokens_seen: int = 0  # by all processes together
    elapsed: float = 0.0  # seconds of training, over all sessions of the run
    loader: LoaderState = field(default_factory=LoaderState)

    def state_dict(self) -> dict[str, Any]:
        return {**asdict(self), "loader": asdict(self.loader)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.elapsed, self.loader = state["elapsed"], LoaderState(**state["loader"])


def pretrain(
    config: PretrainConfig,
    *,
    callback: TrainingCallback | None = None,
    resume: bool = True,
    show_progress: bool = True,
) -> PretrainResult:
    """Train a PaLM as `config` says; see the module docstring.

    resume: continue from the latest state in `config.out_dir`, if any. False starts over and
        deletes an earlier run's states, checkpoints and metrics there.
    show_progress: a tqdm bar on the main process.

    Accelerate fixes its mixed precision once per process: run jobs with different
    `mixed_precision` settings in separate processes.
    """
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(config.mixed_precision),
        # Our schedule counts optimizer steps; stepped "with the optimizer", accelerate would
        # advance it once per process per step.
        step_scheduler_with_optimizer=False,
        log_with="tensorboard" if is_tensorboard_available() else None,
        project_dir=str(config.out_dir),
    )
    trainer = _Trainer(config, accelerator, callback or NoCallback())
    try:
        trainer.restore(resume)
        return trainer.run(show_progress)
    finally:
        accelerator.end_training()


class _Trainer:
    """One call of `pretrain`: the prepared model, optimizer and data, and the loop over them."""

    def __init__(
        self, config: PretrainConfig, accelerator: Accelerator, callback: TrainingCallback
    ) -> None:
        self.config, self.accelerator, self.callback = config, accelerator, callback
        set_seed(config.seed)
        self.train_data = PackedDataset(config.data_dir, "train")
        self.validation = PackedDataset(config.data_dir, "validation")
        self.tokenizer = Tokenizer.load(config.data_dir / TOKENIZER_DIRECTORY)
        self.model_config = config.model_config(self.train_data.metadata.vocab_size)
        model = PaLM(self.model_config)
        optimizer = build_adamw(
            model, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas
        )
        scheduler = warmup_cosine_schedule(
            optimizer,
            warmup_steps=config.warmup_steps,
            max_steps=config.max_steps,
            min_lr_ratio=config.min_lr_ratio,
        )
        self.model, self.optimizer, self.scheduler = accelerator.prepare(
            model, optimizer, scheduler
        )
        # Compiled after wrapping, as accelerate does itself; state dicts come from the
        # uncompiled module, whose parameter names carry no `_orig_mod.` prefix.
        self.forward: nn.Module = (
            cast(nn.Module, torch.compile(self.model)) if config.compile else self.model
        )
        self.progress = TrainingProgress(loader=LoaderState(seed=config.seed))
        accelerator.register_for_checkpointing(self.progress)
        self.files = RunDirectory(config.out_dir, config.log_file)
        self.micro_batch_size = config.batch_size // config.grad_accum_steps
        self.validates = config.eval_batches > 0 and len(self.validation) > 0
        self.metrics: dict[str, float] = {}  # of the latest training step
        self.eval_metrics: dict[str, float] = {}  # of the latest validation
        self.saved_state_step: int | None = None

    def restore(self, resume: bool) -> None:
        """Load the latest saved state (resume) or start a fresh run in the output directory."""
        # As JSON reads it back (tuples become lists), to compare with run.json.
        identity = json.loads(
            json.dumps(
                {"model": asdict(self.model_config), "tokenizer": self.tokenizer.fingerprint}
            )
        )
        description = {**identity, "pretrain": self.config.to_dict()}
        latest = self.files.latest_state() if resume else None
        if latest is not None:
            stored = self.files.description() or {}
            if {key: stored.get(key) for key in identity} != identity:
                raise PretrainError(
                    f"{self.config.out_dir} holds a run of another model or tokenizer; use "
                    "another output directory, or start over without resuming"
                )
            self.accelerator.load_state(str(latest))
            self.saved_state_step = self.progress.step
        if self.accelerator.is_main_process:
            if latest is None:
                self.files.start(description)
            else:
                self.files.describe(description)
                self.files.rewind_metrics(self.progress.step)
        self.accelerator.wait_for_everyone()
        self.accelerator.init_trackers("pretrain", config=_scalars(self.config.to_dict()))

    def run(self, show_progress: bool) -> PretrainResult:
        processes = self.accelerator.num_processes
        self.loader = BlockLoader(
            self.train_data, self.config.batch_size * processes, state=self.progress.loader
        )
        if self.config.eval_batches and not self.validates:
            logger.warning("the validation split holds no block: no validation loss")
        self.clock = time.perf_counter()
        bar = tqdm(
            total=self.config.max_steps,
            initial=self.progress.step,
            unit="step",
            desc="pretrain",
            disable=not (show_progress and self.accelerator.is_main_process),
        )
        last_checkpoint, stopped = None, False
        with bar:
            while self.progress.step < self.config.max_steps and not stopped:
                self.metrics = self._train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{self.metrics['loss']:.4f}", lr=f"{self.metrics['lr']:.2e}")
                last_checkpoint, stopped = self._after_step(last_checkpoint)
        final = None if stopped else self._save(self.files.final)
        return PretrainResult(
            step=self.progress.step,
            tokens_seen=self.progress.tokens_seen,
            stopped_early=stopped,
            final_checkpoint=final,
            last_checkpoint=final or last_checkpoint,
            metrics=self.metrics,
            eval_metrics=self.eval_metrics,
        )

    def _train_step(self) -> dict[str, float]:
        started = time.perf_counter()
        blocks = self._own_rows(next(self.loader))
        loss = accumulate_gradients(
            self.accelerator, self.forward, blocks.chunk(self.config.grad_accum_steps)
        )
        grad_norm = clip_gradients(self.accelerator, self.model, self.config.grad_clip)
        lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        mean_loss = self.accelerator.reduce(loss, "mean").item()
        tokens = blocks[:, 1:].numel() * self.accelerator.num_processes
        self._advance(tokens)
        return {
            "step": self.progress.step,
            "loss": mean_loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_second": tokens / (time.perf_counter() - started),
            "tokens_seen": self.progress.tokens_seen,
            "elapsed": self.progress.elapsed,
        }

    def _advance(self, tokens: int) -> None:
        now = time.perf_counter()
        self.progress.step += 1
        self.progress.tokens_seen += tokens
        self.progress.elapsed += now - self.clock
        self.progress.loader = self.loader.state
        self.clock = now

    def _after_step(self, last_checkpoint: Path | None) -> tuple[Path | None, bool]:
        """Report, validate and checkpoint as due; returns the latest checkpoint and whether a
        callback asked to stop."""
        step, done = self.progress.step, self.progress.step == self.config.max_steps
        self._report(self.metrics, self.callback.on_step)
        if self.validates and (step % self.config.eval_every == 0 or done):
            self.eval_metrics = self._evaluate()
            self._report(self.eval_metrics, self.callback.on_eval)
        due = step % self.config.checkpoint_every == 0
        if due:
            last_checkpoint = self._save(self.files.checkpoint(step))
        stop = self.accelerator.check_trigger() and not done
        if stop and not due:
            last_checkpoint = self._save(self.files.checkpoint(step))
        return last_checkpoint, stop

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        """Mean token loss on the first `eval_batches` micro-batches of every process's rows of
        the validation split: the same blocks every time, so evaluations compare."""
        processes = self.accelerator.num_processes
        loader = BlockLoader(self.validation, self.micro_batch_size * processes, shuffle=False)
        totals = torch.zeros(2, device=self.accelerator.device)
        self.forward.eval()
        try:
            for _ in range(self.config.eval_batches):
                blocks = self._own_rows(next(loader))
                totals[0] += next_token_loss_sum(self.forward, blocks)
                totals[1] += blocks[:, 1:].numel()
        finally:
            self.forward.train()
        loss_sum, count = self.accelerator.reduce(totals, "sum").tolist()
        val_loss = loss_sum / count
        return {
            "step": self.progress.step,
            "val_loss": val_loss,
            "val_perplexity": math.exp(val_loss),
        }

    def _own_rows(self, global_batch: Tensor) -> Tensor:
        rows = global_batch.shape[0] // self.accelerator.num_processes
        start = self.accelerator.process_index * rows
        return global_batch[start : start + rows].to(self.accelerator.device)

    def _save(self, checkpoint: Path) -> Path:
        """Save the state to resume from (once per step) and an exportable checkpoint."""
        step = self.progress.step
        if self.saved_state_step != step:
            self.files.save_state(self.accelerator, step)
            self.saved_state_step = step
        weights = self.accelerator.get_state_dict(self.model)  # FSDP gathers on every process
        if self.accelerator.is_main_process:
            metadata = CheckpointMetadata(
                step=step,
                tokens_seen=self.progress.tokens_seen,
                metrics={
                    key: value
                    for key, value in {**self.metrics, **self.eval_metrics}.items()
                    if key in ("loss", "val_loss", "val_perplexity")
                },
                extra={"trainer": "pretrain", "pretrain": self.config.to_dict()},
            )
            model = self.accelerator.unwrap_model(self.model)
            save_checkpoint(
                checkpoint, model, self.tokenizer, metadata=metadata, state_dict=weights
            )
            self.files.prune(self.config.keep_last)
            self._ask(self.callback.on_checkpoint(checkpoint))
        self.accelerator.wait_for_everyone()
        return checkpoint

    def _report(self, metrics: dict[str, float], hook: Callable[[Metrics], bool | None]) -> None:
        if self.accelerator.is_main_process:
            self.files.append_metrics(metrics)
            values = {key: value for key, value in metrics.items() if key != "step"}
            self.accelerator.log(values, step=int(metrics["step"]))
            self._ask(hook(metrics))

    def _ask(self, answer: bool | None) -> None:
        if answer is False:
            # Only the main process runs callbacks; check_trigger shares the request with all.
            self.accelerator.set_trigger()


def _scalars(values: Mapping[str, Any]) -> dict[str, Any]:
    """Tracker configs (tensorboard's hparams) take scalars only."""
    return {
        key: value if isinstance(value, int | float | str | bool) else str(value)
        for key, value in values.items()
    }
