"""Quality control's statistics: gold accuracy, inter-annotator agreement, consensus and the
time an annotator works, as pure functions over plain values (answers as stored in `Label.value`,
codes, times), each tested on hand-computed examples. `quality_reports.py` feeds them from the
database.

Answers become *codes* before they are compared. A preference is coded by the winner's position in
the blind pair ("left"/"right"), not its response id, so that every pair shares one nominal scale.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import combinations
from typing import Any, Literal

import choix
import krippendorff
import numpy as np

from webapp.annotation.questions import QuestionKind

# Krippendorff's alpha and pairwise agreement need this many items with two or more answers.
MIN_PAIRABLE_ITEMS = 2
# Submissions closer together than this belong to one working session (wall time).
IDLE_GAP = timedelta(minutes=10)
# ILSR's prior: keeps P(A > B) away from 0 and 1 when one side won every vote.
BT_PRIOR = 0.1

Code = Hashable
Level = Literal["nominal", "ordinal"]
# item -> annotator -> code (or stored answer)
Units = Mapping[int, Mapping[int, Any]]

GRADED_KINDS = (
    QuestionKind.LIKERT,
    QuestionKind.PREFERENCE,
    QuestionKind.RANKING,
    QuestionKind.FLAGS,
)


# --- answers as codes ---------------------------------------------------------------------------


def answer_code(kind: str, value: Mapping[str, Any], response_ids: Sequence[int]) -> Code | None:
    """The comparable code of a stored answer: the score (Likert), left/right/tie/both_bad
    (preference), the position of the top response (ranking), the set of flags; None for free
    text or an answer that does not fit the item."""
    if kind == QuestionKind.LIKERT:
        score = value.get("score")
        return score if isinstance(score, int) else None
    if kind == QuestionKind.PREFERENCE:
        outcome = value.get("outcome")
        if outcome in ("tie", "both_bad"):
            return str(outcome)
        winner = value.get("winner")
        if outcome == "win" and winner in response_ids[:2]:
            return "left" if winner == response_ids[0] else "right"
        return None
    if kind == QuestionKind.RANKING:
        order = value.get("order") or []
        return response_ids.index(order[0]) if order and order[0] in response_ids else None
    if kind == QuestionKind.FLAGS:
        return frozenset(value.get("flags", []))
    return None


def describe_code(kind: str, code: Code) -> str:
    """How a code reads on a page."""
    if kind == QuestionKind.RANKING and isinstance(code, int):
        return f"response {chr(ord('A') + code)} first"
    if kind == QuestionKind.PREFERENCE:
        return {"left": "A", "right": "B", "tie": "tie", "both_bad": "both bad"}.get(str(code), "?")
    if isinstance(code, frozenset):
        return ", ".join(sorted(code)) or "no flag"
    return str(code)


def kendall_tau(first: Sequence[int], second: Sequence[int]) -> float | None:
    """Kendall's tau-a between two orders of the same responses: +1 same order, -1 reversed."""
    if sorted(first) != sorted(second) or len(first) < 2:
        return None
    rank = {response: position for position, response in enumerate(second)}
    concordant = discordant = 0
    for a, b in combinations(first, 2):  # a is above b in `first`
        if rank[a] < rank[b]:
            concordant += 1
        else:
            discordant += 1
    return (concordant - discordant) / (concordant + discordant)


# --- gold ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldCheck:
    correct: bool
    tau: float | None = None  # rankings: Kendall's tau between the label and the gold order


