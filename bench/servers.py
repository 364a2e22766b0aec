"""Servers under test: pyrust and the floors, started pinned, ready-checked, stopped.

Every server binds its socket in a private (0700) directory of its own and
reports ``READY=1`` to a notify socket the bench binds; the bench waits for
that datagram (or the server's exit, through a pidfd), never sleeps.  pyrust's
status (its spares, its forks) is asked over its own protocol; waiting for
its template to refill its spares is the one wait that polls.
"""

from __future__ import annotations

import _socket
import collections
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOOR = os.path.join(ROOT, "bench", "floor.py")
#: The interpreter behind this one's venv (this one outside a venv).  typeshed does not
#: declare the attribute, which every CPython the bench supports (3.9+) has.
BASE_PYTHON: str = sys._base_executable  # type: ignore[attr-defined]
READY_TIMEOUT = 120.0  # seconds; a heavy preload on a busy machine can be slow
STOP_TIMEOUT = 40.0    # pyrust's graceful_timeout is 30 s
#: Seconds pyrust's template may take to have its spares ready, and the polling step.
SPARES_TIMEOUT = 30.0
SPARES_POLL = 0.005


class Placement(collections.namedtuple("Placement", "name server_cpus client_cpus")):
    """Where the server's process tree and the bench client run (CPU sets)."""

    def describe(self) -> str:
        return "server on CPU %s, client on CPU %s" % (
            ",".join(map(str, self.server_cpus)), ",".join(map(str, self.client_cpus)))


def placements() -> list[Placement]:
    """Return the pinned placements this machine allows: same CPU, and
    different CPUs when the process may use two or more."""
    cpus = sorted(os.sched_getaffinity(0))
    found = [Placement("same CPU", (cpus[0],), (cpus[0],))]
    if len(cpus) > 1:
        found.append(Placement("cross CPU", (cpus[0],), (cpus[1],)))
    return found


@contextlib.contextmanager
def client_pinned(cpus: Sequence[int] | None) -> Iterator[None]:
    """Run the block with this process pinned to ``cpus`` (None: leave it unpinned)."""
    saved = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def private_dir(base: str, name: str) -> str:
    """Create and return ``base/name`` with mode 0700."""
    path = os.path.join(base, name)
    os.mkdir(path, 0o700)
    return path


def server_env(**extra: str) -> dict[str, str]:
    """Return this environment without service-manager and pyrust variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LISTEN_", "NOTIFY_SOCKET", "PYRUST_", "PYTHON"))}
    env.update(extra)
    return env


class ServerProcess:
    """A started server: ``path`` (its socket), ``proc``, and where it logs."""

    def __init__(self, name: str, path: str, proc: subprocess.Popen, log_path: str) -> None:
        self.name = name
        self.path = path
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self) -> int:
        """Stop the server with SIGTERM (SIGKILL if it lingers); return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(name: str, command: list[str], directory: str, cpus: Sequence[int] | None = None,
          env: dict[str, str] | None = None) -> ServerProcess:
    """Start ``command`` (pinned to ``cpus`` with taskset) in ``directory``; return it once ready.

    Its socket is ``directory/server.sock``.  Raise RuntimeError, with the
    server's log, if it exits or stays silent past READY_TIMEOUT.
    """
    path = os.path.join(directory, "server.sock")
    log_path = os.path.join(directory, "server.log")
    if cpus:
        command = ["taskset", "-c", ",".join(map(str, cpus))] + command
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(os.path.join(directory, "notify.sock"))
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=directory,
                env=server_env(NOTIFY_SOCKET=notify.getsockname(), **(env or {})))
        server = ServerProcess(name, path, proc, log_path)
        try:
            _wait_ready(notify, proc)
        except BaseException:
            server.stop()
            raise
    return server


def _wait_ready(notify: socket.socket, proc: subprocess.Popen) -> None:
    """Return when READY=1 arrives on ``notify``; raise RuntimeError if ``proc`` exits first."""
    pidfd = os.pidfd_open(proc.pid)
    waited: list[socket.socket | int] = [notify, pidfd]
    try:
        while True:
            readable, _, _ = select.select(waited, [], [], READY_TIMEOUT)
            if not readable:
                raise RuntimeError("server %d not ready after %g s" % (proc.pid, READY_TIMEOUT))
            if notify in readable and b"READY=1" in notify.recv(4096).split(b"\n"):
                return
            if pidfd in readable:
                raise RuntimeError("server exited with status %s before it was ready"
                                   % proc.wait())
    finally:
        os.close(pidfd)


def pyrust_config(directory: str, workers: int | None = None, preload: Sequence[str] = (),
                  settings: Iterable[tuple[str, object]] = ()) -> str:
    """Write a pyrust configuration in ``directory``; return its path.

    ``workers`` is the number of spares pyrust keeps waiting in ``accept()``
    (None: its default, one per CPU).  ``max_workers`` keeps its default
    (four times as many processes in all, spares and busy ones), so a spare
    that takes a connection is replaced at once.  ``settings``: further
    ``(key, TOML value)`` pairs, which override the log level.
    """
    path = os.path.join(directory, "config.toml")
    values = dict(settings)
    lines = ['log_level = %s' % values.pop("log_level", '"warning"')]
    lines += ["%s = %s" % item for item in values.items()]
    if workers:
        lines.append("workers = %d" % workers)
    if preload:
        lines.append("preload = [%s]" % ", ".join('"%s"' % m for m in preload))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def start_pyrust(directory: str, python: str = sys.executable, workers: int | None = None,
                 preload: Sequence[str] = (), cpus: Sequence[int] | None = None,
                 source_root: str | None = ROOT,
                 settings: Iterable[tuple[str, object]] = ()) -> ServerProcess:
    """Start ``python -m pyrust serve`` with ``workers`` spares (default: pyrust's),
    ``preload`` and further ``settings`` (see pyrust_config).

    With ``source_root``, that checkout's pyrust is put first on PYTHONPATH;
    pass None to run the pyrust installed in ``python``'s environment.
    """
    config = pyrust_config(directory, workers, preload, settings)
    command = [python, "-m", "pyrust", "serve", "--socket",
               os.path.join(directory, "server.sock"), "--config", config]
    env = {"PYTHONPATH": source_root} if source_root else {}
    return start("pyrust", command, directory, cpus, env)


