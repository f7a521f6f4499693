"""Files and directories only their owner may read: the server's data directory, its
database and job logs, the worker's state directory and the files in it.

Directories are created 0700 and files 0600 (``private_dir``, ``open_private``); a
directory that this process owns and that group or others could use is made 0700 when a
process starts with it (``private_dir``), and says so in its log. Standard library only:
the server, the worker and the job supervisor import it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

#: The mode of what gpuq keeps for itself: directories, files.
DIR_MODE, FILE_MODE = 0o700, 0o600
#: The umask of a process that runs no job (``gpuq server``): what it creates is its own.
PRIVATE_UMASK = 0o077


def tighten(path: Path, mode: int) -> bool:
    """Make ``path`` ``mode`` if this process owns it and group or others have any access
    to it (logged); True if it changed. Leaves alone what another account owns (root's
    ``/var/lib``, a directory an admin shared on purpose) and what does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    old = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid() or not old & 0o077:
        return False
    os.chmod(path, mode)
    log.warning("%s was open to other users (mode %04o); made it %04o", path, old, mode)
    return True


def private_dir(path: Path, *, fix: bool = True) -> Path:
    """``path`` as a directory only its owner can use: it and every missing parent created
    0700; with ``fix``, an existing one this process owns made 0700 (``tighten``; not for
    a directory the admin named for something else, as a SQLite file's). Returns it."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=DIR_MODE)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    if fix:
        tighten(path, DIR_MODE)
    return path


def _opener(path: str, flags: int) -> int:
    return os.open(path, flags, FILE_MODE)


def open_private(path: Path | str, mode: str = "ab") -> IO[Any]:
    """``open(path, mode)``, a file it creates being 0600 (whatever the umask)."""
    return open(path, mode, opener=_opener)  # noqa: SIM115 - the caller closes it


def create_private(path: Path | str) -> None:
    """Create ``path`` empty and 0600 if it does not exist (a file another program then
    fills, as SQLite does its database: its -wal and -shm files take the database's
    mode)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
