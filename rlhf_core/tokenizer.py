"""Text <-> token ids: one `Tokenizer` over Hugging Face `tokenizers`, in three flavours.

- `Tokenizer.train_bpe`: a byte-level BPE trained on the user's corpus. Ids: 0 = `<|pad|>`,
  1 = `<|endoftext|>` (end of document), then the 256 byte symbols, then the learned merges.
  The pad id is 0 because generation pads batches with 0.
- `Tokenizer.from_file`: any `tokenizer.json`, e.g. GPT-NeoX's (used by the public PaLM
  checkpoints; there `<|endoftext|>` = 0 and `<|padding|>` = 1).
- `Tokenizer.byte_fallback`: needs no file. Ids: 0 = `<|pad|>`, 1 = `<|endoftext|>`, 2 + b = byte b;
  any UTF-8 text round-trips exactly.

On disk (`save`/`load`, so a tokenizer can travel inside every checkpoint directory) a tokenizer is
`tokenizer_config.json` (its kind and special-token names) plus, unless it is the byte fallback,
the `tokenizer.json` it was built from.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers

from rlhf_core.corpus import add_source_arguments, atomic_output, iter_texts, source_files_from_args

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# Our specials come first, so that <|pad|> gets id 0 and <|endoftext|> id 1.
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN)
# Names that `from_file` recognises when the caller does not say which tokens to use.
KNOWN_EOS_TOKENS = (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>")
KNOWN_PAD_TOKENS = (PAD_TOKEN, "<|padding|>", "<pad>", "[PAD]")

CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILE = "tokenizer.json"
HUGGINGFACE_KIND = "huggingface"
BYTES_KIND = "bytes"
MIN_BPE_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


class TokenizerError(Exception):
    """A tokenizer that cannot be built, loaded or saved; names the file involved."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message if path is None else f"{path}: {message}")
        self.path = path


class Tokenizer:
    """Encodes text to ids and back; knows its end-of-text and padding ids.

    Build one with `train_bpe`, `from_file`, `byte_fallback` or `load`. `encode` never adds
    special tokens itself: callers append `eos_id` where a document ends.
    """

    def __init__(
        self, backend: tokenizers.Tokenizer, *, kind: str, eos_token: str, pad_token: str
    ) -> None:
        self.backend = backend
        self.kind = kind
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.eos_id = _require_token_id(backend, eos_token)
        self.pad_id = _require_token_id(backend, pad_token)
        # The largest id + 1, not the entry count: ids of a loaded file need not be contiguous,
        # and an embedding table must cover the largest one.
        self.vocab_size = max(backend.get_vocab(with_added_tokens=True).values()) + 1

    @classmethod
    def train_bpe(
        cls,
        corpus: Iterable[str] | Iterable[Path],
        vocab_size: int,
        *,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> Tokenizer:
        """Train a byte-level BPE with `vocab_size` ids (fewer if the corpus has too few pairs).

        `corpus` is either texts (e.g. `rlhf_core.corpus.iter_texts(files)`, which also reads
        JSONL and Parquet) or paths of plain-text files, which `tokenizers` reads itself.
        """
        if vocab_size < MIN_BPE_VOCAB_SIZE:
            raise TokenizerError(
                f"vocab_size must be at least {MIN_BPE_VOCAB_SIZE}, not {vocab_size}"
            )
        backend = tokenizers.Tokenizer(models.BPE())
        _use_byte_level(backend, split_words=True)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[_special(token) for token in SPECIAL_TOKENS],
            # Every byte gets an id even if the corpus never uses it: no text is ever unencodable.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        items = iter(corpus)
        first = next(items, None)
        if first is None:
            raise TokenizerError("cannot train a tokenizer on an empty corpus")
        if isinstance(first, Path):
            files = [str(path) for path in itertools.chain([first], items)]
            try:
                backend.train(files, trainer)
            except Exception as error:  # tokenizers raises plain Exception for unreadable files
                raise TokenizerError(f"cannot train on {', '.join(files)}: {error}") from error
        else:
            backend.train_from_iterator(itertools.chain([first], items), trainer)
        return cls(backend, kind=HUGGINGFACE_KIND, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)

    @classmethod
    def from_file(
        cls, path: Path, *, eos_token: str | None = None, pad_token: str | None = None
    ) -> Tokenizer:
        """Load a `tokenizer.json`. Special tokens default to the first known name present
        (`KNOWN_EOS_TOKENS`, `KNOWN_PAD_TOKENS`); without a padding token, end-of-text pads."""
        if not path.is_file():
            raise TokenizerError("no such tokenizer file", path)
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises plain Exception for malformed JSON
            raise TokenizerError(f"not a valid tokenizer.json ({error})", path) from error
        eos_token = eos_token or _first_present(backend, KNOWN_EOS_TOKENS)
        if eos_token is None:
            known = ", ".join(KNOWN_EOS_TOKENS)
            raise TokenizerError(f"no end-of-text token among {known}; name one explicitly", path)
        pad_token = pad_token or _first_present(backend, KNOWN_PAD_TOKENS) or eos_token
        try:
            return cls(backend, kind=HUGGINGFACE_KIND, eos_token=eos_token, pad_token=pad_token)
        except TokenizerError as error:
            raise TokenizerError(str(error), path) from error

    @classmethod
    def byte_fallback(cls) -> Tokenizer:
        """The file-free tokenizer: one id per UTF-8 byte (2 + byte value) after the specials."""
        alphabet = _byte_symbols()
        vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
        vocab.update({symbol: len(SPECIAL_TOKENS) + byte for byte, symbol in enumerate(alphabet)})
        backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
        _use_byte_level(backend, split_words=False)
        backend.add_special_tokens([_special(token) for token in SPECIAL_TOKENS])
        return cls(backend, kind=BYTES_KIND, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)

    @classmethod
    def load(cls, directory: Path) -> Tokenizer:
        """Load what `save` wrote (a bare directory with only a `tokenizer.json` works too)."""
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            if (directory / TOKENIZER_FILE).is_file():
                return cls.from_file(directory / TOKENIZER_FILE)
            raise TokenizerError(f"no {CONFIG_FILE} or {TOKENIZER_FILE} here", directory)
        config = _read_config(config_path)
        if config["kind"] == BYTES_KIND:
            return cls.byte_fallback()
        return cls.from_file(
            directory / TOKENIZER_FILE, eos_token=config["eos_token"], pad_token=config["pad_token"]
        )

    def save(self, directory: Path) -> None:
        """Write this tokenizer into `directory` (created if needed), each file atomically."""
        directory.mkdir(parents=True, exist_ok=True)
        if self.kind != BYTES_KIND:
            with atomic_output(directory / TOKENIZER_FILE) as handle:
                handle.write(self.backend.to_str().encode("utf-8"))
        config = {"kind": self.kind, "eos_token": self.eos_token, "pad_token": self.pad_token}
        with atomic_output(directory / CONFIG_FILE) as handle:
            handle.write(json.dumps(config, indent=2).encode("utf-8"))

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the full serialized tokenizer: equal fingerprints mean equal ids."""
        return hashlib.sha256(self.backend.to_str().encode("utf-8")).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts at once (in parallel, without the offsets `encode` would track)."""
        encodings = self.backend.encode_batch_fast(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of `ids`. Specials are kept by default so that decode(encode(text)) == text even
        when the text spells one; byte sequences cut mid-character decode to U+FFFD."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, "
            f"eos={self.eos_token!r}:{self.eos_id}, pad={self.pad_token!r}:{self.pad_id})"
        )


def load_tokenizer(spec: str) -> Tokenizer:
    """A tokenizer named on a command line: `bytes`, a saved directory, or a tokenizer.json."""
    if spec == BYTES_KIND:
        return Tokenizer.byte_fallback()
    path = Path(spec)
    return Tokenizer.load(path) if path.is_dir() else Tokenizer.from_file(path)


def add_train_tokenizer_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = subparsers.add_parser(
        "train-tokenizer",
        help="train a byte-level BPE tokenizer on a corpus",
        description="Train a byte-level BPE on text/Markdown, JSONL or Parquet files and save it "
        f"as {TOKENIZER_FILE} + {CONFIG_FILE}. Ids: 0 = {PAD_TOKEN}, 1 = {EOS_TOKEN}.",
    )
    add_source_arguments(parser)
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory to save it in"
    )
    parser.add_argument(
        "--vocab-size", type=int, default=8192, metavar="N", help="default: %(default)s"
    )
    parser.add_argument(
        "--min-frequency",
        type=int,
        default=2,
        metavar="N",
        help="rarest pair to merge (default: %(default)s)",
    )
    parser.set_defaults(run=_run_train_tokenizer)


