"""Demo projects for the embedded default: one per task type, with prompts, responses, items,
a few gold items, and every annotator and admin as a member. Never called by production code.

`seed_demo_projects()` is idempotent: a second call adds only what is missing (a prompt not yet
there, a membership of a user created since), so it can run on every start.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import Q

from webapp.accounts.models import Role, User
from webapp.annotation.items import create_item, create_items
from webapp.annotation.models import (
    GoldAnswer,
    Item,
    Membership,
    Project,
    Prompt,
    PromptSource,
    Question,
    Response,
    text_digest,
)
from webapp.annotation.projects import create_project
from webapp.annotation.questions import TaskType, clean_answer

DATA = Path(__file__).parent / "demo_data" / "prompts.json"
# Prompts in the demo model's own format (a speech and the blank line after it), which the model
# answers: the pairwise demo project's items of model samples are made from these.
DIALOGUE_DATA = Path(__file__).parent / "demo_data" / "dialogue_prompts.json"
GOLD_PROMPTS = 3  # the first prompts of each project make its gold items
RATING_SCORES = (5, 4, 2, 1)  # the Likert score of a prompt's responses, best first


@dataclass(frozen=True)
class DemoProject:
    slug: str
    name: str
    task_type: TaskType
    description: str
    guidelines: str
    overlap: int = 1
    gold_share: float = 0.0
    model_prompts: bool = False  # also the dialogue prompts, for the demo model to answer


COMMON = """
## Before you start

