"""The server's logging: where its lines go, what they look like, and how often.

:func:`setup_logging` gives the ``pyrust`` logger (the supervisor's and the
workers' ``pyrust.*`` loggers under it) one handler, and stops its records
from reaching the root logger: a program that calls ``logging.basicConfig()``
gets a logging of its own, not pyrust's handler or pyrust's lines.

The handler is one of three:

* ``log_file`` given (``pyrust serve --log-file``, as ``pyrust --daemon`` and
  the launchd agent run it): :class:`RotatingLog`, bounded at
  ``LOG_MAX_BYTES`` with ``LOG_BACKUPS`` old files, lines timestamped;
* stderr is the journal (``$JOURNAL_STREAM`` names fd 2, as systemd sets it):
  no timestamp or pid (the journal records both) and a syslog priority prefix
  (``<4>``) on every line, so ``journalctl -p warning`` selects by level;
* otherwise stderr, as ``pyrust[PID]: LEVEL: message``.

Every handler carries a :class:`RepeatFilter`: a warning that repeats is
logged once per ``REPEAT_WINDOW`` and then counted.
"""

from __future__ import annotations

import fcntl
import logging
import logging.handlers
import os
import sys
import time

from pyrust.errors import StartupError

# For mypy only, which takes any name TYPE_CHECKING as true: a worker imports
# no typing (the programs it runs would find it already imported).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, TextIO

#: Seconds during which a warning of the same kind (logger, level, message
#: template) is counted instead of logged again.
REPEAT_WINDOW = 60.0
#: Records below this level are never suppressed: debug and info lines narrate
#: (a reload, a stop) and each one counts.
REPEAT_LEVEL = logging.WARNING
#: Kinds remembered at most; past it, those whose window ended are forgotten
#: (messages that are not templates, such as ``log.warning(exc)``, vary).
MAX_KINDS = 1024
#: The log file is rolled over when it would grow past this many bytes...
LOG_MAX_BYTES = 5 * 1024 * 1024
#: ... keeping this many old files (pyrust.log.1 is the newest).
LOG_BACKUPS = 3

STDERR_FORMAT = "pyrust[%(process)d]: %(levelname)s: %(message)s"
FILE_FORMAT = "%(asctime)s " + STDERR_FORMAT  # 2026-11-30 12:00:00,123 pyrust[7]: INFO: ...
JOURNAL_FORMAT = "%(name)s: %(message)s"


def setup_logging(level: str, log_file: str | None = None) -> logging.Handler:
    """Send the ``pyrust`` loggers' records at ``level`` and above to one handler; return it.

    ``$JOURNAL_STREAM`` is removed from the environment (programs the workers
    run must not take the service's stream for their own).  Raise
    StartupError if ``log_file`` cannot be opened.
    """
    journal = _stderr_is_journal()
    if log_file:
        try:
            handler: logging.Handler = RotatingLog(log_file)
        except OSError as exc:
            raise StartupError("cannot open the log file %s: %s" % (log_file, exc)) from None
        handler.setFormatter(logging.Formatter(FILE_FORMAT))
    else:
        handler = logging.StreamHandler(_own_stderr())
        handler.setFormatter(JournalFormatter() if journal else logging.Formatter(STDERR_FORMAT))
    handler.addFilter(RepeatFilter())
    logger = logging.getLogger("pyrust")
    for old in logger.handlers[:]:
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return handler


