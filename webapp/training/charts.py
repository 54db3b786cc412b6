"""A round's metric curves as inline SVG: one small line chart per (stage, metric key).

Plain geometry over plain values, so the round page needs no JavaScript library (nothing can be
downloaded at run time) and the charts update with the htmx fragment that carries them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

WIDTH, HEIGHT = 280, 120
# The plot area inside the view box; the margins hold the axis labels.
LEFT, RIGHT, TOP, BOTTOM = 46, WIDTH - 8, 10, HEIGHT - 22
FRAME = {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": RIGHT, "top": TOP}
FRAME |= {"bottom": BOTTOM, "label_x": LEFT - 5, "step_y": BOTTOM + 16, "high_y": TOP + 4}
# A long stage is thinned to this many points (evenly spaced, the last one always kept).
MAX_POINTS = 240
# Metrics people look for first, in this order; others follow by name.
FIRST_KEYS = ("loss", "reward", "score", "kl", "accuracy")
# The curves a round's page shows at once (loss, reward, KL, accuracy, win rate); the rest
# (learning rate, gradient norm, timings, ...) behind a link.
PRIMARY_KEYS = frozenset(
    {"loss", "val_loss", "score", "reward", "kl", "judge_win_rate", "proxy_win_rate"}
)
# Counters, not curves.
SKIPPED_KEYS = frozenset({"step", "epoch"})


@dataclass(frozen=True)
class Chart:
    stage: str
    key: str
    points: str  # the polyline's "x,y x,y ..."
    dot: tuple[float, float]  # the latest point
    first_step: int
    last_step: int
    low: str  # the y axis' ends, formatted
    high: str
    latest: str
    count: int  # logged steps (before thinning)

    @property
    def primary(self) -> bool:
        return self.key in PRIMARY_KEYS or self.key.endswith("accuracy")

    @property
    def title(self) -> str:
        return f"{self.key} ({self.stage})"


def number(value: float) -> str:
    """Three significant digits, without an exponent for everyday magnitudes."""
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return f"{value:.2e}"


def metric_charts(
    rows: Iterable[tuple[str, int, Mapping[str, Any]]], stage_order: Sequence[str] = ()
) -> list[Chart]:
    """Charts from (stage, step, values) rows: every numeric key of every stage, stages in
    `stage_order` first, then any other stage by name. Non-numeric and non-finite values are
    left out of the curves."""
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for stage, step, values in rows:
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if key in SKIPPED_KEYS:
                continue
            if math.isfinite(value):
                series[stage, key].append((step, float(value)))
    order = {stage: i for i, stage in enumerate(stage_order)}
    return [
        _chart(stage, key, sorted(points))
        for (stage, key), points in sorted(
            series.items(), key=lambda entry: _sort_key(entry[0], order)
        )
    ]


def _sort_key(series: tuple[str, str], order: Mapping[str, int]) -> tuple[int, str, int, str]:
    stage, key = series
    first = next((i for i, name in enumerate(FIRST_KEYS) if name in key), len(FIRST_KEYS))
    return order.get(stage, len(order)), stage, first, key


def _chart(stage: str, key: str, points: list[tuple[int, float]]) -> Chart:
    shown = _thin(points)
    steps = [step for step, _ in shown]
    values = [value for _, value in shown]
    low, high = min(values), max(values)
    if high == low:  # a flat line sits in the middle
        pad = abs(low) / 2 or 0.5
        low, high = low - pad, high + pad
    first, last = steps[0], steps[-1]

    def x(step: int) -> float:
        share = (step - first) / (last - first) if last > first else 0.5
        return round(LEFT + share * (RIGHT - LEFT), 1)

    def y(value: float) -> float:
        return round(BOTTOM - (value - low) / (high - low) * (BOTTOM - TOP), 1)

    coords = [(x(step), y(value)) for step, value in shown]
    return Chart(
        stage=stage,
        key=key,
        points=" ".join(f"{cx},{cy}" for cx, cy in coords),
        dot=coords[-1],
        first_step=first,
        last_step=last,
        low=number(low),
        high=number(high),
        latest=number(points[-1][1]),
        count=len(points),
    )


def _thin(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = (len(points) - 1) / (MAX_POINTS - 1)
    return [points[round(i * stride)] for i in range(MAX_POINTS)]
