"""Reading the model registry for the pages: a project's versions, their figures, and a gallery
of two versions' responses to the same prompts.

A model version belongs to no single project; a project's versions are those it serves, that
its rounds started from or produced, and those whose responses are among its prompts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import Q, QuerySet

from webapp.annotation.models import ModelVersion, Project, Prompt, Response
from webapp.training.charts import number
from webapp.training.models import TrainingRound

GALLERY_SIZE = 6


def project_versions(project: Project) -> QuerySet[ModelVersion]:
    """The project's versions, newest first. Each source is its own IN subquery, so that no
    join multiplies responses by rounds."""
    rounds = TrainingRound.objects.filter(project=project)
    belongs = (
        Q(pk=project.serving_version_id)
        | Q(pk__in=rounds.values("result_version"))
        | Q(pk__in=rounds.values("base_version"))
        | Q(pk__in=Response.objects.filter(prompt__project=project).values("model_version"))
    )
    return ModelVersion.objects.filter(belongs).select_related("parent")


def producing_rounds(versions: list[ModelVersion]) -> dict[int, TrainingRound]:
    """Version id -> the round that registered it, for those a round registered."""
    rounds = TrainingRound.objects.filter(result_version__in=versions).select_related(
        "label_snapshot"
    )
    return {r.result_version_id: r for r in rounds if r.result_version_id is not None}


def figures(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The numeric entries of a metrics or summary object, nested objects flattened with dots,
    each formatted; anything else (text, lists) is left to the raw JSON."""
    flat: dict[str, str] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= figures(value, f"{name}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = number(float(value))
    return flat


def version_figures(version: ModelVersion, produced_by: TrainingRound | None) -> dict[str, str]:
    """The version's own metrics, then its round's summary figures under `round.`."""
    shown = figures(version.metrics)
    if produced_by is not None:
        shown |= figures(produced_by.summary, "round.")
    return shown


# The figures a leaderboard row shows beside the human rating (label, key in the flattened
# metrics); the versions page lists them all.
# The judge is a reward model fitted on held-out labels only, which the round never optimised;
# the proxy is the round's own reward model, which its policy did optimise (evaluate stage).
KEY_FIGURES = (
    ("judge win rate vs parent (held out)", "judge_win_rate"),
    ("reward-model win rate vs parent", "proxy_win_rate"),
    ("reward-model accuracy (held out)", "held_out.pairwise_accuracy"),
    ("KL to parent", "kl"),
    ("validation loss", "pretrain.val_loss"),
)


def key_figures(version: ModelVersion) -> dict[str, str]:
    """The few figures worth reading at a glance; win rates with their 95% intervals."""
    flat = figures(version.metrics)
    shown = {label: flat[key] for label, key in KEY_FIGURES if key in flat}
    for label, key in KEY_FIGURES[:2]:
        if label in shown and f"{key}_low" in flat and f"{key}_high" in flat:
            shown[label] += f" ({flat[f'{key}_low']} to {flat[f'{key}_high']})"
    return shown


@dataclass(frozen=True)
class GalleryRow:
    prompt: Prompt
    a: Response
    b: Response


def gallery(
    project: Project, a: ModelVersion, b: ModelVersion, size: int = GALLERY_SIZE
) -> list[GalleryRow]:
    """The newest prompts of the project that both versions answered, with one response of
    each (the first sampled)."""
    prompts = list(
        Prompt.objects.filter(project=project, responses__model_version=a)
        .filter(responses__model_version=b)
        .distinct()
        .order_by("-id")[:size]
    )
    firsts: dict[tuple[int, int | None], Response] = {}
    for response in Response.objects.filter(prompt__in=prompts, model_version__in=[a, b]):
        firsts.setdefault((response.prompt_id, response.model_version_id), response)
    return [GalleryRow(p, firsts[p.pk, a.pk], firsts[p.pk, b.pk]) for p in prompts]
