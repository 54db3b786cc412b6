"""Training a RewardModel on human labels of several kinds at once, with accelerate.

`rlhf_core.reward_labels` turns the records into items and losses; this module runs the loop
(AdamW over the trainable parameters, held-out evaluation per epoch, early stopping with the
best weights restored, the reward normalisation fitted at the end) and the `train-reward`
command.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor

from rlhf_core.checkpoint import CheckpointMetadata, load_checkpoint
from rlhf_core.commands import FROM_RECIPE, checkpoint_recipe, given_options, print_warnings
from rlhf_core.diagnostics import reward_model_warnings, warn
from rlhf_core.optim import build_adamw, warmup_cosine_schedule
from rlhf_core.pretrain import MixedPrecision, resolve_mixed_precision
from rlhf_core.records import LikertRating, read_records
from rlhf_core.reward import Pooling, RewardHeadConfig, RewardModel
from rlhf_core.reward_io import save_reward_model
from rlhf_core.reward_labels import (
    Item,
    LabelLossConfig,
    LabelRecord,
    LikertItem,
    PairItem,
    RankingItem,
    RewardTrainingError,
    Scores,
    batch_loss,
    bootstrap_counts,
    encode_items,
    evaluate_items,
    heads_trained_by,
    score_items,
    split_by_prompt,
    to_items,
)
from rlhf_core.run_directory import RunDirectory
from rlhf_core.tokenizer import Tokenizer
from rlhf_core.training import NoCallback, TrainingCallback, clip_gradients

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

# train-reward's options that set a RewardTrainingConfig field, and those that set the head's.
_TRAINING_OPTIONS = (
    "lr",
    "batch_size",
    "epochs",
    "patience",
    "held_out_fraction",
    "seed",
    "probe_steps",
)
_HEAD_OPTIONS = ("max_length", "members", "pooling", "lora_rank")


@dataclass(frozen=True)
class RewardTrainingConfig:
    """How `train_reward_model` trains; stored in the saved model's metadata.

    The defaults suit a pretrained backbone of this package's sizes (tiny to ~1B) and follow
    InstructGPT (Ouyang et al. 2022) and Llama 2 (Touvron et al. 2023): few epochs, since a
    reward model overfits after about one (hence also patience 1 and held-out 10% of prompts);
    lr 1e-4 (their 1e-5 range is for 6-70B models; a small backbone or LoRA needs more, a tiny
    one trained from scratch ~3e-3) with warm-up and cosine decay; light weight decay 0.01 and
    clipping at 1.0 for stability; τ = 0.5, so an exact tie is at most tanh(τ/2) ≈ 25% likely
    (Rao-Kupper) and a plain preference asks for a reward gap of 0.5, each strength grade above
    1 for 0.5 more (Llama 2's margins are 0 to 1 per grade).
    """

    lr: float = 1e-4
    batch_size: int = 16  # items (pairs or Likert ratings) per optimizer step
    epochs: int = 2
    max_steps: int | None = None  # stops mid-epoch when reached
    weight_decay: float = 0.01
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    held_out_fraction: float = 0.1  # of prompts, chosen by hash: a prompt is never on both sides
    patience: int | None = 1  # epochs without a better held-out loss before stopping
    # Linear probe first (LP-FT): this many full-batch steps fit the heads alone on the frozen
    # backbone's features before the whole model trains; 0 skips it.
    probe_steps: int = 0
    probe_lr: float = 1e-2
    losses: LabelLossConfig = field(default_factory=LabelLossConfig)  # τ, margins, weights
    seed: int = 0
    mixed_precision: MixedPrecision = "auto"  # auto: bf16 on a GPU that has it
    log_file: Path | None = None  # metrics as JSON lines

    def __post_init__(self) -> None:
        if isinstance(self.losses, dict):  # as a JSON round trip of to_dict gives it
            object.__setattr__(self, "losses", LabelLossConfig(**self.losses))
        checks = {
            "lr, batch_size and epochs must be > 0": min(self.lr, self.batch_size, self.epochs) > 0,
            "held_out_fraction must be in [0, 1)": 0 <= self.held_out_fraction < 1,
            "probe_steps must be >= 0 and probe_lr > 0": self.probe_steps >= 0
            and self.probe_lr > 0,
            "max_steps, patience and grad_clip must be > 0 (or None)": all(
                value is None or value > 0
                for value in (self.max_steps, self.patience, self.grad_clip)
            ),
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise RewardTrainingError("; ".join(failed))

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "log_file": self.log_file and str(self.log_file)}


@dataclass(frozen=True)
class RewardTrainingResult:
    steps: int
    epochs: int  # epochs begun
    best_epoch: int | None  # whose weights were restored; None without a held-out split
    stopped_early: bool  # by patience or a callback
    eval_metrics: dict[str, float]  # held-out metrics of the best epoch (empty if none)
    history: list[dict[str, float]]  # every held-out evaluation
    normalization: tuple[float, float]  # (mean, std) of the training responses' raw rewards
    # Strict preferences of the held-out split (pairs but ties, every pair of each ranking):
    # how many the held-out pairwise_accuracy rests on.
    held_out_preferences: int = 0
    # Why the model may not have learned (`rlhf_core.diagnostics.reward_model_warnings`).
    warnings: list[str] = field(default_factory=list)


def evaluate_reward_model(
    model: RewardModel,
    tokenizer: Tokenizer,
    records: Sequence[LabelRecord],
    config: RewardTrainingConfig | None = None,
) -> dict[str, float]:
    """The losses and `reward_metrics` of `model` on all of `records` (no split)."""
    config = config or RewardTrainingConfig()
    items = to_items(records, model.config, config.losses)
    return evaluate_items(model, tokenizer, items, config.losses, batch_size=config.batch_size)


def train_reward_model(
    model: RewardModel,
    tokenizer: Tokenizer,
    records: Sequence[LabelRecord],
    config: RewardTrainingConfig | None = None,
    *,
    callback: TrainingCallback | None = None,
) -> RewardTrainingResult:
    """Train `model` in place on `records`, then fit and store its reward normalisation.

    The held-out prompts (`split_by_prompt`) are evaluated after every epoch, and the weights
    of the epoch with the lowest held-out loss are restored at the end. Runs on a CPU or GPU
    and under `accelerate launch` (each process takes its share of every batch; evaluation
    runs whole on every process). The model ends on accelerate's device, in eval mode.
    """
    config = config or RewardTrainingConfig()
    train_records, held_records = split_by_prompt(records, config.held_out_fraction)
    train_items = to_items(train_records, model.config, config.losses)
    if not train_items:
        raise RewardTrainingError(f"no labels left to train on, of {len(records)} records")
    trained = heads_trained_by(train_items, config.losses)
    if model.config.reward_head not in trained:
        raise RewardTrainingError(
            f"none of the {len(train_items)} training labels trains this model's "
            f"{model.config.reward_head} head, which gives its reward: a pairwise head needs "
            "pairwise, ranking or rewrite labels, a Likert-only model Likert ratings"
        )
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(config.mixed_precision),
        step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps
    )
    set_seed(config.seed)
    model.trained_heads = trained
    trainer = _RewardTrainer(model, tokenizer, config, accelerator, callback or NoCallback())
    held_items = to_items(held_records, model.config, config.losses)
    result = trainer.run(train_items, held_items)
    preferences = strict_preferences(held_items)
    held_out = {k: v for k, v in result.eval_metrics.items() if k not in ("step", "epoch")}
    found = reward_model_warnings(held_out, preferences)
    warn(found)
    return dataclasses.replace(result, held_out_preferences=preferences, warnings=found)


def strict_preferences(items: Sequence[Item]) -> int:
    """The strict preferences among `items` that pairwise_accuracy is measured on
    (`reward_labels.reward_metrics`): pairs but ties, and every pair of each ranking."""
    pairs = sum(isinstance(item, PairItem) and not item.tie for item in items)
    rankings = [item for item in items if isinstance(item, RankingItem)]
    return pairs + sum(math.comb(len(item.responses), 2) for item in rankings)


class _RewardTrainer:
    """One call of `train_reward_model`: the prepared model and optimizer, and the loop."""

    def __init__(
        self,
        model: RewardModel,
        tokenizer: Tokenizer,
        config: RewardTrainingConfig,
        accelerator: Accelerator,
        callback: TrainingCallback,
    ) -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.accelerator, self.callback = accelerator, callback
        log = config.log_file
        self.log = None if log is None else RunDirectory(log.parent, log)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.best: tuple[float, int, dict[str, Tensor]] | None = None  # loss, epoch, weights

    def run(self, train_items: list[Item], held_items: list[Item]) -> RewardTrainingResult:
        config = self.config
        steps = config.epochs * math.ceil(len(train_items) / config.batch_size)
        self.total = min(steps, config.max_steps or steps)
        self.mean_weight = sum(item.weight for item in train_items) / len(train_items)
        self.counts = bootstrap_counts(len(train_items), self.model.config.members, config.seed)
        # build_adamw takes only parameters that need gradients: with LoRA, adapters and heads.
        optimizer = build_adamw(
            self.model, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95)
        )
        scheduler = warmup_cosine_schedule(
            optimizer,
            warmup_steps=config.warmup_steps,
            max_steps=self.total,
            min_lr_ratio=config.min_lr_ratio,
        )
        self.wrapped, self.optimizer, self.scheduler = self.accelerator.prepare(
            self.model, optimizer, scheduler
        )
        self.model.train()
        if config.probe_steps:
            self._probe(train_items, held_items)
            if held_items:  # epoch 0: the probe alone, kept if fine-tuning never beats it
                self._evaluate(held_items, 0)
        epoch, stopped = 0, False
        while epoch < config.epochs and self.step < self.total and not stopped:
            epoch += 1
            stopped = self._train_epoch(train_items, epoch)
            if held_items:
                stopped = self._evaluate(held_items, epoch) or stopped
        best_epoch = None if self.best is None else self.best[1]
        if self.best is not None:
            self._restore(self.best[2])
        self.model.eval()
        return RewardTrainingResult(
            steps=self.step,
            epochs=epoch,
            best_epoch=best_epoch,
            stopped_early=stopped,
            eval_metrics=next((row for row in self.history if row["epoch"] == best_epoch), {}),
            history=self.history,
            normalization=self._fit_normalization(train_items),
        )

    def _probe(self, train_items: list[Item], held_items: list[Item]) -> None:
        """Fit the heads alone on the frozen backbone's pooled features, computed once.

        LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"): fine-tuning
        from heads that already fit moves the pretrained features less than from random heads,
        which matters most with few labels. Full-batch AdamW, each ensemble member on its own
        bootstrap sample; the step with the lowest held-out loss (checked every 10 steps) is
        kept. Every process runs it whole, so they stay identical.
        """
        config, model = self.config, self.model
        train = self._features(train_items)
        held = self._features(held_items) if held_items else None
        parameters = model.head_parameters()
        optimizer = torch.optim.AdamW(
            parameters, lr=config.probe_lr, weight_decay=config.weight_decay
        )
        best: tuple[float, list[Tensor]] | None = None
        for step in range(1, config.probe_steps + 1):
            loss = batch_loss(
                self._head_scores(*train),
                train_items,
                config.losses,
                mean_weight=self.mean_weight,
                counts=self.counts,
            )
            torch.autograd.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if held is not None and (step % 10 == 0 or step == config.probe_steps):
                with torch.no_grad():
                    scores = self._head_scores(*held)
                    value = batch_loss(
                        scores, held_items, config.losses, mean_weight=self.mean_weight
                    ).item()
                if best is None or value < best[0]:
                    best = (value, [p.detach().clone() for p in parameters])
        if best is not None:
            with torch.no_grad():
                for parameter, kept in zip(parameters, best[1], strict=True):
                    parameter.copy_(kept)

    @torch.no_grad()
    def _features(self, items: list[Item]) -> tuple[Tensor, list[range]]:
        """The pooled features of every text of `items` (eval mode) and each item's rows."""
        model, size = self.model, self.config.batch_size
        device = model.reward_mean.device
        parts: list[Tensor] = []
        rows: list[range] = []
        model.eval()
        try:
            for start in range(0, len(items), size):
                batch, own = encode_items(
                    self.tokenizer, items[start : start + size], model.config.max_length
                )
                batch = batch.to(device)
                with self.accelerator.autocast():
                    pooled = model.features(batch.tokens, batch.attention_mask, batch.response_mask)
                offset = sum(len(part) for part in parts)
                rows.extend(range(r.start + offset, r.stop + offset) for r in own)
                parts.append(pooled.to(model.reward_mean.dtype))
        finally:
            model.train()
        return torch.cat(parts), rows

    def _head_scores(self, features: Tensor, rows: list[range]) -> Scores:
        output = self.model.heads(features)
        return Scores(output.rewards, output.member_rewards, output.likert_logits, rows)

    def _train_epoch(self, items: list[Item], epoch: int) -> bool:
        """Steps over a shuffled pass of `items`; True when a callback asks to stop."""
        order = list(range(len(items)))
        random.Random(self.config.seed + epoch).shuffle(order)  # the same on every process
        size = self.config.batch_size
        for start in range(0, len(order), size):
            if self.step >= self.total:
                break
            metrics = {
                "step": self.step + 1,
                "epoch": epoch,
                **self._train_step(items, order[start : start + size]),
            }
            self.step += 1
            if self._report(metrics, is_eval=False):
                return True
        return False

    def _train_step(self, items: list[Item], batch: list[int]) -> dict[str, float]:
        accelerator = self.accelerator
        own = batch[accelerator.process_index :: accelerator.num_processes]
        chosen = [items[index] for index in own]
        scores = score_items(self.wrapped, self.tokenizer, chosen, self.model.config.max_length)
        loss = batch_loss(
            scores,
            chosen,
            self.config.losses,
            mean_weight=self.mean_weight,
            counts=self.counts[own],
        )
        lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
        if loss.requires_grad:
            accelerator.backward(loss)
        grad_norm = clip_gradients(accelerator, self.wrapped, self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "lr": lr, "grad_norm": grad_norm}

    def _evaluate(self, items: list[Item], epoch: int) -> bool:
        """Held-out metrics; keeps the best weights. True when patience or a callback stops."""
        metrics = evaluate_items(
            self.model,
            self.tokenizer,
            items,
            self.config.losses,
            batch_size=self.config.batch_size,
            mean_weight=self.mean_weight,
        )
        self.history.append({"step": self.step, "epoch": epoch, **metrics})
        if self.best is None or metrics["loss"] < self.best[0]:
            trained = self.model.named_parameters()
            weights = {name: p.detach().clone() for name, p in trained if p.requires_grad}
            self.best = (metrics["loss"], epoch, weights)
        # Prefixed as pretrain's validation metrics are, so one JSONL holds both kinds of row.
        stop = self._report(
            {"step": self.step, "epoch": epoch, **{f"val_{k}": v for k, v in metrics.items()}},
            is_eval=True,
        )
        patience = self.config.patience
        return stop or (patience is not None and epoch - self.best[1] >= patience)

    def _report(self, metrics: dict[str, float], *, is_eval: bool) -> bool:
        """Log `metrics` and tell the callback; True when it asks to stop (on any process)."""
        if self.accelerator.is_main_process:
            if self.log is not None:
                self.log.append_metrics(metrics)
            hook = self.callback.on_eval if is_eval else self.callback.on_step
            if hook(metrics) is False:
                self.accelerator.set_trigger()
        return bool(self.accelerator.check_trigger())

    @torch.no_grad()
    def _restore(self, weights: dict[str, Tensor]) -> None:
        for name, parameter in self.model.named_parameters():
            if name in weights:
                parameter.copy_(weights[name])

    def _fit_normalization(self, items: list[Item]) -> tuple[float, float]:
        """Normalise by the raw rewards of every distinct training (prompt, response)."""
        texts: dict[tuple[str, str], None] = {}
        for item in items:
            if not isinstance(item, LikertItem) or self.model.config.reward_head == "likert":
                texts.update(dict.fromkeys((item.prompt, text) for text in item.texts))
        prompts, responses = zip(*texts, strict=True)
        model = self.model
        rewards = model.score(prompts, responses, self.tokenizer, batch_size=self.config.batch_size)
        # score() applies the current normalisation; undo it to get the raw rewards.
        raw = rewards * model.reward_std.cpu() + model.reward_mean.cpu()
        try:
            model.set_normalization(raw)
        except ValueError as error:
            raise RewardTrainingError(f"cannot fit the reward normalisation: {error}") from error
        return model.reward_mean.item(), model.reward_std.item()


def add_train_reward_command(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "train-reward",
        help="train a reward model on human labels",
        description="Train a reward model on a PaLM checkpoint from pairwise, Likert, ranking "
        "and rewrite labels (JSONL or Parquet, freely mixed) and save it with its "
        "normalisation; prints the held-out metrics of the best epoch.",
    )
    parser.add_argument("--base", type=Path, required=True, metavar="CKPT", help="PaLM checkpoint")
    parser.add_argument(
        "--labels",
        type=Path,
        required=True,
        action="append",
        metavar="FILE",
        help="label file (repeat for more)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="reward model to write"
    )
    parser.add_argument(
        "--attributes",
        nargs="+",
        metavar="NAME",
        help="Likert attributes, the first driving RL (default: those the labels rate)",
    )
    parser.add_argument(
        "--likert-scale",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="scale of Likert rows that state none",
    )
    for flag, name, kind, text in (
        ("--lr", "lr", float, "peak learning rate"),
        ("--batch-size", "batch_size", int, "items per optimizer step"),
        ("--epochs", "epochs", int, "passes over the training labels at most"),
        ("--patience", "patience", int, "epochs with no better held-out loss; 0: never stop"),
        ("--probe-steps", "probe_steps", int, "steps fitting the heads alone first; 0: none"),
        ("--held-out", "held_out_fraction", float, "share of the prompts held out"),
        ("--seed", "seed", int, "random seed"),
        ("--max-length", "max_length", int, "tokens of prompt + response the model reads"),
        ("--members", "members", int, "scalar heads of the ensemble"),
        ("--lora-rank", "lora_rank", int, "train LoRA adapters of rank N, not the backbone"),
    ):
        parser.add_argument(
            flag,
            dest=name,
            type=kind,
            metavar="N" if kind is int else "F",
            help=f"{text} {FROM_RECIPE}",
        )
    parser.add_argument(
        "--pooling", choices=get_args(Pooling), help=f"what the heads read {FROM_RECIPE}"
    )
    parser.set_defaults(run=_run_train_reward)


def _run_train_reward(args: argparse.Namespace) -> None:
    recipe = checkpoint_recipe(args.base)  # the settings are checked before the (slow) load
    training = given_options(args, _TRAINING_OPTIONS)
    if training.get("patience") == 0:
        training["patience"] = None
    log_file = args.out.with_name(f"{args.out.name}.metrics.jsonl")
    config = dataclasses.replace(recipe.reward, **training, log_file=log_file)
    try:
        head = dataclasses.replace(recipe.reward_head, **given_options(args, _HEAD_OPTIONS))
    except ValueError as error:  # e.g. --members 0
        raise RewardTrainingError(str(error)) from error
    scale = None if args.likert_scale is None else tuple(args.likert_scale)
    records = [record for path in args.labels for record in read_records(path, likert_scale=scale)]
    labels = [record for record in records if isinstance(record, LabelRecord)]
    heads = heads_for(labels, attributes=args.attributes, base=head)
    checkpoint = load_checkpoint(args.base)
    model = RewardModel(checkpoint.model.train(), heads)
    result = train_reward_model(model, checkpoint.tokenizer, labels, config)
    extra = {"trainer": "reward", "reward_training": config.to_dict()}
    metadata = CheckpointMetadata(step=result.steps, metrics=result.eval_metrics, extra=extra)
    save_reward_model(args.out, model, checkpoint.tokenizer, metadata=metadata)
    held_out = {k: v for k, v in result.eval_metrics.items() if k not in ("step", "epoch")}
    shown = " ".join(f"{key}={value:.4f}" for key, value in held_out.items())
    print(f"saved {args.out} after {result.steps} steps; held-out: {shown or 'none'}")
    print_warnings(result.warnings)


def heads_for(
    labels: Sequence[LabelRecord],
    *,
    attributes: Sequence[str] | None = None,
    base: RewardHeadConfig | None = None,
) -> RewardHeadConfig:
    """The heads `labels` can train, on top of `base` (pooling, members, LoRA, max_length):
    a scalar head when there are pairwise, ranking or rewrite labels, a Likert head on their
    one scale for the attributes they rate (or `attributes`, the first driving RL when there
    is no scalar head)."""
    if not labels:
        raise RewardTrainingError("no pairwise, Likert, ranking or rewrite records to train on")
    ratings = [record for record in labels if isinstance(record, LikertRating)]
    scales = sorted({record.scale for record in ratings})
    if len(scales) > 1:
        raise RewardTrainingError(f"Likert ratings on several scales: {scales}")
    low, high = scales[0] if scales else (1, 5)
    rated = dict.fromkeys(name for record in ratings for name in record.scores)
    try:
        return dataclasses.replace(
            base or RewardHeadConfig(),
            attributes=tuple(attributes or rated),
            bins=high - low + 1,
            bin_values=tuple(range(low, high + 1)),
            pairwise=len(ratings) < len(labels),
        )
    except ValueError as error:  # e.g. --lora-rank 0, or an attribute named twice
        raise RewardTrainingError(str(error)) from error
