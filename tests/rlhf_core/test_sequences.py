"""Prompt + response rows: cut together per prompt, the prompt first, masks on the response."""

from __future__ import annotations

import pytest
import torch

from rlhf_core.sequences import (
    EncodedResponse,
    collate,
    encode_groups,
    encode_responses,
    fit_group,
)
from rlhf_core.tokenizer import Tokenizer

TOKENIZER = Tokenizer.byte_fallback()  # one id per character of ASCII text
EOS, PAD = TOKENIZER.eos_id, TOKENIZER.pad_id
PROMPT = list(range(100, 120))  # 20 tokens


def prompt_part(row: EncodedResponse) -> list[int]:
    return row.ids[: len(row.ids) - row.response_length]


def response_part(row: EncodedResponse) -> list[int]:
    return row.ids[len(row.ids) - row.response_length :]


def test_every_response_of_a_prompt_keeps_the_same_prompt_tokens() -> None:
    short, long = [1000, 1001], list(range(200, 210))
    rows = fit_group(PROMPT, [short, long], EOS, max_length=16)
    # The longest row (10 + EOS) leaves 5 prompt tokens; the short one keeps those same 5.
    assert [prompt_part(row) for row in rows] == [PROMPT[-5:], PROMPT[-5:]]
    assert [response_part(row) for row in rows] == [[*short, EOS], [*long, EOS]]
    assert [len(row.ids) for row in rows] == [8, 16]
    # Each row cut on its own, as before, would give the short one more context than the long.
    alone = [[*PROMPT, *response, EOS][-16:] for response in (short, long)]
    assert alone[0][:-3] == PROMPT[-13:] != prompt_part(rows[0])
    assert alone[1][:-11] == PROMPT[-5:] == prompt_part(rows[1])


def test_the_prompt_keeps_a_quarter_of_max_length_and_a_long_response_its_end() -> None:
    response = list(range(200, 230))  # 30 tokens: alone it would fill the whole row
    (row,) = fit_group(PROMPT, [response], EOS, max_length=16)
    assert prompt_part(row) == PROMPT[-4:]
    assert response_part(row) == [*response[-11:], EOS]
    assert len(row.ids) == 16


def test_a_prompt_shorter_than_a_quarter_is_kept_whole() -> None:
    response = list(range(200, 230))
    (row,) = fit_group([7, 8], [response], EOS, max_length=16)
    assert prompt_part(row) == [7, 8]
    assert response_part(row) == [*response[-13:], EOS]


def test_rows_that_fit_are_not_cut() -> None:
    rows = fit_group(PROMPT, [[1], [2, 3]], EOS, max_length=64)
    assert [row.ids for row in rows] == [[*PROMPT, 1, EOS], [*PROMPT, 2, 3, EOS]]
    assert [row.response_length for row in rows] == [2, 3]
    (uncut,) = fit_group(PROMPT, [list(range(500))], EOS, max_length=None)
    assert len(uncut.ids) == 521 and uncut.response_length == 501


def test_a_max_length_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_length must be positive"):
        fit_group(PROMPT, [[1]], EOS, max_length=0)


def test_encode_groups_cuts_each_prompts_responses_together() -> None:
    prompts = ["p" * 20, "q" * 3]
    groups = encode_groups(TOKENIZER, prompts, [["ab", "x" * 10], ["y", "z"]], max_length=16)
    first, second = groups
    assert {tuple(prompt_part(row)) for row in first} == {tuple(TOKENIZER.encode("p" * 5))}
    assert [response_part(row) for row in first] == [
        [*TOKENIZER.encode("ab"), EOS],
        [*TOKENIZER.encode("x" * 10), EOS],
    ]
    assert [prompt_part(row) for row in second] == [TOKENIZER.encode("qqq")] * 2


def test_encode_groups_needs_a_group_per_prompt() -> None:
    with pytest.raises(ValueError, match="2 prompts but 1 groups"):
        encode_groups(TOKENIZER, ["a", "b"], [["x"]])


def test_encode_responses_cuts_each_row_on_its_own() -> None:
    prompt = "p" * 20
    rows = encode_responses(TOKENIZER, [prompt, prompt], ["ab", "x" * 10], max_length=16)
    assert [len(prompt_part(row)) for row in rows] == [13, 5]
    assert all(len(row.ids) == 16 for row in rows)


def test_collate_masks_exactly_the_response_and_its_eos() -> None:
    rows = [EncodedResponse([10, 11, 12, 20, EOS], 2), EncodedResponse([13, 30, 31, EOS], 3)]
    batch = collate(rows, PAD)
    assert batch.tokens.tolist() == [[10, 11, 12, 20, EOS], [PAD, 13, 30, 31, EOS]]
    assert batch.attention_mask.tolist() == [
        [True, True, True, True, True],
        [False, True, True, True, True],
    ]
    assert batch.response_mask.tolist() == [
        [False, False, False, True, True],
        [False, False, True, True, True],
    ]
    assert batch.tokens[batch.response_mask].tolist() == [20, EOS, 30, 31, EOS]
    assert not (batch.response_mask & ~batch.attention_mask).any()
    assert batch.tokens.dtype == torch.long
