"""The scoreboard: one slot of counters per worker, in memory shared across fork.

Each worker writes only its own slot; the supervisor reads them (and resets a
slot when its worker is gone), so no lock is needed.  A request costs the
worker a few ctypes field assignments: nothing on the hot path waits or polls.

The layout is declared with ctypes structures over the shared mapping (`_layout`):
a `_Header` (the totals of workers that are gone, the epochs, the ring of the
supervisor's fork durations), then one `_SlotRecord` per slot: its worker's pid
and counters, its `State`, when the request in flight began, that request's
`Kind`, the retire mark, the exit status its worker announced, and the ring of
its recent runs (it outlives its worker, so the latency of recent runs survives
the workers, which live one connection each).  Every field is 8 bytes wide, so
there is no padding, every interpreter (CPython 3.9 to 3.13) that maps the same
memory sees the same layout, and each field is written in one aligned store.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import mmap
import os
import resource
import time
from ctypes import c_double, c_int64

#: Runs each slot remembers, for the latency of recent runs.
RING = 64
#: Forks whose duration the supervisor remembers.
FORK_RING = 256


class State(enum.IntEnum):
    """What the worker in a slot does (a zeroed slot is FREE)."""

    FREE = 0       #: no worker in this slot
    ACCEPTING = 1  #: in accept(): a spare, free to take a new connection
    CONNECTED = 2  #: holds a connection, waiting for its next request
    BUSY = 3       #: runs a request, which began at the slot's ``began``


FREE, ACCEPTING, CONNECTED, BUSY = State.FREE, State.ACCEPTING, State.CONNECTED, State.BUSY
_STATES = tuple(State)  # by value: quicker than State(value) on the supervisor's reads


class Kind(enum.IntEnum):
    """What the supervisor owes the client if the worker dies during the request
    in flight (read only while the slot's state is BUSY)."""

    NONE = 0      #: no request begun yet
    V1 = 1        #: a v1 request: a status-4 reply saying how the worker died
    CAPTURED = 2  #: an extended request whose output is captured: the exit code
    TERMINAL = 3  #: a run on the client's fds: the worker closed the connection, the
    #               supervisor sends the exit status the worker ends with


V1, CAPTURED, TERMINAL = Kind.V1, Kind.CAPTURED, Kind.TERMINAL


class _Header(ctypes.Structure):
    _fields_ = [
        ("slots_in_use", c_int64),     # high-water mark: no slot above it was ever claimed
        ("retired_served", c_int64),   # runs served, runs failed and control requests
        ("retired_failed", c_int64),   # of workers that are gone
        ("retired_control", c_int64),
        ("cache_epoch", c_int64),      # bumped to make every worker clear its compile cache
        ("last_failure", c_double),    # time.time() of the last failed run, 0.0 if none
        ("start_failures", c_int64),   # workers that failed at start in a row
        ("last_activity", c_double),   # time.monotonic() a gone worker's last request ended
        ("forks", c_int64),            # forks so far
        ("stale_epoch", c_int64),      # bumped when a preloaded module's file may have
        #                                changed: workers forked before are stale
        # What fresh processes cost (see costs()): the supervisor's own CPU seconds
        # and minor faults at its last fork; the workers reaped so far, their CPU
        # and faults in all (exit included), and those of their start-up alone.
        ("template_cpu", c_double),
        ("template_faults", c_int64),
        ("workers_ended", c_int64),
        ("worker_cpu", c_double),
        ("worker_faults", c_int64),
        ("start_cpu", c_double),
        ("start_faults", c_int64),
        ("fork_durations", c_double * FORK_RING),  # seconds; fork n is at n % FORK_RING
    ]


class _Run(ctypes.Structure):
    _fields_ = [("wall", c_double), ("duration", c_double)]  # time.time() it ended; seconds


class _SlotRecord(ctypes.Structure):
    _fields_ = [
        ("state", c_int64),            # a State
        ("began", c_double),           # time.monotonic() the request in flight began
        ("pid", c_int64),
        ("served", c_int64),           # runs that ended with status 0
        ("failed", c_int64),           # other runs
        ("control", c_int64),          # status, stop and the like: counted apart from work
        ("idle_since", c_double),      # time.monotonic() the last request ended
        ("kind", c_int64),             # the Kind of the request last begun
        ("retire", c_int64),           # 1: the supervisor asks the worker to end
        ("exiting", c_int64),          # 1: the worker announced it exits with exit_status
        ("exit_status", c_int64),
        ("recorded", c_int64),         # runs ever recorded in the ring: run n is at n % RING
        ("start_cpu", c_double),       # the worker's CPU seconds and minor faults from
        ("start_faults", c_int64),     # its fork to its first accept() (Slot.started)
        ("ring", _Run * RING),
    ]


@functools.lru_cache(maxsize=None)
def _layout(size: int) -> type[ctypes.Structure]:
    """Return the structure of a whole scoreboard of ``size`` slots."""

    class _Board(ctypes.Structure):
        _fields_ = [("header", _Header), ("slots", _SlotRecord * size)]

    return _Board


class Slot:
    """A worker's view of its own slot."""

    __slots__ = ("_record", "_header", "_entries", "_began", "_kind",
                 "pid", "served", "failed", "control", "recorded")

    def __init__(self, scoreboard: Scoreboard, index: int, pid: int) -> None:
        self._record = record = scoreboard._records[index]
        self._header = scoreboard._header
        self._entries = scoreboard._ring_views(index)  # made once, not per run
        self.recorded = record.recorded
        self.pid = pid
        self.served = self.failed = self.control = 0
        self._began = 0.0
        self._kind: int = Kind.NONE
        record.pid = pid  # claim() reset the record, in the supervisor before the fork

    def started(self) -> None:
        """Record what the worker's start-up cost it, fork to accept(): its own
        CPU time and minor faults so far (a child's count from its fork)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        record = self._record
        record.start_cpu = usage.ru_utime + usage.ru_stime
        record.start_faults = usage.ru_minflt

    def connected(self) -> None:
        """Mark the worker taken by a connection: no longer a spare."""
        self._record.state = CONNECTED

    def begin(self, kind: int = V1) -> None:
        """Mark the worker busy with a request of ``kind`` (V1, CAPTURED, TERMINAL)."""
        record = self._record
        if kind != self._kind:  # a session's requests are mostly of one kind
            self._kind = record.kind = kind
        # ``began`` before ``state``: a reader that sees BUSY finds this request's time.
        self._began = record.began = time.monotonic()
        record.state = BUSY

    def end(self, ok: bool) -> float:
        """Mark a run done (``ok``: it ended with status 0) and the worker idle.

        Record its duration in the ring (a failure's time in the header too);
        return the duration in seconds.
        """
        now = time.monotonic()
        duration = now - self._began
        record = self._record
        if ok:
            self.served = record.served = self.served + 1
        else:
            self.failed = record.failed = self.failed + 1
        entry = self._entries[self.recorded % RING]
        self.recorded = _record_run(self._header, record, entry, ok, duration)
        record.idle_since = now
        record.state = CONNECTED
        return duration

    def end_control(self) -> None:
        """Mark a control request (status, stop, ...) done and the worker idle."""
        record = self._record
        self.control = record.control = self.control + 1
        record.idle_since = time.monotonic()
        record.state = CONNECTED

    def retiring(self) -> bool:
        """Return whether the supervisor asked this worker to end after its request."""
        return bool(self._record.retire)

    def announce_exit(self, code: int) -> None:
        """Say that this process is about to exit with status ``code`` (0-255)."""
        self._record.exit_status = code
        self._record.exiting = 1  # after the status: a reader that sees 1 finds the status

    @property
    def requests(self) -> int:
        """Requests of every kind this worker answered."""
        return self.served + self.failed + self.control


def _reset(record: _SlotRecord, pid: int) -> None:
    """Give slot ``record`` to a worker of ``pid`` (0: not forked yet), idle from now:
    no counts, no kind, no retire mark, no exit announced.  Its state and ring stay."""
    record.pid = pid
    record.served = record.failed = record.control = 0
    record.idle_since = time.monotonic()
    record.kind = record.retire = record.exiting = record.exit_status = 0
    record.start_cpu = record.start_faults = 0


def _record_run(header: _Header, record: _SlotRecord, entry: _Run, ok: bool,
                duration: float) -> int:
    """Put a run that took ``duration`` seconds in ``entry``, the next place in the
    ring of ``record`` (a failure's time in ``header`` too); return the runs the
    ring has recorded so far."""
    wall = time.time()
    if not ok:
        header.last_failure = wall
    entry.wall = wall
    entry.duration = duration
    recorded: int = record.recorded + 1
    record.recorded = recorded
    return recorded


class WorkerState:
    """What the supervisor reads from one slot."""

    __slots__ = ("state", "busy_since", "pid", "served", "failed", "control", "idle_since")

    def __init__(self, state: State, busy_since: float, pid: int, served: int, failed: int,
                 control: int, idle_since: float) -> None:
        self.state, self.pid, self.served, self.failed = state, pid, served, failed
        self.busy_since = busy_since  # when the running request began, or 0.0 if none runs
        self.control, self.idle_since = control, idle_since

    @property
    def spare(self) -> bool:
        """Whether the worker still waits for its connection."""
        return self.state == ACCEPTING


class Totals:
    """Counts over every worker, live or gone, and what recent runs took."""

    __slots__ = ("served", "failed", "control", "last_failure", "durations")

    def __init__(self, served: int, failed: int, control: int, last_failure: float | None,
                 durations: list[float]) -> None:
        self.served, self.failed, self.control = served, failed, control
        self.last_failure = last_failure  # time.time() of the last failed run, or None
        self.durations = durations        # seconds, of the most recent runs, oldest first


def _map_shared(fileno: int, size: int) -> memoryview:
    """Return ``size`` bytes of file ``fileno`` mapped shared, as a writable buffer.

    libc's mmap through ctypes, not the mmap module: that one keeps a copy of
    the fd open for the mapping's life, and every run forked from a template
    would find it among its open files.  The mapping lives as long as the process.
    """
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
        board = _layout(size).from_buffer(self._mm)
        self._header: _Header = board.header
        self._records: list[_SlotRecord] = list(board.slots)  # made once, not per read
        for record in self._records:
            record.state = FREE
        self._free = list(range(size - 1, -1, -1))  # pop() hands out the lowest index
        self._high_water = 0
        self._rings: dict[int, list[_Run]] = {}  # slot index -> views of its ring

    @staticmethod
    def bytes_needed(size: int) -> int:
        """Return the bytes a scoreboard of ``size`` slots maps."""
        return ctypes.sizeof(_layout(size))

    # -- the supervisor's side --------------------------------------------------

    def claim(self) -> int:
        """Return a free slot index for a new worker; raise IndexError if none is free."""
        index = self._free.pop()
        # A spare from the fork on, so no second one is forked for the same
        # need; idle from now, not from the epoch.
        record = self._records[index]
        _reset(record, 0)
        record.state = ACCEPTING
        self._ring_views(index)
        if index >= self._high_water:
            self._high_water = index + 1
            self._header.slots_in_use = self._high_water
        return index

    def _ring_views(self, index: int) -> list[_Run]:
        """Return the views of slot ``index``'s ring entries.  claim() makes them in
        the supervisor, once per slot: a worker forked after that inherits them
        instead of making 64 ctypes objects in a process where each page
        written costs a copy-on-write fault."""
        views = self._rings.get(index)
        if views is None:
            views = self._rings[index] = list(self._records[index].ring)
        return views

    def set_pid(self, index: int, pid: int) -> None:
        """Record the pid of the worker just forked into slot ``index`` (the
        service counts it from now, not from when the worker attaches)."""
        self._records[index].pid = pid

    def attach(self, index: int, pid: int) -> Slot:
        """Return the worker-side Slot ``index`` (called in the worker)."""
        return Slot(self, index, pid)

    def release(self, index: int, usage: resource.struct_rusage | None = None) -> WorkerState:
        """Free slot ``index`` of a worker that is gone; return its last state.

        Its counts move to the header's totals, so they survive the worker, and
        so does ``usage``, what the worker cost (from wait4), when given.
        """
        state = self.read(index)
        header = self._header
        if usage is not None:
            record = self._records[index]
            header.workers_ended += 1
            header.worker_cpu += usage.ru_utime + usage.ru_stime
            header.worker_faults += usage.ru_minflt
            header.start_cpu += record.start_cpu
            header.start_faults += record.start_faults
        header.retired_served += state.served
        header.retired_failed += state.failed
        header.retired_control += state.control
        if state.served + state.failed + state.control:
            header.last_activity = max(header.last_activity, state.idle_since)
        record = self._records[index]
        record.pid = record.served = record.failed = record.control = 0
        record.idle_since = 0.0
        record.state = FREE
        self._free.append(index)
        self._free.sort(reverse=True)
        return state

    def record_run(self, index: int, ok: bool) -> float:
        """Count the run of a worker that ended with it (a run on the client's
        terminal), as the worker's Slot.end() would; return its duration."""
        state = self.read(index)
        now = time.monotonic()
        duration = now - state.busy_since if state.busy_since else 0.0
        record = self._records[index]
        entry = record.ring[record.recorded % RING]
        _record_run(self._header, record, entry, ok, duration)
        record.served, record.failed = state.served + ok, state.failed + (not ok)
        record.idle_since = now
        record.state = CONNECTED
        return duration

    def kind(self, index: int) -> Kind:
        """Return the kind of the request last begun in slot ``index`` (V1, CAPTURED,
        TERMINAL; NONE before the first)."""
        return Kind(self._records[index].kind)

    def announced_exit(self, index: int) -> int | None:
        """Return the exit status the worker in slot ``index`` announced it is about to
        exit with (Slot.announce_exit), or None."""
        record = self._records[index]
        return record.exit_status if record.exiting else None

    def ask_to_retire(self, index: int) -> None:
        """Ask the worker in slot ``index`` to end after the request it runs."""
        self._records[index].retire = 1

    def record_fork(self, seconds: float) -> None:
        """Remember how long one fork took (the supervisor's side of it), and
        what the supervisor has cost so far."""
        header = self._header
        header.fork_durations[header.forks % FORK_RING] = seconds
        header.forks += 1
        usage = resource.getrusage(resource.RUSAGE_SELF)
        header.template_cpu = usage.ru_utime + usage.ru_stime
        header.template_faults = usage.ru_minflt

    def costs(self) -> dict[str, float]:
        """Return what fresh processes have cost, as totals: ``forks``, the
        supervisor's ``template_cpu`` seconds and ``template_faults`` (minor
        page faults) at its last fork, the ``workers_ended`` reaped with their
        ``worker_cpu`` and ``worker_faults`` (start to exit), and ``start_cpu``
        and ``start_faults``, the part before their first accept().  Two
        readings' differences give the cost of one connection."""
        header = self._header
        return {name: getattr(header, name) for name in (
            "forks", "template_cpu", "template_faults", "workers_ended", "worker_cpu",
            "worker_faults", "start_cpu", "start_faults")}

    def bump_stale_epoch(self) -> None:
        """Mark every worker forked so far as possibly stale (see ``freshness``)."""
        self._header.stale_epoch += 1

    def unbump_stale_epoch(self) -> None:
        """Take the last mark back: the change was nothing the preloads depend on."""
        self._header.stale_epoch -= 1

    def stale_epoch(self) -> int:
        """Return the stale epoch: a worker forked at another one may run stale code."""
        return self._header.stale_epoch

    def set_start_failures(self, count: int) -> None:
        """Publish how many workers in a row failed at start (0: they start)."""
        self._header.start_failures = count

    # -- anyone's side ------------------------------------------------------------

    def read(self, index: int) -> WorkerState:
        """Return the current state of slot ``index``."""
        record = self._records[index]
        state = _STATES[record.state]
        # ``state`` before ``began``: the worker writes them the other way round.
        began = record.began if state == BUSY else 0.0
        return WorkerState(state, began, record.pid, record.served, record.failed,
                           record.control, record.idle_since)

    def live_states(self) -> list[WorkerState]:
        """Return the states of the slots that hold a worker."""
        records = self._records[:self._header.slots_in_use]
        states = [self.read(i) for i, record in enumerate(records) if record.state != FREE]
        return [s for s in states if s.pid]

    def last_activity(self) -> float:
        """Return the monotonic time a request last ended, in any worker, live or gone
        (0.0 if none ever did).  Whether one runs now is the caller's to ask."""
        last: float = self._header.last_activity
        for state in self.live_states():
            if state.served + state.failed + state.control:
                last = max(last, state.idle_since)
        return last

    def totals(self, recent: int = 1000) -> Totals:
        """Return the counts over every worker, live or gone, with the durations of
        the ``recent`` most recent runs."""
        header = self._header
        served, failed = header.retired_served, header.retired_failed
        control = header.retired_control
        for state in self.live_states():
            served += state.served
            failed += state.failed
            control += state.control
        return Totals(served, failed, control, header.last_failure or None,
                      self._recent_runs(recent))

    def _recent_runs(self, recent: int) -> list[float]:
        if not recent:
            return []
        runs = []
        for record in self._records[:self._header.slots_in_use]:
            runs += [(run.wall, run.duration) for run in record.ring[:min(record.recorded, RING)]]
        runs.sort()
        return [duration for _, duration in runs[-recent:]]

    def forks(self) -> tuple[int, list[float]]:
        """Return (forks so far, durations in seconds of the last FORK_RING of them)."""
        forks: int = self._header.forks
        return forks, self._header.fork_durations[:min(forks, FORK_RING)]

    def start_failures(self) -> int:
        """Return how many workers in a row failed at start."""
        return self._header.start_failures

    def cache_epoch(self) -> int:
        """Return the compile-cache epoch: a worker that saw another one clears its cache."""
        return self._header.cache_epoch

    def bump_cache_epoch(self) -> None:
        """Ask every worker to clear its compile cache before its next request.

        Two workers bumping at the same instant may count once; both asked for
        the same thing, and it is done.
        """
        self._header.cache_epoch += 1
