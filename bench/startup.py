"""Start-up: one whole ``pyrust`` process, native client and Python client, against python.

What a user pays per call, measured as hyperfine does (warm-up runs, then N
timed runs; median, mean ± σ, min, max), but with every output checked: the
non-editable install of this checkout (bench/userinstall.py) with the native
client built into it as install.sh builds it, and a standalone server of that
install, in both placements: every process (the server's tree, the bench,
what it starts) pinned to one CPU, so that the server's work for a run (the
worker, its exit, the template's fork of the next spare) adds to the
command's time; and the server's tree on the other CPU.  Besides the wall
time, each row gives the command's own CPU time (user + system, from its
rusage), which for the clients is what the client itself costs:

* ``pyrust -c "2+3"`` through the native client and through the Python
  client (the launcher install.sh falls back to), the install's venv
  ``python -c "print(2+3)"`` and ``python -I -S -c "print(2+3)"``, and
  ``/bin/true`` (the floor: a process that does nothing);
  (no configuration file, as after install.sh);
* with ``numpy`` preloaded (the configuration the server and the clients
  read: ``preload = ["numpy"]``; the client must read it to name the
  environment whose template preloads numpy), ``pyrust -c "import numpy;
  print(...)"`` against the venv's python running the same.

Processes are timed from spawn to exit with their output read
(bench/environments.time_process); the commands are interleaved.
"""

from __future__ import annotations

import resource
import statistics
from collections.abc import Callable, Sequence

from bench import servers
from bench.environments import Command, interleaved, time_process
from bench.userinstall import UserInstall

#: Untimed runs of each command before the timed ones (hyperfine's --warmup).
WARM_UP = 5
NUMPY_CODE = "import numpy; print(numpy.zeros(3).sum())"
NUMPY_EXPECTED = b"0.0\n"
#: The issue's targets: the native client's median against python -c and /bin/true,
#: and how much faster the numpy run is than python's.
PYTHON_RATIO_LIMIT = 0.2
TRUE_RATIO_LIMIT = 2.0
NUMPY_SPEEDUP_LIMIT = 30.0

NATIVE, PYTHON_CLIENT = 'pyrust -c "2+3" (native client)', 'pyrust -c "2+3" (Python client)'
PYTHON, PYTHON_IS = 'python -c "print(2+3)"', 'python -I -S -c "print(2+3)"'
TRUE = "/bin/true"


def _children_cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000


def time_with_cpu(command: Command, env: dict[str, str],
                  cwd: str) -> tuple[float, float, str | None]:
    """Run ``command`` as time_process does; return ``(wall ms, its own CPU ms, problem)``.

    The CPU time is the difference in this process's reaped children's rusage: the
    command is the only child reaped meanwhile (the server's workers are not ours).
    """
    before = _children_cpu_ms()
    elapsed, problem = time_process(command, env, cwd)
    return elapsed, _children_cpu_ms() - before, problem


def figures(name: str, results: list[tuple[float, float, str | None]]) -> dict:
    """Return the hyperfine-style figures (ms) of ``results`` (time_with_cpu's answers)."""
    times = [ms for ms, _, _ in results]
    wrong = [problem for _, _, problem in results if problem]
    return {"command": name, "runs": len(times), "verified": len(times) - len(wrong),
            "wrong_examples": wrong[:3], "times_ms": times,
            "median": statistics.median(times), "mean": statistics.fmean(times),
            "stddev": statistics.stdev(times) if len(times) > 1 else 0.0,
            "min": min(times), "max": max(times),
            "cpu_median": statistics.median(cpu for _, cpu, _ in results)}


def measure(commands: list[Command], env: dict[str, str], cwd: str, runs: int) -> list[dict]:
    """Time every command ``runs`` times, interleaved, after WARM_UP untimed (and
    checked) runs of each; return one row of figures per command."""
    results = interleaved(commands, env, cwd, runs, WARM_UP, time_with_cpu)
    return [figures(c.name, results[c.name]) for c in commands]


def _server(workdir: str, name: str, install: UserInstall, cpus: Sequence[int],
            preload: Sequence[str] = ()) -> tuple[servers.ServerProcess, str]:
    """Start a standalone server of the install in ``workdir/name/pyrust`` (pinned to
    ``cpus``); return it and the XDG_CONFIG_HOME whose pyrust/config.toml it reads."""
    config_home = servers.private_dir(workdir, name)
    directory = servers.private_dir(config_home, "pyrust")
    server = servers.start_pyrust(directory, python=install.python, workers=2, preload=preload,
                                  cpus=cpus, source_root=None)
    return server, config_home