def check_gold(
    kind: str, value: Mapping[str, Any], gold: Mapping[str, Any], tolerance: int = 0
) -> GoldCheck | None:
    """Whether an answer matches the gold answer; None for kinds that have no gold (free text,
    rewrites). Likert: within `tolerance`; preference: same outcome and winner (strength is a
    matter of degree, not of right and wrong); ranking: same top choice; flags: same set."""
    if kind == QuestionKind.LIKERT:
        return GoldCheck(abs(int(value["score"]) - int(gold["score"])) <= tolerance)
    if kind == QuestionKind.PREFERENCE:
        same = value.get("outcome") == gold.get("outcome") and value.get("winner") == gold.get(
            "winner"
        )
        return GoldCheck(same)
    if kind == QuestionKind.RANKING:
        order, gold_order = list(value["order"]), list(gold["order"])
        return GoldCheck(order[:1] == gold_order[:1], kendall_tau(order, gold_order))
    if kind == QuestionKind.FLAGS:
        return GoldCheck(set(value.get("flags", [])) == set(gold.get("flags", [])))
    return None


@dataclass(frozen=True)
class GoldAccuracy:
    correct: int = 0
    total: int = 0
    taus: tuple[float, ...] = ()

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.total if self.total else None

    @property
    def mean_tau(self) -> float | None:
        return statistics.fmean(self.taus) if self.taus else None

    def __add__(self, other: GoldAccuracy) -> GoldAccuracy:
        return GoldAccuracy(
            self.correct + other.correct, self.total + other.total, self.taus + other.taus
        )


def gold_accuracy(checks: Iterable[GoldCheck]) -> GoldAccuracy:
    checks = list(checks)
    return GoldAccuracy(
        correct=sum(check.correct for check in checks),
        total=len(checks),
        taus=tuple(check.tau for check in checks if check.tau is not None),
    )


# --- agreement ----------------------------------------------------------------------------------


def pairable(units: Units) -> dict[int, Mapping[int, Any]]:
    """The units (items) that two or more annotators answered: the only ones agreement uses."""
    return {item: answers for item, answers in units.items() if len(answers) >= 2}


def krippendorff_alpha(units: Units, level: Level) -> float | None:
    """Krippendorff's alpha of coded answers at `level` ("nominal" or "ordinal"); None with
    fewer than MIN_PAIRABLE_ITEMS pairable items or a single value in all of them."""
    usable = pairable(units)
    if len(usable) < MIN_PAIRABLE_ITEMS:
        return None
    codes = {code for answers in usable.values() for code in answers.values()}
    if len(codes) < 2:
        return None
    domain: list[Any] = sorted(codes) if level == "ordinal" else list(codes)
    column = {code: index for index, code in enumerate(domain)}
    counts = np.zeros((len(usable), len(domain)))
    for row, answers in enumerate(usable.values()):
        for code in answers.values():
            counts[row, column[code]] += 1
    value_domain = domain if level == "ordinal" else list(range(len(domain)))
    alpha = krippendorff.alpha(
        value_counts=counts, value_domain=value_domain, level_of_measurement=level
    )
    return float(alpha) if np.isfinite(alpha) else None


def pairwise_agreement(units: Units) -> float | None:
    """The share of pairs of annotators answering one item who gave the same code."""
    usable = pairable(units)
    if len(usable) < MIN_PAIRABLE_ITEMS:
        return None
    pairs = [
        bool(a == b) for answers in usable.values() for a, b in combinations(answers.values(), 2)
    ]
    return sum(pairs) / len(pairs)


def mean_pairwise_tau(orders: Units) -> float | None:
    """The mean Kendall tau over every pair of annotators' orders of one item."""
    usable = pairable(orders)
    if len(usable) < MIN_PAIRABLE_ITEMS:
        return None
    taus = [
        tau
        for answers in usable.values()
        for a, b in combinations(answers.values(), 2)
        if (tau := kendall_tau(a, b)) is not None
    ]
    return statistics.fmean(taus) if taus else None


@dataclass(frozen=True)
class Agreement:
    """Agreement on one question (or one flag option), with the data it rests on."""

    name: str
    level: str  # "ordinal", "nominal", or "ranking" (nominal on the top choice, plus tau)
    alpha: float | None
    pairwise: float | None
    items: int  # items answered by two or more annotators
    labels: int  # answers on those items
    mean_tau: float | None = None


