import hashlib
import json
import struct
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.utils.serialization
from safetensors.torch import load_file

from rlhf_core.checkpoint import (
    CheckpointError,
    CheckpointMetadata,
    UncheckedFileWarning,
    import_reference_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from rlhf_core.palm import PaLM, PaLMConfig
from rlhf_core.reference_import import LayerNormConventionError, import_reference
from rlhf_core.tokenizer import Tokenizer
from tests.rlhf_core.test_reference_import import DIM, reference_state_dict

CONFIG = PaLMConfig(num_tokens=258, dim=32, depth=2, heads=4, dim_head=8, qk_norm=True)
TOKENS = torch.randint(0, 258, (2, 12), generator=torch.Generator().manual_seed(0))


def trained_looking_model(seed: int = 0) -> PaLM:
    """Random weights everywhere, norm gains included (they start at exactly 1)."""
    torch.manual_seed(seed)
    model = PaLM(CONFIG)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def save(directory: Path, model: PaLM | None = None, **metadata: object) -> PaLM:
    model = model or trained_looking_model()
    save_checkpoint(
        directory, model, Tokenizer.byte_fallback(), metadata=CheckpointMetadata(**metadata)
    )
    return model


def test_a_checkpoint_round_trips_bit_for_bit(tmp_path: Path) -> None:
    model = trained_looking_model()
    metadata = CheckpointMetadata(
        step=12, tokens_seen=3456, metrics={"loss": 1.5}, extra={"run": "test", "ids": [1, 2]}
    )
    written = save_checkpoint(
        tmp_path / "ckpt", model, Tokenizer.byte_fallback(), metadata=metadata
    )

    loaded = load_checkpoint(tmp_path / "ckpt")

    original, restored = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype
        assert torch.equal(restored[name], tensor), name
    assert torch.equal(loaded.model(TOKENS), model.eval()(TOKENS))
    assert loaded.config == CONFIG
    assert loaded.tokenizer.fingerprint == Tokenizer.byte_fallback().fingerprint
    assert loaded.metadata == written
    assert replace(written, created_at=None, weights_sha256=None) == metadata
    weights = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    assert written.weights_sha256 == hashlib.sha256(weights).hexdigest()
    assert written.created_at is not None


def test_the_tied_embedding_is_stored_once(tmp_path: Path) -> None:
    save(tmp_path / "ckpt")
    stored = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert stored.keys() == PaLM(CONFIG).state_dict().keys()
    assert sum(tensor.shape == (258, 32) for tensor in stored.values()) == 1


def test_weights_keep_their_dtype_unless_one_is_asked_for(tmp_path: Path) -> None:
    save(tmp_path / "ckpt", trained_looking_model().to(torch.bfloat16))
    assert load_checkpoint(tmp_path / "ckpt").model.token_emb.weight.dtype == torch.bfloat16
    as_float = load_checkpoint(tmp_path / "ckpt", dtype=torch.float32, device="cpu")
    assert all(parameter.dtype == torch.float32 for parameter in as_float.model.parameters())


def test_the_config_file_names_the_model_kind_and_format(tmp_path: Path) -> None:
    save(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model_kind"] == "palm"
    assert config["format_version"] == 1
    assert config["dim"] == 32


def test_saving_again_replaces_the_checkpoint_and_leaves_no_temporary_files(
    tmp_path: Path,
) -> None:
    save(tmp_path / "ckpt", trained_looking_model(seed=0), step=1)
    second = save(tmp_path / "ckpt", trained_looking_model(seed=1), step=2)

    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.metadata.step == 2
    assert torch.equal(loaded.model.token_emb.weight, second.token_emb.weight)
    assert [path.name for path in tmp_path.iterdir()] == ["ckpt"]


def test_a_failed_save_keeps_the_old_checkpoint_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save(tmp_path / "ckpt", step=1)

    def fail(self: Tokenizer, directory: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Tokenizer, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path / "ckpt", step=2)
    assert [path.name for path in tmp_path.iterdir()] == ["ckpt"]
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "ckpt").metadata.step == 1


def test_save_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        save(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_save_refuses_a_tokenizer_with_more_ids_than_the_model(tmp_path: Path) -> None:
    small = PaLM(replace(CONFIG, num_tokens=100))
    with pytest.raises(CheckpointError, match="258 ids, the model only 100"):
        save(tmp_path / "ckpt", small)
    assert not (tmp_path / "ckpt").exists()


Damage = Callable[[Path], Path]  # damages a checkpoint directory, returns the culprit path


def removed(name: str) -> Damage:
    def damage(directory: Path) -> Path:
        (directory / name).unlink()
        return directory / name

    return damage


def overwritten(name: str, text: str) -> Damage:
    def damage(directory: Path) -> Path:
        (directory / name).write_text(text)
        return directory / name

    return damage


def edited_config(**changes: object) -> Damage:
    def damage(directory: Path) -> Path:
        path = directory / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        return path

    return damage


def flip_a_weight_byte(directory: Path) -> Path:
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    return weights


def truncate_weights_but_record_their_hash(directory: Path) -> Path:
    """Only the safetensors format check can tell that this file is cut short."""
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    metadata = json.loads((directory / "metadata.json").read_text())
    metadata["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (directory / "metadata.json").write_text(json.dumps(metadata))
    return weights


def break_the_tokenizer(directory: Path) -> Path:
    (directory / "tokenizer" / "tokenizer_config.json").write_text("{")
    return directory / "tokenizer"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (removed("config.json"), "missing file"),
        (removed("metadata.json"), "missing file"),
        (removed("model.safetensors"), "missing weights file"),
        (overwritten("config.json", '{"dim": '), "not valid JSON"),
        (overwritten("metadata.json", "[]"), "expected a JSON object"),
        (overwritten("metadata.json", '{"colour": 1}'), "not checkpoint metadata"),
        (flip_a_weight_byte, "SHA-256 differs"),
        (truncate_weights_but_record_their_hash, "not a readable safetensors file"),
        (edited_config(model_kind="gpt"), "model kind 'gpt'"),
        (edited_config(format_version=99), "config format 99"),
        (edited_config(colour="red"), "unknown PaLMConfig field(s): colour"),
        (edited_config(kv_heads=3), "must be a multiple of kv_heads"),
        (break_the_tokenizer, "unusable tokenizer"),
    ],
)
def test_a_damaged_checkpoint_raises_one_line_naming_the_culprit(
    tmp_path: Path, damage: Damage, message: str
) -> None:
    save(tmp_path / "ckpt")
    culprit = damage(tmp_path / "ckpt")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "ckpt")
    assert message in str(error.value)
    assert str(error.value).startswith(f"{culprit}: ")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"depth": 3}, "Missing key(s)"), ({"dim_head": 16}, "size mismatch for layers.0")],
)
def test_weights_that_do_not_fit_the_config_are_refused(
    tmp_path: Path, change: dict[str, int], message: str
) -> None:
    save(tmp_path / "ckpt")
    edited_config(**change)(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="weights do not fit the config") as error:
        load_checkpoint(tmp_path / "ckpt")
    assert message in str(error.value)
    assert error.value.path == tmp_path / "ckpt" / "model.safetensors"
    assert "\n" not in str(error.value)


