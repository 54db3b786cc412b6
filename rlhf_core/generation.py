"""Sampling from a PaLM with its static KV cache.

Axes: b batch, n sequence, v vocabulary, t new tokens.

The logit processors are pure functions of a (b v) tensor, applied in this order: repetition
penalty, temperature, top-k, top-p, min-p (the order of Hugging Face's generation, so the
parameters mean what users expect).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rlhf_core.helpers import exists
from rlhf_core.palm import PaLM

Prompt = Tensor | Sequence[int]


@dataclass(frozen=True)
class Generation:
    """New tokens of each row, with the log-probability of each and how many count.

    tokens (b t): sampled tokens, `pad_token_id` after a row's EOS.
    logprobs (b t): log-probability of each sampled token under the model's distribution at
        the sampling temperature (temperature 1 when greedy), *before* repetition penalty and
        top-k/top-p/min-p truncation; 0 after a row's EOS. This is the distribution a trainer
        recomputes from a plain forward pass, so a PPO ratio starts at exactly 1 and a KL
        penalty compares like with like; truncation would give -inf for tokens the policy can
        still produce and would not be reproducible from the logits alone.
    lengths (b): new tokens up to and including EOS (or all of them if no EOS came).
    """

    tokens: Tensor
    logprobs: Tensor
    lengths: Tensor


def left_pad(prompts: Sequence[Prompt], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Stack prompts of different lengths, padding on the left so each ends at the last column.

    Returns tokens (b n) and the mask (b n), True on real tokens.
    """
    rows = [torch.as_tensor(prompt, dtype=torch.long).flatten() for prompt in prompts]
    if not rows or any(row.numel() == 0 for row in rows):
        raise ValueError("every prompt needs at least one token")
    width = max(row.numel() for row in rows)
    tokens = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for index, row in enumerate(rows):
        tokens[index, width - row.numel() :] = row
        mask[index, width - row.numel() :] = True
    return tokens, mask


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL's penalty (Keskar et al. 2019) on tokens already in the row (`seen`, b v bool).

    Positive logits are divided and negative ones multiplied, so a penalty > 1 always makes a
    seen token less likely whatever the sign of its logit.
    """
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties at the k-th value are all kept)."""
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus sampling (Holtzman et al. 2020): the smallest set whose probability reaches p.

    A token is kept when the probability of the strictly more likely tokens is still below p,
    so the most likely token always survives.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Keep tokens whose probability is at least `min_p` times that of the most likely one."""
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))


@dataclass(frozen=True)
class Sampler:
    """The per-step choice of a token from next-token logits (b v)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None

    def __post_init__(self) -> None:
        checks = {
            "temperature must be >= 0": self.temperature >= 0,
            "top_k must be >= 1": self.top_k is None or self.top_k >= 1,
            "top_p must be in (0, 1]": self.top_p is None or 0 < self.top_p <= 1,
            "min_p must be in [0, 1]": self.min_p is None or 0 <= self.min_p <= 1,
            "repetition_penalty must be > 0": (
                self.repetition_penalty is None or self.repetition_penalty > 0
            ),
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed))

    def __call__(
        self, logits: Tensor, seen: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """Returns the chosen tokens (b) and their log-probabilities (see `Generation`)."""
        greedy = self.temperature == 0
        scaled = logits / (1.0 if greedy else self.temperature)
        processed = logits
        if self.repetition_penalty is not None:
            processed = apply_repetition_penalty(processed, seen, self.repetition_penalty)
        if greedy:
            tokens = processed.argmax(dim=-1)
        else:
            processed = self._truncate(processed / self.temperature)
            tokens = torch.multinomial(processed.softmax(dim=-1), 1, generator=generator)
            tokens = tokens.squeeze(-1)
        logprobs = scaled.log_softmax(dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
        return tokens, logprobs

    def _truncate(self, logits: Tensor) -> Tensor:
        if self.top_k is not None:
            logits = top_k_filter(logits, self.top_k)
        if self.top_p is not None:
            logits = top_p_filter(logits, self.top_p)
        if self.min_p is not None:
            logits = min_p_filter(logits, self.min_p)
        return logits


@torch.no_grad()
def generate(
    model: PaLM,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Generation:
    """Sample up to `max_new_tokens` after each prompt (1-D tensors or lists of token ids).

    Greedy when `temperature == 0`. Rows stop independently at `eos_token_id`. For determinism
    pass a `generator` or a `seed` (which makes a fresh generator on the model's device).
    """
    sampler = Sampler(temperature, top_k, top_p, min_p, repetition_penalty)
    tokens, mask = left_pad(prompts, pad_token_id)
    weight = model.token_emb.weight
    tokens, mask = tokens.to(weight.device), mask.to(weight.device)
    if seed is not None and generator is None:
        generator = torch.Generator(device=weight.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        return _decode(
            model,
            tokens,
            mask,
            sampler,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            generator=generator,
        )
    finally:
        model.train(was_training)


def _decode(
    model: PaLM,
    prompt: Tensor,
    mask: Tensor,
    sampler: Sampler,
    *,
    max_new_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int,
    generator: torch.Generator | None,
) -> Generation:
    batch = prompt.shape[0]
    out_tokens = prompt.new_full((batch, max_new_tokens), pad_token_id)
    out_logprobs = torch.zeros(batch, max_new_tokens, device=prompt.device)
    lengths = prompt.new_zeros(batch)
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt.device)
    seen = torch.zeros(batch, model.config.num_tokens, dtype=torch.bool, device=prompt.device)
    seen.scatter_(-1, prompt, mask)  # padding is not part of the prompt: it is never "seen"

    cache = model.new_cache(batch, prompt.shape[1] + max_new_tokens)
    logits = model(prompt, attention_mask=mask, cache=cache)[:, -1]
    for step in range(max_new_tokens):
        token, logprob = sampler(logits, seen, generator)
        token = token.masked_fill(finished, pad_token_id)
        out_tokens[:, step] = token
        out_logprobs[:, step] = logprob.masked_fill(finished, 0.0)
        lengths += (~finished).long()
        seen.scatter_(-1, token[:, None], True)
        if exists(eos_token_id):
            finished |= token == eos_token_id
            if finished.all():
                break
        if step + 1 < max_new_tokens:
            # Finished rows keep decoding padding: the batch keeps its shape, their output is
            # discarded, and a real row never attends to another row.
            logits = model(token[:, None], cache=cache)[:, -1]
    return Generation(out_tokens, out_logprobs, lengths)
