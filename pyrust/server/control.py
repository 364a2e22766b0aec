"""The service's ops (pyrust/ops.py): status, stop, reload, clear-cache, version
and ensure, one handler each (``op_<name>``).

Whichever worker accepted the connection forwards the request to the service
(``Worker._control``); the service answers from every template's scoreboard,
which it maps too.  Stop and reload take the same orderly path as
``systemctl stop`` and ``systemctl reload``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Optional, Tuple

from pyrust import __version__, ops, protocol
from pyrust.environment import Environment
from pyrust.request import Request, decode_extended
from pyrust.server import osutil
from pyrust.server.templates import answer, interpreter

if TYPE_CHECKING:
    from pyrust.server.scoreboard import Scoreboard, WorkerState
    from pyrust.server.service import Service
    from pyrust.server.templates import Template

#: A handler's answer: (status, payload) to send now, or None if it answers later.
Answer = Optional[Tuple[int, bytes]]


def handle(service: Service, payload: bytes, reply: socket.socket) -> None:
    """Carry out the service op a worker forwarded as ``payload`` (its request's
    fields) for ``service``, and answer on ``reply``: at once, or (op ensure)
    once the environment's template serves."""
    try:
        request = decode_extended(payload, (), 0.0)
        if request.op.by != ops.SERVICE:
            raise protocol.ProtocolError("op %s is not the service's" % request.op.name, False)
        answered = HANDLERS[request.op](service, request, reply)
    except protocol.ProtocolError as exc:
        answered = protocol.BAD_REQUEST, str(exc).encode()
    if answered is not None:
        answer(reply, *answered)


def op_status(service: Service, request: Request, reply: socket.socket) -> Answer:
    return protocol.OK, json.dumps(status(service), indent=2).encode() + b"\n"


def op_version(service: Service, request: Request, reply: socket.socket) -> Answer:
    return protocol.OK, ("pyrust %s (Python %s)\n" % (
        __version__, sys.version.split()[0])).encode()


def op_clear_cache(service: Service, request: Request, reply: socket.socket) -> Answer:
    for _, board in _running(service):
        board.bump_cache_epoch()
    return protocol.OK, b"compile caches cleared\n"


def op_stop(service: Service, request: Request, reply: socket.socket) -> Answer:
    service.stopping = True
    return protocol.OK, b"stopping\n"


def op_reload(service: Service, request: Request, reply: socket.socket) -> Answer:
    service.reload_asked = True
    return protocol.OK, b"reloading\n"


def op_ensure(service: Service, request: Request, reply: socket.socket) -> Answer:
    """Answer later, once the template of the environment the request names serves."""
    env = request.env
    assert env is not None  # decode_extended gives op ensure its environment
    service.ensure(Environment(interpreter(env.python), env.preload, env.root, env.startup),
                   reply)
    return None


#: The handler of each service op: ``op_<name>`` above (see pyrust/ops.py).
HANDLERS = {op: globals()[op.handler_name] for op in ops.OPS if op.by == ops.SERVICE}


def _running(service: Service) -> "list[tuple[Template, Scoreboard]]":
    """Return every template that has its scoreboard, with it."""
    return [(t, t.board) for t in service.templates.values() if t.board is not None]


def _merged(boards: "list[Scoreboard]") -> dict:
    """Return the totals, durations and forks of every template's scoreboard together."""
    served = failed = control = forks = 0
    last_failure: "float | None" = None
    durations: "list[float]" = []
    fork_times: "list[float]" = []
    for board in boards:
        totals = board.totals()
        served, failed, control = (served + totals.served, failed + totals.failed,
                                   control + totals.control)
        if totals.last_failure is not None:
            last_failure = max(last_failure or 0.0, totals.last_failure)
        durations += totals.durations
        count, times = board.forks()
        forks += count
        fork_times += times
    return {"served": served, "failed": failed, "control": control, "forks": forks,
            "last_failure": last_failure, "durations": durations, "fork_times": fork_times,
            "start_failures": sum(board.start_failures() for board in boards)}


