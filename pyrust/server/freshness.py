"""Preloaded code is never stale.

Modules a run imports are imported in its own process, so edits to them are
always seen.  Only the modules the template preloaded can be stale: their
files (and the places a new file would shadow them) are watched, and

* the template, when the watcher says something changed, marks every worker
  it forked so far as stale *before* it reads the events, then rebuilds
  itself (drops and re-imports the preloaded modules) and forks new spares;
* a worker, before each run, asks the watcher whether events are pending
  (one ``poll`` that reads nothing) and then whether it was marked stale; if
  either is so, the run drops the preloaded modules from its own process and
  imports them afresh.

In that order there is no window: an edit that finished before a run started
has queued its event, which the worker sees pending, or the template has
read it, and had marked the worker stale before reading.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time

from pyrust.server.watch import AnyWatcher, changed_since, modules_to_watch, open_watcher

# For mypy only, which takes any name TYPE_CHECKING as true (python never runs
# this block).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterable

    from pyrust.server.scoreboard import Scoreboard

log = logging.getLogger("pyrust.supervisor")


class Freshness:
    """The preloaded modules, their watcher and the stale mark in the scoreboard."""

    def __init__(self, scoreboard: Scoreboard) -> None:
        self.scoreboard = scoreboard
        self.names: set[str] = set()        # modules the preload imported
        self.files: dict[str, str] = {}     # their files
        self.watcher: AnyWatcher | None = None
        self.born = 0             # the stale epoch a worker was forked at

    def preload(self, load: Callable[[], object]) -> None:
        """Call ``load()`` (which imports the preload list), then watch what it imported."""
        before, since = set(sys.modules), time.time_ns()
        load()
        self.names = set(sys.modules) - before
        self.files = modules_to_watch(before, sys.modules)
        if self.watcher is not None:
            self.watcher.close()
        self.watcher = open_watcher(self.files, list(sys.path)) if self.files else None
        if self.watcher is not None and changed_since(self.files, list(sys.path), since):
            self.scoreboard.bump_stale_epoch()  # edited while it was being imported
        self.born = self.scoreboard.stale_epoch()

    def fileno(self) -> int | None:
        """Return the watcher's fd for the template's loop to wait on, or None."""
        if self.watcher is None or self.watcher.fileno() < 0:
            return None
        return self.watcher.fileno()

    def changes(self) -> list[str]:
        """Template side, when the watcher's fd is readable: mark the workers stale,
        read the events, and return the relevant changed paths (the mark is taken
        back if there are none)."""
        self.scoreboard.bump_stale_epoch()
        changed: list[str] = self.watcher.read() if self.watcher is not None else []
        if not changed:
            self.scoreboard.unbump_stale_epoch()
        return changed

    def rebuild(self, load: Callable[[], object]) -> None:
        """Template side: drop the preloaded modules and import them afresh."""
        _drop(self.names)
        self.preload(load)

    def refresh(self, last: bool = False) -> bool:
        """Worker side, before a run: if a preloaded file may have changed, drop the
        preloaded modules so the run imports them afresh; return whether it did.

        ``last``: no other run follows in this process, so it lets go of the
        watcher (the program does not inherit its fd).
        """
        watcher = self.watcher
        if watcher is None:
            return False
        stale = watcher.pending() or self.scoreboard.stale_epoch() != self.born
        if stale:
            _drop(self.names)
            self.names = set()
        if stale or last:
            self.watcher = None  # once fresh, this process imports like python
            watcher.close()      # our copy only: the template's stays open
        return stale


def _drop(names: Iterable[str]) -> None:
    for name in names:
        sys.modules.pop(name, None)
    importlib.invalidate_caches()
