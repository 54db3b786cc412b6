"""Model checkpoints: one directory from which a PaLM and its tokenizer are rebuilt, files alone.

    model.safetensors   the weights; the output head is the token embedding, stored once
    config.json         {"model_kind": "palm", "format_version": 1, **PaLMConfig fields}
    tokenizer/          what `Tokenizer.save` writes
    metadata.json       `CheckpointMetadata`, including the SHA-256 of model.safetensors

`save_checkpoint` builds the directory under a temporary sibling name and renames it into place
only when every file is written, so a reader never sees half a checkpoint. `load_checkpoint`
checks everything it reads and raises `CheckpointError`, naming the file, for anything wrong.
`import_reference_checkpoint` writes one from a state dict of lucidrains' PaLM-rlhf-pytorch.
`load_torch_file` is how files written by `torch.save` are read: checksums first.
This is the exportable form of a model; resuming a training run needs more (optimizer, RNG and
data position), which the trainers keep beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from rlhf_core.corpus import atomic_output
from rlhf_core.palm import PaLM, PaLMConfig
from rlhf_core.reference_import import (
    LayerNormConvention,
    LayerNormConventionError,
    import_reference,
)
from rlhf_core.tokenizer import Tokenizer, TokenizerError

FORMAT_VERSION = 1
MODEL_KIND = "palm"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
TOKENIZER_DIRECTORY = "tokenizer"
# How a zip archive (what torch.save has written since PyTorch 1.6) begins.
_ZIP_MAGIC = b"PK\x03\x04"
# PaLMConfig fields that a reference state dict's tensors do not determine: an import takes them
# from the caller. The tensors determine every other field.
_FREE_IMPORT_FIELDS = frozenset(
    {
        "xpos_scale_base",
        "qk_norm_scale",
        "attn_dropout",
        "ff_dropout",
        "sdpa_backends",
        "sdpa_causal_backends",
        "relative_buckets",
        "relative_max_distance",
    }
)


class CheckpointError(Exception):
    """A checkpoint that cannot be read or written; always names the path involved."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class UncheckedFileWarning(UserWarning):
    """A PyTorch file loaded without an integrity check, because it carries no checksums."""


