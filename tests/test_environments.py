"""Environments served side by side by a real service, through the real ``pyrust`` command.

Two venvs are made for the session from two interpreter versions (pyenv's),
each with a package of its own.  Every run is compared with what the venv's
own ``bin/python -c`` shows from the same directory and environment: the
interpreter, version, prefix, ``sys.path`` and what is importable.  Then a
project's ``[tool.pyrust]`` (preloads warm, its own interpreter, ``echo``),
environments that cannot start, idle exit, the template limit, and stopping.

The client is started the way install.sh's launcher starts it (``-IS``, this
checkout appended to ``sys.path``), so its own ``PYTHONPATH`` is not the run's.
"""

import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import ROOT, TIMEOUT, pyrust_env
from pyrust import environment

pytestmark = pytest.mark.differential  # a tier: ./test.sh --fast skips it

#: The pyrust command: what install.sh's launcher runs (pyrust.units.render_launcher).
CLIENT = [sys.executable, "-IS", "-c",
          "import sys\nsys.path.append(%r)\nfrom pyrust.cli import main\nsys.exit(main())" % ROOT]

#: What a run can see of its environment, as one JSON line.
PROBE = """\
import json, sys
def where(name):
    try:
        module = __import__(name)
    except ImportError:
        return None
    return getattr(module, 'WHERE', module.__file__)
print(json.dumps({'executable': sys.executable, 'prefix': sys.prefix,
                  'base_prefix': sys.base_prefix, 'version': sys.version, 'path': sys.path,
                  'alpha': where('alpha'), 'beta': where('beta'), 'psutil': where('psutil'),
                  'frompath': where('frompath'), 'optimize': sys.flags.optimize,
                  'parent': __import__('os').getppid()}))
"""


# -- interpreters and venvs ------------------------------------------------------------


def pyenv_root() -> str:
    """Return pyenv's root directory (``pyenv root``, else ~/.pyenv)."""
    try:
        result = subprocess.run(["pyenv", "root"], capture_output=True, text=True,
                                timeout=TIMEOUT)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return os.path.expanduser("~/.pyenv")


def interpreters() -> dict:
    """Return {(major, minor): path} of pyenv's real interpreters (never its shims)."""
    found = {}
    pattern = os.path.join(pyenv_root(), "versions", "*", "bin", "python*")
    for path in sorted(glob.glob(pattern)):
        match = re.fullmatch(r"python(\d)\.(\d+)", os.path.basename(path))
        if match and os.access(path, os.X_OK):
            found.setdefault((int(match.group(1)), int(match.group(2))), path)
    return found


INTERPRETERS = interpreters()


def two_versions() -> list:
    """Return the paths of two CPython 3.9+ versions: 3.11 and 3.12 where present."""
    usable = sorted(v for v in INTERPRETERS if v >= (3, 9))
    if {(3, 11), (3, 12)} <= set(usable):
        return [INTERPRETERS[(3, 11)], INTERPRETERS[(3, 12)]]
    if len(usable) < 2:
        pytest.skip("two CPython 3.9+ versions are needed (pyenv under %s has %s)"
                    % (pyenv_root(), ", ".join("%d.%d" % v for v in usable) or "none"))
    return [INTERPRETERS[usable[-2]], INTERPRETERS[usable[-1]]]


