"""The scoreboard: a slot's states through its life, runs apart from control requests,
totals that survive a worker, the rings of recent runs and forks, the marks, two
processes (and two mappings) sharing one board, and the declared layout."""

import ctypes
import os
import socket
import struct
import time
from typing import Callable, cast

import pytest

from pyrust.server.scoreboard import (
    ACCEPTING,
    BUSY,
    CAPTURED,
    CONNECTED,
    FORK_RING,
    FREE,
    RING,
    TERMINAL,
    V1,
    Kind,
    Scoreboard,
    _Header,
    _layout,
    _SlotRecord,
)


def test_a_slot_counts_runs_and_control_requests_apart() -> None:
    board = Scoreboard(4)
    slot = board.attach(board.claim(), 1234)
    assert [s.spare for s in board.live_states()] == [True]
    slot.connected()
    assert [s.spare for s in board.live_states()] == [False]
    for ok in (True, True, False):
        slot.begin()
        assert board.read(0).busy_since > 0
        assert slot.end(ok) >= 0
    slot.begin()
    slot.end_control()
    state = board.read(0)
    assert (state.pid, state.served, state.failed, state.control) == (1234, 2, 1, 1)
    assert state.state == CONNECTED and state.busy_since == 0.0
    totals = board.totals()
    assert (totals.served, totals.failed, totals.control) == (2, 1, 1)
    assert len(totals.durations) == 3  # control requests take no place among runs
    assert totals.last_failure is not None and abs(totals.last_failure - time.time()) < 60
    assert board.kind(0) == V1


def test_a_run_on_the_terminal_is_counted_by_the_supervisor() -> None:
    board = Scoreboard(2)
    index = board.claim()
    slot = board.attach(index, 7)
    slot.connected()
    slot.begin(TERMINAL)
    assert board.kind(index) == TERMINAL and board.read(index).busy_since
    assert board.record_run(index, ok=False) >= 0  # the worker is gone; the supervisor counts
    state = board.release(index)
    assert (state.served, state.failed) == (0, 1)
    totals = board.totals()
    assert (totals.served, totals.failed, len(totals.durations)) == (0, 1, 1)
    assert totals.last_failure is not None
    assert board.last_activity() > 0


def test_retire_marks_and_fork_times() -> None:
    board = Scoreboard(2)
    slot = board.attach(board.claim(), 1)
    assert not slot.retiring()
    board.ask_to_retire(0)
    assert slot.retiring()
    for seconds in (0.001, 0.002):
        board.record_fork(seconds)
    assert board.forks() == (2, [0.001, 0.002])
    board.set_start_failures(3)
    assert board.start_failures() == 3


def test_totals_survive_the_worker_and_the_ring_survives_the_slot() -> None:
    board = Scoreboard(2)
    index = board.claim()
    slot = board.attach(index, 1)
    for _ in range(RING + 10):
        slot.begin()
        slot.end(ok=True)
    board.release(index)
    totals = board.totals()
    assert (totals.served, totals.failed, totals.last_failure) == (RING + 10, 0, None)
    assert len(totals.durations) == RING  # the ring keeps the last RING runs
    again = board.attach(board.claim(), 2)  # the same slot, a new worker
    again.begin()
    again.end(ok=True)
    assert board.totals().served == RING + 11
    assert len(board.totals().durations) == RING
    assert board.totals(recent=5).durations == board.totals().durations[-5:]
    assert board.totals(recent=0).durations == []


def test_recent_runs_merge_slots_by_time() -> None:
    board = Scoreboard(3)
    slots = [board.attach(board.claim(), pid) for pid in (1, 2)]
    for slot in slots * 3:
        slot.begin()
        slot.end(ok=True)
    assert len(board.totals(recent=4).durations) == 4


def test_the_cache_epoch() -> None:
    board = Scoreboard(1)
    assert board.cache_epoch() == 0
    board.bump_cache_epoch()
    assert board.cache_epoch() == 1


def test_a_slot_through_its_life() -> None:
    board = Scoreboard(2)
    assert board.live_states() == [] and board.read(0).state == FREE
    index = board.claim()
    assert board.read(index).state == ACCEPTING and board.read(index).spare
    assert board.live_states() == []  # no pid yet: not forked
    board.set_pid(index, 41)
    assert [s.pid for s in board.live_states()] == [41]
    slot = board.attach(index, 42)
    assert board.read(index).state == ACCEPTING and board.read(index).pid == 42
    slot.connected()
    assert board.read(index).state == CONNECTED and not board.read(index).spare
    before = time.monotonic()
    slot.begin()
    busy = board.read(index)
    assert busy.state == BUSY and before <= busy.busy_since <= time.monotonic()
    slot.end(ok=True)
    idle = board.read(index)
    assert (idle.state, idle.busy_since, idle.served) == (CONNECTED, 0.0, 1)
    assert idle.idle_since >= busy.busy_since
    gone = board.release(index)
    assert (gone.state, gone.pid, gone.served) == (CONNECTED, 42, 1)
    assert board.read(index).state == FREE and board.live_states() == []
    assert board.claim() == index  # the lowest free slot again


