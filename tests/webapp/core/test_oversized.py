"""oversized.py: a form too large to read is a 413, in its page's terms where the view says how."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest
from django.test import Client, RequestFactory

from webapp.accounts.models import User
from webapp.core import oversized

FORM = "application/x-www-form-urlencoded"


def form_request(body: bytes, content_type: str = FORM) -> HttpRequest:
    return RequestFactory().generic("POST", "/", body, content_type=content_type)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64 * 1024])
def test_it_names_the_longest_field_whatever_the_chunks(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(oversized, "CHUNK", chunk)
    body = urlencode({"a": "1", "q-why-text": "x y" * 40, "csrf": "z" * 30, "n": ""}).encode()
    assert oversized.longest_field(form_request(body)) == "q-why-text"


def test_it_decodes_the_name_and_keeps_the_last_field_too() -> None:
    body = b"a=1&q-caf%C3%A9-text=" + b"x" * 100
    assert oversized.longest_field(form_request(body)) == "q-café-text"


def test_it_reads_nothing_but_an_urlencoded_form() -> None:
    request = form_request(b'{"a": "' + b"x" * 100 + b'"}', content_type="application/json")
    assert oversized.longest_field(request) == ""
    assert request.read() != b""  # the body is left unread


def test_it_does_not_read_a_body_past_its_scan_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oversized, "SCAN_LIMIT", 10)
    request = form_request(b"a=" + b"x" * 100)
    assert oversized.longest_field(request) == ""


def test_other_bad_requests_keep_djangos_page() -> None:
    response = oversized.bad_request(form_request(b""), SuspiciousOperation("odd"))
    assert response.status_code == 400


def test_a_too_large_form_of_a_view_that_says_nothing_is_a_plain_413(annotator: User) -> None:
    request = form_request(b"x=" + b"y" * 100)
    request.path_info = "/exports/"
    request.user = annotator
    response = oversized.bad_request(request, RequestDataTooBig("too big"))
    assert response.status_code == 413
    assert b"larger than the server accepts" in response.content


def test_a_form_too_large_for_the_csrf_check_is_answered_by_the_handler(annotator: User) -> None:
    client = Client(enforce_csrf_checks=True)  # the check reads the form before any view runs
    client.force_login(annotator)
    client.cookies["csrftoken"] = "a" * 32
    response = client.post("/exports/", b"note=" + b"x" * 3_000_000, content_type=FORM)
    assert response.status_code == 413
