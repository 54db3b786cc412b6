"""Each loss on a hand-computed example, its sign, its mask and where its gradient goes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf_core.losses import (
    AdaptiveKLController,
    FixedKLController,
    approx_kl,
    both_bad_loss,
    bradley_terry_loss,
    dpo_loss,
    entropy_from_logits,
    expected_score,
    gae,
    kl_penalty_rewards,
    ordinal_likert_loss,
    ordinal_likert_losses,
    ppo_policy_loss,
    ranking_loss,
    sequence_logprobs,
    tie_loss,
    token_logprobs,
    value_loss,
    whiten,
)

NAN = float("nan")


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def close(actual: Tensor, expected: float | list[float] | list[list[float]]) -> bool:
    return torch.allclose(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-6)


# Reward models.


def test_bradley_terry_matches_hand_computed_values_with_margin_and_weights() -> None:
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    # -log sigmoid(x) = softplus(-x): pair 1 has x = 1, pair 2 has x = 0.
    assert close(bradley_terry_loss(chosen, rejected), (softplus(-1) + math.log(2)) / 2)
    # A margin of 1 on both pairs shifts x to 0 and -1.
    assert close(bradley_terry_loss(chosen, rejected, margin=1.0), (math.log(2) + softplus(1)) / 2)
    # Weights 3 and 1: (3 softplus(-1) + log 2) / 4.
    weights = torch.tensor([3.0, 1.0])
    expected = (3 * softplus(-1) + math.log(2)) / 4
    assert close(bradley_terry_loss(chosen, rejected, weights=weights), expected)


def test_bradley_terry_falls_as_the_chosen_reward_rises() -> None:
    chosen = torch.tensor([0.5], requires_grad=True)
    torch.autograd.backward(bradley_terry_loss(chosen, torch.tensor([0.0])))
    assert chosen.grad is not None and chosen.grad.item() < 0
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])) < bradley_terry_loss(
        torch.tensor([1.0]), torch.tensor([0.0])
    )


def test_tie_loss_is_minus_log_rao_kupper_tie_probability() -> None:
    tau = math.log(3)
    # d = 0: P(tie) = sigmoid(log 3) - sigmoid(-log 3) = 3/4 - 1/4 = 1/2.
    assert close(tie_loss(torch.tensor([1.0]), torch.tensor([1.0]), tie_threshold=tau), math.log(2))
    # d = 1: P(tie) = sigmoid(1 + tau) - sigmoid(1 - tau), from the three outcomes adding to 1.
    d = 1.0
    p_tie = 1 - 1 / (1 + math.exp(-(d - tau))) - 1 / (1 + math.exp(d + tau))
    assert close(
        tie_loss(torch.tensor([d]), torch.tensor([0.0]), tie_threshold=tau), -math.log(p_tie)
    )


def test_tie_loss_pulls_the_two_rewards_together_from_either_side() -> None:
    rewards_a = torch.tensor([2.0, -2.0], requires_grad=True)
    torch.autograd.backward(tie_loss(rewards_a, torch.zeros(2), tie_threshold=0.5))
    assert rewards_a.grad is not None
    assert rewards_a.grad[0] > 0 and rewards_a.grad[1] < 0  # descent moves each towards 0
    symmetric = tie_loss(torch.tensor([-2.0]), torch.tensor([0.0]), tie_threshold=0.5)
    assert close(
        tie_loss(torch.tensor([2.0]), torch.tensor([0.0]), tie_threshold=0.5), symmetric.item()
    )


def test_tie_loss_rejects_a_non_positive_threshold() -> None:
    with pytest.raises(ValueError, match="tie_threshold"):
        tie_loss(torch.zeros(1), torch.zeros(1), tie_threshold=0.0)


def test_both_bad_loss_pushes_both_rewards_below_the_threshold() -> None:
    # Threshold 1, rewards 1 and 1: each term is -log sigmoid(0) = log 2, halved and summed.
    assert close(both_bad_loss(torch.ones(1), torch.ones(1), threshold=1.0), math.log(2))
    rewards_a, rewards_b = (
        torch.tensor([0.5], requires_grad=True),
        torch.tensor([-3.0], requires_grad=True),
    )
    torch.autograd.backward(both_bad_loss(rewards_a, rewards_b))
    assert rewards_a.grad is not None and rewards_b.grad is not None
    assert rewards_a.grad.item() > 0 and rewards_b.grad.item() > 0


def test_ranking_loss_averages_the_three_pairs_of_a_ranking_of_three() -> None:
    # Order best first: index 2 (reward 3), then 0 (reward 1), then 1 (reward 0).
    # Pairs: 3-1 = 2, 3-0 = 3, 1-0 = 1; loss = mean(softplus(-2), softplus(-3), softplus(-1)).
    rewards, order = torch.tensor([[1.0, 0.0, 3.0]]), torch.tensor([[2, 0, 1]])
    expected = (softplus(-2) + softplus(-3) + softplus(-1)) / 3
    assert close(ranking_loss(rewards, order), expected)
    # A ranking of two weighs as much as the ranking of three: the mean of the two per-row means.
    rewards_2, order_2 = torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[0, 1, 2]])
    both = ranking_loss(torch.cat([rewards, rewards_2]), torch.cat([order, order_2]))
    assert close(both, (expected + math.log(2)) / 2)


def test_ranking_loss_falls_as_the_top_response_gains_reward() -> None:
    rewards = torch.tensor([[1.0, 0.0, 3.0]], requires_grad=True)
    torch.autograd.backward(ranking_loss(rewards, torch.tensor([[2, 0, 1]])))
    assert rewards.grad is not None
    assert rewards.grad[0, 2] < 0 and rewards.grad[0, 1] > 0


def test_ordinal_likert_loss_is_cross_entropy_plus_squared_emd_on_a_hand_computed_example() -> None:
    # Three bins, p = (0.2, 0.5, 0.3), label 2: cross-entropy -log 0.3; cumulative P = (0.2, 0.7)
    # and Y = (0, 0) before the last bin, so the squared EMD is 0.04 + 0.49 = 0.53.
    logits = torch.tensor([[[0.2, 0.5, 0.3]]]).log()
    loss = ordinal_likert_loss(logits, torch.tensor([[2]]), torch.tensor([[True]]))
    assert close(loss, -math.log(0.3) + 0.53)


def test_ordinal_likert_loss_charges_a_far_miss_more_than_a_near_one() -> None:
    # Five bins, true bin 3, all confidence on bin 0 or on bin 4: the same cross-entropy, but
    # the mass of the first is three bins from the label and that of the second one bin.
    label, mask = torch.tensor([[3]]), torch.tensor([[True]])
    far = ordinal_likert_loss(torch.tensor([[[10.0, 0.0, 0.0, 0.0, 0.0]]]), label, mask)
    near = ordinal_likert_loss(torch.tensor([[[0.0, 0.0, 0.0, 0.0, 10.0]]]), label, mask)
    assert far > near + 1.9  # squared EMD about 3 against about 1


def test_ordinal_likert_loss_ignores_values_outside_the_mask() -> None:
    # Two attributes, three bins. Attribute 0 has uniform logits and label 1: cross-entropy
    # log 3, cumulative P = (1/3, 2/3) against Y = (0, 1), squared EMD 2/9. Attribute 1 is
    # unrated: NaN logits and a nonsense label there must not matter.
    logits = torch.tensor([[[0.0, 0.0, 0.0], [NAN, NAN, NAN]]], requires_grad=True)
    labels, mask = torch.tensor([[1, -7]]), torch.tensor([[True, False]])
    loss = ordinal_likert_loss(logits, labels, mask)
    assert close(loss, math.log(3) + 2 / 9)
    torch.autograd.backward(loss)
    assert logits.grad is not None
    assert torch.equal(logits.grad[0, 1], torch.zeros(3))
    assert logits.grad[0, 0, 1] < 0  # descent raises the labelled bin


def test_ordinal_likert_losses_average_each_ratings_rated_attributes() -> None:
    # Rating 0: a uniform attribute labelled 1 (log 3 + 2/9), a certain and right one (about 0)
    # and an unrated one. Rating 1 has nothing rated: 0, and no weight in the mean.
    logits = torch.tensor(
        [
            [[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [NAN, NAN, NAN]],
            [[NAN, 1e9, NAN], [NAN, NAN, NAN], [NAN, NAN, NAN]],
        ],
        requires_grad=True,
    )
    labels = torch.tensor([[1, 0, 99], [99, -1, 5]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    expected = (math.log(3) + 2 / 9) / 2
    assert close(ordinal_likert_losses(logits, labels, mask), [expected, 0.0])
    loss = ordinal_likert_loss(logits, labels, mask, torch.tensor([1.0, 1e9]))
    assert close(loss, expected)
    torch.autograd.backward(loss)
    assert logits.grad is not None
    assert torch.equal(logits.grad[1], torch.zeros(3, 3))


def test_ordinal_likert_loss_weights_ratings() -> None:
    # Row 0 puts all mass on its label (loss ~0); row 1 is uniform over 3 bins with label 2:
    # log 3 + (1/3)² + (2/3)² = log 3 + 5/9.
    logits = torch.tensor([[[100.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0], [2]])
    mask = torch.ones(2, 1, dtype=torch.bool)
    uniform = math.log(3) + 5 / 9
    assert close(ordinal_likert_loss(logits, labels, mask), uniform / 2)
    weighted = ordinal_likert_loss(logits, labels, mask, torch.tensor([3.0, 1.0]))
    assert close(weighted, uniform / 4)
    only_first = ordinal_likert_loss(logits, labels, mask, torch.tensor([1.0, 0.0]))
    assert only_first < 1e-6


def test_expected_score_is_the_softmax_weighted_mean_of_bin_values() -> None:
    # logits log 1, log 3 over values 1 and 5: probabilities 1/4, 3/4, mean 1/4 + 15/4 = 4.
    logits = torch.tensor([[0.0, math.log(3)]])
    assert close(expected_score(logits, torch.tensor([1.0, 5.0])), [4.0])


# PPO.


def test_kl_penalty_rewards_adds_the_score_on_each_last_response_token() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, NAN], [-1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, 5.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    rewards = kl_penalty_rewards(
        torch.tensor([10.0, 3.0]), logprobs, ref_logprobs, mask, kl_coef=0.1
    )
    # Row 0: -0.1 (-1 + 1.5) = -0.05, then -0.1 (-2 + 1) + 10 = 10.1, then padding 0.
    # Row 1: policy equals reference, so only the score at the third token.
    assert close(rewards, [[-0.05, 10.1, 0.0], [0.0, 0.0, 3.0]])
    assert not rewards.requires_grad


def test_kl_penalty_rewards_gives_an_empty_row_nothing() -> None:
    mask = torch.zeros(1, 2, dtype=torch.bool)
    rewards = kl_penalty_rewards(
        torch.tensor([4.0]), torch.zeros(1, 2), torch.zeros(1, 2), mask, kl_coef=0.1
    )
    assert torch.equal(rewards, torch.zeros(1, 2))


def test_approx_kl_k1_and_k3_on_hand_computed_ratios() -> None:
    # Token 0: log r = log 2; token 1: r = 1; token 2 is padding.
    logprobs = torch.tensor([[math.log(2) - 1, -1.0, NAN]], requires_grad=True)
    old_logprobs, mask = torch.tensor([[-1.0, -1.0, 1e9]]), torch.tensor([[True, True, False]])
    k1, k3 = approx_kl(logprobs, old_logprobs, mask)
    assert close(k1, -math.log(2) / 2)  # mean(-log 2, 0)
    assert close(k3, (1 - math.log(2)) / 2)  # mean((2 - 1) - log 2, 0)
    assert not k1.requires_grad and not k3.requires_grad


def test_gae_on_a_hand_computed_three_token_example_with_padding() -> None:
    # gamma = lam = 0.5, so gamma lam = 0.25; the fourth token is padding (NaN, must not matter).
    # delta_2 = 2 + 0 - 1.5 = 0.5 (no bootstrap after the last token)      A_2 = 0.5
    # delta_1 = 0 + 0.5 * 1.5 - 1.0 = -0.25                             A_1 = -0.25 + 0.25 * 0.5
    # delta_0 = 1 + 0.5 * 1.0 - 0.5 = 1.0                                A_0 = 1.0 + 0.25 * -0.125
    rewards = torch.tensor([[1.0, 0.0, 2.0, NAN]])
    values = torch.tensor([[0.5, 1.0, 1.5, NAN]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False]])
    advantages, returns = gae(rewards, values, mask, gamma=0.5, lam=0.5)
    assert close(advantages, [[0.96875, -0.125, 0.5, 0.0]])
    assert close(returns, [[1.46875, 0.875, 2.0, 0.0]])
    assert not advantages.requires_grad and not returns.requires_grad


def test_gae_with_lambda_one_and_gamma_one_gives_reward_to_go_minus_value() -> None:
    rewards, values = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 0.5]])
    advantages, returns = gae(
        rewards, values, torch.ones(1, 2, dtype=torch.bool), gamma=1.0, lam=1.0
    )
    assert close(advantages, [[2.5, 1.5]])
    assert close(returns, [[3.0, 2.0]])


def test_whiten_standardises_over_masked_positions_only() -> None:
    # Values 1, 2, 3: mean 2, unbiased variance ((1 + 0 + 1) / 2) = 1, so -1, 0, 1.
    values, mask = (
        torch.tensor([[1.0, 2.0, NAN], [3.0, 1e9, NAN]]),
        torch.tensor([[1, 1, 0], [1, 0, 0]]) > 0,
    )
    assert close(whiten(values, mask), [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert close(whiten(values, mask, shift_mean=False), [[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])


def test_ppo_policy_loss_clips_in_the_direction_of_the_advantage() -> None:
    # Ratios 1.5, 1.5, 0.5, 0.5 with advantages +1, -1, +1, -1 and eps 0.2:
    # (+1, 1.5): max(-1.5, -1.2) = -1.2, clipped (no gain from raising it further).
    # (-1, 1.5): max(1.5, 1.2) = 1.5, not clipped (the bad action is still pushed down).
    # (+1, 0.5): max(-0.5, -0.8) = -0.5, not clipped.
    # (-1, 0.5): max(0.5, 0.8) = 0.8, clipped.
    ratios = torch.tensor([[1.5, 1.5, 0.5, 0.5, NAN]])
    logprobs = ratios.log().requires_grad_()
    old_logprobs = torch.zeros(1, 5, requires_grad=True)
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1e9]], requires_grad=True)
    mask = torch.tensor([[True, True, True, True, False]])
    loss, clip_fraction = ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2)
    assert close(loss, (-1.2 + 1.5 - 0.5 + 0.8) / 4)
    assert close(clip_fraction, 0.5) and not clip_fraction.requires_grad
    torch.autograd.backward(loss)
    assert logprobs.grad is not None
    # d/d logprob of -A r is -A r / 4; clipped and padded tokens get no gradient.
    assert close(logprobs.grad, [[0.0, 1.5 / 4, -0.5 / 4, 0.0, 0.0]])
    assert old_logprobs.grad is None and advantages.grad is None


def test_ppo_policy_loss_at_ratio_one_is_minus_the_mean_advantage() -> None:
    advantages, mask = torch.tensor([[2.0, -1.0]]), torch.ones(1, 2, dtype=torch.bool)
    loss, clip_fraction = ppo_policy_loss(
        torch.zeros(1, 2), torch.zeros(1, 2), advantages, mask, clip_range=0.2
    )
    assert close(loss, -0.5) and close(clip_fraction, 0.0)


def test_value_loss_takes_the_larger_of_clipped_and_unclipped_errors() -> None:
    # eps 0.5, old value 0 everywhere.
    # token 0: v = 2, R = 2: clipped v = 0.5, errors 0 and 2.25 -> 2.25 (clipped wins).
    # token 1: v = 1, R = -1: clipped v = 0.5, errors 4 and 2.25 -> 4.
    # loss = 0.5 * (2.25 + 4) / 2 = 1.5625.
    values = torch.tensor([[2.0, 1.0, NAN]], requires_grad=True)
    old_values, returns = (
        torch.zeros(1, 3, requires_grad=True),
        torch.tensor([[2.0, -1.0, 1e9]], requires_grad=True),
    )
    mask = torch.tensor([[True, True, False]])
    loss, clip_fraction = value_loss(values, old_values, returns, mask, clip_range_value=0.5)
    assert close(loss, 1.5625) and close(clip_fraction, 0.5)
    torch.autograd.backward(loss)
    assert values.grad is not None
    # Token 0's clipped term is flat in v; token 1: 0.5 * 2 (v - R) / 2 = 1.
    assert close(values.grad, [[0.0, 1.0, 0.0]])
    assert old_values.grad is None and returns.grad is None


def test_entropy_of_uniform_and_certain_distributions_ignoring_padding() -> None:
    # Uniform over 4 tokens: log 4; one token far more likely: about 0. Padding is NaN.
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0], [NAN] * 4]], requires_grad=True
    )
    mask = torch.tensor([[True, True, False]])
    entropy = entropy_from_logits(logits, mask)
    assert close(entropy, math.log(4) / 2)
    torch.autograd.backward(entropy)
    assert logits.grad is not None and torch.equal(logits.grad[0, 2], torch.zeros(4))


# DPO.


def test_token_logprobs_scores_each_token_from_the_previous_position() -> None:
    # Vocabulary 2. Position 0's logits (log 1, log 3) predict token 1: log 3/4.
    # Position 1's logits (0, 0) predict token 0: log 1/2. Position 2's logits predict nothing.
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0], [NAN, NAN]]])
    tokens = torch.tensor([[0, 1, 0]])
    assert close(token_logprobs(logits[:, :2], tokens[:, :2]), [[0.0, math.log(0.75)]])
    logits[0, 2] = 0.0
    assert close(token_logprobs(logits, tokens), [[0.0, math.log(0.75), math.log(0.5)]])


def test_sequence_logprobs_sums_over_the_masked_tokens() -> None:
    # Same example; the prompt is token 0 (mask False), the response tokens 1 and 2, and a pad
    # token 3 whose predicting logits (position 2) are NaN.
    logits = torch.tensor(
        [[[0.0, math.log(3)], [0.0, 0.0], [NAN, NAN], [NAN, NAN]]], requires_grad=True
    )
    tokens = torch.tensor([[0, 1, 0, 1]])
    mask = torch.tensor([[False, True, True, False]])
    logps = sequence_logprobs(logits, tokens, mask)
    assert close(logps, [math.log(0.75) + math.log(0.5)])
    torch.autograd.backward(logps)
    assert logits.grad is not None and torch.equal(logits.grad[0, 2:], torch.zeros(2, 2))


def test_dpo_loss_on_a_hand_computed_pair() -> None:
    # beta 0.1, log ratios +2 (chosen) and -2 (rejected): z = 0.4, loss softplus(-0.4).
    policy_chosen, policy_rejected = torch.tensor([-3.0], requires_grad=True), torch.tensor([-7.0])
    ref_chosen = torch.tensor([-5.0], requires_grad=True)
    loss, chosen, rejected = dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, torch.tensor([-5.0]), beta=0.1
    )
    assert close(loss, softplus(-0.4))
    assert close(chosen, [0.2]) and close(rejected, [-0.2])
    assert not chosen.requires_grad and not rejected.requires_grad
    torch.autograd.backward(loss)
    assert policy_chosen.grad is not None and policy_chosen.grad.item() < 0
    assert ref_chosen.grad is None


def test_dpo_loss_falls_as_the_policy_prefers_chosen_more_than_the_reference() -> None:
    zeros = torch.zeros(1)

    def loss_at(chosen_logp: float) -> float:
        return dpo_loss(torch.tensor([chosen_logp]), zeros, zeros, zeros, beta=0.5)[0].item()

    assert loss_at(2.0) < loss_at(0.0) < loss_at(-2.0)
    assert loss_at(0.0) == pytest.approx(math.log(2))


def test_conservative_dpo_mixes_in_the_flipped_label() -> None:
    # z = 0.4 as above, eps 0.1: 0.9 softplus(-0.4) + 0.1 softplus(0.4).
    ones = torch.ones(1)
    loss, _, _ = dpo_loss(2 * ones, -2 * ones, 0 * ones, 0 * ones, beta=0.1, label_smoothing=0.1)
    assert close(loss, 0.9 * softplus(-0.4) + 0.1 * softplus(0.4))
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(ones, ones, ones, ones, beta=0.1, label_smoothing=0.5)


# KL controllers.


def test_adaptive_kl_controller_grows_beta_by_the_paper_gain_each_iteration_above_target() -> None:
    # Ziegler et al. 2019: KL twice the target gives e = 1, clipped to 0.2, and K_beta = 0.1
    # multiplies beta by 1.02 per PPO iteration.
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, gain=0.1)
    for _ in range(10):
        controller.update(current_kl=12.0)
    assert controller.value == pytest.approx(0.1 * (1 + 0.1 * 0.2) ** 10, rel=1e-12)


def test_adaptive_kl_controller_shrinks_beta_symmetrically_below_target() -> None:
    # KL half the target: e = -0.5, clipped to -0.2.
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, gain=0.1)
    for _ in range(10):
        controller.update(current_kl=3.0)
    assert controller.value == pytest.approx(0.1 * (1 - 0.1 * 0.2) ** 10, rel=1e-12)


def test_adaptive_kl_controller_keeps_beta_at_target_and_steps_in_proportion_near_it() -> None:
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, gain=0.1)
    for _ in range(10):
        controller.update(current_kl=6.0)
    assert controller.value == 0.1
    controller.update(current_kl=6.6)  # e = 0.1, inside the clip
    assert controller.value == pytest.approx(0.1 * 1.01, rel=1e-12)


@pytest.mark.parametrize("gain", [0.0, -0.1, 1.5])
def test_adaptive_kl_controller_rejects_a_gain_outside_zero_to_one(gain: float) -> None:
    with pytest.raises(ValueError, match="gain"):
        AdaptiveKLController(init_kl_coef=0.1, target=6.0, gain=gain)
    with pytest.raises(ValueError, match="positive"):
        AdaptiveKLController(init_kl_coef=0.1, target=0.0, gain=0.1)


def test_fixed_kl_controller_never_moves() -> None:
    controller = FixedKLController(0.05)
    controller.update(current_kl=100.0)
    assert controller.value == 0.05


def test_dpo_loss_weights_pairs() -> None:
    # Per-pair losses softplus(-z) for z = 0.1 * (1 - 0) and 0.1 * (-1 - 0): weights 3 and 1.
    chosen = torch.tensor([1.0, -1.0])
    zeros = torch.zeros(2)
    loss, _, _ = dpo_loss(chosen, zeros, zeros, zeros, beta=0.1, weights=torch.tensor([3.0, 1.0]))
    expected = (3 * F.softplus(torch.tensor(-0.1)) + F.softplus(torch.tensor(0.1))) / 4
    assert torch.isclose(loss, expected)
