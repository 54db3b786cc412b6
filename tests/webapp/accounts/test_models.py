import pytest
from django.db import IntegrityError

from tests.conftest import MakeUser
from webapp.accounts.models import Role, User


def test_a_user_holds_only_the_role_given(annotator: User) -> None:
    assert annotator.has_role(Role.ANNOTATOR)
    assert not annotator.has_role(Role.RESEARCHER, Role.ADMIN)


def test_a_user_without_a_role_holds_none(outsider: User) -> None:
    assert not outsider.has_role(*Role)
    assert outsider.role_label == "No role yet"


def test_a_superuser_counts_as_admin(make_user: MakeUser) -> None:
    root = make_user("root", "", is_superuser=True)
    assert root.has_role(Role.ADMIN)
    assert root.role_label == "Admin"


@pytest.mark.usefixtures("postgres")
def test_the_database_refuses_an_unknown_role(make_user: MakeUser) -> None:
    with pytest.raises(IntegrityError):
        make_user("mallory", "superadmin")


def test_the_project_uses_its_own_user_model() -> None:
    from django.contrib.auth import get_user_model

    assert get_user_model() is User
