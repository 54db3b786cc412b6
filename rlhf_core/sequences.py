"""Prompt + response as one token row, with a mask of the response tokens: what SFT and DPO score.

Axes: b batch, n sequence.

Rows are those of `reward.pair_token_ids` (prompt ids, response ids, EOS; truncated on the
left), so a policy, its reference and the reward model all read the same tokens. The response
mask is True on the response's tokens and on the EOS after it: a trained policy must also learn
where to stop. Rows are left-padded like generation's prompts; padding is never in either mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlhf_core.generation import left_pad
from rlhf_core.losses import sequence_logprobs
from rlhf_core.reward import pair_token_ids
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


def encode_responses(
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int | None = None,
) -> list[EncodedResponse]:
    """The rows of `pair_token_ids`, each with how many of its last ids are the response.

    Left truncation eats the prompt first, so the response keeps all its ids unless it alone
    (with EOS) is longer than `max_length`.
    """
    rows = pair_token_ids(tokenizer, prompts, responses, max_length)
    # Encoded again only to count: cheap next to a forward pass, and it keeps one home for
    # how a prompt and response become a row.
    lengths = [len(ids) + 1 for ids in tokenizer.encode_batch(responses)]
    return [
        EncodedResponse(row, min(length, len(row)))
        for row, length in zip(rows, lengths, strict=True)
    ]


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
