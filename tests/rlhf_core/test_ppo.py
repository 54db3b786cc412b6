"""PPO: cheap invariants of the rollout and the update on tiny models, and one run that learns."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf_core import ppo_trainer
from rlhf_core import rollout as rollout_module
from rlhf_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rlhf_core.generation import generate, left_pad
from rlhf_core.palm import PaLM, PaLMConfig
from rlhf_core.ppo import (
    PPOConfig,
    PPOError,
    PPOPolicy,
    accumulate_minibatch,
    minibatches,
    ppo_loss,
    ppo_update,
)
from rlhf_core.ppo_command import add_ppo_command, read_prompts
from rlhf_core.ppo_trainer import train_ppo
from rlhf_core.pretrain import MixedPrecision
from rlhf_core.reward import critic_from_reward
from rlhf_core.reward_io import save_reward_model
from rlhf_core.rollout import (
    Rollout,
    Scorer,
    build_rollout,
    collect_rollout,
    ends_with_eos,
    penalise_blank,
    penalise_missing_eos,
    recompute,
    response_mask,
)
from rlhf_core.simulation import LetterShare
from rlhf_core.tokenizer import Tokenizer
from rlhf_core.training import Metrics, NoCallback
from tests.rlhf_core.test_checkpoint import flip_a_byte_inside_a_record
from tests.rlhf_core.training_data import plumbing_reward_model

TOKENIZER = Tokenizer.byte_fallback()
EOS, PAD = TOKENIZER.eos_id, TOKENIZER.pad_id
MODEL = PaLMConfig(num_tokens=258, dim=32, depth=2, heads=2, dim_head=16)
CONFIG = PPOConfig(rollout_batch_size=4, minibatch_size=2, max_new_tokens=6, lr=1e-3)
PROMPTS = ["ab", "hello there", "x", "eeee"]


def tiny_policy(seed: int = 0, lora_rank: int | None = None) -> PPOPolicy:
    torch.manual_seed(seed)
    policy = PPOPolicy(PaLM(MODEL), lora_rank=lora_rank)
    torch.nn.init.normal_(policy.value_head.weight, std=0.1)  # a critic that says something
    return policy


def constant_scorer(value: float) -> Scorer:
    def score(prompts: list[str], responses: list[str]) -> Tensor:
        return torch.full((len(prompts),), value)

    return score


def hand_built_rollout(policy: PPOPolicy, config: PPOConfig = CONFIG) -> Rollout:
    """Prompts of 2 and 4 tokens; responses of 3 tokens ending in EOS, and of 5 without EOS."""
    prompt = left_pad([[10, 11], [20, 21, 22, 23]], PAD)
    tokens = torch.tensor([[30, 31, EOS, PAD, PAD], [40, 41, 42, 43, 44]])
    lengths = torch.tensor([3, 5])
    response = (tokens, response_mask(lengths, 5))
    scores = penalise_missing_eos(torch.tensor([0.5, 0.5]), ends_with_eos(tokens, lengths, EOS), 1)
    return build_rollout(policy, prompt, response, scores, kl_coef=0.1, config=config)


def with_garbage_outside_masks(rollout: Rollout) -> Rollout:
    """Junk in the padding tokens and in every target outside the response mask."""
    mask = rollout.response_mask
    spoiled = {
        name: torch.where(mask, getattr(rollout, name), 1e4)
        for name in ("logprobs", "values", "ref_logprobs", "rewards", "advantages", "returns")
    }
    return dataclasses.replace(
        rollout,
        prompt_tokens=torch.where(rollout.prompt_mask, rollout.prompt_tokens, 99),
        response_tokens=torch.where(mask, rollout.response_tokens, 77),
        **spoiled,
    )


def test_the_response_mask_covers_the_generated_tokens_up_to_and_including_eos() -> None:
    rollout = hand_built_rollout(tiny_policy())
    assert rollout.response_mask.tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, True],
    ]
    assert rollout.prompt_mask.tolist() == [[False, False, True, True], [True, True, True, True]]
    tokens, mask = rollout.sequences()
    assert tokens[0, mask[0]].tolist() == [10, 11, 30, 31, EOS]
    assert tokens[1, mask[1]].tolist() == [20, 21, 22, 23, 40, 41, 42, 43, 44]


def test_each_rows_logprobs_and_values_are_those_of_the_row_alone_unpadded() -> None:
    policy = tiny_policy().eval()
    rollout = hand_built_rollout(policy)
    for row, (prompt, response) in enumerate(
        [([10, 11], [30, 31, EOS]), ([20, 21, 22, 23], [40, 41, 42, 43, 44])]
    ):
        alone = torch.tensor([prompt + response])
        hidden = policy.policy(alone, return_hidden=True)
        # The state before response token j is the column just before it.
        before = hidden[0, len(prompt) - 1 : -1]
        logprobs = F.log_softmax(policy.policy.logits_from_hidden(before), dim=-1)
        expected = logprobs.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
        values = policy.value_head(before).squeeze(-1)
        count = len(response)
        torch.testing.assert_close(rollout.logprobs[row, :count], expected)
        torch.testing.assert_close(rollout.values[row, :count], values)
        assert (rollout.logprobs[row, count:] == 0).all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recomputed_logprobs_match_those_of_generation_for_prompts_of_different_lengths(
    temperature: float,
) -> None:
    policy = tiny_policy()
    prompts = [[10, 11], [20, 21, 22, 23, 24]]
    generation = generate(
        policy.policy,
        prompts,
        max_new_tokens=6,
        temperature=temperature,
        eos_token_id=EOS,
        pad_token_id=PAD,
        seed=1,
    )
    mask = response_mask(generation.lengths, 6)
    rollout = build_rollout(
        policy,
        left_pad(prompts, PAD),
        (generation.tokens, mask),
        torch.zeros(2),
        kl_coef=0.1,
        config=dataclasses.replace(CONFIG, temperature=temperature),
    )
    # Another numerical path (cached decoding), so close rather than equal.
    torch.testing.assert_close(rollout.logprobs, generation.logprobs, atol=1e-5, rtol=1e-5)


def test_the_ratio_is_exactly_one_on_the_first_minibatch_of_the_first_epoch() -> None:
    policy = tiny_policy()
    rollout, _, _ = collect_rollout(
        policy, constant_scorer(0.0), TOKENIZER, PROMPTS, kl_coef=0.1, config=CONFIG
    )
    first = next(minibatches(rollout.rows, CONFIG, torch.Generator().manual_seed(0)))
    batch = rollout.select(first)
    policy.train()
    out = policy(*batch.sequences(), batch.prompt_width)
    assert torch.equal(torch.where(batch.response_mask, out.logprobs, 0.0), batch.logprobs)
    assert float(ppo_loss(policy, batch, CONFIG).approx_kl) == 0.0


def loss_and_grads(policy: PPOPolicy, rollout: Rollout) -> tuple[Tensor, list[Tensor]]:
    policy.zero_grad(set_to_none=True)
    loss = ppo_loss(policy, rollout, dataclasses.replace(CONFIG, entropy_coef=0.01)).loss
    torch.autograd.backward(loss)
    grads = [p.grad.clone() for p in policy.trainable_parameters() if p.grad is not None]
    return loss.detach(), grads


def test_padding_and_masked_targets_never_affect_the_loss_or_its_gradient() -> None:
    policy = tiny_policy()
    rollout = hand_built_rollout(policy)
    clean_loss, clean_grads = loss_and_grads(policy, rollout)
    dirty_loss, dirty_grads = loss_and_grads(policy, with_garbage_outside_masks(rollout))
    torch.testing.assert_close(dirty_loss, clean_loss)
    for dirty, clean in zip(dirty_grads, clean_grads, strict=True):
        torch.testing.assert_close(dirty, clean)


def test_each_loss_term_enters_with_its_sign() -> None:
    policy = tiny_policy()
    batch = hand_built_rollout(policy)
    plain = ppo_loss(policy, batch, dataclasses.replace(CONFIG, vf_coef=0.0))
    assert torch.equal(plain.loss.detach(), plain.policy_loss)
    with_value = ppo_loss(policy, batch, dataclasses.replace(CONFIG, vf_coef=2.0)).loss.detach()
    torch.testing.assert_close(with_value, plain.policy_loss + 2.0 * plain.value_loss)
    bonus = ppo_loss(policy, batch, dataclasses.replace(CONFIG, vf_coef=0.0, entropy_coef=0.5))
    # An entropy bonus lowers the loss: more entropy is better.
    torch.testing.assert_close(bonus.loss.detach(), plain.policy_loss - 0.5 * plain.entropy)
    assert plain.entropy > 0


def test_the_kl_penalty_compares_with_the_reference_and_the_score_lands_on_the_last_token() -> None:
    policy = tiny_policy()
    assert policy.reference is not None
    reference = [p.clone() for p in policy.reference.parameters()]
    with torch.no_grad():
        for parameter in policy.policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    rollout = hand_built_rollout(policy)
    assert not torch.allclose(rollout.logprobs, rollout.ref_logprobs)
    log_ratio = rollout.logprobs - rollout.ref_logprobs
    assert torch.equal(rollout.rewards[1, :4], -0.1 * log_ratio[1, :4])
    torch.testing.assert_close(rollout.rewards[0, 2], -0.1 * log_ratio[0, 2] + 0.5)
    torch.testing.assert_close(rollout.rewards[1, 4], -0.1 * log_ratio[1, 4] - 0.5)
    assert (rollout.rewards[0, 3:] == 0).all()
    for before, after in zip(reference, policy.reference.parameters(), strict=True):
        assert torch.equal(before, after)


def test_a_response_without_eos_has_the_penalty_subtracted_from_its_score() -> None:
    rollout = hand_built_rollout(tiny_policy())
    assert rollout.scores.tolist() == [0.5, -0.5]
    no_penalty = penalise_missing_eos(torch.tensor([0.5, 0.5]), torch.tensor([True, False]), None)
    assert no_penalty.tolist() == [0.5, 0.5]
    # When no response ends, their scores still tell them apart: PPO can still learn.
    unended = penalise_missing_eos(torch.tensor([0.25, 0.75]), torch.tensor([False, False]), 1.0)
    assert unended.tolist() == [-0.75, -0.25]


def test_a_blank_response_scores_below_every_answer_beside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EOS at once, only white space then EOS, an answer then EOS, an answer without EOS."""
    rows = [[EOS], [*TOKENIZER.encode(" \n"), EOS], [*TOKENIZER.encode("hi"), EOS], [104, 105]]
    width = max(map(len, rows))
    tokens = torch.tensor([row + [PAD] * (width - len(row)) for row in rows])
    lengths = torch.tensor([len(row) for row in rows])
    monkeypatch.setattr(rollout_module, "sample_responses", lambda *_: (tokens, lengths))
    config = dataclasses.replace(CONFIG, normalization_samples=0)

    def blank_pleases(prompts: list[str], responses: list[str]) -> Tensor:
        """A scorer that never saw a blank answer and likes it best."""
        return torch.tensor([5.0 if not text.strip() else 0.5 for text in responses])

    rollout, sampled, _ = collect_rollout(
        tiny_policy(), blank_pleases, TOKENIZER, PROMPTS, kl_coef=0.1, config=config
    )
    assert sampled.ended.tolist() == [True, True, True, False]
    assert sampled.blank.tolist() == [True, True, False, False]
    # The lowest score of the batch (the unended answer's, 0.5 - 1) minus the penalty.
    assert rollout.scores.tolist() == [-1.5, -1.5, 0.5, -0.5]
    unpenalised = penalise_blank(torch.tensor([5.0, 0.5]), torch.tensor([True, False]), None)
    assert unpenalised.tolist() == [5.0, 0.5]
    assert ppo_trainer.rollout_metrics(rollout, sampled)["blank_rate"] == 0.5


