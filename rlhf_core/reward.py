"""The reward model: a PaLM backbone read at each row's last token, with two kinds of head.

Axes: b batch, n sequence, e model dim, a Likert attributes, k Likert bins.

- A scalar head (Bradley-Terry, Ouyang et al. 2022): one reward per row, trained on pairwise
  preferences.
- A Likert head (HelpSteer-style, Wang et al. 2023): a distribution over the `k` bins of each
  attribute, read as its expected score, so the same text always gets the same score.

Saving and loading live in `rlhf_core.reward_io`: this module knows nothing of files or devices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from einops import einsum, rearrange
from torch import Tensor, nn

from rlhf_core.generation import left_pad
from rlhf_core.lora import add_lora, use_scope
from rlhf_core.palm import PaLM
from rlhf_core.tokenizer import Tokenizer

LORA_SCOPE = "reward"
Pooling = Literal["last"]


@dataclass(frozen=True)
class RewardHeadConfig:
    """What a RewardModel puts on its backbone; stored with it (`dataclasses.asdict`).

    attributes: the Likert attributes, each scored on `bins` bins; () for no Likert head. Without
        a scalar head, `rewards` is the expected score of the first attribute, so put the one
        that should drive RL (e.g. "overall" or "helpfulness") first.
    bin_values: the score of each bin; () (the default) means 1..bins.
    pairwise: whether to have the scalar (Bradley-Terry) head.
    lora_rank: None trains the whole backbone; a rank trains only LoRA adapters (scope
        "reward") and the heads, with the base weights frozen.
    pooling: "last" reads the hidden state of each row's last real token, the EOS that ends the
        response (`encode_pairs` appends it).
    """

    attributes: tuple[str, ...] = ("overall",)
    bins: int = 5
    bin_values: tuple[float, ...] = ()
    pairwise: bool = True
    lora_rank: int | None = None
    lora_alpha: float = 16.0
    pooling: Pooling = "last"

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
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError(f"lora_rank must be positive or None, got {self.lora_rank}")
        if self.pooling != "last":
            raise ValueError(f"pooling must be 'last', got {self.pooling!r}")


@dataclass(frozen=True)
class RewardOutput:
    """rewards (b): raw (unnormalised) float32 rewards.
    likert_logits (b a k) and expected_scores (b a): None without a Likert head."""

    rewards: Tensor
    likert_logits: Tensor | None
    expected_scores: Tensor | None


class RewardModel(nn.Module):
    """`RewardModel(backbone, config)`: the heads of `config` on a PaLM.

    With `config.lora_rank` the backbone gets LoRA adapters in scope "reward" (and is frozen)
    here; they are active during this model's forward pass only.
    """

    bin_values: Tensor
    reward_mean: Tensor
    reward_std: Tensor

    def __init__(self, backbone: PaLM, config: RewardHeadConfig | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config = config or RewardHeadConfig()
        if config.lora_rank is not None:
            add_lora(backbone, LORA_SCOPE, rank=config.lora_rank, alpha=config.lora_alpha)
        # The heads follow the backbone's device and dtype, as LoRA adapters do.
        like = backbone.token_emb.weight
        dim, device, dtype = backbone.config.dim, like.device, like.dtype
        self.scalar_head = (
            nn.Linear(dim, 1, device=device, dtype=dtype) if config.pairwise else None
        )
        likert_width = len(config.attributes) * config.bins
        self.likert_head = (
            nn.Linear(dim, likert_width, device=device, dtype=dtype) if likert_width else None
        )
        # Not persistent: the config is the source of truth for the bin values.
        self.register_buffer(
            "bin_values", torch.tensor(config.bin_values, device=device), persistent=False
        )
        # Persistent, so the normalisation fitted after training travels with the weights.
        self.register_buffer("reward_mean", torch.zeros((), device=device))
        self.register_buffer("reward_std", torch.ones((), device=device))

    def forward(self, tokens: Tensor, attention_mask: Tensor) -> RewardOutput:
        """Rewards of `tokens` (b n); `attention_mask` (b n) is True on real tokens.

        Rows may be left- or right-padded; every row needs at least one real token.
        """
        scope = (
            use_scope(self.backbone, LORA_SCOPE)
            if self.config.lora_rank is not None
            else contextlib.nullcontext()
        )
        with scope:
            hidden = self.backbone(tokens, attention_mask=attention_mask, return_hidden=True)
        pooled = last_token_hidden(hidden, attention_mask)
        likert_logits = expected = None
        if self.likert_head is not None:
            flat = self.likert_head(pooled).float()
            likert_logits = rearrange(flat, "b (a k) -> b a k", k=self.config.bins)
            expected = expected_scores(likert_logits, self.bin_values)
        if self.scalar_head is not None:
            rewards = rearrange(self.scalar_head(pooled).float(), "b 1 -> b")
        else:
            assert expected is not None  # the config guarantees one head or the other
            rewards = expected[:, 0]
        return RewardOutput(rewards, likert_logits, expected)

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

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        tokenizer: Tokenizer,
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Normalised rewards (b) of each (prompt, response), in input order, on the CPU.

        Texts are encoded as `encode_pairs` does (truncated on the left past `max_length`) and
        batched by length, so padding is short; `device` is where the batches go (default:
        where the weights are). Runs in eval mode without gradients, then restores the mode.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rows = pair_token_ids(tokenizer, prompts, responses, max_length)
        device = device or self.reward_mean.device
        order = sorted(range(len(rows)), key=lambda index: len(rows[index]))
        rewards = torch.empty(len(rows))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), batch_size):
                    chosen = order[start : start + batch_size]
                    tokens, mask = left_pad([rows[i] for i in chosen], tokenizer.pad_id)
                    raw = self(tokens.to(device), mask.to(device)).rewards
                    rewards[chosen] = self.normalized(raw).cpu()
        finally:
            self.train(was_training)
        return rewards


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


def pair_token_ids(
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int | None = None,
) -> list[list[int]]:
    """prompt ids + response ids + EOS per pair, the EOS being the token the reward is read at.

    Past `max_length` tokens the sequence loses tokens on the left: the start of the prompt
    first, and the start of the response only if the response and EOS alone are too long. The
    end of the response, which the reward reads, is always kept.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    # Encoded apart, so the response's tokens are those a policy would have generated after
    # the prompt's, not a merge across the boundary.
    pairs = zip(tokenizer.encode_batch(prompts), tokenizer.encode_batch(responses), strict=True)
    rows = [[*prompt, *response, tokenizer.eos_id] for prompt, response in pairs]
    return rows if max_length is None else [row[-max_length:] for row in rows]


def encode_pairs(
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Tokens (b n) and attention mask (b n) of the pairs, left-padded with the pad id.

    Left padding puts every row's EOS in the last column, the layout generation uses too;
    `RewardModel` reads each row's last real token either way. See `pair_token_ids` for the
    truncation.
    """
    return left_pad(pair_token_ids(tokenizer, prompts, responses, max_length), tokenizer.pad_id)


@torch.no_grad()
def value_head_from_reward(reward_model: RewardModel) -> nn.Linear:
    """A PPO value head (e -> 1) initialised from the reward model's scalar head (Ouyang et al.
    2022; Huang et al. 2024), with the reward normalisation folded in, so it starts out
    predicting the normalised rewards that `score` returns and PPO optimises."""
    head = reward_model.scalar_head
    if head is None:
        raise ValueError("the reward model has no scalar head (pairwise=False)")
    value_head = nn.Linear(head.in_features, 1, device=head.weight.device, dtype=head.weight.dtype)
    std, mean = reward_model.reward_std, reward_model.reward_mean
    value_head.weight.copy_(head.weight / std)
    value_head.bias.copy_((head.bias - mean) / std)
    return value_head
