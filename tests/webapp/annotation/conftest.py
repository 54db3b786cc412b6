"""Factories for annotation tests: projects with their default questions, prompts, responses,
items, model versions. The personas (annotator, second_annotator, researcher, admin_user,
outsider) come from tests/conftest.py."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from webapp.accounts.models import User
from webapp.annotation.items import create_items
from webapp.annotation.models import (
    Item,
    Membership,
    ModelVersion,
    Project,
    Prompt,
    PromptSource,
    Response,
)
from webapp.annotation.projects import create_project
from webapp.annotation.questions import TaskType

MakeProject = Callable[..., Project]
AddItems = Callable[..., list[Item]]


@pytest.fixture
def make_project(db: None) -> MakeProject:
    """make_project(task_type, members=[users], name=..., **Project fields) with the task
    type's default questions."""
    counter = iter(range(1, 10_000))

    def make(
        task_type: str = TaskType.RATING,
        members: Iterable[User] = (),
        **fields: Any,
    ) -> Project:
        number = next(counter)
        fields.setdefault("name", f"{task_type} project {number}")
        fields.setdefault("slug", f"{task_type.replace('_', '-')}-{number}")
        project = create_project(Project(task_type=task_type, **fields), created_by=None)
        for user in members:
            Membership.objects.create(project=project, user=user)
        return project

    return make


@pytest.fixture
def add_items(db: None) -> AddItems:
    """add_items(project, prompts=3, responses=2, version=None, gold=False, seed=0): prompts
    with `responses` responses each, made into the project's items."""

    def add(
        project: Project,
        prompts: int = 3,
        responses: int = 2,
        *,
        version: ModelVersion | None = None,
        gold: bool = False,
        seed: int = 0,
    ) -> list[Item]:
        rng = random.Random(seed)
        start = Prompt.objects.filter(project=project).count()
        items: list[Item] = []
        for number in range(start, start + prompts):
            prompt = Prompt.objects.create(
                project=project,
                text=f"Prompt {number}: explain item {number}.",
                source=PromptSource.SEED,
            )
            answers = [
                Response.objects.create(
                    prompt=prompt, text=f"Answer {k} to prompt {number}.", model_version=version
                )
                for k in range(responses)
            ]
            items += create_items(project, prompt, answers, is_gold=gold, rng=rng)
        return items

    return add


@pytest.fixture
def make_version(db: None) -> Callable[..., ModelVersion]:
    def make(name: str, parent: ModelVersion | None = None) -> ModelVersion:
        return ModelVersion.objects.create(name=name, parent=parent)

    return make
