"""What the figures were measured on: machine, interpreter, commit and load."""

from __future__ import annotations

import os
import platform
import resource
import socket
import subprocess
import sys
import time

from bench.servers import ROOT


def cpu_model() -> str:
    """Return the CPU model named in /proc/cpuinfo, or the platform's guess."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """Return the 1, 5 and 15 minute load averages as text."""
    return "%.2f %.2f %.2f" % os.getloadavg()


def busy_seconds() -> float:
    """Return the CPU time (s) the whole machine has spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """Return the CPU time (s) used by this process and its reaped descendants."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


class OtherLoad:
    """Measures the CPU time that processes other than the bench used while it ran."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.busy, self.own = busy_seconds(), own_seconds()

    def describe(self) -> str:
        """Return the other processes' CPU time so far, and its share of the machine."""
        other = (busy_seconds() - self.busy) - (own_seconds() - self.own)
        capacity = (time.monotonic() - self.started) * (os.cpu_count() or 1)
        return "%.1f CPU s by other processes (%.1f%% of the machine's capacity)" % (
            max(other, 0.0), 100 * max(other, 0.0) / capacity)


def commit() -> str:
    """Return the checkout's commit (with ``+dirty`` when it has changes), or "unknown"."""
    def git(*args):
        return subprocess.run(["git", "-C", ROOT, *args], capture_output=True,
                              text=True).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def describe() -> dict:
    """Return the facts about this machine and run that the report starts with."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": socket.gethostname(),
        "cpus": "%d online, %d usable by the bench" % (os.cpu_count() or 0,
                                                      len(os.sched_getaffinity(0))),
        "cpu_model": cpu_model(),
        "kernel": "%s %s" % (platform.system(), platform.release()),
        "python": "%s (%s)" % (platform.python_version(), sys._base_executable),
        "commit": commit(),
        "load_before": load_average(),
    }
