"""The model registry and what a training round reads and writes on the web side.

The worker (workers/training.py) calls these between its stages: the round's files in the model
store, its label snapshot, the project's prompts and latest reward model, registering the new
model version and putting its samples into the queue. No model code here: checkpoints are
directories in the model store, named relative to MODEL_STORE_DIR so that machines that mount
the store elsewhere share it.

Registering and adding samples happen exactly once per round, whatever redelivery or resume
does: each is one transaction that first takes the round's row by a conditional update (or a
row lock) and checks that it was not done already.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count

from webapp.annotation.items import ItemPlan, create_items_in_bulk, item_groups
from webapp.annotation.models import ModelVersion, Project, Prompt, Response
from webapp.annotation.questions import TaskType
from webapp.exports.building import MANIFEST, run_snapshot, snapshot_dir
from webapp.exports.formats import DATASETS
from webapp.exports.models import ExportSnapshot, SnapshotStatus
from webapp.exports.rows import is_blank, split_of, text_key
from webapp.exports.services import create_snapshot
from webapp.training.models import RoundState, TrainingRound

# The label data sets a round trains on, as JSON lines (what rlhf_core.records reads).
LABEL_DATASETS = ("pairs", "likert", "rankings", "sft")
REWARD_STAGE = "reward"


class RegistryError(Exception):
    """Something a round needs is missing; the message says what and what to do."""


def store_path(relative: str) -> Path:
    return Path(settings.MODEL_STORE_DIR) / relative


def round_dir(round_id: int) -> str:
    """The round's directory, relative to the model store."""
    return f"rounds/{round_id}"


def stage_output(training_round: TrainingRound, stage: str) -> str:
    """Where a stage's complete output lives, relative to the model store."""
    return f"{training_round.run_dir or round_dir(training_round.pk)}/stages/{stage}"


def checkpoint_of(version: ModelVersion) -> Path:
    if not version.checkpoint_dir:
        raise RegistryError(f"Model version {version.name} has no checkpoint directory.")
    return store_path(version.checkpoint_dir)


def base_version(training_round: TrainingRound) -> ModelVersion | None:
    """What the round trains from: its own base version, else the project's serving one."""
    return training_round.base_version or training_round.project.serving_version


def latest_reward_model(project: Project, *, exclude: int | None = None) -> str | None:
    """The reward model of the project's newest succeeded round that fitted one (relative to
    the model store), or None."""
    rounds = TrainingRound.objects.filter(project=project, state=RoundState.SUCCEEDED)
    if exclude is not None:
        rounds = rounds.exclude(pk=exclude)
    for training_round in rounds.order_by("-finished_at", "-pk"):
        if REWARD_STAGE in training_round.stages_done:
            return f"{stage_output(training_round, REWARD_STAGE)}/model"
    return None


def project_prompts(
    project: Project,
    count: int,
    *,
    seed: int = 0,
    split: str | None = None,
    snapshot: ExportSnapshot | None = None,
) -> list[Prompt]:
    """Up to `count` of the project's prompts, those with the fewest responses first (ties in
    a seeded random order), so that successive rounds spread over the prompts.

    With `split` ("train" or "test") and the round's label `snapshot`, only the prompts on that
    side of the snapshot's train/test split (`exports.rows.split_of`, by a hash of the prompt):
    a round trains its policy on "train" prompts and evaluates it on "test" ones, which its
    reward model never saw labels of either."""
    rows = (
        Prompt.objects.filter(project=project)
        .exclude(text="")
        .annotate(answered=Count("responses"))
    )
    answered = {pk: count for pk, count, _ in rows.values_list("pk", "answered", "digest")}
    if split is not None:
        if snapshot is None:
            raise RegistryError("A prompt split needs the round's label snapshot.")
        answered = {
            pk: count
            for pk, count, digest in rows.values_list("pk", "answered", "digest")
            if split_of(digest, snapshot.seed, snapshot.test_share) == split
        }
    rng = random.Random(seed)
    chosen = sorted(answered, key=lambda pk: (answered[pk], rng.random()))[:count]
    by_id = Prompt.objects.in_bulk(chosen)
    return [by_id[pk] for pk in chosen]


# Labels


def label_formats(project: Project) -> list[str]:
    """The JSON-lines label files the project's questions can fill."""
    asked = set(project.questions.values_list("kind", flat=True))
    return [f"{name}_jsonl" for name in LABEL_DATASETS if DATASETS[name].kinds & asked]


