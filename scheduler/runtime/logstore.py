"""Job output shipped by the workers, kept as one file per job on the server (the
directory 0700, the files 0600: only the server's account reads them)."""

from __future__ import annotations

import threading
from pathlib import Path

from gpuq.files import open_private, private_dir


class OffsetMismatch(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"log has {size} bytes; resend from there")
        self.size = size


class LogStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()
        private_dir(root)

    def path(self, job_id: int, attempt: int = 1) -> Path:
        """One file per attempt: ``42.log``, then ``42.2.log`` for a requeued run."""
        if attempt <= 1:
            return self.root / f"{int(job_id)}.log"
        return self.root / f"{int(job_id)}.{int(attempt)}.log"

    def _lock(self, job_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(job_id, threading.Lock())

    def size(self, job_id: int, attempt: int = 1) -> int:
        try:
            return self.path(job_id, attempt).stat().st_size
        except FileNotFoundError:
            return 0

    def _marker(self, job_id: int, attempt: int) -> Path:
        return self.path(job_id, attempt).with_suffix(".truncated")

    def accepted(self, job_id: int, attempt: int = 1) -> int:
        """Bytes of output accepted from the worker (more than stored once truncated)."""
        marker = self._marker(job_id, attempt)
        if marker.exists():
            return int(marker.read_text() or 0)
        return self.size(job_id, attempt)

    def append(self, job_id: int, offset: int, data: bytes, attempt: int = 1) -> int:
        """Write ``data``, which starts at ``offset`` of the job's output; returns the
        number of bytes accepted so far.

        Bytes already accepted (a resend) are skipped; a gap raises ``OffsetMismatch`` so
        the worker resends from what we have. Output past ``max_bytes`` is dropped with one
        note in the log, and still counted as accepted so the worker moves on.
        """
        with self._lock(job_id):
            accepted = self.accepted(job_id, attempt)
            if offset > accepted:
                raise OffsetMismatch(accepted)
            data = data[accepted - offset:]
            if not data:
                return accepted
            total = accepted + len(data)
            marker = self._marker(job_id, attempt)
            if marker.exists():
                self._write_marker(marker, total)
                return total
            room = self.max_bytes - self.size(job_id, attempt)
            with open_private(self.path(job_id, attempt), "ab") as f:
                f.write(data[: max(room, 0)])
                if len(data) > room:
                    f.write(b"\n[gpuq: output truncated at max_log_bytes]\n")
            if len(data) > room:
                self._write_marker(marker, total)
            return total

    @staticmethod
    def _write_marker(marker: Path, total: int) -> None:
        with open_private(marker, "w") as f:
            f.write(str(total))

    def read(self, job_id: int, offset: int, limit: int, attempt: int = 1) -> bytes:
        path = self.path(job_id, attempt)
        if not path.exists():
            return b""
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)

