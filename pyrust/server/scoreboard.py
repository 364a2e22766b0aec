"""The scoreboard: one slot of counters per worker, in memory shared across fork.

Each worker writes only its own slot; the supervisor reads them (and resets a
slot when its worker is gone), so no lock is needed.  A request costs the
worker a few ``pack_into`` calls and one scan of the busy times: nothing on
the hot path waits or polls.

Layout: the header, then every slot's state in one array (so "is any worker
free to accept?" is one scan), then every slot's counters, then every slot's
ring of recent run durations.  A state is the time.monotonic() at which the
running request began, or one of the markers below.  A slot's ring outlives
its worker, so the latency of recent runs survives worker recycling.
"""

from __future__ import annotations

import mmap
import time
from struct import Struct

# header: slots in use (high-water mark); runs served, runs failed and control
# requests of workers that are gone; the compile-cache epoch (bumped to make
# every worker clear its cache); the wall-clock time of the last failed run.
_HEADER = Struct("=qqqqqd")
_COUNT = Struct("=q")
_RETIRED = Struct("=qqq")
_RETIRED_OFFSET = 8
_EPOCH = Struct("=q")
_EPOCH_OFFSET = 32
_LAST_FAILURE = Struct("=d")
_LAST_FAILURE_OFFSET = 40
_STATE = Struct("=d")
_COUNTERS = Struct("=qqqqd")   # pid, runs served, runs failed, control requests, idle since
#: Runs each slot remembers, for the latency of recent runs.
RING = 64
_RING_HEAD = Struct("=q")      # runs ever recorded in this slot's ring
_RING_ENTRY = Struct("=dd")    # time.time() the run ended, its duration in seconds
_RING_SIZE = _RING_HEAD.size + RING * _RING_ENTRY.size
ACCEPTING = 0.0   # in accept(): free to take a new connection
CONNECTED = -2.0  # holds a connection, waiting for its next request
FREE = -1.0       # no worker in this slot


class Slot:
    """A worker's view of its own slot."""

    __slots__ = ("_mm", "_busy", "_counters", "_ring", "_scoreboard", "_began", "pid",
                 "served", "failed", "control", "recorded")

    def __init__(self, scoreboard: "Scoreboard", index: int, pid: int) -> None:
        self._scoreboard = scoreboard
        self._mm = scoreboard._mm
        self._busy = scoreboard._busy_offset(index)
        self._counters = scoreboard._counters_offset(index)
        self._ring = scoreboard._ring_offset(index)
        (self.recorded,) = _RING_HEAD.unpack_from(self._mm, self._ring)
        self.pid = pid
        self.served = self.failed = self.control = 0
        self._began = 0.0
        _COUNTERS.pack_into(self._mm, self._counters, pid, 0, 0, 0, time.monotonic())
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
        self._began = time.monotonic()
        _STATE.pack_into(self._mm, self._busy, self._began)

    def end(self, ok: bool) -> float:
        """Mark a run done (``ok``: it ended with status 0) and the worker idle.

        Record its duration in the ring (a failure's time in the header too);
        return the duration in seconds.
        """
        now = time.monotonic()
        duration = now - self._began
        wall = time.time()
        if ok:
            self.served += 1
        else:
            self.failed += 1
            _LAST_FAILURE.pack_into(self._mm, _LAST_FAILURE_OFFSET, wall)
        _RING_ENTRY.pack_into(self._mm, self._ring + _RING_HEAD.size
                              + (self.recorded % RING) * _RING_ENTRY.size, wall, duration)
        self.recorded += 1
        _RING_HEAD.pack_into(self._mm, self._ring, self.recorded)
        self._idle(now)
        return duration

    def end_control(self) -> None:
        """Mark a control request (status, stop, ...) done and the worker idle."""
        self.control += 1
        self._idle(time.monotonic())

    def _idle(self, now: float) -> None:
        _COUNTERS.pack_into(self._mm, self._counters, self.pid, self.served, self.failed,
                            self.control, now)
        _STATE.pack_into(self._mm, self._busy, CONNECTED)

    @property
    def requests(self) -> int:
        """Requests of every kind this worker answered."""
        return self.served + self.failed + self.control


