"""kombu's filesystem transport, with messages that appear whole (``gpuq up``'s broker).

kombu (5.x) writes a message by creating ``<ms>_<uuid>.<queue>.msg`` in the folder and then
writing into it, while a consumer takes any such file it lists, moves it away and reads
it, without the writer's lock. A consumer that comes between the two reads an empty file,
fails to decode it and Celery stops the worker for good ("Unrecoverable error:
JSONDecodeError"): seen once in about 700 launches by bench/dispatch.py. Here a message is
written under a name no consumer takes (it does not end in ``.<queue>.msg``) and then
renamed into place: a rename is atomic, so a consumer sees the whole message or none.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


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


class Transport(filesystem.Transport):
    Channel = Channel
