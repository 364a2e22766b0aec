"""The scoreboard's counters: runs apart from control requests, totals that survive
a worker, the ring of recent run durations and the last failure's time."""

import time

from pyrust.server.scoreboard import CONNECTED, RING, TERMINAL, V1, Scoreboard


def test_a_slot_counts_runs_and_control_requests_apart():
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
    assert abs(totals.last_failure - time.time()) < 60
    assert board.kind(0) == V1


def test_a_run_on_the_terminal_is_counted_by_the_supervisor():
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


def test_retire_marks_and_fork_times():
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


def test_totals_survive_the_worker_and_the_ring_survives_the_slot():
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


def test_recent_runs_merge_slots_by_time():
    board = Scoreboard(3)
    slots = [board.attach(board.claim(), pid) for pid in (1, 2)]
    for slot in slots * 3:
        slot.begin()
        slot.end(ok=True)
    assert len(board.totals(recent=4).durations) == 4


def test_the_cache_epoch():
    board = Scoreboard(1)
    assert board.cache_epoch() == 0
    board.bump_cache_epoch()
    assert board.cache_epoch() == 1