def test_value_gradients_reach_the_critic_and_never_the_policy() -> None:
    policy = tiny_policy()
    rollout = hand_built_rollout(policy)
    out = policy(*rollout.sequences(), rollout.prompt_width)
    out.values.sum().backward()
    assert all(p.grad is None for p in policy.policy.parameters())
    assert all(p.grad is not None for p in policy.critic.parameters())
    assert not {p.data_ptr() for p in policy.critic.parameters()} & {
        p.data_ptr() for p in policy.policy.parameters()
    }


def test_scores_are_normalised_by_the_initial_policys_samples() -> None:
    def far_from_zero(prompts: list[str], responses: list[str]) -> Tensor:
        return torch.tensor([100.0 + 10.0 * len(response) for response in responses])

    config = dataclasses.replace(CONFIG, steps=2, normalization_samples=16, no_eos_penalty=None)
    result = train_ppo(tiny_policy(), far_from_zero, TOKENIZER, PROMPTS, config)
    assert all(abs(row["score"]) < 3.0 for row in result.history)
    raw = train_ppo(
        tiny_policy(),
        far_from_zero,
        TOKENIZER,
        PROMPTS,
        dataclasses.replace(config, normalization_samples=0),
    )
    assert all(row["score"] > 100.0 for row in raw.history)


