"""The scoreboard: one slot of counters per worker, in memory shared across fork.

Each worker writes only its own slot; the supervisor reads them (and resets a
slot when its worker is gone), so no lock is needed.  A request costs the
worker two ``pack_into`` calls and one scan of the busy times: nothing on the
hot path waits or polls.

Layout: a count of slots in use (the high-water mark), then every slot's
state in one array (so "is any worker free to accept?" is one scan), then
every slot's counters.  A state is the time.monotonic() at which the running
request began, or one of the markers below.
"""

from __future__ import annotations

import mmap
import time
from struct import Struct

# header: slots in use (high-water mark), requests served and failed by workers
# that are gone, the compile-cache epoch (bumped to make every worker clear its cache)
_HEADER = Struct("=qqqq")
_COUNT = Struct("=q")
_RETIRED = Struct("=qq")
_EPOCH_OFFSET = 24
_STATE = Struct("=d")
_COUNTERS = Struct("=qqqd")   # pid, requests served, requests failed, idle since
ACCEPTING = 0.0   # in accept(): free to take a new connection
CONNECTED = -2.0  # holds a connection, waiting for its next request
FREE = -1.0       # no worker in this slot


class Slot:
    """A worker's view of its own slot."""

    __slots__ = ("_mm", "_busy", "_counters", "_scoreboard", "pid", "served", "failed")

    def __init__(self, scoreboard: "Scoreboard", index: int, pid: int) -> None:
        self._scoreboard = scoreboard
        self._mm = scoreboard._mm
        self._busy = scoreboard._busy_offset(index)
        self._counters = scoreboard._counters_offset(index)
        self.pid = pid
        self.served = self.failed = 0
        _COUNTERS.pack_into(self._mm, self._counters, pid, 0, 0, time.monotonic())
        _STATE.pack_into(self._mm, self._busy, ACCEPTING)

    def accepting(self) -> None:
        """Mark the worker free to take a new connection."""
        _STATE.pack_into(self._mm, self._busy, ACCEPTING)

    def connected(self) -> bool:
        """Mark the worker taken by a connection; return whether none is left accepting."""
        _STATE.pack_into(self._mm, self._busy, CONNECTED)
        return self._scoreboard.accepting_count() == 0

    def begin(self) -> None:
        """Mark the worker busy with a request from now on."""
        _STATE.pack_into(self._mm, self._busy, time.monotonic())

    def end(self, ok: bool) -> None:
        """Mark the request done (``ok``: the program succeeded) and the worker idle."""
        if ok:
            self.served += 1
        else:
            self.failed += 1
        _COUNTERS.pack_into(self._mm, self._counters, self.pid, self.served, self.failed,
                            time.monotonic())
        _STATE.pack_into(self._mm, self._busy, CONNECTED)


class WorkerState:
    """What the supervisor reads from one slot."""

    __slots__ = ("state", "pid", "served", "failed", "idle_since")

    def __init__(self, state, pid, served, failed, idle_since) -> None:
        self.state, self.pid, self.served, self.failed = state, pid, served, failed
        self.idle_since = idle_since

    @property
    def busy_since(self) -> float:
        """When the running request began, or 0.0 if the worker runs none."""
        return self.state if self.state > 0 else 0.0


class Scoreboard:
    """``size`` slots in anonymous shared memory, created before the workers fork."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._mm = mmap.mmap(-1, _HEADER.size + size * (_STATE.size + _COUNTERS.size))
        self._busy_all = memoryview(self._mm)[_HEADER.size:_HEADER.size + size * _STATE.size].cast("d")
        for index in range(size):
            self._busy_all[index] = FREE
        self._free = list(range(size - 1, -1, -1))  # pop() hands out the lowest index
        self._high_water = 0

    def _busy_offset(self, index: int) -> int:
        return _HEADER.size + index * _STATE.size

    def _counters_offset(self, index: int) -> int:
        return _HEADER.size + self.size * _STATE.size + index * _COUNTERS.size

    def claim(self) -> int:
        """Return a free slot index for a new worker; raise IndexError if none is free."""
        index = self._free.pop()
        # Counted as accepting from the fork on, so the pool does not grow
        # twice for one waiting connection; idle from now, not from the epoch.
        self._busy_all[index] = ACCEPTING
        _COUNTERS.pack_into(self._mm, self._counters_offset(index), 0, 0, 0, time.monotonic())
        if index >= self._high_water:
            self._high_water = index + 1
            _COUNT.pack_into(self._mm, 0, self._high_water)
        return index

    def attach(self, index: int, pid: int) -> Slot:
        """Return the worker-side Slot ``index`` (called in the worker)."""
        return Slot(self, index, pid)

    def accepting_count(self) -> int:
        """Return how many workers wait in accept() right now (any process may ask)."""
        (count,) = _COUNT.unpack_from(self._mm, 0)
        return self._busy_all[:count].tolist().count(ACCEPTING)

    def read(self, index: int) -> WorkerState:
        """Return the current state of slot ``index``."""
        return WorkerState(self._busy_all[index],
                           *_COUNTERS.unpack_from(self._mm, self._counters_offset(index)))

    def release(self, index: int) -> WorkerState:
        """Free slot ``index`` of a worker that is gone; return its last state.

        Its counts move to the header's totals, so they survive recycling.
        """
        state = self.read(index)
        _, served, failed, _ = _HEADER.unpack_from(self._mm, 0)
        _RETIRED.pack_into(self._mm, _COUNT.size, served + state.served, failed + state.failed)
        _COUNTERS.pack_into(self._mm, self._counters_offset(index), 0, 0, 0, 0.0)
        self._busy_all[index] = FREE
        self._free.append(index)
        self._free.sort(reverse=True)
        return state

    def live_states(self) -> list:
        """Return the states of the slots that hold a worker (any process may ask)."""
        (count,) = _COUNT.unpack_from(self._mm, 0)
        states = [self.read(i) for i in range(count) if self._busy_all[i] != FREE]
        return [s for s in states if s.pid]

    def totals(self) -> "tuple[int, int]":
        """Return (served, failed) over every worker, live or gone."""
        _, served, failed, _ = _HEADER.unpack_from(self._mm, 0)
        for state in self.live_states():
            served += state.served
            failed += state.failed
        return served, failed

    def cache_epoch(self) -> int:
        """Return the compile-cache epoch: a worker that saw another one clears its cache."""
        return _COUNT.unpack_from(self._mm, _EPOCH_OFFSET)[0]

    def bump_cache_epoch(self) -> None:
        """Ask every worker to clear its compile cache before its next request.

        Two workers bumping at the same instant may count once; both asked for
        the same thing, and it is done.
        """
        _COUNT.pack_into(self._mm, _EPOCH_OFFSET, self.cache_epoch() + 1)
