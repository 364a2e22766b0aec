"""The process state a run borrows and gives back.

A program runs inside a long-lived worker, so everything python would give it
fresh, and everything it may change that the next program would see, is set
up here before the run and put back after it: the standard streams (captured,
or the client's own fds 0-2), ``sys.argv``, ``sys.path``, ``__main__``, the
working directory and the environment; and pyrust's own
modules are out of ``sys.modules`` while a program runs, so it imports pyrust
only if its own environment has it, as under python.
"""

from __future__ import annotations

import atexit
import builtins
import codecs
import io
import operator
import os
import sys
import types
from importlib.machinery import BuiltinImporter

from pyrust.server.osutil import StandardFds

# For mypy only, which takes any name TYPE_CHECKING as true: a worker imports
# no typing (the programs it runs would find it already imported).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Mapping, TextIO

    from _typeshed import ReadableBuffer

    from pyrust.server.executor import Job

    #: A run's sys.stdin, sys.stdout and sys.stderr.
    Streams = tuple[TextIO, TextIO, TextIO]
    #: pyrust's modules taken out of sys.modules: their names, and the modules.
    Hidden = tuple[tuple[str, ...], tuple[types.ModuleType, ...]]
    #: What Borrowed.enter saved for Borrowed.leave.
    Saved = tuple[tuple[Any, ...], list[str], list[str], types.ModuleType | None,
                  dict[str, str] | None, Streams, Hidden | None, int, int]

#: ``sys`` attributes a program may rebind (or a run's options set) and the next
#: one must not see.
SYS_ATTRS = ("stdin", "stdout", "stderr", "argv", "displayhook", "excepthook", "flags",
             "dont_write_bytecode")
_sys_attrs = operator.attrgetter(*SYS_ATTRS)


