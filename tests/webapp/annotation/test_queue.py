"""The queue: which item an annotator gets next, and the lease that holds it for them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection, connections
from django.utils import timezone

from tests.conftest import missing_service
from tests.webapp.annotation.conftest import AddItems, MakeProject
from webapp.accounts.models import Role, User
from webapp.annotation import labelling, queue
from webapp.annotation.models import (
    AnnotationEvent,
    EventKind,
    Flag,
    FlagStatus,
    Item,
    Lease,
    Membership,
    ModelVersion,
    Skip,
    Submission,
)
from webapp.annotation.questions import TaskType
from webapp.annotation.queue import AnnotationError, next_item

RATING = {"helpfulness": {"score": 4}, "correctness": {"score": 3}}


def answer(item: Item, user: User) -> None:
    labelling.submit(item, user, RATING, active_ms=1000)


def test_a_member_gets_an_item_under_a_lease_and_a_served_event(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(members=[annotator], lease_seconds=120)
    add_items(project, prompts=2, responses=1)
    now = timezone.now()
    lease = next_item(project, annotator, now=now)
    assert lease is not None
    assert lease.expires_at == now + timedelta(seconds=120)
    assert AnnotationEvent.objects.get().kind == EventKind.SERVED


def test_a_non_member_is_refused_with_403(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project()
    add_items(project)
    with pytest.raises(AnnotationError) as error:
        next_item(project, annotator)
    assert error.value.status == 403
    assert not Lease.objects.exists()


def test_a_paused_member_is_refused_with_the_reason(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(members=[annotator])
    add_items(project)
    Membership.objects.filter(user=annotator).update(paused=True, paused_reason="gold accuracy")
    with pytest.raises(AnnotationError, match="gold accuracy") as error:
        next_item(project, annotator)
    assert error.value.status == 403


def test_an_inactive_project_serves_nothing(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(members=[annotator], is_active=False)
    add_items(project)
    with pytest.raises(AnnotationError) as error:
        next_item(project, annotator)
    assert error.value.status == 403


def test_a_researcher_member_may_not_annotate(
    make_project: MakeProject, add_items: AddItems, researcher: User
) -> None:
    project = make_project(members=[researcher])
    add_items(project)
    with pytest.raises(AnnotationError) as error:
        next_item(project, researcher)
    assert error.value.status == 403


def test_an_admin_member_may_annotate(
    make_project: MakeProject, add_items: AddItems, admin_user: User
) -> None:
    project = make_project(members=[admin_user])
    add_items(project)
    assert next_item(project, admin_user) is not None


def test_a_reload_returns_the_same_lease(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(members=[annotator])
    add_items(project, prompts=3, responses=1)
    first = next_item(project, annotator)
    again = next_item(project, annotator)
    assert first is not None and again is not None
    assert first.pk == again.pk
    assert AnnotationEvent.objects.filter(kind=EventKind.SERVED).count() == 1


def test_an_expired_lease_is_renewed_from_the_moment_it_is_served_again(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(members=[annotator], lease_seconds=60)
    add_items(project, prompts=1, responses=1)
    first = next_item(project, annotator)
    assert first is not None
    later = timezone.now() + timedelta(seconds=120)
    again = next_item(project, annotator, now=later)
    assert again is not None and again.item_id == first.item_id
    renewed = Lease.objects.get()
    assert renewed.created_at == later
    assert renewed.expires_at == later + timedelta(seconds=60)
    assert AnnotationEvent.objects.filter(kind=EventKind.SERVED).count() == 2


def test_an_item_i_answered_is_never_served_to_me_again(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(members=[annotator], overlap=3)
    items = add_items(project, prompts=2, responses=1)
    first = next_item(project, annotator)
    assert first is not None
    answer(first.item, annotator)
    second = next_item(project, annotator)
    assert second is not None and second.item_id != first.item_id
    answer(second.item, annotator)
    assert next_item(project, annotator) is None
    assert {first.item_id, second.item_id} == {i.pk for i in items}


def test_an_undone_submission_makes_the_item_available_again(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(members=[annotator])
    add_items(project, prompts=1, responses=1)
    lease = next_item(project, annotator)
    assert lease is not None
    answer(lease.item, annotator)
    assert next_item(project, annotator) is None
    labelling.undo_last(project, annotator)
    back = next_item(project, annotator)
    assert back is not None and back.item_id == lease.item_id


def test_a_skipped_item_is_never_served_to_me_again(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(members=[annotator])
    add_items(project, prompts=1, responses=1)
    lease = next_item(project, annotator)
    assert lease is not None
    labelling.skip(lease.item, annotator)
    assert next_item(project, annotator) is None
    assert Skip.objects.count() == 1


def test_an_item_with_an_open_flag_leaves_everyones_queue(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project = make_project(members=[annotator, second_annotator], overlap=2)
    add_items(project, prompts=1, responses=1)
    lease = next_item(project, annotator)
    assert lease is not None
    labelling.flag(lease.item, annotator, "unsafe")
    assert next_item(project, second_annotator) is None
    Flag.objects.update(status=FlagStatus.DISMISSED, reviewed_at=timezone.now())
    assert next_item(project, second_annotator) is not None


def test_a_resolved_flag_keeps_its_item_out_of_the_queue_for_good(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project = make_project(members=[annotator, second_annotator], overlap=2)
    add_items(project, prompts=1, responses=1)
    lease = next_item(project, annotator)
    assert lease is not None
    labelling.flag(lease.item, annotator, "unsafe")
    Flag.objects.update(status=FlagStatus.RESOLVED, reviewed_at=timezone.now())
    assert next_item(project, second_annotator) is None


def test_a_held_lease_on_an_item_flagged_by_someone_else_is_dropped(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project = make_project(members=[annotator, second_annotator], overlap=2)
    add_items(project, prompts=1, responses=1)
    mine = next_item(project, annotator)
    theirs = next_item(project, second_annotator)
    assert mine is not None and theirs is not None
    labelling.flag(theirs.item, second_annotator, "unsafe")
    assert next_item(project, annotator) is None


def test_a_complete_item_is_not_served(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project = make_project(members=[annotator, second_annotator])
    add_items(project, prompts=1, responses=1)
    lease = next_item(project, annotator)
    assert lease is not None
    answer(lease.item, annotator)
    lease.item.refresh_from_db()
    assert lease.item.is_complete
    assert next_item(project, second_annotator) is None


def test_the_overlap_counts_live_submissions_and_others_unexpired_leases(
    make_project: MakeProject, add_items: AddItems, make_user: Callable[..., User]
) -> None:
    people = [make_user(f"a{n}", Role.ANNOTATOR) for n in range(4)]
    project = make_project(members=people, overlap=2)
    add_items(project, prompts=1, responses=1)
    first = next_item(project, people[0])
    assert first is not None
    answer(first.item, people[0])  # one live submission
    assert next_item(project, people[1]) is not None  # one lease: the overlap is reached
    assert next_item(project, people[2]) is None


def test_an_expired_lease_of_someone_else_frees_its_slot(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project = make_project(members=[annotator, second_annotator], lease_seconds=60)
    add_items(project, prompts=1, responses=1)
    assert next_item(project, annotator) is not None
    assert next_item(project, second_annotator) is None
    later = timezone.now() + timedelta(seconds=61)
    assert next_item(project, second_annotator, now=later) is not None


def test_gold_items_go_to_every_annotator_beyond_the_overlap(
    make_project: MakeProject, add_items: AddItems, make_user: Callable[..., User]
) -> None:
    people = [make_user(f"g{n}", Role.ANNOTATOR) for n in range(3)]
    project = make_project(members=people, overlap=1, gold_share=1.0)
    (gold,) = add_items(project, prompts=1, responses=1, gold=True)
    for person in people:
        lease = next_item(project, person)
        assert lease is not None and lease.item_id == gold.pk
        answer(lease.item, person)
    gold.refresh_from_db()
    assert gold.live_submissions == 3 and not gold.is_complete


def test_a_gold_item_is_served_to_an_annotator_once(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(members=[annotator], gold_share=1.0)
    add_items(project, prompts=1, responses=1, gold=True)
    lease = next_item(project, annotator)
    assert lease is not None
    answer(lease.item, annotator)
    assert next_item(project, annotator) is None


def test_gold_share_draws_from_the_gold_pool(
    make_project: MakeProject,
    add_items: AddItems,
    annotator: User,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = make_project(members=[annotator], gold_share=0.3)
    add_items(project, prompts=2, responses=1)
    add_items(project, prompts=2, responses=1, gold=True)
    monkeypatch.setattr(queue.random, "random", lambda: 0.29)
    lease = next_item(project, annotator)
    assert lease is not None and lease.item.is_gold
    answer(lease.item, annotator)
    monkeypatch.setattr(queue.random, "random", lambda: 0.31)
    lease = next_item(project, annotator)
    assert lease is not None and not lease.item.is_gold


def test_an_empty_pool_falls_back_to_the_other(
    make_project: MakeProject,
    add_items: AddItems,
    annotator: User,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = make_project(members=[annotator], gold_share=0.5)
    add_items(project, prompts=1, responses=1)
    monkeypatch.setattr(queue.random, "random", lambda: 0.0)  # wants gold; there is none
    lease = next_item(project, annotator)
    assert lease is not None and not lease.item.is_gold


def test_items_closest_to_completion_come_first(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project = make_project(members=[annotator, second_annotator], overlap=2)
    items = add_items(project, prompts=3, responses=1)
    Lease.objects.create(
        item=items[2], annotator=annotator, expires_at=timezone.now() + timedelta(minutes=5)
    )
    answer(items[2], annotator)
    lease = next_item(project, second_annotator)
    assert lease is not None and lease.item_id == items[2].pk


def test_newer_model_versions_come_before_older_ones_and_none(
    make_project: MakeProject,
    add_items: AddItems,
    annotator: User,
    make_version: Callable[..., ModelVersion],
) -> None:
    project = make_project(members=[annotator], overlap=3)
    old, new = make_version("v1"), make_version("v2")
    unversioned = add_items(project, prompts=1, responses=1)
    older = add_items(project, prompts=1, responses=1, version=old)
    newer = add_items(project, prompts=1, responses=1, version=new)
    order = []
    for _ in range(3):
        lease = next_item(project, annotator)
        assert lease is not None
        order.append(lease.item_id)
        answer(lease.item, annotator)
    assert order == [newer[0].pk, older[0].pk, unversioned[0].pk]


def test_among_equals_the_oldest_item_comes_first(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(members=[annotator])
    items = add_items(project, prompts=3, responses=1)
    lease = next_item(project, annotator)
    assert lease is not None and lease.item_id == min(i.pk for i in items)


def test_a_prompt_writing_project_serves_no_items(
    make_project: MakeProject, annotator: User
) -> None:
    project = make_project(TaskType.PROMPT_WRITING, members=[annotator])
    assert next_item(project, annotator) is None


def test_progress_counts_what_i_did_and_what_is_left(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(members=[annotator])
    add_items(project, prompts=3, responses=1)
    lease = next_item(project, annotator)
    assert lease is not None
    answer(lease.item, annotator)
    progress = queue.progress(project, annotator)
    assert (progress.done, progress.available) == (1, 2)
    assert progress.last_answer_at == Submission.objects.get().submitted_at


def test_progress_stops_counting_at_the_cap(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(members=[annotator])
    add_items(project, prompts=queue.AVAILABLE_CAP + 2, responses=1)
    progress = queue.progress(project, annotator)
    assert progress.available == queue.AVAILABLE_CAP
    assert progress.available_label == f"{queue.AVAILABLE_CAP}+"
    assert progress.last_answer_at is None


def test_a_count_at_the_cap_is_reused_for_a_while_and_one_below_it_never(
    make_project: MakeProject,
    add_items: AddItems,
    annotator: User,
    django_assert_num_queries: Callable[..., Any],
) -> None:
    project = make_project(members=[annotator])
    items = add_items(project, prompts=queue.AVAILABLE_CAP, responses=1)
    assert queue.available_items(project, annotator) == queue.AVAILABLE_CAP
    Item.objects.filter(pk=items[0].pk).update(is_complete=True)
    with django_assert_num_queries(0):  # a deep queue: the count from the cache
        assert queue.available_items(project, annotator) == queue.AVAILABLE_CAP
    cache.clear()  # the minute has passed
    assert queue.available_items(project, annotator) == queue.AVAILABLE_CAP - 1
    Item.objects.filter(pk=items[1].pk).update(is_complete=True)
    assert queue.available_items(project, annotator) == queue.AVAILABLE_CAP - 2


def test_the_queue_query_reads_the_partial_index_with_a_limit(
    postgres: None, make_project: MakeProject, annotator: User
) -> None:
    project = make_project(members=[annotator])
    _bulk_items(project, 100_000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE annotation_item")
    sql, params = queue.candidate_sql(project, annotator, timezone.now(), gold=False)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT TEXT) " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "item_queue_order" in plan, plan
    assert "Sort" not in plan.split("\n")[1], plan
    assert next_item(project, annotator) is not None


def _bulk_items(project: object, count: int) -> None:
    """`count` items of one prompt, written in one statement (the queue reads items only)."""
    from webapp.annotation.models import Prompt, PromptSource

    prompt = Prompt.objects.create(project=project, text="bulk", source=PromptSource.SEED)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO annotation_item (project_id, prompt_id, is_gold, live_submissions,"
            " is_complete, created_at) SELECT %s, %s, false, 0, false, now()"
            " FROM generate_series(1, %s)",
            [prompt.project_id, prompt.pk, count],
        )


@pytest.mark.django_db(transaction=True)
def test_many_annotators_racing_for_the_last_slots_get_exactly_the_overlap(
    make_project: MakeProject, add_items: AddItems, make_user: Callable[..., User]
) -> None:
    if connection.vendor != "postgresql":
        missing_service("row locks with SKIP LOCKED need PostgreSQL")
    people = [make_user(f"r{n}", Role.ANNOTATOR) for n in range(8)]
    project = make_project(members=people, overlap=3)
    (item,) = add_items(project, prompts=1, responses=1)
    results: list[int | None] = []
    barrier = threading.Barrier(len(people))

    def ask(person: User) -> None:
        try:
            barrier.wait()
            lease = next_item(project, person)
            results.append(lease.item_id if lease else None)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=ask, args=(p,)) for p in people]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r for r in results if r is not None) == [item.pk] * 3
    assert results.count(None) == 5
    assert Lease.objects.filter(item=item).count() == 3


def test_items_whose_slots_are_all_leased_are_passed_over_in_the_query(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project = make_project(members=[annotator, second_annotator], overlap=2)
    items = add_items(project, prompts=12, responses=1)
    soon = timezone.now() + timedelta(minutes=5)
    for item in items[:-1]:  # each: one live answer and one lease of someone else
        Item.objects.filter(pk=item.pk).update(live_submissions=1)
        Lease.objects.create(item=item, annotator=second_annotator, expires_at=soon)
    lease = next_item(project, annotator)
    assert lease is not None and lease.item_id == items[-1].pk


def test_the_queue_query_with_overlap_reads_the_partial_index(
    postgres: None, make_project: MakeProject, annotator: User
) -> None:
    project = make_project(members=[annotator], overlap=3)
    _bulk_items(project, 100_000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE annotation_item")
    sql, params = queue.candidate_sql(project, annotator, timezone.now(), gold=False)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT TEXT) " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "item_queue_order" in plan, plan
