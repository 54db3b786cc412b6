"""Bradley-Terry standings with bootstrap intervals, the Wilson interval of a head-to-head, and
the votes the database yields, on synthetic votes whose answer is known."""

from __future__ import annotations

import pytest

from tests.webapp.annotation.conftest import MakeProject, make_project  # noqa: F401 (fixture)
from tests.webapp.training import factories
from webapp.accounts.models import User
from webapp.annotation.questions import TaskType
from webapp.training.leaderboard import (
    Vote,
    head_to_head,
    interval_bars,
    project_votes,
    standings,
    wilson_interval,
)

A, B, C, D = 1, 2, 3, 4


def ladder(scale: int) -> list[Vote]:
    """A beats B and B beats C 8 times in 10, A beats C 9 in 10; times `scale`."""
    votes: list[Vote] = []
    for winner, loser, wins in ((A, B, 8), (B, C, 8), (A, C, 9)):
        votes += [Vote(winner, loser)] * (wins * scale)
        votes += [Vote(loser, winner)] * ((10 - wins) * scale)
    return votes


def test_wilson_interval_matches_the_hand_computed_one() -> None:
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_interval(0, 0)


def test_a_clear_ordering_is_recovered_with_counts_and_win_rates() -> None:
    rows = standings([C, A, B], ladder(1))
    assert [row.version_id for row in rows] == [A, B, C]
    by_id = {row.version_id: row for row in rows}
    assert by_id[A].votes == 20 and by_id[A].wins == 17 and by_id[A].win_rate == 0.85
    assert by_id[C].wins == 3
    for row in rows:
        assert row.rating is not None and row.low is not None and row.high is not None
        assert row.low <= row.rating <= row.high
    # Elo scale: the ratings average 1000.
    assert sum(row.rating or 0 for row in rows) / 3 == pytest.approx(1000)


def test_intervals_shrink_with_more_votes() -> None:
    few = {row.version_id: row for row in standings([A, B, C], ladder(1))}
    many = {row.version_id: row for row in standings([A, B, C], ladder(10))}
    for pk in (A, B, C):
        width_few = (few[pk].high or 0) - (few[pk].low or 0)
        width_many = (many[pk].high or 0) - (many[pk].low or 0)
        assert width_many < width_few / 2


def test_the_bootstrap_is_seeded_so_a_page_shows_the_same_figures() -> None:
    assert standings([A, B, C], ladder(1)) == standings([A, B, C], ladder(1))
    other = standings([A, B, C], ladder(1), seed=1)
    assert [row.low for row in other] != [row.low for row in standings([A, B, C], ladder(1))]


def test_a_version_without_votes_is_listed_last_without_a_rating() -> None:
    rows = standings([D, A, B, C], ladder(1))
    assert [row.version_id for row in rows] == [A, B, C, D]
    assert rows[-1].rating is None and rows[-1].votes == 0 and rows[-1].win_rate is None
    assert rows[-1].low is None and rows[-1].high is None


def test_ties_count_half_a_win_each_way_and_both_bad_is_dropped() -> None:
    votes = [Vote(A, B, "tie")] * 4 + [Vote(A, B, "both_bad")] * 5
    rows = standings([A, B], votes)
    assert [row.votes for row in rows] == [4, 4] and [row.wins for row in rows] == [2, 2]
    assert rows[0].rating == pytest.approx(rows[1].rating)
    # Both-bad votes change nothing of the fit.
    plain = standings([A, B, C], ladder(1))
    assert standings([A, B, C], ladder(1) + [Vote(C, A, "both_bad")] * 9) == plain


def test_votes_naming_an_unlisted_version_are_ignored() -> None:
    assert standings([A, B], ladder(1)) == standings(
        [A, B], [v for v in ladder(1) if C not in (v.first, v.second)]
    )


def test_without_any_vote_every_version_is_listed_unrated() -> None:
    rows = standings([A, B], [])
    assert [(row.version_id, row.rating) for row in rows] == [(A, None), (B, None)]
    assert interval_bars(rows) == {}


def test_interval_bars_share_one_axis() -> None:
    rows = standings([A, B, C], ladder(1))
    bars = interval_bars(rows)
    assert min(bar.left for bar in bars.values()) == 0
    assert max(bar.left + bar.width for bar in bars.values()) == pytest.approx(100, abs=0.2)
    assert bars[A].mark > bars[B].mark > bars[C].mark


def test_head_to_head_counts_each_outcome_and_gives_a_wilson_interval() -> None:
    votes = [Vote(A, B)] * 6 + [Vote(B, A)] * 2 + [Vote(B, A, "tie")] * 2
    votes += [Vote(A, B, "both_bad"), Vote(A, C), Vote(C, B)]
    duel = head_to_head(votes, A, B)
    assert (duel.a_wins, duel.b_wins, duel.ties, duel.both_bad, duel.votes) == (6, 2, 2, 1, 10)
    assert duel.win_rate == 0.7
    assert (duel.low, duel.high) == wilson_interval(7, 10)
    reverse = head_to_head(votes, B, A)
    assert reverse.win_rate == pytest.approx(0.3)
    empty = head_to_head([], A, B)
    assert empty.votes == 0 and empty.win_rate is None and empty.low is None


@pytest.mark.django_db
def test_project_votes_are_live_preferences_between_two_versions(
    make_project: MakeProject,  # noqa: F811
    annotator: User,
    second_annotator: User,
) -> None:
    project = make_project(TaskType.PAIRWISE)
    elsewhere = make_project(TaskType.PAIRWISE)
    old, new = factories.version("old"), factories.version("new")
    won = factories.pair_item(project, old, new)
    factories.vote(won, annotator, "right")
    factories.vote(won, second_annotator, "left", undone=True)  # undone: no vote
    factories.vote(factories.pair_item(project, new, old), annotator, "tie")
    factories.vote(factories.pair_item(project, new, old), annotator, "both_bad")
    factories.vote(factories.pair_item(project, new, new), annotator, "left")  # same version
    factories.vote(factories.pair_item(project, None, new), annotator, "left")  # a person's
    factories.vote(factories.pair_item(elsewhere, old, new), annotator, "left")
    assert sorted(project_votes(project), key=lambda v: v.outcome) == [
        Vote(new.pk, old.pk, "both_bad"),
        Vote(new.pk, old.pk, "tie"),
        Vote(new.pk, old.pk, "win"),
    ]
