"""Hardening headers (settings.py): the Content-Security-Policy on every page, which the app's own
pages keep to, HTTPS redirect and HSTS, and `check --deploy` clean with docker-compose.yml's
production environment.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from django.http import HttpResponse
from django.test import Client
from django.test.utils import override_settings

from webapp.accounts.models import User
from webapp.annotation.demo import seed_demo_projects
from webapp.core.demo import ensure_demo_accounts

ROOT = Path(__file__).resolve().parents[2]
POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "style-src-attr": "'unsafe-inline'",
    "img-src": "'self' data:",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
# Django's admin, beside the pages a crawl from the home page reaches.
ADMIN_PAGES = ["/admin/", "/admin/accounts/user/", "/admin/accounts/user/{admin}/change/"]


def policy_of(response: HttpResponse) -> dict[str, str]:
    parts = (part.strip().partition(" ") for part in response["Content-Security-Policy"].split(";"))
    return {name: value for name, _, value in parts}


class InlineCode(HTMLParser):
    """What a page holds that a policy without 'unsafe-inline' scripts and styles would block."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "script" and "src" not in values and values.get("type") != "application/json":
            self.blocked.append("an inline <script>")
        if tag == "style":
            self.blocked.append("a <style> element")
        for name, value in values.items():
            if name.startswith("on"):
                self.blocked.append(f"an event handler {name}= on <{tag}>")
            if value.strip().lower().startswith("javascript:"):
                self.blocked.append(f"a javascript: URL in {name}= on <{tag}>")
            if name in {"src", "href"} and value.startswith("//"):
                self.blocked.append(f"another site's {value}")
        if tag == "a" and values.get("href", "").startswith("/"):
            self.links.append(values["href"].split("#")[0])


def crawl(client: Client, start: list[str], limit: int = 80) -> dict[str, list[str]]:
    """Every page reachable by links from `start` (the admin and static files aside): what each
    one holds that the policy blocks."""
    found: dict[str, list[str]] = {}
    queue = list(start)
    while queue and len(found) < limit:
        url = queue.pop(0)
        if url in found:
            continue
        response = client.get(url)
        assert response.status_code == 200, url
        assert policy_of(response) == POLICY, url
        parser = InlineCode()
        parser.feed(response.content.decode())
        found[url] = parser.blocked
        queue += [
            link
            for link in parser.links
            if not link.startswith(("/admin/", "/static/", "/accounts/logout/"))
        ]
    return found


@pytest.mark.django_db
def test_every_page_carries_the_policy_and_holds_nothing_it_blocks() -> None:
    ensure_demo_accounts()
    seed_demo_projects()
    admin = User.objects.get(username="admin")
    client = Client()
    client.force_login(admin)
    pages = crawl(client, ["/", *(page.format(admin=admin.pk) for page in ADMIN_PAGES)])
    assert len(pages) >= 20, sorted(pages)  # the crawl went through the app, not only home
    assert {url: blocked for url, blocked in pages.items() if blocked} == {}


def test_no_template_holds_what_the_policy_blocks() -> None:
    """Also the fragments a crawl does not reach (a new API token, a set-password link)."""
    blocked = {}
    for template in (ROOT / "webapp" / "templates").rglob("*.html"):
        parser = InlineCode()
        parser.feed(template.read_text())
        if parser.blocked:
            blocked[template.name] = parser.blocked
    assert blocked == {}


@pytest.mark.django_db
def test_the_sign_in_page_and_the_api_docs_carry_the_policy() -> None:
    for url in ["/accounts/login/", "/api/v1/docs"]:
        response = Client().get(url)
        assert response.status_code == 200, url
        assert policy_of(response) == POLICY, url
        parser = InlineCode()
        parser.feed(response.content.decode())
        assert parser.blocked == [], url


def test_htmx_is_configured_to_run_no_code_and_add_no_style_element() -> None:
    base = (ROOT / "webapp" / "templates" / "base.html").read_text()
    config = re.search(r"<meta name=\"htmx-config\" content='([^']+)'>", base)
    assert config is not None
    assert '"allowEval": false' in config.group(1)
    assert '"includeIndicatorStyles": false' in config.group(1)


@override_settings(SECURE_SSL_REDIRECT=True, SECURE_HSTS_SECONDS=3600)
@pytest.mark.django_db
def test_with_https_on_plain_http_is_redirected_except_the_health_check() -> None:
    assert Client().get("/accounts/login/")["Location"] == "https://testserver/accounts/login/"
    assert Client().get("/healthz").status_code == 200
    secure = Client().get("/accounts/login/", secure=True)
    assert secure["Strict-Transport-Security"] == "max-age=3600; includeSubDomains; preload"


def production_environment(tmp_path: Path) -> dict[str, str]:
    """docker-compose.yml's environment of the app containers, with its defaults filled in."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    required = {"SECRET_KEY": secrets.token_urlsafe(50), "POSTGRES_PASSWORD": "a password"}

    def resolve(value: str) -> str:
        def one(match: re.Match[str]) -> str:
            name, kind, default = match.group(1), match.group(2), match.group(3)
            return required[name] if kind == ":?" else default

        return re.sub(r"\$\{(\w+)(:[-?])([^}]*)\}", one, str(value))

    environment = {name: resolve(value) for name, value in compose["x-app-environment"].items()}
    # The containers' directories, here under tmp_path.
    for name in ("DATA_DIR", "MODEL_STORE_DIR", "EXPORT_DIR"):
        environment[name] = str(tmp_path / name.lower())
    return environment


def test_docker_compose_turns_https_hsts_and_secure_cookies_on(tmp_path: Path) -> None:
    environment = production_environment(tmp_path)
    assert environment["BEHIND_HTTPS_PROXY"] == "true"
    assert environment["SECURE_COOKIES"] == "true"
    assert environment["HTTPS_REDIRECT"] == "true"
    assert int(environment["HSTS_SECONDS"]) >= 31536000


def test_check_deploy_is_clean_with_the_production_environment(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **production_environment(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
