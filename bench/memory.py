"""Memory: the supervisor's and each worker's footprint, idle and after many requests.

RSS counts every resident page, including those a worker shares with the
supervisor after fork; USS counts only the pages private to the process and
PSS splits shared pages between their users, so the sum of PSS is the pool's
real cost.  The requests cycle through the program table on one persistent
connection per worker (each connection first asks for ``os.getpid()``, to
know which worker holds it), and every reply is checked.
"""

from __future__ import annotations

import os

import psutil

from bench import client, servers
from bench.programs import PROGRAMS, Program

MIB = 1024 * 1024
WHO = Program("import os; os.getpid()", 0, "")  # output checked by the caller


def footprint(pid: int) -> dict:
    """Return RSS, USS and PSS of process ``pid`` in MiB."""
    info = psutil.Process(pid).memory_full_info()
    return {"rss": info.rss / MIB, "uss": info.uss / MIB, "pss": info.pss / MIB}


def snapshot(supervisor: int) -> dict:
    """Return the footprint of the supervisor and of each of its workers (by pid)."""
    workers = sorted(p.pid for p in psutil.Process(supervisor).children())
    return {"supervisor": footprint(supervisor),
            "workers": {str(pid): footprint(pid) for pid in workers}}


def _open_connections(path: str, count: int) -> dict:
    """Open ``count`` persistent connections; return ``{worker pid: socket}``."""
    held = {}
    for _ in range(count):
        sock = client.connect(path)
        sock.sendall(WHO.frame)
        status, output = client.read_reply(sock, b"")
        held[int(output)] = sock
    if len(held) != count:
        raise RuntimeError("expected %d workers to hold the connections, got %s" % (count, held))
    return held


def _send(socks: list, expected: list, first: int, count: int) -> int:
    """Send requests ``first`` to ``first + count`` round-robin over ``socks``, cycling
    through the program table; return how many replies were wrong."""
    frames = [p.frame for p in PROGRAMS]
    wrong = 0
    for i in range(first, first + count):
        sock, k = socks[i % len(socks)], i % len(frames)
        sock.sendall(frames[k])
        reply = sock.recv(client.RECV_SIZE)
        if reply != expected[k]:
            wrong += not PROGRAMS[k].accepts(*client.read_reply(sock, reply))
    return wrong


def drive(path: str, workers: int, requests: int, warm: int, on_warm) -> dict:
    """Send ``requests`` requests spread over the workers, calling ``on_warm()`` after
    the first ``warm`` of them; return ``{"verified", "wrong", "per_worker"}``."""
    expected = [client.reference_reply(path, p) for p in PROGRAMS]
    socks = list(_open_connections(path, workers).values())
    try:
        with client.watchdog(requests):
            wrong = _send(socks, expected, 0, warm)
            on_warm()
            wrong += _send(socks, expected, warm, requests - warm)
    finally:
        for sock in socks:
            sock.close()
    return {"verified": requests - wrong, "wrong": wrong, "per_worker": requests // len(socks)}


def run(workdir: str, requests: int, progress) -> dict:
    """Run the memory section on a default-size pool; return its figures.

    Snapshots: idle after start, after a warm-up of 1% of the requests (first
    use fills caches and imports modules), and after all of them; growth
    between the last two would be a leak.
    """
    workers = os.cpu_count() or 1
    warm = max(1, requests // 100)
    with servers.start_pyrust(servers.private_dir(workdir, "memory"), workers=workers) as server:
        found = {"idle": snapshot(server.pid)}
        progress("memory: %d requests over %d workers" % (requests, workers))
        traffic = drive(server.path, workers, requests, warm,
                        lambda: found.update(warm=snapshot(server.pid)))
        found["after"] = snapshot(server.pid)
    return {"workers": workers, "requests": requests, "warm_requests": warm, **found, **traffic}
