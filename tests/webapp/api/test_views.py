"""The token page: who may see it, creating a token (its secret shown once), revoking one, and
its htmx fragments."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from tests.conftest import client_for
from tests.webapp.api.conftest import API, bearer
from webapp.accounts.models import User
from webapp.api import services
from webapp.api.models import ApiToken

TOKENS = "/api/tokens/"
HTMX = {"HX-Request": "true"}
SECRET = re.compile(r"rlhf_[A-Za-z0-9_-]{40,}")


def revoke_url(token: ApiToken) -> str:
    return reverse("api-token-revoke", args=[token.pk])


@pytest.mark.parametrize("name", ["researcher", "admin_user"])
def test_researchers_and_admins_see_their_tokens(request: pytest.FixtureRequest, name: str) -> None:
    user: User = request.getfixturevalue(name)
    services.create_token(user, "my laptop")
    response = client_for(user).get(TOKENS)
    assert response.status_code == 200
    assert "my laptop" in response.content.decode()
    assert 'href="/api/tokens/"' in response.content.decode()  # the navigation link


@pytest.mark.parametrize("name", ["annotator", "second_annotator", "outsider"])
def test_others_are_refused_with_403(request: pytest.FixtureRequest, name: str) -> None:
    user: User = request.getfixturevalue(name)
    client = client_for(user)
    assert client.get(TOKENS).status_code == 403
    assert client.post(TOKENS, {"name": "x", "expires": "30"}).status_code == 403
    assert not ApiToken.objects.exists()
    assert 'href="/api/tokens/"' not in client.get("/").content.decode()


@pytest.mark.django_db
def test_anonymous_visitors_are_sent_to_log_in() -> None:
    response = Client().get(TOKENS)
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_a_researcher_does_not_see_someone_elses_tokens(researcher: User, admin_user: User) -> None:
    services.create_token(admin_user, "admin's cluster")
    assert "admin's cluster" not in client_for(researcher).get(TOKENS).content.decode()


def test_creating_shows_the_secret_once_and_it_works(researcher: User) -> None:
    client = client_for(researcher)
    response = client.post(TOKENS, {"name": "notebook", "expires": "30"}, headers=HTMX)
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    (secret,) = set(SECRET.findall(response.content.decode()))
    token = ApiToken.objects.get(user=researcher)
    assert token.name == "notebook" and token.expires_at is not None
    assert secret not in client.get(TOKENS).content.decode()
    assert Client().get(API + "/projects", headers=bearer(secret)).status_code == 200


def test_creating_by_htmx_answers_the_fragment(researcher: User) -> None:
    response = client_for(researcher).post(
        TOKENS, {"name": "notebook", "expires": "never"}, headers=HTMX
    )
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="tokens">') and "<html" not in html
    assert ApiToken.objects.get(user=researcher).expires_at is None


def test_creating_without_htmx_answers_the_whole_page(researcher: User) -> None:
    response = client_for(researcher).post(TOKENS, {"name": "notebook", "expires": "90"})
    assert "<html" in response.content.decode()
    assert SECRET.search(response.content.decode())


@pytest.mark.parametrize(
    "data", [{"name": "", "expires": "30"}, {"name": "x", "expires": "7"}, {"name": "x" * 101}]
)
def test_a_bad_form_is_a_422_fragment_and_makes_nothing(
    researcher: User, data: dict[str, str]
) -> None:
    response = client_for(researcher).post(TOKENS, data, headers=HTMX)
    assert response.status_code == 422
    assert 'class="errorlist' in response.content.decode()
    assert not ApiToken.objects.exists()


def test_the_cap_on_live_tokens_is_shown_as_an_error(
    researcher: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "MAX_LIVE_TOKENS", 1)
    client = client_for(researcher)
    client.post(TOKENS, {"name": "one", "expires": "30"}, headers=HTMX)
    response = client.post(TOKENS, {"name": "two", "expires": "30"}, headers=HTMX)
    assert response.status_code == 422 and "revoke one" in response.content.decode()
    assert ApiToken.objects.count() == 1


def test_revoking_by_htmx_stops_the_token(researcher: User) -> None:
    token, secret = services.create_token(researcher, "old")
    response = client_for(researcher).post(revoke_url(token), headers=HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="tokens">') and "Revoked" in html
    assert Client().get(API + "/projects", headers=bearer(secret)).status_code == 401


def test_someone_elses_token_cannot_be_revoked(researcher: User, admin_user: User) -> None:
    token, _ = services.create_token(admin_user, "admin's")
    assert client_for(researcher).post(revoke_url(token)).status_code == 404
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None


def test_revoking_needs_a_post_and_the_role(researcher: User, annotator: User) -> None:
    token, _ = services.create_token(researcher, "mine")
    assert client_for(researcher).get(revoke_url(token)).status_code == 405
    assert client_for(annotator).post(revoke_url(token)).status_code == 403
    assert Client().post(revoke_url(token)).status_code == 302
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None


def test_the_page_needs_the_csrf_token(researcher: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(researcher)
    assert client.post(TOKENS, {"name": "x", "expires": "30"}).status_code == 403
