"""quality_reports.py: the quality figures read from live answers in the database."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from tests.webapp.annotation.conftest import AddItems, MakeProject
from tests.webapp.annotation.scripted import T0, response_ids, submit
from webapp.accounts.models import User
from webapp.annotation import quality_reports as reports
from webapp.annotation.models import (
    Flag,
    FlagStatus,
    GoldAnswer,
    Item,
    Membership,
    Question,
    Skip,
)
from webapp.annotation.questions import TaskType

MakeUser = Callable[..., User]


def scores(helpfulness: int, correctness: int = 3) -> dict[str, dict[str, int]]:
    return {"helpfulness": {"score": helpfulness}, "correctness": {"score": correctness}}


def test_gold_accuracy_counts_live_answers_within_the_tolerance(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project = make_project(TaskType.RATING)
    (gold,) = add_items(project, prompts=1, responses=1, gold=True)
    helpfulness = Question.objects.get(project=project, key="helpfulness")
    GoldAnswer.objects.create(item=gold, question=helpfulness, value={"score": 4}, tolerance=1)
    submit(gold, annotator, scores(5))  # within 1 of 4
    submit(gold, second_annotator, scores(4), undone=True)  # undone: not counted
    submit(gold, second_annotator, scores(2))

    accuracy = reports.gold_by_annotator(project)

    assert (accuracy[annotator.pk].correct, accuracy[annotator.pk].total) == (1, 1)
    assert (accuracy[second_annotator.pk].correct, accuracy[second_annotator.pk].total) == (0, 1)
    assert reports.gold_by_annotator(None)[annotator.pk].total == 1
    assert reports.pooled(accuracy.values()).accuracy == 0.5


def test_agreement_reads_only_items_answered_by_two_and_says_when_it_was_capped(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project = make_project(TaskType.RATING)
    first, second, third, lonely = add_items(project, prompts=4, responses=1)
    for item, (a, b) in zip([first, second, third], [(1, 1), (5, 5), (1, 5)], strict=True):
        submit(item, annotator, scores(a))
        submit(item, second_annotator, scores(b))
    submit(lonely, annotator, scores(3))

    sample = reports.label_sample(project)
    rows = {q.key: r for q, r in reports.project_agreement(project.questions.all(), sample)}

    assert (sample.items, sample.capped) == (3, False)
    (helpfulness,) = rows["helpfulness"]
    assert helpfulness.items == 3 and helpfulness.labels == 6
    assert helpfulness.pairwise == pytest.approx(2 / 3)
    assert helpfulness.alpha is not None and 0 < helpfulness.alpha < 1
    assert "rationale" not in rows  # free text has no agreement
    capped = reports.label_sample(project, cap=2)
    assert (capped.items, capped.capped) == (2, True)
    assert third.pk in capped.values[helpfulness_id(project)]  # the newest items are kept


def helpfulness_id(project: object) -> int:
    return Question.objects.get(project=project, key="helpfulness").pk


def test_undone_answers_take_no_part_in_agreement(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project = make_project(TaskType.RATING)
    (item,) = add_items(project, prompts=1, responses=1)
    submit(item, annotator, scores(1))
    submit(item, second_annotator, scores(5), undone=True)
    assert reports.label_sample(project).items == 0


def test_likert_distribution_lists_every_scale_point(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project = make_project(TaskType.RATING)
    first, second = add_items(project, prompts=2, responses=1)
    submit(first, annotator, scores(2))
    submit(first, second_annotator, scores(5))
    submit(second, annotator, scores(5))
    submit(second, second_annotator, scores(1), undone=True)
    question = Question.objects.get(project=project, key="helpfulness")
    assert reports.likert_distribution(question) == [(1, 0), (2, 1), (3, 0), (4, 0), (5, 2)]


def test_pair_consensus_estimates_which_response_wins(
    make_project: MakeProject,
    add_items: AddItems,
    annotator: User,
    second_annotator: User,
    make_user: MakeUser,
) -> None:
    project = make_project(TaskType.PAIRWISE)
    (item,) = add_items(project, prompts=1, responses=2)
    left, right = response_ids(item)
    third = make_user("ann3", "annotator")
    for who, winner in [(annotator, right), (second_annotator, right), (third, left)]:
        submit(item, who, {"preference": {"outcome": "win", "winner": winner, "strength": 2}})

    page, rows = reports.consensus_page(project, 1)

    (row,) = rows
    assert page.paginator.count == 1 and row.item == item and row.answers == 3
    preference = next(q for q in row.questions if q.key == "preference")
    assert preference.pair is not None and preference.pair.p_a is not None
    assert (preference.pair.a_wins, preference.pair.b_wins) == (1, 2)
    assert preference.pair.p_a < 0.5
    assert preference.majority_text == "B"


def test_consensus_pages_hold_answered_items_newest_first(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(TaskType.RATING)
    items = add_items(project, prompts=reports.CONSENSUS_PAGE_SIZE + 2, responses=1)
    for item in items[1:]:
        submit(item, annotator, scores(3))
    first, _ = reports.consensus_page(project, 1)
    last, rows = reports.consensus_page(project, "2")
    assert first.paginator.count == len(items) - 1
    assert [row.item for row in rows] == [items[1]]
    assert reports.consensus_page(project, "not a page")[0].number == 1
    assert last.number == 2


def test_annotator_statistics_from_scripted_submissions(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project = make_project(TaskType.RATING, members=[annotator, second_annotator])
    a, b, c, d = add_items(project, prompts=4, responses=1)
    # Served at 0 s and 90 s, submitted 60 s later each, 50 s and 40 s of active time.
    submit(a, annotator, scores(4), served=T0, seconds=60, active_ms=50_000)
    submit(b, annotator, scores(2), served=T0 + timedelta(seconds=90), seconds=60, active_ms=40_000)
    submit(c, annotator, scores(1), served=T0 + timedelta(seconds=200), undone=True)
    submit(a, second_annotator, scores(4), served=T0, active_ms=10_000)
    submit(b, second_annotator, scores(5), served=T0, active_ms=10_000)
    Skip.objects.create(item=d, annotator=annotator)
    Flag.objects.create(item=c, annotator=annotator, reason="unsafe")

    stats = {s.user: s for s in reports.annotator_stats(project)}

    mine = stats[annotator]
    assert mine.submissions == 2
    assert mine.active_seconds == 90 and mine.median_active_seconds == 45
    assert mine.wall_seconds == 150  # 0 s .. 150 s in one session
    assert mine.per_active_hour == pytest.approx(2 / (90 / 3600))
    assert mine.per_wall_hour == pytest.approx(2 / (150 / 3600))
    assert (mine.skips, mine.flags, mine.undos) == (1, 1, 1)
    # item a: 4 vs 4 agrees; item b: 2 vs 5 does not (both questions: correctness 3 vs 3 twice)
    assert (mine.consensus.correct, mine.consensus.total) == (3, 4)
    assert mine.membership is not None and mine.membership.project == project
    assert stats[second_annotator].submissions == 2


def test_annotator_statistics_cover_the_chosen_period_and_list_idle_members(
    make_project: MakeProject,
    add_items: AddItems,
    annotator: User,
    second_annotator: User,
) -> None:
    project = make_project(TaskType.RATING, members=[second_annotator])
    old, new = add_items(project, prompts=2, responses=1)
    submit(old, annotator, scores(3), served=T0)
    submit(new, annotator, scores(3))

    recent = {s.user: s for s in reports.annotator_stats(project, since=T0 + timedelta(days=1))}

    assert recent[annotator].submissions == 1
    assert recent[second_annotator].submissions == 0
    assert recent[second_annotator].per_active_hour is None
    assert recent[annotator].membership is None  # did work, but is no longer a member


def test_statistics_across_projects_count_every_project(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    first, second = make_project(TaskType.RATING), make_project(TaskType.RATING)
    submit(add_items(first, prompts=1, responses=1)[0], annotator, scores(3))
    submit(add_items(second, prompts=1, responses=1)[0], annotator, scores(3))
    (row,) = reports.annotator_stats()
    assert row.submissions == 2 and row.membership is None


def test_sorting_puts_missing_figures_last_and_falls_back_to_the_name(
    make_user: MakeUser,
) -> None:
    zed, amy, bob = make_user("zed"), make_user("amy"), make_user("bob")
    rows = [
        reports.AnnotatorStats(user=zed, submissions=5),
        reports.AnnotatorStats(user=amy, submissions=9, active_seconds=3600),
        reports.AnnotatorStats(user=bob, submissions=1, active_seconds=60),
    ]
    by_count, used = reports.sort_stats(rows, "-submissions")
    assert [r.user for r in by_count] == [amy, zed, bob] and used == "-submissions"
    by_rate, _ = reports.sort_stats(rows, "active_rate")
    assert [r.user for r in by_rate] == [amy, bob, zed]  # zed has no active time
    by_name, used = reports.sort_stats(rows, "password")
    assert [r.user for r in by_name] == [amy, bob, zed] and used == "name"


def test_the_overview_counts_items_labels_and_open_flags_per_project(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project, empty = make_project(TaskType.RATING), make_project(TaskType.PAIRWISE)
    first, second = add_items(project, prompts=2, responses=1)
    Item.objects.filter(pk=first.pk).update(is_complete=True)
    submit(first, annotator, scores(4))
    submit(first, second_annotator, scores(4))
    submit(second, second_annotator, scores(4), undone=True)
    Flag.objects.create(item=second, annotator=annotator, reason="unsafe")
    Flag.objects.create(
        item=first,
        annotator=second_annotator,
        reason="unsafe",
        status=FlagStatus.DISMISSED,
        reviewed_at=T0,
    )

    summary, nothing = reports.project_summaries([project, empty])

    assert (summary.items, summary.complete, summary.labels, summary.open_flags) == (2, 1, 4, 1)
    assert summary.sample_items == 1
    assert [q.key for q, _ in summary.agreements] == ["helpfulness", "correctness", "flags"]
    assert (nothing.items, nothing.labels, nothing.gold.accuracy) == (0, 0, None)


def test_a_membership_row_is_listed_once_per_member(
    make_project: MakeProject, annotator: User
) -> None:
    project = make_project(TaskType.RATING, members=[annotator])
    Membership.objects.filter(project=project).update(paused=True, paused_reason="checking")
    (row,) = reports.annotator_stats(project)
    assert row.membership is not None and row.membership.paused


def test_disputed_items_come_most_split_first(
    make_project: MakeProject,
    add_items: AddItems,
    annotator: User,
    second_annotator: User,
    make_user: MakeUser,
) -> None:
    project = make_project(TaskType.RATING)
    third = make_user("ann3", "annotator")
    agreed, two_to_one, all_apart = add_items(project, prompts=3, responses=1)
    for item, trio in [(agreed, (3, 3, 3)), (two_to_one, (3, 3, 4)), (all_apart, (1, 3, 5))]:
        for who, score in zip([annotator, second_annotator, third], trio, strict=True):
            submit(item, who, {"helpfulness": {"score": score}})

    questions = list(project.questions.all())
    split = reports.disputed_items(questions, reports.label_sample(project))

    assert split == [all_apart.pk, two_to_one.pk]
    page, rows = reports.consensus_page(project, 1, only=split)
    assert page.paginator.count == 2 and [row.item for row in rows] == [all_apart, two_to_one]


def test_gold_accuracy_per_question_pools_every_annotator(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project = make_project(TaskType.RATING)
    (gold,) = add_items(project, prompts=1, responses=1, gold=True)
    helpfulness, correctness = (
        project.questions.get(key=k) for k in ("helpfulness", "correctness")
    )
    GoldAnswer.objects.create(item=gold, question=helpfulness, value={"score": 4})
    GoldAnswer.objects.create(item=gold, question=correctness, value={"score": 2})
    submit(gold, annotator, scores(4, 2))
    submit(gold, second_annotator, scores(4, 5))

    by_question = reports.gold_by_question(project)

    assert by_question[helpfulness.pk].accuracy == 1.0
    assert by_question[correctness.pk].accuracy == 0.5
