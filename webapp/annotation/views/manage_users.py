"""Admin pages for people: invitations with a one-time set-password link, roles,
deactivation, and the page where an invited person chooses a password."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse, reverse_lazy
from django.views.decorators.http import require_http_methods, require_POST

from webapp.accounts.decorators import role_required
from webapp.accounts.models import Role, User
from webapp.annotation import projects
from webapp.annotation.forms import ROLE_CHOICES, InviteForm, RoleForm
from webapp.annotation.views.manage import (
    INVALID,
    HtmxHttpRequest,
    error_text,
    posted_data,
    signed_in_admin,
)


def _set_password_url(request: HtmxHttpRequest, user: User) -> str:
    uidb64, token = projects.set_password_link_parts(user)
    path = reverse("annotation:manage-set-password", kwargs={"uidb64": uidb64, "token": token})
    return request.build_absolute_uri(path)


def _users_page(request: HtmxHttpRequest, form: InviteForm, **extra: Any) -> HttpResponse:
    users = User.objects.order_by("-is_active", "username")
    template = "annotation/manage/users.html" + ("#users" if request.htmx else "")
    context = {"form": form, "users": users, "roles": ROLE_CHOICES, **extra}
    status = INVALID if form.errors or extra.get("user_error") else 200
    return render(request, template, context, status=status)


@role_required(Role.ADMIN)
@require_http_methods(["GET", "POST"])
def users(request: HtmxHttpRequest) -> HttpResponse:
    """People and roles; POST invites someone and shows their one-time set-password link."""
    form = InviteForm(posted_data(request))
    if request.method == "POST" and form.is_valid():
        user = projects.invite_user(form.save(commit=False))
        link = _set_password_url(request, user)
        return _users_page(request, InviteForm(), invited=user, link=link)
    return _users_page(request, form)


def _user_action(request: HtmxHttpRequest, user_id: int) -> tuple[User, User]:
    return get_object_or_404(User, pk=user_id), signed_in_admin(request)


@role_required(Role.ADMIN)
@require_POST
def user_role(request: HtmxHttpRequest, user_id: int) -> HttpResponse:
    user, admin = _user_action(request, user_id)
    form = RoleForm(request.POST)
    if not form.is_valid():
        return _users_page(request, InviteForm(), user_error="Choose one of the roles.")
    try:
        projects.change_role(user, form.cleaned_data["role"], by=admin)
    except ValidationError as error:
        return _users_page(request, InviteForm(), user_error=error_text(error))
    return _users_page(request, InviteForm(), changed=user)


@role_required(Role.ADMIN)
@require_POST
def user_active(request: HtmxHttpRequest, user_id: int) -> HttpResponse:
    user, admin = _user_action(request, user_id)
    active = request.POST.get("active")
    if active not in ("0", "1"):
        return _users_page(request, InviteForm(), user_error="Say whether to activate or not.")
    try:
        projects.set_active(user, active == "1", by=admin)
    except ValidationError as error:
        return _users_page(request, InviteForm(), user_error=error_text(error))
    return _users_page(request, InviteForm(), changed=user)


@role_required(Role.ADMIN)
@require_POST
def user_link(request: HtmxHttpRequest, user_id: int) -> HttpResponse:
    """A fresh set-password link for someone who has not set a password yet."""
    user, _ = _user_action(request, user_id)
    if user.has_usable_password():
        return _users_page(
            request, InviteForm(), user_error=f"{user.username} has set a password already."
        )
    return _users_page(request, InviteForm(), invited=user, link=_set_password_url(request, user))


class SetPasswordView(auth_views.PasswordResetConfirmView):
    """The page an invited person opens to choose a password (Django's reset-token check)."""

    template_name = "annotation/manage/set_password.html"
    success_url = reverse_lazy("login")

    def form_valid(self, form: Any) -> HttpResponse:
        messages.success(self.request, "Your password is set. Sign in with it.")
        return super().form_valid(form)