def agreement(name: str, units: Units, level: Level) -> Agreement:
    usable = pairable(units)
    return Agreement(
        name=name,
        level=level,
        alpha=krippendorff_alpha(usable, level),
        pairwise=pairwise_agreement(usable),
        items=len(usable),
        labels=sum(len(answers) for answers in usable.values()),
    )


def question_agreement(
    key: str,
    kind: str,
    config: Mapping[str, Any],
    values: Units,
    response_ids: Mapping[int, Sequence[int]],
) -> list[Agreement]:
    """Agreement rows of one question from its stored answers (`values`: item -> annotator ->
    Label.value): one row, or one per option for flags; none for free text and rewrites."""
    if kind not in GRADED_KINDS:
        return []
    if kind == QuestionKind.FLAGS:
        return [
            agreement(
                f"{key}: {option}",
                {
                    item: {who: option in value.get("flags", []) for who, value in answers.items()}
                    for item, answers in values.items()
                },
                "nominal",
            )
            for option in config.get("options", [])
        ]
    codes = code_units(kind, values, response_ids)
    if kind == QuestionKind.LIKERT:
        return [agreement(key, codes, "ordinal")]
    if kind == QuestionKind.PREFERENCE:
        return [agreement(key, codes, "nominal")]
    top = agreement(key, codes, "nominal")
    orders = {
        item: {who: list(value.get("order", [])) for who, value in answers.items()}
        for item, answers in values.items()
    }
    return [
        Agreement(
            name=key,
            level="ranking",
            alpha=top.alpha,
            pairwise=top.pairwise,
            items=top.items,
            labels=top.labels,
            mean_tau=mean_pairwise_tau(orders),
        )
    ]


def code_units(
    kind: str, values: Units, response_ids: Mapping[int, Sequence[int]]
) -> dict[int, dict[int, Code]]:
    """item -> annotator -> code, leaving out answers that have no code."""
    units: dict[int, dict[int, Code]] = {}
    for item, answers in values.items():
        coded = {
            who: code
            for who, value in answers.items()
            if (code := answer_code(kind, value, response_ids.get(item, []))) is not None
        }
        if coded:
            units[item] = coded
    return units


# --- consensus ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Majority:
    values: tuple[Code, ...]  # more than one when the top count is tied
    votes: int  # answers for each of `values`
    total: int

    @property
    def tied(self) -> bool:
        return len(self.values) > 1

    @property
    def share(self) -> float:
        return self.votes / self.total


def majority(codes: Sequence[Code]) -> Majority | None:
    if not codes:
        return None
    counts = Counter(codes)
    top = max(counts.values())
    return Majority(tuple(code for code, n in counts.items() if n == top), top, len(codes))


@dataclass(frozen=True)
class LikertSummary:
    mean: float
    median: float
    count: int


def likert_summary(scores: Sequence[int]) -> LikertSummary | None:
    if not scores:
        return None
    return LikertSummary(statistics.fmean(scores), float(statistics.median(scores)), len(scores))


@dataclass(frozen=True)
class PairEstimate:
    """The votes on one pair and the Bradley-Terry probability that A (left) beats B."""

    a_wins: int
    b_wins: int
    ties: int
    both_bad: int
    p_a: float | None  # None without a decisive vote or a tie


def bradley_terry(codes: Sequence[Code]) -> PairEstimate:
    """Bradley-Terry over one pair's votes ("left" = A, "right" = B). A tie counts half a win
    each way: choix takes unweighted wins, so every decisive vote is entered twice and a tie
    once each way. Both-bad votes say nothing about the order and are only counted."""
    counts = Counter(codes)
    a_wins, b_wins, ties = counts["left"], counts["right"], counts["tie"]
    data = [(0, 1)] * (2 * a_wins) + [(1, 0)] * (2 * b_wins) + [(0, 1), (1, 0)] * ties
    p_a = None
    if data:
        params = choix.ilsr_pairwise(2, data, alpha=BT_PRIOR)
        p_a = float(choix.probabilities([0, 1], params)[0])
    return PairEstimate(a_wins, b_wins, ties, counts["both_bad"], p_a)