def _placement(workdir: str, install: UserInstall, placement: servers.Placement,
               plain: list[Command], heavy: list[Command], runs: int,
               progress: Callable[[str], None]) -> dict:
    """Measure ``plain`` (no configuration) and ``heavy`` (numpy preloaded) in one
    placement; return its figures."""
    tag = placement.name.replace(" ", "-")
    cwd = servers.private_dir(workdir, "startup-cwd-" + tag)
    out = {"placement": placement.name, "client_cpus": list(placement.client_cpus),
           "server_cpus": list(placement.server_cpus)}
    server, _ = _server(workdir, "startup-server-" + tag, install, placement.server_cpus)
    # No configuration file for the clients, as after install.sh (the Python client
    # would import its TOML reader and config checks for one: tens of ms).
    no_config = servers.private_dir(workdir, "startup-no-config-" + tag)
    with server, servers.client_pinned(placement.client_cpus):
        env = servers.server_env(PYRUST_SOCKET=server.path, XDG_CONFIG_HOME=no_config)
        progress("start-up, %s: %d processes of each of %d commands"
                 % (placement.name, runs + WARM_UP, len(plain)))
        out["rows"] = measure(plain, env, cwd, runs)
    if not heavy:
        return out
    server, config_home = _server(workdir, "startup-numpy-" + tag, install,
                                  placement.server_cpus, preload=("numpy",))
    with server, servers.client_pinned(placement.client_cpus):
        env = servers.server_env(PYRUST_SOCKET=server.path, XDG_CONFIG_HOME=config_home)
        progress("start-up, %s: numpy preloaded, %d processes of each"
                 % (placement.name, runs + WARM_UP))
        out["numpy_rows"] = measure(heavy, env, cwd, runs)
    return out


def run(workdir: str, install: UserInstall | None, runs: int,
        progress: Callable[[str], None]) -> dict:
    """Run the start-up section; return its figures: the same-CPU placement's rows
    at the top level (the issue's regime), every placement's in ``placements``."""
    if install is None:
        return {"skipped": "no non-editable install of this checkout (see above)"}
    native, why = install.native, install.native_skipped
    plain = [Command(PYTHON_CLIENT, [install.python_client, "-c", "2+3"]),
             Command(PYTHON, [install.python, "-c", "print(2+3)"]),
             Command(PYTHON_IS, [install.python, "-I", "-S", "-c", "print(2+3)"]),
             Command(TRUE, ["/bin/true"], b"")]
    if native:
        plain.insert(0, Command(NATIVE, [native, "-c", "2+3"]))
    heavy = []
    if "numpy" in install.linked:
        heavy = [Command('pyrust -c "%s" (%s client, numpy preloaded)'
                         % (NUMPY_CODE, "native" if native else "Python"),
                         [install.pyrust, "-c", NUMPY_CODE], NUMPY_EXPECTED),
                 Command('python -c "%s"' % NUMPY_CODE, [install.python, "-c", NUMPY_CODE],
                         NUMPY_EXPECTED)]
    placements = [_placement(workdir, install, placement, plain, heavy, runs, progress)
                  for placement in servers.placements()]
    out = {"cpu": placements[0]["client_cpus"][0], "runs": runs, "warm_up": WARM_UP,
           "python": install.python, "native": native, "native_skipped": why,
           "numpy_native": bool(native), "placements": placements,
           "rows": placements[0]["rows"]}
    if heavy:
        out["numpy_rows"] = placements[0]["numpy_rows"]
    else:
        out["numpy_skipped"] = ("numpy is not installed in the bench environment "
                                "(.venv/bin/pip install -e '.[bench]')")
    return out


def row(section: dict, name: str) -> dict | None:
    """Return the row of command ``name``, or None."""
    return next((r for r in section.get("rows", []) if r["command"] == name), None)


def verified(section: dict) -> bool:
    """Return whether every process of the section printed what it must."""
    return all(r["verified"] == r["runs"]
               for p in section.get("placements", [])
               for r in p.get("rows", []) + p.get("numpy_rows", []))
