"""The registry's side of a round: its label snapshot, one model version, one batch of samples
in the queue (blind pairs of new against parent), the latest reward model, promotion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.webapp.annotation.conftest import AddItems, MakeProject, add_items, make_project  # noqa: F401 (fixtures)
from tests.webapp.annotation.scripted import response_ids
from tests.webapp.exports.conftest import AddLabel, add_label, export_dir, win  # noqa: F401 (fixtures)
from webapp.accounts.models import User
from webapp.annotation.models import Item, ModelVersion, Project, Response
from webapp.annotation.questions import TaskType
from webapp.exports.building import snapshot_dir
from webapp.exports.models import ExportSnapshot
from webapp.training import registry, rounds
from webapp.training.models import RoundKind, RoundState, TrainingRound
from webapp.training.presets import build_config

pytestmark = pytest.mark.django_db


@pytest.fixture
def base() -> ModelVersion:
    return ModelVersion.objects.create(name="base", checkpoint_dir="versions/base")


@pytest.fixture
def project(
    make_project: MakeProject,  # noqa: F811
    add_items: AddItems,  # noqa: F811
    add_label: AddLabel,  # noqa: F811
    annotator: User,
    base: ModelVersion,
) -> Project:
    project = make_project(TaskType.PAIRWISE, slug="reg", serving_version=base)
    for item in add_items(project, prompts=6):
        add_label(item, annotator, "preference", win(item, 0))
    return project


def running_round(project: Project, kind: str = RoundKind.FULL, **fields: Any) -> TrainingRound:
    training_round = TrainingRound.objects.create(
        project=project, kind=kind, preset="ci", config=build_config(kind, "ci"), **fields
    )
    assert rounds.claim(training_round.pk, "w")
    return TrainingRound.objects.select_related("project").get(pk=training_round.pk)


def samples(project: Project, per_prompt: int = 2) -> list[dict[str, Any]]:
    rows = []
    for prompt in project.prompts.all()[:3]:
        for which in ("new", "parent"):
            rows += [
                {"prompt_id": prompt.pk, "which": which, "text": f"{which} {k}\x00"}
                for k in range(per_prompt)
            ]
    return rows


def test_a_round_registers_one_version_whatever_happens_twice(
    project: Project, base: ModelVersion
) -> None:
    training_round = running_round(project)
    first = registry.register_version(
        training_round.pk, "w", "rounds/1/stages/ppo/model", {"kl": 1}
    )
    again = registry.register_version(training_round.pk, "w", "elsewhere", {})
    assert first is not None and again == first
    assert first.name == f"reg-r{training_round.pk}" and first.parent == base
    assert first.checkpoint_dir == "rounds/1/stages/ppo/model" and first.metrics == {"kl": 1}
    assert ModelVersion.objects.count() == 2
    assert TrainingRound.objects.get(pk=training_round.pk).result_version == first


def test_a_worker_that_lost_the_round_registers_nothing(project: Project) -> None:
    training_round = running_round(project)
    assert registry.register_version(training_round.pk, "other", "x", {}) is None
    assert ModelVersion.objects.count() == 1


def test_a_pretrained_version_has_no_parent(project: Project) -> None:
    training_round = running_round(project, kind=RoundKind.PRETRAIN)
    version = registry.register_version(training_round.pk, "w", "x", {})
    assert version is not None and version.parent is None


def test_samples_become_blind_pairs_of_new_against_parent_once(
    project: Project, base: ModelVersion
) -> None:
    training_round = running_round(project)
    new = ModelVersion.objects.create(name="new", parent=base, checkpoint_dir="x")
    rows = samples(project)
    before = Item.objects.count()
    added = registry.add_samples(training_round.pk, "w", new, base, rows, {"temperature": 1.0})
    assert added == len(rows) == 12
    assert registry.add_samples(training_round.pk, "w", new, base, rows, {}) is None
    assert Response.objects.filter(model_version=new).count() == 6
    items = Item.objects.all()[before:]
    assert len(items) == 6
    for item in items:
        responses = list(item.responses.all())
        assert {r.model_version for r in responses} == {new, base}
        assert all(r.prompt_id == item.prompt_id and "\x00" not in r.text for r in responses)
        assert responses[0].sampling == {"temperature": 1.0, "round": training_round.pk}
    assert TrainingRound.objects.get(pk=training_round.pk).samples_added == 12


def test_a_blank_sample_is_queued_for_people_to_judge_and_counted(
    project: Project, base: ModelVersion
) -> None:
    """A policy that ends at once writes nothing: people must see that answer lose to its
    parent's (leaving the pair out would hide the round's worst samples from the votes); the
    label snapshot leaves such labels out (tests/webapp/exports)."""
    training_round = running_round(project)
    new = ModelVersion.objects.create(name="new", parent=base, checkpoint_dir="x")
    rows = samples(project)
    first_new = next(i for i, row in enumerate(rows) if row["which"] == "new")
    rows[first_new] = {**rows[first_new], "text": ""}
    assert registry.blank_samples(rows) == 1
    before = Item.objects.count()
    assert registry.add_samples(training_round.pk, "w", new, base, rows, {}) == 12
    assert Item.objects.count() - before == 6
    [blank] = Response.objects.filter(text="")
    assert blank.model_version == new
    [pair] = Item.objects.filter(responses=blank)
    assert {r.model_version for r in pair.responses.all()} == {new, base}


def shown_texts(items: list[Item]) -> list[list[str]]:
    return [[r.text.strip() for r in item.responses.all()] for item in items]


def test_a_sample_identical_to_its_parents_is_never_shown_as_a_pair_with_it(
    project: Project, base: ModelVersion
) -> None:
    """Sampled with its parent's seed, a version that barely moved writes the parent's text
    word for word: a strict vote between a text and itself would be exported as chosen ==
    rejected, and the next round would fail on that row. Such a sample is paired with
    another of the parent's samples of the prompt, and with none where all are the same."""
    training_round = running_round(project)
    new = ModelVersion.objects.create(name="new", parent=base, checkpoint_dir="x")
    drawn = {  # per prompt: the new version's two samples, then the parent's
        0: (["A", "B"], ["A", "B"]),  # each the same as the parent's beside it: swapped
        1: (["C", "D"], ["C\n", "E"]),  # the same but for white space at the end
        2: (["F", "G"], ["F", "F"]),  # no other parent text for F
    }
    prompts = list(project.prompts.all()[:3])
    rows = [
        {"prompt_id": prompts[number].pk, "which": which, "text": text}
        for number, sides in drawn.items()
        for which, texts in zip(("new", "parent"), sides, strict=True)
        for text in texts
    ]
    before = Item.objects.count()
    assert registry.add_samples(training_round.pk, "w", new, base, rows, {}) == 12
    items = list(Item.objects.all()[before:])
    assert sorted(sorted(texts) for texts in shown_texts(items)) == [
        ["A", "B"],
        ["A", "B"],
        ["D", "E"],
        ["F", "G"],
    ]
    assert {r.model_version for item in items for r in item.responses.all()} == {new, base}
    assert registry.identical_samples(rows) == 4  # logged by the generate stage


