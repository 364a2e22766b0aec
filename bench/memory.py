"""Memory and forks: the template's and a spare's footprint, what a fork costs, and growth.

A worker serves one connection and exits; the template (pyrust's supervisor,
which has imported the preloads) forks a new spare as soon as one takes a
connection.  So a leak would show as the template growing, as spares forked
late being bigger than spares forked early (each is a copy of the template as
it is at that moment), or as one session growing (the requests of one
connection share its process).

The section holds one session (a persistent connection) open throughout and
drives two kinds of load: new connections, each carrying one program of the
table in turn (each takes a spare, so the template forks another), and
requests on the session, cycling through the table.  Every reply is checked.
Snapshots: idle after start, after a warm-up (the first 1% of both loads:
first use fills caches), and after all of it; growth between the last two
would be a leak.  Before each snapshot the bench asks for the status on the
session (which takes no spare) until the template reports its spares and they
sleep (in ``accept()``); it then reads RSS, USS and PSS (psutil's
``memory_full_info``) of the template, of every spare and of the session's
worker.  RSS counts every resident page, including those a spare shares
with the template; USS counts only its private pages; PSS splits shared
pages between their users.

After the load, the template's status gives the cost of a fork (the parent's
side of ``os.fork()``, as the supervisor times it, over its last forks), and
the template's CPU time per new connection (schedstat) adds what else it
does for one: the hand-over of the connection, the reaping.  With numpy
installed, everything runs again with numpy preloaded.
"""

from __future__ import annotations

import _socket
import importlib.util
import os
import statistics
from collections.abc import Callable

import psutil

from bench import client, servers
from bench.programs import PROGRAMS, Program

MIB = 1024 * 1024
WHO = Program("import os; os.getpid()", 0, "")  # output checked by the caller
KINDS = ("rss", "uss", "pss")


def footprint(pid: int) -> dict:
    """Return RSS, USS and PSS of process ``pid`` in MiB."""
    info = psutil.Process(pid).memory_full_info()
    return {"rss": info.rss / MIB, "uss": info.uss / MIB, "pss": info.pss / MIB}


def _mean(footprints: list) -> dict:
    return {k: statistics.fmean(f[k] for f in footprints) for k in KINDS}


def snapshot(template: int, session: _socket.socket, session_pid: int, spares: int) -> dict:
    """Return the footprints of the template, of each spare (by pid) and of the session."""
    pids = sorted(w["pid"] for w in servers.ready_spares(session, spares)["workers"]
                  if w["state"] == "spare")
    found = {str(pid): footprint(pid) for pid in pids}
    return {"template": footprint(template), "spares": found,
            "spare_mean": _mean(list(found.values())), "session": footprint(session_pid)}


def _session_requests(sock: _socket.socket, expected: list[bytes], first: int, count: int) -> int:
    """Send requests ``first`` to ``first + count`` on ``sock``, cycling through the
    program table; return how many replies were wrong."""
    frames = [p.frame for p in PROGRAMS]
    wrong = 0
    for i in range(first, first + count):
        k = i % len(frames)
        sock.sendall(frames[k])
        reply = sock.recv(client.RECV_SIZE)
        if reply != expected[k]:
            wrong += not PROGRAMS[k].accepts(*client.read_reply(sock, reply))
    return wrong


def _connections(path: str, expected: list[bytes], first: int, count: int) -> int:
    """Make connections ``first`` to ``first + count``, each carrying one program of
    the table in turn; return how many replies were wrong."""
    wrong = 0
    for i in range(first, first + count):
        k = i % len(PROGRAMS)
        sock = client.connect(path)
        try:
            sock.sendall(PROGRAMS[k].frame)
            reply = sock.recv(client.RECV_SIZE)
            if reply != expected[k]:
                wrong += not PROGRAMS[k].accepts(*client.read_reply(sock, reply))
        finally:
            sock.close()
    return wrong


def _growth(before: dict, after: dict) -> dict:
    return {name: {k: after[key][k] - before[key][k] for k in KINDS}
            for name, key in (("template", "template"), ("spare", "spare_mean"),
                              ("session", "session"))}


def measure(directory: str, preload: tuple[str, ...], connections: int, requests: int,
            spares: int) -> dict:
    """Run one case (a fresh server with ``preload``); return its figures."""
    warm_conns, warm_reqs = max(1, connections // 100), max(1, requests // 100)
    with servers.start_pyrust(directory, workers=spares, preload=preload) as server:
        expected = [client.reference_reply(server.path, p) for p in PROGRAMS]
        session = client.connect(server.path)
        session.settimeout(servers.SPARES_TIMEOUT)  # no request here may block for long
        try:
            session.sendall(WHO.frame)
            session_pid = int(client.read_reply(session, b"")[1])
            found = {"idle": snapshot(server.pid, session, session_pid, spares)}
            cpu = servers.cpu_ns(server.pid)
            with client.watchdog(requests + connections * 100):
                wrong = _connections(server.path, expected, 0, warm_conns)
                wrong += _session_requests(session, expected, 0, warm_reqs)
                found["warm"] = snapshot(server.pid, session, session_pid, spares)
                wrong += _connections(server.path, expected, warm_conns,
                                      connections - warm_conns)
                wrong += _session_requests(session, expected, warm_reqs, requests - warm_reqs)
            cpu = servers.cpu_ns(server.pid) - cpu
            found["after"] = snapshot(server.pid, session, session_pid, spares)
            forks = servers.status_on(session)["forks"]
        finally:
            session.close()
    return {"name": "preload " + ", ".join(preload) if preload else "no preload",
            "preload": list(preload), "session_pid": session_pid, **found,
            "growth": _growth(found["warm"], found["after"]), "forks": forks,
            "template_cpu_per_connection": cpu / connections / 1000,
            "requests": requests + connections, "verified": requests + connections - wrong,
            "wrong": wrong}


def run(workdir: str, connections: int, requests: int, progress: Callable[[str], None],
        spares: int | None = None) -> dict:
    """Run the section with pyrust's default spares, without a preload and (if numpy
    is installed) with numpy preloaded; return its figures.

    ``connections`` new connections and ``requests`` requests on the session
    per case; the snapshots' status requests are not counted.
    """
    spares = spares or os.cpu_count() or 1
    cases: list[tuple[str, ...]] = [()]
    if importlib.util.find_spec("numpy") is not None:
        cases.append(("numpy",))
    results = []
    for preload in cases:
        name = "numpy preloaded" if preload else "no preload"
        progress("memory and forks, %s: %d new connections, %d requests on one session"
                 % (name, connections, requests))
        directory = servers.private_dir(workdir, "memory-" + ("-".join(preload) or "none"))
        results.append(measure(directory, preload, connections, requests, spares))
    out = {"spares": spares, "connections": connections, "session_requests": requests,
           "warm_connections": max(1, connections // 100),
           "warm_session_requests": max(1, requests // 100),
           "requests": sum(c["requests"] for c in results),
           "verified": sum(c["verified"] for c in results),
           "wrong": sum(c["wrong"] for c in results), "cases": results}
    if len(cases) == 1:
        out["numpy"] = "skipped: numpy is not installed (.venv/bin/pip install -e '.[bench]')"
    return out
