"""Control operations of the extended protocol, answered by whichever worker
accepted the connection: status, stop, reload, clear-cache, version.

Stop and reload are signals to the supervisor (this worker's parent), so they
take the same orderly path as ``systemctl stop`` and ``systemctl reload``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from pyrust import __version__, protocol


class ServiceInfo:
    """What the supervisor tells its workers about the service at fork time."""

    def __init__(self, source: str, path: str, started: float, scoreboard,
                 freshness=None) -> None:
        self.source, self.path, self.started = source, path, started  # started: time.time()
        self.scoreboard = scoreboard
        self.freshness = freshness  # the preloaded modules' watch (freshness.Freshness)


def handle(op: bytes, worker) -> "tuple[int, bytes]":
    """Carry out control operation ``op`` for ``worker``; return (status, payload)."""
    if op == protocol.OP_STATUS:
        return protocol.OK, json.dumps(status(worker), indent=2).encode() + b"\n"
    if op == protocol.OP_VERSION:
        return protocol.OK, ("pyrust %s (Python %s)\n" % (
            __version__, sys.version.split()[0])).encode()
    if op == protocol.OP_CLEAR_CACHE:
        worker.info.scoreboard.bump_cache_epoch()
        return protocol.OK, b"compile caches cleared\n"
    if op in (protocol.OP_STOP, protocol.OP_RELOAD):
        # Only our own supervisor: were it gone, getppid() would name a stranger.
        if os.getppid() != worker.supervisor_pid:
            return protocol.SERVICE_ERROR, b"the supervisor is gone; the service is stopping\n"
        os.kill(worker.supervisor_pid, signal.SIGTERM if op == protocol.OP_STOP else signal.SIGHUP)
        return protocol.OK, b"stopping\n" if op == protocol.OP_STOP else b"reloading\n"
    raise ValueError("not a control operation: %r" % op)


def status(worker) -> dict:
    """Return the service's status as a JSON-ready dict (RSS figures from psutil)."""
    import psutil

    board = worker.info.scoreboard
    states = board.live_states()
    totals = board.totals()

    def rss(pid):
        try:
            return psutil.Process(pid).memory_info().rss
        except psutil.Error:
            return None

    supervisor = os.getppid()
    now = time.time()
    return {
        "version": __version__,
        "python": sys.version.split()[0],
        "socket": {"path": worker.info.path, "obtained_from": worker.info.source},
        "supervisor": {"pid": supervisor, "rss": rss(supervisor)},
        "workers": [{"pid": s.pid, "state": _state_name(s), "served": s.served,
                     "failed": s.failed, "control": s.control, "rss": rss(s.pid)}
                    for s in states],
        "spares": sum(1 for s in states if s.spare),
        "workers_busy": sum(1 for s in states if s.busy_since),
        "workers_idle": sum(1 for s in states if not s.busy_since),
        "forks": _forks(board),
        "workers_failing_at_start": board.start_failures(),
        "uptime_seconds": round(now - worker.info.started, 3),
        "runs_served": totals.served,
        "runs_failed": totals.failed,
        "control_requests": totals.control,
        "recent_runs": _latency(totals.durations),
        "seconds_since_last_failure": None if totals.last_failure is None
        else round(now - totals.last_failure, 3),
        "preloaded_modules": list(worker.config.preload),
        "compile_cache": {"entries": worker.executor.cache_len(),
                          "capacity": worker.config.compile_cache_size,
                          "scope": "per worker; this is the answering worker's"},
    }


def _forks(board) -> dict:
    """Return how many spares were forked, and what a fork cost the template (ms)."""
    count, durations = board.forks()
    return dict(_latency(durations), total=count)


def _latency(durations: list) -> dict:
    """Return the count, p50 and p99 (milliseconds, nearest rank) of run ``durations``."""
    ordered = sorted(durations)

    def percentile(p):
        if not ordered:
            return None
        return round(ordered[max(0, -(-len(ordered) * p // 100) - 1)] * 1000, 3)

    return {"count": len(ordered), "p50_ms": percentile(50), "p99_ms": percentile(99)}


def _state_name(state) -> str:
    if state.busy_since:
        return "busy"
    return "spare" if state.spare else "connected"