def test_a_ranking_item_never_lists_the_same_text_twice(
    make_project: MakeProject,  # noqa: F811
    add_items: AddItems,  # noqa: F811
    base: ModelVersion,
) -> None:
    ranked = make_project(TaskType.RANKING, slug="ranked", serving_version=base)
    add_items(ranked, prompts=1, responses=4)
    training_round = running_round(ranked)
    new = ModelVersion.objects.create(name="new", parent=base, checkpoint_dir="x")
    prompt = ranked.prompts.get()
    rows = [
        {"prompt_id": prompt.pk, "which": which, "text": text}
        for which, text in [("new", "A"), ("new", "B"), ("parent", " A"), ("parent", "C")]
    ]
    before = Item.objects.count()
    assert registry.add_samples(training_round.pk, "w", new, base, rows, {}) == 4
    [item] = Item.objects.all()[before:]
    assert sorted(shown_texts([item])[0]) == ["A", "B", "C"]


def test_samples_without_a_parent_are_paired_with_each_other(project: Project) -> None:
    training_round = running_round(project, kind=RoundKind.GENERATE)
    version = project.serving_version
    assert version is not None
    rows = [row for row in samples(project) if row["which"] == "new"]
    before = Item.objects.count()
    assert registry.add_samples(training_round.pk, "w", version, None, rows, {}) == 6
    assert Item.objects.count() - before == 3  # two samples of each prompt make a pair


def test_the_label_snapshot_is_built_once_with_its_hash(project: Project) -> None:
    training_round = running_round(project)
    snapshot = registry.snapshot_labels(training_round)
    assert snapshot.formats == ["pairs_jsonl"]
    training_round.refresh_from_db()
    assert training_round.label_snapshot == snapshot
    assert training_round.labels_count == 6 and len(training_round.labels_sha256) == 64
    assert registry.snapshot_labels(training_round) == snapshot  # a resume reuses it
    assert ExportSnapshot.objects.count() == 1
    inputs = registry.label_inputs(snapshot)
    assert inputs["rows"] == {"pairs": 6}
    assert all(Path(path).is_file() for path in inputs["labels"]["train"])


def test_a_vote_on_a_blank_sample_counts_in_the_snapshot_but_gives_no_row(
    project: Project,
    annotator: User,
    add_label: AddLabel,  # noqa: F811
) -> None:
    """The next round's label snapshot after people judged an empty answer: its trainers get
    only pairs with text on both sides, and the manifest says how many labels were left out."""
    item = Item.objects.filter(project=project).first()
    assert item is not None
    blank = item.responses.first()
    assert blank is not None
    Response.objects.filter(pk=blank.pk).update(text="")
    snapshot = registry.snapshot_labels(running_round(project))
    assert registry.label_inputs(snapshot)["rows"] == {"pairs": 5}
    assert snapshot.manifest["counts"]["pairs"]["labels_on_blank_responses_excluded"] == 1
    [train] = registry.label_inputs(snapshot)["labels"]["train"]
    for line in Path(train).read_text().splitlines():
        assert '"chosen": ""' not in line and '"rejected": ""' not in line


