"""Log-in throttling per account and per address (django-axes, webapp/accounts/throttling.py)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.http import HttpResponse
from django.test import Client
from django.test.utils import override_settings
from django.utils import timezone

from tests.conftest import PASSWORD, MakeUser
from webapp.accounts.models import Role, User

LIMIT = 10  # settings.AXES_FAILURE_LIMIT without LOGIN_FAILURE_LIMIT set
LOCKED = "Too many failed sign-ins for this account or from this address."


def sign_in(
    username: str, password: str, address: str = "10.0.0.1", forwarded: str = ""
) -> tuple[Client, HttpResponse]:
    client = Client()
    form = {"username": username, "password": password, "next": "/annotate/"}
    headers = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded else {}
    response = client.post("/accounts/login/", form, REMOTE_ADDR=address, **headers)
    return client, response


def fail(times: int, username: str = "ann", address: str = "10.0.0.1") -> None:
    for _ in range(times):
        sign_in(username, "wrong", address)


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_the_limit_is_ten_failures_and_the_pause_fifteen_minutes() -> None:
    assert settings.AXES_FAILURE_LIMIT == LIMIT
    assert timedelta(minutes=15) == settings.AXES_COOLOFF_TIME


def test_failures_below_the_limit_leave_the_right_password_working(annotator: User) -> None:
    fail(LIMIT - 1)
    client, response = sign_in("ann", PASSWORD)
    assert response.status_code == 302 and signed_in(client)


def test_the_failure_that_reaches_the_limit_shows_the_reason_with_a_429(annotator: User) -> None:
    fail(LIMIT - 1)
    _, response = sign_in("ann", "wrong")
    assert response.status_code == 429
    html = response.content.decode()
    assert LOCKED in html and "Try again in 15 minutes" in html
    assert 'name="password"' in html and 'value="ann"' in html and 'value="/annotate/"' in html


def test_a_locked_account_refuses_the_right_password_from_any_address(annotator: User) -> None:
    fail(LIMIT, address="10.0.0.1")
    client, response = sign_in("ann", PASSWORD, address="10.9.9.9")
    assert response.status_code == 429 and not signed_in(client)


def test_an_address_with_too_many_failures_is_locked_for_every_account(
    annotator: User, make_user: MakeUser
) -> None:
    make_user("other", Role.ANNOTATOR)
    for number in range(LIMIT):
        sign_in(f"guess{number}", "wrong", address="10.0.0.7")
    client, response = sign_in("other", PASSWORD, address="10.0.0.7")
    assert response.status_code == 429 and not signed_in(client)
    assert signed_in(sign_in("other", PASSWORD, address="10.0.0.8")[0])


def test_the_lock_ends_after_the_cool_off_time(annotator: User) -> None:
    from axes.models import AccessAttempt

    fail(LIMIT)
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert signed_in(sign_in("ann", PASSWORD)[0])


def test_the_admin_log_in_is_throttled_too(admin_user: User) -> None:
    for _ in range(LIMIT):
        Client(REMOTE_ADDR="10.0.0.3").post(
            "/admin/login/", {"username": "boss", "password": "wrong"}
        )
    client = Client(REMOTE_ADDR="10.0.0.4")
    response = client.post("/admin/login/", {"username": "boss", "password": PASSWORD})
    assert response.status_code == 429 and not signed_in(client)


@override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"))
def test_behind_the_proxy_the_address_the_proxy_appended_counts(
    annotator: User, make_user: MakeUser
) -> None:
    make_user("other", Role.ANNOTATOR)
    # Every request comes from the proxy; the client chose the first entry, the proxy the last.
    proxy = "172.18.0.2"
    for number in range(LIMIT):
        forwarded = f"1.1.1.{number}, 203.0.113.5"
        sign_in(f"guess{number}", "wrong", proxy, forwarded)
    assert signed_in(sign_in("other", PASSWORD, proxy, "198.51.100.9")[0])
    client, response = sign_in("ann", PASSWORD, proxy, "9.9.9.9, 203.0.113.5")
    assert response.status_code == 429 and not signed_in(client)
