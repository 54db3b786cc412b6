import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from rlhf_core.checkpoint import load_checkpoint, save_checkpoint
from rlhf_core.finetuning import FineTuneError, merged_state_dict
from rlhf_core.lora import lora_parameters
from rlhf_core.palm import PaLM, PaLMConfig
from rlhf_core.records import (
    Demonstration,
    LikertRating,
    PairwisePreference,
    Ranking,
    Record,
    Rewrite,
    write_records,
)
from rlhf_core.sequences import ResponseBatch, collate, encode_responses
from rlhf_core.sft import SFTConfig, add_sft_command, demonstrations_from, response_nll, train_sft
from rlhf_core.tokenizer import Tokenizer
from rlhf_core.training import Metrics, TrainingCallback

TOKENIZER = Tokenizer.byte_fallback()
CONFIG = PaLMConfig(num_tokens=TOKENIZER.vocab_size, dim=32, depth=2, heads=2, dim_head=16)
DEMONSTRATIONS = [
    Demonstration("Hi:", "hello there", "test"),
    Demonstration("Count:", "one two three", "test"),
    Demonstration("A longer prompt than the others:", "ok", "test"),
]


def small_model(seed: int = 0) -> PaLM:
    torch.manual_seed(seed)
    return PaLM(CONFIG)


def quick(**changes: object) -> SFTConfig:
    settings: dict[str, object] = {"lr": 1e-2, "batch_size": 3, "max_steps": 5}
    return SFTConfig(mixed_precision="no", **{**settings, **changes})  # type: ignore[arg-type]


def test_the_response_mask_covers_the_response_and_its_eos_only() -> None:
    rows = encode_responses(TOKENIZER, ["ab", "long prompt"], ["cd", "x"])
    batch = collate(rows, TOKENIZER.pad_id)
    # Byte ids are 2 + byte; the second row is the longest (13 tokens), the first is padded.
    expected_first = [TOKENIZER.pad_id] * 8 + [2 + ord(c) for c in "abcd"] + [TOKENIZER.eos_id]
    assert batch.tokens[0].tolist() == expected_first
    assert batch.attention_mask[0].tolist() == [False] * 8 + [True] * 5
    assert batch.response_mask[0].tolist() == [False] * 10 + [True] * 3
    assert batch.response_mask[1].tolist() == [False] * 11 + [True] * 2


def test_truncation_cuts_the_prompt_before_the_response() -> None:
    (row,) = encode_responses(TOKENIZER, ["a long prompt"], ["resp"], max_length=6)
    assert row.ids == [*TOKENIZER.encode("tresp"), TOKENIZER.eos_id]
    assert row.response_length == 5


def test_the_loss_never_reads_prompt_or_padding_logits() -> None:
    rows = encode_responses(TOKENIZER, ["ab", "long prompt"], ["cd", "x"])
    batch = collate(rows, TOKENIZER.pad_id)
    logits = torch.randn(*batch.tokens.shape, TOKENIZER.vocab_size, requires_grad=True)
    loss = response_nll(logits, batch.tokens, batch.response_mask)
    (gradient,) = torch.autograd.grad(loss, logits)
    # logits[:, i] predicts tokens[:, i + 1]: only positions before a response token matter.
    predicts_response = batch.response_mask[:, 1:]
    touched = gradient.abs().sum(dim=-1) > 0
    assert touched[:, :-1].tolist() == predicts_response.tolist()
    assert not touched[:, -1].any()


def test_the_loss_is_the_token_mean_of_rows_scored_alone() -> None:
    model = small_model()
    rows = encode_responses(TOKENIZER, ["Hi:", "A longer prompt"], ["hello", "ok"])

    def loss(batch: ResponseBatch) -> torch.Tensor:
        logits = model(batch.tokens, attention_mask=batch.attention_mask)
        return response_nll(logits, batch.tokens, batch.response_mask)

    together = loss(collate(rows, TOKENIZER.pad_id))
    summed = [loss(collate([row], TOKENIZER.pad_id)) * row.response_length for row in rows]
    expected = torch.stack(summed).sum() / sum(row.response_length for row in rows)
    torch.testing.assert_close(together, expected)