class Capture(io.BytesIO):
    """The bytes both captured streams write to; survives the program closing them.

    Beyond ``limit`` bytes it keeps counting but stores nothing more, so a
    program printing without end cannot grow the worker without bound.  One
    Capture serves every run of a worker: building two text streams costs
    more than the rest of a small request, so they are kept while intact.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.size = 0
        self._streams: tuple[io.StringIO, io.TextIOWrapper, io.TextIOWrapper] | None = None

    def write(self, data: ReadableBuffer) -> int:
        # Bytes from the text streams, or any buffer through sys.stdout.buffer
        # (an array's len() counts items, not bytes).
        try:
            size = len(data) if type(data) is bytes else memoryview(data).nbytes
        except TypeError:  # not a buffer: BytesIO's own error, as python gives it
            return super().write(data)
        self.size += size
        if self.size <= self.limit:
            return super().write(data)
        return size

    def close(self) -> None:
        pass

    def begin(self) -> tuple[io.StringIO, io.TextIOWrapper, io.TextIOWrapper]:
        """Empty the buffer; return (stdin, stdout, stderr) for a captured run:
        stdout and stderr interleave into this buffer in the order written,
        stdin is empty."""
        self.seek(0)
        self.truncate()
        self.size = 0
        streams = self._streams
        if streams is None or not self._intact():
            out = io.TextIOWrapper(self, encoding="utf-8", write_through=True)
            err = io.TextIOWrapper(self, encoding="utf-8", errors="backslashreplace",
                                   write_through=True)
            streams = self._streams = (io.StringIO(), out, err)
        return streams

    def _intact(self) -> bool:
        """Whether the last run left the streams as they were made (not closed,
        detached or reconfigured, stdin not read)."""
        if self._streams is None:
            return False
        stdin, out, err = self._streams
        try:
            return (not (stdin.closed or out.closed or err.closed) and stdin.tell() == 0
                    and out.write_through and err.write_through and not out.line_buffering
                    and not err.line_buffering and out.encoding == err.encoding == "utf-8"
                    and out.errors == "strict" and err.errors == "backslashreplace")
        except ValueError:  # detached
            return False


def client_streams(env: Mapping[str, str], unbuffered: bool = False) -> Streams:
    """Return (stdin, stdout, stderr) on fds 0-2 as python makes them at start-up
    under the environment ``env``: stdout line-buffered only on a terminal,
    stderr line-buffered; ``unbuffered`` (-u, PYTHONUNBUFFERED) write-through;
    the encoding PYTHONIOENCODING names (ignored under -E/-I), else UTF-8."""
    if sys.flags.ignore_environment:
        env = {name: value for name, value in env.items() if not name.startswith("PYTHON")}
    encoding, _, errors = env.get("PYTHONIOENCODING", "").partition(":")
    text_errors = "surrogateescape" if _lenient_locale(env) else "strict"
    if encoding:
        try:
            encoding = codecs.lookup(encoding).name  # the name python reports
        except LookupError:
            encoding = ""

    def text(fd: int, mode: str, default_errors: str) -> io.TextIOWrapper:
        raw = io.FileIO(fd, mode, closefd=False)
        raw.name = _STREAM_NAMES[fd]
        if mode == "r":
            return io.TextIOWrapper(io.BufferedReader(raw), encoding or "utf-8",
                                    errors or default_errors)
        if unbuffered:
            return io.TextIOWrapper(raw, encoding or "utf-8", errors or default_errors,
                                    write_through=True)
        return io.TextIOWrapper(io.BufferedWriter(raw), encoding or "utf-8",
                                errors or default_errors,
                                line_buffering=fd == 2 or os.isatty(fd))

    return text(0, "r", text_errors), text(1, "w", text_errors), \
        text(2, "w", "backslashreplace")


_STREAM_NAMES = ("<stdin>", "<stdout>", "<stderr>")
#: Locales in which python gives stdin and stdout the "surrogateescape" error
#: handler: the legacy C locale and the targets of its coercion (PEP 538).
_LENIENT_LOCALES = {"C", "POSIX", "C.UTF-8", "C.utf8", "UTF-8"}


def _lenient_locale(env: Mapping[str, str]) -> bool:
    """Return whether python, started with ``env``, would read and write its
    standard streams with "surrogateescape" (UTF-8 mode, or a C locale)."""
    if sys.flags.utf8_mode or env.get("PYTHONUTF8") == "1":
        return True
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        value = env.get(name)
        if value:
            return value in _LENIENT_LOCALES
    return True  # nothing set: the C locale


def fresh_main() -> types.ModuleType:
    """Return a new ``__main__`` module whose globals look as under python -c."""
    main = types.ModuleType("__main__")
    main.__dict__.update(__builtins__=builtins, __annotations__={}, __loader__=BuiltinImporter)
    return main


def enter_for_good(job: Job, main: types.ModuleType) -> None:
    """Give this process to ``job`` for the rest of its life: argv, ``__main__``,
    working directory and environment (the client's fds are in place already).

    Raise OSError if the job's working directory cannot be entered.
    """
    sys.argv = list(job.argv)
    sys.modules["__main__"] = main
    OwnModules().hide()  # pyrust's code keeps its references; the program sees none
    if job.cwd is not None:
        os.chdir(job.cwd)
    if job.env is not None:
        _replace_environ(job.env)


def _replace_environ(env: dict) -> None:
    """Make ``os.environ`` ``env``, touching only the variables that differ
    (each change is a putenv or unsetenv)."""
    current = os.environ
    for key in [key for key in current if key not in env]:
        del current[key]
    for key, value in env.items():
        if current.get(key) != value:
            current[key] = value


def exit_sequence(code: int) -> int:
    """Do what python does after the program, before the process ends; return
    the exit status it then has: ``code``, or 120 if the standard output
    could not be flushed (as python reports).

    Non-daemon threads are joined, atexit handlers run (the program's and the
    preloaded modules'; pyrust registers none), and stdout and stderr flushed.
    """
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()  # what python's finalization calls: joins the threads
        except BaseException as exc:  # a KeyboardInterrupt while joining, as python shows it
            sys.__excepthook__(type(exc), exc, exc.__traceback__)
    atexit._run_exitfuncs()
    for stream, failure in ((sys.stdout, 120), (sys.stderr, code)):
        try:
            if stream is not None and not getattr(stream, "closed", False):
                stream.flush()  # as python: a stream the program closed is left alone
        except Exception as exc:
            if failure == 120:
                _unraisable("Exception ignored on flushing sys.stdout", exc)
            code = failure
    return code


def _unraisable(message: str, exc: BaseException) -> None:
    """Report ``exc`` on stderr as python reports an exception it ignores."""
    try:
        sys.stderr.write("%s:\n%s: %s\n" % (message, type(exc).__name__, exc))
        sys.stderr.flush()
    except Exception:
        pass


class OwnModules:
    """pyrust's own modules (``pyrust``, ``pyrust.*``) in ``sys.modules``, taken out
    while a program runs and put back after it."""

    def __init__(self) -> None:
        self._names: tuple[str, ...] = ()
        self._get = _getter(self._names)
        self._seen = -1  # len(sys.modules) when _names was right

    def hide(self) -> Hidden:
        """Take pyrust's modules out of ``sys.modules``; return them for :meth:`show`."""
        modules = sys.modules
        if len(modules) != self._seen:
            self._rescan()
        try:
            hidden = self._names, self._get(modules)
        except KeyError:  # one went away since
            self._rescan()
            hidden = self._names, self._get(modules)
        for name in self._names:
            del modules[name]
        return hidden

    def _rescan(self) -> None:
        self._names = _own_names(sys.modules)
        self._get = _getter(self._names)

    def show(self, hidden: Hidden, size: int) -> None:
        """Put back ``hidden``, replacing any pyrust the program imported from its
        own environment (``size``: len(sys.modules) after hide)."""
        modules = sys.modules
        if len(modules) > size:  # the program imported something: pyrust, perhaps
            for name in _own_names(modules):
                del modules[name]
        modules.update(zip(*hidden))
        self._seen = len(modules)


def _getter(names: tuple[str, ...]) -> Callable[[Mapping[str, types.ModuleType]],
                                                  tuple[types.ModuleType, ...]]:
    """Return a function of a dict giving the values of ``names``, as a tuple."""
    if len(names) == 1:
        return lambda modules: (modules[names[0]],)
    return operator.itemgetter(*names) if names else (lambda modules: ())


def _own_names(modules: Iterable[str]) -> tuple[str, ...]:
    return tuple(name for name in modules if name == "pyrust" or name.startswith("pyrust."))


class Borrowed:
    """Set up the process for one run (:meth:`enter`) and restore it (:meth:`leave`)."""

    def __init__(self) -> None:
        # The worker's own directory and fds 0-2, to return to after each run
        # even if the program removed the directory or closed the fds.
        self._home_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._std_fds = StandardFds()
        self._saved: Saved | None = None
        self._own = OwnModules()
        #: pyrust's modules, once taken out for the rest of the process (see settle).
        self._settled: Hidden | None = None
        # pyrust's own code runs on after a session's program: a builtin the
        # program replaced (len, isinstance) is put back (names it added may
        # stay, within the session).  Checking them first costs as much.
        self._builtins = builtins.__dict__.copy()

    def settle(self) -> None:
        """Take pyrust's modules out of ``sys.modules`` for the rest of this
        process, not around every run: the process serves one connection and
        ends, and nothing pyrust runs in it after this imports them again.  A
        pyrust a program imports from its own environment then stays, for the
        session's next runs, as any module a program imports does."""
        if self._settled is None:
            self._settled = self._own.hide()

    def unsettle(self) -> None:
        """Put back what settle took out (for a process that goes on: a test, the bench)."""
        if self._settled is not None:
            self._own.show(self._settled, len(sys.modules))
            self._settled = None

    def close(self) -> None:
        """Close the fds kept for restoring: the process is the run's for good."""
        os.close(self._home_fd)
        self._std_fds.close()

    def enter(self, job: Job, streams: Streams, main: types.ModuleType) -> None:
        """Give the process to ``job``: its streams, argv, cwd, environment, ``__main__``.

        Raise OSError if the job's working directory cannot be entered (the
        process is then restored already).
        """
        hidden = self._own.hide() if self._settled is None else None
        self._saved = (_sys_attrs(sys), sys.path, sys.path[:],
                       sys.modules.get("__main__"),
                       dict(os.environ) if job.env is not None else None, streams,
                       hidden, len(sys.modules), len(sys.path_importer_cache))
        if job.fds is not None:
            for target, fd in enumerate(job.fds):
                os.dup2(fd, target)
        sys.stdin, sys.stdout, sys.stderr = streams
        sys.argv = list(job.argv)
        sys.modules["__main__"] = main
        try:
            if job.cwd is not None:
                os.chdir(job.cwd)
            if job.env is not None:
                os.environ.clear()
                os.environ.update(job.env)
        except OSError:
            self.leave()
            raise

    def leave(self) -> None:
        """Put back everything :meth:`enter` changed, and what the program broke."""
        assert self._saved is not None, "leave() without enter()"
        (attrs, path, saved_path, main, environ, streams, hidden, modules,
         importers) = self._saved
        # What the program wrote reaches the client before the reply, as at exit.
        for stream in (sys.stdout, sys.stderr) + tuple(streams[1:]):
            try:
                stream.flush()
            except (AttributeError, ValueError, OSError):
                pass
        builtins.__dict__.update(self._builtins)
        sys.__dict__.update(zip(SYS_ATTRS, attrs))  # setattr(sys, ...) for each, in C
        sys.path = path
        if path != saved_path:
            path[:] = saved_path
        if main is not None:
            sys.modules["__main__"] = main
        else:  # there was none before the run
            sys.modules.pop("__main__", None)
        if hidden is not None:
            self._own.show(hidden, modules)
        if len(sys.path_importer_cache) > importers:
            _forget_relative_importers()
        if environ is not None:
            os.environ.clear()
            os.environ.update(environ)
        os.fchdir(self._home_fd)
        self._std_fds.restore()


def _forget_relative_importers() -> None:
    """Drop the importers cached for relative sys.path entries (a directory run
    as a program, PYTHONPATH without site): they name a place in the run's
    working directory, which the next run does not share."""
    cache = sys.path_importer_cache
    for key in [key for key in cache if not os.path.isabs(key)]:
        del cache[key]
