"""A worker: a blocking accept loop on the shared listening socket.

Each worker serves one connection at a time, request after request, until the
client closes it, stays idle past ``idle_timeout``, or the worker is told to
stop.  Nothing on this path polls or sleeps: the worker sleeps in ``accept()``
or ``recv()`` until the kernel hands it work.
"""

import _signal
import errno
import fcntl
import logging
import os
import random
import select
import signal
import socket
import struct
import time

from pyrust import protocol
from pyrust.trust import peer_credentials
from pyrust.server import control, osutil
from pyrust.server.executor import Executor, Job, v1_job

log = logging.getLogger("pyrust.worker")

# What the worker is doing, so the stop signal knows what it may interrupt.
ACCEPTING, WAITING, BUSY = "accepting", "waiting", "busy"
#: accept() errors that concern one connection, not the listener.
_CONNECTION_ERRORS = {errno.ECONNABORTED, errno.EINTR, errno.EPROTO}
#: accept() errors from a passing shortage: retried after a pause, not in a tight loop.
_SHORTAGE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
SHORTAGE_PAUSE = 0.1  # seconds
#: The byte a worker writes to the supervisor's wake-up pipe when it took the
#: last idle worker's place: "grow the pool".  Signal numbers are below 65.
GROW = b"\xff"
_FDS = struct.Struct("3i")  # the client's fds 0-2, as SCM_RIGHTS carries them


def _has_data(conn: socket.socket) -> bool:
    """Return whether bytes (or end-of-file) wait on ``conn`` right now.

    A stopping worker still serves a request that already arrived: a client
    that connected just before the stop must not lose it.
    """
    return bool(select.select([conn], [], [], 0)[0])


