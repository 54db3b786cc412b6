"""The statistics of quality.py on hand-computed examples."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pytest

from webapp.annotation.quality import (
    GoldAccuracy,
    GoldCheck,
    Majority,
    agreement_with_others,
    answer_code,
    bradley_terry,
    check_gold,
    gold_accuracy,
    kendall_tau,
    krippendorff_alpha,
    likert_summary,
    majority,
    mean_pairwise_tau,
    mean_positions,
    pairwise_agreement,
    per_hour,
    question_agreement,
    question_consensus,
    wall_seconds,
)

FLAGS = {"options": ["unsafe", "factual error", "off topic"]}
PAIR = [17, 12]  # response ids: 17 is shown left (A), 12 right (B)


def units_from_matrix(rows: list[list[float]]) -> dict[int, dict[int, float]]:
    """Krippendorff's coder x unit matrix (nan = missing) as item -> annotator -> code."""
    units: dict[int, dict[int, float]] = {}
    for coder, row in enumerate(rows):
        for unit, value in enumerate(row):
            if not math.isnan(value):
                units.setdefault(unit, {})[coder] = value
    return units


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the example the
# krippendorff library documents: four coders, twelve units, values 1..5.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
    [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
]


# --- codes and Kendall tau ----------------------------------------------------------------------


def test_answers_are_coded_so_that_every_item_shares_one_scale() -> None:
    assert answer_code("likert", {"score": 4}, []) == 4
    win_left = {"outcome": "win", "winner": 17, "strength": 2}
    win_right = {"outcome": "win", "winner": 12, "strength": 1}
    assert answer_code("preference", win_left, PAIR) == "left"
    assert answer_code("preference", win_right, PAIR) == "right"
    assert answer_code("preference", {"outcome": "tie", "winner": None}, PAIR) == "tie"
    assert answer_code("preference", {"outcome": "both_bad", "winner": None}, PAIR) == "both_bad"
    assert answer_code("ranking", {"order": [12, 19, 17]}, [17, 12, 19]) == 1
    assert answer_code("flags", {"flags": ["unsafe", "off topic"]}, []) == frozenset(
        {"off topic", "unsafe"}
    )


def test_answers_without_a_comparable_code_are_left_out() -> None:
    assert answer_code("text", {"text": "because"}, []) is None
    assert answer_code("rewrite", {"text": "better"}, []) is None
    assert answer_code("preference", {"outcome": "win", "winner": 99, "strength": 1}, PAIR) is None
    assert answer_code("ranking", {"order": [99]}, [17, 12]) is None