- Read the **prompt** first, then the response(s).
- Judge what is written, not what the model might have meant.
- Flag anything unsafe, even when the rest is good.
- Keyboard: digits pick a score, `Enter` submits, `S` skips, `U` undoes, `?` lists the rest.
"""

DEMO_PROJECTS = (
    DemoProject(
        "demo-rating",
        "Demo: rate responses",
        TaskType.RATING,
        "Score single responses for helpfulness and correctness.",
        "# Rating responses\n\nGive each response two scores from 1 to 5.\n\n"
        "| Score | Helpfulness | Correctness |\n|---|---|---|\n"
        "| 5 | answers fully, well organised | no errors |\n"
        "| 3 | partly useful | minor errors |\n"
        "| 1 | useless or off topic | wrong or harmful |\n" + COMMON,
        overlap=2,
        gold_share=0.1,
    ),
    DemoProject(
        "demo-pairwise",
        "Demo: compare two responses",
        TaskType.PAIRWISE,
        "Pick the better of two responses, and say by how much.",
        "# Comparing responses\n\nPick the response you would rather receive. Use **tie** when "
        "they are equally good and **both bad** when neither is acceptable. Then grade how much "
        "better the winner is: *slightly*, *clearly* or *much*.\n\nThe order (A/B) is random: "
        "it says nothing about which model wrote what.\n" + COMMON,
        overlap=3,
        gold_share=0.1,
        model_prompts=True,
    ),
    DemoProject(
        "demo-ranking",
        "Demo: rank four responses",
        TaskType.RANKING,
        "Order four responses from best to worst.",
        "# Ranking responses\n\nPut the best response first. When two are close, prefer the "
        "one that is **correct** over the one that is merely longer.\n" + COMMON,
        overlap=2,
    ),
    DemoProject(
        "demo-rewrite",
        "Demo: rewrite responses",
        TaskType.REWRITE,
        "Improve a response until it is as good as it can be.",
        "# Rewriting responses\n\nEdit the response in place: fix errors, add what is missing, "
        "cut what is not needed. Keep the tone friendly and direct. Code must run.\n" + COMMON,
    ),
    DemoProject(
        "demo-prompts",
        "Demo: write prompts",
        TaskType.PROMPT_WRITING,
        "Write prompts that people would really ask an assistant.",
        "# Writing prompts\n\nWrite prompts that a real person would send: specific, varied, "
        "and answerable in a few paragraphs. For example:\n\n{examples}\n\nDo not include "
        "personal data about real people.",
    ),
)


@cache
def demo_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA.read_text(encoding="utf-8"))
    return data


@transaction.atomic
def seed_demo_projects() -> list[Project]:
    """Create or complete the demo projects; return them."""
    owner = User.objects.filter(Q(role=Role.ADMIN) | Q(is_superuser=True)).order_by("pk").first()
    seeded = [_seed_project(spec, owner) for spec in DEMO_PROJECTS]
    people = User.objects.filter(is_active=True).filter(
        Q(role__in=[Role.ANNOTATOR, Role.ADMIN]) | Q(is_superuser=True)
    )
    for project in seeded:
        for user in people:
            Membership.objects.get_or_create(project=project, user=user)
    return seeded


def _seed_project(spec: DemoProject, owner: User | None) -> Project:
    project = Project.objects.filter(slug=spec.slug).first()
    if project is None:
        examples = "\n".join(f"- {text}" for text in demo_data()["writing_examples"])
        project = create_project(
            Project(
                slug=spec.slug,
                name=spec.name,
                task_type=spec.task_type,
                description=spec.description,
                guidelines=spec.guidelines.replace("{examples}", examples),
                overlap=spec.overlap,
                gold_share=spec.gold_share,
                ranking_size=4,
            ),
            created_by=owner,
        )
    if spec.task_type == TaskType.PROMPT_WRITING:
        return project
    existing = set(Prompt.objects.filter(project=project).values_list("digest", flat=True))
    for number, entry in enumerate(demo_data()["prompts"]):
        if text_digest(entry["prompt"]) not in existing:
            _seed_prompt(project, number, entry)
    if spec.model_prompts:
        missing = [text for text in dialogue_prompts() if text_digest(text) not in existing]
        Prompt.objects.bulk_create(  # bulk: save() and its digest are bypassed, so set it here
            Prompt(project=project, text=text, digest=text_digest(text), source=PromptSource.SEED)
            for text in missing
        )
    return project


@cache
def dialogue_prompts() -> list[str]:
    prompts: list[str] = json.loads(DIALOGUE_DATA.read_text(encoding="utf-8"))["prompts"]
    return prompts


def _seed_prompt(project: Project, number: int, entry: dict[str, Any]) -> None:
    prompt = Prompt.objects.create(project=project, text=entry["prompt"], source=PromptSource.SEED)
    ranked = [Response.objects.create(prompt=prompt, text=text) for text in entry["responses"]]
    rng = random.Random(f"{project.slug}-{number}")
    gold = number < GOLD_PROMPTS
    task = project.task_type
    if task == TaskType.RATING:
        # Two responses each: the best one and, in turn, one of the others.
        shown = [0, 1 + number % 3]
        for rank in shown:
            item = create_item(project, prompt, [ranked[rank]], is_gold=gold)
            if gold:
                score = RATING_SCORES[rank]
                _gold(item, "helpfulness", {"score": score}, tolerance=1)
                _gold(item, "correctness", {"score": score}, tolerance=1)
    elif task == TaskType.PAIRWISE:
        if gold:  # the best against the worst: a clear answer
            item = create_item(project, prompt, [ranked[0], ranked[3]], is_gold=True, rng=rng)
            _gold(item, "preference", {"outcome": "win", "winner": ranked[0].pk, "strength": 3})
        else:
            create_items(project, prompt, ranked, rng=rng)
    elif task == TaskType.RANKING:
        [item] = create_items(project, prompt, ranked, is_gold=gold, rng=rng)
        if gold:
            _gold(item, "ranking", {"order": [r.pk for r in ranked]})
    elif task == TaskType.REWRITE:
        # A gold item shows the worst response, which is plainly wrong.
        item = create_item(project, prompt, [ranked[3] if gold else ranked[1]], is_gold=gold)
        if gold:
            _gold(item, "flags", {"flags": ["factual error"]})


def _gold(item: Item, key: str, answer: dict[str, Any], *, tolerance: int = 0) -> None:
    question = Question.objects.get(project=item.project, key=key)
    ids = list(item.placements.values_list("response_id", flat=True))
    value = clean_answer(question.kind, question.config, answer, response_ids=ids)
    GoldAnswer.objects.create(item=item, question=question, value=value, tolerance=tolerance)