def mean_positions(orders: Sequence[Sequence[int]]) -> list[tuple[int, float]]:
    """Each response's mean place (1 = best) over the annotators' orders, best first."""
    places: dict[int, list[int]] = defaultdict(list)
    for order in orders:
        for place, response in enumerate(order, start=1):
            places[response].append(place)
    means = [(response, statistics.fmean(p)) for response, p in places.items()]
    return sorted(means, key=lambda pair: pair[1])


@dataclass(frozen=True)
class QuestionConsensus:
    key: str
    kind: str
    answers: int
    majority: Majority | None = None
    majority_text: str = ""
    likert: LikertSummary | None = None
    pair: PairEstimate | None = None
    positions: list[tuple[str, float]] = field(default_factory=list)  # ranking: letter, mean
    flag_counts: list[tuple[str, int]] = field(default_factory=list)


def question_consensus(
    key: str,
    kind: str,
    config: Mapping[str, Any],
    values: Sequence[Mapping[str, Any]],
    response_ids: Sequence[int],
) -> QuestionConsensus:
    """The consensus of one item's answers to one question."""
    codes = [c for v in values if (c := answer_code(kind, v, response_ids)) is not None]
    top = majority(codes) if kind in GRADED_KINDS else None
    text = " / ".join(describe_code(kind, code) for code in top.values) if top else ""
    consensus = QuestionConsensus(key, kind, len(values), top, text)
    if kind == QuestionKind.LIKERT:
        scores = [code for code in codes if isinstance(code, int)]
        return replace(consensus, likert=likert_summary(scores))
    if kind == QuestionKind.PREFERENCE:
        return replace(consensus, pair=bradley_terry(codes))
    if kind == QuestionKind.RANKING:
        letter = {r: chr(ord("A") + i) for i, r in enumerate(response_ids)}
        means = mean_positions([v.get("order", []) for v in values])
        return replace(consensus, positions=[(letter.get(r, "?"), m) for r, m in means])
    if kind == QuestionKind.FLAGS:
        ticked = Counter(flag for v in values for flag in v.get("flags", []))
        counts = [(option, ticked[option]) for option in config.get("options", [])]
        return replace(consensus, flag_counts=counts)
    return consensus


def agreement_with_others(units: Iterable[Units]) -> dict[int, GoldAccuracy]:
    """Per annotator: how often their code equals the majority of the other annotators of the
    item (answers where the others are tied or absent are not counted)."""
    hits: dict[int, list[bool]] = defaultdict(list)
    for question_units in units:
        for answers in question_units.values():
            for who, code in answers.items():
                others = majority([c for other, c in answers.items() if other != who])
                if others is not None and not others.tied:
                    hits[who].append(code == others.values[0])
    return {who: gold_accuracy(GoldCheck(hit) for hit in marks) for who, marks in hits.items()}


# --- time ---------------------------------------------------------------------------------------


def wall_seconds(
    intervals: Iterable[tuple[datetime, datetime]], gap: timedelta = IDLE_GAP
) -> float:
    """Time spent in working sessions: the union of the (served, submitted) intervals, where
    intervals less than `gap` apart are joined (the time between two items is work too) and a
    longer pause is not counted."""
    total = 0.0
    start: datetime | None = None
    end: datetime | None = None
    for served, submitted in sorted(intervals):
        if start is None or end is None or served > end + gap:
            if start is not None and end is not None:
                total += (end - start).total_seconds()
            start, end = served, submitted
        else:
            end = max(end, submitted)
    if start is not None and end is not None:
        total += (end - start).total_seconds()
    return total


def per_hour(count: int, seconds: float) -> float | None:
    return count / (seconds / 3600) if seconds > 0 else None
