"""A small client for the controller's REST API: token, one-line errors, Server-Sent Events."""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import httpx

from controller.cli.errors import CliError
from node_agent import __version__

TIMEOUT_S = 10.0
# The server sends a keepalive every 15 s; silence for longer means the stream is dead.
EVENTS_READ_TIMEOUT_S = 45.0
MAX_FIELD_ERRORS = 3
_LOCATIONS = ("body", "query", "path", "header")


@dataclass(frozen=True)
class SseEvent:
    id: str | None
    event: str
    data: Any


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Events from text/event-stream lines; data is parsed as JSON when it is JSON."""
    event_id: str | None = None
    kind = ""
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data or kind:
                text = "\n".join(data)
                try:
                    payload: Any = json.loads(text) if text else {}
                except ValueError:
                    payload = text
                yield SseEvent(id=event_id, event=kind or "message", data=payload)
            kind, data = "", []
            continue
        if line.startswith(":"):
            continue  # a comment: keepalive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "event":
            kind = value
        elif name == "data":
            data.append(value)


def error_line(status: int, body: Any) -> str:
    """One readable line from an API error, naming the fields a 422 points at."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list) and detail:
        parts = [_field_error(item) for item in detail[:MAX_FIELD_ERRORS]]
        more = len(detail) - MAX_FIELD_ERRORS
        line = "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
    elif isinstance(detail, str) and detail:
        line = detail
    else:
        try:
            line = f"HTTP {status} {HTTPStatus(status).phrase}"
        except ValueError:
            line = f"HTTP {status}"
    if status == 401:
        line += " (give --token or set FLEETTRACE_TOKEN)"
    return line


def _field_error(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    loc = [str(part) for part in item.get("loc", [])]
    if loc and loc[0] in _LOCATIONS:
        loc = loc[1:]
    field = ".".join(loc)
    message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
    given = item.get("input")
    if isinstance(given, str | int | float | bool) and len(repr(given)) <= 40:
        message += f" (got {given!r})"
    if not field or message.startswith(field + ":"):
        return message
    return f"{field}: {message}"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as ::ffff:127.x) and localhost: traffic that never leaves."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_transport(url: str, *, token: bool, insecure_http: bool) -> None:
    """A token goes over plain HTTP only to loopback, or when the caller says so."""
    parts = urlsplit(url)
    if not token or insecure_http or parts.scheme.lower() != "http":
        return
    host = parts.hostname or ""
    if not is_loopback(host):
        raise CliError(
            f"refusing to send the API token over plain http:// to {host or url}"
            " (use https://, or --insecure-http / FLEETTRACE_INSECURE_HTTP=1 on a trusted network)"
        )


def tls_context(ca: str | os.PathLike[str]) -> ssl.SSLContext:
    """Verification against the given CA file (a private CA or a self-signed controller)."""
    try:
        return ssl.create_default_context(cafile=os.fspath(ca))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CliError(f"cannot use the CA file {os.fspath(ca)}: {reason}") from None


class ApiClient:
    """Talks to one controller; `http` may be injected (tests pass FastAPI's TestClient)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        http: httpx.Client | None = None,
        ca: str | os.PathLike[str] | None = None,
        insecure_http: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        check_transport(self.url, token=bool(token), insecure_http=insecure_http)
        self._owns_http = http is None
        verify: ssl.SSLContext | bool = tls_context(ca) if ca else True
        self.http = http or httpx.Client(base_url=self.url, timeout=TIMEOUT_S, verify=verify)
        self.headers = {"User-Agent": f"fleettrace-cli/{__version__}"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def get(self, path: str, params: Any = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body=body)

    def text(self, path: str, params: Any = None) -> str:
        """A GET's body as it came: the reports and pages that are not JSON."""
        return self._send("GET", path, params=params).text

    def request(self, method: str, path: str, *, params: Any = None, body: Any = None) -> Any:
        response = self._send(method, path, params=params, body=body)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"the controller at {self.url} answered {method} {path} with something"
                " that is not JSON",
                code=1,
            ) from None

    def _send(
        self, method: str, path: str, *, params: Any = None, body: Any = None
    ) -> httpx.Response:
        try:
            response = self.http.request(
                method, path, params=params, json=body, headers=self.headers
            )
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if response.status_code >= 400:
            raise self.refused(response)
        return response

    def events(self, job_id: str, *, after: str | None = None) -> Iterator[SseEvent]:
        """A job's events from the start (or after `after`) until the server ends the stream."""
        headers = {**self.headers, "Accept": "text/event-stream"}
        if after:
            headers["Last-Event-ID"] = after
        timeout = httpx.Timeout(TIMEOUT_S, read=EVENTS_READ_TIMEOUT_S)
        try:
            with self.http.stream(
                "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self.refused(response)
                yield from parse_sse(response.iter_lines())
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None

    def unreachable(self, exc: httpx.TransportError) -> CliError:
        reason = str(exc) or type(exc).__name__
        if "CERTIFICATE_VERIFY_FAILED" in reason:
            reason += " (give --ca FILE or set FLEETTRACE_CA to the CA that signed its certificate)"
        return CliError(f"cannot reach the controller at {self.url}: {reason}", code=1)

    def refused(self, response: httpx.Response) -> CliError:
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        status = response.status_code
        return CliError(error_line(status, body), code=2 if status < 500 else 1)