def test_release_moves_the_counts_to_the_retired_totals() -> None:
    board = Scoreboard(3)
    first, second = (board.attach(board.claim(), pid) for pid in (1, 2))
    for slot, runs in ((first, (True, True, False)), (second, (True,))):
        for ok in runs:
            slot.begin()
            slot.end(ok)
        slot.end_control()
    ended = board.read(0).idle_since
    board.release(0)
    empty = board.read(0)
    assert (empty.pid, empty.served, empty.failed, empty.control) == (0, 0, 0, 0)
    totals = board.totals()
    assert (totals.served, totals.failed, totals.control) == (3, 1, 2)
    assert board.last_activity() >= ended
    board.release(1)
    assert board.live_states() == []
    totals = board.totals()
    assert (totals.served, totals.failed, totals.control, len(totals.durations)) == (3, 1, 2, 4)


def test_the_ring_keeps_the_last_runs_after_it_wraps() -> None:
    board = Scoreboard(1)
    slot = board.attach(board.claim(), 1)
    durations = []
    for _ in range(RING + 5):
        slot.begin()
        durations.append(slot.end(ok=True))
    assert slot.recorded == RING + 5
    assert sorted(board.totals().durations) == sorted(durations[-RING:])
    board.release(0)
    again = board.attach(board.claim(), 2)
    assert again.recorded == RING + 5  # the ring outlives the worker


def test_the_fork_ring_wraps() -> None:
    board = Scoreboard(1)
    assert board.forks() == (0, [])
    seconds = [i / 1000 for i in range(FORK_RING + 3)]
    for value in seconds:
        board.record_fork(value)
    count, kept = board.forks()
    assert count == FORK_RING + 3 and len(kept) == FORK_RING
    assert sorted(kept) == seconds[-FORK_RING:]


def test_the_epochs() -> None:
    board = Scoreboard(1)
    assert (board.cache_epoch(), board.stale_epoch()) == (0, 0)
    board.bump_cache_epoch()
    board.bump_stale_epoch()
    board.bump_stale_epoch()
    board.unbump_stale_epoch()
    assert (board.cache_epoch(), board.stale_epoch()) == (1, 1)


def test_announced_exit_retire_mark_and_kind_belong_to_one_worker() -> None:
    board = Scoreboard(1)
    index = board.claim()
    slot = board.attach(index, 1)
    assert (board.announced_exit(index), slot.retiring(), board.kind(index)) == \
        (None, False, Kind.NONE)
    slot.announce_exit(0)  # a status of 0 is an announcement too
    assert board.announced_exit(index) == 0
    slot.announce_exit(3)
    assert board.announced_exit(index) == 3
    for kind in (CAPTURED, TERMINAL, V1):
        slot.begin(kind)
        assert board.kind(index) == kind
        slot.end(ok=True)
        assert board.kind(index) == kind  # until the next request begins
    board.ask_to_retire(index)
    assert slot.retiring()
    board.release(index)
    again = board.attach(board.claim(), 2)  # the next worker in the slot starts clean
    assert (board.announced_exit(index), again.retiring(), board.kind(index)) == \
        (None, False, Kind.NONE)


class _Recorder:
    """Stands for a slot's record and notes the order of its writes and reads."""

    _order: list
    _record: _SlotRecord

    def __init__(self, record: _SlotRecord, order: list) -> None:
        object.__setattr__(self, "_record", record)
        object.__setattr__(self, "_order", order)

    def __setattr__(self, name: str, value: object) -> None:
        self._order.append(("set", name))
        setattr(self._record, name, value)

    def __getattr__(self, name: str) -> object:
        self._order.append(("get", name))
        return getattr(self._record, name)


def test_began_is_written_before_the_state_and_read_after_it() -> None:
    """A supervisor that sees BUSY must find the time this request began, never an
    older one (it would kill the worker as stuck)."""
    board = Scoreboard(1)
    slot = board.attach(board.claim(), 1)
    order: list = []
    slot._record = cast(_SlotRecord, _Recorder(board._records[0], order))
    slot.begin()
    assert order.index(("set", "began")) < order.index(("set", "state"))
    board._records[0] = cast(_SlotRecord, _Recorder(board._records[0], order))
    del order[:]
    assert board.read(0).busy_since
    assert order.index(("get", "state")) < order.index(("get", "began"))


def _in_child(work: "Callable[[socket.socket], None]") -> "tuple[socket.socket, int]":
    """Fork a child that runs ``work(sock)`` and exits 0 (1 if it raised); return
    the parent's end of a socket pair to the child, with a timeout, and its pid."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            ours.close()
            theirs.settimeout(10)
            work(theirs)
            status = 0
        finally:
            os._exit(status)
    theirs.close()
    ours.settimeout(10)
    return ours, pid


def _exit_status(sock: socket.socket, pid: int) -> int:
    sock.close()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _worker_side(board: Scoreboard, index: int) -> "Callable[[socket.socket], None]":
    """What a forked worker does in the two-process tests: it begins a request,
    waits for the parent's retire mark, ends and announces its exit."""

    def work(sock: socket.socket) -> None:
        slot = board.attach(index, os.getpid())
        slot.connected()
        slot.begin(TERMINAL)
        sock.sendall(b"b")
        assert sock.recv(1) == b"r" and slot.retiring()
        slot.end(ok=False)
        slot.announce_exit(7)
        sock.sendall(b"e")

    return work


