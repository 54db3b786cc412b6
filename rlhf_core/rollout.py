"""Collecting PPO experience: sample, recompute, score, penalise, estimate advantages.

Axes: b rollout rows, p prompt columns (left-padded), t response columns.

Why log-probs are computed twice: `generate` returns the log-probs of the sampled tokens from its
cached single-token steps, a different numerical path from the full forward pass the update
uses (other kernels, other summation orders). PPO's ratio π/π_old must start at exactly 1, so
the old log-probs and values are recomputed with one forward pass of the training model (eval
mode, no gradient, logits divided by the sampling temperature) over prompt + response: the path
the update takes, in batches of `minibatch_size` rows as the update's. Generation's own
log-probs are not kept.

Under `PPOConfig.mixed_precision` bf16, sampling, recomputation and scoring run under bf16
autocast (`ppo.ppo_autocast`); the log-probs, values, scores and everything computed from them
are float32.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from rlhf_core.generation import generate, left_pad
from rlhf_core.losses import gae, kl_penalty_rewards, whiten
from rlhf_core.ppo import PPOConfig, PPOPolicy, ppo_autocast
from rlhf_core.reward import RewardModel
from rlhf_core.tokenizer import Tokenizer

# (prompts, responses) -> scores (b). The response excludes EOS, as a reward model's
# `score` expects (it appends EOS itself). Any function will do, e.g. a simulated preference.
Scorer = Callable[[list[str], list[str]], Tensor]


def reward_model_scorer(reward_model: RewardModel, tokenizer: Tokenizer) -> Scorer:
    """A scorer from a reward model: its normalised rewards of the decoded texts.

    Going through text lets the reward model have another tokenizer than the policy (pass the
    reward model's own). Even with the same tokenizer, re-encoding may split a response
    differently from the ids the policy sampled; the reward model then reads it as it read its
    training data, encoded from text, which is what its scores are calibrated on.
    """

    def score(prompts: list[str], responses: list[str]) -> Tensor:
        return reward_model.score(prompts, responses, tokenizer)

    return score


@dataclass(frozen=True)
class Rollout:
    """One iteration's experience, every tensor row-aligned; see `rlhf_core.ppo` for columns.

    prompt_tokens, prompt_mask (b p): left-padded prompts, True on real tokens.
    response_tokens, response_mask (b t): generated tokens; the mask is True on exactly the
        generated tokens up to and including EOS, False on the padding after it.
    logprobs, values (b t): of the policy before the update (π_old, V_old), recomputed.
    ref_logprobs (b t): of the frozen reference.
    scores (b): the scorer's, with the missing-EOS penalty applied.
    rewards, advantages, returns (b t): KL-penalised rewards, GAE advantages (whitened if asked),
        value targets. Every (b t) tensor is 0 outside the response mask.
    """

    prompt_tokens: Tensor
    prompt_mask: Tensor
    response_tokens: Tensor
    response_mask: Tensor
    logprobs: Tensor
    values: Tensor
    ref_logprobs: Tensor
    scores: Tensor
    rewards: Tensor
    advantages: Tensor
    returns: Tensor

    @property
    def rows(self) -> int:
        return self.prompt_tokens.shape[0]

    @property
    def prompt_width(self) -> int:
        return self.prompt_tokens.shape[1]

    def sequences(self) -> tuple[Tensor, Tensor]:
        """Prompt + response tokens (b n) and their attention mask (b n)."""
        tokens = torch.cat([self.prompt_tokens, self.response_tokens], dim=1)
        return tokens, torch.cat([self.prompt_mask, self.response_mask], dim=1)

    def select(self, indices: Tensor) -> Rollout:
        """The rows `indices`, in that order."""
        indices = indices.to(self.prompt_tokens.device)
        return Rollout(**{f.name: getattr(self, f.name)[indices] for f in fields(self)})


def response_mask(lengths: Tensor, width: int) -> Tensor:
    """True on the first `lengths[i]` columns of row i (generated tokens, EOS included)."""
    return torch.arange(width, device=lengths.device) < lengths[:, None]


def ends_with_eos(tokens: Tensor, lengths: Tensor, eos_token_id: int) -> Tensor:
    """Whether each row's last generated token (b) is EOS."""
    last = (lengths - 1).clamp(min=0)
    return (tokens.gather(1, last[:, None]).squeeze(1) == eos_token_id) & (lengths > 0)


def response_texts(tokens: Tensor, lengths: Tensor, tokenizer: Tokenizer) -> list[str]:
    """Decoded responses without their EOS or padding."""
    texts = []
    for row, length in zip(tokens.tolist(), lengths.tolist(), strict=True):
        ids = row[:length]
        if ids and ids[-1] == tokenizer.eos_id:
            ids = ids[:-1]
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return texts


@torch.no_grad()
def recompute(
    policy: PPOPolicy,
    prompt: tuple[Tensor, Tensor],
    response: tuple[Tensor, Tensor],
    config: PPOConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """Old log-probs, values and reference log-probs (b t), in chunks of `minibatch_size` rows."""
    tokens = torch.cat([prompt[0], response[0]], dim=1)
    mask = torch.cat([prompt[1], response[1]], dim=1)
    width, temperature, chunk = prompt[0].shape[1], config.temperature, config.minibatch_size
    was_training = policy.training
    policy.eval()
    try:
        with ppo_autocast(policy, config):
            parts = []
            for rows in zip(torch.split(tokens, chunk), torch.split(mask, chunk), strict=True):
                out = policy(*rows, width, temperature)
                reference = policy.reference_logprobs(*rows, width, temperature)
                parts.append((out.logprobs, out.values, reference))
    finally:
        policy.train(was_training)
    logprobs, values, ref_logprobs = (torch.cat(column) for column in zip(*parts, strict=True))
    return logprobs, values, ref_logprobs


@dataclass(frozen=True)
class Timings:
    generation: float = 0.0
    scoring: float = 0.0


def sample_responses(
    policy: PPOPolicy,
    prompt_ids: Sequence[Sequence[int]],
    tokenizer: Tokenizer,
    config: PPOConfig,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Sampled response tokens (b t) and lengths (b), through the policy's adapters.

    Under autocast without its weight cache: the decode step may be captured as a CUDA graph,
    which must not read autocast's cached bf16 copies (the KV cache takes autocast's dtype).
    """
    with policy.sampling_scope(), ppo_autocast(policy, config, cache_enabled=False):
        generation = generate(
            policy.policy,
            prompt_ids,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
            generator=generator,
            compile_step=config.compile_step,
        )
    return generation.tokens, generation.lengths


def build_rollout(
    policy: PPOPolicy,
    prompt: tuple[Tensor, Tensor],
    response: tuple[Tensor, Tensor],
    scores: Tensor,
    *,
    kl_coef: float,
    config: PPOConfig,
) -> Rollout:
    """Everything the update needs from sampled tokens and their (penalised) scores.

    `prompt` is (tokens, mask) left-padded (b p); `response` is (tokens, mask) (b t).
    """
    logprobs, values, ref_logprobs = recompute(policy, prompt, response, config)
    mask = response[1]
    scores = scores.to(logprobs.device, logprobs.dtype)
    rewards = kl_penalty_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=kl_coef)
    advantages, returns = gae(rewards, values, mask, gamma=config.gamma, lam=config.lam)
    if config.whiten_advantages:
        advantages = whiten(advantages, mask)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    return Rollout(
        prompt_tokens=prompt[0],
        prompt_mask=prompt[1],
        response_tokens=response[0],
        response_mask=mask,
        logprobs=torch.where(mask, logprobs, zero),
        values=torch.where(mask, values, zero),
        ref_logprobs=torch.where(mask, ref_logprobs, zero),
        scores=scores,
        rewards=rewards,
        advantages=advantages,
        returns=returns,
    )


@dataclass(frozen=True)
class ScoreScale:
    """How raw scores become PPO's: (score - mean) / std, fitted on the initial policy's
    samples (`PPOConfig.normalization_samples`); the identity by default."""

    mean: float = 0.0
    std: float = 1.0

    def apply(self, scores: Tensor) -> Tensor:
        return (scores - self.mean) / self.std


def penalise_missing_eos(scores: Tensor, ended: Tensor, penalty: float | None) -> Tensor:
    """Scores (b) minus `penalty` for each response that never ended."""
    if not penalty:
        return scores
    return scores - penalty * (~ended.to(scores.device)).to(scores.dtype)


def penalise_blank(scores: Tensor, blank: Tensor, penalty: float | None) -> Tensor:
    """Scores (b) where each blank response gets the batch's lowest score minus `penalty`: no
    answer is worse than every answer sampled beside it, whatever the scorer makes of it (a
    reward model never saw one: people's labels on blank responses leave every data set, and
    it may score one above everything, so that subtracting a penalty is not enough)."""
    if not penalty:
        return scores
    blank = blank.to(scores.device)
    if not bool(blank.any()):
        return scores
    return torch.where(blank, scores.min() - penalty, scores)


def prompt_token_ids(
    tokenizer: Tokenizer, prompts: Sequence[str], max_length: int | None
) -> list[list[int]]:
    """Each prompt's ids, its last `max_length` only (the context nearest the response). An
    empty prompt starts a new document, as after the end-of-text of a previous one."""
    rows = [ids or [tokenizer.eos_id] for ids in tokenizer.encode_batch(list(prompts))]
    return rows if max_length is None else [ids[-max_length:] for ids in rows]


@dataclass(frozen=True)
class Sampled:
    """One response per prompt: the prompt ids, the tokens (b t) and lengths (b) sampled, the
    decoded texts and whether each ended with EOS (b)."""

    prompt_ids: list[list[int]]
    tokens: Tensor
    lengths: Tensor
    texts: list[str]
    ended: Tensor

    @property
    def blank(self) -> Tensor:
        """Whether each response (b) has no text: the model ended before writing anything,
        or wrote only white space."""
        return torch.tensor([not text.strip() for text in self.texts], device=self.ended.device)


def sample_for(
    policy: PPOPolicy,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    config: PPOConfig,
    generator: torch.Generator | None,
) -> Sampled:
    prompt_ids = prompt_token_ids(tokenizer, prompts, config.max_prompt_length)
    tokens, lengths = sample_responses(policy, prompt_ids, tokenizer, config, generator)
    texts = response_texts(tokens, lengths, tokenizer)
    return Sampled(
        prompt_ids, tokens, lengths, texts, ends_with_eos(tokens, lengths, tokenizer.eos_id)
    )


def collect_rollout(
    policy: PPOPolicy,
    scorer: Scorer,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    *,
    kl_coef: float,
    config: PPOConfig,
    generator: torch.Generator | None = None,
    scale: ScoreScale = ScoreScale(),
) -> tuple[Rollout, Sampled, Timings]:
    """Sample one response per prompt and turn them into a `Rollout`; returns the samples and
    the time spent generating and scoring (the recomputation counts as scoring). Scores are
    `scale`d, then penalised: a response without EOS loses `no_eos_penalty`, and a blank one
    scores the batch's lowest score minus `no_eos_penalty` (`penalise_blank`)."""
    start = time.perf_counter()
    device = policy.policy.token_emb.weight.device
    sampled = sample_for(policy, tokenizer, prompts, config, generator)
    generated = time.perf_counter()
    with ppo_autocast(policy, config):
        scores = scale.apply(scorer(list(prompts), sampled.texts).float())
    scores = penalise_missing_eos(scores, sampled.ended, config.no_eos_penalty)
    scores = penalise_blank(scores, sampled.blank, config.no_eos_penalty)
    prompt_tokens, prompt_mask = left_pad(sampled.prompt_ids, tokenizer.pad_id)
    prompt = (prompt_tokens.to(device), prompt_mask.to(device))
    response = (sampled.tokens, response_mask(sampled.lengths, sampled.tokens.shape[1]))
    rollout = build_rollout(policy, prompt, response, scores, kl_coef=kl_coef, config=config)
    return rollout, sampled, Timings(generated - start, time.perf_counter() - generated)