@dataclass(frozen=True)
class CheckpointMetadata:
    """What metadata.json records. `save_checkpoint` fills in `created_at` and `weights_sha256`."""

    step: int = 0
    tokens_seen: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, JSON-serialisable
    created_at: str | None = None  # UTC, ISO 8601
    weights_sha256: str | None = None
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the model (in eval mode), its tokenizer, config and metadata."""

    model: PaLM
    tokenizer: Tokenizer
    config: PaLMConfig
    metadata: CheckpointMetadata


def save_checkpoint(
    directory: Path,
    model: PaLM,
    tokenizer: Tokenizer,
    *,
    metadata: CheckpointMetadata | None = None,
    state_dict: Mapping[str, Tensor] | None = None,
) -> CheckpointMetadata:
    """Write `model` (its config and weights) and `tokenizer` as a checkpoint at `directory`.

    `state_dict` replaces `model.state_dict()` where the caller holds the weights elsewhere, e.g.
    gathered from FSDP shards. An existing checkpoint at `directory` is replaced; any other
    existing directory is refused rather than deleted. Returns the metadata as written.
    """
    _refuse_foreign_directory(directory)
    _check_vocabulary(tokenizer, model.config, directory)
    weights = {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in (model.state_dict() if state_dict is None else state_dict).items()
    }
    staging = sibling_path(directory, "partial")
    staging.mkdir(parents=True)
    try:
        save_file(weights, staging / WEIGHTS_FILE, metadata={"format": "pt"})
        config = {"model_kind": MODEL_KIND, "format_version": FORMAT_VERSION}
        _write_json(staging / CONFIG_FILE, {**config, **asdict(model.config)})
        tokenizer.save(staging / TOKENIZER_DIRECTORY)
        written = replace(
            metadata or CheckpointMetadata(),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            weights_sha256=file_sha256(staging / WEIGHTS_FILE),
        )
        _write_json(staging / METADATA_FILE, asdict(written))
        replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


def load_checkpoint(
    directory: Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Checkpoint:
    """Rebuild the model and tokenizer saved at `directory`, bit for bit.

    The weights keep their stored dtype unless `dtype` is given (floating tensors only) and land
    on `device` (default: the CPU). The weights file is checked against its recorded SHA-256.
    """
    if not directory.is_dir():
        raise CheckpointError("no such checkpoint directory", directory)
    config = read_model_config(directory / CONFIG_FILE)
    metadata = read_metadata(directory / METADATA_FILE)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError("missing weights file", weights_path)
    if file_sha256(weights_path) != metadata.weights_sha256:
        raise CheckpointError(f"SHA-256 differs from the one in {METADATA_FILE}", weights_path)
    try:
        weights = load_file(weights_path)
    except SafetensorError as error:
        raise CheckpointError(f"not a readable safetensors file ({error})", weights_path) from error
    model = model_from_weights(config, weights, weights_path)
    model.to(device=device, dtype=dtype)
    tokenizer = _load_tokenizer(directory / TOKENIZER_DIRECTORY, config)
    return Checkpoint(model.eval(), tokenizer, config, metadata)


def import_reference_checkpoint(
    source: Path,
    directory: Path,
    tokenizer: Tokenizer,
    *,
    layernorm_convention: LayerNormConvention,
    force_layernorm_convention: bool = False,
    config_values: Mapping[str, Any] | None = None,
) -> CheckpointMetadata:
    """Convert a PaLM-rlhf-pytorch state dict saved by `torch.save` into a checkpoint.

    The file is verified against its checksums (`load_torch_file`) and the architecture read
    from the tensor shapes (see `rlhf_core.reference_import`). `config_values` may state
    PaLMConfig fields: those the shapes determine must agree, a check against importing the
    wrong file; the others (e.g. `qk_norm_scale`) are taken as given. Raises ValueError for
    unknown or invalid `config_values`, LayerNormConventionError (a ValueError) for a
    `layernorm_convention` the weights contradict unless forced, CheckpointError for the files.
    """
    given = dict(config_values or {})
    unknown = sorted(set(given) - {item.name for item in fields(PaLMConfig)})
    if unknown:
        raise ValueError(f"unknown PaLMConfig field(s): {', '.join(unknown)}")
    options = {name: given[name] for name in ("qk_norm_scale", "xpos_scale_base") if name in given}
    state_dict = _load_reference_state_dict(source)
    try:
        config, weights = import_reference(
            state_dict,
            layernorm_convention=layernorm_convention,
            force_layernorm_convention=force_layernorm_convention,
            **options,
        )
    except LayerNormConventionError:
        raise
    except (KeyError, StopIteration, ValueError) as error:
        raise CheckpointError(f"not a PaLM-rlhf-pytorch state dict ({error})", source) from error
    conflicts = [
        f"{name}={value!r} but the weights say {getattr(config, name)!r}"
        for name, value in given.items()
        if name not in _FREE_IMPORT_FIELDS and getattr(config, name) != value
    ]
    if conflicts:
        raise CheckpointError("; ".join(conflicts), source)
    config = replace(config, **{k: v for k, v in given.items() if k in _FREE_IMPORT_FIELDS})
    model = model_from_weights(config, weights, source)
    extra = {"imported_from": str(source), "layernorm_convention": layernorm_convention}
    return save_checkpoint(directory, model, tokenizer, metadata=CheckpointMetadata(extra=extra))


def model_from_weights(config: PaLMConfig, weights: Mapping[str, Tensor], path: Path) -> PaLM:
    """A PaLM that holds exactly `weights` (no copy, dtype kept), or a CheckpointError on `path`
    saying which names or shapes do not fit `config`."""
    # Built on the meta device: no memory or time spent on a random initialisation that the
    # loaded tensors replace anyway.
    with torch.device("meta"):
        model = PaLM(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as error:
        reasons = "; ".join(line.strip() for line in str(error).splitlines()[1:] if line.strip())
        raise CheckpointError(f"weights do not fit the config: {reasons}", path) from error
    return model


def palm_config_from_dict(values: Mapping[str, Any]) -> PaLMConfig:
    """A PaLMConfig from config.json's fields (the model kind and format version optional).

    Raises ValueError saying which fields are unknown, missing or invalid.
    """
    values = config_fields(values)
    known = {item.name for item in fields(PaLMConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown PaLMConfig field(s): {', '.join(unknown)}")
    try:
        return PaLMConfig(**values)
    except TypeError as error:  # a required field is missing
        raise ValueError(f"incomplete PaLMConfig ({error})") from error


def config_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The PaLMConfig fields of a config.json: without its model kind and format version, which
    are checked (ValueError) where present."""
    values = dict(values)
    kind = values.pop("model_kind", MODEL_KIND)
    version = values.pop("format_version", FORMAT_VERSION)
    if kind != MODEL_KIND:
        raise ValueError(f"model kind {kind!r}, expected {MODEL_KIND!r}")
    if version != FORMAT_VERSION:
        raise ValueError(f"config format {version}, expected {FORMAT_VERSION}")
    return values


def read_model_config(path: Path) -> PaLMConfig:
    try:
        return palm_config_from_dict(read_json(path))
    except ValueError as error:
        raise CheckpointError(str(error), path) from error


