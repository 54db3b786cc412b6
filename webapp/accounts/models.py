from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models


class Role(models.TextChoices):
    """What a person may do here. A user without a role can sign in and see nothing else."""

    ANNOTATOR = "annotator", "Annotator"
    RESEARCHER = "researcher", "Researcher"
    ADMIN = "admin", "Admin"


class User(AbstractUser):
    role = models.CharField(max_length=16, choices=Role.choices, blank=True, default="")

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(role__in=["", *Role.values]), name="user_role_is_known"
            )
        ]

    def __str__(self) -> str:
        return self.username

    def has_role(self, *roles: Role) -> bool:
        # A superuser is an admin whatever the field says: they can grant themselves any role.
        effective = Role.ADMIN if self.is_superuser else self.role
        return effective in roles

    @property
    def role_label(self) -> str:
        if self.is_superuser:
            return Role.ADMIN.label
        return Role(self.role).label if self.role else "No role yet"
