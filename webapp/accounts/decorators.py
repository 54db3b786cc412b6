from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseBase

from webapp.accounts.models import Role, User

P = ParamSpec("P")
R = TypeVar("R", bound=HttpResponseBase)


def role_required(
    *roles: Role,
) -> Callable[[Callable[..., R]], Callable[..., HttpResponseBase]]:
    """Let through signed-in users holding one of `roles`.

    Anonymous visitors are sent to the log-in page; signed-in users without the role get 403.
    """
    if not roles:
        raise ValueError("role_required needs at least one role.")

    def decorator(view: Callable[..., R]) -> Callable[..., HttpResponseBase]:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponseBase:
            user = request.user
            if not (isinstance(user, User) and user.is_active and user.has_role(*roles)):
                raise PermissionDenied(f"This page is for: {', '.join(r.label for r in roles)}.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
