"""The warm path: pyrust against the floor, side by side, in each pinned placement.

For every placement (same CPU, cross CPU) both servers are started pinned
with taskset, the client pins itself, and every program of the table is
timed on a persistent connection and with a connection per request: pyrust,
then the floor, back to back.  Besides the latency figures, each case
records the server's CPU time per request (from schedstat, with the workers
that exited), which shows how much of a round trip is the server's own work,
and each placement starts with a bare round trip (one byte to an echo
process) that shows its regime.

A persistent connection is one pyrust process answering request after
request, against the floor's one process.  A connection per request is a
fresh pyrust process each time (a spare forked in advance; its replacement is
forked meanwhile), against the forking floor, which forks a fresh process per
connection too (a floor that kept one process would compare a process's
birth and exit with nothing).  Being milliseconds rather than microseconds,
per-connection cases time fewer requests (``connections``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence

from bench import client, servers, stats
from bench.programs import PROGRAMS, Program

#: How a case is timed: client.time_persistent or client.time_per_connection.
Timer = Callable[[str, Program, int, int], client.Run]

MODES = (("persistent", client.time_persistent),
         ("per-connection", client.time_per_connection))
#: The program whose raw samples are kept for the CDF plot.
PLOTTED = "2+3"


def measure_case(server: servers.ServerProcess, timer: Timer, program: Program, count: int,
                 warmup: int) -> tuple[dict, list[int]]:
    """Time one case against ``server``; return ``(figures, samples)``."""
    before = servers.tree_cpu_ns(server.pid)
    run = timer(server.path, program, count, warmup)
    cpu = servers.tree_cpu_ns(server.pid) - before
    figures = stats.summarize(run.samples)
    figures.update(verified=run.verified, wrong=len(run.wrong),
                   wrong_examples=[repr(r) for r in run.wrong[:3]],
                   server_cpu_per_request=cpu / (count + warmup) / 1000)
    return figures, run.samples


def raw_round_trip(placement: servers.Placement, count: int) -> dict:
    """Return figures of a bare round trip in ``placement``: one byte over a socketpair to
    a forked echo process (os.read/os.write, no framing), the regime's own floor."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echo process: never returns into the bench
        try:
            ours.close()
            os.sched_setaffinity(0, placement.server_cpus)
            fd = theirs.fileno()
            while os.write(fd, os.read(fd, 64)):
                pass
        finally:
            os._exit(0)
    theirs.close()
    fd, clock, write, read = ours.fileno(), time.perf_counter_ns, os.write, os.read
    samples = [0] * count
    with servers.client_pinned(placement.client_cpus), ours:
        for i in range(-count // 10, count):  # the first tenth warms up
            start = clock()
            write(fd, b"x")
            read(fd, 64)
            if i >= 0:
                samples[i] = clock() - start
    os.waitpid(pid, 0)
    return stats.summarize(samples)


def run_placement(workdir: str, placement: servers.Placement, programs: Sequence[Program],
                  counts: dict[str, tuple[int, int]], progress: Callable[[str], None],
                  samples: dict[tuple[str, str, str], list[int]]) -> list[dict]:
    """Measure every program and mode in ``placement``; return one row per case.

    ``counts`` maps each mode to its ``(timed, untimed)`` request counts.  Raw
    samples of the PLOTTED program go into ``samples`` keyed by
    ``(placement, mode, server)``.
    """
    tag = placement.name.replace(" ", "-")
    rows: list[dict] = []
    with servers.start_pyrust(servers.private_dir(workdir, "warm-pyrust-" + tag),
                              cpus=placement.server_cpus) as pyrust, \
            servers.start_floor(servers.private_dir(workdir, "warm-floor-" + tag),
                                cpus=placement.server_cpus) as floor, \
            servers.start_floor(servers.private_dir(workdir, "warm-forking-floor-" + tag),
                                cpus=placement.server_cpus, forking=True) as forking, \
            servers.client_pinned(placement.client_cpus):
        peers = {"persistent": floor, "per-connection": forking}
        for program in programs:
            for mode, timer in MODES:
                row = {"placement": placement.name, "program": program.label, "mode": mode,
                       "floor_server": peers[mode].name}
                for key, server in (("pyrust", pyrust), ("floor", peers[mode])):
                    progress("warm path, %s: %s, %s, %s"
                             % (placement.name, server.name, mode, program.label))
                    row[key], raw = measure_case(server, timer, program, *counts[mode])
                    if program.label == PLOTTED:
                        samples[(placement.name, mode, key)] = raw
                row["ratio_p50"] = row["pyrust"]["p50"] / row["floor"]["p50"]
                row["ratio_mean"] = row["pyrust"]["mean"] / row["floor"]["mean"]
                rows.append(row)
    return rows


def run(workdir: str, count: int, warmup: int, connections: int,
        progress: Callable[[str], None], programs: Sequence[Program] = PROGRAMS) -> dict:
    """Run the warm-path section; return its figures, with the raw samples of
    the PLOTTED program under ``"samples"``.

    Persistent cases time ``count`` requests after ``warmup``; per-connection
    cases ``connections`` after a tenth as many.
    """
    found = servers.placements()
    counts = {"persistent": (count, warmup),
              "per-connection": (connections, max(1, connections // 10))}
    rows: list[dict] = []
    samples: dict[tuple[str, str, str], list[int]] = {}
    raw: dict[str, dict] = {}
    for placement in found:
        raw[placement.name] = raw_round_trip(placement, count)
        rows += run_placement(workdir, placement, programs, counts, progress, samples)
    return {"placements": [dict(p._asdict(), describe=p.describe(), raw=raw[p.name])
                           for p in found],
            "pyrust_spares": os.cpu_count() or 1,
            "requests_per_case": count, "warmup_per_case": warmup,
            "connections_per_case": counts["per-connection"][0],
            "connection_warmup_per_case": counts["per-connection"][1],
            "rows": rows, "samples": samples}


def case_count(programs: Sequence[Program] = PROGRAMS) -> int:
    """Return how many timed cases the section runs (for progress)."""
    return len(servers.placements()) * len(programs) * len(MODES) * 2
