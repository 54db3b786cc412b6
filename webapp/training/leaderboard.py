"""How people judge model versions: a leaderboard from their pairwise votes, and two versions
head to head.

A *vote* is one live (not undone) pairwise-preference label on an item whose two responses come
from two different model versions. A win counts 1 for the winner; a tie counts half a win each
way (as in the quality pages' Bradley-Terry); "both bad" says nothing about the order and is
dropped from the fit (the head-to-head table still counts it). Responses written by people (no
version) and pairs of one version against itself are no votes.

The leaderboard fits Bradley-Terry strengths by choix's ILSR on the matrix of wins, with a small
prior so that a version that won every vote keeps a finite strength, and gives each a percentile
interval from a bootstrap over votes (a fixed seed, so a page shows the same figures on every
load). Strengths are shown on the Elo scale (1000 + 400·θ/ln 10, mean 1000), where a gap of 400
means 10:1 odds of winning.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import choix
import numpy as np
from numpy.typing import NDArray

from webapp.annotation.models import ItemResponse, Label, Project
from webapp.annotation.questions import QuestionKind

# ILSR's prior (see webapp/annotation/quality.py): keeps strengths finite for unbeaten versions.
BT_PRIOR = 0.1
RESAMPLES = 200
SEED = 0
LEVEL = 0.95
Z_95 = 1.959963984540054

Outcome = Literal["win", "tie", "both_bad"]


@dataclass(frozen=True)
class Vote:
    """One person's verdict on one pair: `first` won ("win"), or the two tied, or both were
    bad. For a tie or both-bad the order of the two versions means nothing."""

    first: int  # model version ids
    second: int
    outcome: Outcome = "win"


@dataclass(frozen=True)
class Standing:
    version_id: int
    votes: int  # decisive votes and ties, both-bad excluded
    wins: float  # ties count half
    rating: float | None  # Elo scale; None without a vote
    low: float | None
    high: float | None

    @property
    def win_rate(self) -> float | None:
        return self.wins / self.votes if self.votes else None


@dataclass(frozen=True)
class HeadToHead:
    """A against B on items holding one response of each."""

    a_wins: int
    b_wins: int
    ties: int
    both_bad: int
    win_rate: float | None  # of A, ties counting half; None without a vote
    low: float | None  # 95% Wilson interval
    high: float | None

    @property
    def votes(self) -> int:
        return self.a_wins + self.b_wins + self.ties


# --- the statistics, on plain values -----------------------------------------------------------


def wilson_interval(successes: float, n: float, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for a share (Wilson 1927); half-successes (ties) are allowed."""
    if n <= 0:
        raise ValueError("an interval needs at least one trial")
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    spread = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, centre - spread), min(1.0, centre + spread)


def head_to_head(votes: Iterable[Vote], a: int, b: int) -> HeadToHead:
    counts: Counter[str] = Counter()
    for vote in votes:
        if {vote.first, vote.second} != {a, b}:
            continue
        if vote.outcome == "win":
            counts["a" if vote.first == a else "b"] += 1
        else:
            counts[vote.outcome] += 1
    decided = counts["a"] + counts["b"] + counts["tie"]
    rate = low = high = None
    if decided:
        successes = counts["a"] + counts["tie"] / 2
        rate = successes / decided
        low, high = wilson_interval(successes, decided)
    return HeadToHead(counts["a"], counts["b"], counts["tie"], counts["both_bad"], rate, low, high)


def elo(theta: NDArray[np.float64]) -> NDArray[np.float64]:
    return 1000 + 400 * theta / math.log(10)


