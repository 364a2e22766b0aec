"""What the service knows of template processes, and how it starts them.

A template runs ``PYTHON [start-up options] -c BOOTSTRAP ROOT FD SPEC`` (see
``template.py``) with three fds: its listening socket, a datagram channel to
the service, and a memfd holding its scoreboard, which the service maps too.
Its environment is the service's without any ``PYTHON*`` variable except
those of the environment's key.
"""

from __future__ import annotations

import array
import dataclasses
import errno
import json
import logging
import os
import socket
import time

import pyrust
from pyrust import protocol
from pyrust.environment import Environment, template_socket
from pyrust.server.scoreboard import Scoreboard
from pyrust.server.supervisor import MAX_SLOTS
from pyrust.server.template import BOOTSTRAP

# For mypy only, which takes any name TYPE_CHECKING as true (python never runs
# this block).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Sequence

    from pyrust.config import Config
    from pyrust.server.activation import Listener

log = logging.getLogger("pyrust.service")

#: The most bytes of a message on a template's channel (a forwarded control request).
MAX_FORWARDED = 65536
#: pyrust's own directory, which a template's bootstrap imports the server from.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pyrust.__file__)))
#: Variables the service's manager set for the service alone: not passed to templates.
_SERVICE_ONLY = ("LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_")


class Template:
    """One template process as the service sees it."""

    def __init__(self, env: Environment, path: str, default: bool) -> None:
        self.env, self.key, self.path, self.default = env, env.key(), path, default
        self.pid = 0
        # The service's end of the datagram socketpair.
        self.channel: socket.socket | None = None
        self.board: Scoreboard | None = None  # its scoreboard, mapped here too
        self.state = "starting"       # then "ready", or "stopping"
        self.started = time.monotonic()
        self.ready_at = 0.0
        # What the template said it is (template.describe).
        self.info: dict[str, Any] = {}
        # Reply sockets of OP_ENSURE requests waiting for it.
        self.waiting: list[socket.socket] = []
        # The Template it replaces (reload), ended once ready.
        self.predecessor: Template | None = None
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
        self._failed: dict[bytes, tuple[float, int, str]] = {}  # key -> (until, count, message)

    def failed(self, key: bytes, message: str) -> None:
        count = self._failed.get(key, (0, 0, ""))[1] + 1
        self._failed[key] = (time.monotonic() + min(2.0 ** (count - 1), 60.0), count, message)

    def refusal(self, key: bytes) -> str | None:
        """Return the message of a failure still held for ``key``, or None."""
        entry = self._failed.get(key)
        if entry is None or time.monotonic() >= entry[0]:
            return None
        return "%s (not retried for %.0f s)" % (entry[2], entry[0] - time.monotonic())

    def cleared(self, key: bytes) -> None:
        self._failed.pop(key, None)


