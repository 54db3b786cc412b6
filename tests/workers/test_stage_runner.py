"""The stage process's parts that a round's tests do not pin down: the judge of the evaluate
stage, fitted on the held-out labels only when they hold enough strict preferences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf_core.recipes import recipe_for_checkpoint
from rlhf_core.records import LikertRating, PairwisePreference
from tests.workers.training_fixtures import tiny_checkpoint  # noqa: F401 (fixture)
from workers.stage_channel import Channel
from workers.stage_runner import MIN_JUDGE_PREFERENCES, fit_judge


def preferences(count: int, *, ties: int = 0) -> list[PairwisePreference]:
    """`count` strict preferences for the answer about the tree, and `ties` ties."""
    strict = [
        PairwisePreference(f"Prompt {n}: explain item {n}.", f"see the tree {n}", f"a cat {n}", 2)
        for n in range(count)
    ]
    tied = [
        PairwisePreference(f"Tie {n}: explain.", f"the sun {n}", f"the moon {n}", tie=True)
        for n in range(ties)
    ]
    return strict + tied


def logs(channel: Channel) -> list[str]:
    events = [json.loads(line) for line in channel.path.read_text().splitlines()]
    return [event["message"] for event in events if event["event"] == "log"]


@pytest.fixture
def channel(tmp_path: Path) -> Channel:
    return Channel(tmp_path / "events.jsonl")


def test_fewer_held_out_preferences_than_the_minimum_give_no_judge_and_say_so(
    tiny_checkpoint: Path,  # noqa: F811
    channel: Channel,
) -> None:
    spec = {"inputs": {"parent": str(tiny_checkpoint)}}
    held = preferences(MIN_JUDGE_PREFERENCES - 1, ties=5)  # ties are no preference
    assert fit_judge(spec, held, recipe_for_checkpoint(tiny_checkpoint), channel) is None
    assert logs(channel) == [
        f"{MIN_JUDGE_PREFERENCES - 1} held-out preference(s), fewer than "
        f"{MIN_JUDGE_PREFERENCES}: no independent judge this round."
    ]


def test_held_out_ratings_alone_give_no_judge(
    tiny_checkpoint: Path,  # noqa: F811
    channel: Channel,
) -> None:
    spec = {"inputs": {"parent": str(tiny_checkpoint)}}
    held = [
        LikertRating(f"Prompt {n}.", f"answer {n}", {"helpfulness": 1 + n % 5}, (1, 5))
        for n in range(40)
    ]
    assert fit_judge(spec, held, recipe_for_checkpoint(tiny_checkpoint), channel) is None
    assert logs(channel) == ["no held-out preferences, so no independent judge."]


def test_enough_held_out_preferences_fit_a_judge_on_the_parents_backbone(
    tiny_checkpoint: Path,  # noqa: F811
    channel: Channel,
) -> None:
    spec = {"inputs": {"parent": str(tiny_checkpoint)}}
    held = preferences(MIN_JUDGE_PREFERENCES)
    judge = fit_judge(spec, held, recipe_for_checkpoint(tiny_checkpoint), channel)
    assert judge is not None
    scores = judge(["Prompt 0: explain item 0."] * 2, ["see the tree 0", "a cat 0"])
    assert scores.shape == (2,) and scores.isfinite().all()
    assert logs(channel) == [f"a judge fitted on {MIN_JUDGE_PREFERENCES} held-out preferences."]
