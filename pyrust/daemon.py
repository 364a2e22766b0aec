"""``pyrust --daemon``: start a standalone server in the background.

Returns once the server says it is ready (``READY=1`` on a private notify
socket, the same protocol systemd uses), so the next command finds it up.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import tempfile
import time

from pyrust.client import is_serving
from pyrust.errors import StartupError
from pyrust.paths import default_log_path

START_TIMEOUT = 60.0  # preloading heavy modules can take a while


def start_daemon(path: str, config: str | None) -> int:
    """Start ``pyrust serve`` on ``path`` in a new session; return 0 once it answers.

    Return 0 at once if a service already answers there.  Raise StartupError
    (quoting the server's log) if it exits or is not ready within START_TIMEOUT.
    """
    if is_serving(path):
        print("pyrust: already serving on %s" % path)
        return 0
    log_path = default_log_path()
    os.makedirs(os.path.dirname(log_path), mode=0o700, exist_ok=True)
    command = [sys.executable, "-m", "pyrust", "serve", "--socket", path]
    if config:
        command += ["--config", config]
    with tempfile.TemporaryDirectory(prefix="pyrust-notify-") as tmp, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify, \
            open(log_path, "ab") as log:
        notify.bind(os.path.join(tmp, "notify"))
        env = dict(os.environ, NOTIFY_SOCKET=notify.getsockname())
        start = log.tell()
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True, cwd="/")
        if _wait_ready(notify, proc):
            print("pyrust: serving on %s (pid %d, log %s)" % (path, proc.pid, log_path))
            return 0
    with open(log_path, "rb") as f:
        f.seek(start)
        tail = f.read().decode("utf-8", "replace").strip()
    if proc.poll() is None:
        proc.kill()
    raise StartupError("the server did not start:\n%s" % (tail or "(no output; see %s)" % log_path))


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