def snapshot_labels(
    training_round: TrainingRound, on_progress: Callable[[int, int, str], None] | None = None
) -> ExportSnapshot:
    """The round's label snapshot, created (with the round's label filter) and built here,
    synchronously, unless an earlier attempt already built it. Records it on the round with
    the hash of its files and its label count."""
    snapshot = training_round.label_snapshot
    if snapshot is None or snapshot.status == SnapshotStatus.FAILED:
        formats = label_formats(training_round.project)
        if not formats:
            raise RegistryError("The project asks no question a reward model can learn from.")
        snapshot = create_snapshot(
            training_round.project,
            training_round.created_by,
            training_round.label_filter,
            formats,
            run_in_background=False,
        )
        TrainingRound.objects.filter(pk=training_round.pk).update(label_snapshot=snapshot)
    if snapshot.status != SnapshotStatus.SUCCEEDED:
        run_snapshot(snapshot.pk, on_progress)
        snapshot.refresh_from_db()
    if snapshot.status != SnapshotStatus.SUCCEEDED:
        raise RegistryError(f"The label snapshot {snapshot.pk} failed: {snapshot.error}")
    files = label_files(snapshot)
    digest = hashlib.sha256(
        "".join(f"{entry['name']} {entry['sha256']}\n" for entry in files).encode()
    ).hexdigest()
    count = sum(entry["rows"] or 0 for entry in files)
    TrainingRound.objects.filter(pk=training_round.pk).update(
        labels_sha256=digest, labels_count=count
    )
    training_round.label_snapshot = snapshot
    training_round.labels_sha256, training_round.labels_count = digest, count
    return snapshot


def label_files(snapshot: ExportSnapshot) -> list[dict[str, Any]]:
    """The manifest's entries of the snapshot's label files (not its card)."""
    return sorted(
        (entry for entry in snapshot.manifest["files"] if entry["dataset"] in LABEL_DATASETS),
        key=lambda entry: str(entry["name"]),
    )


def label_inputs(snapshot: ExportSnapshot) -> dict[str, Any]:
    """Absolute paths of the snapshot's label files by split, the rows of each data set, and
    the project's Likert attributes with their scale: what a stage process reads."""
    directory = snapshot_dir(snapshot)
    files = label_files(snapshot)
    by_split: dict[str, list[str]] = {"train": [], "test": []}
    rows: dict[str, int] = {}
    for entry in files:
        if entry["rows"]:
            by_split.setdefault(entry["split"], []).append(str(directory / entry["name"]))
        rows[entry["dataset"]] = rows.get(entry["dataset"], 0) + (entry["rows"] or 0)
    # From the snapshot's manifest file, not its row: PostgreSQL's jsonb keeps no key order,
    # and the attributes' order is the questions' (the first drives a Likert-only reward).
    written = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    scales = written.get("likert_attributes", {})
    first = next(iter(scales.values()), None)
    return {
        "labels": by_split,
        "rows": rows,
        "likert": {"attributes": list(scales), "scale": first},
    }


# Versions


@transaction.atomic
def register_version(
    round_id: int, worker: str, checkpoint_dir: str, metrics: Mapping[str, Any]
) -> ModelVersion | None:
    """The round's model version, created once: a redelivered or resumed round gets the one it
    registered before. None when the round is no longer this worker's."""
    training_round = (
        TrainingRound.objects.select_for_update(of=("self",))
        .select_related("project", "result_version")
        .filter(pk=round_id, state=RoundState.RUNNING, worker=worker)
        .first()
    )
    if training_round is None:
        return None
    if training_round.result_version is not None:
        return training_round.result_version
    parent = None if training_round.kind == "pretrain" else base_version(training_round)
    version = ModelVersion.objects.create(
        name=f"{training_round.project.slug}-r{training_round.pk}",
        parent=parent,
        checkpoint_dir=checkpoint_dir,
        metrics=dict(metrics),
    )
    training_round.result_version = version
    training_round.save(update_fields=["result_version"])
    return version


def promote(project: Project, version: ModelVersion) -> None:
    """Make `version` the one that samples new responses for `project`."""
    if not version.checkpoint_dir:
        raise RegistryError(f"Model version {version.name} has no checkpoint to serve.")
    Project.objects.filter(pk=project.pk).update(serving_version=version)
    project.serving_version = version


# Samples


@transaction.atomic
def add_samples(
    round_id: int,
    worker: str,
    version: ModelVersion,
    parent: ModelVersion | None,
    samples: Sequence[Mapping[str, Any]],
    sampling: Mapping[str, Any],
) -> int | None:
    """Store the sampled responses and queue their items, once per round: the round's
    `samples_added` is set by a conditional update in this same transaction. Returns how many
    responses were added (None when the round is no longer this worker's, or already added).

    samples: {"prompt_id", "which": "new" | "parent", "text"} in sampling order. With parent
    samples, a pairwise project gets blind pairs of new against parent on the same prompt
    (the i-th sample of each); otherwise items are made as the project's task type says. No
    item shows the same text twice (`_item_plan`).
    """
    taken = TrainingRound.objects.filter(
        pk=round_id, state=RoundState.RUNNING, worker=worker, samples_added__isnull=True
    ).update(samples_added=len(samples))
    if not taken:
        return None
    training_round = TrainingRound.objects.select_related("project").get(pk=round_id)
    project = training_round.project
    versions = {"new": version, "parent": parent}
    responses = Response.objects.bulk_create(
        Response(
            prompt_id=row["prompt_id"],
            text=str(row["text"]).replace("\x00", "\ufffd"),  # PostgreSQL text refuses NUL
            model_version=versions[row["which"]],
            sampling={**sampling, "round": round_id},
        )
        for row in samples
    )
    prompts = Prompt.objects.in_bulk({row["prompt_id"] for row in samples})
    create_items_in_bulk(project, _item_plan(project, prompts, responses, samples))
    return len(responses)


