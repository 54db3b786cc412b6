"""PPO for language models (Ziegler et al. 2019; Stiennon et al. 2020; Huang et al. 2024, "The N+
implementation details of RLHF with PPO"): the config, the policy with its value head and frozen
reference, and the update over a collected `rollout.Rollout`. The maths lives in `losses`.

Axes: b rollout rows, p prompt columns (left-padded), t response columns, n = p + t, e model
dim, v vocabulary.

Alignment: a row is [left padding, prompt, response, padding after EOS]. Response column j sits
at sequence column p + j; the logits that predict it, and the value of the state before it, are
read at column p + j - 1. So the forward pass keeps the hidden states of columns p - 1 ..
p + t - 2 only: one per response column, none wasted on the prompt.

Precision (`PPOConfig.mixed_precision`): with bf16, generation, the recomputation, the scorer and
the update's forward passes run under bf16 autocast (`ppo_autocast`); the weights, their
gradients and AdamW stay float32, and so does everything PPO computes with: the output head
returns float32 logits, values are cast up, and the losses, rewards and GAE follow.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

import torch
from einops import rearrange
from torch import Tensor, nn

from rlhf_core.helpers import masked_mean
from rlhf_core.lora import adapters_disabled, add_lora, use_scope
from rlhf_core.losses import (
    approx_kl,
    entropy_from_logits,
    ppo_policy_loss,
    token_logprobs,
    value_loss,
)
from rlhf_core.palm import PaLM
from rlhf_core.pretrain import MixedPrecision, resolve_mixed_precision

if TYPE_CHECKING:
    from rlhf_core.rollout import Rollout

POLICY_SCOPE = "policy"


class PPOError(Exception):
    """A PPO run that cannot start: inconsistent settings or inputs."""


@dataclass(frozen=True)
class PPOConfig:
    """Every setting of a PPO run; defaults follow Huang et al. 2024 at a small scale."""

    steps: int = 100  # PPO iterations: one rollout and one update each
    rollout_batch_size: int = 16  # prompts sampled per iteration
    max_new_tokens: int = 32
    # Prompts longer than this many tokens keep their end (the context nearest the response).
    max_prompt_length: int | None = 256
    temperature: float = 1.0  # sampling; the log-probs PPO uses are at this temperature too
    # Compile generation's decode step (CUDA): tens of seconds once, then every rollout of the
    # run decodes about 1.5x faster (see generation.generate).
    compile_step: bool = False
    minibatch_size: int = 8  # rollout rows per optimizer step
    grad_accum_steps: int = 1  # micro-batches per minibatch (same gradient, less memory)
    ppo_epochs: int = 4  # passes over the rollout
    clip_range: float = 0.2  # ε of the clipped surrogate
    clip_range_value: float = 0.2  # ε of the clipped value loss
    vf_coef: float = 0.1
    entropy_coef: float = 0.0  # a bonus: subtracted from the loss
    gamma: float = 1.0
    lam: float = 0.95
    init_kl_coef: float = 0.05  # β of the KL penalty in the reward
    adaptive_kl: bool = True  # Ziegler et al.'s proportional controller; False: fixed β
    kl_target: float = 6.0  # nats per response, for the adaptive controller
    # K_β of the adaptive controller: β ← β (1 + K_β clip(KL / kl_target - 1, ±0.2)) after each
    # iteration (Ziegler et al. 2019's value).
    kl_gain: float = 0.1
    whiten_advantages: bool = True
    # Huang et al. 2024 penalise a response that never ends (no EOS within max_new_tokens): the
    # reward model never saw an unfinished text. Here the penalty is *subtracted* from its
    # score (in the scorer's units after normalisation: 1 = one standard deviation of the
    # initial policy's scores) rather than replacing it, so a policy that rarely ends still
    # learns from the scores while it learns to end. A blank response (no text before EOS)
    # scores the rollout's lowest score minus the penalty (`rollout.penalise_blank`): the
    # reward model never saw one and may score it above everything. None or 0: no penalty.
    no_eos_penalty: float | None = 1.0
    # Huang et al. 2024 ("reward normalisation based on SFT samples"): before the first update
    # the scorer's scores of this many samples of the initial policy fix a mean and a standard
    # deviation, and every later score is normalised by them, so rewards are in units of the
    # policy's own spread whatever the reward model's scale. 0: scores as the scorer gives them.
    normalization_samples: int = 64
    grad_clip: float | None = 1.0  # max global gradient norm; None: never clip (norm reported)
    target_kl: float | None = None  # stop the update once approx-KL (k3) exceeds it
    lr: float = 1e-5
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 10  # iterations between saved run states (see `train_ppo`)
    # bf16 autocast around the forward passes (see the module docstring); float32 weights.
    # auto: on a CUDA GPU that has bf16, off elsewhere; "bf16" on any device, the CPU included.
    mixed_precision: MixedPrecision = "auto"

    def __post_init__(self) -> None:
        checks = {
            "steps, rollout_batch_size, max_new_tokens, minibatch_size, grad_accum_steps, "
            "ppo_epochs and checkpoint_every must be >= 1": min(
                self.steps,
                self.rollout_batch_size,
                self.max_new_tokens,
                self.minibatch_size,
                self.grad_accum_steps,
                self.ppo_epochs,
                self.checkpoint_every,
            )
            >= 1,
            "max_prompt_length must be >= 1 (or None) and normalization_samples >= 0": (
                (self.max_prompt_length is None or self.max_prompt_length >= 1)
                and self.normalization_samples >= 0
            ),
            "no_eos_penalty must be >= 0 (or None)": (
                self.no_eos_penalty is None or self.no_eos_penalty >= 0
            ),
            "rollout_batch_size must be a multiple of minibatch_size": (
                self.rollout_batch_size % max(self.minibatch_size, 1) == 0
            ),
            "minibatch_size must be a multiple of grad_accum_steps": (
                self.minibatch_size % max(self.grad_accum_steps, 1) == 0
            ),
            "temperature must be > 0 (PPO needs a sampling policy)": self.temperature > 0,
            "clip ranges, lr and init_kl_coef must be > 0": min(
                self.clip_range, self.clip_range_value, self.lr, self.init_kl_coef
            )
            > 0,
            "gamma and lam must be in [0, 1]": 0 <= self.gamma <= 1 and 0 <= self.lam <= 1,
            "kl_target must be > 0 and kl_gain in (0, 1]": (
                self.kl_target > 0 and 0 < self.kl_gain <= 1
            ),
            "grad_clip and target_kl must be > 0 (or None)": all(
                value is None or value > 0 for value in (self.grad_clip, self.target_kl)
            ),
            f"mixed_precision must be one of {', '.join(get_args(MixedPrecision))}, "
            f"not {self.mixed_precision!r}": self.mixed_precision in get_args(MixedPrecision),
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise PPOError("; ".join(failed))


@dataclass(frozen=True)
class PolicyOutput:
    """Over the response columns: logits (b t v), log-probs of the given tokens (b t), values
    (b t) of the state before each token."""

    logits: Tensor
    logprobs: Tensor
    values: Tensor


class PPOPolicy(nn.Module):
    """The policy PaLM, its critic, and its frozen reference.

    The critic is a network of its own (a PaLM trunk with a per-token value head), as TRL and
    OpenRLHF have it: value gradients never reach the policy's weights. Build it from the
    reward model with `reward.critic_from_reward` (its backbone and scalar head, so it starts
    out predicting the normalised score); without one, the critic is a copy of the policy's
    trunk with a zero head, which predicts 0.
    With `lora_rank`, the policy trains LoRA adapters (scope "policy") and the reference is the
    same weights with the adapters off: no second copy. Without, the reference is a frozen deep
    copy taken here, before any update.
    """

    def __init__(
        self,
        policy: PaLM,
        critic: tuple[PaLM, nn.Linear] | None = None,
        *,
        lora_rank: int | None = None,
        lora_alpha: float = 16.0,
    ) -> None:
        super().__init__()
        self.reference: PaLM | None = None
        if lora_rank is None:
            self.reference = copy.deepcopy(policy).requires_grad_(False).eval()
        if critic is None:
            like = policy.token_emb.weight
            head = nn.Linear(policy.config.dim, 1, device=like.device, dtype=like.dtype)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            critic = (copy.deepcopy(policy).requires_grad_(True), head)
        self.critic, self.value_head = critic
        self.policy = policy
        self.lora_scope = None if lora_rank is None else POLICY_SCOPE
        if lora_rank is not None:
            add_lora(policy, POLICY_SCOPE, rank=lora_rank, alpha=lora_alpha)

    def _policy_scope(self) -> AbstractContextManager[None]:
        if self.lora_scope is None:
            return nullcontext()
        return use_scope(self.policy, self.lora_scope)

    def forward(
        self, tokens: Tensor, attention_mask: Tensor, prompt_width: int, temperature: float = 1.0
    ) -> PolicyOutput:
        """Policy and critic outputs over the response columns of `tokens` (b n); see the
        module legend.

        `temperature` is the sampling one: the policy PPO optimises is the one that sampled,
        softmax(logits / T), so every log-prob (and the entropy) is of those scaled logits
        (Huang et al. 2024, detail on the sampling temperature).
        """
        with self._policy_scope():
            hidden = self.policy(tokens, attention_mask=attention_mask, return_hidden=True)
        logits, logprobs = _response_logprobs(
            self.policy, hidden, tokens, prompt_width, temperature
        )
        return PolicyOutput(logits, logprobs, self.values(tokens, attention_mask, prompt_width))

    def values(self, tokens: Tensor, attention_mask: Tensor, prompt_width: int) -> Tensor:
        """The critic's values (b t) of the state before each response token."""
        hidden = self.critic(tokens, attention_mask=attention_mask, return_hidden=True)
        values: Tensor = rearrange(
            self.value_head(hidden[:, prompt_width - 1 : -1]), "b t 1 -> b t"
        )
        return values.float()

    @torch.no_grad()
    def reference_logprobs(
        self, tokens: Tensor, attention_mask: Tensor, prompt_width: int, temperature: float = 1.0
    ) -> Tensor:
        """Log-probs (b t) of the response tokens under the frozen reference policy, at the
        same temperature as the policy's, so the KL penalty compares like with like."""
        model = self.policy if self.reference is None else self.reference
        scope = adapters_disabled(self.policy) if self.reference is None else nullcontext()
        model.eval()  # the reference copy; the policy is in eval mode during a rollout anyway
        with scope:
            hidden = model(tokens, attention_mask=attention_mask, return_hidden=True)
        return _response_logprobs(model, hidden, tokens, prompt_width, temperature)[1]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [parameter for parameter in self.parameters() if parameter.requires_grad]

    def sampling_scope(self) -> AbstractContextManager[None]:
        """The adapters `generate` must sample through (it calls the bare PaLM)."""
        return self._policy_scope()


