"""The service: the process the OS starts on the socket, keeping one template per environment.

It owns the main socket and the service manager's notifications; it runs no
Python of the user's.  Each environment's template is a child process running
that environment's interpreter (``template.py``).  The default environment's
template has its spares accept on the main socket, so protocol-v1 clients and
the default environment's runs go straight to a worker; every other template
listens on a socket of its own beside it (``environment.template_socket``),
which the service binds and keeps across the template's restarts.

The service starts a template on its first use (``OP_ENSURE``, which the
client sends when the environment's socket does not answer), ends one idle
for ``template_idle_exit`` and the least recently used when a new one would
pass ``max_templates``, answers the control operations its templates' workers
forward to it, and stops them all when it stops.  A template that cannot
start is reported to the clients that wait for it, and not started again for
a while (``FailureHold``).
"""

from __future__ import annotations

import array
import dataclasses
import errno
import json
import logging
import os
import select
import signal
import socket
import time

import pyrust
from pyrust import protocol
from pyrust.environment import Environment, default_python, template_socket
from pyrust.errors import PyrustError, StartupError
from pyrust.server import control
from pyrust.server.scoreboard import Scoreboard
from pyrust.server.supervisor import MAX_SLOTS
from pyrust.server.template import BOOTSTRAP
from pyrust.server.terminals import describe_exit

log = logging.getLogger("pyrust.service")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
STATUS_INTERVAL = 5.0
#: Seconds a template may take to import its preloads and say it is ready.
START_TIMEOUT = 300.0
#: Seconds a template must have been idle before it may end to make room.
LRU_GRACE = 1.0
#: The most bytes of a control request a worker forwards (an environment's fields).
MAX_FORWARDED = 65536
#: pyrust's own directory, which a template's bootstrap imports the server from.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pyrust.__file__)))
#: Variables the service sets for no program: not passed to templates.
_SERVICE_ONLY = ("LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_")


class Template:
    """One template process as the service sees it."""

    def __init__(self, env: Environment, path: str, default: bool) -> None:
        self.env, self.key, self.path, self.default = env, env.key(), path, default
        self.pid = 0
        self.channel = None           # the service's end of the datagram socketpair
        self.board = None             # its scoreboard, mapped here too
        self.state = "starting"       # then "ready", or "stopping"
        self.started = time.monotonic()
        self.ready_at = 0.0
        self.info: dict = {}          # what the template said it is (template.describe)
        self.waiting: list = []       # reply sockets of OP_ENSURE requests waiting for it
        self.predecessor = None       # the Template it replaces (reload), ended once ready
        self.exited = False           # reaped: nothing to signal or wait for

    def idle_for(self, now: float) -> float:
        """Return seconds since its last run ended (0 while a worker is connected)."""
        if self.board is None or self.state != "ready":
            return 0.0
        if any(not s.spare for s in self.board.live_states()):
            return 0.0
        return now - max(self.board.last_activity(), self.ready_at)


class FailureHold:
    """Environments whose template failed to start, refused for a while:
    1 s after the first failure, doubling up to a minute, so clients retrying a
    broken environment cost no interpreter start each."""

    def __init__(self) -> None:
        self._failed: dict = {}  # key -> (until, count, message)

    def failed(self, key: bytes, message: str) -> None:
        count = self._failed.get(key, (0, 0, ""))[1] + 1
        self._failed[key] = (time.monotonic() + min(2.0 ** (count - 1), 60.0), count, message)

    def refusal(self, key: bytes):
        """Return the message of a failure still held for ``key``, or None."""
        entry = self._failed.get(key)
        if entry is None or time.monotonic() >= entry[0]:
            return None
        return "%s (not retried for %.0f s)" % (entry[2], entry[0] - time.monotonic())

    def cleared(self, key: bytes) -> None:
        self._failed.pop(key, None)


