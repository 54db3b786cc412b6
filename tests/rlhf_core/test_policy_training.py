"""The one door to PPO and rejection sampling: the critic it builds, what it refuses, what it
saves."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from rlhf_core import policy_training
from rlhf_core.checkpoint import load_checkpoint
from rlhf_core.lora import add_lora, set_active_scope
from rlhf_core.palm import PaLM
from rlhf_core.policy_training import PolicyTrainingResult, save_trained_policy, train_policy
from rlhf_core.ppo import PPOError, PPOPolicy
from rlhf_core.ppo_trainer import train_ppo
from rlhf_core.rejection_sampling import RejectionSamplingConfig
from rlhf_core.reward import RewardHeadConfig, RewardModel, critic_for, value_head_from_reward
from rlhf_core.tokenizer import Tokenizer
from tests.rlhf_core.test_ppo import CONFIG, MODEL, PROMPTS, TOKENIZER
from tests.rlhf_core.training_data import plumbing_reward_model

# Random policies rarely sample EOS, which the trainers rightly warn about; not the subject here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:no response ended with EOS:rlhf_core.diagnostics.LearningWarning"
)
PPO = dataclasses.replace(CONFIG, steps=1, no_eos_penalty=None, mixed_precision="no")
# Same vocabulary size as the byte tokenizer (256 bytes + 2 specials), other ids.
OTHER_TOKENIZER = Tokenizer.train_bpe(["the quick brown fox"] * 5, vocab_size=258)


def models(seed: int = 0) -> tuple[PaLM, RewardModel]:
    torch.manual_seed(seed)
    return PaLM(MODEL), plumbing_reward_model(MODEL)


def weights(module: nn.Module) -> list[Tensor]:
    return [parameter.detach().clone() for parameter in module.parameters()]


def same(a: list[Tensor], b: list[Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


class PPOSpy:
    """train_ppo as it is, remembering the critic and value head PPO started with."""

    def __init__(self) -> None:
        self.critic: list[Tensor] = []
        self.value_head: list[Tensor] = []
        self.wrapped: PPOPolicy | None = None

    def __call__(self, policy: PPOPolicy, *args: Any, **kwargs: Any) -> Any:
        self.wrapped = policy
        self.critic, self.value_head = weights(policy.critic), weights(policy.value_head)
        return train_ppo(policy, *args, **kwargs)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> PPOSpy:
    recorder = PPOSpy()
    monkeypatch.setattr(policy_training, "train_ppo", recorder)
    return recorder


def test_ppo_starts_its_critic_as_a_copy_of_the_reward_models_backbone(spy: PPOSpy) -> None:
    policy, reward_model = models()
    backbone = weights(reward_model.backbone)
    result = train_policy("ppo", policy, TOKENIZER, PROMPTS, reward_model, TOKENIZER, PPO)
    assert spy.wrapped is not None and spy.wrapped.critic is not reward_model.backbone
    assert same(spy.critic, backbone)
    assert same(spy.value_head, weights(value_head_from_reward(reward_model)))
    assert same(weights(reward_model.backbone), backbone)  # training moved the copy only
    assert not same(weights(spy.wrapped.critic), backbone)
    assert result.model is policy and not result.model.training
    assert (result.algorithm, result.steps, len(result.history)) == ("ppo", 1, 1)


def test_with_a_reward_model_of_other_tokens_the_critic_starts_as_the_policy(
    spy: PPOSpy,
) -> None:
    policy, reward_model = models()
    start = weights(policy)
    train_policy("ppo", policy, TOKENIZER, PROMPTS, reward_model, OTHER_TOKENIZER, PPO)
    assert same(spy.critic, start)
    assert all((tensor == 0).all() for tensor in spy.value_head)


def test_the_critic_comes_from_a_reward_model_that_reads_the_policys_tokens() -> None:
    policy, reward_model = models()
    critic = critic_for(reward_model, TOKENIZER, policy, TOKENIZER)
    assert critic is not None
    backbone, head = critic
    assert backbone is not reward_model.backbone
    assert same(weights(backbone), weights(reward_model.backbone))
    assert head.weight.shape == (1, MODEL.dim)


def test_no_critic_comes_from_a_reward_model_with_another_tokenizer() -> None:
    policy, reward_model = models()
    assert OTHER_TOKENIZER.fingerprint != TOKENIZER.fingerprint
    assert critic_for(reward_model, OTHER_TOKENIZER, policy, TOKENIZER) is None


def test_no_critic_comes_from_an_untrained_scalar_head() -> None:
    policy, reward_model = models()
    reward_model.trained_heads = frozenset({"likert"})
    assert critic_for(reward_model, TOKENIZER, policy, TOKENIZER) is None
    likert_only = RewardModel(PaLM(MODEL), RewardHeadConfig(pairwise=False))
    likert_only.trained_heads = frozenset({"likert"})
    assert critic_for(likert_only, TOKENIZER, policy, TOKENIZER) is None


def test_no_critic_comes_from_a_reward_model_of_another_vocabulary_size() -> None:
    policy, _ = models()
    wider = plumbing_reward_model(dataclasses.replace(MODEL, num_tokens=300))
    assert critic_for(wider, TOKENIZER, policy, TOKENIZER) is None


def test_rejection_sampling_runs_through_the_same_door() -> None:
    policy, reward_model = models()
    config = RejectionSamplingConfig(
        iterations=1, samples_per_prompt=2, max_new_tokens=4, batch_size=4, mixed_precision="no"
    )
    result = train_policy(
        "rejection_sampling", policy, TOKENIZER, PROMPTS, reward_model, TOKENIZER, config
    )
    assert result.model is policy and result.algorithm == "rejection_sampling"
    assert len(result.history) == 1 and result.metrics["winners"] > 0


def test_an_unknown_algorithm_is_refused() -> None:
    policy, reward_model = models()
    with pytest.raises(PPOError, match="unknown policy algorithm 'dpo'"):
        train_policy("dpo", policy, TOKENIZER, PROMPTS, reward_model, TOKENIZER, PPO)


def test_a_config_of_the_other_algorithm_is_refused() -> None:
    policy, reward_model = models()
    rejection = RejectionSamplingConfig()
    with pytest.raises(PPOError, match="PPO needs a PPOConfig"):
        train_policy("ppo", policy, TOKENIZER, PROMPTS, reward_model, TOKENIZER, rejection)
    with pytest.raises(PPOError, match="rejection sampling needs a RejectionSamplingConfig"):
        train_policy("rejection_sampling", policy, TOKENIZER, PROMPTS, reward_model, TOKENIZER, PPO)


def test_the_saved_policy_is_a_plain_palm_with_its_run_in_the_metadata(tmp_path: Path) -> None:
    policy, _ = models()
    adapter = add_lora(policy, "sft", rank=2)
    with torch.no_grad():
        for parameter in adapter:
            parameter.normal_(std=0.5)
    set_active_scope(policy, "sft")
    tokens = torch.tensor([TOKENIZER.encode("hello there")])
    with torch.no_grad():
        adapted = policy(tokens)
    result = PolicyTrainingResult(
        policy, "rejection_sampling", 7, False, {"score": 0.25}, [], ["a warning"]
    )
    settings: dict[str, object] = {"iterations": 2, "samples_per_prompt": 8}
    save_trained_policy(tmp_path / "policy", result, TOKENIZER, settings)
    saved = load_checkpoint(tmp_path / "policy")
    assert not any("adapters" in name for name in saved.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(saved.model(tokens), adapted, rtol=1e-4, atol=1e-4)
    assert saved.metadata.extra == {
        "trainer": "rejection_sampling",
        "rejection_sampling": settings,
        "warnings": ["a warning"],
    }
    assert (saved.metadata.step, saved.metadata.metrics) == (7, {"score": 0.25})
