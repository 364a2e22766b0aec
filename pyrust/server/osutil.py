"""Operating-system details a worker needs, kept out of the request logic.

Linux and macOS differ here; each function says what it does on each.
"""

from __future__ import annotations

import _signal
import ctypes
import fcntl
import logging
import os
import resource
import signal
import sys

# For mypy only, which takes any name TYPE_CHECKING as true: a worker imports
# no typing (the programs it runs would find it already imported).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any, Callable, Container, Iterable, Iterator

log = logging.getLogger("pyrust.osutil")


class _Libc:
    """The C library, loaded on first use and kept: the template loads it once
    and every worker it forks calls it without paying ``dlopen`` again."""

    _cdll: ctypes.CDLL | None = None

    def load(self) -> None:
        """Load the library now (in the template, before it forks)."""
        self.prctl  # noqa: B018 - the attribute lookup loads it

    def __getattr__(self, name: str) -> Any:
        """Return the C function ``name`` (loading the library on first use)."""
        if _Libc._cdll is None:
            _Libc._cdll = ctypes.CDLL(None, use_errno=True)
        return getattr(_Libc._cdll, name)


libc = _Libc()


def rss(pid: int) -> int | None:
    """Return the resident memory of process ``pid`` in bytes, or None if unknown.

    Linux reads ``/proc/PID/statm``; elsewhere psutil answers where the
    interpreter has it (a template runs the user's interpreter, which may not).
    """
    try:
        with open("/proc/%d/statm" % pid, "rb") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None  # Linux: the process is gone
    except (OSError, ValueError, IndexError):
        return None
    try:
        import psutil
        return psutil.Process(pid).memory_info().rss
    except Exception:  # no psutil here, or the process is gone
        return None


def exited_children() -> Iterator[tuple[int, int, resource.struct_rusage]]:
    """Yield ``(pid, wait status, resource usage)`` of each child that has ended,
    reaping it, until none is left to collect right now."""
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status, usage


def terminate_with_parent() -> None:
    """Have the kernel send SIGTERM when the parent exits (Linux ``PR_SET_PDEATHSIG``).

    Elsewhere this does nothing; the supervisor's normal stop still reaches
    every worker, only a SIGKILLed supervisor leaves them to finish alone.
    """
    if not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))


def limit_address_space(limit: int) -> None:
    """Cap this process's address space at ``limit`` bytes (``RLIMIT_AS``), so a
    runaway allocation raises MemoryError instead of exhausting the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


class StandardFds:
    """Keeps copies of fds 0-2 so they can be put back after a program closed or
    replaced them; otherwise the next accepted socket could become fd 1."""

    def __init__(self) -> None:
        self._saved = [_copy_or_null(fd) for fd in (0, 1, 2)]

    def restore(self) -> None:
        """Make fds 0-2 what they were (three ``dup2`` calls)."""
        for target, saved in enumerate(self._saved):
            os.dup2(saved, target)

    def close(self) -> None:
        """Close the copies."""
        for saved in self._saved:
            os.close(saved)


def _copy_or_null(fd: int) -> int:
    """Return a close-on-exec copy of ``fd``, or of /dev/null if ``fd`` is not open."""
    try:
        return os.dup(fd)  # os.dup makes the copy non-inheritable
    except OSError:
        return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


def place_fds(fds: Iterable[int], targets: Iterable[int]) -> None:
    """Put the received ``fds`` at the client's numbers: the first three at 0, 1
    and 2, the others at ``targets`` (in order); close the received copies.

    Every received fd first moves above every target, so no placement
    overwrites an fd still to be placed.  The placed fds are inheritable, as
    they were in the client; nothing else of the client's is.
    """
    wanted = [0, 1, 2] + list(targets)
    floor = max(wanted) + 1
    moved = []
    for fd in fds:
        moved.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor))
        os.close(fd)
    for fd, target in zip(moved, wanted):
        os.dup2(fd, target)  # dup2 makes the target inheritable
        os.close(fd)


#: Signals a Python program starts with ignored (python's own start-up does that).
_PYTHON_IGNORES = {getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ")
                   if hasattr(signal, name)}


def python_signals(keep: Container[int] = ()) -> None:
    """Give every signal the disposition ``python`` starts with: SIGINT raises
    KeyboardInterrupt, SIGPIPE and SIGXFSZ are ignored, the rest default;
    the signal mask is empty.  Handlers of the signals in ``keep`` stay."""
    handler: Callable[[int, FrameType | None], Any] | signal.Handlers
    for sig in signal.valid_signals():
        if sig in keep or sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        if sig == signal.SIGINT:
            handler = signal.default_int_handler
        else:
            handler = signal.SIG_IGN if sig in _PYTHON_IGNORES else signal.SIG_DFL
        if _signal.getsignal(sig) == handler:
            continue  # most are default already: no system call for them
        try:
            signal.signal(sig, handler)
        except (OSError, ValueError):  # signals the OS will not let anyone catch
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def close_all_fds() -> None:
    """Close every fd of this process (errors ignored)."""
    for listing in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(listing)
        except OSError:
            continue
        for name in names:
            try:
                os.close(int(name))
            except OSError:  # the listing's own fd, already closed
                pass
        return


def exit_as(code: int) -> None:
    """End this process with exit status ``code``; a negative code means death by
    signal ``-code``, as python dies after an uncaught KeyboardInterrupt."""
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (-code,))
        os.kill(os.getpid(), -code)
        code = 128 - code  # only if the signal did not end the process
    os._exit(code & 0xFF)
