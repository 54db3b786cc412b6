"""What an admin does with training rounds and model versions: start a round (validated, then
sent by name after commit), cancel or resume one, promote a version to serve a project.

Each function checks the acting user's role itself, so that every caller (the pages, an API,
a command) gets the same rule: admins act, everyone else is refused with PermissionDenied.
State changes go through `rounds.py`'s conditional updates; a change the round's state does not
allow raises rounds.RoundError.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction

from webapp.accounts.models import Role, User
from webapp.annotation.models import ModelVersion, Project
from webapp.exports.filters import ExportError, clean_filters
from webapp.training import registry, rounds
from webapp.training.models import RoundKind, TrainingRound
from webapp.training.presets import ALGORITHMS, DEFAULT_ALGORITHM, build_config
from webapp.training.rounds import RoundError
from webapp.training.versions import project_versions

__all__ = [
    "RoundError",
    "RoundInputError",
    "cancel_round",
    "create_round",
    "promote_version",
    "resume_round",
]

# The export filters a round's label snapshot takes (the others keep their defaults).
ROUND_FILTERS = ("since", "until", "min_agreement", "flagged")


class RoundInputError(ValueError):
    """A round request that cannot be started, with the form field it concerns."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field


def require_admin(user: User) -> None:
    if not (user.is_active and user.has_role(Role.ADMIN)):
        raise PermissionDenied("Only admins start, stop and promote training.")


def create_round(
    user: User,
    project: Project,
    kind: str,
    preset: str,
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    base_version: ModelVersion | None = None,
    label_filter: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainingRound:
    """A QUEUED round of `project`, sent to the gpu queue once this transaction commits.
    Every round but a pretraining one starts from a version: `base_version`, or else the
    project's serving version. RoundInputError (with the field) for a request that cannot run."""
    require_admin(user)
    if kind not in RoundKind.values:
        raise RoundInputError(f"Unknown round kind {kind!r}.", field="kind")
    if algorithm not in ALGORITHMS:
        raise RoundInputError(f"algorithm must be one of {', '.join(ALGORITHMS)}.", "algorithm")
    if kind in ALGORITHMS:
        algorithm = kind  # a PPO, DPO or rejection-sampling round is its own algorithm
    base = _base_version(project, kind, base_version)
    try:
        config = build_config(kind, preset, algorithm=algorithm, overrides=dict(overrides or {}))
    except ValueError as error:
        field = "preset" if "preset" in str(error) else "overrides"
        raise RoundInputError(str(error), field=field) from None
    with transaction.atomic():
        training_round = TrainingRound.objects.create(
            project=project,
            kind=kind,
            preset=preset,
            config=config,
            label_filter=_label_filter(label_filter),
            base_version=base,
            created_by=user,
            message="Waiting for a GPU worker.",
        )
        rounds.log(training_round.pk, f"Queued by {user.username}: {', '.join(config['stages'])}.")
        rounds.send(training_round.pk)
    training_round.refresh_from_db()
    return training_round


def _base_version(project: Project, kind: str, chosen: ModelVersion | None) -> ModelVersion | None:
    if kind == RoundKind.PRETRAIN:
        return chosen
    base = chosen or project.serving_version
    if base is None:
        raise RoundInputError(
            f"Project {project.name!r} serves no model version yet: choose a base version, "
            "or pretrain a base model first.",
            field="base_version",
        )
    if chosen is not None and not project_versions(project).filter(pk=chosen.pk).exists():
        raise RoundInputError(
            f"Version {chosen.name!r} is not one of project {project.name!r}'s versions.",
            field="base_version",
        )
    return base


def _label_filter(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """The export filters that choose the round's labels, validated by the exports' rules."""
    raw = dict(raw or {})
    if unknown := sorted(set(raw) - set(ROUND_FILTERS)):
        raise RoundInputError(f"Unknown label filter(s): {', '.join(unknown)}.", field=unknown[0])
    try:
        return clean_filters(raw)
    except ExportError as error:
        raise RoundInputError(error.message, field=error.field) from None


def cancel_round(user: User, training_round: TrainingRound) -> str:
    """Cancel a queued round at once, or ask a running one to stop; returns the state after."""
    require_admin(user)
    with transaction.atomic():  # a refused cancel leaves no log line
        rounds.log(training_round.pk, f"{user.username} asked to cancel.")
        return rounds.cancel(training_round.pk)


def resume_round(user: User, training_round: TrainingRound) -> None:
    """Queue a failed or cancelled round again; it continues from its last checkpoint."""
    require_admin(user)
    with transaction.atomic():
        rounds.log(training_round.pk, f"{user.username} asked to resume.")
        rounds.resume(training_round.pk)


def promote_version(user: User, project: Project, version: ModelVersion) -> Project:
    """`version` becomes the model that samples new responses for `project`."""
    require_admin(user)
    if not project_versions(project).filter(pk=version.pk).exists():
        raise RoundInputError(
            f"Version {version.name!r} is not one of project {project.name!r}'s versions.",
            field="version",
        )
    try:
        registry.promote(project, version)
    except registry.RegistryError as error:
        raise RoundInputError(str(error), field="version") from None
    return project
