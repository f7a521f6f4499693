"""The CLI's own HTTP/1.1 client (``gpuq.cli.client``) against a raw socket server that
answers what each test scripts: the framings a server may use, what is sent, and what a
broken answer becomes."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest

from gpuq.cli.client import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    ApiClient,
    CliError,
    Headers,
    query_string,
)

Answer = Callable[[bytes], bytes | None]


class RawServer:
    """Accepts connections one at a time on 127.0.0.1; for each reads the request (the
    head and a Content-Length body), records it, and sends ``answer(request)`` (None:
    close without a word)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # the client may go first
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                reply = self.answer(self.requests[-1])
                if reply is not None:
                    conn.sendall(reply)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], RawServer]]:
    servers: list[RawServer] = []

    def start(answer: Answer) -> RawServer:
        servers.append(RawServer(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def client(url: str, **kw: object) -> ApiClient:
    return ApiClient(url, "tok", retry_delays_s=(0, 0), **kw)  # type: ignore[arg-type]


def fixed(reply: bytes) -> Answer:
    return lambda _request: reply


def test_content_length_chunked_and_close_delimited(serve) -> None:
    for reply in (b'HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{"a": 1}',
                  b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"3;ext=1\r\n{\"a\r\n5\r\n\": 1}\r\n0\r\nX-Trailer: y\r\n\r\n",
                  b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"a": 1}',
                  b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n'
                  b'\r\n{"a": 1}'):
        assert client(serve(fixed(reply)).url).get("/x") == {"a": 1}, reply


def test_the_request_sent(serve) -> None:
    srv = serve(fixed(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"))
    api = client(srv.url + "/base/")
    api.post("/v1/jobs", {"name": "tr\u00e4in", "n": [1, 2]})
    api.get("/v1/jobs", params={"state": ["PENDING", "RUNNING"], "active": True, "user": None,
                                "q": "a b&c", "empty": []})
    api.json("DELETE", "/v1/users/a b")
    post, get, delete = (r.decode() for r in srv.requests)
    head, _, body = post.partition("\r\n\r\n")
    lines = head.split("\r\n")
    assert lines[0] == "POST /base/v1/jobs HTTP/1.1"
    assert {"Authorization: Bearer tok", "Content-Type: application/json",
            f"Host: 127.0.0.1:{srv.url.rsplit(':', 1)[1]}", "Connection: close",
            f"Content-Length: {len(body.encode())}", "User-Agent: gpuq-cli"} <= set(lines)
    assert body == '{"name":"tr\u00e4in","n":[1,2]}'
    assert get.split("\r\n")[0] == ("GET /base/v1/jobs?state=PENDING&state=RUNNING&active=true"
                                    "&user=&q=a+b%26c HTTP/1.1")
    assert delete.split("\r\n")[0] == "DELETE /base/v1/users/a%20b HTTP/1.1"
    assert "Content-Length" not in delete


def test_a_post_without_a_body_says_so(serve) -> None:
    srv = serve(fixed(b"HTTP/1.1 204 No Content\r\n\r\n"))
    assert client(srv.url).post("/v1/jobs/1/cancel") is None
    assert b"Content-Length: 0\r\n" in srv.requests[0]


def test_headers_and_raw_content(serve) -> None:
    srv = serve(fixed(b"HTTP/1.1 200 OK\r\nX-Gpuq-Next-Offset: 5\r\nSet-Cookie: a\r\n"
                      b"Set-Cookie: b\r\nContent-Length: 5\r\n\r\nhello"))
    r = client(srv.url).request("GET", "/log", content=b"raw", headers={"Content-Type": "x/y"})
    assert r.content == b"hello" and r.text == "hello"
    assert r.headers.get("x-gpuq-next-offset") == "5" and r.headers["X-GPUQ-NEXT-OFFSET"] == "5"
    assert r.headers["set-cookie"] == "a, b" and "SET-COOKIE" in r.headers
    assert srv.requests[0].endswith(b"Content-Type: x/y\r\nContent-Length: 3\r\n"
                                    b"Connection: close\r\n\r\nraw")


def test_refusals_keep_their_messages(serve) -> None:
    srv = serve(fixed(b'HTTP/1.1 404 Not Found\r\nContent-Length: 23\r\n\r\n'
                      b'{"detail": "Not Found"}'))
    with pytest.raises(CliError) as e:
        client(srv.url).get("/v1/jobs/9")
    assert (e.value.exit_code, e.value.status, e.value.format_message()) == (1, 404, "Not Found")
    srv = serve(fixed(b"HTTP/1.1 502 \r\nContent-Length: 0\r\n\r\n"))
    with pytest.raises(CliError) as e:
        client(srv.url).post("/v1/jobs", {})
    # No body and no reason phrase: the standard one; a POST not marked safe: one try.
    assert e.value.format_message() == "server error 502: Bad Gateway"
    assert len(srv.requests) == 1


def test_retries_of_statuses_and_dropped_answers(serve) -> None:
    replies = [None, b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
               b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]"]
    srv = serve(lambda _req: replies.pop(0))
    slept: list[float] = []
    api = ApiClient(srv.url, None, retry_delays_s=(0.1, 0.2, 0.3), sleep=slept.append)
    assert api.get("/v1/jobs") == []
    assert slept == [0.1, 0.2] and len(srv.requests) == 3
    # Not safe to repeat: the dropped answer is the end of it.
    srv = serve(fixed(None))  # type: ignore[arg-type]
    with pytest.raises(CliError) as e:
        client(srv.url).post("/v1/jobs", {})
    assert e.value.exit_code == EXIT_UNREACHABLE and len(srv.requests) == 1
    assert "Server disconnected without sending a response." in e.value.format_message()


@pytest.mark.parametrize("reply", [
    b"SSH-2.0-OpenSSH\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
])
def test_a_broken_answer_is_a_transport_error(serve, reply: bytes) -> None:
    srv = serve(fixed(reply))
    with pytest.raises(CliError) as e:
        client(srv.url).get("/x")
    assert e.value.exit_code == EXIT_UNREACHABLE
    assert len(srv.requests) == 3  # a GET: tried again


def test_a_silent_server_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(CliError) as e:
            ApiClient(url, None, timeout_s=0.2, retry_delays_s=()).get("/x")
    assert e.value.exit_code == EXIT_UNREACHABLE
    assert e.value.format_message() == (f"cannot reach the server at {url}: no answer within "
                                        "0.2 s (ReadTimeout). Is it running? (gpuq up / gpuq "
                                        "server)")


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://x", "bad server URL 'ftp://x': Request URL has an unsupported protocol 'ftp://'."),
    ("http://h:abc", "bad server URL 'http://h:abc': Port could not be cast"),
    ("http://", "bad server URL 'http://': no host"),
])
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(CliError) as e:
        ApiClient(url, None)
    assert e.value.exit_code == EXIT_USAGE and e.value.format_message().startswith(message)


def test_a_token_that_cannot_be_a_header_is_refused() -> None:
    with pytest.raises(CliError) as e:
        ApiClient("http://h", "tok\r\nX-Evil: 1")
    assert e.value.exit_code == EXIT_USAGE


def test_https_checks_the_certificate(serve) -> None:
    """A server that does not speak TLS (or has a certificate nobody signed) is not
    reached; the request never goes out in clear."""
    srv = serve(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
    with pytest.raises(CliError) as e:
        client(srv.url.replace("http://", "https://"), timeout_s=0.3).get("/x")
    assert e.value.exit_code == EXIT_UNREACHABLE
    assert all(b"Bearer" not in r for r in srv.requests)


def test_query_and_headers_helpers() -> None:
    assert query_string(None) == "" and query_string({"a": (1, False)}) == "a=1&a=false"
    h = Headers([("A", "1"), ("a", "2")])
    assert h["A"] == "1, 2" and h.get("missing", "d") == "d" and 1 not in h


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl for a certificate")
def test_https_round_trip(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS with a certificate the client trusts (``SSL_CERT_FILE``), checked against the
    host name."""
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True,
                   capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    seen: list[bytes] = []

    def serve(sock: socket.socket) -> None:
        conn, _ = sock.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            data = b""
            while b"\r\n\r\n" not in data:
                data += tls.recv(4096)
            seen.append(data)
            tls.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{"user": "alice"}')

    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with socket.create_server(("127.0.0.1", 0)) as sock:
        threading.Thread(target=serve, args=(sock,), daemon=True).start()
        port = sock.getsockname()[1]
        assert client(f"https://localhost:{port}", timeout_s=10).get("/v1/whoami") == {
            "user": "alice"}
    assert seen[0].startswith(b"GET /v1/whoami HTTP/1.1\r\n")
    assert f"Host: localhost:{port}\r\n".encode() in seen[0]
