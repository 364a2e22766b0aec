"""The supervisor: the warm template that forks spares, and the terminal of every run.

It has imported what the configuration preloads; it forks spare workers,
keeps ``config.workers`` of them waiting in ``accept()`` (a new one as soon
as one takes a connection, up to ``pool_ceiling`` workers in all), holds a
copy of every connection so it can answer for a worker that dies (see
``terminals``), reloads, and stops them in order.  It never runs a request.

Signal handlers only record the signal (through ``signal.set_wakeup_fd``);
the main loop wakes on that pipe, on a worker's message, on a client of a
run, or when its next timed duty falls due, and does the work.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import select
import signal
import time

from pyrust.config import MAX_WORKERS
from pyrust.errors import PyrustError
from pyrust.server import osutil
from pyrust.server.backoff import BOOT_GRACE, BootBackoff
from pyrust.server.freshness import Freshness
from pyrust.server.scoreboard import TERMINAL, Scoreboard
from pyrust.server.terminals import Terminals, describe_exit, exit_code
from pyrust.server.worker import ServiceInfo, Worker, new_executor

# For mypy only, which takes any name TYPE_CHECKING as true (python never runs
# this block).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Callable, Iterable

    from pyrust.config import Config
    from pyrust.server.activation import Listener
    from pyrust.server.executor import Executor
    from pyrust.server.notify import Notifier
    from pyrust.server.scoreboard import WorkerState
    from pyrust.server.template import ChannelNotifier

log = logging.getLogger("pyrust.supervisor")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
HANDLED_SIGNALS = STOP_SIGNALS + (signal.SIGCHLD, signal.SIGHUP)
#: A worker that exits with this status crashed in pyrust's own code.
WORKER_CRASHED = 70  # EX_SOFTWARE
#: Scoreboard slots: room for every worker of two generations during a reload.
MAX_SLOTS = 2 * MAX_WORKERS
RSS_CHECK_INTERVAL = 5.0  # seconds between checks of the workers' resident memory
#: Seconds between checks for stuck and oversized workers.
HOUSEKEEPING_INTERVAL = 1.0


class WorkerInfo:
    """What the supervisor knows of one worker."""

    __slots__ = ("slot", "started", "generation", "retiring")

    def __init__(self, slot: int, generation: int) -> None:
        self.slot, self.started, self.generation = slot, time.monotonic(), generation
        self.retiring = False


class Supervisor:
    """Keeps ``config.workers`` spares ready on ``listener`` until told to stop.

    ``notifier`` tells the service READY=1 and the like; ``preload(names)``
    imports the preload list (raising PyrustError if one fails).  The
    watchdog, the status line, the idle exit and re-reading the
    configuration are the service's, which reads the scoreboard.
    """

    def __init__(self, config: Config, listener: Listener,
                 notifier: Notifier | ChannelNotifier,
                 preload: Callable[[Iterable[str]], None] = lambda names: None,
                 scoreboard: Scoreboard | None = None) -> None:
        self.config = config
        self.listener = listener
        self.notifier = notifier
        self._preload = preload
        self.workers: dict[int, WorkerInfo] = {}  # pid -> WorkerInfo
        self.generation = 0
        self.scoreboard = scoreboard or Scoreboard(MAX_SLOTS)
        self.terminals = Terminals()
        self.freshness = Freshness(self.scoreboard)
        self.info = ServiceInfo(listener.source, listener.path, time.time(), self.scoreboard,
                                self.freshness)
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._next_rss_check = 0.0
        self._next_housekeeping = 0.0  # time.monotonic() of the next _housekeeping
        self._timed_out: set[int] = set()  # pids killed for ignoring their time limit
        self.boot = BootBackoff()
        # Made by the template, copied into every worker it forks.
        self._executor: Executor | None = None

    def preload(self) -> None:
        """Import the configuration's preload list into the template, and watch it.

        Raise PyrustError if a module fails to import.
        """
        self.freshness.preload(lambda: self._preload(self.config.preload))

    def run(self) -> int:
        """Serve until a stop signal (or idle exit); return the exit code (0 on a clean stop)."""
        self._install_signals()
        gc.freeze()  # keep the preloaded heap out of the workers' collections: less copy-on-write
        self._spawn_missing()
        self.notifier.notify("READY=1")
        log.debug("serving on %s (%s) with %d spare workers, pid %d", self.listener.path,
                 self.listener.source, self.config.workers, os.getpid())
        while not self.stopping:
            for signum in self._wait(self._next_duty()):
                self._on_signal(signum)
            self._reap()
            if not self.stopping:
                self._spawn_missing()
                now = time.monotonic()
                if now >= self._next_housekeeping:  # once a second, not once per fork
                    self._next_housekeeping = now + HOUSEKEEPING_INTERVAL
                    self._housekeeping(now)
        return self._shutdown()

    # -- waiting: signals, workers' messages, clients of runs -------------------

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            # The handler does nothing: the wake-up byte carries the signal number.
            signal.signal(sig, _record_only)

    def _wait(self, timeout: float | None) -> list:
        """Block until a signal arrives, a worker or a run's client says something, or
        ``timeout`` passes; take what the workers said; return the signal numbers."""
        watched = [self._wake_r] + self.terminals.watched()
        stale_fd = self.freshness.fileno()
        if stale_fd is not None and not self.stopping:
            watched.append(stale_fd)
        try:
            readable = select.select(watched, [], [], timeout)[0]
        except InterruptedError:
            readable = []
        if self.terminals.channel in readable:
            self.terminals.receive()
        self.terminals.relay(readable)
        if stale_fd is not None and stale_fd in readable:
            self._rebuild_if_stale()
        try:
            return list(os.read(self._wake_r, 4096))
        except BlockingIOError:
            return []

    def _on_signal(self, signum: int) -> None:
        if signum in STOP_SIGNALS:
            log.info("received %s, stopping", signal.Signals(signum).name)
            self.stopping = True
        elif signum == signal.SIGHUP and not self.stopping:
            self.reload()

    # -- workers ---------------------------------------------------------------

    def _spawn_missing(self) -> None:
        """Fork spares until ``config.workers`` wait, within the pool's ceiling."""
        if self.boot.wait(time.monotonic()):
            return
        spares = sum(1 for w in self.workers.values() if w.generation == self.generation
                     and self.scoreboard.read(w.slot).spare)
        missing = min(self.config.workers - spares, self.config.pool_ceiling - len(self.workers))
        # While workers fail at start, one probe at a time, not a pool's worth.
        for _ in range(min(missing, 1) if self.boot.failures else missing):
            self._spawn()

    def _spawn(self) -> None:
        """Fork one spare of the current generation.  The child never returns here."""
        if self._executor is None:
            self._executor = new_executor(self.config)
            osutil.libc.load()  # here, once, not in every worker
            gc.freeze()  # what preparing the executor left, too
        index = self.scoreboard.claim()
        # Hold our signals across fork so the child cannot run the supervisor's
        # handlers (and write to its wake-up pipe) before it installs its own.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        supervisor_pid = os.getpid()
        began = time.perf_counter()
        pid = os.fork()
        if pid:
            self.scoreboard.record_fork(time.perf_counter() - began)
            self.scoreboard.set_pid(index, pid)
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            self.workers[pid] = WorkerInfo(index, self.generation)
            return
        code = WORKER_CRASHED
        try:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.terminals.in_child()
            self.listener.in_child()
            worker = Worker(self.listener.sock, self.config,
                            self.scoreboard.attach(index, os.getpid()),
                            self.terminals.worker_end, self.info, supervisor_pid,
                            self._executor)
            worker.start()
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            code = worker.run()
        except BaseException:
            log.exception("worker %d crashed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)

    def _reap(self) -> None:
        """Answer the clients of runs whose workers announced their exit; collect
        every exited worker: answer its client if it still waits, free its slot,
        and log how it ended."""
        for pid in list(self.terminals.running):
            info = self.workers.get(pid)
            status = self.scoreboard.announced_exit(info.slot) if info is not None else None
            if status is not None:
                self.terminals.exiting(pid, status)
        for pid, status, usage in osutil.exited_children():
            info = self.workers.pop(pid, None)
            if info is not None:
                # A worker says it took a connection before it can end: take
                # what it said now, or its copy of the connection would be
                # read after its death and held forever.
                self.terminals.receive()
                self._ended(pid, status, info, usage)

    def _ended(self, pid: int, status: int, info: WorkerInfo,
               usage: resource.struct_rusage) -> None:
        """Account for a worker that is gone, log how it ended, then answer its client
        (so whoever reads the answer finds the log written)."""
        kind = self.scoreboard.kind(info.slot)
        state = self.scoreboard.read(info.slot)
        run = self.terminals.run_of(pid)
        if run is not None or (kind == TERMINAL and state.busy_since):
            # A run on the client's terminal: the process was the run.
            code = exit_code(status)
            duration = self.scoreboard.record_run(info.slot, code == 0)
            if run is not None:
                log.debug("run on a connection from pid %d: form %s, %d bytes, exit %d "
                          "(status %d), %.3f ms", run.client_pid, run.form, run.size, code,
                          0 if code == 0 else 1, duration * 1000)
            self.boot.recovered()
        else:
            self._log_end(pid, status, info, state)
        self.scoreboard.release(info.slot, usage)
        self.scoreboard.set_start_failures(self.boot.failures)
        self.terminals.worker_ended(pid, status, state, kind, pid in self._timed_out)
        self._timed_out.discard(pid)

    def _log_end(self, pid: int, status: int, info: WorkerInfo, state: WorkerState) -> None:
        """Log how a worker ended; count it as a start-up failure if it is one."""
        requests = state.served + state.failed + state.control
        lived = time.monotonic() - info.started
        if requests:
            self.boot.recovered()
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            log.debug("worker %d stopped after %d requests", pid, requests)
        elif not requests and not state.busy_since and lived < BOOT_GRACE:
            delay = self.boot.failed(time.monotonic())
            log.error("worker %d failed at start (%s, %.2f s after its fork; %d in a row); "
                      "next fork in %g s", pid, describe_exit(status), lived,
                      self.boot.failures, delay)
        else:
            log.warning("worker %d died %s after %.1f s (%s)", pid,
                        "while running a request" if state.busy_since > 0 else "idle",
                        lived, describe_exit(status))

    def _housekeeping(self, now: float) -> None:
        """Kill workers stuck past the time limit; retire oversized ones."""
        if self.boot.failures and any(now - w.started >= BOOT_GRACE
                                      for w in self.workers.values()):
            log.info("workers start again, after %d that failed", self.boot.failures)
            self.boot.recovered()
            self.scoreboard.set_start_failures(0)
        limit = self.config.request_timeout
        for pid, info in list(self.workers.items()):
            state = self.scoreboard.read(info.slot)
            # A run on the client's terminal has no limit of the service's: its
            # client's Ctrl-C and its going away are the user's limits.
            if limit and state.busy_since > 0 and pid not in self._timed_out and \
                    now - state.busy_since > limit + self.config.kill_grace and \
                    self.scoreboard.kind(info.slot) != TERMINAL:
                log.warning("worker %d: request still running %g s after its %g s time limit "
                            "ignored the interrupt; killing the worker",
                            pid, self.config.kill_grace, limit)
                self._timed_out.add(pid)
                self._kill(pid, signal.SIGKILL)
        if self.config.max_worker_rss and now >= self._next_rss_check:
            self._next_rss_check = now + RSS_CHECK_INTERVAL
            self._retire_oversized()

    def _retire(self, pid: int, info: WorkerInfo) -> None:
        """End one worker gracefully: a spare at once, a connected one once its
        request in flight is answered (it is asked through the scoreboard, and
        its wait for a next request is cut short).  A run is never signalled.
        Safe to call again (the stop loop does, for workers that just connected)."""
        info.generation = -1  # no longer counts towards the current pool
        self.scoreboard.ask_to_retire(info.slot)
        if self.scoreboard.kind(info.slot) == TERMINAL:
            return  # the process ends with its run
        if self.terminals.shut_read(pid):
            return
        if not info.retiring and self.scoreboard.read(info.slot).spare:
            info.retiring = True
            self._kill(pid, signal.SIGTERM)

    def _retire_oversized(self) -> None:
        """Replace workers whose resident memory passed max_worker_rss (between requests)."""
        for pid, info in list(self.workers.items()):
            if info.generation != self.generation:
                continue
            rss = osutil.rss(pid)
            if rss is not None and rss > self.config.max_worker_rss:
                log.info("worker %d uses %d MiB, over max_worker_rss; replacing it",
                         pid, rss >> 20)
                self._retire(pid, info)

    def _kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)  # a child not yet reaped: the pid is still ours
        except ProcessLookupError:
            pass

    def reload(self) -> None:
        """SIGHUP: start a new generation of spares, retire the old one.

        Old workers finish their requests in flight; new connections go to the
        new spares, so clients see no failure.  (A reload of the configuration
        is the service's: it replaces whole templates.)
        """
        self.notifier.notify("RELOADING=1\nMONOTONIC_USEC=%d" % (time.monotonic_ns() // 1000))
        self._new_generation()

    def _rebuild_if_stale(self) -> None:
        """A preloaded module's file (or one that would shadow it) changed: import
        the preloads afresh and replace the spares, as a reload does."""
        changed = self.freshness.changes()
        if not changed:
            return
        log.info("preloaded code changed (%s): rebuilding the template",
                 ", ".join(changed[:5]) + (" and %d more" % (len(changed) - 5)
                                           if len(changed) > 5 else ""))
        self.notifier.notify("RELOADING=1\nMONOTONIC_USEC=%d" % (time.monotonic_ns() // 1000))
        try:
            self.freshness.rebuild(lambda: self._preload(self.config.preload))
        except PyrustError as exc:  # the new code does not import: runs import it themselves
            log.error("rebuilding the template: %s; runs import the preloads themselves "
                      "until the next change", exc)
        self._new_generation()

    def _new_generation(self) -> None:
        """Fork spares of a new generation and retire every older worker."""
        old = list(self.workers.items())
        self.generation += 1
        self._executor = None  # the configuration (its limits) may have changed
        for pid, info in old:
            self._retire(pid, info)
        self._spawn_missing()
        log.info("reloaded: %d new spares, %d workers retiring", self.config.workers, len(old))
        self.notifier.notify("READY=1")

    # -- timed duties: stuck and oversized workers, start-up backoff ----------------

    def _next_duty(self) -> float:
        """Return seconds until the next timed duty."""
        now = time.monotonic()
        housekeeping = max(0.0, self._next_housekeeping - now)
        backoff = self.boot.wait(now)
        return min(housekeeping, backoff) if backoff else housekeeping

    # -- stop --------------------------------------------------------------------

    def _shutdown(self) -> int:
        """Let in-flight requests finish, kill what is left at the deadline; return 0."""
        self.notifier.notify("STOPPING=1")
        deadline = time.monotonic() + self.config.graceful_timeout
        while self.workers:
            for pid, info in list(self.workers.items()):
                self._retire(pid, info)
            now = time.monotonic()
            if now >= deadline:
                log.warning("%d workers still busy after %g s; killing them",
                            len(self.workers), self.config.graceful_timeout)
                for pid in list(self.workers):
                    self._kill(pid, signal.SIGKILL)
                deadline = float("inf")
            self._wait(None if deadline == float("inf") else deadline - now)
            self._reap()
        self.listener.close()
        log.info("stopped")
        return 0


def _record_only(signum: int, frame: FrameType | None) -> None:
    """Signal handler: the number already went to the wake-up fd; nothing else to do."""
