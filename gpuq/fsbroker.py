"""kombu's filesystem transport (``gpuq up``'s broker): messages that appear whole, and a
consumer woken by a new message instead of polling.

Whole messages. kombu (5.x) writes a message by creating ``<ms>_<uuid>.<queue>.msg`` in
the folder and then writing into it, while a consumer takes any such file it lists, moves
it away and reads it, without the writer's lock. A consumer that comes between the two
reads an empty file, fails to decode it and Celery stops the worker for good
("Unrecoverable error: JSONDecodeError"): seen once in about 700 launches by
bench/dispatch.py. Here a message is written under a name no consumer takes (it does not
end in ``.<queue>.msg``) and then renamed into place: a rename is atomic, so a consumer
sees the whole message or none.

Waking. kombu's consumer lists the folder and, when every queue is empty, sleeps
``polling_interval`` (0.1 s in gpuq) before it looks again, so a message waited 50 ms on
average. Here that sleep (the one in ``Transport.drain_events``, which Celery's worker
reaches through ``Connection.drain_events`` in its ``synloop``, the loop of a transport
that is not asynchronous) waits instead on a Linux inotify watch of the folder: a message
renamed (or written) into it ends the wait at once, and the consumer looks again. The
watch belongs to the consuming process, so producers in other processes need nothing,
and every consumer of the folder (several ``gpuq worker`` on one data directory) has its
own. ``polling_interval`` stays the longest wait, so whatever inotify misses (no inotify:
not Linux, the per-user limit of inotify instances reached, ``inotify=False`` among the
transport options; a folder that does not exist yet, or was replaced) costs at most the
old delay, and an idle consumer looks at the folder no more often than before.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import struct
import uuid
import weakref
from time import monotonic, sleep
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.transport.virtual.base import Empty
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

# <sys/inotify.h>
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
#: The watch's events: a file renamed into the folder (gpuq's own messages and re-queued
#: ones) or closed after writing (a message written in place, as kombu's own transport
#: does); the folder itself gone (then the watch is added again).
WATCH_MASK = IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR


def _load_libc() -> Any | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):  # not Linux (or no C library ctypes can load)
        return None
    return libc


class FolderWatch:
    """An inotify watch on one folder: :meth:`wait` returns as soon as a message file
    (``*.msg``) is moved or written into it, or after ``timeout`` seconds at the latest.

    Events that come while nobody waits are kept by the kernel, so a message put between
    a consumer's last look and its wait ends that wait at once. :meth:`create` returns
    None where inotify cannot be had; a folder that cannot be watched (not there yet,
    removed) makes :meth:`wait` sleep instead, and it tries to watch it again each time.
    """

    _libc: Any | None = None
    _libc_loaded = False

    def __init__(self, fd: int, folder: str, libc: Any) -> None:
        self.fd = fd
        self.folder = folder
        self.pid = os.getpid()
        self._libc_fns = libc
        self._wd: int | None = None
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._finalizer = weakref.finalize(self, os.close, fd)

    @classmethod
    def create(cls, folder: str) -> FolderWatch | None:
        if not cls._libc_loaded:
            cls._libc, cls._libc_loaded = _load_libc(), True
        libc = cls._libc
        if libc is None:
            return None
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            log.warning("filesystem broker: no inotify (%s); polling %s instead",
                        os.strerror(err), folder)
            return None
        return cls(fd, folder, libc)

    def close(self) -> None:
        self._finalizer()

    def _add_watch(self) -> bool:
        wd = self._libc_fns.inotify_add_watch(self.fd, os.fsencode(self.folder), WATCH_MASK)
        if wd < 0:
            return False
        self._wd = wd
        return True

    def wait(self, timeout: float) -> bool:
        """Wait until a message may have come or ``timeout`` passed; True if woken."""
        if self._wd is None:
            # Not watched (yet): watch it and have the caller look at once, as a message
            # may have come before the watch; if it cannot be watched, just sleep.
            if self._add_watch():
                return True
            sleep(timeout)
            return False
        deadline = monotonic() + timeout
        while True:
            remaining = deadline - monotonic()
            if remaining <= 0:
                return False
            try:
                ready = self._poll.poll(max(1, round(remaining * 1000)))
            except InterruptedError:  # pragma: no cover (PEP 475 retries)
                continue
            if ready and self._read():
                return True

    def _read(self) -> bool:
        """Read the pending events; True if one of them may be a message."""
        woken = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return woken
            except InterruptedError:  # pragma: no cover
                continue
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size:pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    woken = True
                elif mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                    # The folder went away (or was moved): watch the path again (what
                    # lies there now, once there is something).
                    if wd == self._wd:
                        self._wd = None
                        if mask & IN_MOVE_SELF:  # a moved folder keeps its watch: drop it
                            self._libc_fns.inotify_rm_watch(self.fd, wd)
                    woken = True
                elif name.endswith(b".msg"):
                    woken = True


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """Put ``payload`` on ``queue``: written aside, then renamed into place."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f"partial-{uuid.uuid4()}")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: str) -> Any:
        """Take the next message of ``queue``: renamed into ``processed_folder`` (private,
        in the broker's folder), read, removed. kombu's own moves it into the system's
        temporary folder (``/tmp``, readable by every local user, and another file
        system: a copy) unless it keeps every message (``store_processed``)."""
        wanted = f"{queue}.msg"
        into = self._taken_folder()
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            taken = os.path.join(into, name)
            try:
                os.rename(os.path.join(self.data_folder_in, name), taken)
            except OSError:  # another consumer took it first
                continue
            try:
                with open(taken, "rb") as f:
                    payload = f.read()
                if not self.store_processed:
                    os.unlink(taken)
            except OSError as exc:
                raise ChannelError(f"Cannot read file {taken!r} from queue.") from exc
            return loads(bytes_to_str(payload))
        raise Empty()

    def _taken_folder(self) -> str:
        """``processed_folder`` (``gpuq.broker`` sets it in the broker's folder); kombu's
        default is a relative path: then a private ``.processed`` in the folder read."""
        folder = self.processed_folder
        if not os.path.isabs(folder):
            folder = os.path.join(self.data_folder_in, ".processed")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        return folder


