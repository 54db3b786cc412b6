"""Losses and advantage estimates for reward modelling, PPO and DPO: small pure functions.

Axes: b batch (rows, pairs or rankings), t response tokens, n sequence, v vocabulary,
k responses of a ranking, a attributes, c ordinal bins (score levels).

Masks are boolean and True on the positions that count (response tokens, rated attributes).
Every function that takes a mask first replaces the values outside it by zero, so NaN or huge
numbers in padding can reach neither a result nor a gradient (`masked_mean` alone multiplies by
the mask, and NaN * 0 is still NaN). Targets (advantages, returns, old and reference log-probs)
are detached inside the losses: a trainer that forgets `.detach()` still gets the right gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf_core.helpers import masked_mean


def _zero_outside(values: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype))


def _weighted_mean(losses: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / weights.sum()


# Reward models from human preferences.


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    margin: Tensor | float | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """Pairwise reward-model loss -log sigmoid(r_c - r_r - m), weighted mean: (b) -> ().

    Bradley & Terry (1952); InstructGPT (Ouyang et al. 2022) eq. 1 for one pair; the margin m
    (b) or scalar is Llama-2's (Touvron et al. 2023, eq. 2): a clearer preference grade asks
    for a larger reward gap. `weights` (b) weigh pairs, e.g. by annotator reliability.
    """
    return _weighted_mean(bradley_terry_losses(chosen_rewards, rejected_rewards, margin), weights)


def bradley_terry_losses(
    chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | float | None = None
) -> Tensor:
    """-log sigmoid(r_c - r_r - m) elementwise, any shape (`bradley_terry_loss` per pair)."""
    logits = chosen_rewards - rejected_rewards
    if margin is not None:
        logits = logits - margin
    return -F.logsigmoid(logits)


def tie_loss(
    rewards_a: Tensor, rewards_b: Tensor, *, tie_threshold: float, weights: Tensor | None = None
) -> Tensor:
    """-log P(tie) under the Rao-Kupper (1967) extension of Bradley-Terry, (b) -> ().

    Rao-Kupper gives, for d = r_a - r_b and a threshold τ > 0,
        P(a ≻ b) = sigmoid(d - τ),   P(b ≻ a) = sigmoid(-d - τ),
        P(tie) = 1 - P(a ≻ b) - P(b ≻ a) = sigmoid(d + τ) - sigmoid(d - τ).
    Chosen over Davidson (1970) because its strict-preference probability is exactly
    `bradley_terry_loss` with `margin=τ`: pass the same τ there for the strict pairs of the same
    data and all labels come from one likelihood. The loss is smallest at d = 0 and grows
    symmetrically with |d|, so ties pull the two rewards together without fixing their level.
    Stable form: log P(tie) = log(2 sinh τ) + d - softplus(d + τ) - softplus(d - τ).
    """
    return _weighted_mean(tie_losses(rewards_a, rewards_b, tie_threshold=tie_threshold), weights)


def tie_losses(rewards_a: Tensor, rewards_b: Tensor, *, tie_threshold: float) -> Tensor:
    """-log P(tie) elementwise, any shape (`tie_loss` per pair)."""
    if tie_threshold <= 0:
        raise ValueError(f"tie_threshold must be positive, got {tie_threshold}")
    log_two_sinh = tie_threshold + math.log1p(-math.exp(-2 * tie_threshold))
    d = rewards_a - rewards_b
    log_tie = log_two_sinh + d - F.softplus(d + tie_threshold) - F.softplus(d - tie_threshold)
    return -log_tie


def both_bad_loss(
    rewards_a: Tensor, rewards_b: Tensor, *, threshold: float = 0.0, weights: Tensor | None = None
) -> Tensor:
    """Both responses lose to a virtual acceptable response of reward `threshold`, (b) -> ().

    Per pair ½(-log sigmoid(t - r_a) - log sigmoid(t - r_b)): a Bradley-Terry comparison of
    each response against a fixed anchor. A "both bad" label says something absolute that a pairwise
    comparison cannot (Bradley-Terry is blind to a shared shift), so instead of down-weighting
    the pair we use it to pin the reward scale: unacceptable responses score below `threshold`.
    It adds to, never replaces, the pair's preference or tie loss.
    """
    return _weighted_mean(both_bad_losses(rewards_a, rewards_b, threshold=threshold), weights)


def both_bad_losses(rewards_a: Tensor, rewards_b: Tensor, *, threshold: float = 0.0) -> Tensor:
    """½(-log sigmoid(t - r_a) - log sigmoid(t - r_b)) elementwise (`both_bad_loss` per pair)."""
    losses = -F.logsigmoid(threshold - rewards_a) - F.logsigmoid(threshold - rewards_b)
    return losses / 2


def ranking_loss(
    rewards: Tensor, order: Tensor, *, margin: float = 0.0, weights: Tensor | None = None
) -> Tensor:
    """InstructGPT's ranking loss (Ouyang et al. 2022, eq. 1): rewards (b k), order (b k) -> ().

    `order[i]` lists the indices into `rewards[i]` from best to worst. Each ranking contributes
    the mean of -log sigmoid(r_better - r_worse - margin) over its K(K-1)/2 pairs (the 1/C(K,2)
    factor), so a long ranking weighs as much as a short one instead of dominating the batch.
    `margin` is the Rao-Kupper τ that strict pairs of the same data use (see `tie_loss`).
    """
    return _weighted_mean(ranking_losses(rewards, order, margin=margin), weights)


def ranking_losses(rewards: Tensor, order: Tensor, *, margin: float = 0.0) -> Tensor:
    """Each ranking's loss (b) of `ranking_loss`, unreduced over the rankings."""
    best_first = rewards.gather(-1, order)
    k = best_first.shape[-1]
    better, worse = torch.triu_indices(k, k, offset=1, device=rewards.device)
    pair_losses = -F.logsigmoid(best_first[:, better] - best_first[:, worse] - margin)
    return pair_losses.mean(dim=-1)