def test_prompts_keep_only_their_last_max_prompt_length_tokens() -> None:
    config = dataclasses.replace(CONFIG, max_prompt_length=3)
    rollout, sampled, _ = collect_rollout(
        tiny_policy(), constant_scorer(1.0), TOKENIZER, PROMPTS, kl_coef=0.1, config=config
    )
    assert rollout.prompt_width == 3
    assert sampled.prompt_ids[1] == TOKENIZER.encode("hello there")[-3:]


def snapshot(module: torch.nn.Module) -> dict[str, Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def run_update(policy: PPOPolicy, config: PPOConfig = CONFIG) -> dict[str, float]:
    rollout, _, _ = collect_rollout(
        policy,
        constant_scorer(1.0),
        TOKENIZER,
        PROMPTS,
        kl_coef=0.1,
        config=config,
        generator=torch.Generator().manual_seed(0),
    )
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=config.lr)
    return ppo_update(policy, optimizer, rollout, config, torch.Generator().manual_seed(0))


def test_a_step_changes_the_trainable_parameters_and_leaves_the_reference_alone() -> None:
    policy = tiny_policy()
    before = snapshot(policy)
    run_update(policy)
    after = snapshot(policy)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert "value_head.weight" in changed
    assert any(name.startswith("policy.layers.") for name in changed)
    assert any(name.startswith("critic.layers.") for name in changed)
    assert not any(name.startswith("reference.") for name in changed)