def _receive_with_fds(conn: socket.socket, length: int) -> "tuple[bytes, tuple]":
    """Read an extended payload of ``length`` bytes and the fds attached to it.

    Raise ProtocolError if more fds came than the three expected (they are closed).
    """
    if not length:  # nothing to read (and nothing for fds to ride on)
        return b"", ()
    data, ancillary, flags, _ = conn.recvmsg(length, socket.CMSG_SPACE(_FDS.size))
    fds = []
    for level, kind, blob in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += struct.unpack("%di" % (len(blob) // 4), blob[:len(blob) - len(blob) % 4])
    if flags & socket.MSG_CTRUNC or len(fds) not in (0, 3):
        _close_all(fds)
        raise protocol.ProtocolError("malformed extended request: attach exactly the three "
                                     "fds 0, 1 and 2", fatal=True)
    if not data and length:
        _close_all(fds)
        raise protocol.ConnectionClosed(partial=True)
    if len(data) < length:
        data += protocol.recv_exact(conn, length - len(data), started=True)
    return data, tuple(fds)


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Worker:
    """Serves requests from ``listener`` until stopped; see :meth:`run`.

    ``slot`` is its scoreboard slot; ``wake_fd`` the supervisor's wake-up pipe.
    """

    def __init__(self, listener: socket.socket, config, slot, wake_fd: int, info) -> None:
        self.listener = listener
        self.config = config
        self.slot = slot
        self.wake_fd = wake_fd
        self.info = info  # control.ServiceInfo
        self.executor = Executor(config.compile_cache_size, config.max_reply_bytes,
                                 config.max_request_bytes)
        self.cache_epoch = info.scoreboard.cache_epoch()
        self.uid = os.getuid()
        self.alive = True
        self.phase = ACCEPTING
        self.conn = None
        self.peer_pid = 0  # the client of the connection being served (0: unknown)
        # One line per run at debug; the check is made once, not per request.
        self._log_runs = log.isEnabledFor(logging.DEBUG)
        self.retire_after = (config.max_requests + random.randint(0, config.max_requests_jitter)
                             if config.max_requests else 0)
        seconds = config.idle_timeout
        self._timeval = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))

    def _on_stop(self, signum, frame) -> None:
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

    def start(self, supervisor_pid: int) -> None:
        """Set up the process (called in the child after fork): signals, limits.

        The worker asks for SIGTERM when the supervisor dies, however it dies,
        so orphaned workers never keep serving the socket on their own.
        """
        signal.set_wakeup_fd(-1)  # the supervisor's wake-up pipe is not ours to fill
        signal.signal(signal.SIGTERM, self._on_stop)
        # Ctrl-C in a terminal reaches the whole process group; the supervisor
        # turns it into an orderly stop, so the worker ignores it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        self.executor.install_signals()
        if self.config.max_worker_memory:
            osutil.limit_address_space(self.config.max_worker_memory)
        osutil.terminate_with_parent()
        if os.getppid() != supervisor_pid:  # it died before we asked
            self._on_stop(signal.SIGTERM, None)

    def run(self) -> int:
        """Accept and serve connections until stopped; return the exit code."""
        log.debug("worker %d started", os.getpid())
        while self.alive:
            self.phase = ACCEPTING
            try:
                conn, _ = self.listener.accept()
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
            if self.slot.connected():
                self._ask_for_help()
            try:
                if self.admit(conn):
                    self.serve_connection(conn)
            finally:
                self.conn = None
                # Free again before the client can see the close, however the
                # connection ended (a frame cut short leaves no busy mark).
                self.slot.accepting()
                conn.close()
        log.debug("worker %d stopping after %d requests", os.getpid(), self.slot.requests)
        return 0

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
                pass
        except protocol.ConnectionClosed as exc:
            if exc.partial:
                log.info("client closed the connection in the middle of a request")
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                log.info("closing a connection idle for %g s", self.config.idle_timeout)
            else:
                log.info("connection error: %s", exc)

    def handle_request(self, conn: socket.socket) -> bool:
        """Read one request from ``conn``, run it and send the reply.

        Return whether the connection can carry another request (not after a
        refused frame whose payload was left unread).  Raise ConnectionClosed
        or OSError when the connection is gone.
        """
        self.phase = WAITING
        header = protocol.recv_exact(conn, protocol.HEADER.size)
        self.phase = BUSY  # from the first byte on, the request is in flight
        self.slot.begin()
        epoch = self.info.scoreboard.cache_epoch()
        if epoch != self.cache_epoch:  # someone asked for --clear-cache
            self.cache_epoch = epoch
            self.executor.clear_cache()
        (length,) = protocol.HEADER.unpack(header)
        extended = bool(length & protocol.EXTENDED_FLAG)
        length &= ~protocol.EXTENDED_FLAG
        fds = ()
        try:
            protocol.check_length(length, self.config.max_request_bytes)
            if extended:
                payload, fds = _receive_with_fds(conn, length)
                job = self._job(protocol.decode_fields(payload), fds)
            else:
                code = protocol.recv_exact(conn, length, started=True)
                job = v1_job(protocol.decode_code(code), self.config.request_timeout)
        except protocol.ProtocolError as exc:
            _close_all(fds)
            log.info("refused a request: %s", exc)
            self.slot.end(ok=False)
            conn.sendall(protocol.encode_response(protocol.BAD_REQUEST, str(exc).encode()))
            return not exc.fatal
        if isinstance(job, bytes):  # a control operation
            status, reply = control.handle(job, self)
            self.slot.end_control()
            conn.sendall(protocol.encode_response(status, reply))
            return True
        try:
            result = self._run(job, conn if extended else None)
        except Exception:
            # The executor contains everything a program does, so this is a
            # pyrust bug; the worker's state is suspect, so it retires.
            log.exception("internal error while running a request")
            self.slot.end(ok=False)
            self.alive = False
            conn.sendall(protocol.encode_response(
                protocol.SERVICE_ERROR, b"pyrust: internal error in the worker; see the service log"))
            return False
        finally:
            _close_all(fds)
        duration = self.slot.end(ok=result.status == protocol.OK)
        if self._log_runs:
            log.debug("run on a connection from pid %d: form %s, %d bytes, exit %d (status %d), %.3f ms",
                      self.peer_pid, job.form, len(job.source), result.exit_code,
                      result.status, duration * 1000)
        self._after_run()
        reply = result.output
        if extended and result.status != protocol.BAD_REQUEST:  # a refusal is only its reason
            reply = protocol.EXIT_CODE.pack(result.exit_code) + reply
        conn.sendall(protocol.encode_response(result.status, reply))
        return True

    def _job(self, fields: dict, fds: tuple):
        """Return the Job an extended request asks for, or its control op (bytes).

        Raise ProtocolError (not fatal: the payload was read) if it is malformed.
        """
        op = fields.get(protocol.OP, protocol.OP_RUN)
        if op not in protocol.OPS:
            raise protocol.ProtocolError("malformed extended request: unknown op %r" % op, False)
        if op != protocol.OP_RUN:
            return op
        form = fields.get(protocol.FORM, b"c").decode("ascii", "replace")
        stdio = fields.get(protocol.STDIO, b"c")
        if form not in ("c", "-", "f", "m") or stdio not in (b"c", b"f") or \
                protocol.SOURCE not in fields:
            raise protocol.ProtocolError("malformed extended request: needs a form (c, -, f, m), "
                                         "a source, and stdio c or f", False)
        if stdio == b"f" and len(fds) != 3:
            raise protocol.ProtocolError("malformed extended request: stdio f needs the "
                                         "client's fds 0, 1 and 2 attached", False)
        source = protocol.decode_code(fields[protocol.SOURCE])
        argv = [os.fsdecode(a) for a in fields[protocol.ARG]] or \
            [{"c": "-c", "-": "-", "f": source, "m": "-m"}[form]]
        env = None
        if fields[protocol.ENV]:
            env = dict(os.fsdecode(e).partition("=")[::2] for e in fields[protocol.ENV])
        cwd = os.fsdecode(fields[protocol.CWD]) if protocol.CWD in fields else None
        limit = self.config.request_timeout
        if protocol.TIMEOUT_MS in fields:
            limit = struct.unpack(">I", fields[protocol.TIMEOUT_MS])[0] / 1000.0
        return Job(form, source, argv, cwd, env, limit, fds if stdio == b"f" else None)

    def _run(self, job: Job, conn):
        """Run ``job``; with the client's connection, its Ctrl-C or departure
        interrupts the program (SIGIO on the connection, only during the run)."""
        if conn is None:
            return self.executor.run(job)
        fcntl.fcntl(conn, fcntl.F_SETOWN, os.getpid())
        flags = fcntl.fcntl(conn, fcntl.F_GETFL)
        fcntl.fcntl(conn, fcntl.F_SETFL, flags | os.O_ASYNC)
        try:
            return self.executor.run(job, conn)
        finally:
            fcntl.fcntl(conn, fcntl.F_SETFL, flags)

    def _ask_for_help(self) -> None:
        """No worker is left in accept(): ask the supervisor for another (it knows
        the ceiling, and whether a connection is actually waiting)."""
        try:
            os.write(self.wake_fd, GROW)
        except OSError:  # the pipe is full: the supervisor has been asked already
            pass

    def _after_run(self) -> None:
        """Take back the signals a program may have taken, and retire if due."""
        if _signal.getsignal(signal.SIGTERM) != self._on_stop:
            # The program took over SIGTERM; without ours, stopping would hang.
            signal.signal(signal.SIGTERM, self._on_stop)
        if not self.executor.signals_installed():
            self.executor.install_signals()
        if self.retire_after and self.slot.served + self.slot.failed >= self.retire_after:
            log.info("worker %d retiring after %d requests", os.getpid(), self.retire_after)
            self.alive = False
