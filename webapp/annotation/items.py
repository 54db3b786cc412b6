"""Turning a prompt's responses into the items annotators see, per the project's task type.

The order of an item's responses is drawn here, once, and stored (`ItemResponse.position`): a
pair's left/right order is random so that position never tells which model wrote what. The
rules live here alone; the uploader and the generation jobs call them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from django.db import transaction

from webapp.annotation.models import (
    Item,
    ItemResponse,
    ModelVersion,
    Project,
    Prompt,
    Response,
)
from webapp.annotation.questions import TaskType

BATCH = 2000  # rows per INSERT of a bulk creation
_system_random = random.SystemRandom()

# (prompt, the item's responses, gold?) for each item to create
ItemPlan = tuple[Prompt, Sequence[Response], bool]


def item_groups(
    project: Project, responses: Sequence[Response], rng: random.Random | None = None
) -> list[list[Response]]:
    """The responses of each item a prompt's responses make for the project's task type.

    rating, rewrite: one item per response. pairwise: disjoint pairs of the responses in a
    random order (a last odd one is left out). ranking: K-sets of `project.ranking_size` (a
    last smaller group of at least two makes a smaller set). prompt_writing: none.
    """
    task = project.task_type
    if task in (TaskType.RATING, TaskType.REWRITE):
        return [[response] for response in responses]
    if task not in (TaskType.PAIRWISE, TaskType.RANKING):
        return []
    size = 2 if task == TaskType.PAIRWISE else project.ranking_size
    minimum = 2 if task == TaskType.RANKING else size
    shuffled = list(responses)
    (rng or _system_random).shuffle(shuffled)
    groups = [shuffled[i : i + size] for i in range(0, len(shuffled), size)]
    return [group for group in groups if len(group) >= minimum]


def newest_version(responses: Sequence[Response]) -> ModelVersion | None:
    versions = [r.model_version for r in responses if r.model_version is not None]
    return max(versions, key=lambda v: (v.created_at, v.pk)) if versions else None


@transaction.atomic
def create_items_in_bulk(
    project: Project,
    plan: Sequence[ItemPlan],
    *,
    shuffle: bool = True,
    rng: random.Random | None = None,
) -> list[Item]:
    """One item per plan entry, in a few queries (an upload of 10,000 prompts takes seconds):
    each item's response order is drawn at random (unless `shuffle` is False) and stored."""
    rng = rng or _system_random
    for prompt, responses, _ in plan:
        if not responses:
            raise ValueError("An item needs at least one response.")
        if any(response.prompt_id != prompt.pk for response in responses):
            raise ValueError("Every response of an item must answer its prompt.")
    newest = [newest_version(responses) for _, responses, _ in plan]
    items = Item.objects.bulk_create(
        (
            Item(
                project=project,
                prompt=prompt,
                is_gold=is_gold,
                model_version=version,
                version_rank=version.pk if version is not None else 0,
            )
            for (prompt, _, is_gold), version in zip(plan, newest, strict=True)
        ),
        batch_size=BATCH,
    )
    ItemResponse.objects.bulk_create(
        (
            ItemResponse(item=item, response=response, position=position)
            for item, (_, responses, _) in zip(items, plan, strict=True)
            for position, response in enumerate(
                rng.sample(list(responses), len(responses)) if shuffle else responses
            )
        ),
        batch_size=BATCH,
    )
    return items


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
    plan = [(prompt, responses, is_gold)]
    return create_items_in_bulk(project, plan, shuffle=shuffle, rng=rng)[0]


def create_items(
    project: Project,
    prompt: Prompt,
    responses: Sequence[Response],
    *,
    is_gold: bool = False,
    rng: random.Random | None = None,
) -> list[Item]:
    """The items a prompt's responses make for the project's task type (`item_groups`)."""
    groups = item_groups(project, responses, rng)
    plan = [(prompt, group, is_gold) for group in groups]
    return create_items_in_bulk(project, plan, rng=rng)
