"""A worker: one connection, in a process no earlier connection touched.

A worker is forked from the warm template (the supervisor) as a spare and
blocks in ``accept()`` on the shared listening socket.  When it takes a
connection it tells the supervisor (handing it a copy of the connection, so a
new spare is forked at once and the supervisor can answer for the worker if it
dies), serves that one connection, and exits.  Nothing on this path polls or
sleeps: the worker sleeps in ``accept()`` or ``recv()`` until the kernel hands
it work.

A connection is a session.  Protocol v1 requests (and extended requests whose
output is captured) are answered one after the other by the same process,
each with fresh globals.  A run on the client's own fds (what ``pyrust``
sends) makes the process the program's: the worker hands the connection over
to the supervisor, runs the program, ends as python ends, and the supervisor
sends its exit status to the client.
"""

from __future__ import annotations

import _signal
import errno
import logging
import os
import select
import signal
import socket
import struct
import time

from pyrust import ops, protocol
from pyrust.request import MAX_EXTRA_FDS, Job, Request, decode_extended, decode_v1
from pyrust.server import logs, osutil
from pyrust.server.executor import Executor
from pyrust.server.scoreboard import CAPTURED, TERMINAL, V1
from pyrust.server.template import fingerprint
from pyrust.trust import peer_credentials

MYPY = False
if MYPY:  # for the type checker only: runs must not find typing imported by pyrust
    from types import FrameType
    from typing import Iterable

    from pyrust.config import Config
    from pyrust.server.freshness import Freshness
    from pyrust.server.scoreboard import Scoreboard, Slot

log = logging.getLogger("pyrust.worker")

# What the worker is doing, so the stop signal knows what it may interrupt.
IN_ACCEPT, WAITING, BUSY = "in accept", "waiting", "busy"
#: accept() errors that concern one connection, not the listener.
_CONNECTION_ERRORS = {errno.ECONNABORTED, errno.EINTR, errno.EPROTO}
#: accept() errors from a passing shortage: retried after a pause, not in a tight loop.
_SHORTAGE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
SHORTAGE_PAUSE = 0.1  # seconds
#: Messages to the supervisor, on the channel it shares with its workers:
#: "A" (pid) with the connection attached: this worker took a connection;
#: "T" (pid, client pid, program size, form): the connection is the
#: supervisor's now, the program runs and this process ends with it.
TOOK = struct.Struct("=ci")
TERMINAL_RUN = struct.Struct("=ciiic")
#: The largest control request forwarded to the service (one datagram).
MAX_FORWARDED = 65536


def _has_data(conn: socket.socket) -> bool:
    """Return whether bytes (or end-of-file) wait on ``conn`` right now.

    A stopping worker still serves a request that already arrived: a client
    that connected just before the stop must not lose it.
    """
    return bool(select.select([conn], [], [], 0)[0])


def _receive_with_fds(conn: socket.socket, length: int) -> "tuple[bytes, tuple]":
    """Read an extended payload of ``length`` bytes and the fds attached to it.

    Raise ProtocolError if more fds came than a request may carry (they are closed).
    """
    if not length:  # nothing to read (and nothing for fds to ride on)
        return b"", ()
    data, fds, flags, _ = socket.recv_fds(conn, length, 3 + MAX_EXTRA_FDS)
    if flags & socket.MSG_CTRUNC:
        _close_all(fds)
        raise protocol.malformed("more than %d fds attached" % (3 + MAX_EXTRA_FDS), fatal=True)
    if not data:
        _close_all(fds)
        raise protocol.ConnectionClosed(partial=True)
    if len(data) < length:
        data += protocol.recv_exact(conn, length - len(data), started=True)
    return data, tuple(fds)


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class ServiceInfo:
    """What the supervisor tells its workers about the service at fork time."""

    def __init__(self, source: str, path: str, started: float, scoreboard: Scoreboard,
                 freshness: Freshness | None = None) -> None:
        self.source, self.path, self.started = source, path, started  # started: time.time()
        self.scoreboard = scoreboard
        self.freshness = freshness  # the preloaded modules' watch (freshness.Freshness)
        #: The key of the template's environment: a run that names another is refused.
        self.env_key: bytes | None = None
        #: The files whose change makes the template stale, and their fingerprint
        #: when it started (template.environment_files, template.fingerprint).
        self.watched: list = []
        self.born: list = []
        #: The datagram socket to the service, where the service's ops go.
        self.service: socket.socket | None = None


