"""Researchers see annotators under pseudonyms, never their usernames.

A pseudonym is an HMAC of the annotator's id keyed with SECRET_KEY and the project's id: stable
within a project (so answers of one person can be grouped, across pages and calls), different
across projects (so one project's data cannot be joined with another's to follow a person), and
not reversible without the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from django.conf import settings

from webapp.accounts.models import User

PATTERN = r"^a_[0-9a-f]{16}$"


def annotator_pseudonym(project_id: int, user_id: int) -> str:
    key = f"{settings.SECRET_KEY}:api-annotator-pseudonym:{project_id}".encode()
    digest = hmac.new(key, str(user_id).encode(), hashlib.sha256).hexdigest()
    return f"a_{digest[:16]}"


def pseudonyms(project_id: int, user_ids: Iterable[int]) -> dict[int, str]:
    return {user_id: annotator_pseudonym(project_id, user_id) for user_id in user_ids}


def user_with_pseudonym(project_id: int, pseudonym: str) -> int | None:
    """The id of the user who has `pseudonym` in the project, if anyone has.

    People number in the hundreds: hashing every id is cheaper than any join, and needs no
    stored table of pseudonyms that could be read back into names.
    """
    for user_id in User.objects.values_list("id", flat=True).iterator():
        if annotator_pseudonym(project_id, user_id) == pseudonym:
            return user_id
    return None
