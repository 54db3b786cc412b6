"""The reward model: a PaLM backbone pooled over each row's response, with two kinds of head.

Axes: b batch, n sequence, e model dim, f pooled features, m ensemble members, a Likert
attributes, k Likert bins.

- A scalar head (Bradley-Terry, Ouyang et al. 2022): `members` rewards per row, trained on
  pairwise preferences, rankings and rewrites. With several members (an ensemble of heads on
  one backbone, each fitted on its own bootstrap resample of the labels; Osband et al. 2016,
  Dwaracherla et al. 2024) the reward is their mean and their spread is the model's
  uncertainty.
- A Likert head (HelpSteer-style, Wang et al. 2023): a distribution over the `k` bins of each
  attribute, read as its expected score, so the same text always gets the same score.

A head that no label has trained is never used to score: `score` refuses it (a Likert-only
project's reward is the expected score, a pairwise project's the scalar head's).

Saving and loading live in `rlhf_core.reward_io`: this module knows nothing of files or devices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from einops import einsum, rearrange, reduce
from torch import Tensor, nn

from rlhf_core.lora import add_lora, merged_copy, use_scope
from rlhf_core.palm import PaLM
from rlhf_core.sequences import collate, encode_responses
from rlhf_core.tokenizer import Tokenizer

LORA_SCOPE = "reward"
Pooling = Literal["last", "mean", "mean_last"]
Head = Literal["scalar", "likert"]


class RewardModelError(Exception):
    """A reward model asked for something it cannot give (e.g. scores from an untrained head)."""


@dataclass(frozen=True)
class RewardHeadConfig:
    """What a RewardModel puts on its backbone and how it reads text; stored with it.

    attributes: the Likert attributes, each scored on `bins` bins; () for no Likert head. Without
        a scalar head, `rewards` is the expected score of the first attribute, so put the one
        that should drive RL (e.g. "overall" or "helpfulness") first.
    bin_values: the score of each bin; () (the default) means 1..bins.
    pairwise: whether to have the scalar (Bradley-Terry) head.
    members: scalar heads of the ensemble (1: a single head, no uncertainty).
    lora_rank: None trains the whole backbone; a rank trains only LoRA adapters (scope
        "reward") and the heads, with the base weights frozen.
    pooling: what the heads read. "last": the hidden state of the row's last token, the EOS
        that ends the response; "mean": the mean hidden state over the response's tokens and
        its EOS; "mean_last": both, side by side (the mean sees everything the response
        contains, the EOS state what a causal model summarised at its end).
    max_length: tokens of prompt + response the model reads, cut as `sequences.fit_group`
        says; scoring cuts as training did.
    """

    attributes: tuple[str, ...] = ("overall",)
    bins: int = 5
    bin_values: tuple[float, ...] = ()
    pairwise: bool = True
    members: int = 1
    lora_rank: int | None = None
    lora_alpha: float = 16.0
    pooling: Pooling = "mean_last"
    max_length: int | None = 512

    def __post_init__(self) -> None:
        # Accept lists, as a JSON round trip of `asdict` gives, so a reloaded config is equal.
        object.__setattr__(self, "attributes", tuple(self.attributes))
        values = self.bin_values or range(1, self.bins + 1)
        object.__setattr__(self, "bin_values", tuple(float(value) for value in values))
        if not self.pairwise and not self.attributes:
            raise ValueError("a reward model needs a scalar head (pairwise) or Likert attributes")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"attributes must be distinct, got {self.attributes}")
        if self.bins < 2:
            raise ValueError(f"a Likert scale needs at least 2 bins, got {self.bins}")
        if len(self.bin_values) != self.bins:
            raise ValueError(f"bin_values needs {self.bins} values, got {len(self.bin_values)}")
        if self.members < 1:
            raise ValueError(f"members must be at least 1, got {self.members}")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError(f"lora_rank must be positive or None, got {self.lora_rank}")
        if self.pooling not in get_args(Pooling):
            raise ValueError(f"pooling must be one of {get_args(Pooling)}, got {self.pooling!r}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 (or None), got {self.max_length}")

    @property
    def reward_head(self) -> Head:
        """The head whose output is the reward: the scalar one when there is one."""
        return "scalar" if self.pairwise else "likert"


@dataclass(frozen=True)
class RewardOutput:
    """rewards (b): raw (unnormalised) float32 rewards, the members' mean.
    member_rewards (b m): each ensemble member's; None without a scalar head.
    likert_logits (b a k) and expected_scores (b a): None without a Likert head."""

    rewards: Tensor
    member_rewards: Tensor | None
    likert_logits: Tensor | None
    expected_scores: Tensor | None


class RewardModel(nn.Module):
    """`RewardModel(backbone, config)`: the heads of `config` on a PaLM.

    With `config.lora_rank` the backbone gets LoRA adapters in scope "reward" (and is frozen)
    here; they are active during this model's forward pass only. `trained_heads` names the
    heads training has fitted ("scalar", "likert"); `train_reward_model` sets it and the
    checkpoint keeps it.
    """

    bin_values: Tensor
    reward_mean: Tensor
    reward_std: Tensor

    def __init__(self, backbone: PaLM, config: RewardHeadConfig | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config = config or RewardHeadConfig()
        self.trained_heads: frozenset[str] = frozenset()
        if config.lora_rank is not None:
            add_lora(backbone, LORA_SCOPE, rank=config.lora_rank, alpha=config.lora_alpha)
        # The heads follow the backbone's device and dtype, as LoRA adapters do.
        like = backbone.token_emb.weight
        features = pooled_width(backbone.config.dim, config.pooling)
        device, dtype = like.device, like.dtype
        self.scalar_head = (
            nn.Linear(features, config.members, device=device, dtype=dtype)
            if config.pairwise
            else None
        )
        likert_width = len(config.attributes) * config.bins
        self.likert_head = (
            nn.Linear(features, likert_width, device=device, dtype=dtype) if likert_width else None
        )
        # Not persistent: the config is the source of truth for the bin values.
        self.register_buffer(
            "bin_values", torch.tensor(config.bin_values, device=device), persistent=False
        )
        # Persistent, so the normalisation fitted after training travels with the weights.
        self.register_buffer("reward_mean", torch.zeros((), device=device))
        self.register_buffer("reward_std", torch.ones((), device=device))

    def forward(
        self, tokens: Tensor, attention_mask: Tensor, response_mask: Tensor | None = None
    ) -> RewardOutput:
        """Rewards of `tokens` (b n); `attention_mask` (b n) is True on real tokens and
        `response_mask` (b n) on the response and its EOS (default: every real token).

        Rows may be left- or right-padded; every row needs at least one response token.
        """
        return self.heads(self.features(tokens, attention_mask, response_mask))

    def features(
        self, tokens: Tensor, attention_mask: Tensor, response_mask: Tensor | None = None
    ) -> Tensor:
        """What the heads read (b f): the backbone's pooled hidden states (see `forward`)."""
        scope = (
            use_scope(self.backbone, LORA_SCOPE)
            if self.config.lora_rank is not None
            else contextlib.nullcontext()
        )
        with scope:
            hidden = self.backbone(tokens, attention_mask=attention_mask, return_hidden=True)
        mask = attention_mask if response_mask is None else response_mask & attention_mask
        return pool(hidden, attention_mask, mask, self.config.pooling)

    def heads(self, pooled: Tensor) -> RewardOutput:
        """The heads' outputs on `features` (b f)."""
        likert_logits = expected = members = None
        if self.likert_head is not None:
            flat = self.likert_head(pooled).float()
            likert_logits = rearrange(flat, "b (a k) -> b a k", k=self.config.bins)
            expected = expected_scores(likert_logits, self.bin_values)
        if self.scalar_head is not None:
            members = self.scalar_head(pooled).float()
            rewards = reduce(members, "b m -> b", "mean")
        else:
            assert expected is not None  # the config guarantees one head or the other
            rewards = expected[:, 0]
        return RewardOutput(rewards, members, likert_logits, expected)

    def head_parameters(self) -> list[nn.Parameter]:
        """The heads' weights and biases (what a linear probe fits)."""
        heads = (self.scalar_head, self.likert_head)
        return [parameter for head in heads if head is not None for parameter in head.parameters()]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What an optimiser should update: everything, or only the adapters and heads (LoRA)."""
        return [parameter for parameter in self.parameters() if parameter.requires_grad]

    @torch.no_grad()
    def set_normalization(self, rewards: Tensor) -> None:
        """Store the mean and standard deviation of raw `rewards` (e.g. of the training set,
        after fitting), so that `normalized` maps them to mean 0 and standard deviation 1."""
        rewards = rewards.detach().float().flatten()
        if rewards.numel() < 2:
            raise ValueError("normalisation needs at least two rewards")
        std = rewards.std(correction=0)
        if std == 0:
            raise ValueError("every reward is equal: no scale to normalise by")
        self.reward_mean.copy_(rewards.mean())
        self.reward_std.copy_(std)

    def normalized(self, rewards: Tensor) -> Tensor:
        return (rewards - self.reward_mean) / self.reward_std

    def check_trained(self) -> None:
        """Raise RewardModelError unless the head that gives the reward has been trained."""
        head = self.config.reward_head
        if head not in self.trained_heads:
            kinds = "pairwise, ranking or rewrite" if head == "scalar" else "Likert"
            raise RewardModelError(
                f"this reward model's {head} head was never trained (no {kinds} labels reached "
                "it), so its scores would be noise; train it on such labels first"
            )

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        tokenizer: Tokenizer,
        *,
        batch_size: int = 16,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Normalised rewards (b) of each (prompt, response), in input order, on the CPU."""
        return self.score_with_spread(
            prompts, responses, tokenizer, batch_size=batch_size, device=device
        )[0]

    def score_with_spread(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        tokenizer: Tokenizer,
        *,
        batch_size: int = 16,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Normalised rewards (b) and the ensemble's spread around them (b; the members'
        standard deviation, in the same units; 0 with one member or no scalar head).

        Texts are encoded as training encoded them (`sequences.encode_responses`, cut to
        `config.max_length`) and batched by length, so padding is short; `device` is where the
        batches go (default: where the weights are). Runs in eval mode without gradients, then
        restores the mode. Refuses a model whose reward head was never trained.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.check_trained()
        rows = encode_responses(tokenizer, prompts, responses, self.config.max_length)
        device = device or self.reward_mean.device
        order = sorted(range(len(rows)), key=lambda index: len(rows[index].ids))
        rewards, spread = torch.empty(len(rows)), torch.zeros(len(rows))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), batch_size):
                    chosen = order[start : start + batch_size]
                    batch = collate([rows[i] for i in chosen], tokenizer.pad_id).to(device)
                    output = self(batch.tokens, batch.attention_mask, batch.response_mask)
                    rewards[chosen] = self.normalized(output.rewards).cpu()
                    if output.member_rewards is not None and output.member_rewards.shape[1] > 1:
                        std = output.member_rewards.std(dim=1, correction=0)
                        spread[chosen] = (std / self.reward_std).cpu()
        finally:
            self.train(was_training)
        return rewards, spread


