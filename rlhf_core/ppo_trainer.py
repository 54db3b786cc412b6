"""The PPO loop: rollout, update, adapt the KL coefficient, report; repeated `config.steps` times.

Each iteration (`ppo_step`) samples one response for each of `rollout_batch_size` prompts,
scores them, and optimises the PPO loss on that experience for `ppo_epochs` epochs
(`rlhf_core.ppo.ppo_update`). The run is on whatever device the policy is on, in the
precision `config.mixed_precision` sets (`rlhf_core.ppo.ppo_autocast`).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhf_core.checkpoint import load_torch_file
from rlhf_core.corpus import atomic_output
from rlhf_core.diagnostics import policy_warnings, warn
from rlhf_core.helpers import masked_mean
from rlhf_core.losses import AdaptiveKLController, FixedKLController
from rlhf_core.optim import build_adamw
from rlhf_core.ppo import (
    PPOConfig,
    PPOError,
    PPOPolicy,
    explained_variance,
    ppo_autocast,
    ppo_update,
)
from rlhf_core.reward import RewardModel
from rlhf_core.rollout import (
    Rollout,
    Sampled,
    Scorer,
    ScoreScale,
    collect_rollout,
    reward_model_scorer,
    sample_for,
)
from rlhf_core.tokenizer import Tokenizer
from rlhf_core.training import NoCallback, TrainingCallback

KLController = AdaptiveKLController | FixedKLController
# Adam's default betas, which PPO implementations (TRL, the OpenAI baselines) keep.
BETAS = (0.9, 0.999)


@dataclass(frozen=True)
class PPOResult:
    """Where a `train_ppo` call left the run."""

    steps: int
    stopped_early: bool  # a callback asked to stop before config.steps
    metrics: dict[str, float]  # of the last iteration
    # The metrics of every iteration this call ran (after a resume: from the resumed step on).
    history: list[dict[str, float]] = field(default_factory=list)
    # Why the run may not have learned (`rlhf_core.diagnostics`); empty when nothing looked off.
    warnings: list[str] = field(default_factory=list)


def kl_controller(config: PPOConfig) -> KLController:
    if config.adaptive_kl:
        return AdaptiveKLController(config.init_kl_coef, config.kl_target, config.kl_gain)
    return FixedKLController(config.init_kl_coef)


def rollout_metrics(rollout: Rollout, sampled: Sampled) -> dict[str, float]:
    """Reward, KL to the reference and shape statistics of the experience, before the update;
    `sampled` says which responses ended with EOS and which are blank."""
    mask = rollout.response_mask
    # Summed over the response (nats per response, the unit of kl_target), averaged over rows.
    kl = torch.where(mask, rollout.logprobs - rollout.ref_logprobs, 0.0).sum(dim=1)
    return {
        "score": float(rollout.scores.mean()),
        "score_std": float(rollout.scores.std(correction=0)),
        "eos_rate": float(sampled.ended.float().mean()),
        "blank_rate": float(sampled.blank.float().mean()),
        "kl": float(kl.mean()),
        "response_length": float(mask.sum(dim=1).float().mean()),
        "value_mean": float(masked_mean(rollout.values, mask)),
        "explained_variance": explained_variance(rollout.values, rollout.returns, mask),
    }


@dataclass
class PPOState:
    """What changes between iterations, beside the weights and the optimizer."""

    kl: KLController
    shuffle: torch.Generator  # prompt order and minibatches, on the CPU
    sampling: torch.Generator  # token sampling, on the policy's device
    step: int = 0
    prompt_order: list[int] = field(default_factory=list)  # prompts left in this pass
    scale: ScoreScale | None = None  # fitted before the first update (normalization_samples)

    def state_dict(self) -> dict[str, Any]:
        return {
            "scale": None if self.scale is None else [self.scale.mean, self.scale.std],
            "kl_coef": self.kl.value,
            "shuffle": self.shuffle.get_state(),
            "sampling": self.sampling.get_state(),
            "step": self.step,
            "prompt_order": list(self.prompt_order),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.kl.value = state["kl_coef"]
        self.shuffle.set_state(state["shuffle"])
        self.sampling.set_state(state["sampling"])
        self.step, self.prompt_order = state["step"], list(state["prompt_order"])
        self.scale = None if state["scale"] is None else ScoreScale(*state["scale"])


def new_state(policy: PPOPolicy, config: PPOConfig) -> PPOState:
    device = policy.policy.token_emb.weight.device
    return PPOState(
        kl=kl_controller(config),
        shuffle=torch.Generator().manual_seed(config.seed),
        sampling=torch.Generator(device=device).manual_seed(config.seed + 1),
    )


def next_prompts(prompts: Sequence[str], size: int, state: PPOState) -> list[str]:
    """The next `size` prompts: passes over all of them, each pass in a fresh random order."""
    batch: list[str] = []
    while len(batch) < size:
        if not state.prompt_order:
            state.prompt_order = torch.randperm(len(prompts), generator=state.shuffle).tolist()
        batch.append(prompts[state.prompt_order.pop()])
    return batch


def fit_score_scale(
    policy: PPOPolicy,
    scorer: Scorer,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    config: PPOConfig,
    state: PPOState,
) -> tuple[ScoreScale, list[str]]:
    """The mean and standard deviation of the scorer's scores of `normalization_samples`
    responses of the policy as it is (before any update), and a warning if they all agree."""
    if config.normalization_samples == 0:
        return ScoreScale(), []
    scores = []
    left = config.normalization_samples
    while left > 0:
        batch = next_prompts(prompts, min(left, config.rollout_batch_size), state)
        sampled = sample_for(policy, tokenizer, batch, config, state.sampling)
        with ppo_autocast(policy, config):
            scores.append(scorer(batch, sampled.texts).float().cpu())
        left -= len(batch)
    values = torch.cat(scores)
    std = float(values.std(correction=0))
    if not std > 0:
        message = (
            f"all {len(values)} samples of the initial policy got the same score "
            f"({float(values[0]):.4g}): the scores are left unnormalised"
        )
        return ScoreScale(float(values.mean()), 1.0), [message]
    return ScoreScale(float(values.mean()), std), []


def ppo_step(
    policy: PPOPolicy,
    optimizer: torch.optim.Optimizer,
    scorer: Scorer,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    config: PPOConfig,
    state: PPOState,
) -> dict[str, float]:
    """One PPO iteration on `prompts` (one response each); returns its metrics."""
    kl_coef = state.kl.value
    rollout, sampled, timings = collect_rollout(
        policy,
        scorer,
        tokenizer,
        prompts,
        kl_coef=kl_coef,
        config=config,
        generator=state.sampling,
        scale=state.scale or ScoreScale(),
    )
    started = time.perf_counter()
    update = ppo_update(policy, optimizer, rollout, config, state.shuffle)
    learning = time.perf_counter() - started
    before = rollout_metrics(rollout, sampled)
    state.kl.update(before["kl"])
    state.step += 1
    return {
        "step": state.step,
        **before,
        **update,
        "kl_coef": kl_coef,
        "generation_seconds": timings.generation,
        "scoring_seconds": timings.scoring,
        "learning_seconds": learning,
    }


def train_ppo(
    policy: PPOPolicy,
    reward: RewardModel | Scorer,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    config: PPOConfig,
    *,
    callback: TrainingCallback | None = None,
    metrics_file: Path | None = None,
    state_file: Path | None = None,
) -> PPOResult:
    """Run `config.steps` PPO iterations on `prompts`, sampled in random order.

    reward: a `RewardModel` (its normalised score of the decoded texts, read with `tokenizer`,
        so it must share the policy's tokenizer here; see `reward_model_scorer` otherwise), or
        any scorer `(prompts, responses) -> scores (b)`.
    callback: `on_step` gets every iteration's metrics; returning False stops the run.
    metrics_file: the metrics as JSON lines, appended.
    state_file: where the run saves everything it needs to continue (every
        `config.checkpoint_every` steps, when stopped and at the end). If it exists, the run
        resumes from it and continues exactly as an uninterrupted run would on the CPU.
    """
    if not prompts:
        raise PPOError("PPO needs at least one prompt")
    torch.manual_seed(config.seed)
    scorer = reward_model_scorer(reward, tokenizer) if isinstance(reward, RewardModel) else reward
    callback = callback or NoCallback()
    optimizer = build_adamw(policy, lr=config.lr, weight_decay=config.weight_decay, betas=BETAS)
    state = new_state(policy, config)
    if state_file is not None and state_file.exists():
        load_run_state(state_file, policy, optimizer, state)
        if metrics_file is not None:
            rewind_metrics(metrics_file, state.step)
    history: list[dict[str, float]] = []
    found: list[str] = []
    if state.scale is None:
        state.scale, found = fit_score_scale(policy, scorer, tokenizer, prompts, config, state)
        warn(found)
    stopped = False
    while state.step < config.steps and not stopped:
        batch = next_prompts(prompts, config.rollout_batch_size, state)
        metrics = ppo_step(policy, optimizer, scorer, tokenizer, batch, config, state)
        history.append(metrics)
        if metrics_file is not None:
            with metrics_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(metrics) + "\n")
        stopped = callback.on_step(metrics) is False and state.step < config.steps
        due = state.step % config.checkpoint_every == 0 or stopped or state.step == config.steps
        if state_file is not None and due:
            save_run_state(state_file, policy, optimizer, state)
    late = policy_warnings(history, config.kl_target if config.adaptive_kl else None)
    warn(late)
    return PPOResult(state.step, stopped, history[-1] if history else {}, history, found + late)


def save_run_state(
    path: Path, policy: PPOPolicy, optimizer: torch.optim.Optimizer, state: PPOState
) -> None:
    """Weights (value head and reference included), optimizer and loop state, atomically."""
    buffer = io.BytesIO()
    torch.save(
        {
            "policy": policy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": state.state_dict(),
            "torch_rng": torch.get_rng_state(),
        },
        buffer,
    )
    with atomic_output(path) as handle:
        handle.write(buffer.getvalue())


def load_run_state(
    path: Path, policy: PPOPolicy, optimizer: torch.optim.Optimizer, state: PPOState
) -> None:
    saved = load_torch_file(path, weights_only=False)
    policy.load_state_dict(saved["policy"])
    optimizer.load_state_dict(saved["optimizer"])
    state.load_state_dict(saved["state"])
    torch.set_rng_state(saved["torch_rng"])


def rewind_metrics(path: Path, step: int) -> None:
    """Drop the metrics of steps after `step`: a resumed run writes them again."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line and json.loads(line)["step"] <= step]
    with atomic_output(path) as handle:
        handle.write("".join(line + "\n" for line in kept).encode("utf-8"))
