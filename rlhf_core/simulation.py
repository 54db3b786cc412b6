"""Simulated annotators with a hidden preference, to prove that the RLHF loop learns.

No package ships preference data we could test on, so tests (and later the end-to-end loop)
label model samples with annotators whose taste is known: each scores a text by a hidden
`preference` plus its own Gaussian noise, so several annotators disagree now and then, as people
do. The default preference, the share of characters that are the letter "e", is something a
tiny byte- or BPE-level model can both learn to score and learn to produce.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rlhf_core.records import LikertRating, PairwisePreference, Ranking

Preference = Callable[[str], float]


@dataclass(frozen=True)
class LetterShare:
    """The share of a text's characters that are in `letters` (0 for an empty text)."""

    letters: str = "e"

    def __call__(self, text: str) -> float:
        if not text:
            return 0.0
        return sum(character in self.letters for character in text) / len(text)


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
