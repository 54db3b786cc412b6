"""The round page's inline SVG charts: which series, in which order, and where the points sit."""

from __future__ import annotations

import math

from webapp.training.charts import BOTTOM, LEFT, MAX_POINTS, RIGHT, TOP, metric_charts, number


def coords(points: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (pair.split(",") for pair in points.split())]


def test_one_chart_per_stage_and_metric_in_the_plan_s_order_loss_first() -> None:
    rows = [
        ("ppo", 1, {"kl": 0.1, "score": 0.2, "loss": 1.0}),
        ("reward", 1, {"accuracy": 0.5, "loss": 0.7}),
        ("ppo", 2, {"kl": 0.2, "score": 0.3, "loss": 0.8}),
        ("zeta", 1, {"a_figure": 1}),
    ]
    charts = metric_charts(rows, ["labels", "reward", "ppo"])
    assert [chart.title for chart in charts] == [
        "loss (reward)",
        "accuracy (reward)",
        "loss (ppo)",
        "score (ppo)",
        "kl (ppo)",
        "a_figure (zeta)",  # a stage outside the plan comes last
    ]


def test_points_span_the_plot_area_from_the_first_to_the_last_step() -> None:
    rows = [("sft", step, {"loss": value}) for step, value in [(3, 2.0), (1, 4.0), (5, 1.0)]]
    (chart,) = metric_charts(rows)
    assert coords(chart.points) == [
        (LEFT, TOP),
        (LEFT + (RIGHT - LEFT) / 2, round(BOTTOM - (BOTTOM - TOP) / 3, 1)),
        (RIGHT, BOTTOM),
    ]
    assert chart.dot == (RIGHT, BOTTOM)
    assert (chart.first_step, chart.last_step, chart.count) == (1, 5, 3)
    assert (chart.low, chart.high, chart.latest) == ("1", "4", "1")


def test_non_numeric_and_non_finite_values_are_left_out() -> None:
    rows = [
        ("dpo", 1, {"loss": 1.0, "note": "warm-up", "clipped": True, "grad": math.nan}),
        ("dpo", 2, {"loss": 0.5, "grad": math.inf}),
    ]
    assert [chart.key for chart in metric_charts(rows)] == ["loss"]


def test_a_flat_series_is_drawn_across_the_middle() -> None:
    (chart,) = metric_charts([("ppo", step, {"kl": 0.0}) for step in range(4)])
    assert {y for _, y in coords(chart.points)} == {(TOP + BOTTOM) / 2}
    (single,) = metric_charts([("ppo", 7, {"kl": 2.0})])
    assert coords(single.points) == [((LEFT + RIGHT) / 2, (TOP + BOTTOM) / 2)]


def test_a_long_stage_is_thinned_and_keeps_its_last_point() -> None:
    rows = [("pretrain", step, {"loss": 10 - step / 1000}) for step in range(5000)]
    (chart,) = metric_charts(rows)
    assert len(chart.points.split()) == MAX_POINTS and chart.count == 5000
    assert chart.last_step == 4999 and chart.dot == (RIGHT, BOTTOM)


def test_numbers_are_short() -> None:
    assert [number(v) for v in (0, 0.123456, 12.345, 1234.5, 0.00001234, 3e7)] == [
        "0",
        "0.123",
        "12.3",
        "1234",
        "1.23e-05",
        "3.00e+07",
    ]


def test_the_main_curves_are_primary_and_counters_are_not_charted() -> None:
    rows = [
        ("reward", 1, {"loss": 1.0, "val_pairwise_accuracy": 0.6, "lr": 1e-3, "step": 1}),
        ("ppo", 1, {"kl": 0.1, "score": 0.2, "grad_norm": 2.0, "epoch": 0}),
    ]
    charts = {chart.title: chart.primary for chart in metric_charts(rows)}
    assert charts == {
        "loss (reward)": True,
        "val_pairwise_accuracy (reward)": True,
        "lr (reward)": False,
        "score (ppo)": True,
        "kl (ppo)": True,
        "grad_norm (ppo)": False,
    }
