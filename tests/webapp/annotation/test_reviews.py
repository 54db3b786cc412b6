"""reviews.py: closing flags and pausing annotators."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from tests.webapp.annotation.conftest import AddItems, MakeProject
from webapp.accounts.models import User
from webapp.annotation.models import Flag, FlagStatus, Membership
from webapp.annotation.questions import TaskType
from webapp.annotation.reviews import MAX_NOTE, MAX_REASON, review_flags, set_paused


def test_resolving_closes_every_open_flag_of_the_item(
    make_project: MakeProject,
    add_items: AddItems,
    annotator: User,
    second_annotator: User,
    admin_user: User,
) -> None:
    (item,) = add_items(make_project(TaskType.RATING), prompts=1, responses=1)
    Flag.objects.create(item=item, annotator=annotator, reason="unsafe")
    Flag.objects.create(item=item, annotator=second_annotator, reason="off topic")

    flags = review_flags(item, admin_user, FlagStatus.RESOLVED, "  removed the prompt  ")

    assert len(flags) == 2
    for flag in Flag.objects.filter(item=item):
        assert flag.status == FlagStatus.RESOLVED
        assert flag.reviewed_by == admin_user and flag.reviewed_at is not None
        assert flag.review_note == "removed the prompt"


def test_a_second_review_of_the_same_flags_is_stale_and_changes_nothing(
    make_project: MakeProject, add_items: AddItems, annotator: User, admin_user: User
) -> None:
    (item,) = add_items(make_project(TaskType.RATING), prompts=1, responses=1)
    Flag.objects.create(item=item, annotator=annotator, reason="unsafe")
    review_flags(item, admin_user, FlagStatus.DISMISSED, "fine")
    with pytest.raises(ValidationError) as error:
        review_flags(item, admin_user, FlagStatus.RESOLVED, "changed my mind")
    assert error.value.code == "stale"
    flag = Flag.objects.get(item=item)
    assert (flag.status, flag.review_note) == (FlagStatus.DISMISSED, "fine")


@pytest.mark.parametrize(
    ("status", "note"), [(FlagStatus.OPEN, ""), ("deleted", ""), ("resolved", "x" * (MAX_NOTE + 1))]
)
def test_a_review_with_a_bad_status_or_note_writes_nothing(
    make_project: MakeProject,
    add_items: AddItems,
    annotator: User,
    admin_user: User,
    status: str,
    note: str,
) -> None:
    (item,) = add_items(make_project(TaskType.RATING), prompts=1, responses=1)
    Flag.objects.create(item=item, annotator=annotator, reason="unsafe")
    with pytest.raises(ValidationError) as error:
        review_flags(item, admin_user, status, note)
    assert error.value.code == "invalid"
    assert Flag.objects.get(item=item).status == FlagStatus.OPEN


def test_pausing_keeps_the_reason_and_unpausing_clears_it(
    make_project: MakeProject, annotator: User
) -> None:
    project = make_project(TaskType.RATING, members=[annotator])
    membership = Membership.objects.get(project=project, user=annotator)
    set_paused(membership, True, " low gold accuracy ")
    membership.refresh_from_db()
    assert membership.paused and membership.paused_reason == "low gold accuracy"
    set_paused(membership, False)
    membership.refresh_from_db()
    assert not membership.paused and membership.paused_reason == ""


def test_pausing_twice_is_stale_and_a_long_reason_is_refused(
    make_project: MakeProject, annotator: User
) -> None:
    project = make_project(TaskType.RATING, members=[annotator])
    membership = Membership.objects.get(project=project, user=annotator)
    with pytest.raises(ValidationError) as error:
        set_paused(membership, False)
    assert error.value.code == "stale"
    with pytest.raises(ValidationError) as error:
        set_paused(membership, True, "x" * (MAX_REASON + 1))
    assert error.value.code == "invalid"
    membership.refresh_from_db()
    assert not membership.paused
