"""New connections: the sustained rate of connections that each get a fresh process.

Each concurrent client is a forked process that loops connect, send, receive,
close (what a shell script calling ``pyrust -c`` does, without the process
spawn) and checks every reply.  The clients are a closed loop (each waits for
its reply before it connects again), so the rate they reach is the highest
the server sustains with that many clients.  All clients share absolute start
and end times on CLOCK_MONOTONIC; only requests that complete inside the
window count.

Every connection is served by a process no earlier connection touched.
pyrust's is a spare forked in advance: when it takes the connection the
template forks its replacement at once, so spares are refilled as the
clients go and no fork is on a connection's path unless the spares run out.
The forking floor (``bench/floor.py --fork``) forks on the connection's path.
For pyrust, the template's fork count (from its status) before and after
each point shows that every connection had a process of its own.

Configurations: pyrust with its default spares and the forking floor,
unpinned and in each pinned placement of the warm path (the server's tree
pinned with taskset, the clients with sched_setaffinity), plus pyrust with
one spare, unpinned, for the pool target.
"""

from __future__ import annotations

import _socket
import collections
import os
import signal
import statistics
import time
import traceback
from collections.abc import Callable, Sequence

from bench import client, servers
from bench.programs import PROGRAMS, Program

LEVELS = (1, 2, 4, 8, 16)
#: Seconds between forking the clients and the start of the counted window.
LEAD_IN = 0.2


class Configuration(collections.namedtuple(
        "Configuration", "name placement server spares server_cpus client_cpus")):
    """One server setup: ``server`` is "pyrust" or "forking floor"; ``spares`` is
    pyrust's spare count (None: its default; 0 for the floor)."""


def _client_loop(path: str, program: Program, expected: bytes, start: int,
                 end: int) -> tuple[int, int, float, int]:
    """Send requests until ``end`` (monotonic ns); return ``(counted, wrong, CPU seconds,
    connections)``: the requests that completed after ``start``, the wrong ones
    among them, their CPU time, and every connection made."""
    counted = wrong = made = 0
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
        made += 1
        now = clock()
        if now >= end:
            return counted, wrong, time.process_time() - (cpu_start or 0.0), made
        if now >= start:
            if cpu_start is None:
                cpu_start = time.process_time()
            counted += 1
            wrong += not ok


def _fork_client(path: str, program: Program, expected: bytes, start: int,
                 end: int) -> tuple[int, int]:
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
        os.write(write_fd, ("%d %d %r %d\n" % result).encode())
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def measure(path: str, pid: int, program: Program, concurrency: int, duration: float,
            parent: int | None = None) -> dict:
    """Drive the server at ``path`` (process ``pid``) with ``concurrency`` clients for
    ``duration`` seconds; return the figures.

    ``rps`` counts the requests completed in the window (one per connection);
    ``connections`` every connection made, lead-in and last ones included.
    ``server_cpu`` is the share of a CPU the server's tree used in the window,
    ``parent_cpu`` that of process ``parent`` alone (the process that forks;
    default ``pid``), ``faults`` and ``parent_faults`` the minor page faults per
    second of the tree and of ``parent``.
    """
    parent = pid if parent is None else parent
    expected = client.reference_reply(path, program)
    start = time.monotonic_ns() + int(LEAD_IN * 1e9)
    end = start + int(duration * 1e9)
    children = [_fork_client(path, program, expected, start, end)
                for _ in range(concurrency)]
    time.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9))
    readings = ((servers.tree_cpu_ns, pid), (servers.cpu_ns, parent),
                (servers.tree_faults, pid), (servers.faults, parent))
    before = [read(of) for read, of in readings]
    time.sleep(max(0.0, (end - time.monotonic_ns()) / 1e9))
    server_cpu, parent_cpu, faults, parent_faults = (
        read(of) - b for (read, of), b in zip(readings, before))
    counted = wrong = made = 0
    client_cpu = 0.0
    for child, fd in children:
        with os.fdopen(fd) as pipe:
            line = pipe.read()
        _, status = os.waitpid(child, 0)
        if status != 0 or not line:
            raise RuntimeError("a throughput client failed (wait status %d)" % status)
        n, bad, cpu, total = line.split()
        counted, wrong, made = counted + int(n), wrong + int(bad), made + int(total)
        client_cpu += float(cpu)
    return {"concurrency": concurrency, "requests": counted, "wrong": wrong,
            "connections": made + 1,  # and the reference request's
            "rps": counted / duration, "server_cpu": server_cpu / 1e9 / duration,
            "parent_cpu": parent_cpu / 1e9 / duration, "faults": faults / duration,
            "parent_faults": parent_faults / duration,
            "client_cpu": client_cpu / duration}


def measure_pyrust(server: servers.ServerProcess, spares: int, program: Program,
                   concurrency: int, duration: float) -> dict:
    """Return ``measure``'s figures for a pyrust ``server`` with ``spares``, with
    ``forks``: how many spares its template forked for the connections.

    The count is read before and after, each time once the template has
    replaced every spare taken; the second reading's own connection is
    counted among the connections.
    """
    before = servers.settled_status(server.path, spares)
    figures = measure(server.path, server.pid, program, concurrency, duration,
                      servers.template_pid(server.pid))
    after = servers.settled_status(server.path, spares)
    figures["forks"] = after["forks"]["total"] - before["forks"]["total"]
    figures["connections"] += 1
    figures.update(connection_costs(before, after))
    return figures


