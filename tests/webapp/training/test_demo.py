"""The embedded demo's model in the registry: registered once, served, and sampled once."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import MakeUser
from webapp.accounts.models import Role, User
from webapp.annotation.demo import dialogue_prompts, seed_demo_projects
from webapp.annotation.models import ModelVersion, Project, Prompt, Response
from webapp.training.demo import (
    DEMO_BASE_NAME,
    DEMO_CHECKPOINT_DIR,
    SIMULATED_LABELS_PER_ROUND,
    SIMULATED_PROJECT,
    prepare_demo_training,
    register_demo_base,
    start_round,
)
from webapp.training.models import RoundKind, RoundState, TrainingRound
from webapp.training.services import RoundInputError

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(make_user: MakeUser) -> Project:
    make_user("admin", Role.ADMIN)
    seed_demo_projects()
    return Project.objects.get(slug=SIMULATED_PROJECT)


def test_the_demo_base_is_registered_once_as_a_version_without_parent() -> None:
    first = register_demo_base()
    second = register_demo_base()
    assert first == second
    assert ModelVersion.objects.filter(name=DEMO_BASE_NAME).count() == 1
    assert first.parent is None
    assert first.checkpoint_dir == DEMO_CHECKPOINT_DIR == "demo/run/final"  # in the store


def test_it_serves_the_base_in_the_pairwise_demo_and_queues_one_generation(
    demo: Project, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as sent:
        prepared = prepare_demo_training("ci")
    demo.refresh_from_db()
    assert demo.serving_version == prepared.base
    [generation] = prepared.generation_rounds
    assert generation.kind == RoundKind.GENERATE and generation.state == RoundState.QUEUED
    assert generation.project == demo and generation.base_version == prepared.base
    assert generation.preset == "ci" and generation.config["stages"] == ["generate"]
    assert generation.created_by is not None and generation.created_by.username == "admin"
    assert len(sent) == 1  # its task, once the transaction committed


def test_the_first_generation_at_the_recommended_preset_samples_every_dialogue_prompt(
    demo: Project,
) -> None:
    """The first round learns from labels of these samples: 30 prompts (a later round's new
    samples) would give it some 60 distinct pairs and about 3 held-out prompts, and the labels the
    simulation waits for must all have a pair to go to."""
    [generation] = prepare_demo_training("recommended").generation_rounds
    assert generation.preset == "recommended"
    assert generation.config["generate"]["prompts"] == len(dialogue_prompts()) == 200
    assert generation.config["generate"]["samples_per_prompt"] == 4
    pairs = 200 * 4 // 2
    assert SIMULATED_LABELS_PER_ROUND == 900 <= pairs * demo.overlap
    full = start_round(
        demo, RoundKind.FULL, preset="recommended", base_version=generation.base_version
    )
    assert full.config["generate"]["prompts"] == 30  # later rounds keep the preset's size


def test_a_second_start_registers_and_queues_nothing_more(demo: Project) -> None:
    prepare_demo_training("ci")
    again = prepare_demo_training("ci")
    assert again.generation_rounds == []
    assert ModelVersion.objects.count() == 1
    assert TrainingRound.objects.count() == 1


def test_a_failed_generation_is_started_again_on_the_next_start(demo: Project) -> None:
    [failed] = prepare_demo_training("ci").generation_rounds
    TrainingRound.objects.filter(pk=failed.pk).update(state=RoundState.FAILED)
    [again] = prepare_demo_training("ci").generation_rounds
    assert again.pk != failed.pk


def test_no_generation_when_the_project_has_samples_of_its_serving_version(demo: Project) -> None:
    base = register_demo_base()
    prompt = Prompt.objects.filter(project=demo).first()
    assert prompt is not None
    Response.objects.create(prompt=prompt, text="a sample", model_version=base)
    assert prepare_demo_training("ci").generation_rounds == []


def test_a_version_an_admin_promoted_is_kept(demo: Project) -> None:
    promoted = ModelVersion.objects.create(name="demo-pairwise-r7", checkpoint_dir="rounds/7")
    Project.objects.filter(pk=demo.pk).update(serving_version=promoted)
    [generation] = prepare_demo_training("ci").generation_rounds
    demo.refresh_from_db()
    assert demo.serving_version == promoted
    assert generation.base_version == promoted


def test_rounds_of_the_demo_need_an_admin(db: None) -> None:
    seed_demo_projects()
    project = Project.objects.get(slug=SIMULATED_PROJECT)
    User.objects.filter(role=Role.ADMIN).delete()
    with pytest.raises(RoundInputError, match="no admin"):
        start_round(project, RoundKind.FULL, preset="ci", base_version=register_demo_base())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--demo-steps", "0"], "--simulate needs the demo model"),
        (["--simulate-labels", "0"], "must be at least 1"),
        (["--simulate-pace", "-1"], "must not be negative"),
        (["--simulate-preference", "sweetness"], "invalid choice: 'sweetness'"),
    ],
)
def test_the_embedded_command_refuses_a_simulation_it_cannot_run(
    options: list[str], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("embedded", "--simulate", *options)
