"""Turning a prompt's responses into the items annotators see, per the project's task type.

The order of an item's responses is drawn here, once, and stored (`ItemResponse.position`): a
pair's left/right order is random so that position never tells which model wrote what.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from django.db import transaction

from webapp.annotation.models import Item, ItemResponse, Project, Prompt, Response
from webapp.annotation.questions import TaskType

_system_random = random.SystemRandom()


@transaction.atomic
def create_item(
    project: Project,
    prompt: Prompt,
    responses: Sequence[Response],
    *,
    is_gold: bool = False,
    shuffle: bool = True,
    rng: random.Random | None = None,
) -> Item:
    """One item showing `responses` (in a random order unless `shuffle` is False)."""
    if not responses:
        raise ValueError("An item needs at least one response.")
    if any(response.prompt_id != prompt.pk for response in responses):
        raise ValueError("Every response of an item must answer its prompt.")
    ordered = list(responses)
    if shuffle:
        (rng or _system_random).shuffle(ordered)
    versions = [r.model_version for r in ordered if r.model_version is not None]
    newest = max(versions, key=lambda v: (v.created_at, v.pk)) if versions else None
    item = Item.objects.create(
        project=project, prompt=prompt, is_gold=is_gold, model_version=newest
    )
    ItemResponse.objects.bulk_create(
        ItemResponse(item=item, response=response, position=position)
        for position, response in enumerate(ordered)
    )
    return item


@transaction.atomic
def create_items(
    project: Project,
    prompt: Prompt,
    responses: Sequence[Response],
    *,
    is_gold: bool = False,
    rng: random.Random | None = None,
) -> list[Item]:
    """The items a prompt's responses make for the project's task type.

    rating, rewrite: one item per response. pairwise: disjoint pairs of the responses in a
    random order (a last odd one is left out). ranking: K-sets of `project.ranking_size` (a
    last smaller group of at least two makes a smaller set). prompt_writing: none.
    """
    rng = rng or _system_random
    task = project.task_type
    if task in (TaskType.RATING, TaskType.REWRITE):
        return [create_item(project, prompt, [r], is_gold=is_gold) for r in responses]
    size = 2 if task == TaskType.PAIRWISE else project.ranking_size
    if task not in (TaskType.PAIRWISE, TaskType.RANKING):
        return []
    shuffled = list(responses)
    rng.shuffle(shuffled)
    groups = [shuffled[i : i + size] for i in range(0, len(shuffled), size)]
    minimum = 2 if task == TaskType.RANKING else size
    return [
        create_item(project, prompt, group, is_gold=is_gold, rng=rng)
        for group in groups
        if len(group) >= minimum
    ]
