import pytest
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from webapp.accounts.decorators import role_required
from webapp.accounts.models import Role, User


@role_required(Role.RESEARCHER, Role.ADMIN)
def statistics(request: HttpRequest) -> HttpResponse:
    return HttpResponse("numbers")


def request_by(user: object) -> HttpRequest:
    request = RequestFactory().get("/statistics/")
    request.user = user  # type: ignore[assignment]
    return request


@pytest.mark.parametrize("persona", ["researcher", "admin_user"])
def test_it_lets_the_named_roles_through(persona: str, request: pytest.FixtureRequest) -> None:
    user = request.getfixturevalue(persona)
    assert statistics(request_by(user)).status_code == 200


@pytest.mark.parametrize("persona", ["annotator", "outsider"])
def test_it_refuses_other_signed_in_users(persona: str, request: pytest.FixtureRequest) -> None:
    with pytest.raises(PermissionDenied):
        statistics(request_by(request.getfixturevalue(persona)))


def test_it_refuses_a_deactivated_user_with_the_right_role(researcher: User) -> None:
    researcher.is_active = False
    with pytest.raises(PermissionDenied):
        statistics(request_by(researcher))


def test_it_sends_anonymous_visitors_to_the_login_page() -> None:
    from django.contrib.auth.models import AnonymousUser

    response = statistics(request_by(AnonymousUser()))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_it_needs_at_least_one_role() -> None:
    with pytest.raises(ValueError, match="at least one role"):
        role_required()
