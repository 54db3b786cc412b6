"""Human labels as reward-model training items, and the losses and metrics of a model on them.

Every record becomes pair items or a Likert item, and one batch mixes them:
    pairwise  chosen ≻ rejected: Bradley-Terry with margin τ + strength_margin·(strength - 1);
              a tie: Rao-Kupper `tie_loss` with the same τ; both_bad: `both_bad_loss` on top
    ranking   all K(K-1)/2 pairs (InstructGPT), each weighing 1/C(K,2) (`Ranking.to_pairs`)
    rewrite   rewrite ≻ original (`Rewrite.to_pair`)
    likert    `ordinal_likert_loss` on the Likert head, one label per rated attribute
Each kind's loss is a weighted mean over its items in the batch and a step minimises
Σ weight_kind · loss_kind, so a kind's influence does not depend on how many items it has.
`rlhf_core.reward_training` runs the training loop over these.

Axes: p pair items, l Likert items, a attributes, k bins.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from rlhf_core.losses import both_bad_loss, bradley_terry_loss, ordinal_likert_loss, tie_loss
from rlhf_core.records import LikertRating, PairwisePreference, Ranking, Rewrite
from rlhf_core.reward import (
    RewardHeadConfig,
    RewardModel,
    RewardOutput,
    encode_pairs,
    expected_scores,
)
from rlhf_core.tokenizer import Tokenizer

LabelRecord = PairwisePreference | LikertRating | Ranking | Rewrite
PairSource = Literal["pairwise", "ranking", "rewrite"]
LossKind = Literal["pairwise", "ranking", "rewrite", "tie", "both_bad", "likert"]
ECE_BINS = 10


class RewardTrainingError(Exception):
    """Labels or settings a reward model cannot be trained on (e.g. a Likert scale it lacks)."""


def _default_loss_weights() -> dict[str, float]:
    return dict.fromkeys(get_args(LossKind), 1.0)


@dataclass(frozen=True)
class LabelLossConfig:
    """How labels become losses; part of RewardTrainingConfig, which documents the defaults.

    tie_threshold: Rao-Kupper τ, the Bradley-Terry margin of every strict pair and the tie zone.
    strength_margin: extra margin per preference grade above 1 (Llama 2's margins).
    both_bad_threshold: both-bad pairs' rewards are pushed below this.
    loss_weights: per LossKind; a kind left out weighs 1, a weight of 0 drops the kind.
    """

    tie_threshold: float = 0.5
    strength_margin: float = 0.5
    both_bad_threshold: float = 0.0
    loss_weights: dict[str, float] = field(default_factory=_default_loss_weights)

    def __post_init__(self) -> None:
        weights = {**_default_loss_weights(), **self.loss_weights}
        if not set(weights) <= set(get_args(LossKind)):
            raise RewardTrainingError(
                f"loss_weights keys must be among {get_args(LossKind)}, got {sorted(weights)}"
            )
        if min(weights.values()) < 0 or self.tie_threshold <= 0 or self.strength_margin < 0:
            raise RewardTrainingError(
                "loss weights and strength_margin must be >= 0, tie_threshold > 0"
            )
        object.__setattr__(self, "loss_weights", weights)


@dataclass(frozen=True)
class PairItem:
    """`first` preferred to `second` (unless `tie`), from a record of kind `source`."""

    prompt: str
    first: str
    second: str
    source: PairSource
    margin: float
    tie: bool
    both_bad: bool
    weight: float


@dataclass(frozen=True)
class LikertItem:
    """`labels` (a): the bin index per model attribute, -1 where it was not rated."""

    prompt: str
    response: str
    labels: tuple[int, ...]
    weight: float = 1.0


Item = PairItem | LikertItem


def held_out_prompt(prompt: str, fraction: float) -> bool:
    """Whether `prompt` is in the held-out split: a hash, so every run and machine agrees."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_by_prompt(
    records: Sequence[LabelRecord], fraction: float
) -> tuple[list[LabelRecord], list[LabelRecord]]:
    """(train, held_out): all labels of a prompt land on one side, so held-out accuracy
    measures generalisation to new prompts, not to new labels of seen ones."""
    held = [held_out_prompt(record.prompt, fraction) for record in records]
    train = [record for record, out in zip(records, held, strict=True) if not out]
    return train, [record for record, out in zip(records, held, strict=True) if out]


