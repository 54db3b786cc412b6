"""Human labels as reward-model training items, and the losses and metrics of a model on them.

Every record becomes one item, which stays whole in a batch:
    pairwise  chosen ≻ rejected: Bradley-Terry with margin τ + strength_margin·(strength - 1);
              a tie: Rao-Kupper `tie_loss` with the same τ; both_bad: `both_bad_loss` on top
    ranking   InstructGPT's `ranking_loss` over its K(K-1)/2 pairs (their mean, so a ranking
              weighs as one label), strict pairs with margin τ
    rewrite   rewrite ≻ original (`Rewrite.to_pair`)
    likert    `ordinal_likert_losses` on the Likert head, one label per rated attribute
One batch mixes every kind. Its loss is Σ_items kind_weight · weight · loss_item / (B · w̄):
each item weighs the same whatever else is in its batch (B is the batch size and w̄ the mean
item weight of the whole training set, a constant), so one tie never outweighs a batch of strict
pairs, and a rare kind is not inflated to the weight of a common one.

With an ensemble (`RewardHeadConfig.members` > 1), every scalar-head loss is taken per member
and weighted by that member's bootstrap count of the item (`bootstrap_counts`), so the members
see different resamples of the labels and their spread measures what the labels leave open.

`rlhf_core.reward_training` runs the training loop over these.

Axes: r encoded rows, i items, m ensemble members, l Likert items, a attributes, k bins.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from einops import rearrange
from torch import Tensor, nn

from rlhf_core.losses import (
    both_bad_losses,
    bradley_terry_losses,
    ordinal_likert_losses,
    ranking_losses,
    tie_losses,
)
from rlhf_core.records import LikertRating, PairwisePreference, Ranking, Rewrite
from rlhf_core.reward import RewardHeadConfig, RewardModel, RewardOutput, expected_scores
from rlhf_core.sequences import ResponseBatch, collate, encode_groups
from rlhf_core.tokenizer import Tokenizer

LabelRecord = PairwisePreference | LikertRating | Ranking | Rewrite
PairSource = Literal["pairwise", "rewrite"]
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

    @property
    def texts(self) -> tuple[str, ...]:
        return (self.first, self.second)


@dataclass(frozen=True)
class RankingItem:
    """`responses` ordered best first, trained as one item (`ranking_loss`)."""

    prompt: str
    responses: tuple[str, ...]
    margin: float
    weight: float

    @property
    def texts(self) -> tuple[str, ...]:
        return self.responses


@dataclass(frozen=True)
class LikertItem:
    """`labels` (a): the bin index per model attribute, -1 where it was not rated."""

    prompt: str
    response: str
    labels: tuple[int, ...]
    weight: float = 1.0

    @property
    def texts(self) -> tuple[str, ...]:
        return (self.response,)


Item = PairItem | RankingItem | LikertItem


def held_out_prompt(prompt: str, fraction: float, *, salt: str = "reward-model") -> bool:
    """Whether `prompt` is in the held-out split: a hash, so every run and machine agrees.

    The `salt` makes this split independent of other splits by a hash of the prompt (an
    export's train/test split, a benchmark's): without it, a reward model trained on a split's
    training side would find no held-out prompt of its own there."""
    digest = hashlib.sha256(f"{salt}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_by_prompt(
    records: Sequence[LabelRecord], fraction: float
) -> tuple[list[LabelRecord], list[LabelRecord]]:
    """(train, held_out): all labels of a prompt land on one side, so held-out accuracy
    measures generalisation to new prompts, not to new labels of seen ones."""
    held = [held_out_prompt(record.prompt, fraction) for record in records]
    train = [record for record, out in zip(records, held, strict=True) if not out]
    return train, [record for record, out in zip(records, held, strict=True) if out]


def heads_trained_by(items: Sequence[Item], config: LabelLossConfig) -> frozenset[str]:
    """The heads that `items` give a gradient: "scalar" from pair and ranking items (with a
    weight above 0), "likert" from Likert items."""
    weights = config.loss_weights
    scalar = any(
        (isinstance(item, RankingItem) and weights["ranking"] > 0)
        or (isinstance(item, PairItem) and weights["tie" if item.tie else item.source] > 0)
        or (isinstance(item, PairItem) and item.both_bad and weights["both_bad"] > 0)
        for item in items
    )
    likert = weights["likert"] > 0 and any(isinstance(item, LikertItem) for item in items)
    return frozenset(name for name, on in (("scalar", scalar), ("likert", likert)) if on)


def to_items(
    records: Sequence[LabelRecord], heads: RewardHeadConfig, config: LabelLossConfig
) -> list[Item]:
    """The training items of `records` for a model with `heads`."""
    items: list[Item] = []
    for record in records:
        if isinstance(record, LikertRating):
            items.append(_likert_item(record, heads))
        elif isinstance(record, Ranking):
            items.append(
                RankingItem(record.prompt, record.responses, config.tie_threshold, record.weight)
            )
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


def bootstrap_counts(items: int, members: int, seed: int) -> Tensor:
    """(i m) how often each member draws each item in its bootstrap resample: Poisson(1)
    counts (the online bootstrap of Oza 2001, as bootstrapped DQN uses), fixed by `seed`; all
    ones for a single member, which trains on the labels as they are."""
    if members == 1:
        return torch.ones(items, 1)
    generator = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.ones(items, members), generator=generator)


@dataclass(frozen=True)
class Scores:
    """The model's outputs over the rows of a list of items: raw rewards (r), the members'
    (r m) and Likert logits (r a k) where the model has them, and `rows[i]`, the rows of item
    i (in the order of its `texts`)."""

    rewards: Tensor
    members: Tensor | None
    likert_logits: Tensor | None
    rows: list[range]


def encode_items(
    tokenizer: Tokenizer, items: Sequence[Item], max_length: int | None
) -> tuple[ResponseBatch, list[range]]:
    """One batch of every text of `items` (the texts of one item share their prompt tokens,
    `sequences.encode_groups`), and `rows[i]`, the rows of item i."""
    groups = encode_groups(
        tokenizer, [item.prompt for item in items], [item.texts for item in items], max_length
    )
    rows, start = [], 0
    for group in groups:
        rows.append(range(start, start + len(group)))
        start += len(group)
    return collate([row for group in groups for row in group], tokenizer.pad_id), rows


def score_items(
    model: nn.Module, tokenizer: Tokenizer, items: Sequence[Item], max_length: int | None
) -> Scores:
    """One forward pass of `model` (a RewardModel, maybe wrapped by accelerate) over every
    text of `items`, with gradients. The texts of one item share their prompt tokens
    (`sequences.encode_groups`)."""
    batch, rows = encode_items(tokenizer, items, max_length)
    batch = batch.to(next(model.parameters()).device)
    output: RewardOutput = model(batch.tokens, batch.attention_mask, batch.response_mask)
    if output.likert_logits is None and any(isinstance(item, LikertItem) for item in items):
        raise RewardTrainingError("Likert labels need a model with Likert attributes")
    return Scores(output.rewards, output.member_rewards, output.likert_logits, rows)


def item_losses(scores: Scores, items: Sequence[Item], config: LabelLossConfig) -> Tensor:
    """Per-item losses (i m), already times their kind's weight (see the module doc): the
    scalar head's per member, plus the Likert head's (the same for every member)."""
    has_scalar = scores.members is not None
    members = scores.members if scores.members is not None else scores.rewards[:, None]
    device, tau, weights = members.device, config.tie_threshold, config.loss_weights
    losses = torch.zeros(len(items), members.shape[1], device=device)
    pairs = [i for i, item in enumerate(items) if isinstance(item, PairItem)]
    if pairs and has_scalar:
        chosen = [item for item in items if isinstance(item, PairItem)]
        a = members[[scores.rows[i][0] for i in pairs]]
        b = members[[scores.rows[i][1] for i in pairs]]

        def column(values: list[float] | list[bool]) -> Tensor:
            return torch.tensor(values, device=device)[:, None]

        tie = column([item.tie for item in chosen])
        kind = column([weights["tie" if item.tie else item.source] for item in chosen])
        both_bad = column([float(item.both_bad) * weights["both_bad"] for item in chosen])
        strict = bradley_terry_losses(a, b, column([item.margin for item in chosen]))
        tied = tie_losses(a, b, tie_threshold=tau)
        bad = both_bad_losses(a, b, threshold=config.both_bad_threshold)
        losses[pairs] = kind * torch.where(tie, tied, strict) + both_bad * bad
    for index, item in enumerate(items):
        if isinstance(item, RankingItem) and has_scalar:
            ranked = rearrange(members[list(scores.rows[index])], "k m -> m k")
            order = torch.arange(len(item.responses), device=device).expand_as(ranked)
            losses[index] = weights["ranking"] * ranking_losses(ranked, order, margin=item.margin)
    ratings = [i for i, item in enumerate(items) if isinstance(item, LikertItem)]
    if ratings and scores.likert_logits is not None:
        labels = torch.tensor(
            [item.labels for item in items if isinstance(item, LikertItem)],
            dtype=torch.long,
            device=device,
        )
        logits = scores.likert_logits[[scores.rows[i][0] for i in ratings]]
        likert = ordinal_likert_losses(logits, labels.clamp(min=0), labels >= 0)
        losses[ratings] = weights["likert"] * likert[:, None]
    return losses


def batch_loss(
    scores: Scores,
    items: Sequence[Item],
    config: LabelLossConfig,
    *,
    mean_weight: float,
    counts: Tensor | None = None,
) -> Tensor:
    """Σ_items weight · loss / (B · mean_weight) (kind weights are in `item_losses`), each
    member's loss weighted by its bootstrap count of the item (`counts`, i m; default 1) and
    the members averaged."""
    losses = item_losses(scores, items, config)
    if not items:
        return losses.sum()
    if counts is not None:
        losses = losses * counts.to(losses.device)
    weight = torch.tensor([item.weight for item in items], device=losses.device)
    return (weight * losses.mean(dim=1)).sum() / (len(items) * mean_weight)


def reward_metrics(scores: Scores, items: Sequence[Item], bin_values: Tensor) -> dict[str, float]:
    """Quality of a reward model (unweighted, each over the items it applies to):

    pairwise_accuracy  share of strict preferences with r_better > r_worse: pairs (ties
                       excluded), rewrites and every pair of each ranking
    ece                expected calibration error of sigmoid(r_better - r_worse) read as
                       P(better ≻ worse) (`expected_calibration_error`), the same pairs
    likert_accuracy    share of rated attributes whose most likely bin is the label
    likert_mae         mean |expected score - labelled score|, in bin values
    """
    metrics: dict[str, float] = {}
    rewards = scores.rewards.detach().float().cpu()
    differences = []
    for item, rows in zip(items, scores.rows, strict=True):
        if isinstance(item, PairItem) and not item.tie:
            differences.append(rewards[rows[0]] - rewards[rows[1]])
        elif isinstance(item, RankingItem):
            ranked = rewards[list(rows)]
            better, worse = torch.triu_indices(len(rows), len(rows), offset=1)
            differences.extend(ranked[better] - ranked[worse])
    if differences and scores.members is not None:
        difference = torch.stack(differences)
        metrics["pairwise_accuracy"] = (difference > 0).float().mean().item()
        metrics["ece"] = expected_calibration_error(torch.sigmoid(difference))
    ratings = [
        (item, rows)
        for item, rows in zip(items, scores.rows, strict=True)
        if isinstance(item, LikertItem)
    ]
    if scores.likert_logits is not None and ratings:
        labels = torch.tensor([item.labels for item, _ in ratings], dtype=torch.long)
        logits = scores.likert_logits.detach().float().cpu()[[rows[0] for _, rows in ratings]]
        rated, values = labels >= 0, bin_values.cpu()
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
    mean_weight: float | None = None,
) -> dict[str, float]:
    """The loss and `reward_metrics` of `model` on `items`, scored in eval mode.

    `mean_weight` is the training set's (the loss is then on the training loss's scale);
    default: these items' own."""
    was_training, size = model.training, batch_size
    model.eval()
    try:
        parts = [
            score_items(model, tokenizer, items[start : start + size], model.config.max_length)
            for start in range(0, len(items), size)
        ]
    finally:
        model.train(was_training)
    scores = _concatenate(parts)
    weight = mean_weight or sum(item.weight for item in items) / max(len(items), 1)
    loss = batch_loss(scores, items, config, mean_weight=weight)
    return {"loss": loss.item(), **reward_metrics(scores, items, model.bin_values)}


def _concatenate(parts: Sequence[Scores]) -> Scores:
    rows: list[range] = []
    offset = 0
    for part in parts:
        rows.extend(range(r.start + offset, r.stop + offset) for r in part.rows)
        offset += part.rewards.shape[0]
    members = [part.members for part in parts if part.members is not None]
    logits = [part.likert_logits for part in parts if part.likert_logits is not None]
    return Scores(
        torch.cat([part.rewards for part in parts]),
        torch.cat(members) if members else None,
        torch.cat(logits) if logits else None,
        rows,
    )