class Venv:
    """A venv made with ``BASE -m venv``: ``dir``, ``python`` (its bin/python)."""

    def __init__(self, directory, base: str, package: str, extra=()) -> None:
        self.dir, self.name = str(directory), os.path.basename(str(directory))
        subprocess.run([base, "-m", "venv", "--without-pip", self.dir], check=True,
                       timeout=TIMEOUT, capture_output=True)
        self.python = os.path.join(self.dir, "bin", "python")
        site = subprocess.run(
            [self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout.strip()
        for name in (package,) + tuple(extra):
            module = os.path.join(site, name + ".py")
            with open(module, "w") as f:
                f.write("WHERE = %r\n" % ("%s in %s" % (name, self.name)))

    def __repr__(self) -> str:
        return self.name


@pytest.fixture(scope="session")
def venvs(tmp_path_factory):
    """Two venvs of different versions: alpha's (which has package ``alpha``) and
    beta's (``beta``, and a ``psutil`` and a ``pyrust`` of its own)."""
    first, second = two_versions()
    base = tmp_path_factory.mktemp("venvs")
    return (Venv(base / "alpha", first, "alpha"),
            Venv(base / "beta", second, "beta", extra=("psutil", "pyrust")))


@pytest.fixture
def own_venv(tmp_path):
    """A venv of the first version for one test, which may change it."""
    return Venv(tmp_path / "own", two_versions()[0], "alpha")


# -- running pyrust and python ---------------------------------------------------------


def client_env(server, home, **extra) -> dict:
    """The client's environment: no venv, no PYTHON* variable, no configuration of
    the caller's; the test server's socket."""
    env = {k: v for k, v in pyrust_env().items()
           if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env.update(PYRUST_SOCKET=server.path, HOME=str(home), XDG_CONFIG_HOME=str(home / "config"))
    env.update(extra)
    return env


@pytest.fixture
def client(pyrust_command) -> list:
    """The pyrust command through each client (the Python one as the launcher runs it)."""
    return CLIENT if pyrust_command[1:] == ["-m", "pyrust"] else pyrust_command


def pyrust(args, env, cwd, client=CLIENT, **kwargs) -> subprocess.CompletedProcess:
    """Run the pyrust command through ``client`` (an argv prefix)."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(client + list(args), capture_output=True, text=True,
                          timeout=TIMEOUT, env=env, cwd=str(cwd), **kwargs)


def python(interpreter, args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([interpreter] + list(args), capture_output=True, text=True,
                          timeout=TIMEOUT, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL)


def probe(result) -> dict:
    """Return what PROBE printed, but for its parent process (the run's, python's)."""
    assert (result.returncode, result.stderr) == (0, ""), result
    seen = json.loads(result.stdout)
    del seen["parent"]
    return seen


def parent(result) -> int:
    """Return the pid of the process PROBE's run was forked from: its template."""
    return json.loads(result.stdout)["parent"]


def status(env, cwd) -> dict:
    """Return ``pyrust status --json``: one real request."""
    result = pyrust(["status", "--json"], env, cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def templates(env, cwd) -> dict:
    """Return the listed templates by (python, startup): {key: entry}."""
    return {(t["python"], tuple(t["startup"])): t for t in status(env, cwd)["templates"]}


def poll_status(env, cwd, predicate, what: str) -> dict:
    """Ask for the status until ``predicate(status)`` holds; return that status.
    Each poll is a request; fail if it does not hold within TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        current = status(env, cwd)
        if predicate(current):
            return current
        assert time.monotonic() < deadline, "%s: not within %d s: %s" % (what, TIMEOUT, current)


def service_tree(server) -> list:
    """Return the service's descendants (templates, their workers) as psutil Processes."""
    return psutil.Process(server.proc.pid).children(recursive=True)


def assert_ends(pid: int) -> None:
    """Wait (at most TIMEOUT) for process ``pid`` to end and be reaped."""
    try:
        psutil.Process(pid).wait(TIMEOUT)
    except psutil.NoSuchProcess:
        pass


def alive(process) -> bool:
    """Return whether a psutil Process still runs (a zombie does not)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def env_sockets(server) -> list:
    return sorted(glob.glob(os.path.join(str(server.dir), "env-*.sock")))


@pytest.fixture
def home(tmp_path):
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture
def work(tmp_path):
    """The directory runs (and the interpreters they are compared with) start in."""
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


# -- 1. each run gets exactly its environment --------------------------------------------


def selections(venv, mode) -> "tuple[list, dict]":
    """Return (pyrust's options, variables) that name ``venv`` (None: no venv) by ``mode``."""
    if venv is None:
        return [], {}
    return {"VIRTUAL_ENV": ([], {"VIRTUAL_ENV": venv.dir}),
            "--python DIR": (["--python", venv.dir], {}),
            "--python PYTHON": (["--python", venv.python], {}),
            "PYRUST_PYTHON": ([], {"PYRUST_PYTHON": venv.python})}[mode]


def test_runs_alternating_between_venvs_each_see_their_own(client, make_server, venvs, home, work):
    server = make_server()
    alpha, beta = venvs
    base = client_env(server, home)
    default = environment.default_python()
    expected = {v: probe(python(v.python if v else default, ["-c", PROBE], base, work))
                for v in (alpha, beta, None)}
    # What python shows, as the runs must: each its own package, version and prefix.
    assert (expected[alpha]["alpha"], expected[alpha]["beta"]) == ("alpha in alpha", None)
    assert (expected[beta]["alpha"], expected[beta]["beta"]) == (None, "beta in beta")
    assert expected[alpha]["version"] != expected[beta]["version"]
    assert expected[None]["psutil"] is None and expected[alpha]["psutil"] is None
    assert expected[beta]["psutil"] == "psutil in beta"
    assert expected[alpha]["prefix"] == alpha.dir and expected[beta]["prefix"] == beta.dir
    parents = {alpha: set(), beta: set(), None: set()}
    for mode in ("VIRTUAL_ENV", "--python DIR", "--python PYTHON", "PYRUST_PYTHON"):
        for venv in (alpha, beta, None, beta, alpha):
            options, variables = selections(venv, mode)
            result = pyrust(options + ["-c", PROBE], dict(base, **variables), work, client=client)
            assert probe(result) == expected[venv], (mode, venv)
            parents[venv].add(parent(result))
    listed = templates(base, work)
    assert sorted(listed) == sorted([(alpha.python, ()), (beta.python, ()), (default, ())])
    # Every run of an environment was forked by its one template, started once.
    assert {v: list(pids) for v, pids in parents.items()} == {
        alpha: [listed[(alpha.python, ())]["pid"]], beta: [listed[(beta.python, ())]["pid"]],
        None: [listed[(default, ())]["pid"]]}
    assert [t["venv"] for t in status(base, work)["templates"] if t["default"]] == [None]
    assert {listed[(v.python, ())]["venv"] for v in venvs} == {alpha.dir, beta.dir}
    text = pyrust(["status"], base, work, client=client).stdout
    assert all(p in text for p in (alpha.python, beta.python, default)), text
    # Each template is its environment's interpreter running this checkout's server
    # code (PYTHON -c BOOTSTRAP ROOT ...), whatever checkout the test's venv maps.
    commands = {p.pid: p.cmdline() for p in psutil.Process(server.proc.pid).children()}
    assert sorted(commands) == sorted(t["pid"] for t in listed.values())
    for entry in listed.values():
        command = commands[entry["pid"]]
        assert command[0] == entry["python"], command
        assert command[command.index("-c") + 2] == ROOT, command


def test_each_program_form_sees_its_venv(client, make_server, venvs, home, work):
    """sys.path[0] and the rest for a script, -m, stdin, and start-up options."""
    server = make_server()
    (work / "sub").mkdir()
    (work / "sub" / "script.py").write_text(PROBE)
    (work / "probed.py").write_text(PROBE)
    for venv in venvs:
        env = client_env(server, home, VIRTUAL_ENV=venv.dir)
        for args in (["sub/script.py", "a"], ["-m", "probed"], ["-"], ["-s", "-c", PROBE],
                     ["-S", "-c", PROBE], ["-E", "-c", PROBE], ["-O", "sub/script.py"]):
            given = {"input": PROBE, "stdin": None} if args == ["-"] else {}
            expected = subprocess.run([venv.python] + args, capture_output=True, text=True,
                                      timeout=TIMEOUT, env=env, cwd=str(work), **given)
            got = probe(pyrust(args, env, work, client=client, **given))
            assert got == probe(expected), (venv, args)


def test_isolated_mode_sees_its_venv(client, make_server, venvs, home, work):
    server = make_server()
    env = client_env(server, home, VIRTUAL_ENV=venvs[1].dir)
    expected = probe(python(venvs[1].python, ["-I", "-c", PROBE], env, work))
    assert probe(pyrust(["-I", "-c", PROBE], env, work, client=client)) == expected


def test_runs_arriving_together_share_one_cold_start(make_server, venvs, home, work):
    server = make_server()
    env = client_env(server, home, VIRTUAL_ENV=venvs[1].dir)
    code = "import beta, os; print(beta.WHERE, os.getppid(), sep=':')"
    runs = [subprocess.Popen(CLIENT + ["-c", code], env=env, cwd=str(work),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE) for _ in range(6)]
    try:
        outputs = [run.communicate(timeout=TIMEOUT) + (run.returncode,) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait(TIMEOUT)
    template = templates(env, work)[(venvs[1].python, ())]["pid"]
    # One template started, and forked every run.
    assert outputs == [(b"beta in beta:%d\n" % template, b"", 0)] * 6


def test_pyrusts_own_package_is_the_environments(make_server, venvs, home, work):
    server = make_server()
    alpha, beta = venvs
    code = "import pyrust; print(getattr(pyrust, 'WHERE', pyrust.__file__))"
    for venv, interpreter in ((alpha, alpha.python), (beta, beta.python),
                              (None, environment.default_python())):
        env = client_env(server, home, **({"VIRTUAL_ENV": venv.dir} if venv else {}))
        expected = python(interpreter, ["-c", code], env, work)
        result = pyrust(["-c", code], env, work)
        assert (result.stdout, result.returncode) == (expected.stdout, expected.returncode), venv


def test_a_pth_file_added_to_a_warm_venv_is_seen(make_server, own_venv, home, work):
    server = make_server()
    env = client_env(server, home, VIRTUAL_ENV=own_venv.dir)
    assert probe(pyrust(["-c", PROBE], env, work))["prefix"] == own_venv.dir  # warm now
    (work / "editable").mkdir()
    (work / "editable" / "frompath.py").write_text("WHERE = 'from a .pth'\n")
    site = probe(python(own_venv.python, ["-c", PROBE], env, work))["path"][-1]
    with open(os.path.join(site, "editable.pth"), "w") as f:
        f.write(str(work / "editable") + "\n")
    expected = probe(python(own_venv.python, ["-c", PROBE], env, work))
    assert expected["frompath"] == "from a .pth"
    assert probe(pyrust(["-c", PROBE], env, work)) == expected


def test_a_venv_made_anew_with_another_version_is_seen(make_server, venvs, own_venv, home,
                                                      work):
    server = make_server()
    env = client_env(server, home, VIRTUAL_ENV=own_venv.dir)
    assert probe(pyrust(["-c", PROBE], env, work))["prefix"] == own_venv.dir  # warm now
    subprocess.run([two_versions()[1], "-m", "venv", "--clear", "--without-pip", own_venv.dir],
                   check=True, timeout=TIMEOUT, capture_output=True)
    expected = probe(python(own_venv.python, ["-c", PROBE], env, work))
    assert expected["version"] == probe(python(venvs[1].python, ["-c", PROBE], env, work))[
        "version"]
    assert probe(pyrust(["-c", PROBE], env, work)) == expected


# -- 2. PYTHONPATH ---------------------------------------------------------------------


def test_pythonpath_entries_are_where_python_places_them(client, make_server, venvs, home, work):
    server = make_server()
    first, second = work / "first", work / "second"
    for directory, where in ((first, "first"), (second, "second")):
        directory.mkdir()
        (directory / "frompath.py").write_text("WHERE = %r\n" % where)
    (second / "alpha.py").write_text("WHERE = 'alpha on PYTHONPATH'\n")  # before site-packages
    # Absolute, relative, missing, and an empty entry, as python reads each.
    pythonpath = os.pathsep.join([str(first), "second", str(work / "missing"), ""])
    env = client_env(server, home, PYTHONPATH=pythonpath)
    alpha, beta = venvs
    for venv in (alpha, beta, None, alpha):
        interpreter = venv.python if venv else environment.default_python()
        variables = {"VIRTUAL_ENV": venv.dir} if venv else {}
        expected = probe(python(interpreter, ["-c", PROBE], dict(env, **variables), work))
        assert expected["frompath"] == "first" and expected["alpha"] == "alpha on PYTHONPATH"
        assert str(first) in expected["path"]
        got = probe(pyrust(["-c", PROBE], dict(env, **variables), work, client=client))
        assert got == expected, venv
    # The same templates serve runs without PYTHONPATH: it is per run, not in the key.
    clean = probe(pyrust(["-c", PROBE], client_env(server, home, VIRTUAL_ENV=alpha.dir), work,
                         client=client))
    assert clean["frompath"] is None and clean["alpha"] == "alpha in alpha"
    assert len(status(env, work)["templates"]) == 3


# -- 3. a project's [tool.pyrust] --------------------------------------------------------


COUNTED = """\
import os
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imports.log'), 'a') as f:
    f.write('%d\\n' % os.getpid())
PID = os.getpid()
"""


def make_project(directory, venv, preload, echo=None) -> str:
    """Write a project using ``venv`` (by a path relative to it) and preloading ``preload``."""
    directory.mkdir()
    lines = ["[project]", 'name = "example"', "", "[tool.pyrust]",
             "python = %s" % json.dumps(os.path.relpath(venv.dir, str(directory))),
             "preload = %s" % json.dumps(preload)]
    if echo is not None:
        lines.append("echo = %s" % ("true" if echo else "false"))
    (directory / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return str(directory)


def test_a_projects_preloads_are_warm_in_its_own_interpreter(client, make_server, venvs, home,
                                                             tmp_path):
    server = make_server()
    alpha, beta = venvs
    project = tmp_path / "project"
    make_project(project, beta, ["counted"], echo=False)
    (project / "counted.py").write_text(COUNTED)
    env = client_env(server, home)
    # The project's interpreter (by its relative path), its sys.path, as python -c shows.
    expected = probe(python(beta.python, ["-c", PROBE], env, project))
    assert probe(pyrust(["-c", PROBE], env, project, client=client)) == expected
    imported = "import counted, os, sys\nprint(counted.PID, os.getpid(), counted.__file__)"
    pids = []
    for _ in range(3):
        result = pyrust(["-c", imported], env, project, client=client)
        assert result.returncode == 0, result.stderr
        module_pid, run_pid, path = result.stdout.split()
        assert path == str(project / "counted.py")
        pids.append((int(module_pid), int(run_pid)))
    # Imported once, by the template, before any run: no run imported it again.
    assert (project / "imports.log").read_text().split() == [str(pids[0][0])]
    assert len({module for module, _ in pids}) == 1
    assert all(module != run for module, run in pids)
    (entry,) = [t for t in status(env, project)["templates"] if t["project"]]
    assert (entry["pid"], entry["python"], entry["preload"], entry["venv"]) == (
        pids[0][0], beta.python, ["counted"], beta.dir)
    # A venv that is active wins over the project's interpreter.
    active = probe(pyrust(["-c", PROBE], dict(env, VIRTUAL_ENV=alpha.dir), project, client=client))
    assert (active["prefix"], active["alpha"]) == (alpha.dir, "alpha in alpha")


@pytest.mark.parametrize("code", [
    "import sys; sys.stdout.write('no newline, no echo')",
    "import os; os.system('echo from a shell')",
    "1 + 1",
    "print(1)\n2",
    "1/0",
    "raise SystemExit(3)",
])
def test_a_projects_echo_false_gives_pythons_exact_c(client, make_server, venvs, home, tmp_path,
                                                     code):
    server = make_server()
    project = tmp_path / "project"
    make_project(project, venvs[0], [], echo=False)
    env = client_env(server, home)
    expected = python(venvs[0].python, ["-c", code], env, project)
    result = pyrust(["-c", code], env, project, client=client)
    assert (result.stdout, result.stderr, result.returncode) == (
        expected.stdout, expected.stderr, expected.returncode)
    # Outside the project the echo is back: pyrust's -c "2+3" prints 5.
    assert pyrust(["-c", "2+3"], env, tmp_path, client=client).stdout == "5\n"


# -- 4. environments that cannot start ----------------------------------------------------


def assert_refused(result, interpreter, *causes) -> str:
    """Assert ``result`` is one line, "pyrust: python INTERPRETER...", naming each cause."""
    assert (result.returncode, result.stdout) == (125, ""), result
    message = result.stderr
    assert message.startswith("pyrust: python %s" % interpreter), message
    assert message.endswith("\n") and message.count("\n") == 1, message
    for cause in causes:
        assert cause in message, message
    return message


def assert_still_serving(server, env, cwd, venv) -> None:
    """The default environment and ``venv``'s answer right after a refusal."""
    assert pyrust(["-c", "2+3"], env, cwd).stdout == "5\n"
    result = pyrust(["-c", "import alpha; alpha.WHERE"], dict(env, VIRTUAL_ENV=venv.dir), cwd)
    assert (result.stdout, result.returncode) == ("'alpha in alpha'\n", 0)
    assert server.request("2+3") == (0, "5\n")  # a protocol-v1 client too


def test_an_interpreter_that_does_not_exist(client, make_server, venvs, home, work):
    server = make_server()
    env = client_env(server, home)
    missing = str(work / "nowhere" / "bin" / "python")
    for options, variables in (
            (["--python", missing], {}), ([], {"PYRUST_PYTHON": missing}),
            ([], {"VIRTUAL_ENV": str(work / "nowhere")})):
        result = pyrust(options + ["-c", "print('ran')"], dict(env, **variables), work,
                        client=client)
        assert_refused(result, missing, "No such file or directory")
        assert_still_serving(server, env, work, venvs[0])
    # No socket is left for the interpreter that does not exist: only the listed ones.
    assert env_sockets(server) == sorted(t["socket"] for t in status(env, work)["templates"])
    assert len(env_sockets(server)) == 2


OLD = [INTERPRETERS[v] for v in ((2, 7), (3, 8)) if v in INTERPRETERS]


@pytest.mark.skipif(not OLD, reason="no CPython 2.7 or 3.8 here (pyenv under %s)" % pyenv_root())
@pytest.mark.parametrize("old", OLD)
def test_an_interpreter_older_than_3_9(client, make_server, venvs, home, work, old):
    server = make_server()
    env = client_env(server, home)
    version = subprocess.run([old, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=TIMEOUT).stdout.strip()
    result = pyrust(["--python", old, "-c", "print('ran')"], env, work, client=client)
    assert_refused(result, old, version, "CPython 3.9")
    assert_still_serving(server, env, work, venvs[0])


BROKEN = """\
import os
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'attempts.log'), 'a') as f:
    f.write('%d\\n' % os.getpid())
raise RuntimeError('broken on purpose')
"""


def test_a_failing_preload_is_refused_without_a_retry_storm(client, make_server, venvs, home,
                                                            tmp_path):
    server = make_server()
    alpha = venvs[0]
    project = tmp_path / "project"
    make_project(project, alpha, ["broken"])
    (project / "broken.py").write_text(BROKEN)
    env = client_env(server, home)
    started = time.monotonic()
    for _ in range(20):
        result = pyrust(["-c", "print('ran')"], env, project, client=client)
        assert_refused(result, alpha.python, "broken", "RuntimeError: broken on purpose")
    elapsed = time.monotonic() - started
    # Each start of the environment's template imported broken.py once.
    starts = len((project / "attempts.log").read_text().split())
    assert starts >= 1
    # A failed environment is held 1 s, then 2, 4...: the burst could start it
    # once per hold that ended within it, whatever the pace of the runs.
    assert starts <= 2 + math.log2(elapsed + 1), (starts, elapsed)
    assert_still_serving(server, env, tmp_path, alpha)
    assert [t["preload"] for t in status(env, tmp_path)["templates"]] == [[], []]


# -- 5. idle exit and the limit, through pyrust status --------------------------------------


def test_an_idle_template_exits_and_the_default_one_stays(make_server, venvs, home, work, gate):
    server = make_server("template_idle_exit = 1\n")
    alpha = venvs[0]
    env = client_env(server, home)
    in_alpha = dict(env, VIRTUAL_ENV=alpha.dir)
    assert status(env, work)["template_idle_exit"] == 1
    # A run in alpha's template waits at the gate: busy, it is not idle.
    run = subprocess.Popen(CLIENT + ["-c", gate.program("started", "'done'")], env=in_alpha,
                           cwd=str(work), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        conn = gate.accept()
        assert conn.recv(16) == b"started"
        listed = templates(env, work)
        entry = listed[(alpha.python, ())]
        assert (entry["state"], entry["workers_busy"], entry["idle_seconds"]) == ("ready", 1, 0)
        conn.sendall(b"x")
        conn.close()
        out, err = run.communicate(timeout=TIMEOUT)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(TIMEOUT)
    assert (out, err, run.returncode) == (b"'done'\n", b"", 0)
    final = poll_status(env, work, lambda s: len(s["templates"]) == 1, "alpha's template ends")
    (default,) = final["templates"]
    assert default["default"] and default["python"] == environment.default_python()
    assert_ends(entry["pid"])
    assert entry["socket"] not in env_sockets(server)
    # Used again, alpha's environment starts cold and serves.
    assert pyrust(["-c", "import alpha; alpha.WHERE"], in_alpha, work).stdout == \
        "'alpha in alpha'\n"
    assert templates(env, work)[(alpha.python, ())]["pid"] != entry["pid"]


@pytest.mark.parametrize("limit", [2, 3])
def test_the_least_recently_used_template_ends_at_the_limit(make_server, venvs, home, work,
                                                          limit):
    server = make_server("max_templates = %d\n" % limit)
    alpha, beta = venvs
    env = client_env(server, home)
    # Three environments besides the default one: alpha's, beta's, alpha's under -O.
    runs = {"alpha": ([], alpha), "beta": ([], beta), "alpha -O": (["-O"], alpha)}
    keys = {"alpha": (alpha.python, ()), "beta": (beta.python, ()),
            "alpha -O": (alpha.python, ("-O",))}
    default = (environment.default_python(), ())
    recent, pids, started = [], {}, set()
    for name in ("alpha", "beta", "alpha", "alpha -O", "beta", "alpha", "alpha"):
        options, venv = runs[name]
        result = pyrust(options + ["-c", PROBE], dict(env, VIRTUAL_ENV=venv.dir), work)
        seen = probe(result)
        assert (seen["prefix"], seen["optimize"]) == (venv.dir, 1 if options else 0), name
        recent = [n for n in recent if n != name] + [name]
        # A new environment may pass the limit for a moment (a template idle for
        # under a second does not end to make room); the service soon comes back.
        current = poll_status(env, work, lambda s: len(s["templates"]) <= limit,
                              "back within max_templates after %s" % name)
        assert current["max_templates"] == limit
        listed = {(t["python"], tuple(t["startup"])): t for t in current["templates"]}
        # The default one and the most recently used others; the rest were ended.
        kept = recent[-(limit - 1):]
        assert sorted(listed) == sorted([default] + [keys[n] for n in kept]), (name, recent)
        pid = listed[keys[name]]["pid"]
        assert parent(result) == pid
        # Still listed since its last run: the same (warm) template; else a cold start.
        assert pid == pids[name] if name in pids else pid not in started, name
        started.add(pid)
        for gone in set(pids) - set(kept):
            assert_ends(pids[gone])
        pids = {n: listed[keys[n]]["pid"] for n in kept}
    assert sorted(env_sockets(server)) == sorted(
        t["socket"] for t in status(env, work)["templates"])


# -- 6. stopping ends every template ----------------------------------------------------------


@pytest.mark.parametrize("how", ["--stop-daemon", "SIGTERM"])
def test_stopping_the_service_ends_every_template(make_server, venvs, home, work, how):
    server = make_server()
    env = client_env(server, home)
    alpha, beta = venvs
    for variables in ({}, {"VIRTUAL_ENV": alpha.dir}, {"VIRTUAL_ENV": beta.dir}):
        assert pyrust(["-c", "2+3"], dict(env, **variables), work).stdout == "5\n"
    listed = status(env, work)["templates"]
    assert len(listed) == 3
    tree = service_tree(server)
    template_pids = {t["pid"] for t in listed}
    assert template_pids <= {p.pid for p in tree}
    assert len(tree) > len(template_pids)  # their spares too
    assert len(env_sockets(server)) == 3
    if how == "SIGTERM":
        server.proc.send_signal(signal.SIGTERM)
    else:
        result = pyrust(["--stop-daemon"], env, work)
        assert result.returncode == 0, result.stderr
    assert server.proc.wait(TIMEOUT) == 0
    left = [p for p in tree if alive(p)]
    assert left == [], left
    assert env_sockets(server) == []
    assert os.path.exists(server.path)  # the OS's socket stays, as systemd's would
