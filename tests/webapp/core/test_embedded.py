"""`manage.py embedded` (bin/run) refuses to serve other machines with the published demo passwords.

The command is stopped where it would start its processes: reaching that point means it let the
host through.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test.utils import override_settings

from webapp.accounts.models import User
from webapp.core.demo import DEMO_ACCOUNTS, ensure_demo_accounts
from webapp.core.management.commands import embedded


class Started(Exception):
    """The command got past its checks and would start the web server and the workers now."""


@pytest.fixture
def command(db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    def start_processes(*args: object) -> None:
        raise Started

    # The test database is migrated already and no page is served: only the checks run.
    monkeypatch.setattr(embedded, "call_command", lambda *args, **kwargs: None)
    monkeypatch.setattr(embedded, "_start_processes", start_processes)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with override_settings(DATA_DIR=tmp_path, MODEL_STORE_DIR=tmp_path / "models"):
        yield ["--demo-steps", "0", "--port", str(port)]


def change_password(username: str) -> None:
    user = User.objects.get(username=username)
    user.set_password("a secret of the operator's")
    user.save()


def test_all_addresses_are_refused_while_the_demo_passwords_are_published(
    command: list[str],
) -> None:
    with pytest.raises(CommandError) as refused:
        call_command("embedded", "--host", "0.0.0.0", *command)
    message = str(refused.value)
    assert "--host 0.0.0.0 makes the application reachable from other machines" in message
    assert "admin, researcher, annotator, annotator2 still have the passwords" in message
    assert "manage.py changepassword" in message and "--allow-demo-passwords" in message


def test_only_the_accounts_with_a_published_password_are_named(command: list[str]) -> None:
    ensure_demo_accounts()
    change_password("admin")
    with pytest.raises(CommandError, match=r"accounts researcher, annotator, annotator2 still"):
        call_command("embedded", "--host", "0.0.0.0", *command)


def test_all_addresses_are_served_once_every_demo_password_is_changed(
    command: list[str],
) -> None:
    ensure_demo_accounts()
    for account in DEMO_ACCOUNTS:
        change_password(account.username)
    with pytest.raises(Started):
        call_command("embedded", "--host", "0.0.0.0", *command)


def test_the_flag_serves_all_addresses_with_the_demo_passwords(command: list[str]) -> None:
    with pytest.raises(Started):
        call_command("embedded", "--host", "0.0.0.0", "--allow-demo-passwords", *command)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_is_served_with_the_demo_passwords(command: list[str], host: str) -> None:
    with pytest.raises(Started):
        call_command("embedded", "--host", host, *command)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.10", False),
        ("lab-server.example", False),
    ],
)
def test_only_loopback_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert embedded._is_loopback(host) is loopback


def test_the_banner_prints_only_the_passwords_that_still_work(command: list[str]) -> None:
    accounts = ensure_demo_accounts()
    change_password("admin")
    printed = io.StringIO()
    embedded.Command(stdout=printed)._banner("http://x/", accounts, Path("logs"), simulating=False)
    lines = printed.getvalue().splitlines()
    assert "  Admin       admin / (password changed)" in lines
    assert "  Researcher  researcher / demo-researcher" in lines
    assert "demo-admin" not in printed.getvalue()
