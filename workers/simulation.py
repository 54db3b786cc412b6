"""Simulated annotators that drive the demo's loop: label, train, label the new model's samples.

    python -m workers.simulation [--labels-per-round 900] [--rounds 1] [--pace 0.25] ...

The embedded command starts this process with `bin/run --simulate`. A panel of annotators
whose hidden taste is known (one of `rlhf_core.simulation.PREFERENCES`, `--preference`; by
default they prefer texts with more of the letter "e"), each blurred by noise of its own (by
default half the taste's spread over the demo's replies, so one annotator agrees with the
noiseless taste on about 85% of pairs), labels the open items of the demo's pairwise project
through the same services the browser uses (the queue hands out leases, `labelling.submit`
stores the answers), at a pace a person can watch. Once the project has enough new labels and
no round is queued or running, it starts a full round (reward model, policy, evaluate,
register, generate) as the demo admin, follows it, and then labels the new version's samples,
the blind pairs against its parent included, so the leaderboard gets its votes. It repeats for
the rounds asked for, then exits.
Everything it does is printed, one line per event.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
django.setup()

from django.db.models import Max  # noqa: E402
from django.utils import timezone  # noqa: E402

from rlhf_core.corpus import demo_corpus_paths  # noqa: E402
from rlhf_core.demo import demo_exchanges  # noqa: E402
from rlhf_core.simulation import (  # noqa: E402
    PREFERENCES,
    SimulatedAnnotator,
    calibrated_panel,
)
from webapp.accounts.models import Role, User  # noqa: E402
from webapp.annotation import labelling, queue  # noqa: E402
from webapp.annotation.models import (  # noqa: E402
    Item,
    Label,
    Membership,
    ModelVersion,
    Project,
    Question,
)
from webapp.annotation.questions import QuestionKind  # noqa: E402
from webapp.exports.rows import is_blank  # noqa: E402
from webapp.training import demo, leaderboard, rounds, services  # noqa: E402
from webapp.training.models import RoundKind, RoundLog, RoundState, TrainingRound  # noqa: E402
from webapp.training.presets import ALGORITHMS, DEFAULT_ALGORITHM, DEFAULT_PRESET, PRESETS  # noqa: E402

USERNAME = "simulated-{}"
# Rounds whose labels a threshold counts from: those that train on them.
TRAINING_KINDS = (
    RoundKind.FULL,
    RoundKind.REWARD,
    RoundKind.PPO,
    RoundKind.DPO,
    RoundKind.REJECTION_SAMPLING,
)


@dataclass(frozen=True)
class SimulationSettings:
    project: str = demo.SIMULATED_PROJECT
    annotators: int = 3
    labels_per_round: int = demo.SIMULATED_LABELS_PER_ROUND  # new labels before a round starts
    rounds: int = 1
    pace: float = 0.25  # seconds between two answers
    preset: str = DEFAULT_PRESET
    algorithm: str = DEFAULT_ALGORITHM
    preference: str = "letters"  # the hidden taste, a name of rlhf_core.simulation.PREFERENCES
    # Each annotator's noise, as a share of the taste's spread over the demo's replies
    # (`calibrated_panel`): 0.5 agrees with the noiseless taste on about 85% of pairs.
    noise: float = 0.5
    seed: int = 0
    poll: float = 1.0  # seconds between two looks at a round or an empty queue
    round_timeout: float = 3600.0  # give up on a round that takes longer


class SimulationError(Exception):
    """The simulation cannot go on; the message says why."""


@dataclass
class Annotator:
    user: User
    taste: SimulatedAnnotator


class Simulation:
    def __init__(self, settings: SimulationSettings, out: TextIO = sys.stdout) -> None:
        self.settings = settings
        self.out = out
        project = Project.objects.filter(slug=settings.project).first()
        if project is None:
            raise SimulationError(f"No project {settings.project!r}; run the embedded command.")
        self.project = project
        self.question = _preference_question(project)
        self.panel = simulated_annotators(project, settings)
        self.labels_given = 0
        self.turn = 0  # whose turn it is to take an item

    def say(self, message: str) -> None:
        stamp = timezone.localtime().strftime("%H:%M:%S")
        self.out.write(f"[{stamp}] {message}\n")
        self.out.flush()

    def run(self) -> bool:
        """Every round asked for: whether each one succeeded."""
        names = ", ".join(a.user.username for a in self.panel)
        self.say(
            f"{len(self.panel)} simulated annotators ({names}) label {self.project.slug}; their "
            f"hidden taste is {self.settings.preference!r}: {taste_summary(self.settings)}"
        )
        for number in range(1, self.settings.rounds + 1):
            self.collect_labels()
            finished = self.follow(self.start_or_join_round(number))
            if finished.state != RoundState.SUCCEEDED:
                self.say(f"Round {finished.pk} {finished.state}: {finished.error or '-'}")
                return False
            self.report(finished)
            self.label_new_samples(finished)
            self.report_leaderboard()
            self.promote_if_preferred(finished)
        self.say(f"Done: {self.settings.rounds} round(s), {self.labels_given} labels given.")
        return True

    # --- labelling ------------------------------------------------------------------------

    def collect_labels(self) -> None:
        """Label until the project has `labels_per_round` labels since its last training round;
        an empty queue is waited on (the base model's samples may still be on their way)."""
        wanted = self.settings.labels_per_round
        self.say(f"Labelling until the project has {wanted} new labels.")
        given = self.label_while(lambda: labels_since_last_round(self.project) < wanted, wait=True)
        self.say(f"{labels_since_last_round(self.project)} new labels ({given} by us).")

    def label_new_samples(self, finished: TrainingRound) -> None:
        version = finished.result_version
        if version is None:
            return
        self.say(f"Labelling the samples of {version.name}, blind pairs against its parent too.")
        given = self.label_while(lambda: self.open_items_of(version.pk) > 0, wait=False)
        judged = Label.objects.filter(
            item__project=self.project, item__model_version=version, undone_at__isnull=True
        ).count()
        self.say(f"{judged} labels on the samples of {version.name} ({given} given in all).")

    def open_items_of(self, version_id: int) -> int:
        """Items with the version's samples that one of the panel may still answer."""
        items = Item.objects.filter(project=self.project, model_version_id=version_id)
        return sum(
            items.filter(is_complete=False).exclude(submissions__annotator=a.user).count()
            for a in self.panel
        )

    def label_while(self, go_on: Callable[[], bool], *, wait: bool) -> int:
        """Answer items, one annotator after the other, while `go_on()`. With `wait`, an empty
        queue is looked at again every `poll` seconds; without, it ends the labelling."""
        given = 0
        told_empty = False
        while go_on():
            answered = self.answer_one()
            if answered:
                given += 1
                told_empty = False
                if given % 10 == 0:
                    self.say(f"{given} labels given.")
                time.sleep(self.settings.pace)
                continue
            if not wait:
                break
            if not told_empty:
                self.say("No item left for the simulated annotators; waiting for new ones.")
                told_empty = True
            time.sleep(self.settings.poll)
        return given

    def answer_one(self) -> bool:
        """The next annotator with an item in their queue answers it; False if none has one."""
        for _ in range(len(self.panel)):
            annotator = self.panel[self.turn % len(self.panel)]
            self.turn += 1
            lease = queue.next_item(self.project, annotator.user)
            if lease is None:
                continue
            labelling.submit(
                lease.item,
                annotator.user,
                {self.question.key: self.answer(annotator, lease.item)},
                active_ms=int(self.settings.pace * 1000),
            )
            self.labels_given += 1
            return True
        return False

    def answer(self, annotator: Annotator, item: Item) -> dict[str, object]:
        """The form's answer to the pair: left or right with a strength, or a tie."""
        left, right = (p.response for p in item.placements.select_related("response"))
        top = max(int(self.question.config.get("max_strength", 3)), 1)
        if left.text == right.text:  # a tiny model repeats itself now and then
            return {"choice": "tie"}
        blank = [is_blank(text) for text in (left.text, right.text)]
        if any(blank):
            # No taste judges an empty reply (a label needs text on both sides): as a person
            # would, the annotator takes any answer over none, or calls two blanks even.
            if all(blank):
                return {"choice": "tie"}
            return {"choice": "right" if blank[0] else "left", "strength": top}
        verdict = annotator.taste.compare(item.prompt.text, left.text, right.text)
        if verdict.tie:
            return {"choice": "tie"}
        choice = "left" if verdict.chosen == left.text else "right"
        return {"choice": choice, "strength": min(verdict.strength or 1, top)}

    # --- rounds ---------------------------------------------------------------------------

    def start_or_join_round(self, number: int) -> TrainingRound:
        """A training round someone else queued is followed rather than doubled; any other
        round (generating samples) is waited for, so one round runs at a time."""
        while (running := demo.active_round(self.project)) is not None:
            if running.kind in TRAINING_KINDS:
                self.say(f"Round {running.pk} ({running.kind}) is already under way; following.")
                return running
            self.say(f"Waiting for round {running.pk} ({running.kind}) to finish first.")
            self.follow(running)
        started = demo.start_round(
            self.project,
            RoundKind.FULL,
            preset=self.settings.preset,
            algorithm=self.settings.algorithm,
        )
        self.say(
            f"Started round {started.pk} ({number} of {self.settings.rounds}): full round, "
            f"preset {started.preset}, {self.settings.algorithm.upper()} from "
            f"{started.base_version or 'no base'}."
        )
        return started

    def follow(self, started: TrainingRound) -> TrainingRound:
        """Wait for the round to finish, printing its stages and log lines as they come."""
        deadline = time.monotonic() + self.settings.round_timeout
        stage, last_log = "", 0
        while time.monotonic() < deadline:
            current = TrainingRound.objects.get(pk=started.pk)
            for entry in RoundLog.objects.filter(round=current, pk__gt=last_log).order_by("pk"):
                self.say(f"round {current.pk} log: {entry.message}")
                last_log = entry.pk
            if current.stage and current.stage != stage:
                stage = current.stage
                self.say(f"round {current.pk}: stage {stage} ({current.progress_percent}%)")
            if current.is_finished:
                return current
            time.sleep(self.settings.poll)
        raise SimulationError(
            f"Round {started.pk} did not finish within {self.settings.round_timeout:.0f} s."
        )

    def report(self, finished: TrainingRound) -> None:
        version = finished.result_version
        seconds = (
            (finished.finished_at - finished.started_at).total_seconds()
            if finished.finished_at and finished.started_at
            else 0.0
        )
        parent = version.parent if version is not None else None
        self.say(
            f"Round {finished.pk} succeeded in {seconds:.0f} s: new version "
            f"{version.name if version else '-'} (parent {parent.name if parent else '-'}), "
            f"{finished.samples_added or 0} new samples in the queue."
        )

    def report_leaderboard(self) -> None:
        votes = leaderboard.project_votes(self.project)
        version_ids = sorted({v.first for v in votes} | {v.second for v in votes})
        names = dict(ModelVersion.objects.filter(pk__in=version_ids).values_list("pk", "name"))
        self.say(f"Leaderboard from {len(votes)} human(-simulated) votes:")
        for row in leaderboard.standings(version_ids, votes):
            rating = "-" if row.rating is None else f"{row.rating:.0f}"
            self.say(f"  {names[row.version_id]:<24} rating {rating:>5}  votes {row.votes}")

    def promote_if_preferred(self, finished: TrainingRound) -> None:
        """As the admin would: serve the new version if people preferred it to its parent, so
        that the next round trains from it and its samples fill the queue."""
        version = finished.result_version
        if version is None or version.parent is None:
            return
        votes = leaderboard.project_votes(self.project)
        duel = leaderboard.head_to_head(votes, version.pk, version.parent.pk)
        if duel.win_rate is None:
            return
        verdict = f"{version.name} won {duel.win_rate:.0%} of {duel.votes} votes against its parent"
        admin = demo.demo_admin()
        warned = rounds.warnings_of(finished.pk)
        if warned:
            self.say(
                f"{verdict}, but its round warned ({'; '.join(warned)}): never promoted "
                f"automatically; {version.parent.name} keeps serving."
            )
            return
        if duel.win_rate < 0.5 or admin is None:
            self.say(f"{verdict}; {version.parent.name} keeps serving.")
            return
        services.promote_version(admin, self.project, version)
        self.say(f"{verdict}: promoted, it serves {self.project.slug} now.")


def _preference_question(project: Project) -> Question:
    question = project.questions.filter(kind=QuestionKind.PREFERENCE).first()
    if question is None:
        raise SimulationError(f"{project.slug} asks no pairwise preference question.")
    required = project.questions.filter(required=True).exclude(pk=question.pk)
    if required.exists():
        raise SimulationError(f"{project.slug} requires answers the simulation cannot give.")
    return question


def taste_summary(settings: SimulationSettings) -> str:
    """The first sentence of the preference's description, e.g. "The share of a text's
    characters that are in `letters` (0 for an empty text)"."""
    doc = PREFERENCES[settings.preference].__doc__ or settings.preference
    return re.split(r"(?<=[A-Za-z)`])\.(?:\s|$)", " ".join(doc.split()))[0] + "."


def reference_replies(count: int = 500) -> list[str]:
    """The replies of the demo corpus's first `count` exchanges: what the demo model learns to
    write, the reference over which a taste's spread (the unit of the noise) is measured."""
    replies = []
    for exchange in demo_exchanges(demo_corpus_paths()):
        replies.append(exchange.split("\n\n", 1)[1])
        if len(replies) == count:
            break
    return replies


def simulated_annotators(project: Project, settings: SimulationSettings) -> list[Annotator]:
    """The panel's accounts (annotators who cannot log in), members of `project`."""
    tastes = calibrated_panel(
        settings.annotators,
        PREFERENCES[settings.preference](),
        reference_replies(),
        noise=settings.noise,
        seed=settings.seed,
    )
    panel = []
    for number, taste in enumerate(tastes, start=1):
        user, created = User.objects.get_or_create(
            username=USERNAME.format(number), defaults={"role": Role.ANNOTATOR}
        )
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        Membership.objects.get_or_create(project=project, user=user)
        panel.append(Annotator(user, taste))
    return panel


def labels_since_last_round(project: Project) -> int:
    """Live preference labels in the project given after its last training round was queued."""
    last = TrainingRound.objects.filter(project=project, kind__in=TRAINING_KINDS).aggregate(
        at=Max("created_at")
    )["at"]
    labels = Label.objects.filter(
        item__project=project, question__kind=QuestionKind.PREFERENCE, undone_at__isnull=True
    )
    return (labels.filter(created_at__gt=last) if last else labels).count()


def parse_args(argv: Sequence[str] | None) -> SimulationSettings:
    defaults = SimulationSettings()
    parser = argparse.ArgumentParser(
        prog="python -m workers.simulation",
        description="Simulated annotators: label the demo's pairwise project, start a full "
        "training round once enough labels are in, then label the new model's samples.",
    )
    parser.add_argument("--project", default=defaults.project, help="slug (%(default)s)")
    parser.add_argument("--annotators", type=int, default=defaults.annotators, metavar="N")
    parser.add_argument(
        "--labels-per-round",
        type=int,
        default=defaults.labels_per_round,
        metavar="N",
        help="new labels before each round starts (%(default)s)",
    )
    parser.add_argument("--rounds", type=int, default=defaults.rounds, metavar="N")
    parser.add_argument(
        "--pace",
        type=float,
        default=defaults.pace,
        metavar="SECONDS",
        help="between two answers (%(default)s)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=defaults.preset)
    parser.add_argument("--algorithm", choices=ALGORITHMS, default=defaults.algorithm)
    parser.add_argument(
        "--preference",
        choices=sorted(PREFERENCES),
        default=defaults.preference,
        help="the annotators' hidden taste (%(default)s)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=defaults.noise,
        metavar="SHARE",
        help="each annotator's noise, times the taste's spread (%(default)s: ~85%% agreement)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    if args.annotators < 1 or args.rounds < 1 or args.labels_per_round < 1 or args.pace < 0:
        parser.error("--annotators, --rounds and --labels-per-round must be positive")
    if args.noise < 0:
        parser.error("--noise must be >= 0")
    return SimulationSettings(
        project=args.project,
        annotators=args.annotators,
        labels_per_round=args.labels_per_round,
        rounds=args.rounds,
        pace=args.pace,
        preset=args.preset,
        algorithm=args.algorithm,
        preference=args.preference,
        noise=args.noise,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return 0 if Simulation(parse_args(argv)).run() else 1
    except SimulationError as error:
        print(f"Simulation stopped: {error}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
