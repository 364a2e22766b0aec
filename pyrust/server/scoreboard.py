"""The scoreboard: one slot of counters per worker, in memory shared across fork.

Each worker writes only its own slot; the supervisor reads them (and resets a
slot when its worker is gone), so no lock is needed.  A request costs the
worker a few ``pack_into`` calls: nothing on the hot path waits or polls.

Layout: the header; every slot's state in one array; every slot's counters; every slot's ring of
recent run durations (it outlives its worker, so the latency of recent runs
survives the workers, which now live one connection each); every slot's
request kind and retire mark; the ring of the supervisor's fork durations.
A state is the time.monotonic() at which the running request began, or one
of the markers below.
"""

from __future__ import annotations

import mmap
import os
import time
from struct import Struct

# header: slots in use (high-water mark); runs served, runs failed and control
# requests of workers that are gone; the compile-cache epoch (bumped to make
# every worker clear its cache); the wall-clock time of the last failed run;
# workers that failed at start in a row; the monotonic time of the last
# activity of workers that are gone; forks so far; the stale epoch (bumped when
# a preloaded module's file may have changed: workers forked before are stale).
_HEADER = Struct("=qqqqqdqdqq")
_COUNT = Struct("=q")
_RETIRED = Struct("=qqq")
_RETIRED_OFFSET = 8
_Q = Struct("=q")
_D = Struct("=d")
_EPOCH_OFFSET = 32
_LAST_FAILURE_OFFSET = 40
_START_FAILURES_OFFSET = 48
_LAST_ACTIVITY_OFFSET = 56
_FORKS_OFFSET = 64
_STALE_OFFSET = 72
_STATE = Struct("=d")
_COUNTERS = Struct("=qqqqd")   # pid, runs served, runs failed, control requests, idle since
#: Runs each slot remembers, for the latency of recent runs.
RING = 64
_RING_HEAD = Struct("=q")      # runs ever recorded in this slot's ring
_RING_ENTRY = Struct("=dd")    # time.time() the run ended, its duration in seconds
_RING_SIZE = _RING_HEAD.size + RING * _RING_ENTRY.size
_MARKS = Struct("=qqq")        # kind of the request in flight; retire mark; announced exit + 1
#: Forks whose duration the supervisor remembers.
FORK_RING = 256
ACCEPTING = 0.0   # in accept(): a spare, free to take a new connection
CONNECTED = -2.0  # holds a connection, waiting for its next request
FREE = -1.0       # no worker in this slot

# What the supervisor owes the client if the worker dies during the request
# in flight (read only while the slot's state says busy).
V1 = 1        #: a v1 request: a status-4 reply saying how the worker died
CAPTURED = 2  #: an extended request whose output is captured: the exit code
TERMINAL = 3  #: a run on the client's own fds: the worker closed the connection
#             and ends with the program's exit status, which the supervisor sends


