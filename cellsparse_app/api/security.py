"""ASGI middleware: request body size cap and optional API token.

Both are plain ASGI (no buffering), so an oversized upload is refused as soon as its
``Content-Length`` is seen, or as soon as a chunked body crosses the cap, without being read.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from http.cookies import SimpleCookie
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_COOKIE = "cellsparse_token"
_TOKEN_PREFIX = re.compile(r"^/t/([^/]+)(/.*)?$")


async def _send_json(send: Send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a streamed body crosses the cap; rendered as 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds this server's limit of {limit} bytes")


class BodySizeLimit:
    """Refuse request bodies larger than ``max_bytes`` with 413.

    Args:
        app: the wrapped ASGI app.
        max_bytes: largest accepted body.
        prefix_limits: other caps for path prefixes (e.g. the web UI's file uploads).
    """

    def __init__(self, app: ASGIApp, max_bytes: int,
                 prefix_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.default_max = max_bytes
        self.prefix_limits = prefix_limits or {}

    def _limit(self, path: str) -> int:
        for prefix, limit in self.prefix_limits.items():
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return limit
        return self.default_max

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self._limit(scope.get("path", ""))
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _send_json(send, 400, f"invalid Content-Length header {length[:40]!r}")
                return
            if int(length) > max_bytes:
                await _send_json(
                    send, 413, f"request body of {int(length)} bytes exceeds this server's limit "
                    f"of {max_bytes} bytes"
                )
                return
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise BodyTooLarge(max_bytes)
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _send_json(send, 413, str(exc.detail))


class TokenAuth:
    """Require ``token`` on every request except ``exempt`` paths.

    Accepted forms: ``Authorization: Bearer <token>``, ``X-API-Token: <token>``, the
    ``cellsparse_token`` cookie, a ``?token=<token>`` query (which also sets the cookie, so a
    browser can open ``/ui?token=...`` once), or a ``/t/<token>/`` path prefix that is stripped
    before routing (for clients such as the QuPath extensions that only let users set a base URL).
    """

    def __init__(self, app: ASGIApp, token: str, exempt: tuple[str, ...] = ()) -> None:
        self.app = app
        self.token = token.encode()
        self.exempt = exempt

    def _ok(self, supplied: str | None) -> bool:
        return supplied is not None and hmac.compare_digest(supplied.encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        match = _TOKEN_PREFIX.match(path)
        if match:
            if not self._ok(match.group(1)):
                await self._deny(scope, send)
                return
            new_path = match.group(2) or "/"
            scope = dict(scope, path=new_path, raw_path=new_path.encode())
            await self.app(scope, receive, send)
            return
        if path in self.exempt:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        auth = headers.get("authorization", "")
        candidates = [
            auth[7:].strip() if auth.lower().startswith("bearer ") else None,
            headers.get("x-api-token"),
        ]
        if "cookie" in headers:
            cookie = SimpleCookie()
            try:
                cookie.load(headers["cookie"])
            except Exception:  # a malformed cookie header is just not a token
                cookie = SimpleCookie()
            if TOKEN_COOKIE in cookie:
                candidates.append(cookie[TOKEN_COOKIE].value)
        if any(self._ok(c) for c in candidates):
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if self._ok((query.get("token") or [None])[0]):
            await self.app(scope, receive, self._with_cookie(send))
            return
        await self._deny(scope, send)

    def _with_cookie(self, send: Send) -> Send:
        cookie = (
            f"{TOKEN_COOKIE}={self.token.decode()}; Path=/; HttpOnly; SameSite=Strict"
        ).encode()

        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"set-cookie", cookie)]
                message = dict(message, headers=headers)
            await send(message)

        return wrapped

    async def _deny(self, scope: Scope, send: Send) -> None:
        logger.warning("refused %s %s: missing or wrong API token", scope["type"],
                       scope.get("path"))
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _send_json(
            send,
            401,
            "missing or wrong API token: send 'Authorization: Bearer <token>' or 'X-API-Token', "
            "or use http://host:port/t/<token>/ as the server URL",
            headers=[(b"www-authenticate", b"Bearer")],
        )
