"""The connections the supervisor holds for its workers: it is the terminal of every run.

A worker that takes a connection hands the supervisor a copy of it (with
``SCM_RIGHTS`` on a datagram channel), which also says "fork a new spare".
When the worker starts a run on the client's own fds it closes its own copy
and says so; from then on the supervisor plays the part a terminal plays for
``python``: a byte from the client (Ctrl-C) becomes SIGINT for the run's
process group, the client going away becomes SIGHUP, and when the process
ends the supervisor sends the client its exit status (or the signal that
killed it): as soon as the worker announces a plain exit (its fds closed,
about to exit), otherwise when it reaps the worker.  A worker that dies in
the middle of any other request gets its client a reply saying how it died.
So no exit, however abrupt (``os._exit``, a segfault, the OOM killer, a
program that closed every fd), goes unreported.
"""

from __future__ import annotations

import logging
import os
import signal
import socket

from pyrust import protocol
from pyrust.server.scoreboard import CAPTURED, TERMINAL, V1
from pyrust.server.worker import TERMINAL_RUN, TOOK

# For mypy only, which takes any name TYPE_CHECKING as true (python never runs
# this block).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyrust.server.scoreboard import WorkerState

log = logging.getLogger("pyrust.supervisor")

_MESSAGE_SIZE = max(TOOK.size, TERMINAL_RUN.size)
#: Exit code a run stopped by its time limit reports (as timeout(1) does).
EXIT_TIMEOUT = 124


class Run:
    """A run on a client's terminal, as its worker announced it."""

    __slots__ = ("conn", "client_pid", "size", "form")

    def __init__(self, conn: socket.socket, client_pid: int, size: int, form: str) -> None:
        self.conn, self.client_pid, self.size, self.form = conn, client_pid, size, form


class Terminals:
    """Held connections by worker pid, and the channel the workers announce them on."""

    def __init__(self) -> None:
        self.channel, self.worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.channel.setblocking(False)
        self.held: dict = {}     # worker pid -> its connection (our copy)
        self.running: dict = {}  # worker pid -> Run, while the client is still there
        self.answered: dict = {}  # worker pid -> Run answered before its worker was reaped

    def watched(self) -> list:
        """Return what the supervisor's loop waits on for us: the channel, and the
        connections of runs whose client may still press Ctrl-C or go away."""
        return [self.channel] + [run.conn for run in self.running.values()]

    def in_child(self) -> None:
        """In a newly forked worker: close every copy that is not the worker's business."""
        self.channel.close()
        for conn in self.held.values():
            conn.close()
        self.held.clear()
        self.running.clear()
        self.answered.clear()

    def receive(self) -> None:
        """Take every message waiting on the channel (the loop that called this
        then forks the spares that are missing)."""
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.channel, _MESSAGE_SIZE, 1)
            except BlockingIOError:
                return
            if data[:1] == b"A" and len(data) == TOOK.size and fds:
                _, pid = TOOK.unpack(data)
                self.held[pid] = socket.socket(fileno=fds[0])
                continue
            for fd in fds:  # nothing else carries an fd
                os.close(fd)
            if data[:1] == b"T" and len(data) == TERMINAL_RUN.size:
                _, pid, client_pid, size, form = TERMINAL_RUN.unpack(data)
                if pid in self.held:
                    self.running[pid] = Run(self.held[pid], client_pid, size, form.decode())

    def relay(self, readable: list) -> None:
        """Pass on what the clients of runs did: each byte is a Ctrl-C (SIGINT to the
        run's process group), end-of-file a hang-up (SIGHUP, as a terminal sends)."""
        for pid, run in list(self.running.items()):
            if run.conn not in readable:
                continue
            try:
                data = run.conn.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            # The worker leads its own group (it is not yet reaped, so the
            # pid is still its own): the signal reaches the program and its children.
            for _ in range(min(len(data), 3)):
                _signal_group(pid, signal.SIGINT)
            if not data:
                _signal_group(pid, signal.SIGHUP)
                del self.running[pid]  # nobody is left to tell the exit status

    def exiting(self, pid: int, status: int) -> None:
        """Answer the client of run ``pid`` now: its worker closed every fd and is
        exiting with ``status`` (0-255).  What is left of its end (the kernel
        freeing its memory) is nobody's wait; its reap then owes nothing."""
        run = self.running.pop(pid, None)
        conn = self.held.pop(pid, None)
        if run is None or conn is None:
            return
        self.answered[pid] = run
        try:
            conn.send(_reply(status << 8, TERMINAL, False), socket.MSG_DONTWAIT)
        except OSError:
            pass  # the client is gone
        finally:
            conn.close()

    def run_of(self, pid: int) -> Run | None:
        """Return the Run of worker ``pid`` on a client's terminal, answered or not, or None."""
        return self.running.get(pid) or self.answered.get(pid)

    def worker_ended(self, pid: int, status: int, state: WorkerState, kind: int,
                     timed_out: bool) -> None:
        """Answer for a worker that is gone, if its client still waits; close our copy.

        ``state`` is its last scoreboard state, ``kind`` the kind of its last
        request, ``status`` its ``waitpid`` status.
        """
        conn = self.held.pop(pid, None)
        self.running.pop(pid, None)
        self.answered.pop(pid, None)
        if conn is None:
            return
        # Owed: the exit status of a run on the client's terminal, or word of a
        # death in the middle of a request (a worker that exits 0 in the middle
        # of one saw its client leave mid-frame: nobody waits).
        died = not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
        owed = state.busy_since and (kind == TERMINAL or died)
        try:
            reply = _reply(status, kind, timed_out) if owed else None
            if reply is not None:
                conn.send(reply, socket.MSG_DONTWAIT)
        except OSError:
            pass  # the client is gone
        finally:
            conn.close()

    def shut_read(self, pid: int) -> bool:
        """Make the worker's wait for a next request end (end-of-file); return whether
        it holds a connection.  A request already sent is still read and served."""
        conn = self.held.get(pid)
        if conn is None:
            return False
        try:
            conn.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        return True


def describe_exit(status: int) -> str:
    """Return how a process ended, from a ``waitpid`` status: 'exit status 3',
    'killed by SIGKILL'."""
    if os.WIFSIGNALED(status):
        return "killed by %s" % _signal_name(os.WTERMSIG(status))
    return "exit status %d" % os.waitstatus_to_exitcode(status)


def exit_code(status: int) -> int:
    """Return python's exit code for a ``waitpid`` status: ``-N`` for death by signal N."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _reply(status: int, kind: int, timed_out: bool) -> bytes | None:
    """Return the reply a client waiting on a dead worker gets, or None."""
    code = EXIT_TIMEOUT if timed_out else exit_code(status)
    if kind == TERMINAL:
        reply_status = protocol.TIMEOUT if timed_out else \
            (protocol.OK if code == 0 else protocol.ERROR)
        return protocol.encode_response(reply_status, protocol.EXIT_CODE.pack(code))
    if kind in (V1, CAPTURED):
        how = ("it ran past its time limit and ignored the interrupt, so it was killed"
               if timed_out else "it %s" % (
                   "was killed by %s" % _signal_name(-code) if code < 0
                   else "exited with status %d" % code))
        return protocol.encode_response(protocol.WORKER_DIED, (
            "the worker died while running the code: %s" % how).encode())
    return None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "signal %d" % signum


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
