"""Which versions a project has, how their figures are shown, and the side-by-side gallery."""

from __future__ import annotations

import pytest

from tests.webapp.annotation.conftest import MakeProject, make_project  # noqa: F401 (fixture)
from tests.webapp.training import factories
from webapp.annotation.models import Response
from webapp.annotation.questions import TaskType
from webapp.training.models import RoundState
from webapp.training.versions import figures, gallery, project_versions

pytestmark = pytest.mark.django_db


def test_a_project_s_versions_come_from_serving_rounds_and_responses(
    make_project: MakeProject,  # noqa: F811
) -> None:
    project, other = make_project(TaskType.PAIRWISE), make_project(TaskType.PAIRWISE)
    serving, based_on, produced, sampled, foreign = (
        factories.version(name) for name in ("serving", "based-on", "produced", "sampled", "x")
    )
    project.serving_version = serving
    project.save()
    factories.training_round(project, RoundState.SUCCEEDED, base_version=based_on)
    factories.training_round(project, RoundState.SUCCEEDED, result_version=produced)
    factories.pair_item(project, sampled, sampled)
    factories.pair_item(other, foreign, foreign)
    factories.training_round(other, base_version=foreign)
    names = list(project_versions(project).values_list("name", flat=True))
    assert names == ["sampled", "produced", "based-on", "serving"]  # newest first, each once


def test_figures_flatten_nested_numbers_and_leave_out_the_rest() -> None:
    metrics = {
        "reward_accuracy": 0.7123,
        "evaluate": {"kl": 0.0312, "win_rate": {"value": 0.61}},
        "note": "text",
        "ok": True,
        "curve": [1, 2],
        "samples": 60,
    }
    assert figures(metrics, "round.") == {
        "round.reward_accuracy": "0.712",
        "round.evaluate.kl": "0.0312",
        "round.evaluate.win_rate.value": "0.61",
        "round.samples": "60",
    }


def test_the_gallery_pairs_the_first_response_of_each_version_on_shared_prompts(
    make_project: MakeProject,  # noqa: F811
) -> None:
    project = make_project(TaskType.PAIRWISE)
    a, b, c = (factories.version(name) for name in "abc")
    shared = factories.prompt(project, "shared")
    first_a = Response.objects.create(prompt=shared, text="a first", model_version=a)
    Response.objects.create(prompt=shared, text="a second", model_version=a)
    first_b = Response.objects.create(prompt=shared, text="b first", model_version=b)
    only_a = factories.prompt(project, "only a")
    Response.objects.create(prompt=only_a, text="a alone", model_version=a)
    Response.objects.create(prompt=only_a, text="c", model_version=c)
    rows = gallery(project, a, b)
    assert [(row.prompt, row.a, row.b) for row in rows] == [(shared, first_a, first_b)]
    assert len(gallery(project, a, b, size=0)) == 0


def test_key_figures_pick_the_evaluation_s_main_numbers_with_the_win_rate_intervals() -> None:
    from webapp.annotation.models import ModelVersion
    from webapp.training.versions import key_figures

    version = ModelVersion(
        name="v",
        metrics={
            "judge_win_rate": 0.6,
            "judge_win_rate_low": 0.45,
            "judge_win_rate_high": 0.73,
            "proxy_win_rate": 0.75,
            "proxy_win_rate_low": 0.6,
            "proxy_win_rate_high": 0.86,
            "kl": 2.5,
            "held_out": {"pairwise_accuracy": 0.7, "loss": 0.6},
            "prompts": 12,
        },
    )
    assert key_figures(version) == {
        "judge win rate vs parent (held out)": "0.6 (0.45 to 0.73)",
        "reward-model win rate vs parent": "0.75 (0.6 to 0.86)",
        "reward-model accuracy (held out)": "0.7",
        "KL to parent": "2.5",
    }