def blank_samples(samples: Sequence[Mapping[str, Any]]) -> int:
    """How many samples are blank (the model ended at once, or wrote only spaces). They are
    queued like any other: people see the empty answer and judge it (an empty reply losing to
    its parent's is the verdict a round must hear), and label snapshots leave such labels out
    (`exports.rows.with_text`), since no trainer takes a response without text."""
    return sum(is_blank(str(row["text"])) for row in samples)


def identical_samples(samples: Sequence[Mapping[str, Any]]) -> int:
    """How many new samples are the same answer (`exports.rows.text_key`) as the parent's
    sample drawn beside them (the i-th of the same prompt, with the same seed). None of them
    is shown as a pair with it (`_item_plan`): a vote between a text and itself judges
    nothing, and its strict answer could never be a training row."""
    drawn: dict[tuple[int, str], list[str]] = {}
    for row in samples:
        drawn.setdefault((row["prompt_id"], row["which"]), []).append(text_key(str(row["text"])))
    return sum(
        new == parent
        for (prompt_id, which), texts in drawn.items()
        if which == "new"
        for new, parent in zip(texts, drawn.get((prompt_id, "parent"), []), strict=False)
    )


def _item_plan(
    project: Project,
    prompts: Mapping[int, Prompt],
    responses: Sequence[Response],
    samples: Sequence[Mapping[str, Any]],
) -> list[ItemPlan]:
    """The items of each prompt's samples; none shows the same answer twice. A pairwise
    project pairs each new sample with its parent's (the i-th), or, where the two are the
    same text, with another parent sample of the prompt that no pair took; a new sample left
    without one is queued as a version without a parent is, against the other new samples."""
    by_prompt: dict[int, dict[str, list[Response]]] = {}
    for response, row in zip(responses, samples, strict=True):
        by_prompt.setdefault(row["prompt_id"], {}).setdefault(row["which"], []).append(response)
    plan: list[ItemPlan] = []
    for prompt_id, sides in by_prompt.items():
        new, old = sides.get("new", []), sides.get("parent", [])
        if project.task_type == TaskType.PAIRWISE and old:
            groups, unpaired = _blind_pairs(new, old)
            groups += _distinct_groups(project, unpaired)
        else:
            groups = _distinct_groups(project, [*new, *old])
        plan += [(prompts[prompt_id], group, False) for group in groups]
    return plan


def _blind_pairs(
    new: Sequence[Response], old: Sequence[Response]
) -> tuple[list[list[Response]], list[Response]]:
    """Pairs of new against parent with different texts, and the new samples left unpaired:
    first the i-th of each; then each new sample that had the same text as its parent's takes
    the first parent sample no pair took whose text differs."""
    pairs: list[list[Response]] = []
    unpaired: list[Response] = []
    free = list(old[len(new) :])
    for index, response in enumerate(new):
        parent = old[index] if index < len(old) else None
        if parent is not None and text_key(parent.text) != text_key(response.text):
            pairs.append([response, parent])
            continue
        unpaired.append(response)
        if parent is not None:
            free.append(parent)
    left: list[Response] = []
    for response in unpaired:
        other = next((p for p in free if text_key(p.text) != text_key(response.text)), None)
        if other is None:
            left.append(response)
        else:
            free.remove(other)
            pairs.append([response, other])
    return pairs, left


def _distinct_groups(project: Project, responses: Sequence[Response]) -> list[list[Response]]:
    """`item_groups` of the responses, where an item that shows several (pairs, rankings)
    holds each answer once: a later response with the same text as an earlier one is not
    queued. One response per item (ratings, rewrites) needs no such care."""
    if project.task_type not in (TaskType.PAIRWISE, TaskType.RANKING):
        return item_groups(project, responses)
    first: dict[str, Response] = {}
    for response in responses:
        first.setdefault(text_key(response.text), response)
    return item_groups(project, list(first.values()))


def wants_parent_samples(project: Project) -> bool:
    """Whether new samples are judged against the parent's in one item (pairs, rankings)."""
    return project.task_type in (TaskType.PAIRWISE, TaskType.RANKING)
