"""Where a warm request's time goes: pyrust's request handling against the floor's, in-process.

pyrust's own worker code (and the floor's) is called in this process on one
end of a socketpair while the other end plays the client, so no scheduler
or wake-up cost is in the figures: what is left is the Python work.  Two
paths are timed: one request on an open connection (``handle_request``: a
session's next request, in a process that has served it before), and what
a worker does with the one connection it serves, with an empty compile
cache as in a fresh process (pyrust: mark its slot taken, hand the
supervisor a copy of the connection, check the peer's credentials, then
``serve_connection``: socket options, the request, the end-of-file; the
floor: ``serve_connection`` with a new cache).  The socketpair stands in for
``accept``; what a fresh process pays besides (its birth, copy-on-write
faults on the pages it shares with the template, its exit) cannot be
measured in one process and is in the warm path's and the new-connection
figures.  ``profile`` adds a cProfile of pyrust's per-request path (cProfile
slows small Python functions down: read shares, not absolutes).
"""

from __future__ import annotations

import cProfile
import os
import pstats
import signal
import socket
import time
import types
from collections.abc import Callable, Sequence

from bench import floor
from bench.programs import PROGRAMS, Program


class _Pyrust:
    """A pyrust worker driven by hand, with its SIGTERM handler installed as in a worker
    (so the handler's "did the program take SIGTERM over?" check passes)."""

    def __init__(self) -> None:
        from pyrust.config import Config
        from pyrust.server.scoreboard import Scoreboard
        from pyrust.server.worker import TOOK, ServiceInfo, Worker

        board = Scoreboard(4)
        self._channel, channel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._channel.setblocking(False)  # recv_fds ignores its flags before Python 3.12
        self.worker = Worker(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), Config(),
                             board.attach(board.claim(), os.getpid()), channel,
                             ServiceInfo("bench", "-", time.time(), board), os.getppid())
        self.request = self.worker.handle_request
        self._took = TOOK.pack(b"A", os.getpid())
        self._previous = [signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGALRM)]
        signal.signal(signal.SIGTERM, self.worker._on_stop)
        self.worker.executor.install_signals()  # the time limit is armed, as in a worker
        # As a worker that took its connection: pyrust's modules out of sys.modules
        # for good (put back in close(), since the bench goes on).
        self.worker.executor.settle()

    def connection(self, conn: socket.socket) -> None:
        """Do what Worker.run does with its connection, but accept it."""
        worker = self.worker
        worker.slot.connected()
        worker._tell(self._took, conn.fileno())
        if worker.admit(conn):
            worker.serve_connection(conn)
        worker.conn = None

    def fresh(self) -> None:
        """Make the next connection find what a fresh spare has: an empty compile
        cache; and take what the last one told the supervisor."""
        self.worker.executor.clear_cache()
        try:
            while True:
                _, fds, _, _ = socket.recv_fds(self._channel, 64, 1)
                for fd in fds:
                    os.close(fd)
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.worker.executor.unsettle()
        for sig, previous in zip((signal.SIGTERM, signal.SIGALRM), self._previous):
            signal.signal(sig, previous)
        self.worker.listener.close()
        self._channel.close()
        self.worker.channel.close()


class _Floor:
    """The floor server's code driven by hand."""

    def __init__(self) -> None:
        cache: dict[str, tuple[types.CodeType, types.CodeType | None]] = {}
        self.request = lambda conn: _floor_request(conn, cache)
        # The forking floor's child: a new process, an empty cache.
        self.connection = lambda conn: floor.serve_connection(conn, {})

    def fresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def _floor_request(conn: socket.socket,
                   cache: dict[str, tuple[types.CodeType, types.CodeType | None]]) -> None:
    """Answer one request on ``conn`` as floor.serve_connection does.  Raise
    ConnectionError if the connection closes first."""
    header = floor.recv_exact(conn, floor.HEADER.size)
    code = header and floor.recv_exact(conn, floor.HEADER.unpack(header)[0])
    if code is None:
        raise ConnectionError("the connection closed before a whole request")
    status, output = floor.run(code.decode("utf-8"), cache)
    conn.sendall(floor.REPLY.pack(status, len(output)) + output)