def test_row_weights_scale_their_tokens() -> None:
    logits = torch.randn(2, 4, 8)
    tokens = torch.randint(0, 8, (2, 4))
    mask = torch.tensor([[False, True, True, True], [False, False, True, True]])
    weighted = response_nll(logits, tokens, mask, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(weighted, response_nll(logits[:1], tokens[:1], mask[:1]))


def test_the_loss_falls_on_repeated_demonstrations() -> None:
    model = small_model()
    result = train_sft(model, TOKENIZER, DEMONSTRATIONS, quick(max_steps=30))
    first, last = result.history[0]["loss"], result.metrics["loss"]
    assert first > math.log(50)  # about uniform over the 258 ids at the start
    assert last < first / 3
    assert not model.training


def test_lora_trains_the_adapters_and_leaves_the_base_weights() -> None:
    model = small_model()
    base = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    train_sft(model, TOKENIZER, DEMONSTRATIONS, quick(lora_rank=4))
    after = model.state_dict()
    for name, tensor in base.items():
        assert torch.equal(after[name], tensor), name
    assert any(parameter.abs().sum() > 0 for parameter in lora_parameters(model, "sft")[1::2])
    # Saved merged, the weights give the LoRA model's logits as a plain PaLM.
    plain = PaLM(CONFIG)
    plain.load_state_dict(merged_state_dict(model))
    tokens = torch.tensor([TOKENIZER.encode("Hi: hello")])
    torch.testing.assert_close(plain(tokens), model(tokens), atol=1e-5, rtol=1e-5)
    with pytest.raises(FineTuneError, match="merge it"):
        train_sft(model, TOKENIZER, DEMONSTRATIONS, quick(lora_rank=4))


def test_train_last_layers_changes_only_the_last_block() -> None:
    model = small_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    train_sft(model, TOKENIZER, DEMONSTRATIONS, quick(train_last_layers=1))
    changed = {
        name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])
    }
    assert changed and all(
        name.startswith("layers.1.") or name.startswith("norm.") for name in changed
    )


def test_a_callback_stops_the_run_after_its_step() -> None:
    class StopAtTwo(TrainingCallback):
        def on_step(self, metrics: Metrics) -> bool | None:
            return metrics["step"] < 2

    result = train_sft(small_model(), TOKENIZER, DEMONSTRATIONS, quick(), callback=StopAtTwo())
    assert (result.steps, result.stopped_early) == (2, True)


def test_metrics_go_to_the_log_file(tmp_path: Path) -> None:
    train_sft(small_model(), TOKENIZER, DEMONSTRATIONS, quick(log_file=tmp_path / "m.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    assert {"loss", "tokens", "lr", "grad_norm"} <= rows[0].keys()


def test_bad_settings_and_no_data_are_refused() -> None:
    with pytest.raises(FineTuneError, match="lr must be > 0"):
        SFTConfig(lr=0)
    with pytest.raises(FineTuneError, match="exclude each other"):
        SFTConfig(lora_rank=2, train_last_layers=1)
    with pytest.raises(FineTuneError, match="no demonstrations"):
        train_sft(small_model(), TOKENIZER, [], quick())


def test_demonstrations_come_from_the_best_of_every_kind_of_label() -> None:
    records: list[Record] = [
        Rewrite("p1", "bad", "good"),
        Ranking("p2", ("best", "worst")),
        PairwisePreference("p3", "chosen", "rejected"),
        PairwisePreference("p3", "chosen", "other"),  # the same demonstration again
        PairwisePreference("p4", "a", "b", tie=True),
        PairwisePreference("p5", "a", "b", both_bad=True),
        LikertRating("p6", "great", {"overall": 5}, (1, 5)),
        LikertRating("p7", "poor", {"overall": 2}, (1, 5)),
        Demonstration("p8", "written", "sft"),
    ]
    found = [(item.prompt, item.response, item.source) for item in demonstrations_from(records)]
    assert found == [
        ("p1", "good", "rewrite"),
        ("p2", "best", "ranking"),
        ("p3", "chosen", "pairwise"),
        ("p6", "great", "likert"),
        ("p8", "written", "sft"),
    ]


def run_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    add_sft_command(parser.add_subparsers())
    args = parser.parse_args(argv)
    args.run(args)


def test_the_sft_command_writes_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_checkpoint(tmp_path / "base", small_model(), TOKENIZER)
    write_records(tmp_path / "demos.jsonl", DEMONSTRATIONS)
    out = tmp_path / "sft"
    run_command(
        [
            "sft",
            "--base",
            str(tmp_path / "base"),
            "--data",
            str(tmp_path / "demos.jsonl"),
            "--out",
            str(out),
            "--steps",
            "2",
            "--lr",
            "1e-3",
            "--lora-rank",
            "2",
        ]
    )
    assert capsys.readouterr().out.startswith("sft: 3 demonstrations, 2 steps (loss ")
    checkpoint = load_checkpoint(out)
    assert checkpoint.metadata.extra["trainer"] == "sft"
    assert checkpoint.metadata.extra["sft"]["lora_rank"] == 2
