"""What an admin changes: projects and their questions, who annotates them, and the users.

Every function is one transaction; each takes and returns model objects and raises
ValidationError (with a message meant for the admin) when the change is not allowed, having
written nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from webapp.accounts.models import Role, User
from webapp.annotation.models import (
    GoldAnswer,
    Label,
    Lease,
    Membership,
    Project,
    Question,
)
from webapp.annotation.questions import (
    KINDS_FOR_TASK,
    QuestionKind,
    TaskType,
    clean_config,
    default_questions,
)

# Project fields an admin edits after creation; the task type is fixed once items exist.
SETTINGS_FIELDS = (
    "name",
    "slug",
    "description",
    "guidelines",
    "overlap",
    "gold_share",
    "ranking_size",
    "undo_window_seconds",
    "lease_seconds",
    "is_active",
)
ANNOTATING_ROLES = (Role.ANNOTATOR, Role.ADMIN)


# Projects


@transaction.atomic
def create_project(project: Project, *, created_by: User | None) -> Project:
    """Save a new project (an unsaved instance) with its task type's default questions."""
    project.created_by = created_by
    project.full_clean()
    project.save()
    for position, spec in enumerate(default_questions(project.task_type)):
        Question.objects.create(
            project=project,
            position=position,
            key=spec["key"],
            kind=spec["kind"],
            text=spec["text"],
            required=spec["required"],
            config=clean_config(spec["kind"], spec["config"]),
        )
    return project


@transaction.atomic
def update_project_settings(project: Project, changes: Mapping[str, Any]) -> Project:
    """Apply `changes` (a subset of SETTINGS_FIELDS) after checking every constraint."""
    unknown = set(changes) - set(SETTINGS_FIELDS)
    if unknown:
        raise ValidationError(
            f"These settings cannot be changed here: {', '.join(sorted(unknown))}."
        )
    for field, value in changes.items():
        setattr(project, field, value)
    project.full_clean()
    project.save()
    return project


# Questions


def _check_kind_fits(project: Project, kind: str) -> None:
    allowed = KINDS_FOR_TASK.get(project.task_type, set())
    if kind not in allowed:
        task = TaskType(project.task_type).label.lower()
        if not allowed:
            raise ValidationError(f"A project to {task} asks no questions.")
        names = ", ".join(sorted(QuestionKind(k).label for k in allowed))
        raise ValidationError(
            f"A {QuestionKind(kind).label if kind in QuestionKind.values else kind!r} question "
            f"does not fit a project to {task}; choose one of: {names}."
        )


def _clean_question(question: Question) -> None:
    _check_kind_fits(question.project, question.kind)
    question.config = clean_config(question.kind, question.config)
    question.text = question.text.strip()
    question.full_clean()


@transaction.atomic
def add_question(question: Question) -> Question:
    """Save a new question (unsaved instance with its project set) after the others."""
    _clean_question(question)
    last = Question.objects.filter(project=question.project).aggregate(last=Max("position"))
    question.position = (last["last"] + 1) if last["last"] is not None else 0
    question.save()
    return question


