"""The user's alternative: ``pyrust -c`` against starting python, timed by hyperfine.

Every command is a new process, as in a shell script: the non-editable
``pyrust`` command talking to a running service, against the same
interpreter started with ``-c``.  ``python`` is the install's venv
interpreter (a clean site-packages); the base interpreter is timed too,
because what its site-packages run at start-up is part of what users of
that interpreter pay.  With numpy available, a numpy snippet is timed with
numpy preloaded in the service against plain python importing it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable

from bench import servers
from bench.userinstall import UserInstall

# int(): numpy 2 echoes its scalars as np.int64(45).
NUMPY_PYRUST = "import numpy; int(numpy.arange(10).sum())"
NUMPY_PYTHON = "import numpy; print(int(numpy.arange(10).sum()))"


def commands(install: UserInstall, base_python: str) -> list:
    """Return ``[(name, argv, expected stdout)]`` to time; pyrust's commands come first."""
    venv_python = install.python
    cases = [
        ('pyrust -c "2+3"', [install.pyrust, "-c", "2+3"], "5\n"),
        ('python -c "print(2+3)"', [venv_python, "-c", "print(2+3)"], "5\n"),
        ('python -I -S -c "print(2+3)"', [venv_python, "-I", "-S", "-c", "print(2+3)"], "5\n"),
        ('base python -c "print(2+3)"', [base_python, "-c", "print(2+3)"], "5\n"),
        ('base python -I -S -c "print(2+3)"', [base_python, "-I", "-S", "-c", "print(2+3)"], "5\n"),
    ]
    if "numpy" in install.linked:
        cases += [
            ("pyrust -c numpy (preloaded)", [install.pyrust, "-c", NUMPY_PYRUST], "45\n"),
            ("python -c numpy", [venv_python, "-c", NUMPY_PYTHON], "45\n"),
        ]
    return cases


def _check(cases: list, env: dict) -> None:
    """Run every command once; raise RuntimeError unless it prints what it should."""
    for name, argv, expected in cases:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        if done.returncode or done.stdout != expected:
            raise RuntimeError("%s printed %r (exit %d), expected %r; stderr: %s"
                               % (name, done.stdout, done.returncode, expected, done.stderr))


def hyperfine(cases: list, env: dict, runs: int, export: str) -> list:
    """Time ``cases`` with hyperfine (no shell); return one dict of ms figures per case."""
    argv = ["hyperfine", "-N", "--style", "none", "--warmup", "3", "--runs", str(runs),
            "--export-json", export]
    for name, command, _ in cases:
        argv += ["-n", name, shlex.join(command)]
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    with open(export) as f:
        raw = json.load(f)["results"]
    return [{"name": name, "command": shlex.join(command),
             **{k: r[k] * 1000 for k in ("mean", "stddev", "median", "min", "max")},
             "user": r["user"] * 1000, "system": r["system"] * 1000}
            for (name, command, _), r in zip(cases, raw)]


def run(workdir: str, install: UserInstall | None, runs: int,
        progress: Callable[[str], None]) -> dict:
    """Run the section against ``install`` (a UserInstall); return its figures."""
    if shutil.which("hyperfine") is None:
        return {"skipped": "hyperfine is not installed (Debian: apt-get install hyperfine)"}
    if install is None:
        return {"skipped": "no non-editable install of pyrust could be built (see above)"}
    # The server's configuration is the clients' too (XDG_CONFIG_HOME/pyrust/config.toml):
    # a client names its environment by the preloads it reads there, so only then
    # do its runs go to the template that preloaded numpy.
    config_home = servers.private_dir(workdir, "alternative-config")
    directory = servers.private_dir(config_home, "pyrust")
    preload = ("numpy",) if "numpy" in install.linked else ()
    progress("user's alternative: starting the service%s"
             % (" with numpy preloaded" if preload else ""))
    with servers.start_pyrust(directory, python=install.python, preload=preload,
                              source_root=None) as server:
        env = servers.server_env(PYRUST_SOCKET=server.path, XDG_CONFIG_HOME=config_home)
        cases = commands(install, servers.BASE_PYTHON)
        _check(cases, env)
        progress("user's alternative: hyperfine, %d commands x %d runs" % (len(cases), runs))
        results = hyperfine(cases, env, runs, os.path.join(directory, "hyperfine.json"))
    out = {"runs": runs, "results": results, "preloaded": list(preload)}
    if not preload:
        out["numpy"] = "skipped: numpy is not installed (.venv/bin/pip install -e '.[bench]')"
    return out