def _stderr_is_journal() -> bool:
    """Pop ``$JOURNAL_STREAM``; return whether it names fd 2 ("DEV:INODE", as systemd sets it).

    A program started from a service inherits the variable with other
    stderrs (a pipe, a file), hence the comparison.
    """
    value = os.environ.pop("JOURNAL_STREAM", None)
    if not value:
        return False
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _own_stderr() -> TextIO:
    """Return a line-buffered text stream on a copy of fd 2.

    A worker lends fd 2 to the client's terminal during a run; a line logged
    then must still reach the log, not the user's screen.
    """
    try:
        fd = os.dup(2)  # close-on-exec: the programs' subprocesses do not get it
    except OSError:
        return sys.stderr
    return open(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace")


class RepeatFilter(logging.Filter):
    """Lets a warning of one kind through once per ``window`` seconds and counts the rest.

    The kind is (logger, level, message template): "worker 12 died" and
    "worker 13 died" are one kind.  The first record of a kind after its
    window ends carries the count: "... (N similar messages suppressed in the
    last M s)".  One dict lookup per record; ``clock`` is for tests.
    """

    def __init__(self, window: float = REPEAT_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self._clock = clock
        # kind -> [time it was last let through, suppressed since]
        self._kinds: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < REPEAT_LEVEL:
            return True
        msg = record.msg if isinstance(record.msg, str) else str(record.msg)
        kind = (record.name, record.levelno, msg)
        now = self._clock()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            # No '%' in the suffix, so the record formats with its args as before.
            record.msg = "%s (%d similar messages suppressed in the last %d s)" % (
                msg, seen[1], now - seen[0])
        if len(self._kinds) >= MAX_KINDS:
            self._forget(now)
        self._kinds[kind] = [now, 0]
        return True

    def _forget(self, now: float) -> None:
        """Drop the kinds whose window ended (all of them if none has: counts are lost)."""
        stale = [kind for kind, (since, _) in self._kinds.items() if now - since >= self.window]
        for kind in stale or list(self._kinds):
            del self._kinds[kind]


class JournalFormatter(logging.Formatter):
    """Formats for the journal: ``<PRIORITY>logger: message``, the prefix on every line.

    journald reads a syslog priority at the start of each line of a service's
    stderr; without one on a traceback's lines they would be filed as info.
    """

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = "<%d>" % syslog_priority(record.levelno)
        return prefix + super().format(record).replace("\n", "\n" + prefix)


def syslog_priority(levelno: int) -> int:
    """Return the syslog priority for a logging level: 2 crit, 3 err, 4 warning, 6 info, 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


class RotatingLog(logging.handlers.RotatingFileHandler):
    """A size-bounded log file shared by the supervisor and its workers, with fds 1 and 2 on it.

    Rolled over when a line would take it past ``max_bytes`` (FILE becomes
    FILE.1, FILE.1 becomes FILE.2, ..., ``backups`` kept).  Forked workers
    inherit the handler, so any process may roll the file over: it first
    locks the file (``flock`` on a descriptor of its own: the inherited one is
    shared, and so would be its lock), and a process whose file another one
    renamed reopens the path instead of rolling over again (a stat per
    record, as WatchedFileHandler does).

    Whenever this process's log moves to a new file, those of its fds 1 and 2
    that pointed at the old file are pointed at the new one, so stray output
    (a traceback from C, faulthandler, a print) lands in the current file.
    A worker's fds lent to a client's terminal during a run are left alone.
    """

    def __init__(self, path: str, max_bytes: int = LOG_MAX_BYTES,
                 backups: int = LOG_BACKUPS) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups,
                         encoding="utf-8", errors="backslashreplace")
        self._point_std_fds(None)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            old = self._identity()
            if old is not None and old != _identity(self.baseFilename):
                self._reopen()  # another process rolled it over (or it was removed)
                self._point_std_fds(old)
        except Exception:
            self.handleError(record)
            return
        super().emit(record)  # rolls over first if the line does not fit

    def doRollover(self) -> None:
        """Roll the file over, unless another process already did; fds 1 and 2 follow."""
        old = self._identity()
        try:
            lock = os.open(self.baseFilename, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            lock = None
        try:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released by the close below
            if lock is not None and old == _identity(lock) == _identity(self.baseFilename):
                super().doRollover()
            else:
                self._reopen()
        finally:
            if lock is not None:
                os.close(lock)
        self._point_std_fds(old)

    def _identity(self) -> tuple[int, int] | None:
        return None if self.stream is None else _identity(self.stream.fileno())

    def _reopen(self) -> None:
        """Write to the file the path names now."""
        if self.stream is not None:
            self.stream.close()
        self.stream = self._open()

    def _point_std_fds(self, old: tuple[int, int] | None) -> None:
        """Point fds 1 and 2 at the current file: both if ``old`` is None, else those
        that were on the file ``old`` identifies."""
        if self.stream is None:
            return
        for fd, stream in ((1, sys.__stdout__), (2, sys.__stderr__)):
            if old is None or _identity(fd) == old:
                try:
                    if stream is not None:  # None: python started without it
                        stream.flush()  # what it buffered belongs before the switch
                except (AttributeError, ValueError, OSError):
                    pass
                os.dup2(self.stream.fileno(), fd)


def _identity(target: str | int) -> tuple[int, int] | None:
    """Return (device, inode) of a path or an open fd, or None if there is none."""
    try:
        st = os.stat(target)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def release() -> None:
    """This process becomes a run's (it ends with the program): close pyrust's log
    fds, so the program finds only its own, as under python.  What pyrust
    itself still logs from here on (only its own failures) goes to the run's
    stderr, where the user sees it."""
    logger = logging.getLogger("pyrust")
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
        handler.close()
    fallback = logging.StreamHandler(sys.stderr)
    fallback.setFormatter(logging.Formatter(STDERR_FORMAT))
    logger.addHandler(fallback)