class Launcher:
    """Starts template processes: their sockets, fds, environment and command line.

    ``listener`` is the service's main socket; ``log_file`` and ``journal``
    (the service's ``$JOURNAL_STREAM``) tell templates where to log.  The
    sockets of non-default environments are bound here and kept across their
    templates' restarts, until ``forget``.
    """

    def __init__(self, listener: Listener, log_file: str | None = None,
                 journal: str | None = None) -> None:
        self.listener, self.log_file, self.journal = listener, log_file, journal
        # key -> the socket of a non-default environment
        self.listeners: dict[bytes, socket.socket] = {}

    def start(self, env: Environment, config: Config, default: bool = False) -> Template:
        """Start a template for ``env`` under ``config``; return it (still starting).

        Raise OSError if its interpreter cannot be executed.
        """
        path = template_socket(self.listener.path, env.key())
        template = Template(env, path, default)
        sock = self.listener.sock if default else self._listener_of(template)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        board_fd = _shared_memory(Scoreboard.bytes_needed(MAX_SLOTS))
        try:
            template.board = Scoreboard(MAX_SLOTS, board_fd)
            spec = self._spec(env, config, template, sock.fileno(), board_fd, default)
            argv = [env.python] + _startup_options(env) + \
                ["-c", BOOTSTRAP, ROOT, str(theirs.fileno()), json.dumps(spec)]
            template.pid = _spawn(env.python, argv, self._template_environ(env),
                                  (sock.fileno(), theirs.fileno(), board_fd))
        except BaseException:
            ours.close()
            if not default:  # nobody would ever accept on it
                self.forget(template)
            raise
        finally:
            theirs.close()
            os.close(board_fd)
        template.channel = ours
        if default:
            symlink(self.listener.path, path)
        # The default environment's start is part of the service's own.
        log.log(logging.DEBUG if default else logging.INFO,
                "starting the template of %s (pid %d)", describe(env), template.pid)
        return template

    def _spec(self, env: Environment, config: Config, template: Template, fd: int,
              board_fd: int, default: bool) -> dict[str, Any]:
        """Return what a template needs to know, as its bootstrap reads it."""
        config = dataclasses.replace(config, preload=list(env.preload))
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

    def _template_environ(self, env: Environment) -> dict[str, str]:
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

    def _listener_of(self, template: Template) -> socket.socket:
        """Return the listening socket of a non-default environment, binding it
        (0600, beside the main socket) the first time."""
        sock = self.listeners.get(template.key)
        if sock is not None:
            return sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            unlink(template.path)  # left by a service that crashed: ours to replace
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

    def forget(self, template: Template) -> None:
        """Close and remove the socket of ``template``'s environment: its clients
        get "no such file" and ask the service again."""
        sock = self.listeners.pop(template.key, None)
        if sock is not None:
            sock.close()
            unlink(template.path)


def interpreter(path: str) -> str:
    """Return the interpreter ``path`` names: itself, or a venv directory's bin/python."""
    path = os.path.abspath(os.path.expanduser(path))
    return os.path.join(path, "bin", "python") if os.path.isdir(path) else path


def describe(env: Environment) -> str:
    """Return how a message names an environment: "python /v/bin/python" and what else keys it."""
    parts = ["python %s" % env.python]
    if env.startup:
        parts.append(" ".join(env.startup))
    if env.preload:
        parts.append("preloading %s" % ", ".join(env.preload))
    return " ".join(parts)


def cannot_start(env: Environment, reason: str) -> str:
    return "%s: cannot start it: %s" % (describe(env), reason)


def _startup_options(env: Environment) -> list[str]:
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


def _spawn(python: str, argv: list[str], environ: dict[str, str], fds: Sequence[int]) -> int:
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


def receive(channel: socket.socket) -> tuple[bytes, list[int]]:
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


def answer(reply: socket.socket, status: int, payload: bytes) -> None:
    """Send one response on a forwarded request's reply socket and close it."""
    try:
        reply.settimeout(5.0)
        reply.sendall(protocol.encode_response(status, payload))
    except OSError as exc:
        log.debug("cannot answer a forwarded request: %s", exc)
    finally:
        reply.close()


def kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def symlink(target: str, path: str) -> None:
    """Make ``path`` a symbolic link to the main socket ``target`` (same directory)."""
    name = os.path.basename(target)
    try:
        if os.readlink(path) == name:
            return
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EINVAL):
            raise
    unlink(path)
    os.symlink(name, path)


def remove_stale_sockets(main_path: str) -> None:
    """Remove what a service on ``main_path`` that was killed left beside it:
    links to the main socket, and environment sockets nobody listens on."""
    directory, _, name = main_path.rpartition("/")
    for entry in os.listdir(directory or "/"):
        if not (entry.startswith("env-") and entry.endswith(".sock")):
            continue
        path = os.path.join(directory, entry)
        if os.path.islink(path):
            if os.readlink(path) == name:
                unlink(path)
            continue
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            unlink(path)
        except OSError:
            pass
        finally:
            probe.close()


def unlink_link(path: str) -> None:
    """Remove the default environment's link, if it is still a link."""
    if os.path.islink(path):
        unlink(path)
