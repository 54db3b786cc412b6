"""Demo accounts for the embedded default. Never called by production code paths."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from webapp.accounts.models import Role, User


@dataclass(frozen=True)
class DemoAccount:
    username: str
    password: str
    role: Role


DEMO_ACCOUNTS = (
    DemoAccount("admin", "demo-admin", Role.ADMIN),
    DemoAccount("researcher", "demo-researcher", Role.RESEARCHER),
    DemoAccount("annotator", "demo-annotator", Role.ANNOTATOR),
    DemoAccount("annotator2", "demo-annotator2", Role.ANNOTATOR),
)


@transaction.atomic
def ensure_demo_accounts() -> tuple[DemoAccount, ...]:
    """Create the demo accounts that are missing; leave existing ones (and changed passwords)."""
    for account in DEMO_ACCOUNTS:
        user, created = User.objects.get_or_create(
            username=account.username, defaults={"role": account.role}
        )
        if created:
            user.set_password(account.password)
            if account.role == Role.ADMIN:
                user.is_staff = user.is_superuser = True
            user.save()
    return DEMO_ACCOUNTS


def accounts_with_published_passwords() -> list[DemoAccount]:
    """The demo accounts that still sign in with the password this module (and the README) show."""
    published = []
    for account in DEMO_ACCOUNTS:
        user = User.objects.filter(username=account.username).first()
        if user is not None and user.is_active and user.check_password(account.password):
            published.append(account)
    return published
