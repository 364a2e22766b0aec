"""A worker: a blocking accept loop on the shared listening socket.

Each worker serves one connection at a time, request after request, until the
client closes it, stays idle past ``idle_timeout``, or the worker is told to
stop.  Nothing on this path polls or sleeps: the worker sleeps in ``accept()``
or ``recv()`` until the kernel hands it work.
"""

import errno
import logging
import os
import select
import signal
import socket
import struct
import sys
import time

from pyrust import protocol
from pyrust.server.executor import Executor

log = logging.getLogger("pyrust.worker")

# What the worker is doing, so the stop signal knows what it may interrupt.
ACCEPTING, WAITING, BUSY = "accepting", "waiting", "busy"
#: accept() errors that concern one connection, not the listener.
_CONNECTION_ERRORS = {errno.ECONNABORTED, errno.EINTR, errno.EPROTO}
#: accept() errors from a passing shortage: retried after a pause, not in a tight loop.
_SHORTAGE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
SHORTAGE_PAUSE = 0.1  # seconds


def _terminate_with_parent() -> None:
    """Have the kernel send SIGTERM when the parent exits (Linux ``PR_SET_PDEATHSIG``).

    Elsewhere this does nothing; the supervisor's normal stop still reaches
    every worker, only a SIGKILLed supervisor leaves them to finish alone.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))


def _has_data(conn: socket.socket) -> bool:
    """Return whether bytes (or end-of-file) wait on ``conn`` right now.

    A stopping worker still serves a request that already arrived: a client
    that connected just before the stop must not lose it.
    """
    return bool(select.select([conn], [], [], 0)[0])


class Worker:
    """Serves requests from ``listener`` until stopped; see :meth:`run`."""

    def __init__(self, listener: socket.socket, config, slot) -> None:
        self.listener = listener
        self.config = config
        self.slot = slot  # this worker's scoreboard slot
        self.executor = Executor(config.compile_cache_size)
        self.alive = True
        self.phase = ACCEPTING
        self.conn = None
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

    def install_signals(self, supervisor_pid: int) -> None:
        """Set the worker's signal dispositions (called in the child after fork).

        The worker also asks for SIGTERM when the supervisor dies, however it
        dies, so orphaned workers never keep serving the socket on their own.
        """
        signal.set_wakeup_fd(-1)  # the supervisor's wake-up pipe is not ours
        signal.signal(signal.SIGTERM, self._on_stop)
        _terminate_with_parent()
        if os.getppid() != supervisor_pid:  # it died before we asked
            self._on_stop(signal.SIGTERM, None)
        # Ctrl-C in a terminal reaches the whole process group; the supervisor
        # turns it into an orderly stop, so the worker ignores it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)

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
            try:
                self.serve_connection(conn)
            finally:
                self.conn = None
                conn.close()
        log.debug("worker %d stopping after %d requests", os.getpid(),
                  self.slot.served + self.slot.failed)
        return 0

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
        (length,) = protocol.HEADER.unpack(header)
        try:
            protocol.check_length(length, self.config.max_request_bytes)
            code = protocol.decode_code(protocol.recv_exact(conn, length, started=True))
        except protocol.ProtocolError as exc:
            log.info("refused a request: %s", exc)
            self.slot.end(ok=False)
            conn.sendall(protocol.encode_response(protocol.BAD_REQUEST, str(exc).encode()))
            return not exc.fatal
        try:
            result = self.executor.run(code)
        except Exception:
            # The executor contains everything a program does, so this is a
            # pyrust bug; the worker's state is suspect, so it retires.
            log.exception("internal error while running a request")
            self.slot.end(ok=False)
            self.alive = False
            conn.sendall(protocol.encode_response(
                protocol.SERVICE_ERROR, b"pyrust: internal error in the worker; see the service log"))
            return False
        self.slot.end(ok=result.status == protocol.OK)
        if signal.getsignal(signal.SIGTERM) != self._on_stop:
            # The program took over SIGTERM; without ours, stopping would hang.
            signal.signal(signal.SIGTERM, self._on_stop)
        conn.sendall(protocol.encode_response(result.status, result.output))
        return True
