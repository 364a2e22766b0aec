"""Operating-system details a worker needs, kept out of the request logic.

Linux and macOS differ here; each function says what it does on each.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import sys

log = logging.getLogger("pyrust.worker")

def terminate_with_parent() -> None:
    """Have the kernel send SIGTERM when the parent exits (Linux ``PR_SET_PDEATHSIG``).

    Elsewhere this does nothing; the supervisor's normal stop still reaches
    every worker, only a SIGKILLed supervisor leaves them to finish alone.
    """
    if not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
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


def _copy_or_null(fd: int) -> int:
    """Return a close-on-exec copy of ``fd``, or of /dev/null if ``fd`` is not open."""
    try:
        return os.dup(fd)  # os.dup makes the copy non-inheritable
    except OSError:
        return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
