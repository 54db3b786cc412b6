"""The API's error answers: always JSON with a `detail` a person can act on, and `field` when
one parameter is at fault."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError


class FieldError(HttpError):
    """An HttpError that names the parameter at fault."""

    def __init__(self, status_code: int, message: str, field: str | None) -> None:
        super().__init__(status_code, message)
        self.field = field


def install_handlers(api: NinjaAPI) -> None:
    # ninja types a handler's argument as the exception or its class; it passes the exception.
    def field_error(request: HttpRequest, error: FieldError | type[FieldError]) -> HttpResponse:
        assert isinstance(error, FieldError)
        body = {"detail": error.message, "field": error.field}
        return api.create_response(request, body, status=error.status_code)

    def unauthenticated(
        request: HttpRequest, error: AuthenticationError | type[AuthenticationError]
    ) -> HttpResponse:
        assert isinstance(error, AuthenticationError)
        response = api.create_response(request, {"detail": error.message}, status=401)
        # RFC 6750: a 401 names the scheme the client should use.
        response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response

    def too_large(
        request: HttpRequest, error: RequestDataTooBig | type[RequestDataTooBig]
    ) -> HttpResponse:
        # Django reads at most DATA_UPLOAD_MAX_MEMORY_SIZE of a body; left alone, this became
        # Django's plain page instead of JSON.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        detail = f"The request body is larger than the server accepts ({limit:,} bytes)."
        return api.create_response(request, {"detail": detail}, status=413)

    api.add_exception_handler(FieldError, field_error)
    api.add_exception_handler(RequestDataTooBig, too_large)
    api.add_exception_handler(AuthenticationError, unauthenticated)
