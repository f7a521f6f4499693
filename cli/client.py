"""The HTTP client of the API, and the one error type every command raises.

Exit codes of ``gpuq``:

- 0  success
- 1  the server refused the request (404, 409, 422, other 4xx, 5xx) or another error
- 2  bad usage (click's own, and bad values found by gpuq: a #GPUQ line, --export, ...)
- 3  the server cannot be reached (connection refused, DNS, timeout)
- 4  authentication or permission (401 bad or missing token, 403 not allowed)
- 130 interrupted (Ctrl-C)

The client speaks HTTP/1.1 itself, one connection per request, on ``_socket`` (and
``socket`` and ``ssl`` for an https URL, imported only then). A command's process is short:
what it imports is most of what it costs, against a budget of 60 ms for a whole ``gpuq q``
(bench/cli.py): httpx took 90 ms to import, ``http.client`` 20 ms (it imports the ``email``
package and ``ssl``), ``socket`` 4 ms (it makes enums of all its constants); the C module
under ``socket`` costs nothing.
"""

from __future__ import annotations

import _socket
import json as _json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

import click

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
#: Seconds to wait for a connection (at most; ``--timeout`` when smaller).
CONNECT_TIMEOUT_S = 10.0

USER_TOKEN_HINT = "bad or missing token: set GPUQ_TOKEN or run gpuq up / ask your admin"
ADMIN_TOKEN_HINT = ("bad or missing admin token: set GPUQ_ADMIN_TOKEN (or admin_token in "
                    "the config file) or run gpuq up / ask your admin")

#: The longest status line or header line read, and the most header lines.
_MAX_LINE = 65536
_MAX_HEADERS = 200
#: What a request path may hold as it is (RFC 3986 pchar, "/" and "%"); the rest is quoted.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


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