class Service:
    """Runs the templates behind ``listener`` until told to stop; see the module doc."""

    def __init__(self, config, listener, notifier, reload_config=None,
                 log_file: str | None = None, journal: str | None = None) -> None:
        self.config = config
        self.listener = listener
        self.notifier = notifier
        self.reload_config = reload_config
        self.log_file, self.journal = log_file, journal
        self.templates: dict = {}     # key -> the current Template of each environment
        self.ending: dict = {}        # pid -> Template told to stop
        self.listeners: dict = {}     # key -> the socket of a non-default environment
        self.holds = FailureHold()
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.stopping = False
        self._reload_asked = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._watchdog = notifier.watchdog_interval()
        self._next_status = 0.0
        self.default = None

    # -- environments ----------------------------------------------------------

    def default_environment(self) -> Environment:
        """Return the environment runs get when nothing names another."""
        return Environment(_interpreter(self.config.python or default_python()),
                           self.config.preload)

    def _start(self, env: Environment, default: bool = False) -> Template:
        """Start a template for ``env``; return it (still starting).

        Raise OSError if its interpreter cannot be executed.
        """
        path = template_socket(self.listener.path, env.key())
        template = Template(env, path, default)
        sock = self.listener.sock if default else self._env_listener(template)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        board_fd = _shared_memory(Scoreboard.bytes_needed(MAX_SLOTS))
        try:
            template.board = Scoreboard(MAX_SLOTS, board_fd)
            spec = self._spec(env, template, sock.fileno(), board_fd, default)
            argv = [env.python] + _startup_options(env) + \
                ["-c", BOOTSTRAP, ROOT, str(theirs.fileno()), json.dumps(spec)]
            template.pid = _spawn(env.python, argv, self._template_environ(env),
                                  (sock.fileno(), theirs.fileno(), board_fd))
        except BaseException:
            ours.close()
            if not default:  # nobody would ever accept on it
                self._forget_listener(template)
            raise
        finally:
            theirs.close()
            os.close(board_fd)
        template.channel = ours
        if default:
            _symlink(self.listener.path, path)
        # The default environment's start is part of the service's own.
        log.log(logging.DEBUG if default else logging.INFO,
                "starting the template of %s (pid %d)", _describe(env), template.pid)
        return template

    def _spec(self, env, template, fd, board_fd, default) -> dict:
        """Return what a template needs to know, as its bootstrap reads it."""
        config = dataclasses.replace(self.config, preload=list(env.preload), idle_exit=0.0)
        return {"config": dataclasses.asdict(config), "python": env.python, "root": env.root,
                "startup": list(env.startup), "listener": fd, "scoreboard": board_fd,
                "path": self.listener.path if default else template.path,
                "source": self.listener.source if default else "service",
                "log_file": self.log_file,
                # Where the configuration's preloads may be found besides the
                # interpreter's own path: the service's PYTHONPATH (a run's
                # own PYTHONPATH applies to the run alone).
                "preload_path": [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                 if p]}

    def _template_environ(self, env: Environment) -> dict:
        """Return the template's environment: the service's, without any PYTHON*
        variable but those of the environment's key."""
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith("PYTHON") and not k.startswith(_SERVICE_ONLY)}
        for item in env.startup:
            name, eq, value = item.partition("=")
            if eq and not item.startswith("-"):
                environ[name] = value
        if self.journal:
            environ["JOURNAL_STREAM"] = self.journal
        return environ

    def _env_listener(self, template: Template) -> socket.socket:
        """Return the listening socket of a non-default environment, binding it
        (0600, beside the main socket) the first time."""
        sock = self.listeners.get(template.key)
        if sock is not None:
            return sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _unlink(template.path)  # left by a service that crashed: ours to replace
            mask = os.umask(0o177)
            try:
                sock.bind(template.path)
            finally:
                os.umask(mask)
            sock.listen(socket.SOMAXCONN)
        except OSError:
            sock.close()
            raise
        self.listeners[template.key] = sock
        return sock

    def ensure(self, env: Environment, reply: socket.socket) -> None:
        """Answer ``reply`` with the socket of ``env``'s template once it serves,
        starting it if needed; or with why it cannot start."""
        key = env.key()
        template = self.templates.get(key)
        if template is not None and template.state == "ready":
            _answer(reply, protocol.OK, os.fsencode(template.path))
            return
        if template is None:
            refusal = self.holds.refusal(key)
            if refusal is not None:
                _answer(reply, protocol.SERVICE_ERROR, refusal.encode())
                return
            if self.config.max_templates == 1:
                _answer(reply, protocol.SERVICE_ERROR, (
                    "%s: not started: max_templates is 1, so only the default environment "
                    "runs" % _describe(env)).encode())
                return
            self._make_room(len(self.templates) + 1)
            try:
                template = self._start(env)
            except OSError as exc:
                message = _cannot_start(env, exc.strerror or str(exc))
                self.holds.failed(key, message)
                _answer(reply, protocol.SERVICE_ERROR, message.encode())
                return
            self.templates[key] = template
        template.waiting.append(reply)

    def _make_room(self, wanted: int) -> None:
        """End the least recently used templates while ``wanted`` would pass
        max_templates.  Only a ready template idle for LRU_GRACE can end (one
        just started has a client on its way to it), so a burst of new
        environments may pass the limit for a moment; the timed duties bring
        it back."""
        now = time.monotonic()
        candidates = sorted((t for t in self.templates.values() if not t.default and
                             t.state == "ready" and t.idle_for(now) >= LRU_GRACE),
                            key=lambda t: t.idle_for(now), reverse=True)
        for oldest in candidates[:max(0, wanted - self.config.max_templates)]:
            log.info("ending the template of %s, the least recently used, to make room "
                     "(max_templates = %d)", _describe(oldest.env), self.config.max_templates)
            self._end(oldest, forget=True)

    def _end(self, template: Template, forget: bool) -> None:
        """Tell ``template`` to stop; with ``forget``, its environment's socket goes too."""
        if self.templates.get(template.key) is template:
            del self.templates[template.key]
        template.state = "stopping"
        if not template.exited:
            self.ending[template.pid] = template
            _kill(template.pid, signal.SIGTERM)
        if template.default and template.key not in self.templates:
            _unlink_link(template.path)  # the default environment changed (reload)
        for reply in template.waiting:
            _answer(reply, protocol.SERVICE_ERROR, b"the template stopped before it was ready")
        template.waiting = []
        if forget and not template.default:
            self._forget_listener(template)

    def _forget_listener(self, template: Template) -> None:
        """Close and remove the socket of ``template``'s environment: its clients
        get "no such file" and ask the service again."""
        sock = self.listeners.pop(template.key, None)
        if sock is not None:
            sock.close()
            _unlink(template.path)

    # -- messages from templates and their workers ---------------------------------

    def _receive(self, template: Template) -> None:
        """Take every message waiting on ``template``'s channel."""
        while True:
            try:
                data, fds = _receive(template.channel)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("template %d's channel: %s", template.pid, exc)
                return
            if not data:
                return
            kind, body = data[:1], data[1:]
            if kind == b"O" and fds:
                self._control(body, socket.socket(fileno=fds[0]))
                continue
            for fd in fds:
                os.close(fd)
            if kind == b"I":
                template.info = json.loads(body.decode())
            elif kind == b"E":
                self._failed(template, "%s: %s" % (_describe(template.env), body.decode(
                    "utf-8", "replace")))
            elif kind == b"N" and body.startswith(b"READY=1") and template.state == "starting":
                self._ready(template)

    def _ready(self, template: Template) -> None:
        """``template`` serves: answer who waits, end the one it replaces."""
        template.state, template.ready_at = "ready", time.monotonic()
        self.holds.cleared(template.key)
        log.log(logging.DEBUG if template.default else logging.INFO,
                "the template of %s serves (pid %d, Python %s, %.0f ms)",
                _describe(template.env), template.pid, template.info.get("version", "?"),
                (template.ready_at - template.started) * 1000)
        for reply in template.waiting:
            _answer(reply, protocol.OK, os.fsencode(template.path))
        template.waiting = []
        if template.predecessor is not None:
            self._end(template.predecessor, forget=False)
            template.predecessor = None
        if template.default:
            self.default = template

    def _failed(self, template: Template, message: str) -> None:
        """``template`` cannot start: tell who waits; hold its environment for a while."""
        if template.state != "starting":
            return
        log.error("%s", message)
        self.holds.failed(template.key, message)
        for reply in template.waiting:
            _answer(reply, protocol.SERVICE_ERROR, message.encode())
        template.waiting = []
        predecessor = template.predecessor
        self._end(template, forget=predecessor is None)
        if predecessor is not None:  # a reload that failed: the running one stays
            self.templates[predecessor.key] = predecessor
        elif template.default:  # nothing would serve the main socket
            raise StartupError(message)

    def _control(self, payload: bytes, reply: socket.socket) -> None:
        """Carry out a control operation a worker forwarded; answer on ``reply``."""
        try:
            fields = protocol.decode_fields(payload)
            op = fields.get(protocol.OP)
            if op == protocol.OP_ENSURE:
                env = Environment.from_fields(fields)
                if env is None:
                    raise ValueError("op e needs an environment (field %d)" % protocol.PYTHON)
                self.ensure(Environment(_interpreter(env.python), env.preload, env.root,
                                        env.startup), reply)
                return
            status, text = control.handle(op, self)
        except (protocol.ProtocolError, ValueError, UnicodeDecodeError) as exc:
            status, text = protocol.BAD_REQUEST, str(exc).encode()
        _answer(reply, status, text)

    # -- the loop ------------------------------------------------------------------

    def run(self) -> int:
        """Serve until a stop signal (or idle exit); return the exit code (0 on a clean stop).

        Raise StartupError if the default environment's template cannot start.
        """
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in STOP_SIGNALS + (signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, _record_only)
        _remove_stale_sockets(self.listener.path)
        try:
            first = self._start(self.default_environment(), default=True)
        except OSError as exc:
            raise StartupError(_cannot_start(self.default_environment(),
                                             exc.strerror or str(exc))) from None
        self.templates[first.key] = first
        try:
            while self.default is None and not self.stopping:
                self._step(START_TIMEOUT)
            self.notifier.notify("READY=1\nSTATUS=%s" % self.status_line())
            log.info("serving on %s (%s), pid %d", self.listener.path, self.listener.source,
                     os.getpid())
            while not self.stopping:
                self._step(self._next_duty())
                if self._reload_asked and not self.stopping:
                    self._reload_asked = False
                    self.reload()
                if not self.stopping:
                    self._timed_duties()
        except StartupError:
            self._shutdown()
            raise
        return self._shutdown()

    def _step(self, timeout) -> None:
        """Wait for a signal, a template's message or ``timeout``; handle what came."""
        channels = {t.channel.fileno(): t for t in self._all() if t.channel is not None}
        try:
            readable = select.select([self._wake_r] + list(channels), [], [], timeout)[0]
        except InterruptedError:
            readable = []
        for fd in readable:
            if fd in channels:
                self._receive(channels[fd])
        try:
            signals = os.read(self._wake_r, 4096)
        except BlockingIOError:
            signals = b""
        for signum in signals:
            if signum in STOP_SIGNALS and not self.stopping:
                log.info("received %s, stopping", signal.Signals(signum).name)
                self.stopping = True
            elif signum == signal.SIGHUP:
                self._reload_asked = True
        self._reap()
        self._check_starts()

    def _all(self) -> list:
        return list(self.templates.values()) + list(self.ending.values()) + \
            [t.predecessor for t in self.templates.values() if t.predecessor is not None]

    def _reap(self) -> None:
        """Collect every template that exited; restart the default one if it died."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            template = self.ending.pop(pid, None) or next(
                (t for t in self._all() if t.pid == pid), None)
            if template is None:
                continue
            self._gone(template, status)

    def _gone(self, template: Template, status: int) -> None:
        """Account for a template process that ended with ``status``."""
        template.exited = True
        if template.channel is not None:
            self._receive(template)  # what it said before it died (an "E" message)
            template.channel.close()
            template.channel = None
        if template.state == "stopping":
            log.info("the template of %s (pid %d) ended", _describe(template.env), template.pid)
            return
        how = describe_exit(status)
        if template.state == "starting":
            self._failed(template, "%s: the interpreter ended (%s) before its template was "
                         "ready" % (_describe(template.env), how))
            return
        log.error("the template of %s (pid %d) died (%s)", _describe(template.env),
                  template.pid, how)
        self._end(template, forget=not template.default)
        if template.default and not self.stopping:  # the main socket needs one: start anew
            replacement = self._start(template.env, default=True)
            self.templates[replacement.key] = replacement

    def _check_starts(self) -> None:
        """Give up on templates that take longer than START_TIMEOUT to start."""
        now = time.monotonic()
        for template in list(self.templates.values()):
            if template.state == "starting" and now - template.started > START_TIMEOUT:
                self._failed(template, "%s: not ready after %d s" % (
                    _describe(template.env), START_TIMEOUT))

    def reload(self) -> None:
        """Re-read the configuration and replace every template by a new one;
        each old one ends once its successor serves (the sockets never stop
        accepting).  A configuration that does not load keeps the running one."""
        self.notifier.notify("RELOADING=1\nMONOTONIC_USEC=%d" % (time.monotonic_ns() // 1000))
        if self.reload_config is not None:
            try:
                self.config = self.reload_config()
            except PyrustError as exc:
                log.error("reload: keeping the running configuration: %s", exc)
        for template in list(self.templates.values()):
            env = self.default_environment() if template.default else template.env
            try:
                successor = self._start(env, default=template.default)
            except OSError as exc:
                log.error("reload: %s", _cannot_start(env, exc.strerror or str(exc)))
                continue
            del self.templates[template.key]
            successor.predecessor = template
            self.templates[successor.key] = successor
        self._wait_for_default()
        log.info("reloaded: %d templates replaced", len(self.templates))
        self.notifier.notify("READY=1\nSTATUS=%s" % self.status_line())

    def _wait_for_default(self) -> None:
        """Serve messages until the default environment's template is ready again."""
        while not self.stopping and any(t.default and t.state == "starting"
                                        for t in self.templates.values()):
            self._step(1.0)

    # -- timed duties ---------------------------------------------------------------

    def _next_duty(self) -> float | None:
        waits = [self._watchdog, STATUS_INTERVAL if self.notifier.active else None, 1.0]
        waits = [w for w in waits if w is not None]
        return min(waits) if waits else None

    def _timed_duties(self) -> None:
        now = time.monotonic()
        if self._watchdog:
            self.notifier.notify("WATCHDOG=1")
            if not self.notifier.active:
                self._watchdog = None
        if self.notifier.active and now >= self._next_status:
            self._next_status = now + STATUS_INTERVAL
            self.notifier.notify("STATUS=%s" % self.status_line())
        self._make_room(len(self.templates))
        limit = self.config.template_idle_exit
        for template in list(self.templates.values()):
            if limit and not template.default and template.idle_for(now) >= limit:
                log.info("the template of %s had no run for %g s; ending it",
                         _describe(template.env), limit)
                self._end(template, forget=True)
        if self.config.idle_exit and self._idle_for(now) >= self.config.idle_exit:
            log.info("no request for %g s, exiting", self.config.idle_exit)
            self.stopping = True

    def _idle_for(self, now: float) -> float:
        """Return seconds since a run last ended in any template (0 while one runs)."""
        idle = [t.idle_for(now) for t in self.templates.values() if t.state == "ready"]
        return min(idle + [now - self.started]) if self.templates else now - self.started

    def status_line(self) -> str:
        """Return the one-line status shown by ``systemctl status``."""
        return control.status_line(self)

    # -- stop -------------------------------------------------------------------------

    def _shutdown(self) -> int:
        """Stop every template (each lets its runs finish), then release the sockets."""
        self.notifier.notify("STOPPING=1")
        for template in list(self.templates.values()):
            self._end(template, forget=True)
        deadline = time.monotonic() + self.config.graceful_timeout + 5.0
        while self.ending and time.monotonic() < deadline:
            if self._watchdog:
                self.notifier.notify("WATCHDOG=1")
            self._step(min(1.0, max(0.0, deadline - time.monotonic())))
        for pid in list(self.ending):
            _kill(pid, signal.SIGKILL)
        if self.default is not None:
            _unlink_link(template_socket(self.listener.path, self.default.key))
        self.listener.close()
        log.info("stopped")
        return 0


