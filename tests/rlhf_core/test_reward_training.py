import argparse
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rlhf_core.checkpoint import save_checkpoint
from rlhf_core.palm import PaLM, PaLMConfig
from rlhf_core.records import LikertRating, PairwisePreference, Ranking, Rewrite, write_records
from rlhf_core.reward import RewardHeadConfig, RewardModel
from rlhf_core.reward_io import load_reward_model, save_reward_model
from rlhf_core.reward_labels import (
    LabelLossConfig,
    LabelRecord,
    PairItem,
    RewardTrainingError,
    Scores,
    expected_calibration_error,
    label_losses,
    reward_metrics,
    score_items,
    split_by_prompt,
    to_items,
    total_loss,
)
from rlhf_core.reward_training import (
    RewardTrainingConfig,
    add_train_reward_command,
    evaluate_reward_model,
    train_reward_model,
)
from rlhf_core.simulation import annotator_panel
from rlhf_core.tokenizer import Tokenizer
from rlhf_core.training import TrainingCallback

CONFIG = PaLMConfig(num_tokens=258, dim=32, depth=2, heads=4, dim_head=8)
TOKENIZER = Tokenizer.byte_fallback()
QUICK = RewardTrainingConfig(
    lr=3e-3, batch_size=16, epochs=2, warmup_steps=2, held_out_fraction=0.25, mixed_precision="no"
)
MIXED: list[LabelRecord] = [
    PairwisePreference("p1", "eee", "abc", strength=2),
    PairwisePreference("p1", "eab", "bae", tie=True, both_bad=True),
    Ranking("p2", ("eee", "eab", "abc")),
    Rewrite("p3", "abc", "ebc"),
    LikertRating("p4", "eea", {"overall": 4}, (1, 5)),
]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy two-core machine their
    spin-waiting made the learning test 20x slower (70 s against 3 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reward_model(heads: RewardHeadConfig | None = None, seed: int = 0) -> RewardModel:
    torch.manual_seed(seed)
    return RewardModel(PaLM(CONFIG), heads or RewardHeadConfig())


def random_text(rng: random.Random, length: int, share_of_e: float) -> str:
    return "".join("e" if rng.random() < share_of_e else rng.choice("abcd ") for _ in range(length))


def simulated_labels(prompts: int, *, noise: float, seed: int = 0) -> list[LabelRecord]:
    """Pairwise, Likert and ranking labels from a noisy panel, a third of the prompts each."""
    rng, panel = random.Random(seed), annotator_panel(3, noise=noise, seed=seed)
    records: list[LabelRecord] = []
    for index in range(prompts):
        prompt = f"q{index} {random_text(rng, 4, 0.2)}"
        responses = [random_text(rng, 12, rng.uniform(0.0, 0.3)) for _ in range(3)]
        first, second = panel[index % 3], panel[(index + 1) % 3]
        if index % 3 == 0:
            records.append(first.compare(prompt, responses[0], responses[1]))
            records.append(second.compare(prompt, responses[1], responses[2]))
        elif index % 3 == 1:
            records.extend(first.rate(prompt, response) for response in responses)
        else:
            records.append(first.rank(prompt, responses))
    return records


def test_the_split_is_by_prompt_deterministic_and_disjoint() -> None:
    records = simulated_labels(60, noise=0.0)
    train, held = split_by_prompt(records, 0.3)
    assert (train, held) == split_by_prompt(list(records), 0.3)
    assert not {r.prompt for r in train} & {r.prompt for r in held}
    assert len(train) + len(held) == len(records) and 0 < len(held) < len(records)
    assert split_by_prompt(records, 0.0) == (records, [])


def test_records_become_items_with_margins_weights_and_bins() -> None:
    items = to_items(MIXED, RewardHeadConfig(), QUICK.losses)
    pairs = [item for item in items if isinstance(item, PairItem)]
    assert [item.source for item in pairs] == ["pairwise"] * 2 + ["ranking"] * 3 + ["rewrite"]
    assert (
        pairs[0].margin == QUICK.losses.tie_threshold + QUICK.losses.strength_margin
    )  # strength 2
    assert pairs[2].weight == pytest.approx(1 / 3)  # a ranking of 3 weighs as one pair
    assert (pairs[5].first, pairs[5].second) == ("ebc", "abc")  # the rewrite is preferred
    assert items[-1].labels == (3,)  # type: ignore[union-attr]
    with pytest.raises(RewardTrainingError, match="bins"):
        to_items([LikertRating("p", "r", {"overall": 1}, (0, 9))], RewardHeadConfig(), QUICK.losses)
    with pytest.raises(RewardTrainingError, match="not among"):
        to_items([LikertRating("p", "r", {"tone": 1}, (1, 5))], RewardHeadConfig(), QUICK.losses)


def test_a_mixed_batch_calls_every_loss_and_zero_weights_silence_a_kind() -> None:
    model = reward_model()
    items = to_items(MIXED, model.config, QUICK.losses)
    losses = label_losses(score_items(model, TOKENIZER, items, None), items, QUICK.losses)
    assert set(losses) == {"pairwise", "ranking", "rewrite", "tie", "both_bad", "likert"}
    total_loss(losses, QUICK.losses).backward()
    assert model.likert_head is not None and model.likert_head.weight.grad is not None
    assert model.likert_head.weight.grad.abs().sum() > 0

    model.zero_grad(set_to_none=True)
    no_likert = LabelLossConfig(loss_weights={"likert": 0.0})
    losses = label_losses(score_items(model, TOKENIZER, items, None), items, no_likert)
    assert "likert" not in losses
    total_loss(losses, no_likert).backward()
    # Rewards come from the scalar head, so only the Likert loss reaches the Likert head.
    assert model.likert_head.weight.grad is None


def test_metrics_on_a_hand_made_case() -> None:
    pairs = [
        PairItem("p", "a", "b", "pairwise", 0.0, tie=False, both_bad=False, weight=1.0),
        PairItem("p", "a", "b", "pairwise", 0.0, tie=False, both_bad=False, weight=1.0),
        PairItem("p", "a", "b", "pairwise", 0.0, tie=True, both_bad=False, weight=1.0),
    ]
    first, second = torch.tensor([2.0, 0.0, 9.0]), torch.tensor([0.0, 1.0, 0.0])
    # One Likert item over bins 1..3 rated 3 (index 2): argmax bin 2, expected 0.25·2+0.75·3.
    logits = torch.log(torch.tensor([[[0.0, 0.25, 0.75]]]))
    ratings = to_items(
        [LikertRating("p", "r", {"overall": 3}, (1, 3))], RewardHeadConfig(bins=3), QUICK.losses
    )
    metrics = reward_metrics(
        Scores(first, second, logits), [*pairs, *ratings], torch.tensor([1.0, 2.0, 3.0])
    )
    assert metrics["pairwise_accuracy"] == 0.5  # the tie is left out
    p_right, p_wrong = (
        torch.sigmoid(torch.tensor(2.0)).item(),
        torch.sigmoid(torch.tensor(1.0)).item(),
    )
    # Bins of confidence: 0.88 (right) and 0.73 (wrong): |1 - 0.88| / 2 + |0 - 0.73| / 2.
    assert metrics["ece"] == pytest.approx(((1 - p_right) + p_wrong) / 2)
    assert metrics["likert_accuracy"] == 1.0
    assert metrics["likert_mae"] == pytest.approx(0.25)


def test_a_perfectly_calibrated_bin_has_no_calibration_error() -> None:
    # Confidence 0.75 in one bin, right 3 times out of 4.
    p_first = torch.tensor([0.75, 0.75, 0.75, 0.25])
    assert expected_calibration_error(p_first) == pytest.approx(0.0)


class Recorder(TrainingCallback):
    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []

    def on_step(self, metrics: dict[str, float]) -> None:  # type: ignore[override]
        self.steps.append(dict(metrics))

    def on_eval(self, metrics: dict[str, float]) -> None:  # type: ignore[override]
        self.evals.append(dict(metrics))


def test_early_stopping_restores_the_best_epoch(tmp_path: Path) -> None:
    records = simulated_labels(30, noise=0.05)
    # A learning rate far too high makes the held-out loss worse after the first epoch.
    config = RewardTrainingConfig(
        lr=0.5,
        batch_size=8,
        epochs=6,
        warmup_steps=0,
        held_out_fraction=0.3,
        patience=2,
        mixed_precision="no",
        log_file=tmp_path / "metrics.jsonl",
    )
    recorder = Recorder()
    model = reward_model()
    result = train_reward_model(model, TOKENIZER, records, config, callback=recorder)
    losses = [row["loss"] for row in result.history]
    assert result.best_epoch == 1 + losses.index(min(losses))
    assert result.stopped_early and result.epochs == result.best_epoch + 2 < 6
    _, held = split_by_prompt(records, 0.3)
    assert evaluate_reward_model(model, TOKENIZER, held, config)["loss"] == pytest.approx(
        min(losses)
    )
    rows = [json.loads(line) for line in config.log_file.read_text().splitlines()]  # type: ignore[union-attr]
    assert len(rows) == len(recorder.steps) + len(recorder.evals) == result.steps + result.epochs
    assert recorder.evals[0]["val_loss"] == losses[0]


def test_a_callback_can_stop_the_run() -> None:
    class StopAtOnce(TrainingCallback):
        def on_step(self, metrics: dict[str, float]) -> bool:  # type: ignore[override]
            return False

    result = train_reward_model(reward_model(), TOKENIZER, MIXED, QUICK, callback=StopAtOnce())
    assert (result.steps, result.stopped_early) == (1, True)


def test_normalisation_is_fitted_and_saved(tmp_path: Path) -> None:
    model = reward_model()
    result = train_reward_model(model, TOKENIZER, simulated_labels(12, noise=0.0), QUICK)
    mean, std = result.normalization
    assert (mean, std) == (model.reward_mean.item(), model.reward_std.item()) and std != 1.0
    save_reward_model(tmp_path / "rm", model, TOKENIZER)
    loaded, _ = load_reward_model(tmp_path / "rm")
    assert (loaded.reward_mean.item(), loaded.reward_std.item()) == (mean, std)


def test_a_lora_run_leaves_the_base_weights_unchanged() -> None:
    model = reward_model(RewardHeadConfig(lora_rank=4))
    base = {n: p.clone() for n, p in model.backbone.named_parameters() if not p.requires_grad}
    assert base  # add_lora froze the base
    adapters = {name: p.clone() for name, p in model.named_parameters() if p.requires_grad}
    train_reward_model(model, TOKENIZER, simulated_labels(12, noise=0.0), QUICK)
    for name, parameter in model.backbone.named_parameters():
        if name in base:
            assert torch.equal(parameter, base[name]), name
    assert any(
        not torch.equal(p, adapters[n]) for n, p in model.named_parameters() if n in adapters
    )


def command_args(tmp_path: Path, *options: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_reward_command(parser.add_subparsers())
    base, out = str(tmp_path / "base"), str(tmp_path / "rm")
    return parser.parse_args(["train-reward", "--base", base, "--out", out, *options])


def test_the_command_trains_and_saves_a_reward_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_checkpoint(tmp_path / "base", PaLM(CONFIG), TOKENIZER)
    records = simulated_labels(18, noise=0.0)
    write_records(
        tmp_path / "pairs.jsonl", [r for r in records if isinstance(r, PairwisePreference)]
    )
    write_records(tmp_path / "likert.jsonl", [r for r in records if isinstance(r, LikertRating)])
    labels = ["--labels", str(tmp_path / "pairs.jsonl"), "--labels", str(tmp_path / "likert.jsonl")]
    args = command_args(tmp_path, *labels, "--lora-rank", "2", "--epochs", "1", "--held-out", "0.3")
    args.run(args)
    assert "held-out: loss=" in capsys.readouterr().out
    model, _ = load_reward_model(tmp_path / "rm")
    assert model.config.attributes == ("overall",) and model.config.lora_rank == 2


@pytest.mark.slow
def test_the_reward_model_learns_a_hidden_preference_from_a_noisy_panel() -> None:
    records = simulated_labels(300, noise=0.03)
    config = RewardTrainingConfig(
        lr=3e-3,
        batch_size=16,
        epochs=6,
        warmup_steps=5,
        held_out_fraction=0.25,
        patience=2,
        mixed_precision="no",
    )
    model = reward_model()
    _, held = split_by_prompt(records, config.held_out_fraction)
    before = evaluate_reward_model(model, TOKENIZER, held, config)
    started = time.perf_counter()
    result = train_reward_model(model, TOKENIZER, records, config)
    seconds = time.perf_counter() - started
    after = result.eval_metrics
    print(f"\nheld-out before: {before}\nheld-out after (epoch {result.best_epoch}): {after}")
    print(f"{result.steps} steps in {seconds:.1f} s; {len(held)} held-out records")
    assert after["pairwise_accuracy"] >= 0.75
    assert after["likert_mae"] < before["likert_mae"]


def test_the_command_refuses_label_files_without_reward_labels(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "base", PaLM(CONFIG), TOKENIZER)
    (tmp_path / "sft.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    args = command_args(tmp_path, "--labels", str(tmp_path / "sft.jsonl"))
    with pytest.raises(RewardTrainingError, match="no pairwise, Likert"):
        args.run(args)
    assert not (tmp_path / "rm").exists()
