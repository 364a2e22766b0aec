"""The scoreboard: one slot of counters per worker, in memory shared across fork.

Each worker writes only its own slot; the supervisor only reads (and clears a
slot when its worker is gone), so no lock is needed.  A request costs the
worker two ``pack_into`` calls: nothing on the hot path waits or polls.
"""

from __future__ import annotations

import mmap
import time
from struct import Struct

# pid, requests served, requests failed, busy since (time.monotonic(); 0 = idle),
# idle since (time.monotonic() when the last request ended, or the worker started)
_SLOT = Struct("=qqqdd")
_BUSY = Struct("=d")
_BUSY_OFFSET = 24


class Slot:
    """A worker's view of its own slot."""

    __slots__ = ("_mm", "_offset", "pid", "served", "failed")

    def __init__(self, mm: mmap.mmap, offset: int, pid: int) -> None:
        self._mm, self._offset, self.pid = mm, offset, pid
        self.served = self.failed = 0
        _SLOT.pack_into(mm, offset, pid, 0, 0, 0.0, time.monotonic())

    def begin(self) -> None:
        """Mark the worker busy with a request from now on."""
        _BUSY.pack_into(self._mm, self._offset + _BUSY_OFFSET, time.monotonic())

    def end(self, ok: bool) -> None:
        """Mark the request done (``ok``: the program succeeded) and the worker idle."""
        if ok:
            self.served += 1
        else:
            self.failed += 1
        _SLOT.pack_into(self._mm, self._offset, self.pid, self.served, self.failed, 0.0,
                        time.monotonic())


class WorkerState:
    """What the supervisor reads from one slot."""

    __slots__ = ("pid", "served", "failed", "busy_since", "idle_since")

    def __init__(self, pid, served, failed, busy_since, idle_since) -> None:
        self.pid, self.served, self.failed = pid, served, failed
        self.busy_since, self.idle_since = busy_since, idle_since


class Scoreboard:
    """``size`` slots in anonymous shared memory, created before the workers fork."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._mm = mmap.mmap(-1, _SLOT.size * size)
        self._free = list(range(size - 1, -1, -1))
        #: totals of workers that are gone, so counts survive recycling
        self.retired_served = self.retired_failed = 0

    def claim(self) -> int:
        """Return a free slot index for a new worker; raise IndexError if none is free."""
        return self._free.pop()

    def attach(self, index: int, pid: int) -> Slot:
        """Return the worker-side Slot ``index`` (called in the worker)."""
        return Slot(self._mm, index * _SLOT.size, pid)

    def read(self, index: int) -> WorkerState:
        """Return the current state of slot ``index``."""
        return WorkerState(*_SLOT.unpack_from(self._mm, index * _SLOT.size))

    def release(self, index: int) -> WorkerState:
        """Free slot ``index`` of a worker that is gone; return its last state."""
        state = self.read(index)
        self.retired_served += state.served
        self.retired_failed += state.failed
        _SLOT.pack_into(self._mm, index * _SLOT.size, 0, 0, 0, 0.0, 0.0)
        self._free.append(index)
        return state

    def totals(self, indexes) -> "tuple[int, int]":
        """Return (served, failed) over the live slots ``indexes`` and retired workers."""
        served, failed = self.retired_served, self.retired_failed
        for index in indexes:
            state = self.read(index)
            served += state.served
            failed += state.failed
        return served, failed
