"""The HTTP client of the API, and the one error type every command raises.

Exit codes of ``gpuq``:

- 0  success
- 1  the server refused the request (404, 409, 422, other 4xx, 5xx) or another error
- 2  bad usage (click's own, and bad values found by gpuq: a #GPUQ line, --export, ...)
- 3  the server cannot be reached (connection refused, DNS, timeout)
- 4  authentication or permission (401 bad or missing token, 403 not allowed)
- 130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import click
import httpx

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4
EXIT_INTERRUPTED = 130

#: Seconds to wait before each retry after a transport error (so 4 tries in all).
RETRY_DELAYS_S: tuple[float, ...] = (0.2, 0.5, 1.0)
#: Answers that say "try again" (the server's database away: 503; a load balancer whose
#: upstream failed or is failing over: 502, 504): retried like a transport error.
RETRY_STATUSES = frozenset({502, 503, 504})
DEFAULT_TIMEOUT_S = 30.0

USER_TOKEN_HINT = "bad or missing token: set GPUQ_TOKEN or run gpuq up / ask your admin"
ADMIN_TOKEN_HINT = ("bad or missing admin token: set GPUQ_ADMIN_TOKEN (or admin_token in "
                    "the config file) or run gpuq up / ask your admin")


class CliError(click.ClickException):
    """An error shown as ``gpuq: <message>`` (one line per line) with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR, *,
                 status: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        #: The HTTP status when the server refused the request.
        self.status = status
        #: The answer's ``detail`` (FastAPI's), for commands that render it their own way.
        self.detail = detail

    def show(self, file: IO[Any] | None = None) -> None:
        for line in self.format_message().splitlines() or [""]:
            click.echo(f"gpuq: {line}", file=file, err=file is None)


def _detail(resp: httpx.Response) -> Any:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or resp.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return body


#: The server's 401 details that mean "no usable token": the hint says what to do. Others
#: ("token expired on ...", "user alice is disabled; ask an admin") are shown as they are.
GENERIC_401 = frozenset({"missing bearer token", "invalid or revoked token"})


def conflict_text(detail: Mapping[str, Any]) -> str:
    """A 409's ``{"message": ..., "conflicts": [3, 5]}``: the message, and the ids when
    the message does not name them all."""
    message = str(detail.get("message") or "conflict")
    ids = [str(c) for c in detail.get("conflicts") or []]
    if ids and not all(re.search(rf"\b{re.escape(i)}\b", message) for i in ids):
        message += f" (conflicts: {', '.join(ids)})"
    return message


def render_validation(detail: Any, what: str) -> str:
    """FastAPI's 422 detail as lines ``<what>.<field>: <msg>``; a ``{"message": ...}``
    detail as its message; a string detail as it is."""
    if isinstance(detail, Mapping) and "message" in detail:
        return conflict_text(detail)
    if not isinstance(detail, list):
        return str(detail)
    lines = []
    for item in detail:
        if not isinstance(item, Mapping):
            lines.append(str(item))
            continue
        loc = [str(p) for p in item.get("loc", [])]
        if loc and loc[0] == "body":
            loc = [what, *loc[1:]]
        elif loc and loc[0] in ("query", "path", "header"):
            loc = loc[1:]
        msg = str(item.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        lines.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "\n".join(lines) or "the server refused the request (422)"


def error_for(resp: httpx.Response, *, what: str, not_found: str | None,
              auth_hint: str) -> CliError:
    """The ``CliError`` for a 4xx or 5xx answer."""
    status = resp.status_code
    detail = _detail(resp)
    if status == 401:
        specific = isinstance(detail, str) and detail and detail not in GENERIC_401
        return CliError(detail if specific else auth_hint, EXIT_AUTH, status=status,
                        detail=detail)
    if status == 403:
        return CliError(f"permission denied: {render_validation(detail, what)}", EXIT_AUTH,
                        status=status, detail=detail)
    if status == 404:
        message = not_found or str(detail)
    elif status >= 500:
        message = f"server error {status}: {render_validation(detail, what)}"
    else:
        message = render_validation(detail, what)
    return CliError(message, EXIT_ERROR, status=status, detail=detail)


class ApiClient:
    """A thin wrapper of ``httpx.Client``: base URL, bearer token, timeouts, retries, and
    errors turned into ``CliError``. ``transport`` is the seam for tests."""

    def __init__(
        self,
        server: str,
        token: str | None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        auth_hint: str = USER_TOKEN_HINT,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = server
        self.auth_hint = auth_hint
        self.timeout_s = timeout_s
        self._delays = tuple(retry_delays_s)
        self._sleep = sleep
        headers = {"User-Agent": "gpuq-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            self._http = httpx.Client(base_url=server, headers=headers, transport=transport,
                                      timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10)))
        except (httpx.InvalidURL, ValueError) as e:
            raise CliError(f"bad server URL {server!r}: {e}", EXIT_USAGE) from e

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        what: str = "request",
        not_found: str | None = None,
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """Send one request; return the 2xx response or raise ``CliError``.

        A connection that could not be made is always retried (nothing was sent). Other
        transport errors (timeouts, dropped connections) and answers that say "try again"
        (``RETRY_STATUSES``) are retried only for ``idempotent`` requests: GETs, and POSTs
        the caller marks as safe to repeat (a submit with an idempotency key, a cancel).
        ``content`` (with its ``headers``) sends a body that is not JSON.
        """
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "DELETE")
        attempt = 0
        while True:
            try:
                resp = self._http.request(method, path, json=json, params=params,
                                          content=content, headers=headers)
            except httpx.UnsupportedProtocol as e:
                raise CliError(f"bad server URL {self.server!r}: {e}", EXIT_USAGE) from e
            except httpx.TransportError as e:
                retry = idempotent or isinstance(e, httpx.ConnectError | httpx.ConnectTimeout)
                if not retry or attempt >= len(self._delays):
                    raise self._unreachable(e) from e
            else:
                if resp.status_code not in RETRY_STATUSES or not idempotent \
                        or attempt >= len(self._delays):
                    break
            self._sleep(self._delays[attempt])
            attempt += 1
        if resp.status_code >= 400:
            raise error_for(resp, what=what, not_found=not_found, auth_hint=self.auth_hint)
        return resp

    def _unreachable(self, e: httpx.TransportError) -> CliError:
        if isinstance(e, httpx.TimeoutException):
            reason = f"no answer within {self.timeout_s:g} s ({type(e).__name__})"
        else:
            reason = str(e) or type(e).__name__
        return CliError(f"cannot reach the server at {self.server}: {reason}. "
                        "Is it running? (gpuq up / gpuq server)", EXIT_UNREACHABLE)

    def json(self, method: str, path: str, **kw: Any) -> Any:
        """``request`` and decode the JSON answer."""
        resp = self.request(method, path, **kw)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as e:
            raise CliError(f"the server at {self.server} answered {path} with something that "
                           "is not JSON: is it a gpuq server?") from e

    def get(self, path: str, **kw: Any) -> Any:
        return self.json("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.json("POST", path, json=body, **kw)
