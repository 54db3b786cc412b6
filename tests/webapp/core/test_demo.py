import pytest
from django.contrib.auth import authenticate
from django.test import RequestFactory

from webapp.accounts.models import Role, User
from webapp.core.demo import DEMO_ACCOUNTS, accounts_with_published_passwords, ensure_demo_accounts

# The sign-in page's request: log-in throttling (django-axes) needs one to count against.
SIGN_IN = RequestFactory().post("/accounts/login/")


@pytest.mark.django_db
def test_demo_accounts_can_sign_in_with_their_printed_passwords() -> None:
    ensure_demo_accounts()
    for account in DEMO_ACCOUNTS:
        user = authenticate(SIGN_IN, username=account.username, password=account.password)
        assert isinstance(user, User) and user.has_role(account.role)
    assert {account.role for account in DEMO_ACCOUNTS} == set(Role)


def change_the_admin_password() -> None:
    admin = User.objects.get(username="admin")
    admin.set_password("a new secret of mine")
    admin.save()


@pytest.mark.django_db
def test_seeding_again_keeps_a_changed_password() -> None:
    ensure_demo_accounts()
    change_the_admin_password()
    ensure_demo_accounts()
    assert User.objects.filter(username="admin").count() == 1
    assert authenticate(SIGN_IN, username="admin", password="a new secret of mine") is not None


@pytest.mark.django_db
def test_accounts_with_published_passwords_leaves_out_changed_ones() -> None:
    ensure_demo_accounts()
    change_the_admin_password()
    published = accounts_with_published_passwords()
    assert [account.username for account in published] == ["researcher", "annotator", "annotator2"]
