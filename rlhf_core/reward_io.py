"""Reward model checkpoints: one directory from which a RewardModel and its tokenizer are rebuilt.

    backbone/                 a plain PaLM checkpoint (`rlhf_core.checkpoint`), without adapters
    reward_head.safetensors   the heads, the normalisation buffers and any LoRA adapters
    reward_config.json        {"model_kind": "reward", "format_version": 2,
                               "head_sha256": ..., "head": RewardHeadConfig fields,
                               "trained_heads": ["scalar", "likert"]: the heads fitted}

The backbone stays a normal checkpoint, so any PaLM tool (generation, a later fine-tune) reads
it as is. The directory is built under a temporary sibling name and renamed into place when
complete, as `save_checkpoint` does, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from rlhf_core.checkpoint import (
    CheckpointError,
    CheckpointMetadata,
    file_sha256,
    load_checkpoint,
    read_json,
    replace_directory,
    save_checkpoint,
    sibling_path,
)
from rlhf_core.corpus import atomic_output
from rlhf_core.palm import PaLM
from rlhf_core.reward import RewardHeadConfig, RewardModel
from rlhf_core.tokenizer import Tokenizer

FORMAT_VERSION = 2  # 2: pooled heads, ensemble members, trained_heads
MODEL_KIND = "reward"
BACKBONE_DIRECTORY = "backbone"
HEAD_FILE = "reward_head.safetensors"
CONFIG_FILE = "reward_config.json"
BACKBONE_PREFIX = "backbone."


def save_reward_model(
    directory: Path,
    model: RewardModel,
    tokenizer: Tokenizer,
    *,
    metadata: CheckpointMetadata | None = None,
) -> CheckpointMetadata:
    """Write `model` and `tokenizer` as a reward checkpoint at `directory`, atomically.

    `metadata` goes with the backbone checkpoint and is returned as written. An existing reward
    checkpoint at `directory` is replaced; any other existing directory is refused, not deleted.
    """
    if directory.is_file() or (
        directory.is_dir() and any(directory.iterdir()) and not (directory / CONFIG_FILE).is_file()
    ):
        raise CheckpointError(
            "exists and is not a reward checkpoint; refusing to replace it", directory
        )
    backbone, head = _split_state_dict(model)
    staging = sibling_path(directory, "partial")
    staging.mkdir(parents=True)
    try:
        written = save_checkpoint(
            staging / BACKBONE_DIRECTORY,
            model.backbone,
            tokenizer,
            metadata=metadata,
            state_dict=backbone,
        )
        save_file(head, staging / HEAD_FILE, metadata={"format": "pt"})
        config = {
            "model_kind": MODEL_KIND,
            "format_version": FORMAT_VERSION,
            "head_sha256": file_sha256(staging / HEAD_FILE),
            "head": asdict(model.config),
            "trained_heads": sorted(model.trained_heads),
        }
        with atomic_output(staging / CONFIG_FILE) as handle:
            handle.write(json.dumps(config, indent=2).encode("utf-8"))
        replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


def load_reward_model(
    directory: Path, device: torch.device | str | None = None
) -> tuple[RewardModel, Tokenizer]:
    """Rebuild the reward model (in eval mode) and tokenizer saved at `directory`, bit for bit.

    Raises CheckpointError, naming the file, for anything missing, corrupt or inconsistent.
    """
    if not directory.is_dir():
        raise CheckpointError("no such reward checkpoint directory", directory)
    config, head_sha256, trained = _read_config(directory / CONFIG_FILE)
    head = _read_head(directory / HEAD_FILE, head_sha256)
    checkpoint = load_checkpoint(directory / BACKBONE_DIRECTORY, device=device)
    model = RewardModel(checkpoint.model, config)
    model.trained_heads = trained
    weights = {BACKBONE_PREFIX + name: t for name, t in checkpoint.model.state_dict().items()}
    # The backbone's state dict now includes the fresh adapters; the head file's override them.
    weights.update(head)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        reasons = "; ".join(line.strip() for line in str(error).splitlines()[1:] if line.strip())
        raise CheckpointError(
            f"weights do not fit the config: {reasons}", directory / HEAD_FILE
        ) from error
    return model.eval(), checkpoint.tokenizer


def _split_state_dict(model: RewardModel) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(the plain PaLM weights, everything else: heads, normalisation, adapters), CPU copies."""
    with torch.device("meta"):
        plain_names = set(PaLM(model.backbone.config).state_dict())
    backbone: dict[str, Tensor] = {}
    head: dict[str, Tensor] = {}
    for name, tensor in model.state_dict().items():
        stored = tensor.detach().cpu().contiguous()
        if name.startswith(BACKBONE_PREFIX) and name[len(BACKBONE_PREFIX) :] in plain_names:
            backbone[name[len(BACKBONE_PREFIX) :]] = stored
        else:
            head[name] = stored
    return backbone, head


def _read_config(path: Path) -> tuple[RewardHeadConfig, str, frozenset[str]]:
    values = read_json(path)
    if values.get("model_kind") != MODEL_KIND:
        raise CheckpointError(
            f"model kind {values.get('model_kind')!r}, expected {MODEL_KIND!r}", path
        )
    if values.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"format {values.get('format_version')!r}, expected {FORMAT_VERSION} (a reward "
            "model saved by an older version: train it again)",
            path,
        )
    head_sha256, head = values.get("head_sha256"), values.get("head")
    trained = values.get("trained_heads")
    if (
        not isinstance(head_sha256, str)
        or not isinstance(head, dict)
        or not isinstance(trained, list)
        or not set(trained) <= {"scalar", "likert"}
    ):
        raise CheckpointError(
            "expected a 'head_sha256' string, a 'head' object and 'trained_heads' among "
            "'scalar' and 'likert'",
            path,
        )
    try:
        return RewardHeadConfig(**head), head_sha256, frozenset(trained)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"not a RewardHeadConfig ({error})", path) from error


def _read_head(path: Path, sha256: str) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError("missing reward head file", path)
    if file_sha256(path) != sha256:
        raise CheckpointError(f"SHA-256 differs from the one in {CONFIG_FILE}", path)
    try:
        return load_file(path)
    except SafetensorError as error:
        raise CheckpointError(f"not a readable safetensors file ({error})", path) from error
