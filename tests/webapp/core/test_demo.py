import pytest
from django.contrib.auth import authenticate

from webapp.accounts.models import Role, User
from webapp.core.demo import DEMO_ACCOUNTS, ensure_demo_accounts


@pytest.mark.django_db
def test_demo_accounts_can_sign_in_with_their_printed_passwords() -> None:
    ensure_demo_accounts()
    for account in DEMO_ACCOUNTS:
        user = authenticate(username=account.username, password=account.password)
        assert isinstance(user, User) and user.has_role(account.role)
    assert {account.role for account in DEMO_ACCOUNTS} == set(Role)


@pytest.mark.django_db
def test_seeding_again_keeps_a_changed_password() -> None:
    ensure_demo_accounts()
    admin = User.objects.get(username="admin")
    admin.set_password("a new secret of mine")
    admin.save()
    ensure_demo_accounts()
    assert User.objects.filter(username="admin").count() == 1
    assert authenticate(username="admin", password="a new secret of mine") is not None
