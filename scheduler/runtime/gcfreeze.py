"""Keep Python's cyclic garbage collector off the objects a server process starts with.

A full (generation 2) collection walks every container object the process holds, and an
API process holds a few hundred thousand that live as long as it does: the modules,
FastAPI's routes and models, SQLAlchemy's mappers and compiled statements. Under
bench/load.py each API process paused 120-320 ms in such collections, about once every
ten seconds: every request waiting meanwhile (the benchmark's API p99 of 150 ms was
those). ``gc.freeze()`` moves what exists at the end of start-up to a permanent
generation that collections skip (CPython's advice for long-running processes); the
collector keeps collecting what the process allocates afterwards.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Collect once, then freeze every object left; returns how many were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("gc: %d objects frozen after start-up", frozen)
    return frozen
