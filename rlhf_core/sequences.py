"""Prompt + response as one token row, with a mask of the response tokens: what SFT, DPO and the
reward model read.

Axes: b batch, n sequence.

A row is prompt ids, response ids, EOS; the response mask is True on the response's tokens and
on the EOS after it (a trained policy must also learn where to stop, and a reward model reads
the whole response). Prompt and response are encoded apart, so the response's ids are those a
policy would have generated after the prompt's, not a merge across the boundary.

Past `max_length` tokens a row is cut on the left, and the responses to one prompt that are
compared (a pair, a ranking) are cut *together*: they keep the same prompt tokens, so a reward
model or DPO compares them in the same context (`encode_groups`). The prompt gives way first,
down to a quarter of `max_length` (it is the context the responses answer); only a response
that cannot fit beside that quarter loses its own first tokens. Rows are left-padded like
generation's prompts; padding is never in either mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlhf_core.generation import left_pad
from rlhf_core.losses import sequence_logprobs
from rlhf_core.tokenizer import Tokenizer


@dataclass(frozen=True)
class EncodedResponse:
    """One row's token ids; its last `response_length` ids are the response and EOS."""

    ids: list[int]
    response_length: int


@dataclass(frozen=True)
class ResponseBatch:
    """tokens (b n), attention_mask (b n) True on real tokens, response_mask (b n) True on the
    response tokens and their EOS."""

    tokens: Tensor
    attention_mask: Tensor
    response_mask: Tensor

    def to(self, device: torch.device | str) -> ResponseBatch:
        return ResponseBatch(
            self.tokens.to(device), self.attention_mask.to(device), self.response_mask.to(device)
        )


def fit_group(
    prompt: Sequence[int], responses: Sequence[Sequence[int]], eos_id: int, max_length: int | None
) -> list[EncodedResponse]:
    """The rows of one prompt's responses (ids already encoded), cut together to `max_length`
    as the module docstring says: every row keeps the same prompt tokens."""
    ends = [[*response, eos_id] for response in responses]
    if max_length is None:
        return [EncodedResponse([*prompt, *end], len(end)) for end in ends]
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    longest = max((len(end) for end in ends), default=0)
    floor = min(len(prompt), max_length // 4)
    kept = max(floor, min(len(prompt), max_length - longest))
    context = list(prompt[len(prompt) - kept :])
    room = max_length - kept
    return [EncodedResponse([*context, *end[-room:]], len(end[-room:])) for end in ends]


def encode_groups(
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    responses: Sequence[Sequence[str]],
    max_length: int | None = None,
) -> list[list[EncodedResponse]]:
    """For each prompt, the rows of its responses (`fit_group`), in order."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} groups of responses")
    flat = [text for group in responses for text in group]
    encoded = iter(tokenizer.encode_batch(flat))
    return [
        fit_group(prompt_ids, [next(encoded) for _ in group], tokenizer.eos_id, max_length)
        for prompt_ids, group in zip(tokenizer.encode_batch(list(prompts)), responses, strict=True)
    ]


def encode_responses(
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int | None = None,
) -> list[EncodedResponse]:
    """One row per (prompt, response), each cut on its own (`fit_group` of one)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    groups = encode_groups(tokenizer, prompts, [[response] for response in responses], max_length)
    return [row for (row,) in groups]


def collate(rows: Sequence[EncodedResponse], pad_token_id: int) -> ResponseBatch:
    """Left-pad `rows` into one batch; the response occupies the last columns of each row."""
    tokens, attention_mask = left_pad([row.ids for row in rows], pad_token_id)
    width = tokens.shape[1]
    columns = torch.arange(width)
    starts = torch.tensor([width - row.response_length for row in rows])
    response_mask = columns[None, :] >= starts[:, None]
    return ResponseBatch(tokens, attention_mask, response_mask)


def response_logprobs(model: nn.Module, batch: ResponseBatch) -> Tensor:
    """Σ log π(response token | everything before it) per row (b): the DPO sequence score.

    `model` is a PaLM, or one wrapped by accelerate (DDP, FSDP) that forwards the same way."""
    logits = model(batch.tokens, attention_mask=batch.attention_mask)
    return sequence_logprobs(logits, batch.tokens, batch.response_mask)
