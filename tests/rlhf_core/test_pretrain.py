import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlhf_core.checkpoint import load_checkpoint
from rlhf_core.palm import tiny
from rlhf_core.pretrain import PretrainConfig, PretrainError, pretrain, resolve_mixed_precision
from rlhf_core.training import TrainingCallback
from tests.rlhf_core.training_data import prepare_tiny_dataset, small_model


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny_dataset(tmp_path_factory.mktemp("pretrain"))


def quick_config(data: Path, out: Path, **changes: object) -> PretrainConfig:
    config = PretrainConfig(
        data_dir=data,
        out_dir=out,
        model=small_model(),
        batch_size=4,
        grad_accum_steps=2,
        max_steps=6,
        lr=1e-2,
        warmup_steps=2,
        eval_every=2,
        eval_batches=1,
        checkpoint_every=100,
        mixed_precision="no",
    )
    return replace(config, **changes)


def metric_rows(out: Path) -> list[dict[str, float]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def losses(out: Path) -> list[tuple[float, float]]:
    """(step, loss or val_loss) of every row: what must repeat exactly after a resume."""
    return [(row["step"], row.get("loss", row.get("val_loss"))) for row in metric_rows(out)]


class Recorder(TrainingCallback):
    """Records every hook call; returns False (stop) after step `stop_at`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.steps: list[Mapping[str, float]] = []
        self.evals: list[Mapping[str, float]] = []
        self.checkpoints: list[Path] = []

    def on_step(self, metrics: Mapping[str, float]) -> bool | None:
        self.steps.append(dict(metrics))
        return False if metrics["step"] == self.stop_at else None

    def on_eval(self, metrics: Mapping[str, float]) -> bool | None:
        self.evals.append(dict(metrics))
        return None

    def on_checkpoint(self, path: Path) -> bool | None:
        self.checkpoints.append(path)
        return None


def test_the_loss_decreases_on_a_tiny_corpus(data: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    config = quick_config(
        data, tmp_path, model="tiny", batch_size=8, grad_accum_steps=1, max_steps=40, lr=3e-3
    )
    config = replace(config, warmup_steps=4, eval_every=20, eval_batches=2)
    result = pretrain(config, callback=recorder, show_progress=False)

    train_losses = [row["loss"] for row in recorder.steps]
    assert train_losses[0] == pytest.approx(5.55, abs=0.2)  # ln(258): uniform over bytes
    assert max(train_losses[-5:]) < 0.5 * train_losses[0]
    first_eval, last_eval = recorder.evals[0], recorder.evals[-1]
    assert [first_eval["step"], last_eval["step"]] == [20, 40]
    assert last_eval["val_loss"] < first_eval["val_loss"] < train_losses[0]
    assert last_eval["val_perplexity"] == pytest.approx(2.718281828 ** last_eval["val_loss"])
    assert result.final_checkpoint == tmp_path / "final"
    assert load_checkpoint(tmp_path / "final").config == tiny(258)


def test_steps_report_their_metrics_and_checkpoints_load(data: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    result = pretrain(
        quick_config(data, tmp_path, checkpoint_every=4), callback=recorder, show_progress=False
    )

    assert [row["step"] for row in recorder.steps] == [1, 2, 3, 4, 5, 6]
    first = recorder.steps[0]
    assert first.keys() == {
        "step",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_second",
        "tokens_seen",
        "elapsed",
    }
    assert first["tokens_seen"] == 4 * 32
    assert first["lr"] == pytest.approx(1e-2 / 3)  # step 0 of a 2-step warm-up
    assert [row["step"] for row in recorder.evals] == [2, 4, 6]
    assert recorder.checkpoints == [tmp_path / "checkpoints" / "step-000004", tmp_path / "final"]
    final = load_checkpoint(tmp_path / "final")
    assert (final.metadata.step, final.metadata.tokens_seen) == (6, 6 * 4 * 32)
    assert final.metadata.metrics.keys() == {"loss", "val_loss", "val_perplexity"}
    assert final.metadata.extra["pretrain"]["batch_size"] == 4
    assert metric_rows(tmp_path) == [*interleave(recorder.steps, recorder.evals)]
    assert result.metrics == recorder.steps[-1] and result.eval_metrics == recorder.evals[-1]


def interleave(
    steps: list[Mapping[str, float]], evals: list[Mapping[str, float]]
) -> list[Mapping[str, float]]:
    rows = []
    for step in steps:
        rows.append(step)
        rows.extend(row for row in evals if row["step"] == step["step"])
    return rows


def test_a_stopped_run_resumes_exactly_where_it_stopped(data: Path, tmp_path: Path) -> None:
    straight = pretrain(quick_config(data, tmp_path / "straight"), show_progress=False)

    config = quick_config(data, tmp_path / "resumed")
    stopped = pretrain(config, callback=Recorder(stop_at=3), show_progress=False)
    assert (stopped.step, stopped.stopped_early, stopped.final_checkpoint) == (3, True, None)
    assert stopped.last_checkpoint == tmp_path / "resumed" / "checkpoints" / "step-000003"
    # A crash after the stop would have logged rows the resumed run logs again.
    with (tmp_path / "resumed" / "metrics.jsonl").open("a") as log:
        log.write('{"step": 4, "loss": 99.0}\n{"step": 5, "lo')
    recorder = Recorder()
    resumed = pretrain(config, callback=recorder, show_progress=False)

    assert recorder.steps[0]["step"] == 4  # it resumed rather than started over
    assert (resumed.step, resumed.tokens_seen) == (straight.step, straight.tokens_seen)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    weights = load_checkpoint(tmp_path / "straight" / "final").model.state_dict()
    for name, tensor in load_checkpoint(tmp_path / "resumed" / "final").model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


def test_no_resume_starts_over_and_old_checkpoints_are_pruned(data: Path, tmp_path: Path) -> None:
    config = quick_config(data, tmp_path, max_steps=4, checkpoint_every=2, keep_last=1)
    pretrain(config, show_progress=False)
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["step-000004"]
    assert sorted(path.name for path in (tmp_path / "training_state").iterdir()) == ["step-000004"]

    pretrain(replace(config, max_steps=3), resume=False, show_progress=False)

    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["step-000002"]
    assert sorted(path.name for path in (tmp_path / "training_state").iterdir()) == ["step-000003"]
    assert [row["step"] for row in metric_rows(tmp_path) if "loss" in row] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "final").metadata.step == 3


def test_resuming_with_another_model_is_refused(data: Path, tmp_path: Path) -> None:
    pretrain(quick_config(data, tmp_path, max_steps=1), show_progress=False)
    with pytest.raises(PretrainError, match="holds a run of another model"):
        pretrain(quick_config(data, tmp_path, model="tiny"), show_progress=False)


def test_a_compiled_run_resumes_from_a_saved_state_with_the_same_parameter_names(
    data: Path, tmp_path: Path
) -> None:
    # Nothing is left to train, so nothing is compiled (slow on the CPU): this checks that a
    # compiled model loads and saves states and checkpoints under its plain names.
    config = quick_config(data, tmp_path, max_steps=1)
    pretrain(config, show_progress=False)
    before = load_checkpoint(tmp_path / "final").model.state_dict()
    result = pretrain(replace(config, compile=True), show_progress=False)
    after = load_checkpoint(tmp_path / "final").model.state_dict()
    assert result.step == 1
    assert all(torch.equal(tensor, before[name]) for name, tensor in after.items())


def test_bad_settings_are_refused_all_at_once(tmp_path: Path) -> None:
    with pytest.raises(PretrainError) as error:
        PretrainConfig(tmp_path, tmp_path, batch_size=6, grad_accum_steps=4, lr=0, keep_last=0)
    assert str(error.value) == (
        "batch_size must be a multiple of grad_accum_steps; lr must be > 0; "
        "keep_last must be >= 1 (or None)"
    )
    with pytest.raises(PretrainError, match="one of tiny, mini, palm_150m"):
        PretrainConfig(tmp_path, tmp_path, model="huge")


def test_a_model_needs_an_id_for_every_token_of_the_dataset(tmp_path: Path) -> None:
    config = PretrainConfig(tmp_path, tmp_path, model=small_model(num_tokens=100))
    with pytest.raises(PretrainError, match="100 token ids, the dataset 258"):
        config.model_config(258)
    assert PretrainConfig(tmp_path, tmp_path, model="tiny").model_config(300) == tiny(300)


def test_mixed_precision_auto_means_none_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_mixed_precision("auto") == "no"
    assert resolve_mixed_precision("bf16") == "bf16"