class WorkerState:
    """What the supervisor reads from one slot."""

    __slots__ = ("state", "pid", "served", "failed", "control", "idle_since")

    def __init__(self, state, pid, served, failed, control, idle_since) -> None:
        self.state, self.pid, self.served, self.failed = state, pid, served, failed
        self.control, self.idle_since = control, idle_since

    @property
    def busy_since(self) -> float:
        """When the running request began, or 0.0 if the worker runs none."""
        return self.state if self.state > 0 else 0.0


class Totals:
    """Counts over every worker, live or gone, and what recent runs took."""

    __slots__ = ("served", "failed", "control", "last_failure", "durations")

    def __init__(self, served, failed, control, last_failure, durations) -> None:
        self.served, self.failed, self.control = served, failed, control
        self.last_failure = last_failure  # time.time() of the last failed run, or None
        self.durations = durations        # seconds, of the most recent runs, oldest first


class Scoreboard:
    """``size`` slots in anonymous shared memory, created before the workers fork."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._mm = mmap.mmap(-1, self._ring_offset(size))
        self._busy_all = memoryview(self._mm)[_HEADER.size:_HEADER.size + size * _STATE.size].cast("d")
        for index in range(size):
            self._busy_all[index] = FREE
        self._free = list(range(size - 1, -1, -1))  # pop() hands out the lowest index
        self._high_water = 0

    def _busy_offset(self, index: int) -> int:
        return _HEADER.size + index * _STATE.size

    def _counters_offset(self, index: int) -> int:
        return _HEADER.size + self.size * _STATE.size + index * _COUNTERS.size

    def _ring_offset(self, index: int) -> int:
        return self._counters_offset(self.size) + index * _RING_SIZE

    def claim(self) -> int:
        """Return a free slot index for a new worker; raise IndexError if none is free."""
        index = self._free.pop()
        # Counted as accepting from the fork on, so the pool does not grow
        # twice for one waiting connection; idle from now, not from the epoch.
        self._busy_all[index] = ACCEPTING
        _COUNTERS.pack_into(self._mm, self._counters_offset(index), 0, 0, 0, 0, time.monotonic())
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
        served, failed, control = _RETIRED.unpack_from(self._mm, _RETIRED_OFFSET)
        _RETIRED.pack_into(self._mm, _RETIRED_OFFSET, served + state.served,
                           failed + state.failed, control + state.control)
        _COUNTERS.pack_into(self._mm, self._counters_offset(index), 0, 0, 0, 0, 0.0)
        self._busy_all[index] = FREE
        self._free.append(index)
        self._free.sort(reverse=True)
        return state

    def live_states(self) -> list:
        """Return the states of the slots that hold a worker (any process may ask)."""
        (count,) = _COUNT.unpack_from(self._mm, 0)
        states = [self.read(i) for i in range(count) if self._busy_all[i] != FREE]
        return [s for s in states if s.pid]

    def totals(self, recent: int = 1000) -> Totals:
        """Return the counts over every worker, live or gone, with the durations of
        the ``recent`` most recent runs."""
        served, failed, control = _RETIRED.unpack_from(self._mm, _RETIRED_OFFSET)
        for state in self.live_states():
            served += state.served
            failed += state.failed
            control += state.control
        (last_failure,) = _LAST_FAILURE.unpack_from(self._mm, _LAST_FAILURE_OFFSET)
        return Totals(served, failed, control, last_failure or None, self._recent_runs(recent))

    def _recent_runs(self, recent: int) -> list:
        if not recent:
            return []
        (count,) = _COUNT.unpack_from(self._mm, 0)
        runs = []
        for index in range(count):
            offset = self._ring_offset(index)
            (recorded,) = _RING_HEAD.unpack_from(self._mm, offset)
            runs += [_RING_ENTRY.unpack_from(self._mm, offset + _RING_HEAD.size
                                             + i * _RING_ENTRY.size)
                     for i in range(min(recorded, RING))]
        runs.sort()
        return [duration for _, duration in runs[-recent:]]

    def cache_epoch(self) -> int:
        """Return the compile-cache epoch: a worker that saw another one clears its cache."""
        return _EPOCH.unpack_from(self._mm, _EPOCH_OFFSET)[0]

    def bump_cache_epoch(self) -> None:
        """Ask every worker to clear its compile cache before its next request.

        Two workers bumping at the same instant may count once; both asked for
        the same thing, and it is done.
        """
        _EPOCH.pack_into(self._mm, _EPOCH_OFFSET, self.cache_epoch() + 1)
