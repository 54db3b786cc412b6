"""One door to the reward-model-driven policy trainers: PPO and rejection sampling.

The command line, the worker's round stage and the learning benchmark all call `train_policy`,
so a round, a command and a benchmark with the same recipe train the same way. DPO learns from
preference pairs rather than a reward model and has its own entry (`rlhf_core.dpo.train_dpo`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_core.checkpoint import CheckpointMetadata, save_checkpoint
from rlhf_core.finetuning import merged_state_dict
from rlhf_core.palm import PaLM
from rlhf_core.ppo import PPOConfig, PPOError, PPOPolicy
from rlhf_core.ppo_trainer import train_ppo
from rlhf_core.rejection_sampling import RejectionSamplingConfig, train_rejection_sampling
from rlhf_core.reward import RewardModel, critic_for
from rlhf_core.rollout import reward_model_scorer
from rlhf_core.tokenizer import Tokenizer
from rlhf_core.training import TrainingCallback

POLICY_ALGORITHMS = ("ppo", "rejection_sampling")


@dataclass(frozen=True)
class PolicyTrainingResult:
    """The trained policy (a plain PaLM, LoRA merged) and how its run ended."""

    model: PaLM
    algorithm: str
    steps: int
    stopped_early: bool
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(repr=False)
    warnings: list[str] = field(default_factory=list)


def train_policy(
    algorithm: str,
    policy: PaLM,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    reward_model: RewardModel,
    reward_tokenizer: Tokenizer,
    config: PPOConfig | RejectionSamplingConfig,
    *,
    callback: TrainingCallback | None = None,
    state_file: Path | None = None,
    metrics_file: Path | None = None,
) -> PolicyTrainingResult:
    """Improve `policy` (trained in place) on `prompts` against `reward_model`, which reads
    the texts with its own tokenizer. PPO's critic starts as the reward model when it can read
    the policy's tokens (`reward.critic_for`); `state_file` makes a PPO run resumable."""
    scorer = reward_model_scorer(reward_model, reward_tokenizer)
    if algorithm == "ppo":
        if not isinstance(config, PPOConfig):
            raise PPOError("PPO needs a PPOConfig")
        critic = critic_for(reward_model, reward_tokenizer, policy, tokenizer)
        wrapped = PPOPolicy(policy.train(), critic)
        ppo = train_ppo(
            wrapped,
            scorer,
            tokenizer,
            prompts,
            config,
            callback=callback,
            state_file=state_file,
            metrics_file=metrics_file,
        )
        model = wrapped.policy.eval()
        return PolicyTrainingResult(
            model, algorithm, ppo.steps, ppo.stopped_early, ppo.metrics, ppo.history, ppo.warnings
        )
    if algorithm == "rejection_sampling":
        if not isinstance(config, RejectionSamplingConfig):
            raise PPOError("rejection sampling needs a RejectionSamplingConfig")
        run = train_rejection_sampling(
            policy, tokenizer, prompts, scorer, config, callback=callback
        )
        return PolicyTrainingResult(
            policy, algorithm, run.steps, run.stopped_early, run.metrics, run.history, run.warnings
        )
    raise PPOError(f"unknown policy algorithm {algorithm!r}; choose one of {POLICY_ALGORITHMS}")


def save_trained_policy(
    directory: Path,
    result: PolicyTrainingResult,
    tokenizer: Tokenizer,
    settings: dict[str, object],
) -> CheckpointMetadata:
    """The policy as a plain PaLM checkpoint (adapters folded in), its run in the metadata."""
    metadata = CheckpointMetadata(
        step=result.steps,
        metrics={k: v for k, v in result.metrics.items() if isinstance(v, float)},
        extra={
            "trainer": result.algorithm,
            result.algorithm: settings,
            "warnings": result.warnings,
        },
    )
    weights = merged_state_dict(result.model)
    return save_checkpoint(
        directory, result.model, tokenizer, metadata=metadata, state_dict=weights
    )