def _check_two_processes(worker_board: Scoreboard, supervisor_board: Scoreboard) -> None:
    index = supervisor_board.claim()
    sock, pid = _in_child(_worker_side(worker_board, index))
    assert sock.recv(1) == b"b"
    state = supervisor_board.read(index)
    assert state.state == BUSY and state.busy_since and state.pid == pid
    assert supervisor_board.kind(index) == TERMINAL
    supervisor_board.ask_to_retire(index)
    sock.sendall(b"r")
    assert sock.recv(1) == b"e"
    assert _exit_status(sock, pid) == 0
    assert supervisor_board.announced_exit(index) == 7
    totals = supervisor_board.totals()
    assert (totals.failed, len(totals.durations)) == (1, 1) and totals.last_failure


def test_a_forked_worker_and_its_supervisor_share_the_board() -> None:
    board = Scoreboard(2)
    _check_two_processes(board, board)


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memfd")
def test_a_memfd_mapped_twice_is_one_board() -> None:
    """The service maps the template's memfd too: two mappings of one file."""
    fd = os.memfd_create("pyrust-test-scoreboard", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, Scoreboard.bytes_needed(4))
        service = Scoreboard(4, fd)
        template = Scoreboard(4, fd)
    finally:
        os.close(fd)  # the mappings stay
    assert ctypes.addressof(service._header) != ctypes.addressof(template._header)
    _check_two_processes(template, service)
    template.bump_stale_epoch()
    assert service.stale_epoch() == 1


def _fields(structure: "type[ctypes.Structure]") -> list:
    return [(field[0], getattr(structure, field[0])) for field in structure._fields_]


@pytest.mark.parametrize("structure", [_Header, _SlotRecord, _layout(3)])
def test_the_layout_has_no_padding_and_aligned_fields(structure: "type[ctypes.Structure]") -> None:
    """Every interpreter maps the same bytes the same way; each field is one store."""
    end = 0
    for _, field in _fields(structure):
        assert field.offset == end and field.offset % 8 == 0
        end += field.size
    assert ctypes.sizeof(structure) == end


def test_the_size_and_offsets_are_the_declared_ones() -> None:
    size = 3
    board = Scoreboard(size)
    layout = _layout(size)
    assert Scoreboard.bytes_needed(size) == ctypes.sizeof(layout) == len(board._mm)
    assert ctypes.sizeof(layout) == ctypes.sizeof(_Header) + size * ctypes.sizeof(_SlotRecord)
    q = struct.Struct("=q")
    board.bump_cache_epoch()
    board.bump_stale_epoch()
    board.bump_stale_epoch()
    header = layout.header.offset
    assert q.unpack_from(board._mm, header + _Header.cache_epoch.offset) == (1,)
    assert q.unpack_from(board._mm, header + _Header.stale_epoch.offset) == (2,)
    index = board.claim()
    board.claim()
    board.set_pid(index + 1, 4321)
    slot = layout.slots.offset + (index + 1) * ctypes.sizeof(_SlotRecord)
    assert q.unpack_from(board._mm, slot + _SlotRecord.pid.offset) == (4321,)
    assert q.unpack_from(board._mm, slot + _SlotRecord.state.offset) == (ACCEPTING,)
    assert q.unpack_from(board._mm, header + _Header.slots_in_use.offset) == (2,)


def test_what_a_worker_cost_is_added_up_when_it_is_reaped() -> None:
    """A forked worker records its start-up's CPU and faults; the supervisor adds
    what wait4 reports for the whole process when it releases the slot, and its
    own usage at every fork."""
    board = Scoreboard(2)
    board.record_fork(0.001)
    index = board.claim()

    def work(sock: socket.socket) -> None:
        slot = board.attach(index, os.getpid())
        bytearray(1 << 20)  # a start-up that touches some pages
        slot.started()
        bytearray(1 << 20)  # and a connection that touches more
        sock.sendall(b"s")

    sock, pid = _in_child(work)
    assert sock.recv(1) == b"s"
    sock.close()
    _, status, usage = os.wait4(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    board.release(index, usage)
    costs = board.costs()
    assert costs["forks"] == 1 and costs["workers_ended"] == 1
    assert costs["template_faults"] > 0 and costs["template_cpu"] > 0
    assert 0 < costs["start_faults"] < costs["worker_faults"] == usage.ru_minflt
    assert 0 <= costs["start_cpu"] <= costs["worker_cpu"]
    board.release(board.claim())  # a slot released with no usage adds nothing
    assert board.costs()["workers_ended"] == 1
