"""Cold start: the first request after socket activation, with the service stopped.

``systemd-socket-activate -l PATH pyrust serve`` binds and listens on PATH
and starts nothing; the bench connects and sends ``2+3``, which makes it exec
the server with the socket as fd 3 (as systemd would).  The time from
``connect()`` to the whole reply is the activation latency a user sees.  The
server is then stopped with SIGTERM and the socket file removed, and the
cycle repeats.  Files are in the page cache after the first cycle, so these
are warm-cache cold starts.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from bench import client, servers
from bench.programs import PROGRAMS, Program
from bench.userinstall import UserInstall

ACTIVATE = "systemd-socket-activate"


def first_request(directory: str, command: list[str], env: dict[str, str],
                  program: Program) -> dict:
    """Activate ``command`` on a new socket in ``directory`` with one request of ``program``.

    Return ``{"ms": latency, "ok": reply correct}``; raise RuntimeError if
    the activator fails or the server does not stop.
    """
    path = os.path.join(directory, "cold.sock")
    if os.path.exists(path):
        os.unlink(path)  # systemd-socket-activate leaves it behind
    proc = subprocess.Popen([ACTIVATE, "-l", path, *command], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            cwd=directory)
    assert proc.stderr is not None  # stderr=PIPE
    try:
        line = proc.stderr.readline().decode(errors="replace")
        if not line.startswith("Listening on"):
            raise RuntimeError("%s did not listen: %s" % (ACTIVATE, line.strip()))
        with client.watchdog(1):
            start = time.perf_counter_ns()
            sock = client.connect(path)
            try:
                sock.sendall(program.frame)
                status, output = client.read_reply(sock, b"")
                elapsed = time.perf_counter_ns() - start
            finally:
                sock.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, errors = proc.communicate(timeout=servers.STOP_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError("the activated server exited with status %d: %s"
                           % (proc.returncode, errors.decode(errors="replace")[-2000:]))
    return {"ms": elapsed / 1e6, "ok": program.accepts(status, output)}


def measure(directory: str, command: list[str], env: dict[str, str], runs: int,
            program: Program) -> dict:
    """Repeat the cold start ``runs`` times; return the figures (ms)."""
    results = [first_request(directory, command, env, program) for _ in range(runs)]
    times = [r["ms"] for r in results]
    return {"runs": runs, "verified": sum(r["ok"] for r in results), "times_ms": times,
            "min": min(times), "median": statistics.median(times), "mean": statistics.fmean(times),
            "max": max(times)}


def run(workdir: str, runs: int, progress: Callable[[str], None],
        install: UserInstall | None = None) -> dict:
    """Run the cold-start section; return its figures.

    ``install`` (a UserInstall) is the pyrust to activate; without one the
    bench's own interpreter runs this checkout (it then pays the editable
    finder's start-up, and the result says so).
    """
    if shutil.which(ACTIVATE) is None:
        return {"skipped": "%s is not installed (Debian: apt-get install systemd)" % ACTIVATE}
    if install is not None:
        base, env = [install.pyrust, "serve"], servers.server_env()
        preloadable = "numpy" in install.linked
    else:
        base = [sys.executable, "-m", "pyrust", "serve"]
        env = servers.server_env(PYTHONPATH=servers.ROOT)
        preloadable = importlib.util.find_spec("numpy") is not None
    results: dict = {"server": "pyrust serve" if install else "python -m pyrust serve",
               "install": "non-editable" if install else "checkout"}
    cases: list[tuple[str, tuple[str, ...], Program]] = [("no preload", (), PROGRAMS[0])]
    if preloadable:
        cases.append(("preload numpy", ("numpy",), PROGRAMS[0]))
    else:
        results["numpy"] = "skipped: numpy is not installed (.venv/bin/pip install -e '.[bench]')"
    for name, preload, program in cases:
        progress("cold start: %s, %d activations" % (name, runs))
        directory = servers.private_dir(workdir, "cold-" + name.replace(" ", "-"))
        config = servers.pyrust_config(directory, preload=preload)
        results[name] = measure(directory, base + ["--config", config], env, runs, program)
    return results
