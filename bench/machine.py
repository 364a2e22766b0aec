"""What the figures were measured on: machine, interpreter, commit and load."""

from __future__ import annotations

import os
import platform
import resource
import socket
import subprocess
import sys
import time

from bench.servers import BASE_PYTHON, ROOT


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


def machine_seconds() -> "tuple[float, float]":
    """Return ``(busy, steal)``: CPU seconds the whole machine has spent busy since
    boot, and those the hypervisor took from it (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]] + [0] * 8
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _, _, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick


def own_seconds() -> float:
    """Return the CPU time (s) used by this process and its reaped descendants."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


class OtherLoad:
    """Measures the CPU time that processes other than the bench used while it ran."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.busy, self.steal = machine_seconds()
        self.own = own_seconds()

    def figures(self) -> dict:
        """Return CPU seconds used by other processes (``other``; slightly negative
        when within the accounting's rounding), the machine's capacity over the
        same time, and the seconds stolen by the hypervisor."""
        busy, steal = machine_seconds()
        return {"other": (busy - self.busy) - (own_seconds() - self.own),
                "capacity": (time.monotonic() - self.started) * (os.cpu_count() or 1),
                "steal": steal - self.steal}

    def describe(self) -> str:
        """Return the figures as one line of text."""
        f = self.figures()
        other = max(0.0, f["other"])
        return ("%.1f CPU s used by other processes (%.1f%% of the machine), %.1f s stolen "
                "by the hypervisor" % (other, 100 * other / f["capacity"], f["steal"]))


def commit() -> str:
    """Return the checkout's commit (with ``+dirty`` when it has changes), or "unknown"."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", ROOT, *args], capture_output=True,
                              text=True).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def interpreter() -> str:
    """Return the path that started this interpreter, relative to the checkout when inside it."""
    argv0 = getattr(sys, "orig_argv", [sys.executable])[0]  # orig_argv: Python 3.10+
    path = os.path.abspath(argv0) if os.sep in argv0 else sys.executable
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def describe() -> dict:
    """Return the facts about this machine and run that the report starts with."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": socket.gethostname(),
        "cpus": "%d online, %d usable by the bench" % (os.cpu_count() or 0,
                                                      len(os.sched_getaffinity(0))),
        "cpu_model": cpu_model(),
        "memory": "%.1f GiB" % (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "kernel": "%s %s" % (platform.system(), platform.release()),
        "python": "%s (%s)" % (platform.python_version(), BASE_PYTHON),
        "commit": commit(),
        "load_before": load_average(),
    }
