"""Spacing out forks while workers keep failing at start.

A template that cannot produce a working worker (a preloaded module that
breaks start-up, an address-space limit below what the preloads already
take) must not make the supervisor fork in a loop.  gunicorn stops with
WORKER_BOOT_ERROR; pyrust waits longer and longer between attempts, one
worker at a time, and resumes by itself once the cause goes away.
"""

from __future__ import annotations

#: A worker that dies this soon after its fork, having answered nothing,
#: failed to start.
BOOT_GRACE = 5.0
#: The pause before the next fork after such a failure, doubled at each one in
#: a row up to the ceiling.
BOOT_BACKOFF_FIRST = 0.1
BOOT_BACKOFF_MAX = 30.0


class BootBackoff:
    """Counts start-up failures in a row and says when the next fork may happen."""

    def __init__(self) -> None:
        self.failures = 0        # in a row
        self.not_before = 0.0    # time.monotonic() before which no worker is forked

    def failed(self, now: float) -> float:
        """Count one more failure; return the pause before the next fork."""
        self.failures += 1
        delay = min(BOOT_BACKOFF_FIRST * 2 ** (self.failures - 1), BOOT_BACKOFF_MAX)
        self.not_before = now + delay
        return delay

    def recovered(self) -> None:
        """A worker started: forks go at full speed again."""
        self.failures, self.not_before = 0, 0.0

    def wait(self, now: float) -> float:
        """Return seconds until a worker may be forked (0: now)."""
        return max(0.0, self.not_before - now)