class Slot:
    """A worker's view of its own slot."""

    __slots__ = ("_mm", "_busy", "_counters", "_ring", "_marks", "_scoreboard", "_began",
                 "_kind", "pid", "served", "failed", "control", "recorded")

    def __init__(self, scoreboard: "Scoreboard", index: int, pid: int) -> None:
        self._scoreboard = scoreboard
        self._mm = scoreboard._mm
        self._busy = scoreboard._busy_offset(index)
        self._counters = scoreboard._counters_offset(index)
        self._ring = scoreboard._ring_offset(index)
        self._marks = scoreboard._marks_offset(index)
        (self.recorded,) = _RING_HEAD.unpack_from(self._mm, self._ring)
        self.pid = pid
        self.served = self.failed = self.control = 0
        self._began = 0.0
        self._kind = 0
        _COUNTERS.pack_into(self._mm, self._counters, pid, 0, 0, 0, time.monotonic())
        _MARKS.pack_into(self._mm, self._marks, 0, 0, 0)
        _STATE.pack_into(self._mm, self._busy, ACCEPTING)

    def connected(self) -> None:
        """Mark the worker taken by a connection: no longer a spare."""
        _STATE.pack_into(self._mm, self._busy, CONNECTED)

    def begin(self, kind: int = V1) -> None:
        """Mark the worker busy with a request of ``kind`` (V1, CAPTURED, TERMINAL)."""
        if kind != self._kind:  # a session's requests are mostly of one kind
            self._kind = kind
            _Q.pack_into(self._mm, self._marks, kind)
        self._began = time.monotonic()
        _STATE.pack_into(self._mm, self._busy, self._began)

    def end(self, ok: bool) -> float:
        """Mark a run done (``ok``: it ended with status 0) and the worker idle.

        Record its duration in the ring (a failure's time in the header too);
        return the duration in seconds.
        """
        now = time.monotonic()
        duration = now - self._began
        if ok:
            self.served += 1
        else:
            self.failed += 1
        self.recorded = _record_run(self._mm, self._ring, self.recorded, ok, duration)
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

    def retiring(self) -> bool:
        """Return whether the supervisor asked this worker to end after its request."""
        return bool(_Q.unpack_from(self._mm, self._marks + _Q.size)[0])

    def announce_exit(self, code: int) -> None:
        """Say that this process is about to exit with status ``code`` (0-255)."""
        _Q.pack_into(self._mm, self._marks + 2 * _Q.size, code + 1)

    @property
    def requests(self) -> int:
        """Requests of every kind this worker answered."""
        return self.served + self.failed + self.control


def _record_run(mm, ring: int, recorded: int, ok: bool, duration: float) -> int:
    """Put a run that took ``duration`` seconds in the ring at offset ``ring``, which
    holds ``recorded`` runs so far (a failure's time in the header too); return
    the new count."""
    wall = time.time()
    if not ok:
        _D.pack_into(mm, _LAST_FAILURE_OFFSET, wall)
    _RING_ENTRY.pack_into(mm, ring + _RING_HEAD.size + (recorded % RING) * _RING_ENTRY.size,
                          wall, duration)
    _RING_HEAD.pack_into(mm, ring, recorded + 1)
    return recorded + 1


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

    @property
    def spare(self) -> bool:
        """Whether the worker still waits for its connection."""
        return self.state == ACCEPTING


class Totals:
    """Counts over every worker, live or gone, and what recent runs took."""

    __slots__ = ("served", "failed", "control", "last_failure", "durations")

    def __init__(self, served, failed, control, last_failure, durations) -> None:
        self.served, self.failed, self.control = served, failed, control
        self.last_failure = last_failure  # time.time() of the last failed run, or None
        self.durations = durations        # seconds, of the most recent runs, oldest first