def test_a_missing_directory_raises_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint directory") as error:
        load_checkpoint(tmp_path / "missing")
    assert error.value.path == tmp_path / "missing"


def reference_file(tmp_path: Path, **options: bool) -> tuple[Path, dict[str, torch.Tensor]]:
    """A reference state dict whose vocabulary fits the byte tokenizer, saved with torch.save."""
    state = reference_state_dict("gamma", **options)
    embedding = torch.randn(258, DIM)
    state["token_emb.weight"] = state["to_logits.weight"] = embedding
    path = tmp_path / "reference.pt"
    torch.save(state, path)
    return path, state


def test_a_reference_state_dict_imports_into_a_loadable_checkpoint(tmp_path: Path) -> None:
    source, state = reference_file(tmp_path)
    written = import_reference_checkpoint(
        source, tmp_path / "ckpt", Tokenizer.byte_fallback(), layernorm_convention="gamma"
    )

    loaded = load_checkpoint(tmp_path / "ckpt")
    config, weights = import_reference(state, layernorm_convention="gamma")
    expected = PaLM(config)
    expected.load_state_dict(weights)
    assert loaded.config == config
    assert torch.equal(loaded.model(TOKENS[:, :8] % 258), expected.eval()(TOKENS[:, :8] % 258))
    assert written.extra == {"imported_from": str(source), "layernorm_convention": "gamma"}