def test_with_lora_only_adapters_and_value_head_change_and_the_reference_is_the_base() -> None:
    policy = tiny_policy(lora_rank=4)
    rollout = hand_built_rollout(policy)
    before = snapshot(policy)
    run_update(policy)
    after = snapshot(policy)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    trained = ("adapters.policy", "value_head", "critic.")
    assert changed and all(any(part in name for part in trained) for name in changed)
    assert any("adapters.policy" in name for name in changed)
    tokens, mask = rollout.sequences()
    ref_after = policy.reference_logprobs(tokens, mask, rollout.prompt_width)
    assert torch.equal(torch.where(rollout.response_mask, ref_after, 0.0), rollout.ref_logprobs)
    new = policy(tokens, mask, rollout.prompt_width).logprobs.detach()
    assert not torch.allclose(torch.where(rollout.response_mask, new, 0.0), rollout.ref_logprobs)


def test_gradient_clipping_limits_the_step_and_reports_the_norm_before() -> None:
    policy = tiny_policy()
    config = dataclasses.replace(CONFIG, minibatch_size=4, ppo_epochs=1, grad_clip=1e-3)
    rollout = hand_built_rollout(policy, config)
    before = [p.detach().clone() for p in policy.trainable_parameters()]
    sgd = torch.optim.SGD(policy.trainable_parameters(), lr=1.0)
    metrics = ppo_update(policy, sgd, rollout, config, torch.Generator().manual_seed(0))
    step = torch.cat(
        [
            (p.detach() - b).flatten()
            for p, b in zip(policy.trainable_parameters(), before, strict=True)
        ]
    )
    assert metrics["grad_norm"] > 1e-3
    torch.testing.assert_close(step.norm().item(), 1e-3, rtol=1e-3, atol=0.0)