def _run_train_tokenizer(args: argparse.Namespace) -> None:
    files = source_files_from_args(args)
    tokenizer = Tokenizer.train_bpe(
        iter_texts(files, args.text_field),
        args.vocab_size,
        min_frequency=args.min_frequency,
        show_progress=True,
    )
    tokenizer.save(args.out)
    print(f"{tokenizer} trained on {len(files)} files -> {args.out}")


def _use_byte_level(backend: tokenizers.Tokenizer, *, split_words: bool) -> None:
    # No prefix space: a document's first word must encode like any other, and chunked encoding
    # (see rlhf_core.corpus) must equal whole-text encoding.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split_words)
    backend.decoder = decoders.ByteLevel()


def _special(token: str) -> AddedToken:
    return AddedToken(token, special=True, normalized=False)


def _byte_symbols() -> list[str]:
    """The printable stand-in that byte-level models use for each byte value, in byte order.

    The scheme is GPT-2's: bytes that are printable Latin-1 characters stand for themselves; the
    others, in order, take the code points from 256 up. It gives exactly the symbol set of
    `pre_tokenizers.ByteLevel.alphabet()`, but in byte order, so that id = 2 + byte.
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    unprintable = (byte for byte in range(256) if byte not in printable)
    shifted = {byte: chr(256 + index) for index, byte in enumerate(unprintable)}
    return [chr(byte) if byte in printable else shifted[byte] for byte in range(256)]


def _require_token_id(backend: tokenizers.Tokenizer, token: str) -> int:
    token_id = backend.token_to_id(token)
    if token_id is None:
        raise TokenizerError(f"the tokenizer has no token {token!r}")
    return token_id


def _first_present(backend: tokenizers.Tokenizer, candidates: Sequence[str]) -> str | None:
    return next((token for token in candidates if backend.token_to_id(token) is not None), None)


def _read_config(path: Path) -> dict[str, str]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TokenizerError(f"not valid JSON ({error})", path) from error
    kinds = (HUGGINGFACE_KIND, BYTES_KIND)
    if not isinstance(config, dict) or config.get("kind") not in kinds:
        raise TokenizerError(f"expected a JSON object whose 'kind' is one of {kinds}", path)
    if config["kind"] == HUGGINGFACE_KIND and not all(
        isinstance(config.get(key), str) for key in ("eos_token", "pad_token")
    ):
        raise TokenizerError("expected string 'eos_token' and 'pad_token' entries", path)
    return config
