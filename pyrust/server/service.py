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

import json
import logging
import os
import select
import signal
import socket
import time
from typing import TYPE_CHECKING, Callable

from pyrust import protocol
from pyrust.environment import Environment, default_python, template_socket
from pyrust.errors import PyrustError, StartupError
from pyrust.server import control, osutil
from pyrust.server.template import fingerprint
from pyrust.server.templates import (
    FailureHold,
    Launcher,
    Template,
    answer,
    cannot_start,
    describe,
    interpreter,
    kill,
    receive,
    remove_stale_sockets,
    unlink_link,
)
from pyrust.server.terminals import describe_exit

if TYPE_CHECKING:
    from types import FrameType

    from pyrust.config import Config
    from pyrust.server.activation import Listener
    from pyrust.server.notify import Notifier

log = logging.getLogger("pyrust.service")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
STATUS_INTERVAL = 5.0
#: Seconds a template may take to import its preloads and say it is ready.
START_TIMEOUT = 300.0
#: Seconds a template must have been idle before it may end to make room.
LRU_GRACE = 1.0


class Service:
    """Runs the templates behind ``listener`` until told to stop; see the module doc."""

    def __init__(self, config: Config, listener: Listener, notifier: Notifier,
                 reload_config: Callable[[], Config] | None = None,
                 log_file: str | None = None, journal: str | None = None) -> None:
        self.config = config
        self.listener = listener
        self.notifier = notifier
        self.reload_config = reload_config
        self.templates: dict[bytes, Template] = {}  # key -> each environment's current one
        self.ending: dict[int, Template] = {}       # pid -> Template told to stop
        self.launcher = Launcher(listener, log_file, journal)
        self.holds = FailureHold()
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.stopping = False
        self.reload_asked = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._watchdog = notifier.watchdog_interval()
        self._next_status = 0.0
        self.default: Template | None = None  # the default environment's, once it served

    # -- environments ----------------------------------------------------------

    def default_environment(self) -> Environment:
        """Return the environment runs get when nothing names another."""
        return Environment(interpreter(self.config.python or default_python()),
                           self.config.preload)

    def ensure(self, env: Environment, reply: socket.socket) -> None:
        """Answer ``reply`` with the socket of ``env``'s template once it serves,
        starting it if needed; or with why it cannot start."""
        key = env.key()
        template = self.templates.get(key)
        if template is not None and template.state == "ready" and self._stale(template):
            template = self._replace(template, "its interpreter's files changed (a .pth "
                                               "file, pyvenv.cfg, the executable)")
        if template is not None and template.state == "ready":
            answer(reply, protocol.OK, os.fsencode(template.path))
            return
        if template is None:
            refusal = self.holds.refusal(key)
            if refusal is not None:
                answer(reply, protocol.SERVICE_ERROR, refusal.encode())
                return
            if self.config.max_templates == 1:
                answer(reply, protocol.SERVICE_ERROR, (
                    "%s: not started: max_templates is 1, so only the default environment "
                    "runs" % describe(env)).encode())
                return
            self._make_room(len(self.templates) + 1)
            try:
                template = self.launcher.start(env, self.config)
            except OSError as exc:
                message = cannot_start(env, exc.strerror or str(exc))
                self.holds.failed(key, message)
                answer(reply, protocol.SERVICE_ERROR, message.encode())
                return
            self.templates[key] = template
        template.waiting.append(reply)

    def _stale(self, template: Template) -> bool:
        """Return whether ``template``'s interpreter files changed since it started."""
        watched = template.info.get("watched")
        if not watched:
            return False
        return fingerprint(watched) != template.info.get("fingerprint")

    def _replace(self, template: Template,
                 why: str = "its configuration was reloaded") -> Template:
        """Start a successor of ``template`` (which ends once the successor serves),
        saying ``why`` in the log; return the successor, or ``template`` if it
        cannot start."""
        env = self.default_environment() if template.default else template.env
        other = self.templates.get(env.key())
        if other is not None and other is not template:
            # The default environment became one that already runs (a reload
            # named its venv): that template gives way, socket and all.
            self._end(other, forget=True)
        try:
            successor = self.launcher.start(env, self.config, default=template.default)
        except OSError as exc:
            log.error("%s", cannot_start(env, exc.strerror or str(exc)))
            return template
        log.info("starting the template of %s anew: %s", describe(env), why)
        if self.templates.get(template.key) is template:
            del self.templates[template.key]
        successor.predecessor = template
        self.templates[successor.key] = successor
        return successor

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
                     "(max_templates = %d)", describe(oldest.env), self.config.max_templates)
            self._end(oldest, forget=True)

    def _end(self, template: Template, forget: bool) -> None:
        """Tell ``template`` to stop; with ``forget``, its environment's socket goes too."""
        if self.templates.get(template.key) is template:
            del self.templates[template.key]
        template.state = "stopping"
        if not template.exited:
            self.ending[template.pid] = template
            kill(template.pid, signal.SIGTERM)
        if template.default and template.key not in self.templates:
            unlink_link(template.path)  # the default environment changed (reload)
        for reply in template.waiting:
            answer(reply, protocol.SERVICE_ERROR, b"the template stopped before it was ready")
        template.waiting = []
        if forget and not template.default:
            self.launcher.forget(template)

    # -- messages from templates and their workers ---------------------------------

    def _messages(self, template: Template) -> None:
        """Take every message waiting on ``template``'s channel."""
        assert template.channel is not None  # callers take only templates with one
        while True:
            try:
                data, fds = receive(template.channel)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("template %d's channel: %s", template.pid, exc)
                return
            if not data:
                return
            kind, body = data[:1], data[1:]
            if kind == b"O" and fds:
                control.handle(self, body, socket.socket(fileno=fds[0]))
                continue
            for fd in fds:
                os.close(fd)
            if kind == b"I":
                template.info = json.loads(body.decode())
            elif kind == b"E":
                self._failed(template, "%s: %s" % (describe(template.env), body.decode(
                    "utf-8", "replace")))
            elif kind == b"N" and body.startswith(b"READY=1") and template.state == "starting":
                self._ready(template)

    def _ready(self, template: Template) -> None:
        """``template`` serves: answer who waits, end the one it replaces."""
        template.state, template.ready_at = "ready", time.monotonic()
        self.holds.cleared(template.key)
        log.log(logging.DEBUG if template.default else logging.INFO,
                "the template of %s serves (pid %d, Python %s, %.0f ms)",
                describe(template.env), template.pid, template.info.get("version", "?"),
                (template.ready_at - template.started) * 1000)
        if template.predecessor is not None:  # first, so its spares stop accepting
            self._end(template.predecessor, forget=False)
            template.predecessor = None
        for reply in template.waiting:
            answer(reply, protocol.OK, os.fsencode(template.path))
        template.waiting = []
        if template.default:
            self.default = template

    def _failed(self, template: Template, message: str) -> None:
        """``template`` cannot start: tell who waits; hold its environment for a while."""
        if template.state != "starting":
            return
        log.error("%s", message)
        self.holds.failed(template.key, message)
        for reply in template.waiting:
            answer(reply, protocol.SERVICE_ERROR, message.encode())
        template.waiting = []
        predecessor = template.predecessor
        self._end(template, forget=predecessor is None)
        if predecessor is not None:  # a reload that failed: the running one stays
            self.templates[predecessor.key] = predecessor
        elif template.default:  # nothing would serve the main socket
            raise StartupError(message)

    # -- the loop ------------------------------------------------------------------

    def run(self) -> int:
        """Serve until a stop signal (or idle exit); return the exit code (0 on a clean stop).

        Raise StartupError if the default environment's template cannot start.
        """
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in STOP_SIGNALS + (signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, _record_only)
        remove_stale_sockets(self.listener.path)
        try:
            first = self.launcher.start(self.default_environment(), self.config, default=True)
        except OSError as exc:
            raise StartupError(cannot_start(self.default_environment(),
                                             exc.strerror or str(exc))) from None
        self.templates[first.key] = first
        try:
            self._wait_for_default()
            self.notifier.notify("READY=1\nSTATUS=%s" % self.status_line())
            log.info("serving on %s (%s), pid %d", self.listener.path, self.listener.source,
                     os.getpid())
            while not self.stopping:
                self._step(self._next_duty())
                if self.reload_asked and not self.stopping:
                    self.reload_asked = False
                    self.reload()
                if not self.stopping:
                    self._timed_duties()
        except StartupError:
            self._shutdown()
            raise
        return self._shutdown()

    def _step(self, timeout: float | None) -> None:
        """Wait for a signal, a template's message or ``timeout``; handle what came."""
        channels = {t.channel.fileno(): t for t in self._all() if t.channel is not None}
        try:
            readable = select.select([self._wake_r] + list(channels), [], [], timeout)[0]
        except InterruptedError:
            readable = []
        for fd in readable:
            if fd in channels:
                self._messages(channels[fd])
        try:
            signals = os.read(self._wake_r, 4096)
        except BlockingIOError:
            signals = b""
        for signum in signals:
            if signum in STOP_SIGNALS and not self.stopping:
                log.info("received %s, stopping", signal.Signals(signum).name)
                self.stopping = True
            elif signum == signal.SIGHUP:
                self.reload_asked = True
        self._reap()
        self._check_starts()

    def _all(self) -> list[Template]:
        return list(self.templates.values()) + list(self.ending.values()) + \
            [t.predecessor for t in self.templates.values() if t.predecessor is not None]

    def _reap(self) -> None:
        """Collect every template that exited; restart the default one if it died."""
        for pid, status, _ in osutil.exited_children():
            template = self.ending.pop(pid, None) or next(
                (t for t in self._all() if t.pid == pid), None)
            if template is None:
                continue
            self._gone(template, status)

    def _gone(self, template: Template, status: int) -> None:
        """Account for a template process that ended with ``status``."""
        template.exited = True
        if template.channel is not None:
            self._messages(template)  # what it said before it died (an "E" message)
            template.channel.close()
            template.channel = None
        if template.state == "stopping":
            log.info("the template of %s (pid %d) ended", describe(template.env), template.pid)
            return
        how = describe_exit(status)
        if template.state == "starting":
            self._failed(template, "%s: the interpreter ended (%s) before its template was "
                         "ready" % (describe(template.env), how))
            return
        log.error("the template of %s (pid %d) died (%s)", describe(template.env),
                  template.pid, how)
        self._end(template, forget=not template.default)
        if template.default and not self.stopping:  # the main socket needs one: start anew
            replacement = self.launcher.start(template.env, self.config, default=True)
            self.templates[replacement.key] = replacement

    def _check_starts(self) -> None:
        """Give up on templates that take longer than START_TIMEOUT to start."""
        now = time.monotonic()
        for template in list(self.templates.values()):
            if template.state == "starting" and now - template.started > START_TIMEOUT:
                self._failed(template, "%s: not ready after %d s" % (
                    describe(template.env), START_TIMEOUT))

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
            if self.templates.get(template.key) is template:  # not ended by an earlier one
                self._replace(template)
        self._wait_for_default()
        log.info("reloaded: %d templates replaced", len(self.templates))
        self.notifier.notify("READY=1\nSTATUS=%s" % self.status_line())

    def _wait_for_default(self) -> None:
        """Serve messages until the default environment's template is ready again."""
        while not self.stopping and any(t.default and t.state == "starting"
                                        for t in self.templates.values()):
            if self._watchdog:  # slow preloads must not look like a hung service
                self.notifier.notify("WATCHDOG=1")
            self._step(min(1.0, self._watchdog or 1.0))

    # -- timed duties ---------------------------------------------------------------

    def _next_duty(self) -> float | None:
        waits = [self._watchdog, STATUS_INTERVAL if self.notifier.active else None, 1.0]
        present = [w for w in waits if w is not None]
        return min(present) if present else None

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
                         describe(template.env), limit)
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
            kill(pid, signal.SIGKILL)
        if self.default is not None:
            unlink_link(template_socket(self.listener.path, self.default.key))
        self.listener.close()
        log.info("stopped")
        return 0


def _record_only(signum: int, frame: FrameType | None) -> None:
    """Signal handler: the number already went to the wake-up fd."""