def standings(
    version_ids: Sequence[int],
    votes: Iterable[Vote],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> list[Standing]:
    """Every version of `version_ids`, best first: those with votes by rating, then the others
    (no rating) in the order given. Votes naming a version outside `version_ids` are ignored."""
    known = set(version_ids)
    counted = [v for v in votes if v.outcome != "both_bad" and {v.first, v.second} <= known]
    voted = [pk for pk in version_ids if any(pk in (v.first, v.second) for v in counted)]
    index = {pk: i for i, pk in enumerate(voted)}
    # Each distinct (winner, loser, tie) is a category; a bootstrap resample of the votes is a
    # multinomial draw of the category counts, which keeps 200 refits cheap for many votes.
    categories = Counter(_category(vote, index) for vote in counted)
    keys = list(categories)
    counts = np.array([categories[key] for key in keys], dtype=np.float64)
    rating = low = high = np.zeros(len(voted))
    if voted:
        rating = elo(_fit(len(voted), keys, counts))
        if resamples:
            rng = np.random.default_rng(seed)
            total = int(counts.sum())
            draws = rng.multinomial(total, counts / total, size=resamples).astype(np.float64)
            fits = np.array([elo(_fit(len(voted), keys, draw)) for draw in draws])
            tail = 100 * (1 - level) / 2
            low, high = np.percentile(fits, [tail, 100 - tail], axis=0)
    played: dict[int, int] = defaultdict(int)
    wins: dict[int, float] = defaultdict(float)
    for v in counted:
        played[v.first] += 1
        played[v.second] += 1
        wins[v.first] += 0.5 if v.outcome == "tie" else 1.0
        wins[v.second] += 0.5 if v.outcome == "tie" else 0.0
    rows = [
        Standing(
            pk,
            played[pk],
            wins[pk],
            float(rating[index[pk]]) if pk in index else None,
            float(low[index[pk]]) if pk in index and resamples else None,
            float(high[index[pk]]) if pk in index and resamples else None,
        )
        for pk in version_ids
    ]
    return sorted(rows, key=lambda row: (row.rating is None, -(row.rating or 0.0)))


def _category(vote: Vote, index: dict[int, int]) -> tuple[int, int, bool]:
    """(winner, loser, False) for a win; (lower, higher, True) for a tie, whose order is moot."""
    first, second = index[vote.first], index[vote.second]
    if vote.outcome == "win":
        return first, second, False
    return min(first, second), max(first, second), True


def _fit(
    n: int, keys: Sequence[tuple[int, int, bool]], counts: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Bradley-Terry log-strengths (mean 0) from category counts; a tie is half a win each way."""
    wins = np.zeros((n, n))
    for (first, second, tie), count in zip(keys, counts, strict=True):
        if tie:
            wins[first, second] += count / 2
            wins[second, first] += count / 2
        else:
            wins[first, second] += count
    if n == 1:
        return np.zeros(1)
    return np.asarray(choix.ilsr_pairwise_dense(wins, alpha=BT_PRIOR), dtype=np.float64)


@dataclass(frozen=True)
class IntervalBar:
    """Where a rating and its interval sit on a shared axis, in percent of its width."""

    left: float
    width: float
    mark: float


def interval_bars(rows: Iterable[Standing]) -> dict[int, IntervalBar]:
    """Version id -> its bar, on one axis from the lowest low to the highest high."""
    rated = [r for r in rows if r.rating is not None and r.low is not None and r.high is not None]
    if not rated:
        return {}
    start = min(r.low for r in rated if r.low is not None)
    span = max(r.high for r in rated if r.high is not None) - start or 1.0

    def at(value: float) -> float:
        return round(100 * (value - start) / span, 1)

    return {
        r.version_id: IntervalBar(at(r.low), max(at(r.high) - at(r.low), 0.5), at(r.rating))
        for r in rated
        if r.rating is not None and r.low is not None and r.high is not None
    }


# --- votes from the database --------------------------------------------------------------------


def project_votes(project: Project) -> list[Vote]:
    """The project's live preference labels on pairs of two different versions' responses."""
    versions: dict[int, dict[int, int | None]] = defaultdict(dict)
    placements = ItemResponse.objects.filter(item__project=project).values_list(
        "item_id", "response_id", "response__model_version_id"
    )
    for item_id, response_id, version_id in placements:
        versions[item_id][response_id] = version_id
    labels = Label.objects.filter(
        item__project=project, question__kind=QuestionKind.PREFERENCE, undone_at__isnull=True
    ).values_list("item_id", "value")
    votes = []
    for item_id, value in labels:
        pair = versions.get(item_id, {})
        if len(pair) != 2 or None in pair.values() or len(set(pair.values())) != 2:
            continue
        vote = _vote(pair, value)
        if vote is not None:
            votes.append(vote)
    return votes


def _vote(pair: dict[int, int | None], value: object) -> Vote | None:
    if not isinstance(value, dict):
        return None
    first, second = (version for version in pair.values() if version is not None)
    outcome = value.get("outcome")
    if outcome == "tie":
        return Vote(first, second, "tie")
    if outcome == "both_bad":
        return Vote(first, second, "both_bad")
    winner = value.get("winner")
    if outcome != "win" or winner not in pair:
        return None
    loser = next(version for response, version in pair.items() if response != winner)
    won = pair[winner]
    assert won is not None and loser is not None
    return Vote(won, loser)
