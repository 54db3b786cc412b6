"""What the fine-tuning trainers (SFT, DPO) share: settings, trainable parts, the step loop.

A fine-tuning run starts from a loaded PaLM rather than from a dataset on disk, takes a few
hundred steps over labelled records held in memory, and returns the trained model; a caller
(the CLI, a Celery task) saves it with `save_policy`. It is not resumable: unlike pretraining a
run is short, and a failed round starts over from its base checkpoint.

On several processes (`accelerate launch`) every process draws the same shuffled batch and keeps
every num_processes-th row of it, as pretraining does; accelerate averages the gradients.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor, nn

from rlhf_core.checkpoint import CheckpointMetadata, save_checkpoint
from rlhf_core.commands import FROM_RECIPE, given_options
from rlhf_core.lora import add_lora, lora_layers, set_active_scope, train_only_last_layers
from rlhf_core.optim import build_adamw, warmup_cosine_schedule
from rlhf_core.palm import PaLM
from rlhf_core.pretrain import MixedPrecision, resolve_mixed_precision
from rlhf_core.run_directory import RunDirectory
from rlhf_core.tokenizer import Tokenizer
from rlhf_core.training import NoCallback, TrainingCallback, clip_gradients


class FineTuneError(ValueError):
    """A fine-tuning run that cannot start: bad settings, or no usable records."""


@dataclass(frozen=True)
class FineTuneConfig:
    """Settings every fine-tuning trainer shares; `SFTConfig` and `DPOConfig` add their own.

    The number of steps is `max_steps`, or `epochs` passes over the records when it is None.
    At most one of `lora_rank` (train LoRA adapters only, base frozen) and `train_last_layers`
    (train the last n blocks and the final norm) may be set; neither trains every weight.
    """

    lr: float = 1e-5
    batch_size: int = 8
    epochs: int = 1
    max_steps: int | None = None
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    max_length: int | None = 512  # tokens of prompt + response; the prompt is cut first
    seed: int = 0
    mixed_precision: MixedPrecision = "auto"
    lora_rank: int | None = None
    lora_alpha: float = 16.0
    train_last_layers: int | None = None
    log_file: Path | None = None  # metrics as JSON lines, one per step

    def __post_init__(self) -> None:
        if self.log_file is not None:
            object.__setattr__(self, "log_file", Path(self.log_file))
        failed = [message for message, ok in self.checks().items() if not ok]
        if failed:
            raise FineTuneError("; ".join(failed))

    def checks(self) -> dict[str, bool]:
        """Message -> whether it holds; subclasses add theirs."""
        return {
            "lr must be > 0": self.lr > 0,
            "batch_size and epochs must be >= 1": min(self.batch_size, self.epochs) >= 1,
            "max_steps must be >= 1 (or None)": self.max_steps is None or self.max_steps >= 1,
            "warmup_steps and weight_decay must be >= 0": min(self.warmup_steps, self.weight_decay)
            >= 0,
            "grad_clip must be > 0 (or None)": self.grad_clip is None or self.grad_clip > 0,
            "max_length must be >= 2 (or None)": self.max_length is None or self.max_length >= 2,
            "mixed_precision must be auto, bf16 or no": self.mixed_precision
            in ("auto", "bf16", "no"),
            "lora_rank must be >= 1 (or None)": self.lora_rank is None or self.lora_rank >= 1,
            "train_last_layers must be >= 1 (or None)": self.train_last_layers is None
            or self.train_last_layers >= 1,
            "lora_rank and train_last_layers exclude each other": self.lora_rank is None
            or self.train_last_layers is None,
        }

    def steps_for(self, records: int) -> int:
        return self.max_steps or self.epochs * math.ceil(records / self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings, for a checkpoint's metadata."""
        return {
            key: str(value) if isinstance(value, Path) else value
            for key, value in asdict(self).items()
        }


@dataclass(frozen=True)
class FineTuneResult:
    """Where a run ended: `metrics` of the last step, `history` of every step."""

    steps: int
    stopped_early: bool  # a callback asked to stop
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(repr=False)


def make_trainable(model: PaLM, config: FineTuneConfig, lora_scope: str) -> None:
    """Choose what trains: a new active LoRA scope, the last blocks, or every weight.

    A model with an active, unmerged adapter is refused: a new scope would replace it rather
    than build on it, and a DPO reference with adapters off would lose it too. Merge it first
    (`lora.merge`) or load the checkpoint `save_policy` wrote.
    """
    if any(
        layer.active_scope is not None and layer.active_scope not in layer.merged_scopes
        for layer in lora_layers(model)
    ):
        raise FineTuneError("the model has an active LoRA adapter: merge it before fine-tuning")
    if config.lora_rank is not None:
        add_lora(model, lora_scope, rank=config.lora_rank, alpha=config.lora_alpha)
        set_active_scope(model, lora_scope)
    elif config.train_last_layers is not None:
        try:
            train_only_last_layers(model, config.train_last_layers)
        except ValueError as error:
            raise FineTuneError(f"train_last_layers: {error}") from error
    else:
        model.requires_grad_(True)


def shuffled_batches(count: int, config: FineTuneConfig, steps: int) -> Iterator[list[int]]:
    """`steps` batches of record indices: epochs of a seeded permutation, the last batch of an
    epoch shorter rather than mixed with the next epoch's records."""
    generator = torch.Generator().manual_seed(config.seed)
    produced = 0
    while True:
        order = torch.randperm(count, generator=generator).tolist()
        for start in range(0, count, config.batch_size):
            if produced == steps:
                return
            produced += 1
            yield order[start : start + config.batch_size]


StepFunction = Callable[[nn.Module, list[int]], tuple[Tensor, dict[str, float]]]