# -- helpers ---------------------------------------------------------------------------


def _record_only(signum, frame) -> None:
    """Signal handler: the number already went to the wake-up fd."""


def _interpreter(path: str) -> str:
    """Return the interpreter ``path`` names: itself, or a venv directory's bin/python."""
    path = os.path.abspath(os.path.expanduser(path))
    return os.path.join(path, "bin", "python") if os.path.isdir(path) else path


def _describe(env: Environment) -> str:
    """Return how a message names an environment: "python /v/bin/python" and what else keys it."""
    parts = ["python %s" % env.python]
    if env.startup:
        parts.append(" ".join(env.startup))
    if env.preload:
        parts.append("preloading %s" % ", ".join(env.preload))
    return " ".join(parts)


def _cannot_start(env: Environment, reason: str) -> str:
    return "%s: cannot start it: %s" % (_describe(env), reason)


def _startup_options(env: Environment) -> list:
    """Return the interpreter's command-line options of ``env`` ("--x=y" as two words)."""
    options = []
    for item in env.startup:
        if item.startswith("--") and "=" in item:
            options.extend(item.split("=", 1))
        elif item.startswith("-"):
            options.append(item)
    return options


def _shared_memory(size: int) -> int:
    """Return the fd of ``size`` bytes of memory a child can map (a memfd, or an
    unlinked temporary file where there is none)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("pyrust-scoreboard", os.MFD_CLOEXEC)
    else:  # macOS
        import tempfile

        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, size)
    return fd


def _spawn(python: str, argv: list, environ: dict, fds) -> int:
    """Start ``argv`` with ``fds`` inherited (at the same numbers) and stdin on
    /dev/null; return its pid.  Raise OSError if it cannot be executed."""
    for fd in fds:
        os.set_inheritable(fd, True)
    try:
        return os.posix_spawn(python, argv, environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)])
    finally:
        for fd in fds:
            os.set_inheritable(fd, False)


def _receive(channel: socket.socket) -> "tuple[bytes, list]":
    """Return one datagram waiting on ``channel`` and the fds attached to it;
    raise BlockingIOError if none waits.  (``socket.recv_fds`` ignores its flags
    before Python 3.13.)"""
    data, ancillary, _, _ = channel.recvmsg(MAX_FORWARDED + 1, socket.CMSG_SPACE(4 * 4),
                                            socket.MSG_DONTWAIT)
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _answer(reply: socket.socket, status: int, payload: bytes) -> None:
    """Send one response on a forwarded request's reply socket and close it."""
    try:
        reply.settimeout(5.0)
        reply.sendall(protocol.encode_response(status, payload))
    except OSError as exc:
        log.debug("cannot answer a forwarded request: %s", exc)
    finally:
        reply.close()


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _symlink(target: str, path: str) -> None:
    """Make ``path`` a symbolic link to the main socket ``target`` (same directory)."""
    name = os.path.basename(target)
    try:
        if os.readlink(path) == name:
            return
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EINVAL):
            raise
    _unlink(path)
    os.symlink(name, path)


def _remove_stale_sockets(main_path: str) -> None:
    """Remove what a service on ``main_path`` that was killed left beside it:
    links to the main socket, and environment sockets nobody listens on."""
    directory, _, name = main_path.rpartition("/")
    for entry in os.listdir(directory or "/"):
        if not (entry.startswith("env-") and entry.endswith(".sock")):
            continue
        path = os.path.join(directory, entry)
        if os.path.islink(path):
            if os.readlink(path) == name:
                _unlink(path)
            continue
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            _unlink(path)
        except OSError:
            pass
        finally:
            probe.close()


def _unlink_link(path: str) -> None:
    """Remove the default environment's link, if it is still a link."""
    if os.path.islink(path):
        _unlink(path)