def test_kendall_tau_counts_concordant_minus_discordant_pairs() -> None:
    assert kendall_tau([1, 2, 3], [1, 2, 3]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    # (1,2) and (1,3) agree, (2,3) is swapped: (2 - 1) / 3
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert kendall_tau([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx((4 - 2) / 6)


def test_kendall_tau_is_undefined_for_different_responses_or_a_single_one() -> None:
    assert kendall_tau([1, 2], [1, 3]) is None
    assert kendall_tau([1], [1]) is None


# --- gold ---------------------------------------------------------------------------------------


def test_a_likert_answer_is_correct_within_the_tolerance() -> None:
    assert check_gold("likert", {"score": 4}, {"score": 4}) == GoldCheck(True)
    assert check_gold("likert", {"score": 5}, {"score": 4}) == GoldCheck(False)
    assert check_gold("likert", {"score": 5}, {"score": 4}, tolerance=1) == GoldCheck(True)
    assert check_gold("likert", {"score": 2}, {"score": 4}, tolerance=1) == GoldCheck(False)


def test_a_preference_is_correct_with_the_same_winner_whatever_the_strength() -> None:
    gold = {"outcome": "win", "winner": 17, "strength": 3}
    assert check_gold("preference", {"outcome": "win", "winner": 17, "strength": 1}, gold) == (
        GoldCheck(True)
    )
    assert check_gold("preference", {"outcome": "win", "winner": 12, "strength": 3}, gold) == (
        GoldCheck(False)
    )
    assert check_gold("preference", {"outcome": "tie", "winner": None, "strength": 0}, gold) == (
        GoldCheck(False)
    )
    tie = {"outcome": "tie", "winner": None, "strength": 0}
    assert check_gold("preference", tie, tie) == GoldCheck(True)
    both_bad = {"outcome": "both_bad", "winner": None, "strength": 0}
    assert check_gold("preference", both_bad, tie) == GoldCheck(False)


def test_a_ranking_is_correct_with_the_same_top_choice_and_reports_kendall_tau() -> None:
    gold = {"order": [1, 2, 3]}
    assert check_gold("ranking", {"order": [1, 3, 2]}, gold) == GoldCheck(
        True, pytest.approx(1 / 3)
    )
    assert check_gold("ranking", {"order": [3, 2, 1]}, gold) == GoldCheck(False, -1.0)


def test_flags_are_correct_as_the_same_set_in_any_order() -> None:
    gold = {"flags": ["unsafe", "off topic"]}
    assert check_gold("flags", {"flags": ["off topic", "unsafe"]}, gold) == GoldCheck(True)
    assert check_gold("flags", {"flags": ["unsafe"]}, gold) == GoldCheck(False)
    assert check_gold("flags", {"flags": []}, {"flags": []}) == GoldCheck(True)


def test_free_text_and_rewrites_have_no_gold() -> None:
    assert check_gold("text", {"text": "a"}, {"text": "a"}) is None
    assert check_gold("rewrite", {"text": "a"}, {"text": "a"}) is None


def test_gold_accuracy_is_the_share_correct_with_the_mean_tau_of_rankings() -> None:
    accuracy = gold_accuracy(
        [GoldCheck(True), GoldCheck(False), GoldCheck(True, 1.0), GoldCheck(False, 0.0)]
    )
    assert (accuracy.correct, accuracy.total) == (2, 4)
    assert accuracy.accuracy == 0.5
    assert accuracy.mean_tau == 0.5
    assert gold_accuracy([]).accuracy is None and gold_accuracy([]).mean_tau is None
    assert (GoldAccuracy(1, 2) + GoldAccuracy(3, 4)).accuracy == pytest.approx(4 / 6)


# --- agreement ----------------------------------------------------------------------------------


def test_alpha_matches_krippendorffs_published_example() -> None:
    units = units_from_matrix(KRIPPENDORFF_2011)
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)


def test_nominal_alpha_on_a_tiny_matrix_matches_a_hand_calculation() -> None:
    # Coincidences: o11 = 2, o22 = 2, o12 = o21 = 1; n1 = n2 = 3, n = 6.
    # D_o = 2/6, D_e = 2 * 3 * 3 / (6 * 5) = 0.6, alpha = 1 - (1/3) / 0.6 = 4/9.
    units = {1: {10: "a", 11: "a"}, 2: {10: "b", 11: "b"}, 3: {10: "a", 11: "b"}}
    assert krippendorff_alpha(units, "nominal") == pytest.approx(4 / 9)


def test_items_answered_once_do_not_change_alpha() -> None:
    units = {1: {10: "a", 11: "a"}, 2: {10: "b", 11: "b"}, 3: {10: "a", 11: "b"}}
    with_singles = {**units, 4: {10: "b"}, 5: {12: "a"}}
    assert krippendorff_alpha(with_singles, "nominal") == krippendorff_alpha(units, "nominal")


def test_alpha_needs_two_pairable_items_and_two_values() -> None:
    assert krippendorff_alpha({1: {10: 1, 11: 2}, 2: {10: 3}}, "ordinal") is None
    assert krippendorff_alpha({1: {10: 1, 11: 1}, 2: {10: 1, 11: 1}}, "ordinal") is None
    assert krippendorff_alpha({}, "nominal") is None


def test_pairwise_agreement_is_the_share_of_agreeing_annotator_pairs() -> None:
    # item 1: one agreeing pair; item 2: of three pairs only (10, 11) agrees.
    units = {1: {10: "a", 11: "a"}, 2: {10: "a", 11: "a", 12: "b"}, 3: {10: "c"}}
    assert pairwise_agreement(units) == pytest.approx(2 / 4)
    assert pairwise_agreement({1: {10: 1, 11: 1}, 2: {10: 1, 11: 1}}) == 1.0
    assert pairwise_agreement({1: {10: "a", 11: "a"}}) is None


def test_mean_pairwise_tau_averages_every_pair_of_rankings() -> None:
    orders = {1: {10: [1, 2, 3], 11: [1, 3, 2]}, 2: {10: [4, 5], 11: [5, 4]}}
    assert mean_pairwise_tau(orders) == pytest.approx((1 / 3 - 1) / 2)
    assert mean_pairwise_tau({1: {10: [1, 2], 11: [1, 2]}}) is None


def test_flag_agreement_is_reported_per_option() -> None:
    values = {
        1: {10: {"flags": ["unsafe"]}, 11: {"flags": ["unsafe"]}},
        2: {10: {"flags": []}, 11: {"flags": ["off topic"]}},
    }
    rows = question_agreement("flags", "flags", FLAGS, values, {})
    assert [row.name for row in rows] == [
        "flags: unsafe",
        "flags: factual error",
        "flags: off topic",
    ]
    unsafe, factual, off_topic = rows
    assert unsafe.pairwise == 1.0 and unsafe.items == 2 and unsafe.labels == 4
    assert factual.alpha is None  # nobody ticked it: a single value
    assert off_topic.pairwise == 0.5


def test_preference_agreement_codes_the_winner_by_position() -> None:
    first, second = [17, 12], [30, 31]
    values = {
        1: {10: {"outcome": "win", "winner": 17}, 11: {"outcome": "win", "winner": 17}},
        2: {10: {"outcome": "win", "winner": 30}, 11: {"outcome": "win", "winner": 30}},
        3: {10: {"outcome": "tie", "winner": None}, 11: {"outcome": "win", "winner": 12}},
    }
    orders = {1: first, 2: second, 3: first}
    (row,) = question_agreement("preference", "preference", {}, values, orders)
    # left, left | left, left | tie, right: o(left,left) = 4, o(tie,right) = o(right,tie) = 1.
    # n = 6 (left 4, tie 1, right 1); D_o = 2/6; D_e = (2*4*1 + 2*4*1 + 2*1*1) / 30 = 18/30.
    assert row.level == "nominal"
    assert row.alpha == pytest.approx(1 - (2 / 6) / (18 / 30))
    assert row.pairwise == pytest.approx(2 / 3)


def test_ranking_agreement_reports_top_choice_agreement_and_mean_tau() -> None:
    values = {
        1: {10: {"order": [1, 2, 3]}, 11: {"order": [1, 3, 2]}},
        2: {10: {"order": [4, 5, 6]}, 11: {"order": [6, 5, 4]}},
    }
    (row,) = question_agreement("ranking", "ranking", {}, values, {1: [1, 2, 3], 2: [4, 5, 6]})
    assert row.level == "ranking"
    assert row.pairwise == 0.5
    assert row.mean_tau == pytest.approx((1 / 3 - 1) / 2)


def test_free_text_questions_have_no_agreement() -> None:
    values = {1: {10: {"text": "a"}, 11: {"text": "a"}}}
    assert question_agreement("rationale", "text", {}, values, {}) == []


# --- consensus ----------------------------------------------------------------------------------


def test_majority_reports_every_value_of_a_tie() -> None:
    assert majority([1, 1, 2, 2, 3]) == Majority((1, 2), 2, 5)
    assert majority([1, 1, 2, 2, 3]).tied  # type: ignore[union-attr]
    clear = majority(["tie", "left", "left"])
    assert clear == Majority(("left",), 2, 3) and not clear.tied
    assert clear.share == pytest.approx(2 / 3)
    assert majority([]) is None


def test_likert_consensus_gives_mean_and_median() -> None:
    summary = likert_summary([1, 2, 2, 5])
    assert summary is not None
    assert (summary.mean, summary.median, summary.count) == (2.5, 2.0, 4)
    assert likert_summary([]) is None


def test_bradley_terry_favours_the_response_that_wins_more_votes() -> None:
    a = bradley_terry(["left", "left", "right"]).p_a
    b = bradley_terry(["left", "right", "right"]).p_a
    assert a is not None and b is not None
    assert 0.5 < a < 1 and 0 < b < 0.5
    assert a == pytest.approx(1 - b)


def test_bradley_terry_counts_a_tie_as_half_a_win_each_way() -> None:
    assert bradley_terry(["tie", "tie"]).p_a == pytest.approx(0.5)
    assert bradley_terry(["left", "right"]).p_a == pytest.approx(0.5)
    with_tie = bradley_terry(["left", "tie"]).p_a
    alone = bradley_terry(["left"]).p_a
    assert with_tie is not None and alone is not None
    assert 0.5 < with_tie < alone


def test_both_bad_votes_are_counted_apart_and_do_not_move_the_estimate() -> None:
    estimate = bradley_terry(["left", "both_bad", "both_bad"])
    assert (estimate.a_wins, estimate.b_wins, estimate.ties, estimate.both_bad) == (1, 0, 0, 2)
    assert estimate.p_a == bradley_terry(["left"]).p_a
    assert bradley_terry(["both_bad"]).p_a is None
    assert bradley_terry([]).p_a is None


def test_a_pair_item_consensus_is_given_for_the_left_response() -> None:
    values = [
        {"outcome": "win", "winner": 12, "strength": 1},
        {"outcome": "win", "winner": 12, "strength": 3},
        {"outcome": "tie", "winner": None, "strength": 0},
    ]
    consensus = question_consensus("preference", "preference", {}, values, PAIR)
    assert consensus.majority == Majority(("right",), 2, 3)
    assert consensus.majority_text == "B"
    assert consensus.pair is not None and consensus.pair.p_a is not None
    assert consensus.pair.p_a < 0.5


def test_ranking_consensus_gives_each_responses_mean_place() -> None:
    assert mean_positions([[1, 2, 3], [2, 1, 3]]) == [(1, 1.5), (2, 1.5), (3, 3.0)]
    consensus = question_consensus(
        "ranking", "ranking", {}, [{"order": [3, 1, 2]}, {"order": [3, 2, 1]}], [1, 2, 3]
    )
    assert consensus.positions == [("C", 1.0), ("A", 2.5), ("B", 2.5)]
    assert consensus.majority_text == "response C first"


def test_flag_consensus_counts_each_option_and_the_most_common_set() -> None:
    values = [{"flags": ["unsafe"]}, {"flags": ["unsafe", "off topic"]}, {"flags": ["unsafe"]}]
    consensus = question_consensus("flags", "flags", FLAGS, values, [])
    assert consensus.flag_counts == [("unsafe", 3), ("factual error", 0), ("off topic", 1)]
    assert consensus.majority_text == "unsafe"


def test_likert_item_consensus_has_a_tied_majority_mean_and_median() -> None:
    values = [{"score": 2}, {"score": 4}]
    consensus = question_consensus("helpfulness", "likert", {}, values, [])
    assert consensus.majority is not None and consensus.majority.tied
    assert consensus.majority_text == "2 / 4"
    assert consensus.likert is not None and consensus.likert.mean == 3.0


def test_agreement_with_others_compares_each_answer_to_the_others_majority() -> None:
    units = {
        1: {10: 1, 11: 1, 12: 1},  # everyone agrees
        2: {10: 1, 11: 2, 12: 2},  # 10 disagrees with 2/2; 11 and 12 face a 1/2 tie
    }
    result = agreement_with_others([units])
    assert (result[10].correct, result[10].total) == (1, 2)
    assert (result[11].correct, result[11].total) == (1, 1)
    assert (result[12].correct, result[12].total) == (1, 1)


# --- time ---------------------------------------------------------------------------------------


def at(seconds: float) -> datetime:
    return datetime(2026, 1, 5, 9, 0) + timedelta(seconds=seconds)


def test_wall_time_joins_items_of_one_session_and_leaves_out_long_pauses() -> None:
    intervals = [
        (at(0), at(60)),
        (at(120), at(180)),  # a minute later: same session, 0..180
        (at(150), at(170)),  # overlapping: counted once
        (at(7200), at(7230)),  # two hours later: a new session of 30 s
    ]
    assert wall_seconds(intervals) == 210
    assert wall_seconds(intervals, gap=timedelta(seconds=30)) == 60 + 60 + 30
    assert wall_seconds([]) == 0


def test_rates_per_hour_need_some_time() -> None:
    assert per_hour(2, 90) == 80
    assert per_hour(3, 0) is None
