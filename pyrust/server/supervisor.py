"""The supervisor: forks the workers, replaces dead ones, reloads, stops them in order.

It never touches a request.  Signal handlers only record the signal (through
``signal.set_wakeup_fd``); the main loop wakes on that pipe, or when its next
timed duty falls due (watchdog ping, status, idle exit), and does the work.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import time

import psutil  # imported at start: a first use mid-run would look like growth

from pyrust.config import MAX_WORKERS
from pyrust.errors import PyrustError
from pyrust.server.control import ServiceInfo
from pyrust.server.scoreboard import Scoreboard
from pyrust.server.worker import GROW, Worker

log = logging.getLogger("pyrust.supervisor")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
HANDLED_SIGNALS = STOP_SIGNALS + (signal.SIGCHLD, signal.SIGHUP)
#: A worker that exits with this status crashed in pyrust's own code.
WORKER_CRASHED = 70  # EX_SOFTWARE
#: Scoreboard slots: room for every worker of two generations during a reload.
MAX_SLOTS = 2 * MAX_WORKERS
STATUS_INTERVAL = 5.0  # seconds between STATUS= updates to the service manager
#: Seconds between checks for stuck, oversized and surplus workers.
HOUSEKEEPING_INTERVAL = 1.0
#: A worker that dies this soon after its fork, having answered nothing,
#: failed to start; so does every worker of a template that cannot produce one.
BOOT_GRACE = 5.0
#: The pause before the next fork after such a failure, doubled at each one in
#: a row up to the ceiling, so a broken start-up never becomes a fork loop.
BOOT_BACKOFF_FIRST = 0.1
BOOT_BACKOFF_MAX = 30.0


def describe_exit(status: int) -> str:
    """Return how a process ended, from a ``waitpid`` status: 'exit status 3', 'killed by SIGKILL'."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "signal %d" % sig
        return "killed by %s" % name
    return "exit status %d" % os.waitstatus_to_exitcode(status)


class WorkerInfo:
    """What the supervisor knows of one worker."""

    __slots__ = ("slot", "started", "generation")

    def __init__(self, slot: int, generation: int) -> None:
        self.slot, self.started, self.generation = slot, time.monotonic(), generation


class BootBackoff:
    """Spaces out forks while workers keep failing at start (gunicorn's
    WORKER_BOOT_ERROR, but recovering by itself when the cause goes away)."""

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
        self.failures, self.not_before = 0, 0.0

    def wait(self, now: float) -> float:
        """Return seconds until a worker may be forked (0: now)."""
        return max(0.0, self.not_before - now)


