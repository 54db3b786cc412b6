import argparse
import copy
import math
import random
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from rlhf_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rlhf_core.dpo import (
    DPOConfig,
    add_dpo_command,
    dpo_metrics,
    encode_pairs_for_dpo,
    reference_logprobs,
    train_dpo,
    usable_pairs,
)
from rlhf_core.finetuning import FineTuneError
from rlhf_core.generation import generate
from rlhf_core.lora import adapters_disabled
from rlhf_core.palm import PaLM, PaLMConfig
from rlhf_core.records import Demonstration, PairwisePreference, Ranking, write_records
from rlhf_core.sequences import collate, encode_responses, response_logprobs
from rlhf_core.sft import SFTConfig, train_sft
from rlhf_core.simulation import LetterShare, annotator_panel
from rlhf_core.tokenizer import Tokenizer

TOKENIZER = Tokenizer.byte_fallback()
CONFIG = PaLMConfig(num_tokens=TOKENIZER.vocab_size, dim=32, depth=2, heads=2, dim_head=16)
PAIRS = [
    PairwisePreference("Say e:", "eee", "abc"),
    PairwisePreference("Say e:", "ee", "ab", strength=3),
    PairwisePreference("Pick:", "e", "d"),
    PairwisePreference("Pick:", "be", "bd", weight=0.5),
    PairwisePreference("Tie:", "a", "b", tie=True),
    PairwisePreference("Bad:", "x", "y", both_bad=True),
]


def small_model(seed: int = 0) -> PaLM:
    torch.manual_seed(seed)
    return PaLM(CONFIG)


def quick(**changes: object) -> DPOConfig:
    settings: dict[str, object] = {"lr": 1e-2, "batch_size": 2, "max_steps": 6}
    return DPOConfig(mixed_precision="no", **{**settings, **changes})  # type: ignore[arg-type]


def test_ties_and_both_bad_pairs_are_skipped_and_strength_can_weigh() -> None:
    kept, weights = usable_pairs(PAIRS)
    assert kept == PAIRS[:4]
    assert weights.tolist() == [1.0, 1.0, 1.0, 0.5]
    _, by_strength = usable_pairs(PAIRS, weight_by_strength=True)
    assert by_strength.tolist() == [1.0, 3.0, 1.0, 0.5]
    result = train_dpo(small_model(), TOKENIZER, PAIRS, quick(max_steps=1))
    assert (result.pairs_used, result.pairs_skipped) == (4, 2)


def test_metrics_on_a_hand_made_batch() -> None:
    chosen, rejected = torch.tensor([0.3, -0.1, 0.2]), torch.tensor([0.1, 0.2, -0.2])
    metrics = dpo_metrics(chosen, rejected, torch.tensor([1.0, 2.0, 3.0]), torch.tensor(4))
    assert metrics == pytest.approx(
        {
            "reward_accuracy": 2 / 3,
            "reward_margin": (0.2 - 0.3 + 0.4) / 3,
            "chosen_reward": 0.4 / 3,
            "rejected_reward": 0.1 / 3,
            "kl": 6 / 4,
        }
    )


def test_chosen_and_rejected_keep_the_same_prompt_tokens_under_truncation() -> None:
    pair = PairwisePreference("p" * 20, "ee", "x" * 10)
    rows = encode_pairs_for_dpo(TOKENIZER, [pair], torch.ones(1), max_length=16)
    chosen, rejected = rows.chosen[0], rows.rejected[0]
    prompts = [row.ids[: len(row.ids) - row.response_length] for row in (chosen, rejected)]
    assert prompts == [TOKENIZER.encode("p" * 5)] * 2
    # Cut one by one, the short chosen row would have kept 13 prompt tokens, the rejected 5.
    alone = encode_responses(TOKENIZER, [pair.prompt] * 2, [pair.chosen, pair.rejected], 16)
    assert alone[0].ids[:-3] == TOKENIZER.encode("p" * 13) != prompts[0]


class CountingPaLM(PaLM):
    """A reference that counts its forward passes."""

    calls = 0

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        self.calls += 1
        return super().forward(*args, **kwargs)  # type: ignore[arg-type]