def ppo_autocast(
    policy: PPOPolicy, config: PPOConfig, *, cache_enabled: bool = True
) -> AbstractContextManager[object]:
    """bf16 autocast on the policy's device when `config.mixed_precision` resolves to bf16
    there ("auto": a CUDA GPU that has bf16), else no context at all.

    Run backward outside it. cache_enabled=False for code that captures CUDA graphs (generation):
    autocast keeps its bf16 copies of the weights until the context exits, and a graph must not
    read a copy that may be freed or stale (torch.cuda.make_graphed_callables asks the same).
    """
    device = policy.policy.token_emb.weight.device
    setting = config.mixed_precision
    if (setting == "auto" and device.type != "cuda") or resolve_mixed_precision(setting) == "no":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)


def _response_logprobs(
    model: PaLM, hidden: Tensor, tokens: Tensor, prompt_width: int, temperature: float
) -> tuple[Tensor, Tensor]:
    """Logits / T (b t v) predicting each response column, and the log-probs (b t) of its
    token under them."""
    # Columns p - 1 .. n - 1 with `token_logprobs`' alignment: its output for column p + j is
    # the log-prob of response token j, read from the logits at column p + j - 1.
    logits = model.logits_from_hidden(hidden[:, prompt_width - 1 :]) / temperature
    logprobs = token_logprobs(logits, tokens[:, prompt_width - 1 :])[:, 1:]
    return logits[:, :-1], logprobs


