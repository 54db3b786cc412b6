import pytest
from django.test import Client

from tests.conftest import client_for
from webapp.accounts.models import User
from webapp.core.models import WorkerProbe

ALL_PERSONAS = ["annotator", "researcher", "admin_user", "outsider"]


def persona(request: pytest.FixtureRequest, name: str) -> User:
    user: User = request.getfixturevalue(name)
    return user


@pytest.mark.django_db
def test_home_sends_anonymous_visitors_to_the_login_page() -> None:
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("annotator", "You are an <strong>annotator</strong>"),
        ("researcher", "You are a <strong>researcher</strong>"),
        ("admin_user", "You are an <strong>admin</strong>"),
        ("outsider", "Your account has no role yet"),
    ],
)
def test_home_tells_each_role_what_it_can_do(
    name: str, says: str, request: pytest.FixtureRequest
) -> None:
    response = client_for(persona(request, name)).get("/")
    assert response.status_code == 200
    assert says in response.content.decode()


@pytest.mark.parametrize("name", ALL_PERSONAS)
def test_no_template_comment_leaks_into_a_page(name: str, request: pytest.FixtureRequest) -> None:
    # Django's {# #} comments end at the line's end; a longer one is printed as text.
    page = client_for(persona(request, name)).get("/").content.decode()
    assert "{#" not in page and "#}" not in page and "{%" not in page


@pytest.mark.parametrize(
    ("name", "links"),
    [
        ("annotator", ["/annotate/"]),
        ("researcher", ["/annotate/quality/"]),
        ("admin_user", ["/annotate/", "/annotate/manage/", "/annotate/quality/"]),
        ("outsider", []),
    ],
)
def test_the_navigation_links_each_role_to_its_pages(
    name: str, links: list[str], request: pytest.FixtureRequest
) -> None:
    page = client_for(persona(request, name)).get("/").content.decode()
    every = {"/annotate/", "/annotate/manage/", "/annotate/quality/"}
    for link in every:
        assert (f'href="{link}"' in page) == (link in links), link


@pytest.mark.parametrize("name", ["annotator", "researcher", "outsider"])
def test_only_admins_see_the_system_link(name: str, request: pytest.FixtureRequest) -> None:
    assert 'href="/system/"' not in client_for(persona(request, name)).get("/").content.decode()


@pytest.mark.django_db
def test_healthz_reports_a_reachable_database() -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok"}


@pytest.mark.parametrize("name", ["annotator", "researcher", "outsider"])
@pytest.mark.parametrize("path", ["/system/", "/system/probes/"])
def test_the_system_pages_refuse_everyone_but_admins(
    name: str, path: str, request: pytest.FixtureRequest
) -> None:
    client = client_for(persona(request, name))
    assert client.get(path).status_code == 403
    assert client.post(path).status_code == 403
    assert not WorkerProbe.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/system/", "/system/probes/"])
def test_the_system_pages_send_anonymous_visitors_to_log_in(path: str) -> None:
    assert Client().get(path).status_code == 302
    assert Client().post(path).status_code == 302


def test_the_system_page_renders_in_full_for_an_admin(admin_user: User) -> None:
    response = client_for(admin_user).get("/system/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" in html and "Check workers" in html and "No probe yet." in html


def test_checking_workers_returns_only_the_fragment_and_polls(
    admin_user: User, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client_for(admin_user).post("/system/probes/", headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html and html.lstrip().startswith('<div id="probes"')
    assert 'hx-trigger="every 1s"' in html and html.count("waiting…") == 2
    assert len(callbacks) == 2
    assert set(WorkerProbe.objects.values_list("queue", flat=True)) == {"default", "gpu"}


def test_the_fragment_stops_polling_once_every_queue_answered(admin_user: User) -> None:
    from django.utils import timezone

    now = timezone.now()
    for queue in ("default", "gpu"):
        WorkerProbe.objects.create(
            queue=queue, requested_at=now, answered_at=now, worker=f"{queue}@h", details={"pid": 1}
        )
    html = client_for(admin_user).get("/system/probes/").content.decode()
    assert html.count("answered") == 2 and "every 1s" not in html


def test_the_system_page_rejects_other_methods(admin_user: User) -> None:
    assert client_for(admin_user).delete("/system/probes/").status_code == 405
    assert client_for(admin_user).post("/system/").status_code == 405
