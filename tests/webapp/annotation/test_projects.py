"""The admin's services: projects, questions, members and users."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.http import urlsafe_base64_decode

from tests.webapp.annotation.conftest import AddItems, MakeProject
from webapp.accounts.models import Role, User
from webapp.annotation import projects
from webapp.annotation.models import (
    GoldAnswer,
    Item,
    Label,
    Lease,
    Membership,
    Project,
    Question,
    Submission,
)
from webapp.annotation.questions import QuestionKind, TaskType

pytestmark = pytest.mark.usefixtures("postgres")


def answer(item: Item, user: User, question: Question, value: dict[str, object]) -> Label:
    now = timezone.now()
    submission = Submission.objects.create(item=item, annotator=user, served_at=now)
    return Label.objects.create(
        submission=submission, item=item, annotator=user, question=question, value=value
    )


def keys(project: Project) -> list[str]:
    return list(project.questions.values_list("key", flat=True))


# Projects


def test_a_new_project_gets_its_task_types_default_questions(admin_user: User) -> None:
    project = projects.create_project(
        Project(name="Helpful chat", slug="helpful-chat", task_type=TaskType.PAIRWISE),
        created_by=admin_user,
    )
    assert project.created_by == admin_user
    assert keys(project) == ["preference", "flags", "rationale"]
    assert project.questions.get(key="preference").config["max_strength"] == 3


def test_a_prompt_writing_project_has_no_questions(admin_user: User) -> None:
    project = projects.create_project(
        Project(name="Writers", slug="writers", task_type=TaskType.PROMPT_WRITING),
        created_by=admin_user,
    )
    assert keys(project) == []


def test_a_duplicate_project_name_is_refused(admin_user: User, make_project: MakeProject) -> None:
    make_project(name="Taken")
    with pytest.raises(ValidationError, match="already exists"):
        projects.create_project(
            Project(name="Taken", slug="other", task_type=TaskType.RATING), created_by=admin_user
        )
    assert Project.objects.filter(name="Taken").count() == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("overlap", 0),
        ("overlap", 51),
        ("gold_share", 1.5),
        ("ranking_size", 10),
        ("lease_seconds", 5),
    ],
)
def test_settings_out_of_range_are_refused(
    make_project: MakeProject, field: str, value: float
) -> None:
    project = make_project()
    with pytest.raises(ValidationError):
        projects.update_project_settings(project, {field: value})
    project.refresh_from_db()
    assert getattr(project, field) != value


def test_settings_are_saved(make_project: MakeProject) -> None:
    project = make_project()
    projects.update_project_settings(
        project, {"overlap": 3, "gold_share": 0.1, "guidelines": "# Be kind", "is_active": False}
    )
    project.refresh_from_db()
    assert (project.overlap, project.gold_share, project.guidelines) == (3, 0.1, "# Be kind")
    assert not project.is_active


def test_the_task_type_cannot_be_changed_through_settings(make_project: MakeProject) -> None:
    project = make_project(TaskType.RATING)
    with pytest.raises(ValidationError, match="task_type"):
        projects.update_project_settings(project, {"task_type": TaskType.PAIRWISE})


# Questions


def test_a_question_is_added_last_with_its_config_cleaned(make_project: MakeProject) -> None:
    project = make_project(TaskType.RATING)
    question = projects.add_question(
        Question(
            project=project,
            key="safety",
            kind=QuestionKind.LIKERT,
            text="How safe?",
            config={"min": 1, "max": 7},
        )
    )
    assert keys(project)[-1] == "safety"
    assert question.config == {"min": 1, "max": 7, "labels": {}}


def test_a_question_kind_that_does_not_fit_the_task_is_refused(make_project: MakeProject) -> None:
    project = make_project(TaskType.RATING)
    with pytest.raises(ValidationError, match="does not fit a project to rate one response"):
        projects.add_question(
            Question(project=project, key="pref", kind=QuestionKind.PREFERENCE, text="Which?")
        )
    assert "pref" not in keys(project)


def test_a_bad_config_or_a_taken_key_is_refused(make_project: MakeProject) -> None:
    project = make_project(TaskType.RATING)
    with pytest.raises(ValidationError, match="Likert scale needs"):
        projects.add_question(
            Question(project=project, key="x", kind="likert", text="?", config={"min": 5, "max": 1})
        )
    with pytest.raises(ValidationError, match="already exists"):
        projects.add_question(Question(project=project, key="flags", kind="flags", text="?"))


def test_an_unanswered_question_can_change_kind(make_project: MakeProject) -> None:
    project = make_project(TaskType.RATING)
    question = project.questions.get(key="correctness")
    projects.update_question(question, {"kind": QuestionKind.TEXT, "config": {}})
    question.refresh_from_db()
    assert question.kind == QuestionKind.TEXT


def test_an_answered_question_keeps_its_kind_and_its_scale(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(TaskType.RATING)
    [item, *_] = add_items(project, prompts=1, responses=1)
    question = project.questions.get(key="helpfulness")
    answer(item, annotator, question, {"score": 4})

    with pytest.raises(ValidationError, match="cannot change: annotators have answered it"):
        projects.update_question(question, {"kind": QuestionKind.TEXT, "config": {}})
    with pytest.raises(ValidationError, match="cannot change which answers are possible"):
        projects.update_question(question, {"config": {"min": 1, "max": 3}})
    question.refresh_from_db()
    assert (question.kind, question.config["max"]) == (QuestionKind.LIKERT, 5)

    projects.update_question(
        question,
        {
            "text": "How useful is it?",
            "config": {"min": 1, "max": 5, "labels": {"1": "useless", "5": "great"}},
        },
    )
    question.refresh_from_db()
    assert question.text == "How useful is it?"
    assert question.config["labels"] == {"1": "useless", "5": "great"}


def test_a_question_with_gold_answers_keeps_its_kind(
    make_project: MakeProject, add_items: AddItems
) -> None:
    project = make_project(TaskType.RATING)
    [item] = add_items(project, prompts=1, responses=1, gold=True)
    question = project.questions.get(key="helpfulness")
    GoldAnswer.objects.create(item=item, question=question, value={"score": 5})
    with pytest.raises(ValidationError, match="gold answers use it"):
        projects.update_question(question, {"kind": QuestionKind.TEXT, "config": {}})


def test_flags_may_be_added_but_not_removed_once_answered(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(TaskType.RATING)
    [item] = add_items(project, prompts=1, responses=1)
    flags = project.questions.get(key="flags")
    answer(item, annotator, flags, {"flags": ["unsafe"]})
    options = flags.config["options"]
    projects.update_question(flags, {"config": {"options": [*options, "too long"]}})
    with pytest.raises(ValidationError):
        projects.update_question(flags, {"config": {"options": ["too long"]}})


def test_an_answered_question_cannot_be_removed(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(TaskType.RATING)
    [item] = add_items(project, prompts=1, responses=1)
    question = project.questions.get(key="helpfulness")
    answer(item, annotator, question, {"score": 2})
    with pytest.raises(ValidationError, match="cannot be removed: annotators have answered it"):
        projects.remove_question(question)
    assert Question.objects.filter(pk=question.pk).exists()


def test_removing_a_question_closes_the_gap(make_project: MakeProject) -> None:
    project = make_project(TaskType.RATING)
    projects.remove_question(project.questions.get(key="correctness"))
    assert keys(project) == ["helpfulness", "flags", "rationale"]
    assert list(project.questions.values_list("position", flat=True)) == [0, 1, 2]


def test_questions_are_reordered_and_moved(make_project: MakeProject) -> None:
    project = make_project(TaskType.RATING)
    ids = {q.key: q.pk for q in project.questions.all()}
    projects.reorder_questions(
        project, [ids[k] for k in ("rationale", "flags", "helpfulness", "correctness")]
    )
    assert keys(project) == ["rationale", "flags", "helpfulness", "correctness"]
    projects.move_question(project.questions.get(key="correctness"), -1)
    assert keys(project) == ["rationale", "flags", "correctness", "helpfulness"]
    projects.move_question(project.questions.get(key="rationale"), -1)  # already first
    assert keys(project)[0] == "rationale"


def test_an_order_missing_a_question_is_refused(make_project: MakeProject) -> None:
    project = make_project(TaskType.RATING)
    ids = list(project.questions.values_list("pk", flat=True))
    with pytest.raises(ValidationError, match="each of the project's questions once"):
        projects.reorder_questions(project, ids[:-1])
    with pytest.raises(ValidationError):
        projects.reorder_questions(project, [*ids[:-1], ids[0]])


# Members


def test_an_annotator_is_added_once(make_project: MakeProject, annotator: User) -> None:
    project = make_project()
    projects.add_member(project, annotator)
    with pytest.raises(ValidationError, match="already a member"):
        projects.add_member(project, annotator)
    assert Membership.objects.filter(project=project).count() == 1


def test_people_who_do_not_annotate_cannot_be_members(
    make_project: MakeProject, researcher: User, outsider: User, annotator: User
) -> None:
    project = make_project()
    for user in (researcher, outsider):
        with pytest.raises(ValidationError, match="not an annotator"):
            projects.add_member(project, user)
    annotator.is_active = False
    annotator.save()
    with pytest.raises(ValidationError, match="deactivated"):
        projects.add_member(project, annotator)
    assert not Membership.objects.exists()


def test_removing_a_member_releases_their_leases_and_keeps_their_labels(
    make_project: MakeProject, add_items: AddItems, annotator: User
) -> None:
    project = make_project(TaskType.RATING, members=[annotator])
    first, second = add_items(project, prompts=2, responses=1)
    label = answer(first, annotator, project.questions.get(key="helpfulness"), {"score": 3})
    now = timezone.now()
    Lease.objects.create(item=second, annotator=annotator, expires_at=now + timedelta(minutes=5))
    projects.remove_member(Membership.objects.get(project=project, user=annotator))
    assert not Lease.objects.exists()
    assert Label.objects.filter(pk=label.pk).exists()
    assert not Membership.objects.exists()


# Users


def test_an_invited_user_sets_a_password_through_a_one_time_token(admin_user: User) -> None:
    user = projects.invite_user(User(username="newbie", email="n@example.com", role=Role.ANNOTATOR))
    assert not user.has_usable_password()
    uidb64, token = projects.set_password_link_parts(user)
    assert int(urlsafe_base64_decode(uidb64)) == user.pk
    assert default_token_generator.check_token(user, token)
    user.set_password("a new long password")
    user.save()
    assert not default_token_generator.check_token(user, token)


def test_an_invite_with_a_taken_username_is_refused(annotator: User) -> None:
    with pytest.raises(ValidationError, match="already exists"):
        projects.invite_user(User(username=annotator.username, role=Role.ANNOTATOR))


def test_an_admin_changes_another_users_role_but_not_their_own(
    admin_user: User, annotator: User
) -> None:
    projects.change_role(annotator, Role.RESEARCHER, by=admin_user)
    annotator.refresh_from_db()
    assert annotator.role == Role.RESEARCHER
    with pytest.raises(ValidationError, match="your own role"):
        projects.change_role(admin_user, Role.ANNOTATOR, by=admin_user)
    with pytest.raises(ValidationError, match="Unknown role"):
        projects.change_role(annotator, "king", by=admin_user)


def test_a_deactivated_user_loses_their_leases(
    make_project: MakeProject, add_items: AddItems, admin_user: User, annotator: User
) -> None:
    project = make_project(TaskType.RATING, members=[annotator])
    [item] = add_items(project, prompts=1, responses=1)
    Lease.objects.create(
        item=item, annotator=annotator, expires_at=timezone.now() + timedelta(minutes=5)
    )
    projects.set_active(annotator, False, by=admin_user)
    annotator.refresh_from_db()
    assert not annotator.is_active
    assert not Lease.objects.exists()
    with pytest.raises(ValidationError, match="your own account"):
        projects.set_active(admin_user, False, by=admin_user)
    projects.set_active(annotator, True, by=admin_user)
    annotator.refresh_from_db()
    assert annotator.is_active
