"""The labelling services: submit, skip, flag, undo, write a prompt; each refusal writes nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections
from django.utils import timezone
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import missing_service
from tests.webapp.annotation.conftest import AddItems, MakeProject
from webapp.accounts.models import Role, User
from webapp.annotation import labelling
from webapp.annotation.labelling import AnnotationError
from webapp.annotation.models import (
    AnnotationEvent,
    EventKind,
    Flag,
    Item,
    Label,
    Lease,
    Membership,
    Project,
    Prompt,
    PromptSource,
    Skip,
    Submission,
)
from webapp.annotation.questions import TaskType
from webapp.annotation.queue import next_item

RATING = {"helpfulness": {"score": 4}, "correctness": {"score": "2"}}


def leased(project: Project, user: User) -> Item:
    lease = next_item(project, user)
    assert lease is not None
    return lease.item


def written() -> tuple[int, ...]:
    """Row counts of everything the services write, to show that a refusal wrote nothing."""
    return (
        Submission.objects.count(),
        Label.objects.count(),
        Skip.objects.count(),
        Flag.objects.count(),
        Prompt.objects.count(),
        AnnotationEvent.objects.count(),
        Lease.objects.count(),
        Submission.objects.filter(undone_at__isnull=False).count(),
        sum(Item.objects.values_list("live_submissions", flat=True)),
    )


@pytest.fixture
def rating(make_project: MakeProject, add_items: AddItems, annotator: User) -> Project:
    project = make_project(members=[annotator], overlap=1)
    add_items(project, prompts=3, responses=1)
    return project


def refused(status: int, call: Callable[[], Any], match: str | None = None) -> AnnotationError:
    before = written()
    with pytest.raises(AnnotationError, match=match) as error:
        call()
    assert error.value.status == status
    assert written() == before
    return error.value


# submit


def test_submit_stores_labels_events_and_completes_the_item(
    rating: Project, annotator: User
) -> None:
    item = leased(rating, annotator)
    submission = labelling.submit(item, annotator, RATING, active_ms=1500)
    values = {label.question.key: label.value for label in submission.labels.all()}
    assert values == {"helpfulness": {"score": 4}, "correctness": {"score": 2}}
    item.refresh_from_db()
    assert (item.live_submissions, item.is_complete) == (1, True)
    assert not Lease.objects.exists()
    event = AnnotationEvent.objects.get(kind=EventKind.SUBMITTED)
    assert event.item == item and event.active_ms == submission.active_ms


def test_submit_keeps_the_item_open_below_the_overlap(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(members=[annotator], overlap=2)
    add_items(project, prompts=1, responses=1)
    item = leased(project, annotator)
    labelling.submit(item, annotator, RATING, active_ms=0)
    item.refresh_from_db()
    assert (item.live_submissions, item.is_complete) == (1, False)


def test_submit_records_serving_time_and_clamps_active_time(
    rating: Project, annotator: User
) -> None:
    start = timezone.now()
    lease = next_item(rating, annotator, now=start)
    assert lease is not None
    later = start + timedelta(seconds=10)
    submission = labelling.submit(lease.item, annotator, RATING, active_ms=99_000_000, now=later)
    assert submission.served_at == start
    assert submission.active_ms == 10_000
    lease = next_item(rating, annotator, now=later)
    assert lease is not None
    submission = labelling.submit(lease.item, annotator, RATING, active_ms=-5, now=later)
    assert submission.active_ms == 0


def test_submit_of_a_pair_stores_the_winner_as_a_response_id(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(TaskType.PAIRWISE, members=[annotator])
    add_items(project, prompts=1, responses=2)
    item = leased(project, annotator)
    right = item.placements.get(position=1).response_id
    answers = {"preference": {"choice": "right", "strength": "3"}, "flags": {"flags": []}}
    submission = labelling.submit(item, annotator, answers, active_ms=0)
    value = submission.labels.get(question__key="preference").value
    assert value == {"outcome": "win", "winner": right, "strength": 3}


def test_submit_of_a_rewrite_checks_against_the_original(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(TaskType.REWRITE, members=[annotator])
    add_items(project, prompts=1, responses=1)
    item = leased(project, annotator)
    original = item.placements.get().response.text
    refused(
        400,
        lambda: labelling.submit(item, annotator, {"rewrite": {"text": original}}, active_ms=0),
        "same as the original",
    )
    labelling.submit(item, annotator, {"rewrite": {"text": original + " Better."}}, active_ms=0)


def test_submit_of_a_ranking_needs_every_response_once(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(TaskType.RANKING, members=[annotator], ranking_size=3)
    add_items(project, prompts=1, responses=3)
    item = leased(project, annotator)
    ids = list(item.placements.values_list("response_id", flat=True))
    refused(
        400, lambda: labelling.submit(item, annotator, {"ranking": {"order": ids[:2]}}, active_ms=0)
    )
    submission = labelling.submit(item, annotator, {"ranking": {"order": ids[::-1]}}, active_ms=0)
    assert submission.labels.get().value == {"order": ids[::-1]}


def test_submit_refuses_a_missing_required_answer_with_400(
    rating: Project, annotator: User
) -> None:
    item = leased(rating, annotator)
    error = refused(
        400, lambda: labelling.submit(item, annotator, {"helpfulness": {"score": 3}}, active_ms=0)
    )
    assert error.field == "correctness"


def test_submit_refuses_an_unknown_question_with_400(rating: Project, annotator: User) -> None:
    item = leased(rating, annotator)
    refused(
        400,
        lambda: labelling.submit(item, annotator, {**RATING, "mood": {"score": 1}}, active_ms=0),
        "mood",
    )


def test_submit_refuses_an_out_of_range_score_with_400(rating: Project, annotator: User) -> None:
    item = leased(rating, annotator)
    answers = {**RATING, "helpfulness": {"score": 6}}
    refused(400, lambda: labelling.submit(item, annotator, answers, active_ms=0), "between 1 and 5")


def test_submit_refuses_a_second_answer_with_409(rating: Project, annotator: User) -> None:
    item = leased(rating, annotator)
    labelling.submit(item, annotator, RATING, active_ms=0)
    refused(409, lambda: labelling.submit(item, annotator, RATING, active_ms=0), "already answered")


def test_submit_without_a_lease_is_409(rating: Project, annotator: User) -> None:
    item = Item.objects.filter(project=rating).last()
    assert item is not None
    refused(
        409, lambda: labelling.submit(item, annotator, RATING, active_ms=0), "no longer reserved"
    )


def test_submit_after_the_lease_expired_succeeds_while_the_slot_is_free(
    rating: Project, annotator: User
) -> None:
    item = leased(rating, annotator)
    later = timezone.now() + timedelta(seconds=rating.lease_seconds + 5)
    assert labelling.submit(item, annotator, RATING, active_ms=0, now=later).pk


def test_submit_after_the_lease_expired_and_the_slot_was_taken_is_409(
    rating: Project, annotator: User, second_annotator: User
) -> None:
    Membership.objects.create(project=rating, user=second_annotator)
    start = timezone.now()
    item = leased(rating, annotator)
    later = start + timedelta(seconds=rating.lease_seconds + 5)
    taken = next_item(rating, second_annotator, now=later)
    assert taken is not None and taken.item_id == item.pk
    refused(
        409, lambda: labelling.submit(item, annotator, RATING, active_ms=0, now=later), "ran out"
    )


def test_submit_by_a_non_member_is_403(
    rating: Project, annotator: User, second_annotator: User
) -> None:
    item = leased(rating, annotator)
    refused(403, lambda: labelling.submit(item, second_annotator, RATING, active_ms=0))


def test_submit_refuses_a_non_integer_active_time(rating: Project, annotator: User) -> None:
    item = leased(rating, annotator)
    refused(400, lambda: labelling.submit(item, annotator, RATING, active_ms="5"))  # type: ignore[arg-type]


# skip and flag


def test_skip_releases_the_lease_and_records_the_reason(rating: Project, annotator: User) -> None:
    item = leased(rating, annotator)
    skip = labelling.skip(item, annotator, "  not my field ")
    assert skip.reason == "not my field"
    assert not Lease.objects.exists()
    assert AnnotationEvent.objects.filter(kind=EventKind.SKIPPED).count() == 1


def test_skipping_twice_is_409(rating: Project, annotator: User) -> None:
    item = leased(rating, annotator)
    labelling.skip(item, annotator)
    refused(409, lambda: labelling.skip(item, annotator))


def test_skipping_an_answered_item_is_409(rating: Project, annotator: User) -> None:
    item = leased(rating, annotator)
    labelling.submit(item, annotator, RATING, active_ms=0)
    refused(409, lambda: labelling.skip(item, annotator))


def test_a_too_long_skip_reason_is_400(rating: Project, annotator: User) -> None:
    item = leased(rating, annotator)
    refused(400, lambda: labelling.skip(item, annotator, "x" * 501))


def test_flag_opens_a_flag_and_releases_the_lease(rating: Project, annotator: User) -> None:
    item = leased(rating, annotator)
    flag = labelling.flag(item, annotator, "factual error", "wrong date")
    assert (flag.reason, flag.note, flag.status) == ("factual error", "wrong date", "open")
    assert not Lease.objects.exists()
    assert AnnotationEvent.objects.filter(kind=EventKind.FLAGGED).count() == 1


def test_flag_with_an_unknown_reason_is_400(rating: Project, annotator: User) -> None:
    item = leased(rating, annotator)
    refused(400, lambda: labelling.flag(item, annotator, "boring"), "Choose a reason")


def test_flag_other_needs_a_note(rating: Project, annotator: User) -> None:
    item = leased(rating, annotator)
    refused(400, lambda: labelling.flag(item, annotator, "other"))
    assert labelling.flag(item, annotator, "other", "garbled text").reason == "other"


def test_flagging_twice_is_409(rating: Project, annotator: User) -> None:
    item = leased(rating, annotator)
    labelling.flag(item, annotator, "unsafe")
    refused(409, lambda: labelling.flag(item, annotator, "unsafe"))


def test_flag_by_a_non_member_is_403(rating: Project, annotator: User, outsider: User) -> None:
    item = leased(rating, annotator)
    refused(403, lambda: labelling.flag(item, outsider, "unsafe"))


def test_flagging_an_item_never_served_to_the_annotator_is_403_and_withholds_nothing(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project = make_project(members=[annotator, second_annotator], overlap=2)
    (guessed,) = add_items(project, prompts=1, responses=1, gold=True)
    refused(403, lambda: labelling.flag(guessed, annotator, "unsafe"), "served to you")
    lease = next_item(project, second_annotator)
    assert lease is not None and lease.item == guessed


def test_flagging_an_item_served_to_someone_else_is_403(
    make_project: MakeProject, add_items: AddItems, annotator: User, second_annotator: User
) -> None:
    project = make_project(members=[annotator, second_annotator], overlap=1)
    add_items(project, prompts=1, responses=1)
    theirs = leased(project, second_annotator)
    refused(403, lambda: labelling.flag(theirs, annotator, "unsafe"), "served to you")


def test_an_item_served_earlier_can_be_flagged_after_its_lease_expired(
    rating: Project, annotator: User
) -> None:
    start = timezone.now()
    lease = next_item(rating, annotator, now=start)
    assert lease is not None
    later = start + timedelta(seconds=rating.lease_seconds + 1)
    assert labelling.flag(lease.item, annotator, "unsafe", now=later).status == "open"


def test_write_prompt_refuses_metadata_it_cannot_store(
    make_project: MakeProject, annotator: User
) -> None:
    project = make_project(TaskType.PROMPT_WRITING, members=[annotator])
    metadata = {"topic": "half a pair \ud83d"}
    error = refused(400, lambda: labelling.write_prompt(project, annotator, "Hi?", metadata))
    assert "unpaired surrogate (U+D83D)" in error.message


# undo


def test_undo_takes_back_the_last_answer_and_leases_the_item_again(
    rating: Project, annotator: User
) -> None:
    item = leased(rating, annotator)
    submission = labelling.submit(item, annotator, RATING, active_ms=0)
    undone = labelling.undo_last(rating, annotator)
    assert undone.pk == submission.pk and undone.undone_at is not None
    assert Label.objects.filter(undone_at__isnull=True).count() == 0
    item.refresh_from_db()
    assert (item.live_submissions, item.is_complete) == (0, False)
    lease = next_item(rating, annotator)
    assert lease is not None and lease.item_id == item.pk
    assert labelling.previous_answers(item, annotator)["helpfulness"] == {"score": 4}
    assert AnnotationEvent.objects.filter(kind=EventKind.UNDONE).count() == 1


def test_an_undone_item_can_be_answered_again_keeping_the_history(
    rating: Project, annotator: User
) -> None:
    item = leased(rating, annotator)
    labelling.submit(item, annotator, RATING, active_ms=0)
    labelling.undo_last(rating, annotator)
    labelling.submit(item, annotator, {**RATING, "helpfulness": {"score": 1}}, active_ms=0)
    assert Submission.objects.filter(item=item).count() == 2
    live = Label.objects.get(item=item, question__key="helpfulness", undone_at__isnull=True)
    assert live.value == {"score": 1}


def test_undo_with_nothing_to_undo_is_409(rating: Project, annotator: User) -> None:
    refused(409, lambda: labelling.undo_last(rating, annotator), "nothing to undo")


def test_undo_after_the_window_is_409(rating: Project, annotator: User) -> None:
    item = leased(rating, annotator)
    labelling.submit(item, annotator, RATING, active_ms=0)
    later = timezone.now() + timedelta(seconds=rating.undo_window_seconds + 1)
    refused(409, lambda: labelling.undo_last(rating, annotator, now=later), "undo window")


def test_undo_by_a_paused_member_is_403(rating: Project, annotator: User) -> None:
    item = leased(rating, annotator)
    labelling.submit(item, annotator, RATING, active_ms=0)
    Membership.objects.update(paused=True)
    refused(403, lambda: labelling.undo_last(rating, annotator))


# prompt writing


@pytest.fixture
def writing(make_project: MakeProject, annotator: User) -> Project:
    return make_project(TaskType.PROMPT_WRITING, members=[annotator])


def test_write_prompt_stores_an_annotator_prompt(writing: Project, annotator: User) -> None:
    prompt = labelling.write_prompt(writing, annotator, "  How do tides work?\r\n", {"lang": "en"})
    assert (prompt.text, prompt.source, prompt.created_by) == (
        "How do tides work?",
        PromptSource.ANNOTATOR,
        annotator,
    )
    assert AnnotationEvent.objects.get().kind == EventKind.PROMPT_WRITTEN


def test_write_prompt_refuses_a_duplicate_with_409(writing: Project, annotator: User) -> None:
    labelling.write_prompt(writing, annotator, "How do tides work?", {})
    refused(
        409,
        lambda: labelling.write_prompt(writing, annotator, "How do tides work? ", {}),
        "already",
    )


def test_write_prompt_refuses_empty_text_with_400(writing: Project, annotator: User) -> None:
    refused(400, lambda: labelling.write_prompt(writing, annotator, "   ", {}))


def test_write_prompt_in_a_rating_project_is_400(rating: Project, annotator: User) -> None:
    refused(400, lambda: labelling.write_prompt(rating, annotator, "A prompt", {}))


def test_write_prompt_by_a_non_member_is_403(writing: Project, second_annotator: User) -> None:
    refused(403, lambda: labelling.write_prompt(writing, second_annotator, "A prompt", {}))


# any payload: a submission or a refusal that wrote nothing

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.text(max_size=12),
    st.sampled_from(["left", "right", "tie", "both_bad", "win", "3", " 2 ", "-1"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
fields = st.sampled_from(
    ["score", "choice", "strength", "order", "text", "flags", "outcome", "winner"]
)
answer_payloads = st.dictionaries(
    st.sampled_from(["preference", "flags", "rationale", "unknown", "helpfulness"]),
    st.one_of(
        st.sampled_from(
            [
                {"choice": "left", "strength": 1},
                {"choice": "right", "strength": "3"},
                {"choice": "tie"},
                {"choice": "both_bad"},
                {"flags": ["unsafe"]},
                {"text": "because"},
            ]
        ),
        st.dictionaries(fields, values, max_size=4),
        values,
    ),
    max_size=4,
)


@pytest.fixture
def pair_lease(make_project: MakeProject, add_items: AddItems, annotator: User) -> Item:
    project = make_project(TaskType.PAIRWISE, members=[annotator], overlap=50)
    add_items(project, prompts=1, responses=2)
    return leased(project, annotator)


@pytest.mark.both_databases
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=answer_payloads, active_ms=st.integers(min_value=-(10**10), max_value=10**10))
def test_any_payload_gives_a_submission_or_a_refusal_that_writes_nothing(
    pair_lease: Item, annotator: User, payload: dict[str, Any], active_ms: int
) -> None:
    Submission.objects.filter(item=pair_lease).delete()
    Lease.objects.get_or_create(
        item=pair_lease,
        annotator=annotator,
        defaults={"expires_at": timezone.now() + timedelta(minutes=5)},
    )
    Item.objects.filter(pk=pair_lease.pk).update(live_submissions=0, is_complete=False)
    before = written()
    refusal: AnnotationError | None = None
    try:
        submission = labelling.submit(pair_lease, annotator, payload, active_ms=active_ms)
    except AnnotationError as error:
        refusal = error
    if refusal is not None:
        event("refused")
        assert refusal.status == 400
        assert written() == before
        return
    event("submitted")
    assert submission.labels.filter(question__key="preference").exists()
    assert set(payload) <= {"preference", "flags", "rationale"}
    assert submission.active_ms >= 0


# concurrency


@pytest.mark.django_db(transaction=True)
def test_concurrent_submits_of_one_item_by_one_annotator_make_one_submission(
    make_project: MakeProject, add_items: AddItems, make_user: Callable[..., User]
) -> None:
    if connection.vendor != "postgresql":
        missing_service("row locks need PostgreSQL")
    person = make_user("racer", Role.ANNOTATOR)
    project = make_project(members=[person], overlap=3)
    add_items(project, prompts=1, responses=1)
    item = leased(project, person)
    statuses: list[int] = []
    barrier = threading.Barrier(6)

    def send() -> None:
        try:
            barrier.wait()
            labelling.submit(item, person, RATING, active_ms=0)
            statuses.append(200)
        except AnnotationError as error:
            statuses.append(error.status)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 409, 409, 409, 409, 409]
    assert Submission.objects.filter(item=item).count() == 1
    item.refresh_from_db()
    assert item.live_submissions == 1