class FineTuneLoop:
    """Accelerate, AdamW with warm-up + cosine decay, clipping, metrics and the callback."""

    def __init__(self, model: PaLM, config: FineTuneConfig, steps: int) -> None:
        self.config, self.steps = config, steps
        self.accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(config.mixed_precision),
            step_scheduler_with_optimizer=False,  # our schedule counts optimizer steps
        )
        set_seed(config.seed)
        optimizer = build_adamw(
            model, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95)
        )
        scheduler = warmup_cosine_schedule(
            optimizer, warmup_steps=config.warmup_steps, max_steps=steps, min_lr_ratio=0.1
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(
            model, optimizer, scheduler
        )
        self.log = (
            RunDirectory(config.log_file.parent, config.log_file) if config.log_file else None
        )

    def own_rows(self, batch: list[int]) -> list[int]:
        return batch[self.accelerator.process_index :: self.accelerator.num_processes]

    def run(
        self, batches: Iterator[list[int]], step: StepFunction, callback: TrainingCallback | None
    ) -> FineTuneResult:
        """One optimizer step per batch; `step` returns the loss to minimise and its metrics."""
        callback = callback or NoCallback()
        history: list[dict[str, float]] = []
        started, stopped = time.perf_counter(), False
        self.model.train()
        for index, batch in enumerate(batches, start=1):
            loss, metrics = step(self.model, self.own_rows(batch))
            self.accelerator.backward(loss)
            grad_norm = clip_gradients(self.accelerator, self.model, self.config.grad_clip)
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            row = {"step": index, **metrics, "lr": lr, "grad_norm": grad_norm}
            row["elapsed"] = time.perf_counter() - started
            history.append(row)
            if self.accelerator.is_main_process:
                if self.log is not None:
                    self.log.append_metrics(row)
                if callback.on_step(row) is False:
                    self.accelerator.set_trigger()
            if self.accelerator.check_trigger():
                stopped = True
                break
        self.accelerator.unwrap_model(self.model).eval()
        return FineTuneResult(len(history), stopped, history[-1] if history else {}, history)


@torch.no_grad()
def merged_state_dict(model: PaLM) -> dict[str, Tensor]:
    """The weights of `model` as a plain PaLM: active LoRA adapters folded into the base weights
    (without changing the model), adapter tensors left out, so the checkpoint loads anywhere."""
    weights = {
        name: tensor for name, tensor in model.state_dict().items() if ".adapters." not in name
    }
    names = {id(module): name for name, module in model.named_modules()}
    for layer in lora_layers(model):
        scope = layer.active_scope
        if scope is not None and scope in layer.adapters and scope not in layer.merged_scopes:
            key = f"{names[id(layer)]}.weight"
            weights[key] = layer.weight + layer.adapter(scope).delta_weight().to(layer.weight)
    return weights


def save_policy(
    directory: Path,
    model: PaLM,
    tokenizer: Tokenizer,
    *,
    trainer: str,
    config: FineTuneConfig,
    result: FineTuneResult,
    base_metadata: CheckpointMetadata | None = None,
) -> CheckpointMetadata:
    """An ordinary checkpoint of the fine-tuned model (LoRA merged), its run in the metadata."""
    base = base_metadata or CheckpointMetadata()
    metadata = CheckpointMetadata(
        step=base.step + result.steps,
        tokens_seen=base.tokens_seen,
        metrics=_scalars(result.metrics),
        extra={"trainer": trainer, trainer: config.to_dict(), "base": base.extra},
    )
    return save_checkpoint(
        directory, model, tokenizer, metadata=metadata, state_dict=merged_state_dict(model)
    )


def _scalars(metrics: Mapping[str, float]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()}


# The command-line side, shared by the sft, dpo and rejection-sampling commands.


def add_finetune_options(parser: argparse.ArgumentParser) -> None:
    """An option for every `FineTuneConfig` field; those left out keep the recipe's value."""

    def option(flag: str, kind: type[int] | type[float], text: str, **extra: Any) -> None:
        metavar = "N" if kind is int else "F"
        parser.add_argument(flag, type=kind, metavar=metavar, help=f"{text} {FROM_RECIPE}", **extra)

    option("--lr", float, "peak learning rate")
    option("--batch-size", int, "records per optimizer step")
    option("--epochs", int, "passes over the records")
    option("--steps", int, "optimizer steps, over --epochs", dest="max_steps")
    option("--warmup-steps", int, "steps of linear warm-up")
    option("--weight-decay", float, "AdamW decay")
    option("--grad-clip", float, "max gradient norm, 0 for none")
    option("--max-length", int, "tokens of prompt + response, the prompt cut first")
    option("--seed", int, "random seed")
    parser.add_argument(
        "--mixed-precision", choices=get_args(MixedPrecision), help=f"autocast {FROM_RECIPE}"
    )
    option("--lora-rank", int, "train LoRA adapters of this rank only")
    option("--lora-alpha", float, "LoRA scale numerator")
    option("--train-last-layers", int, "train only the last N blocks")
    parser.add_argument("--log-file", type=Path, metavar="PATH", help="metrics as JSON lines")


def finetune_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `FineTuneConfig` fields that the command line set (`add_finetune_options`), by name:
    merge them over the recipe's config."""
    options = given_options(args, (item.name for item in fields(FineTuneConfig)))
    if options.get("grad_clip") == 0:
        options["grad_clip"] = None
    return options


def summary(result: FineTuneResult) -> str:
    shown = ", ".join(
        f"{name} {value:.4f}" for name, value in result.metrics.items() if name != "step"
    )
    return f"{result.steps} steps ({shown})"