def test_the_reference_runs_once_over_the_pairs_before_training() -> None:
    policy = small_model()
    reference = CountingPaLM(CONFIG)
    reference.load_state_dict(policy.state_dict())
    result = train_dpo(policy, TOKENIZER, PAIRS, quick(max_steps=8), reference=reference)
    assert result.steps == 8
    assert reference.calls == 2  # 4 usable pairs in batches of 2, one pass, never again
    # A reference equal to the policy gives zero implicit rewards at the first step: log 2.
    first = result.history[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["chosen_reward"] == pytest.approx(0, abs=1e-5)


def test_without_a_reference_the_policy_before_training_is_the_reference() -> None:
    result = train_dpo(small_model(), TOKENIZER, PAIRS, quick(max_steps=3))
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert result.history[0]["kl"] == pytest.approx(0, abs=1e-5)
    assert result.metrics["reward_margin"] > 0


def test_with_lora_the_reference_is_the_base_with_adapters_off() -> None:
    policy, untouched = small_model(), small_model()
    result = train_dpo(policy, TOKENIZER, PAIRS, quick(lora_rank=4))
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    rows = encode_pairs_for_dpo(TOKENIZER, PAIRS[:4], torch.ones(4), None)
    reference = torch.device("cpu")
    with adapters_disabled(policy):
        base = reference_logprobs(policy, rows, TOKENIZER.pad_id, batch_size=4, device=reference)
    expected = reference_logprobs(untouched, rows, TOKENIZER.pad_id, batch_size=4, device=reference)
    torch.testing.assert_close(base.chosen, expected.chosen)
    torch.testing.assert_close(base.rejected, expected.rejected)
    trained = reference_logprobs(policy, rows, TOKENIZER.pad_id, batch_size=4, device=reference)
    assert not torch.allclose(trained.chosen, expected.chosen)
    with pytest.raises(FineTuneError, match="pass no reference"):
        train_dpo(policy, TOKENIZER, PAIRS, quick(lora_rank=4), reference=untouched)


def test_only_ties_is_refused() -> None:
    with pytest.raises(FineTuneError, match="none of the 1 pairs"):
        train_dpo(small_model(), TOKENIZER, PAIRS[4:5], quick())
    with pytest.raises(FineTuneError, match="beta must be > 0"):
        DPOConfig(beta=0)


def run_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    add_dpo_command(parser.add_subparsers())
    args = parser.parse_args(argv)
    args.run(args)


def test_the_dpo_command_writes_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_checkpoint(tmp_path / "base", small_model(), TOKENIZER)
    write_records(tmp_path / "pairs.jsonl", PAIRS)
    argv = ["dpo", "--base", str(tmp_path / "base"), "--pairs", str(tmp_path / "pairs.jsonl")]
    run_command([*argv, "--out", str(tmp_path / "dpo"), "--steps", "2", "--beta", "0.2"])
    assert capsys.readouterr().out.startswith("dpo: 4 pairs, 2 skipped, 2 steps (loss ")
    checkpoint = load_checkpoint(tmp_path / "dpo")
    assert checkpoint.metadata.extra["dpo"]["beta"] == 0.2
    write_records(tmp_path / "rankings.jsonl", [Ranking("p", ("a", "b", "c"))])
    run_command(
        [
            "dpo",
            "--base",
            str(tmp_path / "base"),
            "--pairs",
            str(tmp_path / "rankings.jsonl"),
            "--out",
            str(tmp_path / "ranked"),
            "--steps",
            "1",
        ]
    )
    assert capsys.readouterr().out.startswith("dpo: 3 pairs, 1 steps")


# Proof that DPO learns a hidden preference: the share of the letter "e" in a response.

PROMPTS = [f"q{index}:" for index in range(16)]
SAMPLES_PER_PROMPT = 4
COMPARED = [(0, 1), (2, 3), (0, 2), (1, 3), (0, 3), (1, 2)]


def random_text_model() -> PaLM:
    """A tiny PaLM fine-tuned to answer with random strings over "abcde": varied samples
    whose share of "e" is about 1/5."""
    rng = random.Random(0)
    demonstrations = [
        Demonstration(
            rng.choice(PROMPTS),
            "".join(rng.choice("abcde") for _ in range(rng.randint(6, 10))),
            "random",
        )
        for _ in range(256)
    ]
    model = small_model()
    config = SFTConfig(lr=3e-3, batch_size=32, epochs=20, mixed_precision="no")
    train_sft(model, TOKENIZER, demonstrations, config)
    return model


def sample(model: PaLM, seed: int) -> list[str]:
    prompts = [TOKENIZER.encode(prompt) for prompt in PROMPTS for _ in range(SAMPLES_PER_PROMPT)]
    generation = generate(
        model,
        prompts,
        max_new_tokens=12,
        eos_token_id=TOKENIZER.eos_id,
        pad_token_id=TOKENIZER.pad_id,
        seed=seed,
    )
    rows = zip(generation.tokens.tolist(), generation.lengths.tolist(), strict=True)
    return [TOKENIZER.decode(tokens[:length], skip_special_tokens=True) for tokens, length in rows]


def labelled_pairs(texts: list[str]) -> list[PairwisePreference]:
    panel = annotator_panel(3, noise=0.05)
    pairs = []
    for index, prompt in enumerate(PROMPTS):
        own = texts[index * SAMPLES_PER_PROMPT : (index + 1) * SAMPLES_PER_PROMPT]
        for turn, (a, b) in enumerate(COMPARED):
            if own[a].strip() and own[b].strip() and own[a] != own[b]:
                pairs.append(panel[(index + turn) % len(panel)].compare(prompt, own[a], own[b]))
    return pairs


def per_token_kl(policy: PaLM, reference: nn.Module, texts: list[str]) -> float:
    """Mean log π - log π_ref per token of samples of π: an estimate of KL(π ‖ π_ref)."""
    prompts = [prompt for prompt in PROMPTS for _ in range(SAMPLES_PER_PROMPT)]
    kept = [(prompt, text) for prompt, text in zip(prompts, texts, strict=True) if text.strip()]
    rows = encode_responses(TOKENIZER, [p for p, _ in kept], [t for _, t in kept])
    batch = collate(rows, TOKENIZER.pad_id)
    with torch.no_grad():
        log_ratio = response_logprobs(policy, batch) - response_logprobs(reference, batch)
    return float(log_ratio.sum() / batch.response_mask[:, 1:].sum())


def mean_score(texts: list[str]) -> float:
    return sum(map(LetterShare(), texts)) / len(texts)


@pytest.mark.slow
def test_dpo_raises_the_hidden_preference_within_a_bounded_kl() -> None:
    started = time.perf_counter()
    policy = random_text_model()
    reference = copy.deepcopy(policy)
    before = sample(policy, seed=1)
    pairs = labelled_pairs(before)
    config = DPOConfig(lr=1e-3, beta=0.1, batch_size=16, epochs=8, mixed_precision="no")
    result = train_dpo(policy, TOKENIZER, pairs, config)
    after = sample(policy, seed=1)
    kl = per_token_kl(policy, reference, after)
    print(
        f"pairs {len(pairs)}, score before {mean_score(before):.3f} after {mean_score(after):.3f}, "
        f"reward accuracy {result.metrics['reward_accuracy']:.2f}, KL per token {kl:.3f}, "
        f"{time.perf_counter() - started:.1f} s"
    )
    # Measured: 0.184 -> 0.522, KL 0.56 per token; 3 s alone on one core, 16 s on a busy CPU.
    assert mean_score(after) > mean_score(before) + 0.15
    assert 0 < kl < 1.0


def test_the_dpo_command_reports_bad_settings_as_user_errors(tmp_path: Path) -> None:
    argv = ["dpo", "--base", str(tmp_path / "base"), "--pairs", str(tmp_path / "pairs.jsonl")]
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        run_command([*argv, "--out", str(tmp_path / "out")])
    save_checkpoint(tmp_path / "base", small_model(), TOKENIZER)
    # Refused before the pairs are read: the settings come from the base's config alone.
    with pytest.raises(FineTuneError, match="beta must be > 0"):
        run_command([*argv, "--out", str(tmp_path / "out"), "--beta", "0"])
    with pytest.raises(FileNotFoundError):
        run_command([*argv, "--out", str(tmp_path / "out")])
