"""Turn core exceptions into HTTP errors with clear messages (the API's one error helper).

The core raises the classes of :mod:`cellsparse_app.errors` (and plain ``ValueError`` /
``FileNotFoundError`` for bad input and missing files); :func:`status_for` maps them to 4xx/503 so
a client sees what to fix, never a stack trace. Anything else, a bare ``KeyError`` or
``TypeError`` included, is a bug: a 500 with a generic message (the traceback goes to the log).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cellsparse_app.errors import CellsparseError, InvalidInput, NotFound, QueueFull, Unavailable

logger = logging.getLogger(__name__)


#: Error answers shared by every route, for the OpenAPI schema (the message is in ``detail``).
ERROR_RESPONSES: dict[int | str, dict] = {
    400: {"description": "Bad input: the message in `detail` says what to fix"},
    401: {"description": "Missing or wrong API token (servers started with a token)"},
    404: {"description": "Unknown model or job"},
    413: {"description": "Body or image larger than the server's limits"},
    422: {"description": "Request body does not match the schema (echoed values are cut "
                         "to 200 characters)"},
    503: {"description": "The server is shutting down, or the SAM model asked for cannot run "
                         "here (the message says why and what to do)"},
}

#: Longest echo of an offending value in a 422 answer (bodies can be megabytes of base64).
MAX_ECHO_CHARS = 200


class PayloadTooLarge(InvalidInput):
    """An image or body over the configured size caps (413)."""


class NotAvailable(CellsparseError, RuntimeError):
    """A feature that exists in the wire format but not on this server (501)."""


#: (exception class, status), first match wins: subclasses before their bases. ``ValueError``
#: and ``FileNotFoundError`` stay client errors (the core and its libraries raise them for bad
#: input and missing files); bare ``KeyError``/``TypeError`` are deliberately absent (bugs: 500).
STATUS_BY_TYPE: tuple[tuple[type[BaseException], int], ...] = (
    (PayloadTooLarge, 413),
    (NotAvailable, 501),
    (QueueFull, 429),
    (Unavailable, 503),
    (NotFound, 404),
    (FileNotFoundError, 404),
    (ValueError, 400),  # InvalidInput and InvalidType included
    (PermissionError, 403),
)


def status_for(exc: BaseException) -> int:
    """The HTTP status a core exception maps to (500 for anything unexpected)."""
    if isinstance(exc, HTTPException):
        return exc.status_code
    for exc_type, status in STATUS_BY_TYPE:
        if isinstance(exc, exc_type):
            return status
    return 500


def message_for(exc: BaseException) -> str:
    """A one-line message for the client."""
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    return str(exc) or type(exc).__name__


def to_http(exc: BaseException) -> HTTPException:
    """``HTTPException`` for ``exc`` (500s get a generic message; the cause is logged)."""
    status = status_for(exc)
    if status >= 500 and status not in (501, 503):
        logger.exception("internal error", exc_info=exc)
        return HTTPException(500, f"internal server error ({type(exc).__name__}); see server log")
    return HTTPException(status, message_for(exc))


@contextlib.contextmanager
def core_errors() -> Iterator[None]:
    """``with core_errors(): ...`` re-raises core exceptions as the matching ``HTTPException``."""
    try:
        yield
    except HTTPException:
        raise
    except Exception as exc:
        raise to_http(exc) from exc


def install_handlers(app: FastAPI) -> None:
    """Register handlers so core exceptions escaping a route still become clear 4xx."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        http = to_http(exc)
        return JSONResponse({"detail": http.detail}, status_code=http.status_code)

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [_short_error(e) for e in exc.errors()[:20]]},
                            status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)
    for exc_type in (CellsparseError, *(t for t, _ in STATUS_BY_TYPE)):
        app.add_exception_handler(exc_type, handle)


def _short_error(error: dict) -> dict:
    """A validation error with its echoed ``input`` (and ``ctx``) cut to :data:`MAX_ECHO_CHARS`."""
    out = {k: v for k, v in error.items() if k in ("type", "loc", "msg")}
    if "input" in error:
        value = error["input"]
        text = value if isinstance(value, (str, int, float, bool)) or value is None else repr(value)
        if isinstance(text, str) and len(text) > MAX_ECHO_CHARS:
            text = f"{text[:MAX_ECHO_CHARS]}... ({len(text)} characters)"
        out["input"] = text
    if isinstance(error.get("ctx"), dict):
        out["ctx"] = {k: str(v)[:MAX_ECHO_CHARS] for k, v in error["ctx"].items()}
    return out