class Refused(Exception):
    """A request answered with a refusal (``status``, ``message``) instead of its run."""

    def __init__(self, status: int, message: bytes) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Worker:
    """Serves one connection from ``listener``; see :meth:`run`.

    ``slot`` is its scoreboard slot; ``channel`` the datagram socket to the
    supervisor; ``supervisor_pid`` the only process it ever signals.
    """

    def __init__(self, listener: socket.socket, config: Config, slot: Slot,
                 channel: socket.socket, info: ServiceInfo, supervisor_pid: int,
                 executor: Executor | None = None) -> None:
        self.listener = listener
        self.config = config
        self.slot = slot
        self.channel = channel
        self.info = info
        self.supervisor_pid = supervisor_pid
        # Made (and calibrated) once by the template: a fork copies it for free.
        self.executor = executor or new_executor(config)
        self.cache_epoch = info.scoreboard.cache_epoch()
        self.uid = os.getuid()
        self.alive = True
        self.phase = IN_ACCEPT
        self.conn: socket.socket | None = None
        self.peer_pid = 0  # the client of the connection being served (0: unknown)
        # One line per run at debug; the check is made once, not per request.
        self._log_runs = log.isEnabledFor(logging.DEBUG)
        seconds = config.idle_timeout
        self._timeval = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM: finish the request in flight, then exit.

        Recording the flag is not enough when the worker sleeps in a system
        call, so the handler also takes away what it sleeps on: closing our
        copy of the listener makes a retried accept() fail (other processes'
        copies are untouched), and shutting the read side of an idle
        connection makes recv() return end-of-file.  A request already
        running is never interrupted.
        """
        self.alive = False
        self.listener.close()
        if self.phase == WAITING and self.conn is not None:
            try:
                self.conn.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def start(self) -> None:
        """Set up the process (called in the child after fork): signals, limits.

        The worker is the leader of its own process group, which becomes the
        run's: what the client's terminal would send reaches the program and
        its children.  It asks for SIGTERM when the supervisor dies, however
        it dies, so orphaned spares never keep serving the socket on their own.
        """
        os.setpgid(0, 0)
        # _signal's own functions: the signal module's turn every previous
        # handler into an Enum (by a failed lookup, for a function), and every
        # object a fresh process touches costs it a copy-on-write fault.
        _signal.set_wakeup_fd(-1)  # the supervisor's wake-up pipe is not ours to fill
        _signal.signal(_signal.SIGTERM, self._on_stop)
        # Ctrl-C in the terminal of a foreground server reaches the supervisor,
        # which stops in order; a worker ignores it outside a run.
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
        for sig in (_signal.SIGCHLD, _signal.SIGHUP, _signal.SIGQUIT):
            _signal.signal(sig, _signal.SIG_DFL)
        self.executor.install_signals()
        if self.config.max_worker_memory:
            osutil.limit_address_space(self.config.max_worker_memory)
        osutil.terminate_with_parent()
        if os.getppid() != self.supervisor_pid:  # it died before we asked
            self._on_stop(signal.SIGTERM, None)
        self._warm_up()
        self.slot.started()

    def _warm_up(self) -> None:
        """Run a program once before accepting, so the copy-on-write faults of a
        fresh process (a few hundred, ~1 ms here) are paid while nobody waits."""
        self.executor.rehearse()

    def run(self) -> int:
        """Accept one connection and serve it; return the exit code.

        A run on the client's own fds does not return here: the process ends
        with the program.
        """
        conn = self._accept()
        if conn is None:
            return 0
        try:
            self.listener.close()  # nothing this process runs may accept on it
            self.slot.connected()
            self._tell(TOOK.pack(b"A", os.getpid()), conn.fileno())
            if self.admit(conn):
                self.executor.settle()  # pyrust's modules out of sys.modules, once
                self.serve_connection(conn)
        finally:
            self.conn = None
            conn.close()
        log.debug("worker %d done after %d requests", os.getpid(), self.slot.requests)
        return 0

    def _accept(self) -> socket.socket | None:
        """Return the next connection, or None once told to stop."""
        while self.alive:
            try:
                return self.listener.accept()[0]
            except OSError as exc:
                if not self.alive:
                    break
                if exc.errno in _CONNECTION_ERRORS:
                    continue
                if exc.errno in _SHORTAGE_ERRORS:
                    log.warning("accept failed: %s; retrying in %g s", exc, SHORTAGE_PAUSE)
                    time.sleep(SHORTAGE_PAUSE)
                    continue
                raise
        return None

    def _tell(self, message: bytes, fd: int = -1) -> None:
        """Send ``message`` to the supervisor, with ``fd`` attached if given."""
        try:
            if fd < 0:
                self.channel.send(message)
            else:
                socket.send_fds(self.channel, [message], [fd])
        except OSError as exc:  # the supervisor is gone; the connection is served anyway
            log.debug("cannot reach the supervisor: %s", exc)

    def admit(self, conn: socket.socket) -> bool:
        """Return whether ``conn`` comes from this service's own user.

        The socket's 0600 mode keeps others out; this second line of defence
        answers anyone else with a status-2 refusal and logs it.
        """
        try:
            self.peer_pid, uid = peer_credentials(conn)
        except OSError as exc:
            log.warning("refused a connection: cannot read its credentials: %s", exc)
            return False
        if uid == self.uid:
            return True
        log.warning("refused a connection from uid %d (this service runs as uid %d)",
                    uid, self.uid)
        try:
            conn.sendall(protocol.encode_response(protocol.BAD_REQUEST, (
                "refused: this service belongs to uid %d and your uid is %d"
                % (self.uid, uid)).encode()))
        except OSError:
            pass
        return False

    def serve_connection(self, conn: socket.socket) -> None:
        """Serve requests on ``conn`` until it closes, idles out, or the worker stops."""
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self._timeval)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self._timeval)
        self.conn = conn
        try:
            while (self.alive or _has_data(conn)) and self.handle_request(conn):
                if self.slot.retiring():
                    break
        except protocol.ConnectionClosed as exc:
            if exc.partial:
                log.info("client closed the connection in the middle of a request")
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                log.info("closing a connection idle for %g s", self.config.idle_timeout)
            else:
                log.info("connection error: %s", exc)

    def handle_request(self, conn: socket.socket) -> bool:
        """Serve one request on ``conn``: receive it, verify it, handle it, reply.

        Return whether the connection can carry another request (not after a
        refused frame whose payload was left unread, nor after a run on the
        client's fds).  Raise ConnectionClosed or OSError when the connection
        is gone.
        """
        try:
            request = self.receive(conn)
        except protocol.ProtocolError as exc:
            log.info("refused a request: %s", exc)
            self.slot.end(ok=False)
            self.reply(conn, protocol.BAD_REQUEST, str(exc).encode())
            return not exc.fatal
        try:
            self.verify(request)
        except Refused as exc:
            _close_all(request.fds)
            if exc.status == protocol.WRONG_TEMPLATE:  # nothing ran: no run to count
                self.slot.end_control()
            else:
                self.slot.end(ok=False)
            self.reply(conn, exc.status, exc.message)
            return request.job is None or request.job.fds is None
        return self.handle(request, conn)

    def receive(self, conn: socket.socket) -> Request:
        """Read the next request from ``conn`` and decode it (pyrust/request.py).

        Raise ProtocolError if it is refused (``fatal`` when its payload was left
        unread), ConnectionClosed or OSError when the connection is gone.
        """
        self.phase = WAITING
        header = protocol.recv_exact(conn, protocol.HEADER.size)
        self.phase = BUSY  # from the first byte on, the request is in flight
        (length,) = protocol.HEADER.unpack(header)
        extended = bool(length & protocol.EXTENDED_FLAG)
        self.slot.begin(CAPTURED if extended else V1)
        epoch = self.info.scoreboard.cache_epoch()
        if epoch != self.cache_epoch:  # someone asked for --clear-cache
            self.cache_epoch = epoch
            self.executor.clear_cache()
        length &= ~protocol.EXTENDED_FLAG
        protocol.check_length(length, self.config.max_request_bytes)
        if not extended:
            code = protocol.recv_exact(conn, length, started=True)
            return decode_v1(code, self.config.request_timeout)
        payload, fds = _receive_with_fds(conn, length)
        try:
            return decode_extended(payload, fds, self.config.request_timeout)
        except protocol.ProtocolError:
            _close_all(fds)
            raise

    def verify(self, request: Request) -> None:
        """Raise Refused if this worker must not carry ``request`` out: a run that
        names another environment than this template's, or one whose
        environment changed since the template started (a ``.pth`` file, a
        recreated venv); a program file over max_request_bytes for a run on
        the client's fds (refused while a reply can still go back)."""
        job = request.job
        key = request.env_key() if job is not None and self.info.env_key is not None else None
        if key is not None:
            if key != self.info.env_key:
                why = "this socket serves another environment"
            elif fingerprint(self.info.watched) != self.info.born:
                why = "this environment changed since its template started"
            else:
                why = ""
            if why:
                raise Refused(protocol.WRONG_TEMPLATE, ("%s; ask the service for yours (op %s)"
                                                        % (why, ops.ENSURE.code.decode())).encode())
        if job is not None and job.fds is not None:
            refusal = self.executor.refuse_file(job)
            if refusal is not None:
                raise Refused(protocol.BAD_REQUEST, refusal.encode())

    def handle(self, request: Request, conn: socket.socket) -> bool:
        """Carry out ``request``: a worker op here (``op_<name>``), a service op
        forwarded to the service; return whether the connection goes on."""
        if request.job is None or request.job.fds is None:
            _close_all(request.fds)  # only a run on the client's fds uses the fds sent
        if request.op.by == ops.WORKER:
            handler = getattr(self, request.op.handler_name)
            return bool(handler(request, conn))
        status, reply = self._forward(request.payload)
        self.slot.end_control()
        self.reply(conn, status, reply)
        return True

    def reply(self, conn: socket.socket, status: int, payload: bytes) -> None:
        """Send the response (``status``, ``payload``) on ``conn``."""
        conn.sendall(protocol.encode_response(status, payload))

    def op_run(self, request: Request, conn: socket.socket) -> bool:
        """Run the request's program: captured (reply, and the session goes on), or
        on the client's fds (this process becomes the program's and never returns)."""
        job = request.job
        assert job is not None  # decode_* give every run its Job
        if job.fds is not None:
            self._run_to_exit(job, conn)
            return False
        if self.info.freshness is not None:
            self.info.freshness.refresh()
        return self._run_captured(job, conn, request.extended)

    def _forward(self, payload: bytes) -> "tuple[int, bytes]":
        """Forward the service op request ``payload`` to the service; return its reply.

        The reply comes back on a socketpair whose other end travels with the
        request, so the connection stays this worker's: a session may go on.
        """
        if self.info.service is None:
            return protocol.SERVICE_ERROR, b"no service to answer control operations"
        if len(payload) > MAX_FORWARDED:
            return protocol.BAD_REQUEST, protocol.too_large(
                "control request", len(payload), MAX_FORWARDED, "(none)").encode()
        ours, theirs = socket.socketpair()
        try:
            with theirs:
                socket.send_fds(self.info.service, [b"O" + payload], [theirs.fileno()])
            return protocol.read_response(ours)
        except (OSError, protocol.ConnectionClosed) as exc:
            log.warning("cannot reach the service for a control operation: %s", exc)
            return protocol.SERVICE_ERROR, b"the service did not answer; see its log"
        finally:
            ours.close()

    def _run_captured(self, job: Job, conn: socket.socket, extended: bool) -> bool:
        """Run ``job`` with its output captured and send the reply; return True."""
        try:
            result = self.executor.run(job)
        except Exception:
            # The executor contains everything a program does, so this is a
            # pyrust bug; the worker's state is suspect, so it ends.
            log.exception("internal error while running a request")
            self.slot.end(ok=False)
            self.reply(conn, protocol.SERVICE_ERROR,
                       b"pyrust: internal error in the worker; see the service log")
            return False
        duration = self.slot.end(ok=result.status == protocol.OK)
        if self._log_runs:
            log.debug("run on a connection from pid %d: form %s, %d bytes, exit %d (status %d), "
                      "%.3f ms", self.peer_pid, job.form, len(job.source), result.exit_code,
                      result.status, duration * 1000)
        self._after_run()
        reply = result.output
        if extended and result.status != protocol.BAD_REQUEST:  # a refusal is only its reason
            reply = protocol.EXIT_CODE.pack(result.exit_code) + reply
        self.reply(conn, result.status, reply)
        return True

    def _run_to_exit(self, job: Job, conn: socket.socket) -> None:
        """Hand the connection to the supervisor and give this process to ``job``;
        this process ends with the program."""
        if self.info.freshness is not None:
            self.info.freshness.refresh(last=True)
        self.slot.begin(TERMINAL)
        self._tell(TERMINAL_RUN.pack(b"T", os.getpid(), self.peer_pid,
                                     len(job.source), job.form.encode()))
        self.channel.close()
        if self.info.service is not None:
            self.info.service.close()  # the program must not inherit the service's channel
        self.conn = None
        conn.close()  # the supervisor holds it now: it relays Ctrl-C and sends the exit status
        logs.release()
        self.executor.run_to_exit(job, self._announce_exit)

    def _announce_exit(self, status: int) -> None:
        """The run ended and this process is about to exit with ``status``: close
        every fd (the client's, the program's files and their locks, as the exit
        would), then tell the supervisor, which answers the client at once rather
        than once the kernel has torn this process down (milliseconds here).

        Not in a process the program forked, which ends through here too: the
        run is this worker's process, and the supervisor waits for that one.
        """
        if os.getpid() != self.slot.pid:
            return
        osutil.close_all_fds()
        self.slot.announce_exit(status)
        try:
            os.kill(self.supervisor_pid, signal.SIGCHLD)
        except OSError:  # gone: nobody waits for the answer
            pass

    def _after_run(self) -> None:
        """Take back the signals a program may have taken."""
        if _signal.getsignal(signal.SIGTERM) != self._on_stop:
            # The program took over SIGTERM; without ours, stopping would hang.
            signal.signal(signal.SIGTERM, self._on_stop)
        if not self.executor.signals_installed():
            self.executor.install_signals()


def new_executor(config: Config) -> Executor:
    """Return the Executor a worker under ``config`` runs programs with, prepared
    (rehearsed and calibrated) where it is made: call it where workers are
    forked, as the template does, so they inherit it ready."""
    executor = Executor(config.compile_cache_size, config.max_reply_bytes,
                        config.max_request_bytes)
    executor.prepare()
    return executor
