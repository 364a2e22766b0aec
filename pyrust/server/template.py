"""A template: one environment's warm interpreter, started by the service.

The service runs ``PYTHON [start-up options] -c BOOTSTRAP ROOT FD SPEC`` with
the environment's own interpreter.  BOOTSTRAP checks that it is CPython 3.9
or later, imports this module from pyrust's directory ``ROOT`` and calls
:func:`main`, which removes ``ROOT`` from ``sys.path`` again (runs see the
environment's ``sys.path``, not pyrust's), imports the environment's
preloads and becomes a Supervisor: spares in ``accept()`` on the socket the
service passed, the terminal of every run.

It talks to the service on the datagram socket ``FD``: ``I`` + JSON (what
the interpreter is) then ``N`` + ``READY=1`` when it serves; ``E`` + a
message if it cannot start.  Its workers forward control operations there
too (see ``worker.Worker._control``).  Only the standard library is used,
so any CPython from 3.9 on can run it.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import sys

# For mypy only, which takes any name TYPE_CHECKING as true: a template imports
# no typing (the programs its workers run would find it already imported).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable

    from pyrust.server.supervisor import Supervisor
    from pyrust.server.worker import ServiceInfo

#: The program the service passes to ``-c``.  It must run (and fail clearly)
#: on any python, so it avoids everything newer than Python 2.7.
BOOTSTRAP = "\n".join((
    "import os, sys",
    "v, i = sys.version_info, getattr(sys, 'implementation', None)",
    "if i is None or i.name != 'cpython' or v < (3, 9):",
    "    n = i.name if i is not None else 'python'",
    "    os.write(int(sys.argv[2]), ('Eis %s %d.%d.%d, and pyrust needs CPython 3.9 or later'",
    "                                % (n, v[0], v[1], v[2])).encode())",
    "    sys.exit(78)",
    "sys.path.insert(0, sys.argv[1])",
    "from pyrust.server.template import main",
    "sys.exit(main(sys.argv[1:]))",
))

#: Exit status of a template that cannot start (EX_CONFIG, as the service's own).
EXIT_STARTUP = 78

log = logging.getLogger("pyrust.template")


class ChannelNotifier:
    """The Supervisor's notifier inside a template: READY=1 and the like go to
    the service (``N`` + text) instead of a service manager."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel

    def notify(self, message: str) -> bool:
        """Send ``message`` to the service; return whether it went."""
        try:
            self.channel.send(b"N" + message.encode())
            return True
        except OSError:  # the service is gone; PR_SET_PDEATHSIG ends us soon
            return False


def forget_root(root: str) -> None:
    """Remove pyrust's own directory from ``sys.path`` (and the import system's
    cache of it), so runs import only what the environment has."""
    while root in sys.path:
        sys.path.remove(root)
    sys.path_importer_cache.pop(root, None)


def preloader(root: str, extra_path: Iterable[str] = ()) -> Callable[[Iterable[str]], None]:
    """Return the Supervisor's ``preload(names)``: import each module, with the
    project directory ``root`` (if any) and then ``extra_path`` first on
    ``sys.path`` while it does.

    The function raises StartupError naming the module and the error.
    """
    from pyrust.errors import StartupError

    added = ([root] if root else []) + [p for p in extra_path if p not in sys.path]

    def preload(names: Iterable[str]) -> None:
        at = 1 if sys.path and sys.path[0] == "" else 0
        sys.path[at:at] = added
        try:
            for name in names:
                try:
                    importlib.import_module(name)
                except BaseException as exc:  # SystemExit or KeyboardInterrupt from a module
                    raise StartupError("cannot preload module %r: %s: %s"
                                       % (name, type(exc).__name__, exc)) from None
                log.debug("preloaded %s", name)
        finally:
            for entry in added:
                if entry in sys.path:
                    sys.path.remove(entry)
    return preload


def describe(info: ServiceInfo) -> dict[str, object]:
    """Return what the service shows of this interpreter in ``pyrust status``, and
    the environment's watched files with the fingerprint taken at start
    (``info``: the supervisor's ServiceInfo)."""
    return {"pid": os.getpid(), "version": sys.version.split()[0],
            "executable": sys.executable, "prefix": sys.prefix,
            "venv": sys.prefix if sys.prefix != sys.base_prefix else None,
            "watched": info.watched, "fingerprint": info.born}


def environment_files() -> list[str]:
    """Return the files whose change makes this interpreter's start-up stale: the
    executable (a venv recreated with another python replaces it), the venv's
    pyvenv.cfg, and the site-packages directories whose ``.pth`` files python
    read at start (``pip install -e`` adds one; a directory's mtime moves when
    an entry is added or removed)."""
    files = [sys.executable, os.path.join(sys.prefix, "pyvenv.cfg")]
    files += [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
    return files


def fingerprint(files: Iterable[str]) -> list[list[int]]:
    """Return each of ``files``' identity and modification time (lstat: the
    executable is often a symlink), [0, 0] for one that is missing."""
    marks = []
    for path in files:
        try:
            st = os.lstat(path)
            marks.append([st.st_ino, st.st_mtime_ns])
        except OSError:
            marks.append([0, 0])
    return marks


def main(args: list[str]) -> int:
    """Serve as the template ``args`` (ROOT, FD, SPEC as JSON) describe; return the exit code."""
    root, channel = args[0], socket.socket(fileno=int(args[1]))
    forget_root(root)
    spec = json.loads(args[2])
    try:
        supervisor = _supervisor(spec, channel)
        supervisor.preload()
    except Exception as exc:  # a StartupError, or a bug that must reach the client too
        message = str(exc) if type(exc).__name__ == "StartupError" else \
            "%s: %s" % (type(exc).__name__, exc)
        try:
            channel.send(b"E" + message.encode("utf-8", "replace"))
        except OSError:
            pass
        return EXIT_STARTUP
    try:
        channel.send(b"I" + json.dumps(describe(supervisor.info)).encode())
    except OSError:  # the service ended (or dropped) this template before it was ready
        return 0
    return supervisor.run()


def _supervisor(spec: dict[str, Any], channel: socket.socket) -> Supervisor:
    """Return the Supervisor ``spec`` describes, its logging set up."""
    from pyrust.config import Config
    from pyrust.environment import Environment
    from pyrust.server import osutil
    from pyrust.server.activation import Listener
    from pyrust.server.logs import setup_logging
    from pyrust.server.scoreboard import Scoreboard
    from pyrust.server.supervisor import MAX_SLOTS, Supervisor

    config = Config(**spec["config"])
    setup_logging(config.log_level, spec["log_file"])
    osutil.terminate_with_parent()  # the service's death ends the template
    env = Environment(spec["python"], config.preload, spec["root"], spec["startup"])
    listener = Listener(socket.socket(fileno=spec["listener"]), spec["source"],
                        spec["path"], owned=False)
    board = Scoreboard(MAX_SLOTS, spec["scoreboard"])
    os.close(spec["scoreboard"])  # the mapping stays; runs must not inherit the fd
    supervisor = Supervisor(config, listener, ChannelNotifier(channel),
                            preloader(spec["root"], spec["preload_path"]), scoreboard=board)
    supervisor.info.env_key = env.key()
    supervisor.info.watched = environment_files()
    supervisor.info.born = fingerprint(supervisor.info.watched)
    supervisor.info.service = channel
    return supervisor
