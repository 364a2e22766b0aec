"""Start a standalone server in the background: ``pyrust --daemon`` and autostart.

Returns once the server says it is ready (``READY=1`` on a private notify
socket, the same protocol systemd uses), so the next command finds it up.
When several clients start a server at the same moment, one wins the
socket's lock and the others wait for it to answer: one server, not two.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import subprocess
import sys
import tempfile
import time

from pyrust.client import is_serving
from pyrust.errors import StartupError
from pyrust.paths import default_log_path, socket_unit_file

START_TIMEOUT = 60.0  # preloading heavy modules can take a while
RACE_POLL = 0.01      # seconds between checks while another client's server starts


def start_daemon(path: str, config: str | None, announce: bool = True) -> int:
    """Make sure a server answers on ``path``, starting one if needed; return 0.

    Raise StartupError if a socket unit owns ``path`` (the service manager
    starts pyrust there, not the client), or if the server cannot start
    (quoting its log).  ``announce`` prints where the server runs.
    """
    if is_serving(path):
        if announce:
            print("pyrust: already serving on %s" % path)
        return 0
    unit = socket_unit_file(path)
    if unit is not None:
        raise StartupError("%s owns %s but nothing answers there; start it with the service "
                           "manager (systemctl --user start pyrust.socket)" % (unit, path))
    proc, log_path, log_start, ready = _spawn(path, config)
    if ready:
        if announce:
            print("pyrust: serving on %s (pid %d, log %s)" % (path, proc.pid, log_path))
        return 0
    if proc.poll() is not None and _starting_elsewhere(path) and _wait_serving(path):
        return 0  # another client's server won the race; it answers now
    if proc.poll() is None:
        proc.kill()
    with open(log_path, "rb") as f:
        f.seek(log_start)
        tail = f.read().decode("utf-8", "replace").strip()
    raise StartupError("the server did not start:\n%s" % (tail or "(no output; see %s)" % log_path))


def _spawn(path: str, config: str | None) -> tuple[subprocess.Popen[bytes], str, int, bool]:
    """Start ``pyrust serve`` detached; return (process, log path, log offset, ready)."""
    log_path = default_log_path()
    os.makedirs(os.path.dirname(log_path), mode=0o700, exist_ok=True)
    # The server logs to the file itself, rolling it over; stdout and stderr
    # are appended there too for what it prints before its logging is set up
    # (a start-up error, quoted from ``start`` on when it fails).
    command = [sys.executable, "-m", "pyrust", "serve", "--socket", path, "--log-file", log_path]
    if config:
        command += ["--config", config]
    with tempfile.TemporaryDirectory(prefix="pyrust-notify-") as tmp, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify, \
            open(log_path, "ab") as log:
        notify.bind(os.path.join(tmp, "notify"))
        # The service is not the run that started it: the PYTHON* variables
        # that shape an interpreter (PYTHONWARNINGS=error, ...) belong to that
        # run's environment, not to the service.  PYTHONPATH stays: it is
        # where the service finds pyrust and the configuration's preloads.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PYTHON") or k == "PYTHONPATH"}
        env["NOTIFY_SOCKET"] = notify.getsockname()
        start = log.tell()
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True, cwd="/")
        return proc, log_path, start, _wait_ready(notify, proc)


def _wait_ready(notify: socket.socket, proc: subprocess.Popen) -> bool:
    """Return True once ``READY=1`` arrives, False if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        # Short waits so an early exit of the server is noticed promptly.
        if select.select([notify], [], [], 0.05)[0]:
            if b"READY=1" in notify.recv(4096).split(b"\n"):
                return True
        elif proc.poll() is not None:
            return False
    return False


def _starting_elsewhere(path: str) -> bool:
    """Return whether another server holds the socket's lock (it runs, or is starting)."""
    try:
        fd = os.open(path + ".lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _wait_serving(path: str) -> bool:
    """Return True once a server answers on ``path``, False after START_TIMEOUT."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if is_serving(path):
            return True
        time.sleep(RACE_POLL)
    return False
