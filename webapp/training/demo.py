"""The embedded demo's model in the registry, and the rounds that put it to work.

`rlhf_core demo` writes the demo model (a tiny PaLM pretrained on Shakespeare) to
MODEL_STORE_DIR/demo; `prepare_demo_training` registers it once as the base version
"demo-base", makes it the serving version of the demo projects that take model samples, and
starts a GENERATE round for each of them that has no samples of its serving version yet, so the
queue holds the model's own text by the time someone looks. Every step is idempotent: the
embedded command runs it on each start. Never called by production code paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Q

from webapp.accounts.models import Role, User
from webapp.annotation.models import ModelVersion, Project, Response
from webapp.training.models import RoundKind, RoundState, TrainingRound
from webapp.training.presets import DEFAULT_ALGORITHM, DEFAULT_PRESET
from webapp.training.services import RoundInputError, create_round

DEMO_BASE_NAME = "demo-base"
# Where `python -m rlhf_core demo --out MODEL_STORE_DIR/demo` leaves the finished model,
# relative to MODEL_STORE_DIR (the store can move; the rows stay valid).
DEMO_CHECKPOINT_DIR = "demo/run/final"
# The demo projects whose items are model samples; the simulated annotators label the first.
MODEL_SAMPLE_PROJECTS = ("demo-pairwise",)
SIMULATED_PROJECT = MODEL_SAMPLE_PROJECTS[0]
# The hidden tastes the simulated annotators can have: the names of rlhf_core.simulation's
# PREFERENCES (the web side never imports the model side; a test keeps the two lists equal), so
# that `bin/run --simulate-preference` refuses a wrong name before anything starts.
SIMULATED_PREFERENCES = (
    "letters",
    "warm_words",
    "length",
    "line_breaks",
    "punctuation",
    "rhyme",
    "embedding",
)
# The demo's first generation samples every one of the pairwise project's 200 dialogue prompts,
# so that its first round learns from 300 distinct pairs (900 labels at the project's overlap of
# 3; the prompts give 400) and holds out enough prompts to measure the reward model on: with 150
# prompts and 600 labels it held out about 48 preferences, and one run of five measured 0.60 on
# them. The presets' `generate` section (30 prompts) sizes the new samples of every later round.
# The ci preset keeps its own seconds-long size.
FIRST_GENERATION: dict[str, dict[str, dict[str, int]]] = {
    DEFAULT_PRESET: {"generate": {"prompts": 200}},
}
# New labels in the simulated project before each round starts (`bin/run --simulate-labels`):
# 300 of the first generation's 400 pairs, three answers each. At 180 (60 pairs) the reward model
# held out about 12 preferences and every round warned.
SIMULATED_LABELS_PER_ROUND = 900
ACTIVE_STATES = (RoundState.QUEUED, RoundState.RUNNING)


@dataclass(frozen=True)
class DemoTraining:
    base: ModelVersion
    projects: list[Project]
    generation_rounds: list[TrainingRound]  # started now; empty when every project has samples


def register_demo_base(checkpoint_dir: str = DEMO_CHECKPOINT_DIR) -> ModelVersion:
    """The demo model's version, created on the first call only (no parent: it is a base)."""
    version, _ = ModelVersion.objects.get_or_create(
        name=DEMO_BASE_NAME,
        project=None,
        defaults={"checkpoint_dir": checkpoint_dir, "metrics": {"kind": "pretrained base"}},
    )
    return version


@transaction.atomic
def prepare_demo_training(preset: str = DEFAULT_PRESET) -> DemoTraining:
    """Register the demo base, serve it where nothing else serves, and queue the generation
    rounds still missing (sent once this transaction commits)."""
    base = register_demo_base()
    projects = list(Project.objects.filter(slug__in=MODEL_SAMPLE_PROJECTS).order_by("pk"))
    started: list[TrainingRound] = []
    for project in projects:
        if project.serving_version_id is None:  # an admin's promotion is never undone here
            project.serving_version = base
            project.save(update_fields=["serving_version", "updated_at"])
        serving = project.serving_version
        assert serving is not None
        if not _has_samples_coming(project, serving):
            started.append(
                start_round(
                    project,
                    RoundKind.GENERATE,
                    preset=preset,
                    base_version=serving,
                    overrides=FIRST_GENERATION.get(preset),
                )
            )
    return DemoTraining(base=base, projects=projects, generation_rounds=started)


def _has_samples_coming(project: Project, version: ModelVersion) -> bool:
    """Whether the project has samples of `version`, or a generation round that will add them."""
    if Response.objects.filter(prompt__project=project, model_version=version).exists():
        return True
    generating = TrainingRound.objects.filter(
        project=project, kind=RoundKind.GENERATE, base_version=version
    ).exclude(state__in=(RoundState.FAILED, RoundState.CANCELLED))
    return generating.exists()


def demo_admin() -> User | None:
    """Whom the demo's rounds are started by: the first admin."""
    admins = User.objects.filter(Q(role=Role.ADMIN) | Q(is_superuser=True), is_active=True)
    return admins.order_by("pk").first()


def active_round(project: Project) -> TrainingRound | None:
    """The project's round that is queued or running, if any (oldest first)."""
    waiting = TrainingRound.objects.filter(project=project, state__in=ACTIVE_STATES)
    return waiting.order_by("created_at", "pk").first()


def start_round(
    project: Project,
    kind: str,
    *,
    preset: str,
    algorithm: str = DEFAULT_ALGORITHM,
    base_version: ModelVersion | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainingRound:
    """Queue a round as the demo admin would from the page; the task leaves after commit."""
    admin = demo_admin()
    if admin is None:
        raise RoundInputError("The demo has no admin to start rounds; run the embedded command.")
    return create_round(
        admin,
        project,
        kind,
        preset,
        algorithm=algorithm,
        base_version=base_version,
        overrides=overrides,
    )