#: What pyrust's status says a fresh process cost, per fork (the template's side)
#: or per reaped worker: (key of the figures, key of the costs, per, scale).
COSTS = (("template_cpu_us", "template_cpu", "forks", 1e6),
         ("template_faults", "template_faults", "forks", 1),
         ("start_cpu_us", "start_cpu", "workers_ended", 1e6),
         ("start_faults", "start_faults", "workers_ended", 1),
         ("worker_cpu_us", "worker_cpu", "workers_ended", 1e6),
         ("worker_faults", "worker_faults", "workers_ended", 1))


def connection_costs(before: dict, after: dict) -> dict:
    """Return what one connection cost pyrust between two statuses, from its default
    template's ``costs``: the template per fork, a worker (fork to exit) and its
    start-up (fork to accept()) per worker reaped.  Empty if none was reaped, or
    if the server does not report its costs (one older than this bench)."""
    def costs(status: dict) -> dict:
        return next((t.get("costs", {}) for t in status["templates"] if t["default"]), {})
    old, new = costs(before), costs(after)
    delta = {key: new[key] - old[key] for key in new if key in old}
    if not delta.get("forks") or not delta.get("workers_ended"):
        return {}
    return {name: delta[key] / delta[per] * scale for name, key, per, scale in COSTS}


def _median_row(points: list[dict]) -> dict:
    """Return one row for repeated measurements of a point: medians, plus the rps range."""
    def median(key: str) -> float:
        return statistics.median(p[key] for p in points)
    row = {"concurrency": points[0]["concurrency"], "rps": median("rps"),
           "rps_min": min(p["rps"] for p in points), "rps_max": max(p["rps"] for p in points),
           "server_cpu": median("server_cpu"), "parent_cpu": median("parent_cpu"),
           "faults": median("faults"), "parent_faults": median("parent_faults"),
           "client_cpu": median("client_cpu"),
           "requests": sum(p["requests"] for p in points),
           "wrong": sum(p["wrong"] for p in points),
           "connections": sum(p["connections"] for p in points),
           "repeats": points}
    if "forks" in points[0]:
        row["forks"] = sum(p["forks"] for p in points)
        row["forks_per_connection"] = row["forks"] / row["connections"]
    for name, _, _, _ in COSTS:
        if all(name in p for p in points):
            row[name] = median(name)
    return row


def configurations() -> list[Configuration]:
    """Return the Configurations: pyrust and the forking floor unpinned and in each
    pinned placement, then pyrust with one spare, unpinned."""
    found = []
    for name, server_cpus, client_cpus in [("unpinned", None, None)] + [
            (p.name, p.server_cpus, p.client_cpus) for p in servers.placements()]:
        found.append(Configuration("pyrust, " + name, name, "pyrust", None,
                                   server_cpus, client_cpus))
        found.append(Configuration("forking floor, " + name, name, "forking floor", 0,
                                   server_cpus, client_cpus))
    if (os.cpu_count() or 1) > 1:
        found.append(Configuration("pyrust, 1 spare, unpinned", "unpinned", "pyrust", 1,
                                   None, None))
    return found


def _start(directory: str, config: Configuration) -> servers.ServerProcess:
    if config.server == "pyrust":
        return servers.start_pyrust(directory, workers=config.spares, cpus=config.server_cpus)
    return servers.start_floor(directory, cpus=config.server_cpus, forking=True)


def run(workdir: str, duration: float, repeats: int, progress: Callable[[str], None],
        levels: Sequence[int] = LEVELS, program: Program = PROGRAMS[0]) -> dict:
    """Run the section for every configuration; return its figures.

    Where the scheduler puts the processes decides which of the machine's two
    wake-up regimes an unpinned run gets, so each repeat starts fresh
    servers; rows give the median.
    """
    found = configurations()
    default = os.cpu_count() or 1  # pyrust's default spares
    points: dict[tuple[str, int], list[dict]] = {(c.name, level): []
                                                 for c in found for level in levels}
    for repeat in range(repeats):
        for index, config in enumerate(found):
            directory = servers.private_dir(workdir, "connections-%d-%d" % (index, repeat))
            with _start(directory, config) as server, servers.client_pinned(config.client_cpus):
                for level in levels:
                    progress("new connections: repeat %d/%d, %s, %d clients"
                             % (repeat + 1, repeats, config.name, level))
                    if config.server == "pyrust":
                        point = measure_pyrust(server, config.spares or default, program,
                                               level, duration)
                    else:
                        point = measure(server.path, server.pid, program, level, duration)
                    points[config.name, level].append(point)
    return {"program": program.label, "duration": duration, "repeats": repeats,
            "levels": list(levels), "default_spares": os.cpu_count() or 1,
            "configurations": [dict(config._asdict(),
                                    rows=[_median_row(points[config.name, level])
                                          for level in levels])
                               for config in found]}
