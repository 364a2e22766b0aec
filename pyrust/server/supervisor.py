"""The supervisor: forks the workers, replaces dead ones, stops them in order.

It never touches a request.  Signal handlers only record the signal (through
``signal.set_wakeup_fd``); the main loop wakes on that pipe and does the work.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import time

from pyrust.server.worker import Worker

log = logging.getLogger("pyrust.supervisor")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
#: A worker that exits with this status failed before serving; see _spawn.
WORKER_CRASHED = 70  # EX_SOFTWARE


def describe_exit(status: int) -> str:
    """Return how a process ended, from a ``waitpid`` status: 'exit 3', 'SIGKILL'."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "signal %d" % sig
        return "killed by %s" % name
    return "exit status %d" % os.waitstatus_to_exitcode(status)


class Supervisor:
    """Keeps ``config.workers`` workers serving ``listener`` until told to stop."""

    def __init__(self, config, listener, notifier) -> None:
        self.config = config
        self.listener = listener
        self.notifier = notifier
        self.workers: dict = {}  # pid -> start time (monotonic)
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def run(self) -> int:
        """Serve until a stop signal; return the process exit code (0 on a clean stop)."""
        self._install_signals()
        gc.freeze()  # keep the preloaded heap out of the workers' collections: less copy-on-write
        for _ in range(self.config.workers):
            self._spawn()
        self.notifier.notify("READY=1\nSTATUS=serving on %s with %d workers"
                             % (self.listener.path, self.config.workers))
        log.info("serving on %s (%s) with %d workers, pid %d", self.listener.path,
                 self.listener.source, self.config.workers, os.getpid())
        while not self.stopping:
            for signum in self._wait_for_signals(None):
                if signum in STOP_SIGNALS:
                    log.info("received %s, stopping", signal.Signals(signum).name)
                    self.stopping = True
            self._reap()
            if not self.stopping:
                while len(self.workers) < self.config.workers:
                    self._spawn()
        return self._shutdown()

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in STOP_SIGNALS + (signal.SIGCHLD,):
            # The handler does nothing: the wake-up byte carries the signal number.
            signal.signal(sig, _record_only)

    def _wait_for_signals(self, timeout: float | None) -> list:
        """Block until a signal arrives or ``timeout`` passes; return the signal numbers."""
        try:
            select.select([self._wake_r], [], [], timeout)
        except InterruptedError:
            pass
        try:
            return list(os.read(self._wake_r, 4096))
        except BlockingIOError:
            return []

    def _spawn(self) -> None:
        """Fork one worker.  The child never returns into the supervisor's code."""
        # Hold our signals across fork so the child cannot run the supervisor's
        # handlers (and write to its wake-up pipe) before it installs its own.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS + (signal.SIGCHLD,))
        supervisor_pid = os.getpid()
        pid = os.fork()
        if pid:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            self.workers[pid] = time.monotonic()
            return
        code = WORKER_CRASHED
        try:
            os.close(self._wake_r)
            os.close(self._wake_w)
            worker = Worker(self.listener.sock, self.config)
            worker.install_signals(supervisor_pid)
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            code = worker.run()
        except BaseException:
            log.exception("worker %d crashed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)

    def _reap(self) -> None:
        """Collect every exited worker and log how it ended."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            started = self.workers.pop(pid, None)
            if started is None:
                continue
            if self.stopping and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                log.debug("worker %d stopped", pid)
            else:
                log.warning("worker %d died after %.1f s (%s)%s", pid,
                            time.monotonic() - started, describe_exit(status),
                            "" if self.stopping else "; starting a replacement")

    def _shutdown(self) -> int:
        """Let in-flight requests finish, kill what is left at the deadline; return 0."""
        self._signal_workers(signal.SIGTERM)
        self.notifier.notify("STOPPING=1")
        deadline = time.monotonic() + self.config.graceful_timeout
        while self.workers:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("%d workers still busy after %g s; killing them",
                            len(self.workers), self.config.graceful_timeout)
                self._signal_workers(signal.SIGKILL)
                deadline = float("inf")
            self._wait_for_signals(None if left <= 0 else left)
            self._reap()
        self.listener.close()
        log.info("stopped")
        return 0

    def _signal_workers(self, sig: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _record_only(signum, frame) -> None:
    """Signal handler: the number already went to the wake-up fd; nothing else to do."""
