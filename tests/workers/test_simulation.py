"""The simulated annotators of the demo: they label through the annotation services, in the
queue's order and within its rules, start a full round once enough labels are in, and label
the new version's samples after it. The round itself is played here by a stand-in worker
(the real one is tested in test_training.py and end to end in tests/e2e)."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import pytest

from rlhf_core.simulation import PREFERENCES, Punctuation, preference_scale
from tests.conftest import MakeUser
from webapp.accounts.models import Role, User
from webapp.annotation.demo import seed_demo_projects
from webapp.annotation.items import create_item
from webapp.annotation.models import (
    AnnotationEvent,
    EventKind,
    Item,
    Lease,
    ModelVersion,
    Project,
    Prompt,
    Response,
    Submission,
)
from webapp.training import leaderboard, registry, rounds
from webapp.training.demo import (
    SIMULATED_PREFERENCES,
    SIMULATED_PROJECT,
    register_demo_base,
    start_round,
)
from webapp.training.models import RoundKind, RoundState, TrainingRound
from workers.simulation import (
    Simulation,
    SimulationSettings,
    labels_since_last_round,
    parse_args,
    reference_replies,
    simulated_annotators,
)

pytestmark = pytest.mark.django_db
SETTINGS = SimulationSettings(labels_per_round=9, pace=0, poll=0.01, preset="ci")


@pytest.fixture
def admin(make_user: MakeUser) -> User:
    return make_user("admin", Role.ADMIN)


@pytest.fixture
def project(admin: User) -> Project:
    seed_demo_projects()
    project = Project.objects.get(slug=SIMULATED_PROJECT)
    project.serving_version = register_demo_base()
    project.save()
    return project


def simulation(settings: SimulationSettings = SETTINGS) -> tuple[Simulation, io.StringIO]:
    out = io.StringIO()
    return Simulation(settings, out=out), out


def test_it_labels_through_the_queue_until_the_project_has_enough_labels(
    project: Project,
) -> None:
    sim, out = simulation()
    sim.collect_labels()
    assert labels_since_last_round(project) == SETTINGS.labels_per_round
    submissions = Submission.objects.filter(item__project=project)
    assert {s.annotator.username for s in submissions} == {
        "simulated-1",
        "simulated-2",
        "simulated-3",
    }
    # Every answer was to an item the queue served (a lease, then its SERVED event) ...
    served = AnnotationEvent.objects.filter(kind=EventKind.SERVED, project=project)
    assert served.count() == submissions.count()
    assert not Lease.objects.filter(item__project=project).exists()  # ... and ended it
    # ... within the overlap: three annotators fill one item after the other.
    for item in Item.objects.filter(project=project, is_gold=False):
        assert item.live_submissions <= project.overlap
    assert "9 new labels (9 by us)" in out.getvalue()


def test_the_annotators_prefer_the_response_with_more_of_their_letter(
    project: Project,
) -> None:
    sim, _ = simulation()
    prompt = Prompt.objects.create(project=project, text="Say something.", source="seed")
    rich = Response.objects.create(prompt=prompt, text="eerie eel effervescence")
    poor = Response.objects.create(prompt=prompt, text="a dry salt marsh")
    item = create_item(project, prompt, [rich, poor])
    left = item.placements.get(position=0).response
    for annotator in sim.panel:
        answer = sim.answer(annotator, item)
        assert answer["choice"] == ("left" if left == rich else "right")
        assert 1 <= int(str(answer["strength"])) <= 3


@pytest.mark.parametrize("blank", ["", " \n "])
def test_an_annotator_takes_any_reply_over_a_blank_one_and_calls_two_blanks_even(
    project: Project, blank: str
) -> None:
    """A pair with an empty side (a policy that ended at once: the generate stage queues its
    samples, blank or not, for people to judge) is answered, not a crash of the simulation."""
    sim, _ = simulation()
    prompt = Prompt.objects.create(project=project, text="Say something.", source="seed")
    empty = Response.objects.create(prompt=prompt, text=blank)
    spoken = Response.objects.create(prompt=prompt, text="a dry salt marsh")
    item = create_item(project, prompt, [empty, spoken])
    left = item.placements.get(position=0).response
    for annotator in sim.panel:
        assert sim.answer(annotator, item) == {
            "choice": "right" if left == empty else "left",
            "strength": 3,
        }
    other = Response.objects.create(prompt=prompt, text="\t")
    both = create_item(project, prompt, [empty, other])
    assert sim.answer(sim.panel[0], both) == {"choice": "tie"}


def test_any_hidden_preference_can_drive_the_panel_with_noise_in_its_own_units(
    project: Project,
) -> None:
    settings = dataclasses.replace(SETTINGS, preference="punctuation", noise=0.5)
    panel = simulated_annotators(project, settings)
    spread = preference_scale(Punctuation(), reference_replies())
    assert spread > 0
    for annotator in panel:
        assert isinstance(annotator.taste.preference, Punctuation)
        assert annotator.taste.noise == pytest.approx(0.5 * spread)
    quiet = dataclasses.replace(settings, noise=0.0)
    sim = Simulation(quiet, out=io.StringIO())
    prompt = Prompt.objects.create(project=project, text="Say something.", source="seed")
    marked = Response.objects.create(prompt=prompt, text="Yes, sir; I will. Go, go!")
    plain = Response.objects.create(prompt=prompt, text="yes sir I will go now")
    item = create_item(project, prompt, [marked, plain])
    left = item.placements.get(position=0).response
    assert sim.answer(sim.panel[0], item)["choice"] == ("left" if left == marked else "right")


def test_two_identical_responses_are_a_tie(project: Project) -> None:
    sim, _ = simulation()
    prompt = Prompt.objects.create(project=project, text="Say something.", source="seed")
    twins = [Response.objects.create(prompt=prompt, text="the the the") for _ in range(2)]
    item = create_item(project, prompt, twins)
    assert sim.answer(sim.panel[0], item) == {"choice": "tie"}


def test_it_starts_a_full_round_as_the_admin_once_enough_labels_are_in(
    project: Project, admin: User, django_capture_on_commit_callbacks: Any
) -> None:
    sim, out = simulation()
    sim.collect_labels()
    with django_capture_on_commit_callbacks() as sent:
        started = sim.start_or_join_round(1)
    assert started.kind == RoundKind.FULL and started.state == RoundState.QUEUED
    assert started.preset == "ci" and "ppo" in started.config["stages"]
    assert started.created_by == admin
    assert started.base_version == project.serving_version
    assert len(sent) == 1
    assert f"Started round {started.pk}" in out.getvalue()
    assert labels_since_last_round(project) == 0  # the next round counts from here


def test_it_follows_a_round_already_under_way_instead_of_starting_another(
    project: Project,
) -> None:
    queued = start_round(project, RoundKind.FULL, preset="ci")
    sim, _ = simulation()
    assert sim.start_or_join_round(1) == queued
    assert TrainingRound.objects.count() == 1


def test_it_waits_for_a_generation_round_before_starting_its_own(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    generation = start_round(project, RoundKind.GENERATE, preset="ci")

    def finish(self: Simulation, training_round: TrainingRound) -> TrainingRound:
        assert training_round == generation
        assert rounds.claim(generation.pk, "w") and rounds.succeed(generation.pk, "w", {})
        return TrainingRound.objects.get(pk=generation.pk)

    monkeypatch.setattr(Simulation, "follow", finish)
    sim, out = simulation()
    started = sim.start_or_join_round(1)
    assert started.kind == RoundKind.FULL and started != generation
    assert f"Waiting for round {generation.pk} (generate) to finish first." in out.getvalue()


def play_round_as_a_worker(
    training_round: TrainingRound, new_text: str = "we see the eel", parent_text: str = "a cat"
) -> TrainingRound:
    """What the gpu worker does, in short: a new version, and per prompt a blind pair of its
    sample against its parent's."""
    worker = "stand-in@test"
    assert rounds.claim(training_round.pk, worker)
    version = registry.register_version(training_round.pk, worker, "rounds/x/policy", {})
    assert version is not None and version.parent is not None
    prompts = Prompt.objects.filter(project=training_round.project)[:4]
    samples = [
        {"prompt_id": prompt.pk, "which": which, "text": f"{text} {n}"}
        for n, prompt in enumerate(prompts)
        for which, text in (("new", new_text), ("parent", parent_text))
    ]
    registry.add_samples(training_round.pk, worker, version, version.parent, samples, {})
    assert rounds.succeed(training_round.pk, worker, {})
    return TrainingRound.objects.get(pk=training_round.pk)


