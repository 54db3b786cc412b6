import pytest
from django.test import Client

from tests.conftest import PASSWORD, client_for
from webapp.accounts.models import User


@pytest.mark.django_db
def test_the_login_page_shows_the_form_with_htmx_loaded() -> None:
    response = Client().get("/accounts/login/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="username"' in html and 'name="password"' in html
    assert "htmx" in html and "X-CSRFToken" in html


def test_signing_in_with_the_right_password_leads_home(annotator: User) -> None:
    client = Client(enforce_csrf_checks=False)
    response = client.post("/accounts/login/", {"username": "ann", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_a_wrong_password_is_refused_with_a_message(annotator: User) -> None:
    response = Client().post("/accounts/login/", {"username": "ann", "password": "nope"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()
    assert "_auth_user_id" not in Client().session


def test_a_login_without_the_csrf_token_is_refused(annotator: User) -> None:
    client = Client(enforce_csrf_checks=True)
    response = client.post("/accounts/login/", {"username": "ann", "password": PASSWORD})
    assert response.status_code == 403


def test_signing_out_ends_the_session(annotator: User) -> None:
    client = client_for(annotator)
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert client.get("/").status_code == 302


def test_signing_out_by_get_is_not_allowed(annotator: User) -> None:
    assert client_for(annotator).get("/accounts/logout/").status_code == 405
