import json
import random
import re
from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from rlhf_core.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    Tokenizer,
    TokenizerError,
    _byte_symbols,
    load_tokenizer,
)

CORPUS = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles",
] * 20


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train_bpe(CORPUS, vocab_size=320)


def write_neox_style_tokenizer(path: Path, special_tokens: list[str]) -> None:
    """A tokenizer.json shaped like GPT-NeoX's: its own special-token names, eos first."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    backend.save(str(path))


def test_bpe_training_learns_merges_and_round_trips_text(bpe: Tokenizer) -> None:
    text = "Whether 'tis nobler to take arms, or not?"
    ids = bpe.encode(text)
    assert 258 < bpe.vocab_size <= 320
    assert len(ids) < len(text.encode("utf-8"))  # merges made tokens longer than one byte
    assert bpe.decode(ids) == text
    assert (bpe.pad_id, bpe.eos_id) == (0, 1)


def test_bpe_trains_from_plain_text_files(tmp_path: Path) -> None:
    path = tmp_path / "hamlet.txt"
    path.write_text("\n".join(CORPUS), encoding="utf-8")
    from_files = Tokenizer.train_bpe([path], vocab_size=320)
    assert from_files.decode(from_files.encode("the question")) == "the question"
    assert len(from_files.encode("the question")) < len("the question")


def test_bpe_rejects_a_vocabulary_smaller_than_bytes_plus_specials() -> None:
    with pytest.raises(TokenizerError, match="at least 258"):
        Tokenizer.train_bpe(CORPUS, vocab_size=100)


def test_saved_tokenizer_loads_back_to_identical_ids(bpe: Tokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path / "tok")
    text = "Or to take arms against a sea of troubles <|endoftext|> ünïcode"
    for loaded in (
        Tokenizer.load(tmp_path / "tok"),
        Tokenizer.from_file(tmp_path / "tok" / "tokenizer.json"),
    ):
        assert loaded.encode(text) == bpe.encode(text)
        assert loaded.fingerprint == bpe.fingerprint
        assert (loaded.eos_id, loaded.pad_id, loaded.vocab_size) == (1, 0, bpe.vocab_size)


def test_tokenizer_with_neox_special_names_loads(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    write_neox_style_tokenizer(path, ["<|endoftext|>", "<|padding|>"])
    neox = Tokenizer.from_file(path)
    assert (neox.eos_token, neox.eos_id) == ("<|endoftext|>", 0)
    assert (neox.pad_token, neox.pad_id) == ("<|padding|>", 1)
    neox.save(tmp_path / "saved")
    reloaded = Tokenizer.load(tmp_path / "saved")
    assert (reloaded.eos_id, reloaded.pad_id) == (0, 1)
    assert reloaded.encode("a sea of troubles") == neox.encode("a sea of troubles")


def test_tokenizer_without_padding_token_pads_with_end_of_text(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    write_neox_style_tokenizer(path, ["</s>"])
    assert Tokenizer.from_file(path).pad_id == Tokenizer.from_file(path).eos_id == 0


def test_unknown_special_names_must_be_given_explicitly(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    write_neox_style_tokenizer(path, ["[END]", "[FILL]"])
    with pytest.raises(TokenizerError, match="no end-of-text token"):
        Tokenizer.from_file(path)
    explicit = Tokenizer.from_file(path, eos_token="[END]", pad_token="[FILL]")
    assert (explicit.eos_id, explicit.pad_id) == (0, 1)
    with pytest.raises(
        TokenizerError, match=re.escape(f"{path}: the tokenizer has no token '<missing>'")
    ):
        Tokenizer.from_file(path, eos_token="<missing>")


def test_byte_fallback_round_trips_arbitrary_unicode() -> None:
    tokenizer = Tokenizer.byte_fallback()
    rng = random.Random(0)
    # Any code point but the surrogates, which UTF-8 cannot encode.
    code_points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    samples = ["", "\x00\r\n\t", "héllo wörld 🤖 中文 ﷽ e\u0301"]
    samples += ["".join(chr(rng.choice(code_points)) for _ in range(200)) for _ in range(20)]
    for text in samples:
        ids = tokenizer.encode(text)
        assert ids == [2 + byte for byte in text.encode("utf-8")]
        assert tokenizer.decode(ids) == text
    assert (tokenizer.vocab_size, tokenizer.pad_id, tokenizer.eos_id) == (258, 0, 1)


def test_byte_symbols_are_the_byte_level_alphabet_in_byte_order() -> None:
    symbols = _byte_symbols()
    assert set(symbols) == set(pre_tokenizers.ByteLevel.alphabet())
    assert symbols[ord("A")] == "A"
    assert symbols[ord(" ")] == "Ġ"  # GPT-2's well-known stand-in for a space


def test_byte_fallback_decodes_a_cut_character_without_raising() -> None:
    tokenizer = Tokenizer.byte_fallback()
    assert tokenizer.decode(tokenizer.encode("🤖")[:2]) == "\ufffd"


def test_byte_fallback_saves_as_a_config_alone(tmp_path: Path) -> None:
    Tokenizer.byte_fallback().save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer_config.json"]
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["kind"] == "bytes"
    assert Tokenizer.load(tmp_path).fingerprint == Tokenizer.byte_fallback().fingerprint


def test_encode_batch_matches_encode(bpe: Tokenizer) -> None:
    texts = ["To be", "", "the question: ünï"]
    assert bpe.encode_batch(texts) == [bpe.encode(text) for text in texts]


def test_missing_tokenizer_files_raise_an_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=re.escape(f"{tmp_path / 'nope.json'}: no such")):
        Tokenizer.from_file(tmp_path / "nope.json")
    with pytest.raises(TokenizerError, match=re.escape(f"{tmp_path}: no tokenizer_config.json")):
        Tokenizer.load(tmp_path)


def test_corrupt_tokenizer_files_raise_an_error_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text('{"model": ', encoding="utf-8")
    with pytest.raises(
        TokenizerError, match=re.escape(f"{tmp_path / 'tokenizer.json'}: not a valid")
    ):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text('{"kind": "sentencepiece"}')
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json: expected a JSON object"):
        Tokenizer.load(tmp_path)


def test_load_tokenizer_accepts_bytes_a_directory_or_a_file(bpe: Tokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path)
    assert load_tokenizer("bytes").kind == "bytes"
    assert load_tokenizer(str(tmp_path)).fingerprint == bpe.fingerprint
    assert load_tokenizer(str(tmp_path / "tokenizer.json")).fingerprint == bpe.fingerprint


def test_special_token_names_are_the_documented_ones(bpe: Tokenizer) -> None:
    assert bpe.decode([bpe.pad_id, bpe.eos_id]) == PAD_TOKEN + EOS_TOKEN
    assert bpe.decode([bpe.pad_id, bpe.eos_id], skip_special_tokens=True) == ""