@dataclass(frozen=True)
class LossTerms:
    """One (micro-)batch's loss and the detached statistics that go into the metrics."""

    loss: Tensor
    policy_loss: Tensor
    value_loss: Tensor
    entropy: Tensor
    clip_fraction: Tensor
    value_clip_fraction: Tensor
    approx_kl: Tensor

    def statistics(self) -> dict[str, float]:
        return {
            "loss": float(self.loss.detach()),
            "policy_loss": float(self.policy_loss),
            "value_loss": float(self.value_loss),
            "entropy": float(self.entropy),
            "clip_fraction": float(self.clip_fraction),
            "value_clip_fraction": float(self.value_clip_fraction),
            "approx_kl": float(self.approx_kl),
        }


def ppo_loss(policy: PPOPolicy, batch: Rollout, config: PPOConfig) -> LossTerms:
    """loss = policy loss + vf_coef · value loss - entropy_coef · entropy, over response tokens.

    The entropy is a bonus, hence the minus; each term is a masked mean, scaled exactly once.
    """
    tokens, attention_mask = batch.sequences()
    with ppo_autocast(policy, config):  # the losses below are float32 either way
        out = policy(tokens, attention_mask, batch.prompt_width, config.temperature)
    mask = batch.response_mask
    policy_loss, clip_fraction = ppo_policy_loss(
        out.logprobs, batch.logprobs, batch.advantages, mask, clip_range=config.clip_range
    )
    v_loss, value_clip_fraction = value_loss(
        out.values, batch.values, batch.returns, mask, clip_range_value=config.clip_range_value
    )
    entropy = entropy_from_logits(out.logits, mask)
    loss = policy_loss + config.vf_coef * v_loss - config.entropy_coef * entropy
    _, k3 = approx_kl(out.logprobs, batch.logprobs, mask)
    return LossTerms(
        loss=loss,
        policy_loss=policy_loss.detach(),
        value_loss=v_loss.detach(),
        entropy=entropy.detach(),
        clip_fraction=clip_fraction,
        value_clip_fraction=value_clip_fraction,
        approx_kl=k3,
    )


