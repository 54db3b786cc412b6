"""A form larger than Django reads into memory, answered in the terms of the page it came from.

Django refuses to read a form body over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) and raises
RequestDataTooBig the first time anything reads `request.POST`: the CSRF check, before any view
runs. Left to Django, that is a bare "Bad Request (400)" page that htmx swaps in place of the
form, and what was typed is lost. `bad_request` (the project's handler400) answers 413 instead,
and a view that declares `answers_too_large` gives its own answer (the annotate page puts the
message beside the field and keeps the half-done answer). The form's longest field is found by
reading the body in chunks and counting its values, never holding them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar
from urllib.parse import unquote_plus

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, UnreadablePostError
from django.http.response import HttpResponseBase
from django.urls import Resolver404, resolve
from django.views import defaults

TooLargeResponse = Callable[[HttpRequest, str], HttpResponse]
View = TypeVar("View", bound=Callable[..., HttpResponseBase])

ATTRIBUTE = "too_large_response"
# Bodies up to this size are read to name their longest field; a larger one is answered without.
SCAN_LIMIT = 64 * 1024 * 1024
CHUNK = 64 * 1024
MAX_NAME = 200


def answers_too_large(respond: TooLargeResponse) -> Callable[[View], View]:
    """Decorator: `respond(request, longest field's name or "")` answers a form of this view
    that was too large to read."""

    def mark(view: View) -> View:
        setattr(view, ATTRIBUTE, respond)
        return view

    return mark


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler400: Django's page, except for a form too large to read (see the module)."""
    if not isinstance(exception, RequestDataTooBig):
        return defaults.bad_request(request, exception)
    try:
        view = resolve(request.path_info).func
    except Resolver404:
        view = None
    respond: TooLargeResponse | None = getattr(view, ATTRIBUTE, None)
    user = getattr(request, "user", None)  # set by then, unless a middleware before it failed
    if respond is not None and user is not None and user.is_authenticated:
        return respond(request, longest_field(request))
    return HttpResponse(
        "The form is larger than the server accepts; shorten its text.",
        status=413,
        content_type="text/plain; charset=utf-8",
    )


def longest_field(request: HttpRequest) -> str:
    """The name of the field with the longest value in an unread urlencoded body; "" for
    another content type, a body over SCAN_LIMIT or one that cannot be read."""
    if request.content_type != "application/x-www-form-urlencoded":
        return ""
    try:
        remaining = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return ""
    if not 0 < remaining <= SCAN_LIMIT:
        return ""
    longest, longest_size = b"", -1
    name, size, in_value = b"", 0, False
    try:
        while remaining > 0 and (chunk := request.read(min(CHUNK, remaining))):
            remaining -= len(chunk)
            for index, segment in enumerate(chunk.split(b"&")):
                if index:  # an "&" ended the field before this segment
                    if size > longest_size:
                        longest, longest_size = name, size
                    name, size, in_value = b"", 0, False
                if in_value:
                    size += len(segment)
                else:
                    head, equals, rest = segment.partition(b"=")
                    name = (name + head)[:MAX_NAME]
                    in_value, size = bool(equals), len(rest)
    except UnreadablePostError:
        return ""
    if size > longest_size:
        longest = name
    return unquote_plus(longest.decode("ascii", errors="replace"))
