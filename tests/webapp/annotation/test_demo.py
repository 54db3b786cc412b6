"""The demo projects of the embedded default."""

from __future__ import annotations

import pytest

from tests.conftest import MakeUser
from webapp.accounts.models import Role, User
from webapp.annotation import queue
from webapp.annotation.demo import (
    DEMO_PROJECTS,
    GOLD_PROMPTS,
    demo_data,
    dialogue_prompts,
    seed_demo_projects,
)
from webapp.annotation.models import (
    GoldAnswer,
    Item,
    ItemResponse,
    Membership,
    Project,
    Prompt,
    Question,
    Response,
)
from webapp.annotation.questions import TaskType

pytestmark = pytest.mark.usefixtures("postgres")
TABLES = (Project, Question, Prompt, Response, Item, ItemResponse, GoldAnswer, Membership)


def snapshot() -> dict[str, list[int]]:
    return {model.__name__: sorted(model.objects.values_list("pk", flat=True)) for model in TABLES}


def test_seeding_twice_gives_the_same_rows(annotator: User, admin_user: User) -> None:
    seed_demo_projects()
    first = snapshot()
    seed_demo_projects()
    assert snapshot() == first
    assert len(first["Project"]) == len(DEMO_PROJECTS)


def test_each_task_type_has_a_project_with_prompts_items_and_gold(admin_user: User) -> None:
    projects = {p.task_type: p for p in seed_demo_projects()}
    assert set(projects) == set(TaskType.values)
    prompts = len(demo_data()["prompts"])
    assert prompts >= 30
    for task, project in projects.items():
        items = Item.objects.filter(project=project)
        if task == TaskType.PROMPT_WRITING:
            assert not items.exists()
            assert "Write prompts that a real person would send" in project.guidelines
            continue
        assert project.guidelines.startswith("# ")
        answered_by_model = len(dialogue_prompts()) if task == TaskType.PAIRWISE else 0
        assert Prompt.objects.filter(project=project).count() == prompts + answered_by_model
        assert items.filter(is_gold=True).exists()
        assert GoldAnswer.objects.filter(item__project=project).exists()
        assert items.filter(is_gold=False).count() >= prompts - GOLD_PROMPTS
    rating = projects[TaskType.RATING]
    assert set(rating.questions.filter(kind="likert").values_list("key", flat=True)) == {
        "helpfulness",
        "correctness",
    }
    preference = projects[TaskType.PAIRWISE].questions.get(key="preference").config
    assert preference == {"allow_tie": True, "allow_both_bad": True, "max_strength": 3}
    ranking_sizes = {
        item.placements.count() for item in Item.objects.filter(project=projects[TaskType.RANKING])
    }
    assert ranking_sizes == {4}


def test_demo_data_has_markdown_and_code(admin_user: User) -> None:
    texts = [r for entry in demo_data()["prompts"] for r in entry["responses"]]
    assert any("```" in text for text in texts)
    assert any("**" in text for text in texts)
    assert all(len(entry["responses"]) == 4 for entry in demo_data()["prompts"])


def test_every_annotator_and_admin_becomes_a_member_also_when_created_later(
    make_user: MakeUser, annotator: User, researcher: User, admin_user: User
) -> None:
    seeded = seed_demo_projects()
    late = make_user("late", Role.ANNOTATOR)
    seed_demo_projects()
    for project in seeded:
        members = set(
            Membership.objects.filter(project=project).values_list("user__username", flat=True)
        )
        assert members == {"ann", "boss", "late"}
    assert late.memberships.count() == len(DEMO_PROJECTS)


def test_an_annotator_is_served_an_item_in_every_project_with_items(annotator: User) -> None:
    for project in seed_demo_projects():
        lease = queue.next_item(project, annotator)
        if project.task_type == TaskType.PROMPT_WRITING:
            assert lease is None
        else:
            assert lease is not None, project.slug
            assert lease.item.project == project


@pytest.mark.django_db
def test_the_pairwise_project_also_holds_prompts_in_the_demo_models_format(
    admin_user: User,
) -> None:
    pairwise = next(p for p in seed_demo_projects() if p.task_type == TaskType.PAIRWISE)
    texts = set(Prompt.objects.filter(project=pairwise).values_list("text", flat=True))
    assert set(dialogue_prompts()) <= texts and len(dialogue_prompts()) == 200
    assert all(text.startswith("**") and text.endswith("\n\n") for text in dialogue_prompts())
    seed_demo_projects()  # idempotent: nothing twice
    assert Prompt.objects.filter(project=pairwise).count() == len(texts)


def test_the_dialogue_prompts_are_those_rlhf_core_draws_for_the_demo() -> None:
    from rlhf_core.demo import demo_prompts

    assert dialogue_prompts() == demo_prompts(200, seed=2026)