def test_gradient_accumulation_equals_the_whole_minibatch_with_unequal_lengths() -> None:
    policy = tiny_policy()
    batch = hand_built_rollout(policy)  # responses of 3 and 5 tokens
    grads = []
    for accum in (1, 2):
        policy.zero_grad(set_to_none=True)
        config = dataclasses.replace(CONFIG, grad_accum_steps=accum, entropy_coef=0.01)
        stats = accumulate_minibatch(policy, batch, config)
        grads.append(
            ([p.grad.clone() for p in policy.trainable_parameters() if p.grad is not None], stats)
        )
    (whole, whole_stats), (accumulated, accumulated_stats) = grads
    for a, b in zip(accumulated, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert accumulated_stats["loss"] == pytest.approx(whole_stats["loss"], rel=1e-5)


def test_a_reward_model_drives_the_run_and_its_copy_is_the_critic() -> None:
    torch.manual_seed(1)
    reward_model = plumbing_reward_model(MODEL)
    critic = critic_from_reward(reward_model)
    assert all(
        torch.equal(a, b)
        for a, b in zip(critic[0].parameters(), reward_model.backbone.parameters(), strict=True)
    )
    policy = PPOPolicy(PaLM(MODEL), critic)
    config = dataclasses.replace(CONFIG, steps=1, no_eos_penalty=None)
    result = train_ppo(policy, reward_model, TOKENIZER, PROMPTS, config)
    assert math.isfinite(result.metrics["score"]) and result.metrics["score_std"] > 0.0
    assert not all(
        torch.equal(a, b)
        for a, b in zip(critic[0].parameters(), reward_model.backbone.parameters(), strict=True)
    )


def test_a_tiny_target_kl_stops_the_update_after_the_first_step() -> None:
    metrics = run_update(tiny_policy(), dataclasses.replace(CONFIG, target_kl=1e-12))
    assert metrics["early_stopped"] == 1.0
    assert metrics["optimizer_steps"] == 1
    full = run_update(tiny_policy())
    assert full["early_stopped"] == 0.0
    assert full["optimizer_steps"] == CONFIG.ppo_epochs * 2


def test_the_config_rejects_inconsistent_batch_sizes() -> None:
    with pytest.raises(PPOError, match="multiple of minibatch_size"):
        PPOConfig(rollout_batch_size=6, minibatch_size=4)


@pytest.mark.parametrize("kl_gain", [0.0, 1.5])
def test_the_config_rejects_a_kl_gain_outside_zero_to_one(kl_gain: float) -> None:
    with pytest.raises(PPOError, match=r"kl_gain in \(0, 1\]"):
        PPOConfig(kl_gain=kl_gain)


def test_the_config_rejects_an_unknown_mixed_precision() -> None:
    with pytest.raises(PPOError, match="mixed_precision must be one of auto, bf16, no"):
        PPOConfig(mixed_precision="fp16")  # type: ignore[arg-type]


@dataclasses.dataclass
class PrecisionRecord:
    """What one PPO iteration ran in: output dtypes of a trunk nn.Linear per phase, whether the
    scorer ran under autocast, the rollout the update got, and the gradients' dtypes."""

    linear: dict[str, set[torch.dtype]] = dataclasses.field(default_factory=dict)
    scorer_autocast: bool | None = None
    rollout: Rollout | None = None
    grads: set[torch.dtype] = dataclasses.field(default_factory=set)


def record_precision(
    policy: PPOPolicy, mixed_precision: MixedPrecision, monkeypatch: pytest.MonkeyPatch
) -> PrecisionRecord:
    """One `train_ppo` iteration on the CPU with hooks telling the phases apart."""
    record, phase = PrecisionRecord(), ["other"]

    def hook(name: str | None) -> Callable[..., None]:
        def store(module: torch.nn.Module, inputs: object, output: Tensor) -> None:
            record.linear.setdefault(name or phase[0], set()).add(output.dtype)

        return store

    def in_phase(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            phase[0] = name
            if name == "update":
                record.rollout = args[2]
            try:
                return function(*args, **kwargs)
            finally:
                phase[0] = "other"

        return wrapped

    assert policy.reference is not None
    for model, name in ((policy.policy, None), (policy.reference, "reference")):
        linear = model.layers[0].ff_out
        assert isinstance(linear, torch.nn.Linear)
        linear.register_forward_hook(hook(name))
    for parameter in policy.trainable_parameters():
        parameter.register_post_accumulate_grad_hook(  # type: ignore[no-untyped-call]
            lambda parameter: record.grads.add(parameter.grad.dtype)
        )
    monkeypatch.setattr(rollout_module, "generate", in_phase("generation", generate))
    monkeypatch.setattr(rollout_module, "recompute", in_phase("recomputation", recompute))
    monkeypatch.setattr(ppo_trainer, "ppo_update", in_phase("update", ppo_update))

    def scorer(prompts: list[str], responses: list[str]) -> Tensor:
        record.scorer_autocast = torch.is_autocast_enabled("cpu")
        return torch.full((len(prompts),), 0.5, dtype=torch.bfloat16)  # float32 from here on

    config = dataclasses.replace(CONFIG, steps=1, ppo_epochs=1, mixed_precision=mixed_precision)
    train_ppo(policy, scorer, TOKENIZER, PROMPTS, config)
    return record


ROLLOUT_MATHS = ("logprobs", "ref_logprobs", "values", "scores", "rewards", "advantages", "returns")


@pytest.mark.usefixtures("one_thread")
def test_bf16_autocasts_the_trunk_everywhere_while_ppo_maths_weights_and_grads_stay_float32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = tiny_policy()
    record = record_precision(policy, "bf16", monkeypatch)
    phases = ("generation", "recomputation", "reference", "update")
    assert record.linear == {name: {torch.bfloat16} for name in phases}
    assert record.scorer_autocast is True
    assert record.rollout is not None
    assert {name: getattr(record.rollout, name).dtype for name in ROLLOUT_MATHS} == dict.fromkeys(
        ROLLOUT_MATHS, torch.float32
    )
    assert record.grads == {torch.float32}
    assert {parameter.dtype for parameter in policy.parameters()} == {torch.float32}


@pytest.mark.usefixtures("one_thread")
def test_without_mixed_precision_nothing_runs_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    record = record_precision(tiny_policy(), "no", monkeypatch)
    phases = ("generation", "recomputation", "reference", "update")
    assert record.linear == {name: {torch.float32} for name in phases}
    assert record.scorer_autocast is False
    assert record.grads == {torch.float32}


def test_train_ppo_reports_every_metric_and_a_callback_can_stop_it() -> None:
    class StopAfterTwo(NoCallback):
        def on_step(self, metrics: Metrics) -> bool:
            return metrics["step"] < 2

    config = dataclasses.replace(CONFIG, steps=5)
    result = train_ppo(
        tiny_policy(), constant_scorer(0.0), TOKENIZER, PROMPTS, config, callback=StopAfterTwo()
    )
    assert result.steps == 2 and result.stopped_early
    expected = {
        "score",
        "kl",
        "kl_coef",
        "entropy",
        "clip_fraction",
        "value_loss",
        "explained_variance",
        "response_length",
        "approx_kl",
        "grad_norm",
        "generation_seconds",
        "scoring_seconds",
        "learning_seconds",
    }
    assert expected <= result.metrics.keys()


def test_the_kl_coefficient_falls_two_percent_per_iteration_while_far_below_its_target() -> None:
    # The KL of a few steps is far below a target of 1e6 nats: e clips to -0.2 every
    # iteration, and the default gain of 0.1 takes 2% off beta each time, whatever the batch.
    config = dataclasses.replace(CONFIG, steps=4, init_kl_coef=0.1, kl_target=1e6)
    result = train_ppo(tiny_policy(), constant_scorer(0.0), TOKENIZER, PROMPTS, config)
    coefficients = [metrics["kl_coef"] for metrics in result.history]
    assert coefficients == pytest.approx([0.1 * 0.98**step for step in range(4)], rel=1e-9)


def test_a_run_stopped_and_resumed_ends_bit_for_bit_as_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    config = dataclasses.replace(CONFIG, steps=4, checkpoint_every=3)
    whole = tiny_policy()
    whole_result = train_ppo(whole, constant_scorer(0.5), TOKENIZER, PROMPTS, config)

    class StopAtTwo(NoCallback):
        def on_step(self, metrics: Metrics) -> bool:
            return metrics["step"] != 2

    state_file, metrics_file = tmp_path / "state.pt", tmp_path / "metrics.jsonl"
    run = functools.partial(
        train_ppo, state_file=state_file, metrics_file=metrics_file, config=config
    )
    first = run(tiny_policy(), constant_scorer(0.5), TOKENIZER, PROMPTS, callback=StopAtTwo())
    assert first.stopped_early and first.steps == 2
    resumed = tiny_policy(seed=5)  # whatever it starts from, the state file replaces it
    result = run(resumed, constant_scorer(0.5), TOKENIZER, PROMPTS)
    assert result.steps == 4 and [m["step"] for m in result.history] == [3, 4]
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    untimed = [k for k in whole_result.metrics if not k.endswith("seconds")]
    assert {k: result.metrics[k] for k in untimed} == {k: whole_result.metrics[k] for k in untimed}
    logged = [json.loads(line)["step"] for line in metrics_file.read_text().splitlines()]
    assert logged == [1, 2, 3, 4]


def test_a_corrupt_state_file_is_refused_rather_than_resumed(tmp_path: Path) -> None:
    state_file = tmp_path / "state.pt"
    one_step = dataclasses.replace(CONFIG, steps=1)
    train_ppo(
        tiny_policy(), constant_scorer(0.5), TOKENIZER, PROMPTS, one_step, state_file=state_file
    )
    record = flip_a_byte_inside_a_record(state_file)
    with pytest.raises(CheckpointError, match=re.escape(f"record '{record}' does not match")):
        train_ppo(
            tiny_policy(),
            constant_scorer(0.5),
            TOKENIZER,
            PROMPTS,
            dataclasses.replace(CONFIG, steps=2),
            state_file=state_file,
        )


def run_ppo_command(*argv: str) -> None:
    parser = argparse.ArgumentParser()
    add_ppo_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ppo", *argv])
    args.run(args)


def test_the_ppo_command_trains_exports_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "policy", PaLM(MODEL), TOKENIZER)
    save_reward_model(tmp_path / "reward", plumbing_reward_model(MODEL), TOKENIZER)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [*PROMPTS, ""]))
    out = tmp_path / "run"
    common = ["--policy", str(tmp_path / "policy"), "--reward", str(tmp_path / "reward")]
    common += ["--prompts", str(prompts), "--out", str(out), "--lora-rank", "2"]
    common += ["--mixed-precision", "no"]
    quick = ["--rollout-batch-size", "4", "--minibatch-size", "2", "--max-new-tokens", "4"]
    run_ppo_command(*common, *quick, "--steps", "2")
    summary = capsys.readouterr().out
    assert summary.startswith("PPO: 2 steps; last iteration: mean score ")
    assert ", KL " in summary and ", eos_rate " in summary
    exported = load_checkpoint(out / "final")
    assert not any("adapters" in name for name in exported.model.state_dict())
    assert exported.metadata.extra["ppo"]["mixed_precision"] == "no"  # not the default, auto
    run_ppo_command(*common, *quick, "--steps", "3")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_the_ppo_command_names_a_bad_prompts_line(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(PPOError, match=r"prompts\.jsonl:2"):
        read_prompts(prompts)


# Learning: a tiny policy that writes strings over a small alphabet learns to use more "e".

ALPHABET = "abcde"
LEARNING_PROMPTS = [f"{word}:" for word in ("ab", "cd", "ba", "dc", "ac", "bd", "ca", "db")]


def random_string(rng: random.Random) -> str:
    return "".join(rng.choices(ALPHABET, k=rng.randint(3, 8)))


def pretrain_random_strings(model: PaLM, steps: int = 300, seed: int = 0) -> None:
    """Supervised prompt + random string over ALPHABET + EOS: a policy with varied outputs."""
    rng = random.Random(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        rows = [
            [*TOKENIZER.encode(rng.choice(LEARNING_PROMPTS) + random_string(rng)), EOS]
            for _ in range(32)
        ]
        width = max(map(len, rows))
        tokens = torch.tensor([row + [PAD] * (width - len(row)) for row in rows])
        logits = model(tokens[:, :-1])
        targets = tokens[:, 1:].masked_fill(tokens[:, 1:] == PAD, -100)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        optimizer.step()


def mean_preference(policy: PPOPolicy, seed: int) -> float:
    preference = LetterShare("e")
    prompts = LEARNING_PROMPTS * 8
    generation = generate(
        policy.policy,
        [TOKENIZER.encode(p) for p in prompts],
        max_new_tokens=12,
        eos_token_id=EOS,
        pad_token_id=PAD,
        seed=seed,
    )
    texts = [
        TOKENIZER.decode([t for t in row if t not in (EOS, PAD)])
        for row in generation.tokens.tolist()
    ]
    return sum(map(preference, texts)) / len(texts)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Matrices of this size gain nothing from threads, and on a busy machine the threads'
    synchronisation made the test several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_ppo_raises_the_hidden_preference_while_the_kl_stays_bounded() -> None:
    torch.manual_seed(0)
    model = PaLM(MODEL)
    pretrain_random_strings(model)
    policy = PPOPolicy(model)
    preference = LetterShare("e")

    def scorer(prompts: list[str], responses: list[str]) -> Tensor:
        return torch.tensor([preference(text) for text in responses])

    config = PPOConfig(
        steps=6,
        rollout_batch_size=32,
        minibatch_size=16,
        max_new_tokens=12,
        lr=3e-3,
        init_kl_coef=0.02,
        adaptive_kl=False,
        ppo_epochs=4,
    )
    start = mean_preference(policy, seed=123)
    result = train_ppo(policy, scorer, TOKENIZER, LEARNING_PROMPTS, config)
    end = mean_preference(policy, seed=123)
    kl = result.metrics["kl"]
    print(f"share of 'e': {start:.3f} -> {end:.3f}; KL to reference {kl:.2f} nats/response")
    for metrics in result.history[::2]:
        print({k: round(v, 3) for k, v in metrics.items()})
    assert end > start + 0.15
    assert kl < 10.0
