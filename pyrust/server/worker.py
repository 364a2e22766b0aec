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

import _signal
import errno
import logging
import os
import select
import signal
import socket
import struct
import time

from pyrust import protocol
from pyrust.environment import key_of
from pyrust.server.template import fingerprint
from pyrust.server import logs, osutil
from pyrust.server.executor import FORMS, Executor, Job, v1_job
from pyrust.server.runoptions import check_options
from pyrust.server.scoreboard import CAPTURED, TERMINAL, V1
from pyrust.trust import peer_credentials

log = logging.getLogger("pyrust.worker")

# What the worker is doing, so the stop signal knows what it may interrupt.
ACCEPTING, WAITING, BUSY = "accepting", "waiting", "busy"
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
#: What a spare runs before it accepts (see Worker._warm_up).
WARM_UP = v1_job("x = 1\nx", 0)
#: The most fds a client may pass besides 0-2 (SCM_MAX_FD is 253).
MAX_EXTRA_FDS = 250
_FD_NUMBER = struct.Struct(">I")
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
        raise protocol.ProtocolError("malformed extended request: more than %d fds attached"
                                     % (3 + MAX_EXTRA_FDS), fatal=True)
    if not data:
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
    """Serves one connection from ``listener``; see :meth:`run`.

    ``slot`` is its scoreboard slot; ``channel`` the datagram socket to the
    supervisor; ``supervisor_pid`` the only process it ever signals.
    """

    def __init__(self, listener: socket.socket, config, slot, channel: socket.socket,
                 info, supervisor_pid: int, executor: Executor = None) -> None:
        self.listener = listener
        self.config = config
        self.slot = slot
        self.channel = channel
        self.info = info  # control.ServiceInfo
        self.supervisor_pid = supervisor_pid
        # Made (and calibrated) once by the template: a fork copies it for free.
        self.executor = executor or new_executor(config)
        self.cache_epoch = info.scoreboard.cache_epoch()
        self.uid = os.getuid()
        self.alive = True
        self.phase = ACCEPTING
        self.conn = None
        self.peer_pid = 0  # the client of the connection being served (0: unknown)
        # One line per run at debug; the check is made once, not per request.
        self._log_runs = log.isEnabledFor(logging.DEBUG)
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

    def start(self) -> None:
        """Set up the process (called in the child after fork): signals, limits.

        The worker is the leader of its own process group, which becomes the
        run's: what the client's terminal would send reaches the program and
        its children.  It asks for SIGTERM when the supervisor dies, however
        it dies, so orphaned spares never keep serving the socket on their own.
        """
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)  # the supervisor's wake-up pipe is not ours to fill
        signal.signal(signal.SIGTERM, self._on_stop)
        # Ctrl-C in the terminal of a foreground server reaches the supervisor,
        # which stops in order; a worker ignores it outside a run.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        self.executor.install_signals()
        if self.config.max_worker_memory:
            osutil.limit_address_space(self.config.max_worker_memory)
        osutil.terminate_with_parent()
        if os.getppid() != self.supervisor_pid:  # it died before we asked
            self._on_stop(signal.SIGTERM, None)
        self._warm_up()

    def _warm_up(self) -> None:
        """Run a program once before accepting, so the copy-on-write faults of a
        fresh process (a few hundred, ~1 ms here) are paid while nobody waits."""
        self.executor.run(WARM_UP)
        self.executor.clear_cache()

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
                self.serve_connection(conn)
        finally:
            self.conn = None
            conn.close()
        log.debug("worker %d done after %d requests", os.getpid(), self.slot.requests)
        return 0

    def _accept(self):
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
        """Read one request from ``conn``, run it and send the reply.

        Return whether the connection can carry another request (not after a
        refused frame whose payload was left unread).  Raise ConnectionClosed
        or OSError when the connection is gone.
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
        fds = ()
        try:
            protocol.check_length(length, self.config.max_request_bytes)
            if extended:
                payload, fds = _receive_with_fds(conn, length)
                fields = protocol.decode_fields(payload)
                job = self._job(fields, fds)
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
            status, reply = self._control(payload)
            self.slot.end_control()
            conn.sendall(protocol.encode_response(status, reply))
            return True
        if extended and self.info.env_key is not None and protocol.PYTHON in fields:
            refusal = self._other_environment(fields)
            if refusal is not None:
                _close_all(fds)
                self.slot.end_control()
                conn.sendall(protocol.encode_response(protocol.WRONG_TEMPLATE, refusal))
                return True
        if job.fds is not None:
            self._run_to_exit(job, conn)  # returns only if the program was refused
            return False
        if self.info.freshness is not None:
            self.info.freshness.refresh()
        return self._run_captured(job, conn, extended)

    def _other_environment(self, fields: dict):
        """Return why this template cannot serve the run ``fields`` name (its
        environment is another, or changed since the template started: a
        ``.pth`` file, a recreated venv), or None if it can."""
        if key_of(fields) != self.info.env_key:
            why = "this socket serves another environment"
        elif fingerprint(self.info.watched) != self.info.born:
            why = "this environment changed since its template started"
        else:
            return None
        return ("%s; ask the service for yours (op %s)"
                % (why, protocol.OP_ENSURE.decode())).encode()

    def _control(self, payload: bytes) -> "tuple[int, bytes]":
        """Forward control request ``payload`` to the service; return its reply.

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
            conn.sendall(protocol.encode_response(
                protocol.SERVICE_ERROR, b"pyrust: internal error in the worker; see the service log"))
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
        conn.sendall(protocol.encode_response(result.status, reply))
        return True

    def _run_to_exit(self, job: Job, conn: socket.socket) -> None:
        """Hand the connection to the supervisor and give this process to ``job``.

        Return only if the program is refused before it starts (a file over
        max_request_bytes), after sending the refusal.
        """
        refusal = self.executor.refuse_file(job)
        if refusal is not None:
            _close_all(job.fds)
            self.slot.end(ok=False)
            conn.sendall(protocol.encode_response(protocol.BAD_REQUEST, refusal.encode()))
            return
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
        if form not in FORMS or stdio not in (b"c", b"f") or \
                (protocol.SOURCE not in fields and form != "i"):
            raise protocol.ProtocolError("malformed extended request: needs a form (c, -, f, m, "
                                         "i), a source (but for i), and stdio c or f", False)
        targets = _fd_targets(fields.get(protocol.FD_NUMBERS, b""))
        if stdio == b"f" and len(fds) != 3 + len(targets):
            raise protocol.ProtocolError("malformed extended request: stdio f needs the "
                                         "client's fds 0, 1 and 2 attached, then one fd for "
                                         "each number in the fd-numbers field", False)
        if form == "i" and stdio != b"f":
            raise protocol.ProtocolError("malformed extended request: form i (python's "
                                         "prompt) needs stdio f", False)
        source = protocol.decode_code(fields.get(protocol.SOURCE, b""))
        argv = [os.fsdecode(a) for a in fields[protocol.ARG]] or \
            [{"c": "-c", "-": "-", "f": source, "m": "-m", "i": ""}[form]]
        env = None
        if fields[protocol.ENV]:
            env = dict(os.fsdecode(e).partition("=")[::2] for e in fields[protocol.ENV])
        cwd = os.fsdecode(fields[protocol.CWD]) if protocol.CWD in fields else None
        # A run on the client's terminal has no time limit unless it asks for
        # one, as python has none; a captured run has the service's.
        limit = 0.0 if stdio == b"f" else self.config.request_timeout
        if protocol.TIMEOUT_MS in fields:
            limit = struct.unpack(">I", fields[protocol.TIMEOUT_MS])[0] / 1000.0
        umask = struct.unpack(">I", fields[protocol.UMASK])[0] & 0o777 \
            if protocol.UMASK in fields else None
        options, echo = _run_options(fields)
        return Job(form, source, argv, cwd, env, limit, fds if stdio == b"f" else None,
                   umask, targets, options, echo)

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