def read_metadata(path: Path) -> CheckpointMetadata:
    values = read_json(path)
    try:
        metadata = CheckpointMetadata(**values)
    except TypeError as error:
        raise CheckpointError(f"not checkpoint metadata ({error})", path) from error
    if metadata.format_version != FORMAT_VERSION:
        raise CheckpointError(
            f"metadata format {metadata.format_version}, expected {FORMAT_VERSION}", path
        )
    return metadata


def replace_directory(source: Path, target: Path) -> None:
    """Move the complete directory `source` to `target`, replacing what is there.

    POSIX cannot swap two directories in one step, so an old `target` is renamed aside first,
    then `source` renamed in, then the old one deleted: at every moment `target` is either
    the complete old version, absent for an instant, or the complete new one.
    """
    if not target.exists():
        os.replace(source, target)
        return
    old = sibling_path(target, "old")
    os.replace(target, old)
    try:
        os.replace(source, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old)


def sibling_path(path: Path, purpose: str) -> Path:
    # Hidden and unique, so concurrent writers never share one and directory listings skip it.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{purpose}")


def _refuse_foreign_directory(directory: Path) -> None:
    if directory.is_file() or (
        directory.is_dir() and any(directory.iterdir()) and not (directory / CONFIG_FILE).is_file()
    ):
        raise CheckpointError("exists and is not a checkpoint; refusing to replace it", directory)


def _load_reference_state_dict(source: Path) -> dict[str, Tensor]:
    loaded = load_torch_file(source)
    if not isinstance(loaded, Mapping) or not all(
        isinstance(name, str) and isinstance(tensor, Tensor) for name, tensor in loaded.items()
    ):
        raise CheckpointError("expected a state dict: a mapping of names to tensors", source)
    return dict(loaded)


def load_torch_file(path: Path, *, weights_only: bool = True) -> Any:
    """What `torch.save` wrote to `path`, loaded onto the CPU after its checksums are verified.

    torch.load never reads the CRC-32 that each record of its zip format carries, so flipped
    bytes inside a tensor would load as wrong weights; here they raise CheckpointError naming
    the record. A file without checksums (the pre-1.6 pickle format, or saved with torch's
    `compute_crc32` off) loads with an UncheckedFileWarning: refusing it would protect nothing,
    since saving again what was read would add checksums to the same bytes.
    """
    if not path.is_file():
        raise CheckpointError("no such file", path)
    checked = _verify_zip_records(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=weights_only)
    # torch.load fails on a file that is not a checkpoint with anything from KeyError to
    # RuntimeError, depending on where the bytes stop making sense.
    except Exception as error:
        reason = type(error).__name__ + (f": {str(error).splitlines()[0]}" if str(error) else "")
        raise CheckpointError(f"not a readable PyTorch file ({reason})", path) from error
    if not checked:
        message = f"{path}: no checksums to verify (legacy format, or saved without CRC-32s)"
        warnings.warn(message, UncheckedFileWarning, stacklevel=2)
    return loaded


def _verify_zip_records(path: Path) -> bool:
    """Check every record of a zip-format PyTorch file against its CRC-32 (CheckpointError on
    a mismatch); False where there is nothing to check."""
    with path.open("rb") as file:
        if file.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            return False  # the legacy pickle format, or no PyTorch file at all: torch.load says
    try:
        with zipfile.ZipFile(path) as archive:
            # torch.save with compute_crc32 off writes 0 as every record's CRC-32.
            if not any(record.CRC for record in archive.infolist()):
                return False
            corrupt = archive.testzip()
    except (zipfile.BadZipFile, EOFError) as error:
        raise CheckpointError(f"damaged zip archive ({error})", path) from error
    if corrupt is not None:
        raise CheckpointError(
            f"record {corrupt!r} does not match its CRC-32: the file is corrupt (damaged on disk "
            "or in transfer)",
            path,
        )
    return True


def _load_tokenizer(directory: Path, config: PaLMConfig) -> Tokenizer:
    try:
        tokenizer = Tokenizer.load(directory)
    except TokenizerError as error:
        raise CheckpointError(f"unusable tokenizer ({error})", directory) from error
    _check_vocabulary(tokenizer, config, directory)
    return tokenizer


def _check_vocabulary(tokenizer: Tokenizer, config: PaLMConfig, path: Path) -> None:
    # A model may have spare ids (a padded vocabulary), but every id the tokenizer produces
    # needs an embedding.
    if tokenizer.vocab_size > config.num_tokens:
        raise CheckpointError(
            f"the tokenizer has {tokenizer.vocab_size} ids, the model only {config.num_tokens}",
            path,
        )


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError("missing file", path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"not valid JSON ({error})", path) from error
    if not isinstance(values, dict):
        raise CheckpointError("expected a JSON object", path)
    return values


def _write_json(path: Path, values: Mapping[str, Any]) -> None:
    with atomic_output(path) as handle:
        handle.write(json.dumps(values, indent=2).encode("utf-8"))


def file_sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
