"""Proof that export snapshots are what trainers read: the preference files load with
pyarrow, pandas and datasets with exactly the columns TRL's reward and DPO trainers take, TRL's
own RewardTrainer and DPOTrainer each run a step on them (a tiny random model, a tokenizer built
here: nothing is downloaded), and rlhf_core trains its reward model from the exported file."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.webapp.annotation.conftest import AddItems, MakeProject, add_items, make_project  # noqa: F401 (fixtures)
from tests.webapp.exports.conftest import AddLabel, add_label, export_dir, win  # noqa: F401 (fixtures)
from webapp.accounts.models import User
from webapp.annotation.models import Response
from webapp.annotation.questions import TaskType
from webapp.exports.building import run_snapshot, snapshot_dir
from webapp.exports.models import ExportSnapshot
from webapp.exports.services import create_snapshot

pytestmark = pytest.mark.django_db

TRL_PREFERENCE_COLUMNS = {
    "prompt": pa.string(),
    "chosen": pa.string(),
    "rejected": pa.string(),
    "margin": pa.float64(),
}


@pytest.fixture
def snapshot(
    make_project: MakeProject,  # noqa: F811
    add_items: AddItems,  # noqa: F811
    add_label: AddLabel,  # noqa: F811
    annotator: User,
    second_annotator: User,
    researcher: User,
) -> ExportSnapshot:
    """A pairwise project of 24 prompts whose annotators prefer the response with more 'e's."""
    project = make_project(TaskType.PAIRWISE, slug="train-me")
    items = add_items(project, prompts=24, responses=2)
    for number, item in enumerate(items):
        first, second = item.placements.order_by("position")
        Response.objects.filter(pk=first.response_id).update(text=f"see the tree {number}")
        Response.objects.filter(pk=second.response_id).update(text=f"a calm cat {number}")
        add_label(item, annotator, "preference", win(item, 0, 1 + number % 3))
        if number % 2:
            add_label(item, second_annotator, "preference", win(item, 0, 2))
    snapshot = create_snapshot(
        project,
        researcher,
        {},
        ["pairs_parquet", "pairs_jsonl", "hh_parquet"],
        test_share=0.25,
        run_in_background=False,
    )
    assert run_snapshot(snapshot.pk)
    snapshot.refresh_from_db()
    return snapshot


def files(snapshot: ExportSnapshot) -> dict[str, Path]:
    return {
        entry["name"]: snapshot_dir(snapshot) / entry["name"]
        for entry in snapshot.manifest["files"]
    }


def test_the_preference_files_have_exactly_trls_columns_and_types(snapshot: ExportSnapshot) -> None:
    from datasets import Value, load_dataset

    paths = files(snapshot)
    table = pq.read_table(paths["pairs-train.parquet"])
    assert dict(zip(table.schema.names, table.schema.types, strict=True)) == TRL_PREFERENCE_COLUMNS
    frame = pd.read_parquet(paths["pairs-train.parquet"])
    assert list(frame.columns) == list(TRL_PREFERENCE_COLUMNS)
    assert all(pd.api.types.is_string_dtype(frame[c]) for c in ("prompt", "chosen", "rejected"))
    assert pd.api.types.is_float_dtype(frame["margin"])
    lines = pd.read_json(paths["pairs-train.jsonl"], lines=True)
    assert lines.drop(columns="margin").equals(frame.drop(columns="margin"))
    assert (lines["margin"] == frame["margin"]).all()  # pandas reads 2.0 from JSON as an int
    splits = load_dataset(
        "parquet",
        data_files={
            "train": str(paths["pairs-train.parquet"]),
            "test": str(paths["pairs-test.parquet"]),
        },
    )
    assert splits["train"].features == {
        "prompt": Value("string"),
        "chosen": Value("string"),
        "rejected": Value("string"),
        "margin": Value("float64"),
    }
    assert splits["train"].num_rows + splits["test"].num_rows == 36
    assert set(splits["train"]["prompt"]).isdisjoint(splits["test"]["prompt"])
    from_json = load_dataset("json", data_files=str(paths["pairs-train.jsonl"]))["train"]
    assert from_json.features == splits["train"].features
    hh = pq.read_table(paths["hh-train.parquet"])
    assert hh.schema.names == ["chosen", "rejected"]
    assert all(
        text.startswith("\n\nHuman: Prompt ") and "\n\nAssistant: see the tree" in text
        for text in hh.column("chosen").to_pylist()
    )


def tiny_tokenizer(texts: list[str]) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[UNK]", "[PAD]", "[EOS]", "[BOS]"]
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        eos_token="[EOS]",
        bos_token="[BOS]",
    )


def changed(model: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return any(
        not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True)
    )


@pytest.fixture
def fresh_accelerate_state() -> Iterator[None]:
    """transformers' Trainer sets accelerate's process-wide state; a later Accelerator with other
    settings (rlhf_core's trainers) refuses to start unless it is reset."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_trls_reward_and_dpo_trainers_take_a_step_on_the_exported_file(
    snapshot: ExportSnapshot, tmp_path: Path
) -> None:
    from datasets import load_dataset
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    dataset = load_dataset("parquet", data_files=str(files(snapshot)["pairs-train.parquet"]))[
        "train"
    ]
    tokenizer = tiny_tokenizer(
        [row[c] for row in dataset for c in ("prompt", "chosen", "rejected")]
    )
    sizes: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    common: dict[str, Any] = {
        "max_steps": 1,
        "per_device_train_batch_size": 4,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
    }
    torch.manual_seed(0)
    reward_model = LlamaForSequenceClassification(LlamaConfig(num_labels=1, **sizes))
    before = [p.detach().clone() for p in reward_model.parameters()]
    trainer = RewardTrainer(
        model=reward_model,
        args=RewardConfig(output_dir=str(tmp_path / "rm"), **common),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    assert trainer.train().global_step == 1 and changed(reward_model, before)

    policy = LlamaForCausalLM(LlamaConfig(**sizes))
    before = [p.detach().clone() for p in policy.parameters()]
    trainer = DPOTrainer(
        model=policy,
        ref_model=copy.deepcopy(policy),
        args=DPOConfig(output_dir=str(tmp_path / "dpo"), learning_rate=1e-2, **common),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss == pytest.approx(0.6931, abs=1e-3)
    assert changed(policy, before)


def test_rlhf_core_trains_its_reward_model_from_the_exported_pairs(
    snapshot: ExportSnapshot,
) -> None:
    from rlhf_core.palm import PaLM, PaLMConfig
    from rlhf_core.records import PairwisePreference, read_records
    from rlhf_core.reward import RewardHeadConfig, RewardModel
    from rlhf_core.reward_training import RewardTrainingConfig, train_reward_model
    from rlhf_core.tokenizer import Tokenizer

    records = read_records(files(snapshot)["pairs-train.parquet"])
    train_rows = snapshot.manifest["files"][0]["rows"]
    assert len(records) == train_rows and all(isinstance(r, PairwisePreference) for r in records)
    assert {r.strength for r in records} <= {1, 2, 3} and all(
        r.chosen.startswith("see") for r in records
    )
    torch.manual_seed(0)
    model = RewardModel(
        PaLM(PaLMConfig(num_tokens=258, dim=32, depth=2, heads=4, dim_head=8)), RewardHeadConfig()
    )
    before = [p.detach().clone() for p in model.parameters()]
    config = RewardTrainingConfig(
        lr=3e-3,
        batch_size=8,
        epochs=1,
        warmup_steps=0,
        held_out_fraction=0.25,
        mixed_precision="no",
    )
    result = train_reward_model(model, Tokenizer.byte_fallback(), records, config)
    assert result.steps >= 1 and changed(model, before)
    assert result.held_out_preferences > 0  # the snapshot's prompts give a held-out split
    assert 0 <= result.eval_metrics["pairwise_accuracy"] <= 1