def minibatches(rows: int, config: PPOConfig, generator: torch.Generator) -> Iterator[Tensor]:
    """Row indices of each minibatch of each epoch, reshuffled every epoch."""
    for _ in range(config.ppo_epochs):
        order = torch.randperm(rows, generator=generator)
        yield from torch.split(order, config.minibatch_size)


def ppo_update(
    policy: PPOPolicy,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    config: PPOConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    """Optimise the PPO loss on `rollout` for `ppo_epochs` epochs of shuffled minibatches.

    Each minibatch is one clipped optimizer step over `grad_accum_steps` micro-batches. With
    `target_kl`, the update stops at the first minibatch whose approx-KL (k3, measured before
    its step) exceeds it; the first minibatch always steps, since its ratio is exactly 1.
    Returns the means over the steps taken, `grad_norm` being the norm before clipping.
    """
    policy.train()
    trainable = policy.trainable_parameters()
    limit = math.inf if config.grad_clip is None else config.grad_clip
    steps: list[dict[str, float]] = []
    early_stopped = False
    for indices in minibatches(rollout.rows, config, generator):
        stats = accumulate_minibatch(policy, rollout.select(indices), config)
        if config.target_kl is not None and steps and stats["approx_kl"] > config.target_kl:
            early_stopped = True
            break
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(trainable, limit))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps.append(stats)
    optimizer.zero_grad(set_to_none=True)  # drops the gradient of a minibatch stopped early
    means = {name: sum(step[name] for step in steps) / len(steps) for name in steps[0]}
    return {**means, "optimizer_steps": float(len(steps)), "early_stopped": float(early_stopped)}


def accumulate_minibatch(policy: PPOPolicy, batch: Rollout, config: PPOConfig) -> dict[str, float]:
    """Backpropagate `batch` as `grad_accum_steps` micro-batches; returns its statistics.

    Every term of the loss is a mean over response tokens, so weighting each micro-batch by its
    share of the tokens makes the gradients add up to exactly those of the whole minibatch.
    Backward runs outside `ppo_loss`'s autocast, as autocast asks.
    """
    total_tokens = batch.response_mask.sum().clamp(min=1)
    totals: dict[str, float] = {}
    for part in torch.arange(batch.rows).tensor_split(config.grad_accum_steps):
        micro = batch.select(part)
        weight = micro.response_mask.sum() / total_tokens
        terms = ppo_loss(policy, micro, config)
        torch.autograd.backward(terms.loss * weight)
        for name, value in terms.statistics().items():
            totals[name] = totals.get(name, 0.0) + float(weight) * value
    return totals


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(R - V) / Var(R) over the response tokens: 1 is a perfect critic, <= 0 a useless
    one (the diagnostic of Huang et al. 2024 and the PPO baselines)."""
    mask = mask.bool()
    residual = torch.where(mask, returns - values, 0.0)
    returns = torch.where(mask, returns, 0.0)

    def variance(x: Tensor) -> Tensor:
        return masked_mean((x - masked_mean(x, mask)) ** 2, mask)

    total = variance(returns)
    return float("nan") if total == 0 else float(1 - variance(residual) / total)