def new_executor(config) -> Executor:
    """Return the Executor a worker under ``config`` runs programs with, calibrated
    where it is made (call it where workers are forked, as the template does)."""
    executor = Executor(config.compile_cache_size, config.max_reply_bytes,
                        config.max_request_bytes)
    executor.calibrate()
    return executor


def _run_options(fields: dict) -> "tuple[tuple, bool]":
    """Return the per-run python options (str) and the echo setting of a run's
    fields; raise ProtocolError (not fatal) if they are malformed."""
    try:
        options = check_options([os.fsdecode(value) for value in fields[protocol.PYOPT]])
    except ValueError as exc:
        raise protocol.ProtocolError("malformed extended request: %s" % exc, False) from None
    echo = fields.get(protocol.ECHO, b"1")
    if echo not in (b"0", b"1"):
        raise protocol.ProtocolError("malformed extended request: echo is 0 or 1", False)
    return options, echo == b"1"


def _fd_targets(value: bytes) -> tuple:
    """Return the fd numbers of the fd-numbers field; raise ProtocolError if malformed."""
    if len(value) % _FD_NUMBER.size or len(value) // _FD_NUMBER.size > MAX_EXTRA_FDS:
        raise protocol.ProtocolError("malformed extended request: the fd-numbers field holds "
                                     "up to %d u32 numbers" % MAX_EXTRA_FDS, False)
    targets = tuple(n for (n,) in _FD_NUMBER.iter_unpack(value))
    if any(n < 3 or n > 1 << 20 for n in targets) or len(set(targets)) != len(targets):
        raise protocol.ProtocolError("malformed extended request: fd numbers must be distinct, "
                                     "from 3 to %d" % (1 << 20), False)
    return targets