def status(service: Service) -> dict:
    """Return the service's status as a JSON-ready dict."""
    running = _running(service)
    states = [(t, s) for t, board in running for s in board.live_states()]
    merged = _merged([board for _, board in running])
    now = time.time()
    default = service.default
    return {
        "version": __version__,
        "python": default.info.get("version") if default else None,
        "socket": {"path": service.listener.path, "obtained_from": service.listener.source},
        "supervisor": {"pid": os.getpid(), "rss": osutil.rss(os.getpid())},
        "templates": [_template(t, board, time.monotonic()) for t, board in running],
        "workers": [{"pid": s.pid, "state": _state_name(s), "served": s.served,
                     "failed": s.failed, "control": s.control, "rss": osutil.rss(s.pid),
                     "template": t.pid} for t, s in states],
        "spares": sum(1 for _, s in states if s.spare),
        "workers_busy": sum(1 for _, s in states if s.busy_since),
        "workers_idle": sum(1 for _, s in states if not s.busy_since),
        "forks": dict(_latency(merged["fork_times"]), total=merged["forks"]),
        "workers_failing_at_start": merged["start_failures"],
        "uptime_seconds": round(now - service.started_wall, 3),
        "runs_served": merged["served"],
        "runs_failed": merged["failed"],
        "control_requests": merged["control"],
        "recent_runs": _latency(merged["durations"]),
        "seconds_since_last_failure": None if merged["last_failure"] is None
        else round(now - merged["last_failure"], 3),
        "preloaded_modules": list(default.env.preload) if default else [],
        "compile_cache": {"capacity": service.config.compile_cache_size,
                          "scope": "per worker, which serves one connection"},
        "max_templates": service.config.max_templates,
        "template_idle_exit": service.config.template_idle_exit,
    }


def _template(template: Template, board: Scoreboard, now: float) -> dict:
    """Return one template's part of the status."""
    states = board.live_states()
    totals = board.totals(recent=0)
    rss = [osutil.rss(pid) for pid in [template.pid] + [s.pid for s in states]]
    return {
        "default": template.default,
        "state": template.state,
        "pid": template.pid,
        "python": template.env.python,
        "version": template.info.get("version"),
        "venv": template.info.get("venv"),
        "project": template.env.root or None,
        "preload": list(template.env.preload),
        "startup": list(template.env.startup),
        "socket": template.path,
        "spares": sum(1 for s in states if s.spare),
        "workers_busy": sum(1 for s in states if s.busy_since),
        "runs_served": totals.served,
        "runs_failed": totals.failed,
        "rss": sum(r for r in rss if r is not None),
        "age_seconds": round(now - template.started, 3),
        "idle_seconds": round(template.idle_for(now), 3),
        "costs": board.costs(),
    }


def status_line(service: Service) -> str:
    """Return the one-line status shown by ``systemctl status``."""
    boards = [board for _, board in _running(service)]
    states = [s for board in boards for s in board.live_states()]
    merged = _merged(boards)
    spares = sum(1 for s in states if s.spare)
    line = ("%d environment%s, %d spares, %d busy, %d runs served, %d failed, up %ds"
            % (len(boards), "" if len(boards) == 1 else "s", spares,
               len(states) - spares, merged["served"], merged["failed"],
               time.monotonic() - service.started))
    failing = merged["start_failures"]
    if failing:
        line += "; workers fail at start (%d in a row, see the log)" % failing
    return line


def _latency(durations: "list[float]") -> dict:
    """Return the count, p50 and p99 (milliseconds, nearest rank) of run ``durations``."""
    ordered = sorted(durations)

    def percentile(p: int) -> "float | None":
        if not ordered:
            return None
        return round(ordered[max(0, -(-len(ordered) * p // 100) - 1)] * 1000, 3)

    return {"count": len(ordered), "p50_ms": percentile(50), "p99_ms": percentile(99)}


def _state_name(state: WorkerState) -> str:
    if state.busy_since:
        return "busy"
    return "spare" if state.spare else "connected"