def to_items(
    records: Sequence[LabelRecord], heads: RewardHeadConfig, config: LabelLossConfig
) -> list[Item]:
    """The training items of `records` for a model with `heads`."""
    items: list[Item] = []
    for record in records:
        if isinstance(record, LikertRating):
            items.append(_likert_item(record, heads))
        elif isinstance(record, Ranking):
            items.extend(_pair_item(pair, "ranking", config) for pair in record.to_pairs())
        elif isinstance(record, Rewrite):
            items.append(_pair_item(record.to_pair(), "rewrite", config))
        else:
            items.append(_pair_item(record, "pairwise", config))
    return items


def _pair_item(pair: PairwisePreference, source: PairSource, config: LabelLossConfig) -> PairItem:
    # τ on every strict pair makes Bradley-Terry the strict-preference part of Rao-Kupper.
    margin = config.tie_threshold + config.strength_margin * ((pair.strength or 1) - 1)
    fields = (pair.prompt, pair.chosen, pair.rejected, source, margin, pair.tie, pair.both_bad)
    return PairItem(*fields, pair.weight)


def _likert_item(rating: LikertRating, heads: RewardHeadConfig) -> LikertItem:
    low, high = rating.scale
    if high - low + 1 != heads.bins:
        raise RewardTrainingError(
            f"a Likert scale {low}..{high} needs {high - low + 1} bins, the model has {heads.bins}"
        )
    unknown = sorted(set(rating.scores) - set(heads.attributes))
    if unknown:
        raise RewardTrainingError(
            f"Likert attributes {unknown} are not among the model's {list(heads.attributes)}"
        )
    scores = rating.scores
    labels = tuple(scores[name] - low if name in scores else -1 for name in heads.attributes)
    return LikertItem(rating.prompt, rating.response, labels, rating.weight)


@dataclass(frozen=True)
class Scores:
    """Raw rewards of the pair items' first and second texts (p), Likert logits (l a k)."""

    first: Tensor
    second: Tensor
    likert_logits: Tensor | None


def score_items(
    model: nn.Module, tokenizer: Tokenizer, items: Sequence[Item], max_length: int | None
) -> Scores:
    """One forward pass of `model` (a RewardModel, maybe wrapped by accelerate) over every
    text of `items`, with gradients. Pair items and Likert items each keep their order in
    `items`, which is how `label_losses` and `reward_metrics` read them back."""
    pairs = [item for item in items if isinstance(item, PairItem)]
    ratings = [item for item in items if isinstance(item, LikertItem)]
    prompts = [item.prompt for item in pairs] * 2 + [item.prompt for item in ratings]
    texts = [i.first for i in pairs] + [i.second for i in pairs] + [i.response for i in ratings]
    tokens, mask = encode_pairs(tokenizer, prompts, texts, max_length)
    device = next(model.parameters()).device
    output: RewardOutput = model(tokens.to(device), mask.to(device))
    first, second = output.rewards[: len(pairs)], output.rewards[len(pairs) : 2 * len(pairs)]
    if output.likert_logits is None and ratings:
        raise RewardTrainingError("Likert labels need a model with Likert attributes")
    logits = None if output.likert_logits is None else output.likert_logits[2 * len(pairs) :]
    return Scores(first, second, logits)


def label_losses(
    scores: Scores, items: Sequence[Item], config: LabelLossConfig
) -> dict[str, Tensor]:
    """The loss of each kind present in `items` with a weight above 0 (see the module doc)."""
    pairs = [item for item in items if isinstance(item, PairItem)]
    device, tau = scores.first.device, config.tie_threshold

    def where(values: list[bool]) -> Tensor:
        return torch.tensor(values, dtype=torch.bool, device=device)

    weight = torch.tensor([item.weight for item in pairs], device=device)
    margin = torch.tensor([item.margin for item in pairs], device=device)
    selections = {
        s: where([i.source == s and not i.tie for i in pairs]) for s in get_args(PairSource)
    }
    selections |= {
        "tie": where([i.tie for i in pairs]),
        "both_bad": where([i.both_bad for i in pairs]),
    }
    losses: dict[str, Tensor] = {}
    for kind, keep in selections.items():
        if config.loss_weights[kind] == 0 or not keep.any():
            continue
        first, second, weights = scores.first[keep], scores.second[keep], weight[keep]
        if kind == "tie":
            losses[kind] = tie_loss(first, second, tie_threshold=tau, weights=weights)
        elif kind == "both_bad":
            threshold = config.both_bad_threshold
            losses[kind] = both_bad_loss(first, second, threshold=threshold, weights=weights)
        else:
            losses[kind] = bradley_terry_loss(first, second, margin=margin[keep], weights=weights)
    labels = _likert_labels(items, device)
    if scores.likert_logits is not None and len(labels) and config.loss_weights["likert"] > 0:
        weights = torch.tensor(
            [item.weight for item in items if isinstance(item, LikertItem)], device=device
        )
        losses["likert"] = ordinal_likert_loss(
            scores.likert_logits, labels.clamp(min=0), labels >= 0, weights
        )
    return losses


