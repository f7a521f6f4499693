"""The loopback TCP proxy of the fault scenarios (bench/faults/proxy.py): it forwards,
drops (a partition: nothing passes, nothing is refused) and refuses (the far side gone)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from bench.faults.proxy import Proxy


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with Proxy(server.server_address[1]) as p:
        yield p
    server.shutdown()
    server.server_close()


def talk(conn: socket.socket, data: bytes = b"ping") -> bytes:
    conn.sendall(data)
    return conn.recv(4096)


def test_forwards_drops_and_refuses(proxy: Proxy) -> None:
    a = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    assert talk(a) == b"ping"
    proxy.cut("drop")
    a.settimeout(0.3)
    with pytest.raises(TimeoutError):
        talk(a)  # nothing passes
    b = socket.create_connection(("127.0.0.1", proxy.port), timeout=0.3)  # not refused
    with pytest.raises(TimeoutError):
        talk(b)
    proxy.restore()
    a.settimeout(2)
    assert a.recv(10) == b""  # closed: bytes of it were lost
    c = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    assert talk(c, b"again") == b"again"
    proxy.cut("refuse")
    assert c.recv(10) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    proxy.restore()
    d = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    assert talk(d, b"back") == b"back"
    for s in (a, b, c, d):
        s.close()