def _answer_shape_changed(kind: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether answers valid under `old` may be invalid, or mean something else, under `new`."""
    if kind == QuestionKind.LIKERT:
        return (old.get("min"), old.get("max")) != (new.get("min"), new.get("max"))
    if kind == QuestionKind.PREFERENCE:
        return any(old.get(key) != new.get(key) for key in ("allow_tie", "allow_both_bad"))
    if kind == QuestionKind.FLAGS:
        return not set(old.get("options", [])) <= set(new.get("options", []))
    return False


@transaction.atomic
def update_question(question: Question, changes: Mapping[str, Any]) -> Question:
    """Edit a question: key, kind, text, help_text, required, config.

    Once annotators have answered it (or it has gold answers) its key, kind and the shape of its
    answers (a Likert range, the allowed preference outcomes, removing a flag) stay fixed, so
    the stored answers keep their meaning; its wording, help and labels may still change.
    """
    stored = Question.objects.select_for_update().get(pk=question.pk)
    edited = Question.objects.get(pk=question.pk)  # the caller's instance stays as it was
    for field, value in changes.items():
        if field not in ("key", "kind", "text", "help_text", "required", "config"):
            raise ValidationError(f"The question's {field} cannot be changed here.")
        setattr(edited, field, value)
    _clean_question(edited)
    answered = Label.objects.filter(question=stored).exists()
    has_gold = GoldAnswer.objects.filter(question=stored).exists()
    if answered or has_gold:
        why = "annotators have answered it" if answered else "gold answers use it"
        if edited.kind != stored.kind:
            raise ValidationError(f"The kind of “{stored.key}” cannot change: {why}.")
        if edited.key != stored.key:
            raise ValidationError(f"The key of “{stored.key}” cannot change: {why}.")
        if _answer_shape_changed(stored.kind, stored.config, edited.config):
            raise ValidationError(
                f"“{stored.key}” cannot change which answers are possible: {why}. "
                "Add a new question instead."
            )
    edited.save()
    return edited


@transaction.atomic
def remove_question(question: Question) -> None:
    """Delete a question nobody has answered (its gold answers go with it)."""
    if Label.objects.filter(question=question).exists():
        raise ValidationError(
            f"“{question.key}” cannot be removed: annotators have answered it. "
            "Its answers are part of the data; edit its wording instead."
        )
    project = question.project
    question.delete()
    _renumber(project, list(project.questions.values_list("pk", flat=True)))


@transaction.atomic
def reorder_questions(project: Project, question_ids: Sequence[int]) -> list[Question]:
    """Put the project's questions in the order of `question_ids` (all of them, once each)."""
    current = set(project.questions.values_list("pk", flat=True))
    if len(question_ids) != len(current) or set(question_ids) != current:
        raise ValidationError("The new order must list each of the project's questions once.")
    _renumber(project, question_ids)
    return list(project.questions.all())


@transaction.atomic
def move_question(question: Question, offset: int) -> list[Question]:
    """Move a question `offset` places (negative: up); the ends stay where they are."""
    order = list(question.project.questions.values_list("pk", flat=True))
    index = order.index(question.pk)
    target = max(0, min(len(order) - 1, index + offset))
    order.insert(target, order.pop(index))
    return reorder_questions(question.project, order)


def _renumber(project: Project, ordered_ids: Sequence[int]) -> None:
    questions = {q.pk: q for q in Question.objects.select_for_update().filter(project=project)}
    for position, pk in enumerate(ordered_ids):
        questions[pk].position = position
    Question.objects.bulk_update(questions.values(), ["position"])


# Members


@transaction.atomic
def add_member(project: Project, user: User) -> Membership:
    if not user.is_active:
        raise ValidationError(f"{user.username} is deactivated.")
    if not user.has_role(*ANNOTATING_ROLES):
        raise ValidationError(
            f"{user.username} is not an annotator; give them the annotator role first."
        )
    if Membership.objects.filter(project=project, user=user).exists():
        raise ValidationError(f"{user.username} is already a member of {project.name}.")
    return Membership.objects.create(project=project, user=user)


@transaction.atomic
def remove_member(membership: Membership) -> None:
    """Take an annotator off a project; their answers stay, the items they held are released."""
    Lease.objects.filter(item__project=membership.project, annotator=membership.user).delete()
    membership.delete()


# Users


@transaction.atomic
def invite_user(user: User) -> User:
    """Create an account (unsaved instance with username, email, role) with no usable password:
    the person sets one through the link `set_password_link_parts` makes."""
    user.set_unusable_password()
    user.full_clean()
    user.save()
    return user


def set_password_link_parts(user: User) -> tuple[str, str]:
    """(uidb64, token) of a one-time set-password link: the token stops working once the
    password changes, and after settings.PASSWORD_RESET_TIMEOUT."""
    return urlsafe_base64_encode(force_bytes(user.pk)), default_token_generator.make_token(user)


@transaction.atomic
def change_role(user: User, role: str, *, by: User) -> User:
    if role not in ("", *Role.values):
        raise ValidationError(f"Unknown role {role!r}.")
    if user.pk == by.pk:
        raise ValidationError("You cannot change your own role; ask another admin.")
    user.role = role
    user.save(update_fields=["role"])
    return user


@transaction.atomic
def set_active(user: User, active: bool, *, by: User) -> User:
    """Deactivate (or reactivate) an account. A deactivated person cannot sign in, and the
    items they held are released; their answers stay."""
    if user.pk == by.pk:
        raise ValidationError("You cannot deactivate your own account.")
    user.is_active = active
    user.save(update_fields=["is_active"])
    if not active:
        Lease.objects.filter(annotator=user).delete()
    return user