class Transport(filesystem.Transport):
    """Transport options, besides kombu's: ``inotify`` (default True): wait for a message
    on an inotify watch of ``data_folder_in``; False polls every ``polling_interval``
    as kombu does."""

    Channel = Channel

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        options = client.transport_options
        self._use_inotify = bool(options.get("inotify", True))
        self._folder_in = options.get("data_folder_in", "data_in")
        self._watch: FolderWatch | None = None

    def _watcher(self) -> FolderWatch | None:
        if not self._use_inotify:
            return None
        w = self._watch
        if w is not None and w.pid != os.getpid():  # forked: the watch is the parent's
            w.close()
            w = self._watch = None
        if w is None:
            w = self._watch = FolderWatch.create(self._folder_in)
            if w is None:
                self._use_inotify = False
        return w

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """kombu's (virtual ``Transport.drain_events``), with its sleep between two looks
        at empty queues replaced by a wait on the folder's watch."""
        time_start = monotonic()
        get = self.cycle.get
        polling_interval = self.polling_interval
        if timeout and polling_interval and polling_interval > timeout:
            polling_interval = timeout
        # The watch is added by its first wait, which then has us look again at once: a
        # message put after that look either is seen by it or ends the next wait.
        watch = self._watcher()
        while True:
            try:
                get(self._deliver, timeout=timeout)
            except Empty:
                if timeout is not None and monotonic() - time_start >= timeout:
                    raise TimeoutError() from None  # socket.timeout, as kombu
                if polling_interval is not None:
                    if watch is None:
                        sleep(polling_interval)
                    else:
                        watch.wait(polling_interval)
            else:
                break

    def close_connection(self, connection: Any) -> None:
        try:
            super().close_connection(connection)
        finally:
            if self._watch is not None:
                self._watch.close()
                self._watch = None

