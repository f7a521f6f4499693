"""Freezing the objects a server process starts with (scheduler/runtime/gcfreeze.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from gpuq.scheduler.runtime.gcfreeze import freeze_startup_objects


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test session collects as usual


def test_what_exists_is_frozen_and_what_comes_later_is_still_collected(
        unfrozen: None) -> None:
    old = Node()
    old_ref = weakref.ref(old)
    frozen = freeze_startup_objects()
    assert frozen > 1000 and gc.get_freeze_count() > 1000  # the modules, at least
    del old
    gc.collect()
    assert old_ref() is not None  # frozen: full collections skip it

    new = Node()
    new_ref = weakref.ref(new)
    del new
    gc.collect()
    assert new_ref() is None  # allocated after the freeze: collected as usual