class Supervisor:
    """Keeps ``config.workers`` workers serving ``listener`` until told to stop.

    ``reload_config`` is called on SIGHUP and returns the new configuration
    (raising PyrustError keeps the old one).
    """

    def __init__(self, config, listener, notifier, reload_config=None) -> None:
        self.config = config
        self.listener = listener
        self.notifier = notifier
        self.reload_config = reload_config
        self.workers: dict = {}  # pid -> WorkerInfo
        self.generation = 0
        self.scoreboard = Scoreboard(MAX_SLOTS)
        self.started = time.monotonic()
        self.info = ServiceInfo(listener.source, listener.path, time.time(), self.scoreboard)
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._watchdog = notifier.watchdog_interval()
        self._next_status = 0.0
        self._next_rss_check = 0.0
        self._grow_requested = False
        self.boot = BootBackoff()
        # Watch the listener too while no worker accepts: a connection arriving
        # then is one that would wait, so the pool grows for it.
        self._watch_listener = False

    def run(self) -> int:
        """Serve until a stop signal (or idle exit); return the exit code (0 on a clean stop)."""
        self._install_signals()
        gc.freeze()  # keep the preloaded heap out of the workers' collections: less copy-on-write
        self._spawn_missing()
        self.notifier.notify("READY=1\nSTATUS=%s" % self.status_line())
        log.info("serving on %s (%s) with %d workers, pid %d", self.listener.path,
                 self.listener.source, self.config.workers, os.getpid())
        while not self.stopping:
            for signum in self._wait_for_signals(self._next_duty()):
                self._on_signal(signum)
            if self._grow_requested or self._watch_listener:
                self._grow()
            self._reap()
            if not self.stopping:
                self._spawn_missing()
                self._timed_duties()
        return self._shutdown()

    # -- signals ---------------------------------------------------------------

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            # The handler does nothing: the wake-up byte carries the signal number.
            signal.signal(sig, _record_only)

    def _wait_for_signals(self, timeout: float | None) -> list:
        """Block until a signal (or a worker's message) arrives, a watched listener
        has a waiting connection, or ``timeout`` passes; return the signal numbers."""
        watched = [self._wake_r]
        if self._watch_listener and not self.stopping:
            watched.append(self.listener.sock)
        try:
            select.select(watched, [], [], timeout)
        except InterruptedError:
            pass
        try:
            return list(os.read(self._wake_r, 4096))
        except BlockingIOError:
            return []

    def _on_signal(self, signum: int) -> None:
        if signum == GROW[0]:
            self._grow_requested = True
        elif signum in STOP_SIGNALS:
            log.info("received %s, stopping", signal.Signals(signum).name)
            self.stopping = True
        elif signum == signal.SIGHUP and not self.stopping:
            self.reload()

    # -- workers ---------------------------------------------------------------

    def _spawn_missing(self) -> None:
        if self.boot.wait(time.monotonic()):
            return
        current = sum(1 for w in self.workers.values() if w.generation == self.generation)
        missing = self.config.workers - current
        # While workers fail at start, one probe at a time, not a pool's worth.
        for _ in range(min(missing, 1) if self.boot.failures else missing):
            self._spawn()

    def _spawn(self) -> None:
        """Fork one worker of the current generation.  The child never returns here."""
        index = self.scoreboard.claim()
        # Hold our signals across fork so the child cannot run the supervisor's
        # handlers (and write to its wake-up pipe) before it installs its own.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        supervisor_pid = os.getpid()
        pid = os.fork()
        if pid:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            self.workers[pid] = WorkerInfo(index, self.generation)
            return
        code = WORKER_CRASHED
        try:
            os.close(self._wake_r)
            worker = Worker(self.listener.sock, self.config,
                            self.scoreboard.attach(index, os.getpid()), self._wake_w, self.info)
            worker.start(supervisor_pid)
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            code = worker.run()
        except BaseException:
            log.exception("worker %d crashed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)

    def _reap(self) -> None:
        """Collect every exited worker, free its slot and log how it ended."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            info = self.workers.pop(pid, None)
            if info is None:
                continue
            state = self.scoreboard.release(info.slot)
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

    def _grow(self) -> None:
        """No worker accepts: add one if a connection waits, up to the pool's ceiling.

        If none waits yet, watch the listener so the next one wakes us.
        """
        self._grow_requested = self._watch_listener = False
        if self.boot.wait(time.monotonic()):
            return  # the pause's end wakes the loop, which forks then
        current = sum(1 for w in self.workers.values() if w.generation == self.generation)
        if self.scoreboard.accepting_count() > 0 or current >= self.config.pool_ceiling:
            return
        if select.select([self.listener.sock], [], [], 0)[0]:
            self._spawn()  # its slot counts as accepting at once: no double growth
            log.debug("a connection waits and no worker accepts: grew the pool to %d",
                      current + 1)
        else:
            self._watch_listener = True

    def _housekeeping(self, now: float) -> None:
        """Kill workers stuck past the time limit, retire oversized and surplus ones."""
        if self.boot.failures and any(now - w.started >= BOOT_GRACE
                                      for w in self.workers.values()):
            log.info("workers start again, after %d that failed", self.boot.failures)
            self.boot.recovered()
        limit = self.config.request_timeout
        surplus = sum(1 for w in self.workers.values()
                      if w.generation == self.generation) - self.config.workers
        # Newest first: when the pool shrinks, the oldest workers, whose caches
        # are warmest, stay.
        for pid, info in sorted(self.workers.items(), key=lambda item: -item[1].started):
            state = self.scoreboard.read(info.slot)
            if limit and state.busy_since > 0 and now - state.busy_since > limit + self.config.kill_grace:
                log.warning("worker %d: request still running %g s after its %g s time limit "
                            "ignored the interrupt; killing the worker",
                            pid, self.config.kill_grace, limit)
                self._signal_workers(signal.SIGKILL, [pid])
            elif surplus > 0 and info.generation == self.generation and \
                    state.busy_since == 0 and now - state.idle_since > self.config.shrink_after:
                log.debug("worker %d idle for %g s: shrinking the pool", pid, self.config.shrink_after)
                self._retire(pid, info)
                surplus -= 1
        if self.config.max_worker_rss and now >= self._next_rss_check:
            self._next_rss_check = now + STATUS_INTERVAL
            self._retire_oversized()

    def _retire(self, pid: int, info: WorkerInfo) -> None:
        """Stop one worker gracefully (it finishes its request) without replacing it now."""
        info.generation = -1  # no longer counts towards the current pool
        self._signal_workers(signal.SIGTERM, [pid])

    def _retire_oversized(self) -> None:
        """Replace workers whose resident memory passed max_worker_rss (between requests:
        SIGTERM lets the request in flight finish)."""
        for pid, info in list(self.workers.items()):
            if info.generation != self.generation:
                continue
            try:
                rss = psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
            if rss > self.config.max_worker_rss:
                log.info("worker %d uses %d MiB, over max_worker_rss; replacing it",
                         pid, rss >> 20)
                self._retire(pid, info)

    def _signal_workers(self, sig: int, pids=None) -> None:
        for pid in list(self.workers if pids is None else pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def reload(self) -> None:
        """Re-read the configuration, start a new generation of workers, retire the old one.

        Old workers finish their requests in flight; new connections go to the
        new workers, so clients see no failure.
        """
        self.notifier.notify("RELOADING=1\nMONOTONIC_USEC=%d" % (time.monotonic_ns() // 1000))
        if self.reload_config is not None:
            try:
                self.config = self.reload_config()
            except PyrustError as exc:
                log.error("reload: keeping the running configuration: %s", exc)
        old = list(self.workers)
        self.generation += 1
        self._spawn_missing()
        self._signal_workers(signal.SIGTERM, old)
        log.info("reloaded: %d new workers, %d retiring", self.config.workers, len(old))
        self.notifier.notify("READY=1\nSTATUS=%s" % self.status_line())

    # -- timed duties: watchdog, status, idle exit -------------------------------

    def _next_duty(self) -> float | None:
        """Return seconds until the next timed duty, or None if there is none."""
        waits = [self._watchdog, STATUS_INTERVAL if self.notifier.active else None,
                 HOUSEKEEPING_INTERVAL, self.boot.wait(time.monotonic()) or None]
        if self.config.idle_exit:
            waits.append(max(0.0, self.config.idle_exit - self._idle_for(time.monotonic())))
        waits = [w for w in waits if w is not None]
        return min(waits) if waits else None

    def _timed_duties(self) -> None:
        now = time.monotonic()
        self._housekeeping(now)
        if self._watchdog:
            self.notifier.notify("WATCHDOG=1")
            if not self.notifier.active:  # its socket is gone: nobody waits for pings
                self._watchdog = None
        if self.notifier.active and now >= self._next_status:
            self._next_status = now + STATUS_INTERVAL
            self.notifier.notify("STATUS=%s" % self.status_line())
        if self.config.idle_exit and self._idle_for(now) >= self.config.idle_exit:
            log.info("no request for %g s, exiting", self.config.idle_exit)
            self.stopping = True

    def _idle_for(self, now: float) -> float:
        """Return seconds since any worker last ended a request (0 while one is busy)."""
        last = 0.0
        for info in self.workers.values():
            state = self.scoreboard.read(info.slot)
            if state.busy_since:
                return 0.0
            last = max(last, state.idle_since)
        return now - last if last else 0.0

    def status_line(self) -> str:
        """Return the one-line status shown by ``systemctl status``."""
        totals = self.scoreboard.totals(recent=0)
        busy = sum(1 for w in self.workers.values() if self.scoreboard.read(w.slot).busy_since)
        line = ("%d workers (%d busy), %d runs served, %d failed, up %ds"
                % (len(self.workers), busy, totals.served, totals.failed,
                   time.monotonic() - self.started))
        if self.boot.failures:
            line += "; workers fail at start (%d in a row, see the log)" % self.boot.failures
        return line

    # -- stop --------------------------------------------------------------------

    def _shutdown(self) -> int:
        """Let in-flight requests finish, kill what is left at the deadline; return 0."""
        self._signal_workers(signal.SIGTERM)
        self.notifier.notify("STOPPING=1")
        deadline = time.monotonic() + self.config.graceful_timeout
        while self.workers:
            now = time.monotonic()
            if now >= deadline:
                log.warning("%d workers still busy after %g s; killing them",
                            len(self.workers), self.config.graceful_timeout)
                self._signal_workers(signal.SIGKILL)
                deadline = float("inf")
            timeout = None if deadline == float("inf") else deadline - now
            if self._watchdog:  # a long graceful stop must not look like a hang
                self.notifier.notify("WATCHDOG=1")
                timeout = self._watchdog if timeout is None else min(timeout, self._watchdog)
            self._wait_for_signals(timeout)
            self._reap()
        self.listener.close()
        log.info("stopped")
        return 0


def _record_only(signum, frame) -> None:
    """Signal handler: the number already went to the wake-up fd; nothing else to do."""