def ordinal_likert_losses(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Ordinal loss over score bins per rating (HelpSteer-style): (b a c), (b a), (b a) -> (b).

    logits over the c bins of each attribute, labels as bin indices (score - scale minimum),
    mask False where an attribute was not rated. For a rated attribute with p = softmax(logits),
    label y and cumulative distributions P_k = Σ_{j≤k} p_j and Y_k = [k ≥ y],
        loss = -log p_y + Σ_{k=0}^{c-2} (P_k - Y_k)²,
    cross-entropy plus the squared earth mover's distance between the two distributions on the
    ordered bins (Hou et al. 2016, "Squared Earth Mover's Distance-based loss for training deep
    neural networks"; (c - 1) times the ranked probability score). Cross-entropy alone sees
    only the probability of the true bin, so predicting 1 for a true 4 costs what predicting 5
    does; the EMD term grows with how far the mass lies from the label. (The last cumulative
    term, P = Y = 1, is always 0.) Each rating's loss is the mean over its rated attributes,
    0 for a rating with none.
    """
    mask = mask.bool()
    logits = _zero_outside(logits, mask.unsqueeze(-1))
    labels = _zero_outside(labels, mask)
    logprobs = logits.log_softmax(dim=-1)
    cross_entropy = -logprobs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    bins = torch.arange(logits.shape[-1], device=logits.device)
    predicted_cdf = logprobs.exp().cumsum(dim=-1)[..., :-1]
    label_cdf = (bins >= labels.unsqueeze(-1)).to(logprobs.dtype)[..., :-1]
    emd_squared = (predicted_cdf - label_cdf).square().sum(dim=-1)
    per_label = _zero_outside(cross_entropy + emd_squared, mask)
    return masked_mean(per_label, mask, dim=-1)


def ordinal_likert_loss(
    logits: Tensor, labels: Tensor, mask: Tensor, weights: Tensor | None = None
) -> Tensor:
    """`ordinal_likert_losses` averaged over the ratings with a rated attribute -> ().

    Optional per-rating `weights` (b) give a weighted mean; a rating with no rated attribute
    counts for nothing, whatever its weight. The whole distribution over levels is kept, from
    which `expected_score` gives a deterministic reward.
    """
    per_rating = ordinal_likert_losses(logits, labels, mask)
    rated = mask.bool().any(dim=-1)
    weights = rated.to(per_rating.dtype) if weights is None else weights.to(per_rating.dtype)
    weights = _zero_outside(weights, rated)
    return (per_rating * weights).sum() / weights.sum().clamp(min=1e-12)


def expected_score(logits: Tensor, bin_values: Tensor) -> Tensor:
    """Σ softmax(logits) · bin_values over bins: (... c), (c) -> (...).

    The expectation, not a sample, so the same response always gets the same reward.
    """
    return (logits.softmax(dim=-1) * bin_values).sum(dim=-1)


# PPO (Schulman et al. 2017) with a KL-penalised reward (Ziegler et al. 2019).


def kl_penalty_rewards(
    score: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, *, kl_coef: float
) -> Tensor:
    """Per-token rewards (b t): -β(log π - log π_ref), plus `score` (b) on each last token.

    Ziegler et al. 2019 §2.2; Stiennon et al. 2020 §3.4: the reward model scores the whole
    response, so its score arrives at the last response token, while the KL penalty keeps every
    token near the reference policy. Zero outside the mask; detached (a reward is a target).
    """
    mask = mask.bool()
    log_ratio = _zero_outside(logprobs.detach() - ref_logprobs.detach(), mask)
    rewards = -kl_coef * log_ratio
    # argmax returns the first maximum of the running count: the last True of each row.
    last = mask.long().cumsum(dim=-1).argmax(dim=-1, keepdim=True)
    score = _zero_outside(score.detach(), mask.any(dim=-1)).to(rewards.dtype)
    return rewards.scatter_add(-1, last, score.unsqueeze(-1))


def approx_kl(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Estimates of KL(π_old ‖ π) from tokens sampled by π_old: (b t) -> (k1, k3), detached.

    Schulman (2020), "Approximating KL divergence", with r = π(x) / π_old(x):
    k1 = -log r (unbiased, high variance, can be negative) and k3 = (r - 1) - log r (unbiased,
    low variance, never negative). k3 is the one to compare with a target for early stopping.
    """
    with torch.no_grad():
        log_ratio = _zero_outside(logprobs - old_logprobs, mask)
        k1 = masked_mean(-log_ratio, mask)
        k3 = masked_mean(log_ratio.exp() - 1 - log_ratio, mask)
    return k1, k3


@torch.no_grad()
def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16): (b t) -> (A, R), (b t).

    δ_t = r_t + gamma V_{t+1} - V_t and A_t = δ_t + gamma lam A_{t+1}, computed backwards.
    Past the last response token V and A are 0 (the episode ends there: no bootstrap), so
    padding contributes nothing. Returns R = A + V, the value targets. Both are 0 outside the
    mask, and detached.
    """
    mask = mask.bool()
    rewards, values = _zero_outside(rewards, mask), _zero_outside(values, mask)
    advantages = torch.zeros_like(rewards)
    next_value = next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[-1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, _zero_outside(advantages + values, mask)


def whiten(values: Tensor, mask: Tensor, *, shift_mean: bool = True) -> Tensor:
    """(v - mean) / std over the masked positions, (b t) -> (b t), 0 outside the mask.

    Advantage whitening as in Huang et al. 2024 ("The N+ implementation details of RLHF with
    PPO", detail on normalising advantages) and TRL's `masked_whiten`: unbiased variance,
    eps 1e-8; `shift_mean=False` keeps the mean (used for rewards, whose sign carries meaning).
    """
    mask = mask.bool()
    values = _zero_outside(values, mask)
    mean = masked_mean(values, mask)
    count = mask.sum().clamp(min=2)
    variance = _zero_outside((values - mean) ** 2, mask).sum() / (count - 1)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return _zero_outside(whitened, mask)


def ppo_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *, clip_range: float
) -> tuple[Tensor, Tensor]:
    """Clipped surrogate (Schulman et al. 2017, eq. 7), negated for descent: (b t) -> (loss, frac).

    loss = masked mean of max(-A r, -A clip(r, 1-ε, 1+ε)), r = π / π_old. Gradients reach
    `logprobs` only. `clip_fraction` (detached) is the share of tokens whose gradient the clip
    removed: r beyond 1+ε with A > 0, or below 1-ε with A < 0.
    """
    mask = mask.bool()
    log_ratio = _zero_outside(logprobs - old_logprobs.detach(), mask)
    advantages = _zero_outside(advantages.detach(), mask)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).to(ratio.dtype), mask).detach()
    return loss, clip_fraction


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip_range_value: float,
) -> tuple[Tensor, Tensor]:
    """Clipped value loss ½ max((V - R)², (V_clip - R)²), masked mean: (b t) -> (loss, frac).

    V_clip = V_old + clip(V - V_old, -ε, ε), as in the PPO baselines and Huang et al. 2024
    ("N+ implementation details", value clipping). Gradients reach `values` only;
    `clip_fraction` (detached) is the share of tokens where the clipped term won.
    """
    mask = mask.bool()
    old_values = _zero_outside(old_values.detach(), mask)
    returns = _zero_outside(returns.detach(), mask)
    values = _zero_outside(values, mask)
    clipped_values = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    clip_fraction = masked_mean((clipped_error > unclipped_error).to(values.dtype), mask)
    return loss, clip_fraction.detach()


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean entropy of the next-token distributions over masked positions: (b t v), (b t) -> ().

    H = logsumexp(l) - Σ softmax(l)·l. An entropy *bonus* encourages exploration, so the
    trainer SUBTRACTS it: loss = policy_loss + c_v·value_loss - entropy_coef·entropy. (The
    reference implementation this package replaces added it, which punished exploration.)
    """
    mask = mask.bool()
    logits = _zero_outside(logits, mask.unsqueeze(-1))
    entropy = logits.logsumexp(dim=-1) - (logits.softmax(dim=-1) * logits).sum(dim=-1)
    return masked_mean(entropy, mask)


# DPO (Rafailov et al. 2023).


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(tokens[:, i] | tokens[:, :i]) for each position: (b n v), (b n) -> (b n).

    Alignment: `logits` come from a forward pass over the same `tokens`, so logits[:, i] has
    read tokens[:, :i + 1] and predicts tokens[:, i + 1]. The result is shifted back onto the
    token it scores, out[:, i] for tokens[:, i], so it lines up with `tokens` and their mask;
    out[:, 0] is 0, as nothing predicts the first token.
    """
    logprobs = logits[:, :-1].log_softmax(dim=-1)
    scored = logprobs.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)
    return F.pad(scored, (1, 0))


def sequence_logprobs(logits: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    """Σ log p(token) over the tokens where `mask` is True: (b n v), (b n), (b n) -> (b).

    `mask` is aligned with `tokens` (True on the response tokens), with the alignment of
    `token_logprobs`; mask[:, 0] is ignored, since the first token has no prediction.
    """
    mask = mask.bool()
    # logits[:, i] predicts tokens[:, i + 1], so it matters exactly where mask[:, i + 1] does.
    predicts_masked = F.pad(mask[:, 1:], (0, 1), value=False)
    logits = _zero_outside(logits, predicts_masked.unsqueeze(-1))
    return _zero_outside(token_logprobs(logits, tokens), mask).sum(dim=-1)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO (Rafailov et al. 2023, eq. 7), sequence log-probs (b) -> (loss, chosen, rejected).

    Implicit rewards β(log π - log π_ref) per response (detached, for metrics); the loss is
    -log sigmoid(r_c - r_r). `label_smoothing` ε is conservative DPO (Mitchell 2023, "A note on
    DPO with noisy preferences"): each label is wrong with probability ε, so the loss becomes
    -(1-ε) log sigmoid(z) - ε log sigmoid(-z) and stops pushing z to infinity. Optional
    per-pair `weights` (b) give a weighted mean.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen = beta * (policy_chosen_logps - ref_chosen_logps.detach())
    rejected = beta * (policy_rejected_logps - ref_rejected_logps.detach())
    z = chosen - rejected
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return _weighted_mean(losses, weights), chosen.detach(), rejected.detach()


# KL coefficient schedules for the penalty in `kl_penalty_rewards`.


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float) -> None:
        """Keeps β: the interface of `AdaptiveKLController`."""


class AdaptiveKLController:
    """Proportional control of β towards a target KL (Ziegler et al. 2019, §2.2), per iteration.

    After each PPO iteration, with KL the policy's KL to the reference on its rollout,
        e = clip(KL / KL_target - 1, -0.2, 0.2),   β ← β (1 + K_β e),
    so β grows while the policy drifts further than the target and shrinks while it stays
    closer. K_β = 0.1 in the paper: β moves by at most 2% per iteration.
    """

    def __init__(self, init_kl_coef: float, target: float, gain: float) -> None:
        if init_kl_coef <= 0 or target <= 0:
            raise ValueError("init_kl_coef and target must be positive")
        if not 0 < gain <= 1:
            raise ValueError(f"gain must be in (0, 1], got {gain}")
        self.value = init_kl_coef
        self.target = target
        self.gain = gain

    def update(self, current_kl: float) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + self.gain * error
