"""Present the service's status reply (``pyrust status``) to a person."""

from __future__ import annotations

import json


def _mib(value: float | None) -> str:
    return "?" if value is None else "%.1f MiB" % (value / 1048576)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return "%.0f s ago" % seconds
    if seconds < 7200:
        return "%.0f min ago" % (seconds / 60)
    return "%.1f h ago" % (seconds / 3600)


def _duration(seconds: float) -> str:
    return "never" if not seconds else "%g s" % seconds


def _template(t: dict) -> str:
    """Return one environment's template as two lines."""
    what = [t["python"], "(Python %s)" % (t["version"] or "?")]
    if t["venv"]:
        what.append("venv %s" % t["venv"])
    if t["project"]:
        what.append("project %s" % t["project"])
    if t["startup"]:
        what.append(" ".join(t["startup"]))
    return "%s\n      pid %d, %s, %d spares, %d busy, %d runs served, %s, age %.0f s, " \
        "idle %.0f s; preloads %s" % (
            " ".join(what), t["pid"], t["state"], t["spares"], t["workers_busy"],
            t["runs_served"], _mib(t["rss"]), t["age_seconds"], t["idle_seconds"],
            ", ".join(t["preload"]) or "nothing")


def describe(payload: bytes) -> bytes:
    """Return the status JSON ``payload`` as readable lines."""
    s = json.loads(payload)
    lines = [
        "pyrust %s (Python %s), up %.0f s" % (s["version"], s["python"], s["uptime_seconds"]),
        "socket:     %s (from %s)" % (s["socket"]["path"], s["socket"]["obtained_from"]),
        "supervisor: pid %d, %s" % (s["supervisor"]["pid"], _mib(s["supervisor"]["rss"])),
        "workers:    %d spares, %d busy, %d connected and idle"
        % (s["spares"], s["workers_busy"], s["workers_idle"] - s["spares"]),
    ]
    lines += ["  pid %-7d %-9s %6d served %4d failed %4d control  %s"
              % (w["pid"], w["state"], w["served"], w["failed"], w["control"], _mib(w["rss"]))
              for w in s["workers"]]
    recent = s["recent_runs"]
    since = s["seconds_since_last_failure"]
    lines += [
        "runs:       %d served, %d failed; last failure %s"
        % (s["runs_served"], s["runs_failed"], "never" if since is None else _ago(since)),
        "latency:    %s" % ("no runs yet" if not recent["count"] else
                            "p50 %.3f ms, p99 %.3f ms (last %d runs)"
                            % (recent["p50_ms"], recent["p99_ms"], recent["count"])),
        "control:    %d requests (status and the like)" % s["control_requests"],
        "forks:      %d spares forked%s" % (s["forks"]["total"], "" if not s["forks"]["count"]
                                           else ", p50 %.3f ms, p99 %.3f ms each"
                                           % (s["forks"]["p50_ms"], s["forks"]["p99_ms"])),
        "preloaded:  %s" % (", ".join(s["preloaded_modules"]) or "(none)"),
        "cache:      up to %d compiled programs per worker" % s["compile_cache"]["capacity"],
        "environments: %d of at most %d (an idle one ends after %s)"
        % (len(s["templates"]), s["max_templates"], _duration(s["template_idle_exit"])),
    ]
    lines += ["  %s%s" % ("* " if t["default"] else "  ", _template(t)) for t in s["templates"]]
    if s["workers_failing_at_start"]:
        lines.append("WARNING:    %d workers in a row failed at start; new ones are forked "
                     "ever more slowly (the log says why)" % s["workers_failing_at_start"])
    return ("\n".join(lines) + "\n").encode()


def one_line(payload: bytes) -> bytes:
    """Return the status as the one line ``--daemon-status`` prints."""
    s = json.loads(payload)
    return ("pyrust: serving on %s (supervisor pid %d, %d workers, from %s)\n" % (
        s["socket"]["path"], s["supervisor"]["pid"], len(s["workers"]),
        s["socket"]["obtained_from"])).encode()
