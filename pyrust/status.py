"""Present the service's status reply (``pyrust status``) to a person."""

from __future__ import annotations

import json


def _mib(value) -> str:
    return "?" if value is None else "%.1f MiB" % (value / 1048576)


def describe(payload: bytes) -> bytes:
    """Return the status JSON ``payload`` as readable lines."""
    s = json.loads(payload)
    lines = [
        "pyrust %s (Python %s), up %.0f s" % (s["version"], s["python"], s["uptime_seconds"]),
        "socket:     %s (from %s)" % (s["socket"]["path"], s["socket"]["obtained_from"]),
        "supervisor: pid %d, %s" % (s["supervisor"]["pid"], _mib(s["supervisor"]["rss"])),
        "workers:    %d busy, %d idle" % (s["workers_busy"], s["workers_idle"]),
    ]
    lines += ["  pid %-7d %-9s %6d served %4d failed  %s"
              % (w["pid"], w["state"], w["served"], w["failed"], _mib(w["rss"]))
              for w in s["workers"]]
    lines += [
        "requests:   %d served, %d failed" % (s["requests_served"], s["requests_failed"]),
        "preloaded:  %s" % (", ".join(s["preloaded_modules"]) or "(none)"),
        "cache:      %d of %d compiled programs (in the worker that answered)"
        % (s["compile_cache"]["entries"], s["compile_cache"]["capacity"]),
    ]
    return ("\n".join(lines) + "\n").encode()


def one_line(payload: bytes) -> bytes:
    """Return the status as the one line ``--daemon-status`` prints."""
    s = json.loads(payload)
    return ("pyrust: serving on %s (supervisor pid %d, %d workers, from %s)\n" % (
        s["socket"]["path"], s["supervisor"]["pid"], len(s["workers"]),
        s["socket"]["obtained_from"])).encode()