class Headers(dict[str, str]):
    """An answer's headers: names in lower case, looked up in any case; a name sent more
    than once has its values joined with ", "."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__()
        for name, value in items:
            key = name.lower()
            self[key] = f"{self[key]}, {value}" if key in self else value

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name.lower() if isinstance(name, str) else name)

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)


class Response:
    """An answer: its status, headers and whole body."""

    def __init__(self, status_code: int, content: bytes = b"",
                 headers: Headers | None = None, reason_phrase: str = "") -> None:
        self.status_code = status_code
        self.content = content
        self.headers = headers if headers is not None else Headers()
        self._reason = reason_phrase

    @property
    def reason_phrase(self) -> str:
        """The status line's reason, or the standard one for the status."""
        if self._reason:
            return self._reason
        from http import HTTPStatus  # only for a server that sent none

        try:
            return HTTPStatus(self.status_code).phrase
        except ValueError:
            return ""

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` when it is not."""
        return _json.loads(self.content)


class TransportError(Exception):
    """No answer: the connection could not be made (``connecting``: nothing was sent), or
    it failed or timed out on the way. ``kind`` names it as the message shows it
    (``ConnectTimeout``, ``ReadTimeout``, ...)."""

    def __init__(self, message: str, *, connecting: bool, kind: str = "") -> None:
        super().__init__(message)
        self.connecting = connecting
        self.kind = kind

    @property
    def timed_out(self) -> bool:
        return self.kind.endswith("Timeout")


def _detail(resp: Response) -> Any:
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


def error_for(resp: Response, *, what: str, not_found: str | None,
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


def _query_value(value: Any) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    return "" if value is None else str(value)


def query_string(params: Mapping[str, Any] | None) -> str:
    """``params`` as a query (``k=v&k=w``): a list or tuple value is the key repeated (none
    for an empty one), booleans are ``true``/``false``."""
    pairs = []
    for key, value in (params or {}).items():
        for v in value if isinstance(value, list | tuple) else (value,):
            pairs.append((key, _query_value(v)))
    return urlencode(pairs)


class ApiClient:
    """The API's client: base URL, bearer token, timeouts, retries, and errors turned into
    ``CliError``. ``send`` (one exchange: method, URL path and query, headers, body ->
    ``Response`` or ``TransportError``) is the seam for tests; ``http_exchange`` by
    default."""

    def __init__(
        self,
        server: str,
        token: str | None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        auth_hint: str = USER_TOKEN_HINT,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
        sleep: Callable[[float], None] = time.sleep,
        send: Callable[..., Response] | None = None,
    ) -> None:
        self.server = server
        self.auth_hint = auth_hint
        self.timeout_s = timeout_s
        self._delays = tuple(retry_delays_s)
        self._sleep = sleep
        self._send = send or http_exchange
        self._headers = {"User-Agent": "gpuq-cli", "Accept": "*/*"}
        if token:
            if not (token.isascii() and token.isprintable()):
                raise CliError("bad token: it holds a character a token cannot have (a line "
                               "break, a control character, non-ASCII)", EXIT_USAGE)
            self._headers["Authorization"] = f"Bearer {token}"
        try:
            u = urlsplit(server)
            port = u.port
        except ValueError as e:
            raise CliError(f"bad server URL {server!r}: {e}", EXIT_USAGE) from e
        self._scheme = u.scheme.lower()
        if self._scheme not in ("http", "https"):
            raise CliError(f"bad server URL {server!r}: Request URL has an unsupported "
                           f"protocol '{u.scheme}://'.", EXIT_USAGE)
        if not u.hostname:
            raise CliError(f"bad server URL {server!r}: no host", EXIT_USAGE)
        self._host = u.hostname
        self._port = port or (443 if self._scheme == "https" else 80)
        host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
        self._headers["Host"] = host if port is None else f"{host}:{port}"
        self._base_path = u.path.rstrip("/")

    def close(self) -> None:
        """Nothing held between requests (a connection per request); for ``with``."""

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
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        what: str = "request",
        not_found: str | None = None,
        idempotent: bool | None = None,
    ) -> Response:
        """Send one request; return the 2xx response or raise ``CliError``.

        A connection that could not be made is always retried (nothing was sent). Other
        transport errors (timeouts, dropped connections) and answers that say "try again"
        (``RETRY_STATUSES``) are retried only for ``idempotent`` requests: GETs, and POSTs
        the caller marks as safe to repeat (a submit with an idempotency key, a cancel).
        ``content`` (with its ``headers``) sends a body that is not JSON.
        """
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "DELETE")
        target = quote(self._base_path + path, safe=_PATH_SAFE)
        query = query_string(params)
        if query:
            target += "?" + query
        send_headers = dict(self._headers)
        body = content
        if json is not None and content is None:
            body = _json.dumps(json, ensure_ascii=False, separators=(",", ":"),
                               allow_nan=False).encode()
            send_headers["Content-Type"] = "application/json"
        send_headers.update(headers or {})
        if body is not None or method in ("POST", "PUT", "PATCH"):
            send_headers["Content-Length"] = str(len(body or b""))
        attempt = 0
        while True:
            try:
                resp = self._send(self._scheme, self._host, self._port, method, target,
                                  send_headers, body, timeout_s=self.timeout_s)
            except TransportError as e:
                retry = idempotent or e.connecting
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

    def _unreachable(self, e: TransportError) -> CliError:
        if e.timed_out:
            reason = f"no answer within {self.timeout_s:g} s ({e.kind})"
        else:
            reason = str(e) or e.kind
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


# -- one HTTP/1.1 exchange -------------------------------------------------------------------


class _Reader:
    """Buffered reads of a socket: lines, a number of bytes, or all until it closes."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def readline(self, limit: int) -> bytes:
        """A line with its end; at most ``limit`` + 1 bytes (more means too long)."""
        while b"\n" not in self.buf and len(self.buf) <= limit and self._fill():
            pass
        end = self.buf.find(b"\n")
        return self._take(min(end + 1 if end >= 0 else len(self.buf), limit + 1))

    def read(self, n: int = -1) -> bytes:
        """``n`` bytes (fewer when the connection closes first); all (``-1``)."""
        while (n < 0 or len(self.buf) < n) and self._fill():
            pass
        return self._take(len(self.buf) if n < 0 else n)


def _tcp(host: str, port: int, timeout_s: float) -> Any:
    """``socket.create_connection`` on ``_socket``: each address of ``host`` in turn."""
    error: OSError = OSError("getaddrinfo returns an empty list")
    # An ASCII name as bytes: as a str it goes through the idna codec, whose import (with
    # stringprep and unicodedata) costs 2 ms.
    name = host.encode("ascii") if host.isascii() else host
    for family, kind, proto, _, address in _socket.getaddrinfo(name, port, 0,
                                                               _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout_s)
            sock.connect(address)
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise error


def connect(scheme: str, host: str, port: int, timeout_s: float) -> Any:
    """A connected socket (TLS for https, the server's certificate checked), or
    ``TransportError`` with ``connecting`` set."""
    try:
        sock = _tcp(host, port, min(timeout_s, CONNECT_TIMEOUT_S))
    except TimeoutError as e:
        raise TransportError(str(e) or "timed out", connecting=True,
                             kind="ConnectTimeout") from e
    except OSError as e:  # refused, DNS (socket.gaierror), no route
        raise TransportError(str(e), connecting=True, kind=type(e).__name__) from e
    if scheme == "https":
        import socket  # 15 ms with ssl: only for an https server
        import ssl

        plain = socket.socket(fileno=sock.detach())
        plain.settimeout(min(timeout_s, CONNECT_TIMEOUT_S))  # a new object: no timeout
        try:
            sock = ssl.create_default_context().wrap_socket(plain, server_hostname=host)
        except TimeoutError as e:
            plain.close()
            raise TransportError(str(e) or "timed out", connecting=True,
                                 kind="ConnectTimeout") from e
        except OSError as e:  # ssl.SSLError (a bad certificate...) is an OSError
            plain.close()
            raise TransportError(str(e), connecting=True, kind=type(e).__name__) from e
    sock.settimeout(timeout_s)
    return sock


def http_exchange(scheme: str, host: str, port: int, method: str, target: str,
                  headers: Mapping[str, str], body: bytes | None, *,
                  timeout_s: float) -> Response:
    """Send one request on a new connection (``Connection: close``) and read the whole
    answer. ``timeout_s``: the longest wait for the connection, and for each read or write
    after it."""
    sock = connect(scheme, host, port, timeout_s)
    stage = "WriteTimeout"
    head = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()),
            "Connection: close", "", ""]
    try:
        sock.sendall("\r\n".join(head).encode("latin-1") + (body or b""))
        stage = "ReadTimeout"
        return _read_response(_Reader(sock), method)
    except TimeoutError as e:
        raise TransportError(str(e) or "timed out", connecting=False, kind=stage) from e
    except OSError as e:  # reset, broken pipe
        raise TransportError(str(e) or type(e).__name__, connecting=False,
                             kind=type(e).__name__) from e
    finally:
        sock.close()


def _protocol_error(message: str) -> TransportError:
    return TransportError(message, connecting=False, kind="RemoteProtocolError")


def _line(f: _Reader) -> bytes:
    line = f.readline(_MAX_LINE)
    if len(line) > _MAX_LINE:
        raise _protocol_error("the server sent a line too long")
    return line


def _read_response(f: _Reader, method: str) -> Response:
    while True:
        status_line = _line(f)
        if not status_line:
            raise _protocol_error("Server disconnected without sending a response.")
        version, _, rest = status_line.decode("latin-1").rstrip("\r\n").partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or not (code.isdigit() and len(code) == 3):
            raise _protocol_error(f"not an HTTP answer: {status_line[:80]!r}")
        status = int(code)
        items = []
        while True:
            line = _line(f)
            if line in (b"\r\n", b"\n", b""):
                break
            if len(items) >= _MAX_HEADERS:
                raise _protocol_error("the server sent too many headers")
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise _protocol_error(f"a bad header line: {line[:80]!r}")
            items.append((name.strip(), value.strip()))
        if not 100 <= status < 200 or status == 101:
            break  # a 1xx other than 101 (100 Continue...) comes before the answer
    headers = Headers(items)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        content = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        content = _read_chunked(f)
    elif (length := headers.get("content-length")) is not None:
        if not length.strip().isdigit():
            raise _protocol_error(f"a bad Content-Length: {length!r}")
        content = f.read(int(length))
        if len(content) < int(length):
            raise _protocol_error("the server closed the connection before the whole "
                                  f"answer ({len(content)} of {length} bytes)")
    else:
        content = f.read()
    return Response(status, content, headers, reason.strip())


def _read_chunked(f: _Reader) -> bytes:
    parts = []
    while True:
        size_text = _line(f).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _protocol_error(f"a bad chunk size: {size_text[:20]!r}") from None
        if size == 0:
            while _line(f) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        chunk = f.read(size)
        if len(chunk) < size:
            raise _protocol_error("the server closed the connection in a chunk")
        parts.append(chunk)
        _line(f)  # the CRLF after the chunk