def start_floor(directory: str, python: str = sys.executable, cpus: Sequence[int] | None = None,
                forking: bool = False) -> ServerProcess:
    """Start the floor server (bench/floor.py) in ``directory``; with ``forking``, the
    floor that forks a fresh process for every connection."""
    command = [python, FLOOR] + (["--fork"] if forking else []) + [
        os.path.join(directory, "server.sock")]
    return start("forking floor" if forking else "floor", command, directory, cpus)


def status_on(sock: _socket.socket) -> dict:
    """Return pyrust's status, asked on the open connection ``sock`` (the extended
    protocol's status operation; v1 requests may share the connection).  Raise
    RuntimeError if the server refuses it."""
    from pyrust import ops, protocol  # the bench's own client speaks only v1

    header, payload = protocol.encode_extended([(protocol.OP, ops.STATUS.code)])
    sock.sendall(header + payload)
    code, reply = protocol.read_response(sock)
    if code != protocol.OK:
        raise RuntimeError("status request refused (status %d): %r" % (code, reply[:200]))
    return json.loads(reply)


def ready_spares(sock: _socket.socket, count: int) -> dict:
    """Return pyrust's status, asked on the open connection ``sock`` (so no spare is
    taken), once the template reports ``count`` spares and every one sleeps (in
    ``accept()``: nothing else puts a spare to sleep).

    Polls every SPARES_POLL seconds; raise RuntimeError after SPARES_TIMEOUT.
    """
    import psutil

    def asleep(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_SLEEPING
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + SPARES_TIMEOUT
    while True:
        found = status_on(sock)
        pids = [w["pid"] for w in found["workers"] if w["state"] == "spare"]
        if len(pids) >= count and all(asleep(pid) for pid in pids):
            return found
        if time.monotonic() > deadline:
            raise RuntimeError("the template has %d spares ready, not %d, after %g s"
                               % (len(pids), count, SPARES_TIMEOUT))
        time.sleep(SPARES_POLL)


def settled_status(path: str, count: int) -> dict:
    """Return the status of the service at ``path`` once its template has replaced
    every spare taken so far (``count`` spares wait), this request's own
    connection included."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(READY_TIMEOUT)
        sock.connect(path)
        return ready_spares(sock, count)


def cpu_ns(pid: int) -> int:
    """Return the CPU time (ns) used so far by process ``pid`` alone (0 if it is gone)."""
    total = 0
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/schedstat" % (pid, task)) as f:
                total += int(f.read().split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def tree_cpu_ns(pid: int) -> int:
    """Return the CPU time (ns) used so far by process ``pid`` and its descendants, live
    or gone.

    Live processes are read from ``/proc/PID/task/*/schedstat`` (nanosecond
    resolution); descendants that exited count once their parent reaped them,
    through the children times of every live process of the tree (clock ticks,
    10 ms each), which is how a worker that served one connection and exited
    is counted: pyrust's template, not the service, reaps its workers.  A
    process reaped between the two readings may be missed or counted twice.
    """
    # cutime, cstime: the CPU of the children each one reaped.
    return sum((int(fields[13]) + int(fields[14])) * _TICK_NS + cpu_ns(live)
               for live, fields in _tree_stats(pid))


def _tree_stats(pid: int) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(pid, /proc/PID/stat fields)`` of process ``pid`` and of each live
    descendant (none if ``pid`` is gone; one that ends meanwhile is left out)."""
    import psutil

    try:
        pids = [pid] + [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for live in pids:
        try:
            yield live, _stat_fields(live)
        except (FileNotFoundError, ProcessLookupError):
            continue


_TICK_NS = 10 ** 9 // os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """Return the fields of ``/proc/PID/stat`` after the command name (state first)."""
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()


def template_pid(service: int) -> int:
    """Return the pid of pyrust's template under ``service`` (the process that forks
    the spares): the service's child with the most children, or ``service`` itself."""
    import psutil

    try:
        children = psutil.Process(service).children()
        return max(children, key=lambda p: len(p.children())).pid if children else service
    except psutil.NoSuchProcess:
        return service


def faults(pid: int) -> int:
    """Return the minor page faults so far of process ``pid`` alone (0 if it is gone)."""
    try:
        return int(_stat_fields(pid)[7])
    except (FileNotFoundError, ProcessLookupError):
        return 0


def tree_faults(pid: int) -> int:
    """Return the minor page faults so far of process ``pid`` and its descendants,
    live or reaped (``/proc/PID/stat``; the same caveat as tree_cpu_ns).

    After a fork, parent and child fault on every page either writes (a copy)
    and the child on the file-backed pages it runs (mapped again on demand),
    so the count shows what a fresh process per connection costs.
    """
    # minflt, cminflt (its reaped children's)
    return sum(int(fields[7]) + int(fields[8]) for _, fields in _tree_stats(pid))
