"""Environments: a new environment's first run, its later runs, and the path to its socket.

The service keeps one template per environment (interpreter, venv, preloads,
start-up options); the default one serves the main socket, every other one
its own socket beside it, which the ``pyrust`` command connects to first
(on failure it asks the service, op ``e``, which starts the template).  In
each pinned placement, with a standalone server (its tree pinned with
taskset, the bench and the processes it starts pinned to the client CPU):

* **cold template**: the wall time of a whole ``pyrust --python VENV/bin/python
  -c "2+3"`` process whose environment has no template yet (the client, the
  ensure, the template's start, the run), for a venv the bench makes from a
  second interpreter version, without and with a project whose
  ``[tool.pyrust]`` preloads modules.  Each run gets a new environment through
  ``PYTHONHASHSEED=<n>`` (a start-up variable, so part of the key); the first
  run of a case is reported apart (it may write bytecode caches);
* **warm runs**: the same command once the template is up, beside ``pyrust -c
  "2+3"`` (the default environment) and ``VENV/bin/python -c "print(2+3)"``,
  interleaved, each a new process;
* **request path**: socket round trips, no process spawned: an extended run
  of ``2+3`` sent straight to the venv's socket against the same run and a v1
  request on the main socket, on one connection and with a connection each.

Processes are timed from spawn to exit, output read (``/bin/true`` shows what
that costs); every reply is checked.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bench import client, servers, stats
from bench.programs import PROGRAMS

if TYPE_CHECKING:  # for annotations only: the functions import pyrust where they use it
    from pyrust.environment import Environment

CODE = "2+3"
EXPECTED = b"5\n"
PRELOAD = ("json", "decimal")
#: Seconds a timed process may take (a cold template on a loaded machine included).
PROCESS_TIMEOUT = 120.0
#: Untimed runs of each warm command before the timed ones.
WARM_UP = 2
#: What the log says when a template serves: its environment, and how long it took.
SERVES = re.compile(r"the template of python (\S+)(.*?) serves \(pid \d+, Python \S+, "
                    r"(\d+) ms\)")


class Command(collections.namedtuple("Command", "name argv expected cwd")):
    """A process to time: its report ``name``, ``argv``, the stdout it must print, and
    the directory it runs in (None: the caller's choice)."""

    def __new__(cls, name: str, argv: list[str], expected: bytes = EXPECTED,
                cwd: str | None = None) -> Command:
        return super().__new__(cls, name, argv, expected, cwd)


class ExtendedRun(collections.namedtuple("ExtendedRun", "code frame expected")):
    """An extended run request that bench/client.py can time like a Program:
    ``frame`` (the request's bytes), ``expected`` (the reply payload: exit code 0,
    then the output)."""

    label = property(lambda self: self.code)

    def accepts(self, status: int, output: bytes) -> bool:
        return status == 0 and output == self.expected


def run_request(env: Environment, code: str = CODE, output: bytes = EXPECTED) -> ExtendedRun:
    """Return the extended request a client sends to run ``code`` (output captured) in
    Environment ``env``."""
    from pyrust import protocol
    from pyrust.request import STDIO_CAPTURE, run_fields

    fields = run_fields("c", code, [], stdio=STDIO_CAPTURE, env=env)
    header, payload = protocol.encode_extended(fields)
    return ExtendedRun(code, header + payload, protocol.EXIT_CODE.pack(0) + output)


# -- what the section runs ------------------------------------------------------------


def _version(python: str) -> tuple[int, ...] | None:
    """Return ``python``'s version as a tuple if it is CPython, else None."""
    query = "import platform, sys; print(platform.python_implementation(), *sys.version_info[:3])"
    try:
        done = subprocess.run([python, "-I", "-c", query], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = done.stdout.split()
    if done.returncode or len(words) != 4 or words[0] != "CPython":
        return None
    return tuple(int(w) for w in words[1:])


def _pyenv_root() -> str:
    root = os.environ.get("PYENV_ROOT")
    if not root and shutil.which("pyenv"):
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
    return root or os.path.expanduser("~/.pyenv")


def second_interpreter() -> tuple[str, tuple[int, ...]]:
    """Return ``(path, version)`` of the interpreter to make the venv from: pyenv's
    newest 3.12, else its newest other CPython 3.9+ (never the version of the bench's
    own base interpreter), else that base interpreter.  Paths are real
    executables, never pyenv's shims."""
    base = sys.version_info[:2]
    found = []
    for path in glob.glob(os.path.join(_pyenv_root(), "versions", "3.*", "bin", "python3.*")):
        if re.fullmatch(r"python3\.\d+", os.path.basename(path)) and os.access(path, os.X_OK):
            version = _version(path)
            if version and version >= (3, 9) and version[:2] != base:
                found.append((version[:2] == (3, 12), version, path))
    if found:
        _, version, path = max(found)
        return path, version
    return servers.BASE_PYTHON, tuple(sys.version_info[:3])


def make_venv(workdir: str, python: str) -> str:
    """Make a venv (no pip: nothing is downloaded) from ``python``; return its python."""
    venv = os.path.join(workdir, "env-venv")
    subprocess.run([python, "-I", "-m", "venv", "--without-pip", venv], check=True,
                   capture_output=True, timeout=120)
    return os.path.join(venv, "bin", "python")


def make_launcher(workdir: str) -> str:
    """Write the ``pyrust`` command as the installer writes it (python -IS, pyrust on
    the path), running this checkout with the bench's interpreter; return its path."""
    from pyrust import units

    path = os.path.join(workdir, "pyrust")
    with open(path, "w") as f:
        f.write(units.render_launcher(sys.executable))
    os.chmod(path, 0o755)
    return path


def make_project(workdir: str) -> str:
    """Make a project directory whose pyproject.toml preloads PRELOAD; return it."""
    path = servers.private_dir(workdir, "env-project")
    with open(os.path.join(path, "pyproject.toml"), "w") as f:
        f.write('[project]\nname = "bench-project"\n\n[tool.pyrust]\npreload = [%s]\n'
                % ", ".join('"%s"' % m for m in PRELOAD))
    return path


def client_env(server: servers.ServerProcess, config_home: str,
               **extra: str) -> dict[str, str]:
    """Return the environment of the processes the section times: no venv active,
    no PYTHON* or PYRUST_* variable, the server's socket, no user configuration."""
    env = servers.server_env(PYRUST_SOCKET=server.path, XDG_CONFIG_HOME=config_home, **extra)
    env.pop("VIRTUAL_ENV", None)
    return env


def time_process(command: Command, env: dict[str, str], cwd: str) -> tuple[float, str | None]:
    """Run ``command``; return ``(wall ms from spawn to exit, None)``, or with what
    was wrong instead of None if it did not exit 0 printing ``command.expected``.

    Raise RuntimeError, with its output, if it outlives PROCESS_TIMEOUT.
    """
    start = time.perf_counter_ns()
    proc = subprocess.Popen(command.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=command.cwd or cwd)
    try:
        out, err = proc.communicate(timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError("%s did not end in %g s: %r %r" % (command.name, PROCESS_TIMEOUT,
                                                            out[-500:], err[-500:])) from None
    elapsed = (time.perf_counter_ns() - start) / 1e6
    if proc.returncode == 0 and out == command.expected:
        return elapsed, None
    return elapsed, "%s: exit %d, stdout %r, stderr %r" % (
        command.name, proc.returncode, out[-200:], err.decode(errors="replace")[-500:])


def time_checked(command: Command, env: dict[str, str], cwd: str) -> float:
    """Run ``command`` as time_process does; return its ms.  Raise RuntimeError if its
    output was wrong (for the untimed runs that prepare a case)."""
    elapsed, problem = time_process(command, env, cwd)
    if problem:
        raise RuntimeError(problem)
    return elapsed


def summary_ms(results: list) -> dict:
    """Return the figures of ``results`` (time_process's answers): median, p90, min,
    max and mean ms, the count verified correct and the first wrong ones."""
    times = [ms for ms, _ in results]
    wrong = [problem for _, problem in results if problem]
    return {"runs": len(times), "verified": len(times) - len(wrong), "wrong_examples": wrong[:3],
            "times_ms": times, "median": statistics.median(times),
            "p90": stats.percentile(sorted(times), 0.9), "min": min(times), "max": max(times),
            "mean": statistics.fmean(times)}


# -- the three measurements -----------------------------------------------------------


def cold_case(launcher: str, venv_python: str, env: dict[str, str], cwd: str, runs: int,
              first_seed: int) -> "tuple[dict, list]":
    """Time ``runs`` + 1 first runs of new environments (PYTHONHASHSEED from
    ``first_seed`` on); return the figures of all but the first, with the first's
    time apart, and the seeds used."""
    command = Command("cold template", [launcher, "--python", venv_python, "-c", CODE])
    seeds = list(range(first_seed, first_seed + runs + 1))
    results = [time_process(command, dict(env, PYTHONHASHSEED=str(seed)), cwd)
               for seed in seeds]
    figures = summary_ms(results[1:])
    figures.update(first_ms=results[0][0], first_problem=results[0][1])
    return figures, seeds


def template_starts(log: str, seeds: list, preload: tuple) -> list:
    """Return the ms each template of ``seeds`` took from its spawn to serving, as the
    server's log says (an empty list if the log does not say)."""
    wanted = {"PYTHONHASHSEED=%d" % s + (" preloading %s" % ", ".join(preload) if preload
                                          else ""): s for s in seeds}
    found = {}
    for match in SERVES.finditer(log):
        seed = wanted.get(match.group(2).strip())
        if seed is not None:
            found[seed] = float(match.group(3))
    return [found[s] for s in seeds if s in found]


def warm_commands(launcher: str, venv_python: str, label: str, project: str) -> list:
    """Return the warm commands, the non-default environments first."""
    venv_run = [launcher, "--python", venv_python, "-c", CODE]
    return [
        Command('pyrust --python %s -c "2+3"' % label, venv_run),
        Command("the same in the project (preload %s)" % ", ".join(PRELOAD), venv_run,
                cwd=project),
        Command('pyrust -c "2+3" (default environment)', [launcher, "-c", CODE]),
        Command('%s -c "print(2+3)"' % label, [venv_python, "-c", "print(2+3)"]),
        Command("/bin/true (the timer's own cost)", ["/bin/true"], b""),
    ]


def interleaved(commands: list[Command], env: dict[str, str], cwd: str, runs: int, warm_up: int,
                time_one: Callable[[Command, dict[str, str], str], Any] | None = None,
                ) -> dict[str, list]:
    """Run every command ``warm_up`` times untimed (raising if its output is wrong),
    then ``runs`` times timed, interleaved; return {name: [time_one's answers]}
    (time_one defaults to time_process)."""
    for command in commands:
        for _ in range(warm_up):
            time_checked(command, env, cwd)
    results: dict[str, list] = {c.name: [] for c in commands}
    for _ in range(runs):
        for command in commands:
            results[command.name].append((time_one or time_process)(command, env, cwd))
    return results


def warm_runs(commands: list[Command], env: dict[str, str], cwd: str, runs: int) -> list:
    """Time every command ``runs`` times, interleaved, after WARM_UP untimed runs each
    (the first of which starts a template that is not up yet); return one row of
    figures per command."""
    results = interleaved(commands, env, cwd, runs, WARM_UP)
    return [dict(summary_ms(results[c.name]), command=c.name) for c in commands]


def ensure(main_path: str, env: Environment) -> str:
    """Ask the service on ``main_path`` for ``env``'s template (op e); return its socket.

    Raise RuntimeError if the service refuses.
    """
    from pyrust import ops, protocol

    header, payload = protocol.encode_extended([(protocol.OP, ops.ENSURE.code)]
                                               + env.fields())
    sock = client.connect(main_path)
    try:
        sock.settimeout(PROCESS_TIMEOUT)
        sock.sendall(header + payload)
        status, reply = protocol.read_response(sock)
    finally:
        sock.close()
    if status != protocol.OK:
        raise RuntimeError("op e for %s refused (status %d): %r" % (env.python, status, reply))
    return os.fsdecode(reply)


def request_path(server: servers.ServerProcess, venv_python: str,
                 counts: dict[str, tuple[int, int]], progress: Callable[[str], None],
                 placement: str) -> list:
    """Time run requests on the venv's socket and on the main socket, each mode; return
    one row per case.  ``counts`` maps a mode to its ``(timed, untimed)`` counts."""
    from pyrust.environment import Environment, template_socket

    default, venv = Environment(default_python(server.path)), Environment(venv_python)
    venv_path = ensure(server.path, venv)
    if venv_path != template_socket(server.path, venv.key()):
        raise RuntimeError("the service named %s for %s, not the socket the client computes"
                           % (venv_path, venv_python))
    cases: list[tuple[str, str, str, client.Request]] = [
        ("venv, extended run", "its own socket", venv_path, run_request(venv)),
        ("default, extended run", "main socket", server.path, run_request(default)),
        ("default, v1", "main socket", server.path, PROGRAMS[0])]
    rows = []
    for mode, timer in (("persistent", client.time_persistent),
                        ("per-connection", client.time_per_connection)):
        for name, where, path, program in cases:
            progress("environments, %s: request path, %s, %s" % (placement, name, mode))
            run = timer(path, program, *counts[mode])
            figures = stats.summarize(run.samples)
            figures.update(verified=run.verified, wrong=len(run.wrong),
                           wrong_examples=[repr(r) for r in run.wrong[:3]])
            rows.append({"placement": placement, "environment": name, "socket": where,
                         "mode": mode, **figures})
    return rows


def status(path: str) -> dict:
    """Return the status of the service at ``path``."""
    sock = client.connect(path)
    try:
        sock.settimeout(servers.READY_TIMEOUT)
        return servers.status_on(sock)
    finally:
        sock.close()


def default_python(path: str) -> str:
    """Return the interpreter of the default environment of the service at ``path``."""
    return next(t["python"] for t in status(path)["templates"] if t["default"])


# -- the section ------------------------------------------------------------------------


def run_placement(workdir: str, placement: servers.Placement, setup: dict, runs: int,
                  counts: dict[str, tuple[int, int]], progress: Callable[[str], None]) -> dict:
    """Measure the three parts in ``placement`` with a server of its own; return them."""
    tag = placement.name.replace(" ", "-")
    directory = servers.private_dir(workdir, "env-server-" + tag)
    plain = servers.private_dir(workdir, "env-cwd-" + tag)  # no pyproject.toml above it
    settings = {"log_level": '"info"', "max_templates": max_templates(runs)}
    out = {"placement": placement.name, "cold": []}
    launcher, venv_python = setup["launcher"], setup["venv_python"]
    with servers.start_pyrust(directory, cpus=placement.server_cpus,
                              settings=settings.items()) as server, \
            servers.client_pinned(placement.client_cpus):
        env = client_env(server, setup["config_home"])
        out["default_python"] = default_python(server.path)
        for case, cwd, preload, first_seed in (("no preload", plain, (), 1),
                                               ("preload %s" % ", ".join(PRELOAD),
                                                setup["project"], PRELOAD, runs + 2)):
            progress("environments, %s: cold template, %s, %d runs" % (placement.name, case,
                                                                      runs + 1))
            figures, seeds = cold_case(launcher, venv_python, env, cwd, runs, first_seed)
            starts = template_starts(server.log(), seeds[1:], preload)
            figures.update(case=case, template_start_ms=starts)
            out["cold"].append(figures)
        progress("environments, %s: warm runs, %d of each" % (placement.name, runs))
        out["warm"] = warm_runs(warm_commands(launcher, venv_python, setup["label"],
                                              setup["project"]), env, plain, runs)
        out["request_path"] = request_path(server, venv_python, counts, progress,
                                           placement.name)
        out["templates"] = len(status(server.path)["templates"])
    return out


def environments_made(runs: int) -> int:
    """Return how many environments a placement's server serves: the default one, the
    venv's with and without the project, and the cold cases' (two of ``runs`` + 1)."""
    return 3 + 2 * (runs + 1)


def max_templates(runs: int) -> int:
    """Return the server's max_templates: room for every environment the section
    makes, so none is ended to make room (unless pyrust's ceiling is lower)."""
    from pyrust.config import MAX_TEMPLATES

    return min(environments_made(runs), MAX_TEMPLATES)


def run(workdir: str, runs: int, count: int, warmup: int, connections: int,
        progress: Callable[[str], None]) -> dict:
    """Run the environments section; return its figures.

    ``runs`` processes per cold and warm case; the request path times ``count``
    requests after ``warmup`` on one connection and ``connections`` connections
    after a tenth as many.
    """
    python, version = second_interpreter()
    progress("environments: a venv of %s (Python %s)" % (python, ".".join(map(str, version))))
    venv_python = make_venv(workdir, python)
    setup = {"venv_python": venv_python, "launcher": make_launcher(workdir),
             "project": make_project(workdir),
             "config_home": servers.private_dir(workdir, "env-config"),  # no config file
             "label": "venv%d.%d/bin/python" % version[:2]}
    counts = {"persistent": (count, warmup),
              "per-connection": (connections, max(1, connections // 10))}
    placements = [run_placement(workdir, p, setup, runs, counts, progress)
                  for p in servers.placements()]
    return {"interpreter": python, "version": ".".join(map(str, version)),
            "venv": os.path.dirname(os.path.dirname(venv_python)), "label": setup["label"],
            "default_python": placements[0]["default_python"], "preload": list(PRELOAD),
            "runs": runs, "environments_per_server": environments_made(runs),
            "max_templates": max_templates(runs), "requests": count, "warmup": warmup,
            "connections": connections,
            "placements": [dict(p._asdict(), describe=p.describe())
                           for p in servers.placements()],
            "cold": [dict(c, placement=p["placement"]) for p in placements for c in p["cold"]],
            "warm": [dict(w, placement=p["placement"]) for p in placements for w in p["warm"]],
            "request_path": [r for p in placements for r in p["request_path"]],
            "templates_at_end": {p["placement"]: p["templates"] for p in placements}}


def verified(section: dict) -> bool:
    """Return whether every process printed what it should and every reply was right."""
    return all(c["verified"] == c["runs"] and not c["first_problem"]
               for c in section.get("cold", [])) and \
        all(w["verified"] == w["runs"] for w in section.get("warm", [])) and \
        all(r["wrong"] == 0 for r in section.get("request_path", []))
