"""Rows for the training pages' tests: model versions, blind pairs of two versions' responses,
votes on them, and rounds in any state. Plain functions (not a conftest), so that the round and
registry tests keep their own fixtures."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from webapp.accounts.models import User
from webapp.annotation.models import (
    Item,
    ItemResponse,
    Label,
    ModelVersion,
    Project,
    Prompt,
    PromptSource,
    Question,
    Response,
    Submission,
)
from webapp.training.models import RoundKind, RoundState, TrainingRound
from webapp.training.presets import build_config


def version(name: str, parent: ModelVersion | None = None, **fields: Any) -> ModelVersion:
    fields.setdefault("checkpoint_dir", f"versions/{name}")
    return ModelVersion.objects.create(name=name, parent=parent, **fields)


def prompt(project: Project, text: str) -> Prompt:
    return Prompt.objects.create(project=project, text=text, source=PromptSource.SEED)


def pair_item(
    project: Project, first: ModelVersion | None, second: ModelVersion | None, text: str = ""
) -> Item:
    """A blind pair on a new prompt: a response of `first` on the left, of `second` right."""
    number = Prompt.objects.filter(project=project).count()
    asked = prompt(project, text or f"Prompt {number} of {project.slug}")
    item = Item.objects.create(project=project, prompt=asked)
    for position, source in enumerate((first, second)):
        name = source.name if source else "a person"
        response = Response.objects.create(
            prompt=asked, text=f"{name} answers {asked.text}", model_version=source
        )
        ItemResponse.objects.create(item=item, response=response, position=position)
    return item


def vote(item: Item, annotator: User, outcome: str, *, undone: bool = False) -> Label:
    """outcome: "left" or "right" (that side won), "tie" or "both_bad"."""
    left, right = item.placements.order_by("position").values_list("response_id", flat=True)
    value: dict[str, Any] = {"outcome": outcome, "winner": None, "strength": 0}
    if outcome in ("left", "right"):
        value = {"outcome": "win", "winner": left if outcome == "left" else right, "strength": 2}
    now = timezone.now()
    gone = now if undone else None
    submission = Submission.objects.create(
        item=item, annotator=annotator, served_at=now, submitted_at=now, undone_at=gone
    )
    return Label.objects.create(
        submission=submission,
        item=item,
        annotator=annotator,
        question=Question.objects.get(project=item.project, key="preference"),
        value=value,
        undone_at=gone,
    )


def votes(
    project: Project, annotator: User, a: ModelVersion, b: ModelVersion, a_wins: int, b_wins: int
) -> None:
    """a_wins + b_wins pairs of a and b, each with one vote; a sits left and right in turn."""
    for number in range(a_wins + b_wins):
        a_left = number % 2 == 0
        item = pair_item(project, a, b) if a_left else pair_item(project, b, a)
        a_won = number < a_wins
        vote(item, annotator, "left" if a_won == a_left else "right")


def training_round(
    project: Project,
    state: str = RoundState.QUEUED,
    *,
    kind: str = RoundKind.FULL,
    minutes_ago: int = 0,
    **fields: Any,
) -> TrainingRound:
    if state == RoundState.RUNNING:
        fields.setdefault("worker", "gpu-worker-1")
        fields.setdefault("heartbeat_at", timezone.now())
    return TrainingRound.objects.create(
        project=project,
        kind=kind,
        preset="ci",
        config=build_config(kind, "ci"),
        state=state,
        created_at=timezone.now() - timedelta(minutes=minutes_ago),
        **fields,
    )