def total_loss(losses: dict[str, Tensor], config: LabelLossConfig) -> Tensor:
    """Σ weight_kind · loss_kind; a 0 without gradient where no kind is present."""
    terms = [config.loss_weights[kind] * loss for kind, loss in losses.items()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def _likert_labels(items: Sequence[Item], device: torch.device) -> Tensor:
    # (l a); shape (0,) without Likert items, which callers skip by its length.
    rows = [item.labels for item in items if isinstance(item, LikertItem)]
    return torch.tensor(rows, dtype=torch.long, device=device)


def reward_metrics(scores: Scores, items: Sequence[Item], bin_values: Tensor) -> dict[str, float]:
    """Quality of a reward model (unweighted, each over the items it applies to):

    pairwise_accuracy  share of strict pairs (ties excluded) with r_first > r_second
    ece                expected calibration error of sigmoid(r_first - r_second) read as
                       P(first ≻ second) (`expected_calibration_error`), strict pairs
    likert_accuracy    share of rated attributes whose most likely bin is the label
    likert_mae         mean |expected score - labelled score|, in bin values
    """
    metrics: dict[str, float] = {}
    strict = torch.tensor([not item.tie for item in items if isinstance(item, PairItem)])
    if strict.any():
        difference = (scores.first - scores.second).detach().float().cpu()[strict]
        metrics["pairwise_accuracy"] = (difference > 0).float().mean().item()
        metrics["ece"] = expected_calibration_error(torch.sigmoid(difference))
    labels = _likert_labels(items, torch.device("cpu"))
    if scores.likert_logits is not None and len(labels):
        logits, rated, values = (
            scores.likert_logits.detach().float().cpu(),
            labels >= 0,
            bin_values.cpu(),
        )
        errors = expected_scores(logits, values) - values[labels.clamp(min=0)]
        metrics["likert_accuracy"] = (logits.argmax(-1) == labels)[rated].float().mean().item()
        metrics["likert_mae"] = errors.abs()[rated].mean().item()
    return metrics


def expected_calibration_error(p_first: Tensor) -> float:
    """ECE (Guo et al. 2017, 10 equal-width bins) of predictions whose answer is "first": (p).

    Each pair predicts its likelier side with confidence max(p, 1 - p), right when p > 1/2;
    ECE = Σ_bins (share of pairs) · |accuracy - mean confidence|.
    """
    confidence = torch.maximum(p_first, 1 - p_first)
    correct = (p_first > 0.5).float()
    bins = (confidence * ECE_BINS).long().clamp(max=ECE_BINS - 1)
    error = 0.0
    for index in set(bins.tolist()):
        inside = bins == index
        gap = (correct[inside].mean() - confidence[inside].mean()).abs()
        error += inside.float().mean().item() * gap.item()
    return error


@torch.no_grad()
def evaluate_items(
    model: RewardModel,
    tokenizer: Tokenizer,
    items: Sequence[Item],
    config: LabelLossConfig,
    *,
    batch_size: int,
    max_length: int | None,
) -> dict[str, float]:
    """The losses and `reward_metrics` of `model` on `items`, scored in eval mode."""
    was_training, size = model.training, batch_size
    model.eval()
    try:
        parts = [
            score_items(model, tokenizer, items[start : start + size], max_length)
            for start in range(0, len(items), size)
        ]
    finally:
        model.train(was_training)
    logits = [part.likert_logits for part in parts if part.likert_logits is not None]
    first, second = (
        torch.cat([getattr(part, side) for part in parts]) for side in ("first", "second")
    )
    scores = Scores(first, second, torch.cat(logits) if logits else None)
    losses = label_losses(scores, items, config)
    return {
        "loss": total_loss(losses, config).item(),
        **{f"loss_{kind}": loss.item() for kind, loss in losses.items()},
        **reward_metrics(scores, items, model.bin_values),
    }