def _map_shared(fileno: int, size: int) -> memoryview:
    """Return ``size`` bytes of file ``fileno`` mapped shared, as a writable buffer.

    libc's mmap through ctypes, not the mmap module: that one keeps a copy of
    the fd open for the mapping's life, and every run forked from a template
    would find it among its open files.  The mapping lives as long as the process.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    address = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED,
                        fileno, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        error = ctypes.get_errno()
        raise OSError(error, "mmap: %s" % os.strerror(error))
    return memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")


class Scoreboard:
    """``size`` slots in shared memory, created before the workers fork.

    ``fileno``, when given, is a file (a memfd) of at least ``bytes_needed(size)``
    bytes to map instead of anonymous memory: the service maps the same file
    and so reads every template's scoreboard.
    """

    def __init__(self, size: int, fileno: int = -1) -> None:
        self.size = size
        size_bytes = self.bytes_needed(size)
        self._mm = mmap.mmap(-1, size_bytes) if fileno < 0 else _map_shared(fileno, size_bytes)
        self._busy_all = memoryview(self._mm)[_HEADER.size:_HEADER.size + size * _STATE.size].cast("d")
        for index in range(size):
            self._busy_all[index] = FREE
        self._free = list(range(size - 1, -1, -1))  # pop() hands out the lowest index
        self._high_water = 0

    @staticmethod
    def bytes_needed(size: int) -> int:
        """Return the bytes a scoreboard of ``size`` slots maps."""
        return _HEADER.size + size * (_STATE.size + _COUNTERS.size + _RING_SIZE + _MARKS.size) \
            + FORK_RING * _D.size

    def _busy_offset(self, index: int) -> int:
        return _HEADER.size + index * _STATE.size

    def _counters_offset(self, index: int) -> int:
        return _HEADER.size + self.size * _STATE.size + index * _COUNTERS.size

    def _ring_offset(self, index: int) -> int:
        return self._counters_offset(self.size) + index * _RING_SIZE

    def _marks_offset(self, index: int) -> int:
        return self._ring_offset(self.size) + index * _MARKS.size

    def _fork_ring_offset(self) -> int:
        return self._marks_offset(self.size)

    # -- the supervisor's side --------------------------------------------------

    def claim(self) -> int:
        """Return a free slot index for a new worker; raise IndexError if none is free."""
        index = self._free.pop()
        # A spare from the fork on, so no second one is forked for the same
        # need; idle from now, not from the epoch.
        self._busy_all[index] = ACCEPTING
        _COUNTERS.pack_into(self._mm, self._counters_offset(index), 0, 0, 0, 0, time.monotonic())
        _MARKS.pack_into(self._mm, self._marks_offset(index), 0, 0, 0)
        if index >= self._high_water:
            self._high_water = index + 1
            _COUNT.pack_into(self._mm, 0, self._high_water)
        return index

    def set_pid(self, index: int, pid: int) -> None:
        """Record the pid of the worker just forked into slot ``index`` (the
        service counts it from now, not from when the worker attaches)."""
        _Q.pack_into(self._mm, self._counters_offset(index), pid)

    def attach(self, index: int, pid: int) -> Slot:
        """Return the worker-side Slot ``index`` (called in the worker)."""
        return Slot(self, index, pid)

    def release(self, index: int) -> WorkerState:
        """Free slot ``index`` of a worker that is gone; return its last state.

        Its counts move to the header's totals, so they survive the worker.
        """
        state = self.read(index)
        served, failed, control = _RETIRED.unpack_from(self._mm, _RETIRED_OFFSET)
        _RETIRED.pack_into(self._mm, _RETIRED_OFFSET, served + state.served,
                           failed + state.failed, control + state.control)
        if state.served + state.failed + state.control:
            last = max(_D.unpack_from(self._mm, _LAST_ACTIVITY_OFFSET)[0], state.idle_since)
            _D.pack_into(self._mm, _LAST_ACTIVITY_OFFSET, last)
        _COUNTERS.pack_into(self._mm, self._counters_offset(index), 0, 0, 0, 0, 0.0)
        self._busy_all[index] = FREE
        self._free.append(index)
        self._free.sort(reverse=True)
        return state

    def record_run(self, index: int, ok: bool) -> float:
        """Count the run of a worker that ended with it (a run on the client's
        terminal), as the worker's Slot.end() would; return its duration."""
        state = self.read(index)
        now = time.monotonic()
        duration = now - state.busy_since if state.busy_since else 0.0
        served, failed = state.served + ok, state.failed + (not ok)
        ring = self._ring_offset(index)
        _record_run(self._mm, ring, _RING_HEAD.unpack_from(self._mm, ring)[0], ok, duration)
        _COUNTERS.pack_into(self._mm, self._counters_offset(index), state.pid, served, failed,
                            state.control, now)
        self._busy_all[index] = CONNECTED
        return duration

    def kind(self, index: int) -> int:
        """Return the kind of the request last begun in slot ``index`` (V1, CAPTURED, TERMINAL)."""
        return _Q.unpack_from(self._mm, self._marks_offset(index))[0]

    def announced_exit(self, index: int):
        """Return the exit status the worker in slot ``index`` announced it is about to
        exit with (Slot.announce_exit), or None."""
        code = _Q.unpack_from(self._mm, self._marks_offset(index) + 2 * _Q.size)[0]
        return code - 1 if code else None

    def ask_to_retire(self, index: int) -> None:
        """Ask the worker in slot ``index`` to end after the request it runs."""
        _Q.pack_into(self._mm, self._marks_offset(index) + _Q.size, 1)

    def record_fork(self, seconds: float) -> None:
        """Remember how long one fork took (the supervisor's side of it)."""
        forks = _Q.unpack_from(self._mm, _FORKS_OFFSET)[0]
        _D.pack_into(self._mm, self._fork_ring_offset() + (forks % FORK_RING) * _D.size, seconds)
        _Q.pack_into(self._mm, _FORKS_OFFSET, forks + 1)

    def bump_stale_epoch(self) -> None:
        """Mark every worker forked so far as possibly stale (see ``freshness``)."""
        _Q.pack_into(self._mm, _STALE_OFFSET, self.stale_epoch() + 1)

    def unbump_stale_epoch(self) -> None:
        """Take the last mark back: the change was nothing the preloads depend on."""
        _Q.pack_into(self._mm, _STALE_OFFSET, self.stale_epoch() - 1)

    def stale_epoch(self) -> int:
        """Return the stale epoch: a worker forked at another one may run stale code."""
        return _Q.unpack_from(self._mm, _STALE_OFFSET)[0]

    def set_start_failures(self, count: int) -> None:
        """Publish how many workers in a row failed at start (0: they start)."""
        _Q.pack_into(self._mm, _START_FAILURES_OFFSET, count)

    # -- anyone's side ------------------------------------------------------------

    def read(self, index: int) -> WorkerState:
        """Return the current state of slot ``index``."""
        return WorkerState(self._busy_all[index],
                           *_COUNTERS.unpack_from(self._mm, self._counters_offset(index)))

    def live_states(self) -> list:
        """Return the states of the slots that hold a worker."""
        (count,) = _COUNT.unpack_from(self._mm, 0)
        states = [self.read(i) for i in range(count) if self._busy_all[i] != FREE]
        return [s for s in states if s.pid]

    def last_activity(self) -> float:
        """Return the monotonic time a request last ended, in any worker, live or gone
        (0.0 if none ever did).  Whether one runs now is the caller's to ask."""
        last = _D.unpack_from(self._mm, _LAST_ACTIVITY_OFFSET)[0]
        for state in self.live_states():
            if state.served + state.failed + state.control:
                last = max(last, state.idle_since)
        return last

    def totals(self, recent: int = 1000) -> Totals:
        """Return the counts over every worker, live or gone, with the durations of
        the ``recent`` most recent runs."""
        served, failed, control = _RETIRED.unpack_from(self._mm, _RETIRED_OFFSET)
        for state in self.live_states():
            served += state.served
            failed += state.failed
            control += state.control
        (last_failure,) = _D.unpack_from(self._mm, _LAST_FAILURE_OFFSET)
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

    def forks(self) -> "tuple[int, list]":
        """Return (forks so far, durations in seconds of the last FORK_RING of them)."""
        forks = _Q.unpack_from(self._mm, _FORKS_OFFSET)[0]
        base = self._fork_ring_offset()
        return forks, [_D.unpack_from(self._mm, base + i * _D.size)[0]
                       for i in range(min(forks, FORK_RING))]

    def start_failures(self) -> int:
        """Return how many workers in a row failed at start."""
        return _Q.unpack_from(self._mm, _START_FAILURES_OFFSET)[0]

    def cache_epoch(self) -> int:
        """Return the compile-cache epoch: a worker that saw another one clears its cache."""
        return _Q.unpack_from(self._mm, _EPOCH_OFFSET)[0]

    def bump_cache_epoch(self) -> None:
        """Ask every worker to clear its compile cache before its next request.

        Two workers bumping at the same instant may count once; both asked for
        the same thing, and it is done.
        """
        _Q.pack_into(self._mm, _EPOCH_OFFSET, self.cache_epoch() + 1)
