"""A TCP proxy on loopback that can cut the line: a network partition, or a service that
goes away, between two real processes (a worker and the scheduler, the scheduler and
PostgreSQL), for the fault scenarios (``bench.faults.partition``, ``bench.faults.db_outage``)
and their tests.

    proxy = Proxy(5432).start()          # 127.0.0.1:<proxy.port> -> 127.0.0.1:5432
    proxy.cut("drop")                    # a partition: nothing passes, nothing is refused
    proxy.cut("refuse")                  # the far side gone: connections closed, refused
    proxy.restore()                      # forwarding again
    proxy.stop()

``drop`` is what a cut cable or a firewall dropping packets does: connections stay open
and new ones are accepted (on loopback the proxy completes the handshake itself), but no
byte passes either way, so clients wait for their own timeouts. ``refuse`` is a host that
answers but has nothing listening (a database restarting): every connection is closed and
new ones are refused. ``restore`` forwards again; connections that lived through a
``drop`` are closed then, as bytes of them were lost.

The proxy runs an asyncio loop in a thread of its own; its methods may be called from any
thread and return once done. Loopback only: it binds 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["drop", "refuse"]
CHUNK = 64 * 1024


@dataclass(eq=False)
class _Pipe:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    #: Some of its bytes were dropped: closed when the line is restored.
    damaged: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for w in (self.client, self.upstream):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.transport.abort()
        for t in self.tasks:
            t.cancel()


class Proxy:
    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        #: ``None`` while forwarding, else how the line is cut.
        self.mode: Mode | None = None
        self.connections = 0
        self.bytes = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gpuq-proxy",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()

    # --- from any thread -------------------------------------------------------------
    def start(self) -> Proxy:
        self._thread.start()
        self._call(self._listen())
        return self

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self, mode: Mode = "drop") -> None:
        self._call(self._cut(mode))

    def restore(self) -> None:
        self._call(self._restore())

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._close_all(listening=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    # --- in the loop -----------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "refuse":
            await self._close_all(listening=True)
        else:
            for pipe in self._pipes:
                pipe.damaged = True

    async def _restore(self) -> None:
        if self.mode == "refuse" and self._server is None:
            await self._listen()
        elif self.mode == "drop":
            for pipe in [p for p in self._pipes if p.damaged]:
                pipe.close()
                self._pipes.discard(pipe)
        self.mode = None

    async def _close_all(self, *, listening: bool) -> None:
        if listening and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for pipe in list(self._pipes):
            pipe.close()
        self._pipes.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.transport.abort()
            return
        self.connections += 1
        pipe = _Pipe(writer, damaged=self.mode == "drop")
        self._pipes.add(pipe)
        if self.mode == "drop":  # held until the line is restored, then closed
            pipe.tasks.append(asyncio.current_task())  # type: ignore[arg-type]
            with contextlib.suppress(Exception):
                while await reader.read(CHUNK):
                    pass
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            self._pipes.discard(pipe)
            return
        pipe.upstream = up_writer
        pipe.tasks += [asyncio.create_task(self._pump(reader, up_writer, pipe)),
                       asyncio.create_task(self._pump(up_reader, writer, pipe))]

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    pipe: _Pipe) -> None:
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    break
                if self.mode is not None or pipe.damaged:
                    pipe.damaged = True
                    continue  # lost on the way
                dst.write(data)
                self.bytes += len(data)
                await dst.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            if not pipe.damaged:  # one side closed: close the other (a damaged pipe waits)
                with contextlib.suppress(Exception):
                    dst.close()