def read_every_label_file(snapshot: ExportSnapshot) -> int:
    """The records in every label file of the snapshot, as the round's stages read them."""
    from rlhf_core.records import read_records

    directory = snapshot_dir(snapshot)
    return sum(len(read_records(directory / e["name"])) for e in registry.label_files(snapshot))


def test_a_strict_vote_on_an_identical_pair_is_left_out_of_the_next_rounds_labels(
    project: Project,
) -> None:
    """Pairs queued before texts were compared showed one text as A and B, and people answered
    them: such a row would be chosen == rejected, which rlhf_core.records refuses, so the next
    round failed at its evaluate stage, and again on every resume (it re-reads the snapshot)."""
    item = Item.objects.filter(project=project).first()
    assert item is not None
    first, second = item.responses.all()
    Response.objects.filter(pk=second.pk).update(text=first.text)
    snapshot = registry.snapshot_labels(running_round(project))
    assert registry.label_inputs(snapshot)["rows"] == {"pairs": 5}
    assert snapshot.manifest["counts"]["pairs"]["labels_on_identical_responses_excluded"] == 1
    assert read_every_label_file(snapshot) == 5


def test_a_ranking_that_lists_one_text_twice_is_left_out_of_the_next_rounds_labels(
    make_project: MakeProject,  # noqa: F811
    add_items: AddItems,  # noqa: F811
    add_label: AddLabel,  # noqa: F811
    annotator: User,
    base: ModelVersion,
) -> None:
    ranked = make_project(TaskType.RANKING, slug="ranked", serving_version=base, ranking_size=3)
    repeated, fine = add_items(ranked, prompts=2, responses=3)
    for item in (repeated, fine):
        add_label(item, annotator, "ranking", {"order": response_ids(item)})
    first, second, _ = repeated.responses.all()
    Response.objects.filter(pk=second.pk).update(text=first.text)
    snapshot = registry.snapshot_labels(running_round(ranked, kind=RoundKind.REWARD))
    assert registry.label_inputs(snapshot)["rows"] == {"rankings": 1}
    assert snapshot.manifest["counts"]["rankings"]["labels_on_identical_responses_excluded"] == 1
    assert read_every_label_file(snapshot) == 1


def test_label_inputs_name_the_likert_attributes_in_the_order_of_the_questions(
    make_project: MakeProject,  # noqa: F811
    add_items: AddItems,  # noqa: F811
    add_label: AddLabel,  # noqa: F811
    annotator: User,
    base: ModelVersion,
) -> None:
    rating = make_project(TaskType.RATING, slug="rated", serving_version=base)
    (item,) = add_items(rating, prompts=1, responses=1)
    add_label(item, annotator, "helpfulness", {"score": 4})
    add_label(item, annotator, "correctness", {"score": 2})
    snapshot = registry.snapshot_labels(running_round(rating, kind=RoundKind.REWARD))
    # Helpfulness is asked first, so it drives a Likert-only reward model (PostgreSQL's jsonb
    # row of the manifest lists correctness first: it orders keys by length, then bytes).
    likert = registry.label_inputs(snapshot)["likert"]
    assert likert == {"attributes": ["helpfulness", "correctness"], "scale": [1, 5]}


def test_the_latest_reward_model_comes_from_a_succeeded_round_that_fitted_one(
    project: Project,
) -> None:
    assert registry.latest_reward_model(project) is None
    fitted = TrainingRound.objects.create(
        project=project,
        kind=RoundKind.REWARD,
        preset="ci",
        state=RoundState.SUCCEEDED,
        stages_done=["labels", "reward"],
        run_dir="rounds/7",
    )
    TrainingRound.objects.create(
        project=project, kind=RoundKind.REWARD, preset="ci", state=RoundState.FAILED
    )
    assert registry.latest_reward_model(project) == "rounds/7/stages/reward/model"
    assert registry.latest_reward_model(project, exclude=fitted.pk) is None


def test_prompts_with_the_fewest_responses_come_first(project: Project) -> None:
    answered = project.prompts.first()
    assert answered is not None
    Response.objects.create(prompt=answered, text="one more")
    chosen = registry.project_prompts(project, 5, seed=1)
    assert len(chosen) == 5 and answered not in chosen
    assert registry.project_prompts(project, 5, seed=1) == chosen  # seeded


def test_promote_makes_a_version_serve_the_project(project: Project) -> None:
    new = ModelVersion.objects.create(name="new", checkpoint_dir="x")
    registry.promote(project, new)
    assert Project.objects.get(pk=project.pk).serving_version == new
    with pytest.raises(registry.RegistryError, match="no checkpoint"):
        registry.promote(project, ModelVersion.objects.create(name="empty"))