def test_an_import_takes_fields_the_weights_cannot_tell_and_checks_the_others(
    tmp_path: Path,
) -> None:
    source, _ = reference_file(tmp_path, qk_norm=True)
    tokenizer = Tokenizer.byte_fallback()
    values = {"qk_norm_scale": 10.0, "dim": DIM, "ff_dropout": 0.1}
    import_reference_checkpoint(
        source, tmp_path / "ckpt", tokenizer, layernorm_convention="gamma", config_values=values
    )
    config = load_checkpoint(tmp_path / "ckpt").config
    assert (config.qk_norm_scale, config.ff_dropout) == (10.0, 0.1)

    with pytest.raises(CheckpointError, match="heads=8 but the weights say 4"):
        import_reference_checkpoint(
            source,
            tmp_path / "other",
            tokenizer,
            layernorm_convention="gamma",
            config_values={"heads": 8, "qk_norm_scale": 8.0},
        )
    with pytest.raises(ValueError, match="unknown PaLMConfig field"):
        import_reference_checkpoint(
            source,
            tmp_path / "other",
            tokenizer,
            layernorm_convention="gamma",
            config_values={"colour": "red"},
        )
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        (b"", r"not a readable PyTorch file \(EOFError\)"),
        (b"garbage", "not a readable PyTorch file"),
        ("list", "expected a state dict"),
        ("not palm", "not a PaLM-rlhf-pytorch state dict"),
    ],
)
def test_an_unusable_reference_file_is_refused(
    tmp_path: Path, contents: bytes | str, message: str
) -> None:
    source = tmp_path / "reference.pt"
    if contents == "list":
        torch.save([torch.ones(2)], source)
    elif contents == "not palm":
        torch.save({"weight": torch.ones(2)}, source)
    else:
        source.write_bytes(contents)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=message) as error:
        import_reference_checkpoint(
            source, tmp_path / "ckpt", Tokenizer.byte_fallback(), layernorm_convention="gamma"
        )
    assert str(error.value).startswith(f"{source}: ")
    assert not (tmp_path / "ckpt").exists()


def flip_a_byte_inside_a_record(path: Path, name_ends_with: str = "/data/0") -> str:
    """Flip the first data byte of the record (a tensor's storage by default) of a torch.save
    zip file; the zip directory stays intact. Returns the record's name."""
    with zipfile.ZipFile(path) as archive:
        record = next(r for r in archive.infolist() if r.filename.endswith(name_ends_with))
    data = bytearray(path.read_bytes())
    # The data follows the 30-byte local header, the name and the local extra field.
    name_length, extra_length = struct.unpack_from("<HH", data, record.header_offset + 26)
    data[record.header_offset + 30 + name_length + extra_length] ^= 0xFF
    path.write_bytes(bytes(data))
    return record.filename


def test_a_reference_file_with_a_flipped_byte_is_refused_although_torch_load_takes_it(
    tmp_path: Path,
) -> None:
    source, state = reference_file(tmp_path)
    record = flip_a_byte_inside_a_record(source)
    loaded = torch.load(source, weights_only=True)  # the zip directory is intact ...
    assert any(not torch.equal(loaded[name], state[name]) for name in state)  # ... the data not

    with pytest.raises(CheckpointError) as error:
        import_reference_checkpoint(
            source, tmp_path / "ckpt", Tokenizer.byte_fallback(), layernorm_convention="gamma"
        )
    assert str(error.value).startswith(f"{source}: record '{record}' does not match its CRC-32")
    assert sorted(tmp_path.iterdir()) == [source]  # no checkpoint, no staging directory


def save_without_checksums(state: dict[str, torch.Tensor], path: Path, how: str) -> None:
    if how == "legacy format":
        torch.save(state, path, _use_new_zipfile_serialization=False)
        return
    with torch.utils.serialization.config.patch({"save.compute_crc32": False}):
        torch.save(state, path)


@pytest.mark.parametrize("how", ["legacy format", "compute_crc32 off"])
def test_a_reference_file_without_checksums_imports_with_a_warning(
    tmp_path: Path, how: str
) -> None:
    _, state = reference_file(tmp_path)
    source = tmp_path / "unchecked.pt"
    save_without_checksums(state, source, how)
    with pytest.warns(UncheckedFileWarning, match="no checksums to verify"):
        import_reference_checkpoint(
            source, tmp_path / "ckpt", Tokenizer.byte_fallback(), layernorm_convention="gamma"
        )
    assert load_checkpoint(tmp_path / "ckpt").config.dim == DIM


def test_a_layernorm_convention_the_weights_contradict_is_refused_unless_forced(
    tmp_path: Path,
) -> None:
    source, _ = reference_file(tmp_path)  # gammas near 1: the "gamma" convention
    with pytest.raises(LayerNormConventionError, match="say 'gamma'"):
        import_reference_checkpoint(
            source, tmp_path / "ckpt", Tokenizer.byte_fallback(), layernorm_convention="offset_one"
        )
    assert not (tmp_path / "ckpt").exists()

    written = import_reference_checkpoint(
        source,
        tmp_path / "ckpt",
        Tokenizer.byte_fallback(),
        layernorm_convention="offset_one",
        force_layernorm_convention=True,
    )
    assert written.extra["layernorm_convention"] == "offset_one"
