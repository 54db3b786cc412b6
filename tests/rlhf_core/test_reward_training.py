import argparse
import dataclasses
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rlhf_core import reward_training
from rlhf_core.checkpoint import save_checkpoint
from rlhf_core.losses import ranking_loss
from rlhf_core.palm import PaLM, PaLMConfig
from rlhf_core.records import LikertRating, PairwisePreference, Ranking, Rewrite, write_records
from rlhf_core.reward import RewardHeadConfig, RewardModel
from rlhf_core.reward_io import load_reward_model, save_reward_model
from rlhf_core.reward_labels import (
    LabelLossConfig,
    LabelRecord,
    LikertItem,
    PairItem,
    RankingItem,
    RewardTrainingError,
    Scores,
    batch_loss,
    bootstrap_counts,
    expected_calibration_error,
    heads_trained_by,
    held_out_prompt,
    item_losses,
    reward_metrics,
    score_items,
    split_by_prompt,
    to_items,
)
from rlhf_core.reward_training import (
    RewardTrainingConfig,
    add_train_reward_command,
    evaluate_reward_model,
    heads_for,
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
    assert [type(item) for item in items] == [
        PairItem,
        PairItem,
        RankingItem,
        PairItem,
        LikertItem,
    ]
    first, _, ranking, rewrite, rating = items
    assert isinstance(first, PairItem) and isinstance(rewrite, PairItem)
    assert first.margin == QUICK.losses.tie_threshold + QUICK.losses.strength_margin  # grade 2
    assert isinstance(ranking, RankingItem) and ranking.weight == 1.0  # whole, one label
    assert ranking.responses == ("eee", "eab", "abc")
    assert (rewrite.first, rewrite.second, rewrite.source) == ("ebc", "abc", "rewrite")
    assert isinstance(rating, LikertItem) and rating.labels == (3,)
    with pytest.raises(RewardTrainingError, match="bins"):
        to_items([LikertRating("p", "r", {"overall": 1}, (0, 9))], RewardHeadConfig(), QUICK.losses)
    with pytest.raises(RewardTrainingError, match="not among"):
        to_items([LikertRating("p", "r", {"tone": 1}, (1, 5))], RewardHeadConfig(), QUICK.losses)


def test_every_kind_of_label_trains_and_a_zero_weight_silences_its_kind() -> None:
    model = reward_model()
    items = to_items(MIXED, model.config, QUICK.losses)
    losses = item_losses(score_items(model, TOKENIZER, items, None), items, QUICK.losses)
    assert bool((losses > 0).all())
    batch_loss(
        score_items(model, TOKENIZER, items, None), items, QUICK.losses, mean_weight=1.0
    ).backward()
    assert model.likert_head is not None and model.likert_head.weight.grad is not None
    assert model.likert_head.weight.grad.abs().sum() > 0

    model.zero_grad(set_to_none=True)
    no_likert = LabelLossConfig(loss_weights={"likert": 0.0})
    scores = score_items(model, TOKENIZER, items, None)
    assert item_losses(scores, items, no_likert)[-1].abs().sum() == 0
    batch_loss(scores, items, no_likert, mean_weight=1.0).backward()
    # Rewards come from the scalar head, so only the Likert loss reaches the Likert head.
    grad = model.likert_head.weight.grad
    assert grad is None or grad.abs().sum() == 0


def pair(first: str, second: str, *, tie: bool = False) -> PairItem:
    return PairItem("p", first, second, "pairwise", 0.5, tie=tie, both_bad=False, weight=1.0)


def gradient_of_first_item(items: list[PairItem]) -> torch.Tensor:
    """d batch loss / d (the first item's two rewards), rewards given by hand."""
    rewards = torch.tensor(
        [float(index % 3) for index in range(2 * len(items))], requires_grad=True
    )
    scores = Scores(
        rewards, rewards[:, None], None, [range(2 * i, 2 * i + 2) for i in range(len(items))]
    )
    batch_loss(scores, items, QUICK.losses, mean_weight=1.0).backward()
    assert rewards.grad is not None
    return rewards.grad[:2]


def test_an_item_weighs_the_same_whatever_else_is_in_its_batch() -> None:
    tie = pair("a", "b", tie=True)
    among_pairs = gradient_of_first_item([tie] + [pair("c", "d")] * 15)
    among_ties = gradient_of_first_item([tie] + [pair("c", "d", tie=True)] * 15)
    torch.testing.assert_close(among_pairs, among_ties)
    # ... and as much as one strict pair of the batch: 1/16 of it, not a kind's whole mean.
    alone = gradient_of_first_item([tie])
    torch.testing.assert_close(among_pairs, alone / 16)


def test_a_ranking_trains_as_one_item_with_the_ranking_loss() -> None:
    model = reward_model()
    (item,) = to_items([Ranking("p", ("eee", "eab", "abc"))], model.config, QUICK.losses)
    scores = score_items(model, TOKENIZER, [item], None)
    expected = ranking_loss(scores.rewards[None], torch.arange(3)[None], margin=0.5)
    torch.testing.assert_close(item_losses(scores, [item], QUICK.losses)[0, 0], expected)


def test_each_ensemble_member_trains_on_its_own_bootstrap_resample() -> None:
    counts = bootstrap_counts(1000, 4, seed=0)
    assert counts.shape == (1000, 4) and abs(counts.mean().item() - 1.0) < 0.1
    assert not torch.equal(counts[:, 0], counts[:, 1])
    assert torch.equal(counts, bootstrap_counts(1000, 4, seed=0))
    assert torch.equal(bootstrap_counts(5, 1, seed=0), torch.ones(5, 1))
    items = [pair("a", "b"), pair("c", "d")]
    rewards = torch.zeros(4, 2, requires_grad=True)
    scores = Scores(rewards.mean(dim=1), rewards, None, [range(0, 2), range(2, 4)])
    only_first = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    batch_loss(scores, items, QUICK.losses, mean_weight=1.0, counts=only_first).backward()
    assert rewards.grad is not None
    assert rewards.grad[:, 0].abs().sum() > 0 and rewards.grad[:, 1].abs().sum() == 0


def test_metrics_on_a_hand_made_case() -> None:
    pairs = [pair("a", "b"), pair("a", "b"), pair("a", "b", tie=True)]
    rewards = torch.tensor([2.0, 0.0, 0.0, 1.0, 9.0, 0.0, 0.0])
    # One Likert item over bins 1..3 rated 3 (index 2): argmax bin 2, expected 0.25·2+0.75·3.
    logits = torch.log(torch.tensor([[[0.0, 0.25, 0.75]]] * 7))
    ratings = to_items(
        [LikertRating("p", "r", {"overall": 3}, (1, 3))], RewardHeadConfig(bins=3), QUICK.losses
    )
    rows = [range(0, 2), range(2, 4), range(4, 6), range(6, 7)]
    metrics = reward_metrics(
        Scores(rewards, rewards[:, None], logits, rows),
        [*pairs, *ratings],
        torch.tensor([1.0, 2.0, 3.0]),
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


def test_likert_labels_alone_give_a_likert_only_model_whose_reward_is_the_expected_score() -> None:
    ratings = [r for r in simulated_labels(30, noise=0.0) if isinstance(r, LikertRating)]
    heads = heads_for(ratings)
    assert not heads.pairwise and heads.attributes == ("overall",)
    assert heads_for(MIXED).pairwise
    model = reward_model(heads)
    train_reward_model(model, TOKENIZER, ratings, QUICK)
    assert model.trained_heads == frozenset({"likert"})
    batch = to_items(ratings[:4], heads, QUICK.losses)
    scores = score_items(model.eval(), TOKENIZER, batch, None)
    assert scores.likert_logits is not None and scores.members is None
    raw = model.score([r.prompt for r in ratings[:4]], [r.response for r in ratings[:4]], TOKENIZER)
    expected = model.normalized(scores.rewards)
    torch.testing.assert_close(raw, expected)


def test_a_pairwise_head_no_label_can_train_is_refused() -> None:
    ratings = [r for r in simulated_labels(30, noise=0.0) if isinstance(r, LikertRating)]
    with pytest.raises(RewardTrainingError, match="trains this model's scalar head"):
        train_reward_model(reward_model(), TOKENIZER, ratings, QUICK)
    items = to_items(ratings, RewardHeadConfig(), QUICK.losses)
    assert heads_trained_by(items, QUICK.losses) == frozenset({"likert"})


class Recorder(TrainingCallback):
    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []

    def on_step(self, metrics: dict[str, float]) -> None:  # type: ignore[override]
        self.steps.append(dict(metrics))

    def on_eval(self, metrics: dict[str, float]) -> None:  # type: ignore[override]
        self.evals.append(dict(metrics))


def test_early_stopping_restores_the_best_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scripted held-out losses: best at epoch 2, then two worse epochs exhaust patience 2.
    scripted = iter([0.9, 0.5, 0.7, 0.8, 0.1, 0.1])
    weights_seen: list[torch.Tensor] = []
    real = reward_training.evaluate_items

    def evaluate(model: RewardModel, *args: object, **kwargs: object) -> dict[str, float]:
        assert model.scalar_head is not None
        weights_seen.append(model.scalar_head.weight.detach().clone())
        return {**real(model, *args, **kwargs), "loss": next(scripted)}  # type: ignore[arg-type]

    monkeypatch.setattr(reward_training, "evaluate_items", evaluate)
    config = RewardTrainingConfig(
        lr=3e-3,
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
    result = train_reward_model(
        model, TOKENIZER, simulated_labels(30, noise=0.05), config, callback=recorder
    )
    assert result.best_epoch == 2
    assert result.stopped_early and result.epochs == 4
    assert model.scalar_head is not None
    assert torch.equal(model.scalar_head.weight, weights_seen[1])
    assert not torch.equal(model.scalar_head.weight, weights_seen[3])
    rows = [json.loads(line) for line in config.log_file.read_text().splitlines()]  # type: ignore[union-attr]
    assert len(rows) == len(recorder.steps) + len(recorder.evals) == result.steps + result.epochs
    assert [row["val_loss"] for row in recorder.evals] == [0.9, 0.5, 0.7, 0.8]


def test_the_linear_probe_fits_the_heads_on_frozen_features_before_fine_tuning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = reward_model(RewardHeadConfig(members=2))
    backbone = {name: p.clone() for name, p in model.backbone.named_parameters()}
    probed: dict[str, torch.Tensor] = {}
    real = reward_training._RewardTrainer._probe

    def probe(self: reward_training._RewardTrainer, *args: list[object]) -> None:
        real(self, *args)  # type: ignore[arg-type]
        probed.update({name: p.clone() for name, p in model.named_parameters()})

    monkeypatch.setattr(reward_training._RewardTrainer, "_probe", probe)
    records = simulated_labels(60, noise=0.0)
    config = dataclasses.replace(QUICK, probe_steps=60, epochs=1, lr=1e-9, warmup_steps=0)
    heads = {name: p.clone() for name, p in model.named_parameters() if "head" in name}
    result = train_reward_model(model, TOKENIZER, records, config)

    for name, weights in backbone.items():  # the probe never touched the backbone
        assert torch.equal(probed[f"backbone.{name}"], weights), name
    assert all(not torch.equal(probed[name], weights) for name, weights in heads.items())
    # Its held-out evaluation is epoch 0; fine-tuning at a vanishing rate cannot beat it by
    # much, and the probe alone already beats the untrained heads clearly.
    assert [row["epoch"] for row in result.history] == [0, 1]
    assert result.history[0]["pairwise_accuracy"] >= 0.7


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


def test_the_held_out_split_is_independent_of_other_splits_by_the_prompts_hash() -> None:
    prompts = [f"prompt {index}" for index in range(2000)]
    outside = [p for p in prompts if not held_out_prompt(p, 0.2, salt="export")]
    held = [p for p in outside if held_out_prompt(p, 0.1)]
    assert 0.05 < len(held) / len(outside) < 0.15