def pooled_width(dim: int, pooling: Pooling) -> int:
    return 2 * dim if pooling == "mean_last" else dim


def pool(hidden: Tensor, attention_mask: Tensor, response_mask: Tensor, pooling: Pooling) -> Tensor:
    """The features (b f) the heads read, from hidden states (b n e); see RewardHeadConfig."""
    if pooling == "last":
        return last_token_hidden(hidden, attention_mask)
    mean = masked_mean_hidden(hidden, response_mask)
    if pooling == "mean":
        return mean
    return torch.cat([mean, last_token_hidden(hidden, attention_mask)], dim=-1)


def masked_mean_hidden(hidden: Tensor, mask: Tensor) -> Tensor:
    """The mean hidden state (b e) over each row's masked positions, wherever the padding is.

    Positions outside the mask are replaced by 0 before the sum, so whatever padding holds
    (NaN included) never reaches the result."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    kept = torch.where(mask.unsqueeze(-1), hidden, torch.zeros((), dtype=hidden.dtype))
    return (kept * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def last_token_hidden(hidden: Tensor, mask: Tensor) -> Tensor:
    """The hidden state (b e) of each row's last real token, wherever the padding is."""
    columns = torch.arange(mask.shape[-1], device=mask.device)
    last = torch.where(mask.bool(), columns, -1).amax(dim=-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def expected_scores(likert_logits: Tensor, bin_values: Tensor) -> Tensor:
    """E[score] = sum_k softmax(logits)_k * value_k per attribute (b a k -> b a).

    The expectation, not a sampled bin: a reward must be a deterministic function of the text.
    """
    probabilities = likert_logits.float().softmax(dim=-1)
    return einsum(probabilities, bin_values.to(probabilities), "b a k, k -> b a")


@torch.no_grad()
def value_head_from_reward(reward_model: RewardModel) -> nn.Linear:
    """A per-token value head (e -> 1) initialised from the reward model's scalar head (Ouyang
    et al. 2022; Huang et al. 2024), with the members averaged and the reward normalisation
    folded in, so that on the reward model's backbone it predicts the normalised rewards that
    `score` returns and PPO optimises. A pooled head reads the mean and the last state side by
    side; per token both are that token's state, so their weights add up."""
    reward_model.check_trained()
    head = reward_model.scalar_head
    if head is None:
        raise RewardModelError("the reward model has no scalar head (pairwise=False)")
    dim = reward_model.backbone.config.dim
    weight = reduce(head.weight, "m f -> f", "mean")
    if reward_model.config.pooling == "mean_last":
        weight = weight[:dim] + weight[dim:]
    value_head = nn.Linear(dim, 1, device=head.weight.device, dtype=head.weight.dtype)
    std, mean = reward_model.reward_std, reward_model.reward_mean
    value_head.weight.copy_(weight[None] / std)
    value_head.bias.copy_((head.bias.mean() - mean) / std)
    return value_head


def critic_from_reward(reward_model: RewardModel) -> tuple[PaLM, nn.Linear]:
    """A PPO critic as TRL and OpenRLHF build it: a copy of the reward model's backbone (its
    LoRA adapters merged in) and a per-token value head from its scalar head
    (`value_head_from_reward`). The copy is the critic's own: training it never moves the
    reward model, and the critic never shares a weight with the policy."""
    scope = LORA_SCOPE if reward_model.config.lora_rank is not None else None
    backbone = merged_copy(reward_model.backbone, scope)
    return backbone.train(), value_head_from_reward(reward_model)


def critic_for(
    reward_model: RewardModel,
    reward_tokenizer: Tokenizer,
    policy: PaLM,
    policy_tokenizer: Tokenizer,
) -> tuple[PaLM, nn.Linear] | None:
    """The critic `critic_from_reward` builds, when the critic can read the policy's tokens
    (the reward model shares the policy's tokenizer) and the reward model has a trained
    scalar head; else None, and PPO's critic starts as a copy of the policy with a zero head."""
    shared = reward_tokenizer.fingerprint == policy_tokenizer.fingerprint
    scalar = reward_model.config.pairwise and "scalar" in reward_model.trained_heads
    same_vocabulary = reward_model.backbone.config.num_tokens == policy.config.num_tokens
    if not (shared and scalar and same_vocabulary):
        return None
    return critic_from_reward(reward_model)