def _requests(handle: Callable[[socket.socket], object], frame: bytes, count: int) -> float:
    """Run ``count`` requests through ``handle`` on one connection; return ns per request."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        start = time.perf_counter_ns()
        for _ in range(count):
            ours.sendall(frame)
            handle(theirs)
            ours.recv(65536)
        return (time.perf_counter_ns() - start) / count


def _connections(server: _Pyrust | _Floor, frame: bytes, count: int) -> float:
    """Serve ``count`` one-request connections with ``server``; return ns per connection,
    counting only the server's code (the client's side and ``fresh`` are untimed)."""
    pair, shut, clock = socket.socketpair, socket.SHUT_WR, time.perf_counter_ns
    serve, fresh = server.connection, server.fresh
    total = 0
    for _ in range(count):
        ours, theirs = pair()
        ours.sendall(frame)
        ours.shutdown(shut)
        fresh()
        start = clock()
        serve(theirs)
        total += clock() - start
        theirs.close()
        ours.recv(65536)
        ours.close()
    return total / count


def compare(count: int, programs: Sequence[Program] = PROGRAMS[:1] + PROGRAMS[8:10],
            ) -> list[dict]:
    """Return, per program and path, the µs of pyrust's and the floor's code."""
    rows = []
    for program in programs:
        for path, timer in (("persistent", lambda s, *a: _requests(s.request, *a)),
                            ("per-connection", _connections)):
            row: dict = {"program": program.label, "mode": path}
            for name, server_class in (("pyrust", _Pyrust), ("floor", _Floor)):
                server = server_class()
                try:
                    timer(server, program.frame, max(1, count // 10))  # warm up
                    row[name] = timer(server, program.frame, count) / 1000
                finally:
                    server.close()
            rows.append(row)
    return rows


def profile(count: int, top: int = 15, program: Program = PROGRAMS[0]) -> list[dict]:
    """Return the ``top`` functions by own time in pyrust's per-request path, µs per request."""
    server = _Pyrust()
    profiler = cProfile.Profile()
    try:
        _requests(server.request, program.frame, max(1, count // 10))
        profiler.enable()
        _requests(server.request, program.frame, count)
        profiler.disable()
    finally:
        server.close()
    rows = [{"function": "%s:%d(%s)" % (_short(f), line, name), "calls": calls / count,
             "own": tottime / count * 1e6, "cumulative": cumtime / count * 1e6}
            for (f, line, name), (_, calls, tottime, cumtime, _)
            in _stats_table(profiler).items() if "bench/" not in f]
    rows.sort(key=lambda r: r["own"], reverse=True)
    return rows[:top]


def _stats_table(profiler: cProfile.Profile) -> dict:
    """Return pstats' table of ``profiler``'s functions: ``{(file, line, name): (primitive
    calls, calls, own s, cumulative s, callers)}``."""
    # Stats.stats is how pstats' own printing reads it; typeshed does not declare it.
    return pstats.Stats(profiler).stats  # type: ignore[attr-defined]


def _short(filename: str) -> str:
    """Return ``filename`` from its ``pyrust/`` part on, else its base name."""
    if "pyrust/" in filename:
        return filename[filename.rindex("pyrust/"):]
    return filename.rsplit("/", 1)[-1]


def run(count: int, progress: Callable[[str], None]) -> dict:
    """Run the hot-path section; return the comparison and the profile."""
    progress("hot path: pyrust's and the floor's request handling in-process")
    return {"requests": count, "handlers": compare(count), "profile": profile(count)}


def loop(server_name: str, label: str, count: int, warmup: int = 300) -> None:
    """Serve ``warmup`` then ``count`` requests of the program ``label`` in-process
    with ``server_name``'s code ("pyrust" or "floor"): a fixed workload for an
    instruction counter (see main)."""
    program = next(p for p in PROGRAMS if p.label == label)
    server = _Pyrust() if server_name == "pyrust" else _Floor()
    try:
        _requests(server.request, program.frame, warmup)
        _requests(server.request, program.frame, count)
    finally:
        server.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bench.hotpath [--floor] [--program LABEL] COUNT``: run ``loop``.

    Under ``valgrind --tool=callgrind`` the instructions of one request are
    the difference of two counts' totals divided by the difference of the
    counts; unlike a clock, that is the same on a busy or an idle machine.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=main.__doc__)
    parser.add_argument("--floor", action="store_true", help="the floor's code, not pyrust's")
    parser.add_argument("--program", default=PROGRAMS[0].label, metavar="LABEL",
                        choices=[p.label for p in PROGRAMS])
    parser.add_argument("count", type=int)
    args = parser.parse_args(argv)
    loop("floor" if args.floor else "pyrust", args.program, args.count)


if __name__ == "__main__":
    main()
