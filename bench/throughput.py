"""Throughput: requests per second at several concurrencies, 1 worker vs the default pool.

Each concurrent client is a forked process that loops connect, send, receive,
close (what a shell script calling ``pyrust -c`` does, without the process
spawn) and checks every reply.  A persistent connection holds its worker for
as long as it stays open, so concurrency beyond the worker count would only
queue connections: that is why each request here opens its own.  All clients
share absolute start and end times on CLOCK_MONOTONIC; only requests that
complete inside the window count.  Servers and clients are left unpinned.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
import traceback

import _socket

from bench import client, servers
from bench.programs import PROGRAMS

LEVELS = (1, 2, 4, 8, 16)
#: Seconds between forking the clients and the start of the counted window.
LEAD_IN = 0.2


def _client_loop(path: str, program, expected: bytes, start: int, end: int) -> tuple:
    """Send requests until ``end`` (monotonic ns); return ``(counted, wrong, CPU seconds)``
    for the requests that completed after ``start``."""
    counted = wrong = 0
    cpu_start = None
    new, clock = _socket.socket, time.monotonic_ns
    family, kind, frame = _socket.AF_UNIX, _socket.SOCK_STREAM, program.frame
    while True:
        sock = new(family, kind)
        sock.connect(path)
        sock.sendall(frame)
        reply = sock.recv(client.RECV_SIZE)
        ok = reply == expected or program.accepts(*client.read_reply(sock, reply))
        sock.close()
        now = clock()
        if now >= end:
            return counted, wrong, time.process_time() - (cpu_start or 0.0)
        if now >= start:
            if cpu_start is None:
                cpu_start = time.process_time()
            counted += 1
            wrong += not ok


def _fork_client(path: str, program, expected: bytes, start: int, end: int) -> "tuple[int, int]":
    """Fork one client process; return ``(pid, fd)`` of the pipe its result comes back on."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        return pid, read_fd
    code = 1
    try:
        os.close(read_fd)
        # A server that stops answering must not hang the bench: SIGALRM's
        # default action ends this client, and the parent reports it.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(int((end - time.monotonic_ns()) / 1e9) + 30)
        result = _client_loop(path, program, expected, start, end)
        os.write(write_fd, ("%d %d %r\n" % result).encode())
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def measure(path: str, pid: int, program, concurrency: int, duration: float) -> dict:
    """Drive the server at ``path`` (process ``pid``) with ``concurrency`` clients for
    ``duration`` seconds; return the figures."""
    expected = client.reference_reply(path, program)
    start = time.monotonic_ns() + int(LEAD_IN * 1e9)
    end = start + int(duration * 1e9)
    children = [_fork_client(path, program, expected, start, end)
                for _ in range(concurrency)]
    time.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9))
    cpu_before = servers.tree_cpu_ns(pid)
    time.sleep(max(0.0, (end - time.monotonic_ns()) / 1e9))
    server_cpu = (servers.tree_cpu_ns(pid) - cpu_before) / 1e9
    counted = wrong = 0
    client_cpu = 0.0
    for pid, fd in children:
        with os.fdopen(fd) as pipe:
            line = pipe.read()
        _, status = os.waitpid(pid, 0)
        if status != 0 or not line:
            raise RuntimeError("a throughput client failed (wait status %d)" % status)
        n, bad, cpu = line.split()
        counted, wrong, client_cpu = counted + int(n), wrong + int(bad), client_cpu + float(cpu)
    return {"concurrency": concurrency, "requests": counted, "wrong": wrong,
            "rps": counted / duration, "server_cpu": server_cpu / duration,
            "client_cpu": client_cpu / duration}


def _median_row(points: list) -> dict:
    """Return one row for repeated measurements of a point: medians, plus the rps range."""
    def median(key):
        return statistics.median(p[key] for p in points)
    return {"concurrency": points[0]["concurrency"], "rps": median("rps"),
            "rps_min": min(p["rps"] for p in points), "rps_max": max(p["rps"] for p in points),
            "server_cpu": median("server_cpu"), "client_cpu": median("client_cpu"),
            "requests": sum(p["requests"] for p in points),
            "wrong": sum(p["wrong"] for p in points),
            "repeats": points}


def configurations() -> list:
    """Return ``[(name, workers, server CPUs, client CPUs)]``: 1 worker and the default
    pool, unpinned, then 1 worker pinned in each of the two wake-up regimes, for reference."""
    pool = os.cpu_count() or 1
    cpus = sorted(os.sched_getaffinity(0))
    found = [("1 worker", 1, None, None)]
    if pool > 1:
        found.append(("%d workers" % pool, pool, None, None))
    found.append(("1 worker, all on CPU %d" % cpus[0], 1, cpus[:1], cpus[:1]))
    if len(cpus) > 1:
        found.append(("1 worker on CPU %d, clients on CPU %d" % (cpus[0], cpus[1]), 1,
                      cpus[:1], cpus[1:2]))
    return found


def run(workdir: str, duration: float, repeats: int, progress, levels=LEVELS,
        program=PROGRAMS[0]) -> dict:
    """Run the throughput section for every configuration; return its figures.

    Where the scheduler puts the processes decides which of the machine's two
    wake-up regimes a run gets, and it tends to keep that placement for a
    server's life, so each repeat starts fresh servers; rows give the median.
    """
    found = configurations()
    points = {(c[0], level): [] for c in found for level in levels}
    for repeat in range(repeats):
        for index, (name, workers, server_cpus, client_cpus) in enumerate(found):
            directory = servers.private_dir(workdir, "throughput-%d-%d" % (index, repeat))
            with servers.start_pyrust(directory, workers=workers, cpus=server_cpus) as server, \
                    servers.client_pinned(client_cpus):
                for level in levels:
                    progress("throughput: repeat %d/%d, %s, concurrency %d"
                             % (repeat + 1, repeats, name, level))
                    points[name, level].append(
                        measure(server.path, server.pid, program, level, duration))
    return {"program": program.label, "duration": duration, "repeats": repeats,
            "default_workers": os.cpu_count() or 1,
            "configurations": [{"name": name, "workers": workers, "server_cpus": server_cpus,
                                "client_cpus": client_cpus,
                                "rows": [_median_row(points[name, level]) for level in levels]}
                               for name, workers, server_cpus, client_cpus in found]}