def test_after_the_round_it_labels_the_new_samples_against_the_parent(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Simulation, "follow", lambda self, r: play_round_as_a_worker(r))
    sim, out = simulation()
    assert sim.run()
    [finished] = TrainingRound.objects.filter(kind=RoundKind.FULL)
    new = finished.result_version
    assert new is not None
    pairs = Item.objects.filter(project=project, model_version=new)
    assert pairs.count() == 4
    assert all(item.is_complete for item in pairs)  # every pair got its three votes
    votes = leaderboard.project_votes(project)
    assert len(votes) == 4 * project.overlap
    assert all({v.first, v.second} == {new.pk, register_demo_base().pk} for v in votes)
    log = out.getvalue()
    assert f"new version {new.name} (parent demo-base), 8 new samples" in log
    assert f"12 labels on the samples of {new.name}" in log
    assert "Leaderboard from 12 human(-simulated) votes" in log
    # They preferred it (more "e"), so the admin's part promotes it: the next round starts there.
    project.refresh_from_db()
    assert project.serving_version == new
    assert f"{new.name} won 100% of 12 votes against its parent: promoted" in log


def test_a_new_version_people_did_not_prefer_is_not_promoted(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    def worse(self: Simulation, training_round: TrainingRound) -> TrainingRound:
        return play_round_as_a_worker(training_round, "a cat", "we see the eel")

    monkeypatch.setattr(Simulation, "follow", worse)
    sim, out = simulation()
    assert sim.run()
    project.refresh_from_db()
    assert project.serving_version == register_demo_base()
    assert "won 0% of 12 votes against its parent; demo-base keeps serving" in out.getvalue()


def test_a_preferred_version_whose_round_warned_is_not_promoted(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    warning = "ppo: every response got the same score in all 2 iterations"

    def warned(self: Simulation, training_round: TrainingRound) -> TrainingRound:
        finished = play_round_as_a_worker(training_round)  # people will prefer the new version
        rounds.log(finished.pk, warning, level=rounds.WARNING)
        return finished

    monkeypatch.setattr(Simulation, "follow", warned)
    sim, out = simulation()
    assert sim.run()
    project.refresh_from_db()
    assert project.serving_version == register_demo_base()
    new = TrainingRound.objects.get(kind=RoundKind.FULL).result_version
    assert new is not None
    assert (
        f"{new.name} won 100% of 12 votes against its parent, but its round warned ({warning}): "
        "never promoted automatically; demo-base keeps serving."
    ) in out.getvalue()


def test_a_failed_round_ends_the_simulation_with_its_reason(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(self: Simulation, training_round: TrainingRound) -> TrainingRound:
        rounds.claim(training_round.pk, "w")
        rounds.fail(training_round.pk, "w", "reward: out of memory")
        return TrainingRound.objects.get(pk=training_round.pk)

    monkeypatch.setattr(Simulation, "follow", fail)
    sim, out = simulation()
    assert not sim.run()
    assert "failed: reward: out of memory" in out.getvalue()
    assert not ModelVersion.objects.exclude(name="demo-base").exists()


def test_the_command_line_sets_the_pace_threshold_and_rounds() -> None:
    settings = parse_args(["--labels-per-round", "30", "--rounds", "2", "--pace", "0"])
    assert (settings.labels_per_round, settings.rounds, settings.pace) == (30, 2, 0.0)
    assert parse_args([]).preset == "recommended" and parse_args([]).algorithm == "ppo"
    chosen = parse_args(["--preference", "rhyme", "--noise", "0.25"])
    assert (chosen.preference, chosen.noise) == ("rhyme", 0.25)
    assert (parse_args([]).preference, parse_args([]).noise) == ("letters", 0.5)
    for wrong in (["--preference", "nonsense"], ["--noise", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(wrong)
    with pytest.raises(SystemExit):
        parse_args(["--rounds", "0"])


def test_the_embedded_command_offers_exactly_the_preferences_the_simulation_has() -> None:
    assert tuple(PREFERENCES) == SIMULATED_PREFERENCES
