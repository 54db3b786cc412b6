"""A tiny prepared dataset for trainer and CLI tests: seconds to train on, on the CPU."""

from pathlib import Path

from rlhf_core.corpus import find_source_files
from rlhf_core.data import prepare_dataset
from rlhf_core.palm import PaLM, PaLMConfig
from rlhf_core.reward import RewardHeadConfig, RewardModel
from rlhf_core.tokenizer import Tokenizer

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]
BLOCK_SIZE = 32


def prepare_tiny_dataset(directory: Path) -> Path:
    """About 12 KB of repetitive text, byte-tokenized, in blocks of 32: ~290 train blocks, ~80
    validation blocks. Each document is distinct, so both splits get some."""
    corpus = directory / "corpus"
    corpus.mkdir(parents=True)
    for index in range(40):
        words = [WORDS[(index + offset) % len(WORDS)] for offset in range(60)]
        (corpus / f"doc{index}.txt").write_text(" ".join(words) + f" {index}.\n")
    data = directory / "data"
    prepare_dataset(
        find_source_files([corpus]),
        data,
        Tokenizer.byte_fallback(),
        block_size=BLOCK_SIZE,
        validation_fraction=0.2,
    )
    return data


def small_model(num_tokens: int = 258) -> PaLMConfig:
    """Smaller than the `tiny` preset, for tests that train but need not learn much."""
    return PaLMConfig(num_tokens=num_tokens, dim=32, depth=2, heads=2, dim_head=16)


def plumbing_reward_model(config: PaLMConfig, heads: RewardHeadConfig | None = None) -> RewardModel:
    """A randomly initialised reward model whose heads count as trained, so that it scores:
    for tests of what happens with scores, not of learning them."""
    model = RewardModel(PaLM(config), heads)
    model.trained_heads = frozenset({"scalar", "likert"})
    return model
