"""A regular (non-editable) install of this checkout, as users get it, built offline.

``install.sh`` does ``pip install --force-reinstall .`` into a venv of its
own, builds the native client into it (``python -m pyrust.native``, which
also writes the Python client's launcher) and puts the native client on
PATH, or the launcher where no C compiler exists; so does this install.  The
test venv instead holds an editable install, whose import-hook
finder (a ``.pth`` file run at every start-up) would slow every ``pyrust``
process down, so the start-up figures use this install: a fresh venv in the
bench's work directory, the base interpreter, and a wheel of this checkout
built and installed with ``--no-index`` (nothing is downloaded; building
needs setuptools>=70.1 in the bench environment, which the ``bench`` extra
brings).  pyrust's one run-time dependency (psutil) and heavy modules the
bench environment has (numpy) are made visible to it by symlinks, so nothing
needs a download.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

from bench.servers import BASE_PYTHON, ROOT

#: What a wheel of the project is built from.
SOURCES = ("pyproject.toml", "README.md", "pyrust")


class UserInstall(collections.namedtuple(
        "UserInstall", "venv python pyrust linked python_client native native_skipped")):
    """The install: its ``venv`` directory, its ``python``, the ``pyrust`` command
    install.sh would put on PATH (the ``native`` client, else the ``python_client``
    launcher; ``native_skipped`` says why there is no native one), and the modules
    ``linked`` into it from the bench environment."""


class Unavailable(Exception):
    """A section cannot run here; the message says why and how to enable it."""


def _pip(*args: str) -> None:
    """Run this interpreter's pip quietly; raise Unavailable with its output on failure."""
    # Without PYTHONPATH: a checkout on it (its pyrust.egg-info) makes pip believe the
    # new venv has pyrust already, and install nothing.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                           "--quiet", *args], capture_output=True, text=True, env=env)
    if done.returncode:
        raise Unavailable("pip %s failed:\n%s" % (args[0], done.stderr.strip()[-2000:]))


def build(workdir: str, link: Sequence[str] = ("numpy", "psutil")) -> UserInstall:
    """Build the install under ``workdir``; return it.  Raise Unavailable if it cannot be built."""
    source = os.path.join(workdir, "user-src")
    os.mkdir(source)
    for name in SOURCES:
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(source, name),
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, source)
    venv = os.path.join(workdir, "user-venv")
    subprocess.run([BASE_PYTHON, "-m", "venv", "--without-pip", venv], check=True)
    python = os.path.join(venv, "bin", "python")
    wheels = os.path.join(workdir, "user-wheel")
    try:
        _pip("wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", wheels, source)
    except Unavailable as exc:
        raise Unavailable("cannot build a wheel of this checkout offline (the bench extra "
                          "brings setuptools>=70.1: .venv/bin/pip install -e '.[bench]'); %s"
                          % exc) from None
    wheel = [os.path.join(wheels, f) for f in os.listdir(wheels) if f.endswith(".whl")]
    _pip("--python", python, "install", "--no-deps", "--no-index", *wheel)
    linked = [name for name in link if _link_module(name, python)]
    # The command install.sh puts on PATH, not pip's console script.
    launcher = os.path.join(workdir, "pyrust-python")
    native = os.path.join(venv, "bin", "pyrust-native")
    done = subprocess.run([python, "-I", "-m", "pyrust.native", "--source",
                           os.path.join(ROOT, "client"), "--out", native, "--launcher", launcher,
                           "--python", python], capture_output=True, text=True, timeout=300)
    skipped = None
    if done.returncode == 3:  # pyrust.native.NO_COMPILER
        skipped = "no C compiler: the native client was not built"
    elif done.returncode:
        skipped = "the native client did not build: %s" % done.stderr.strip()[-1000:]
    if skipped and not os.path.exists(launcher):
        raise Unavailable("the install's launcher was not written: %s" % done.stderr)
    return UserInstall(venv, python, launcher if skipped else native, linked, launcher,
                       None if skipped else native, skipped)


def _link_module(name: str, python: str) -> bool:
    """Symlink module ``name`` (with its ``.libs`` and metadata) from the bench
    environment into ``python``'s site-packages; return False if it is not installed."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.submodule_search_locations:
        return False  # not installed, or a namespace package (no __init__ to find it by)
    site = os.path.dirname(os.path.dirname(spec.origin))
    query = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    target = subprocess.run([python, "-c", query], capture_output=True, text=True,
                            check=True).stdout.strip()
    for entry in os.listdir(site):
        if entry == name or entry.startswith((name + ".", name + "-")):
            os.symlink(os.path.join(site, entry), os.path.join(target, entry))
    return True
