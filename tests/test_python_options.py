"""Python's per-run options and program forms, through a live server, against python.

Every case sends an extended run request built from the protocol's fields
(PYOPT, ECHO, form "i", the client's fds), the way the client sends one,
and runs the same command with the interpreter the run uses (a run tells
its ``sys.executable``), with the same environment, working directory and
stdin.  stdout, stderr and the exit status must be identical.  Each case
runs in the default environment and in the template of every other CPython
3.9-3.13 found here (asked of the service with op ensure, as the client does):

1. Options and variables on pipes: -u, -B, -q, -P, -W, PYTHONPATH,
   PYTHONWARNINGS, PYTHONUNBUFFERED, PYTHONDONTWRITEBYTECODE, PYTHONINSPECT,
   -i without a terminal, python's exact -c (echo off).
2. Program forms: a directory or zip file with ``__main__.py``, one without,
   a program read from stdin by the interpreter itself (form "i").
3. pyrust's own package is not importable unless the environment has it, and
   a captured session gives the next request the template's state back.
4. python's prompt on a terminal (a pty as fds 0-2): banner, PYTHONSTARTUP,
   -q, -i after a program, exit statuses.
"""

import os
import pty
import re
import select
import socket
import struct
import subprocess
import zipfile

import pytest

from conftest import (ROOT, TIMEOUT, Server, connect, cpython_interpreters, default_signals,
                      request)

from pyrust import ops, protocol
from pyrust.environment import Environment

pytestmark = pytest.mark.differential  # a tier: ./test.sh --fast skips it

#: The variables both interpreters start with; a case adds its own.
BASE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TERM": "xterm"}
#: Prints what the options change; ends without a bare expression (no echo).
STATE = ("import sys, warnings\n"
         "print(sys.path[:4])\nprint(sys.flags)\nprint(sys.warnoptions, sys.dont_write_bytecode)\n"
         "print(*warnings.filters[:3], sep='\\n')\nwarnings.warn('careful')\n"
         "print(sys.stdout.write_through, sys.stdout.line_buffering, flush=True)\n"
         "import os\n_ = os.write(1, b'raw\\n')\nprint('after raw')")

#: Imports a module from the working directory; tells whether its .pyc was written.
PYC = ("import os, shutil\nshutil.rmtree('__pycache__', ignore_errors=True)\nimport mod\n"
       "print(os.listdir('__pycache__') if os.path.isdir('__pycache__') else 'no cache')")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    # A template per interpreter and per set of start-up options: none ends early.
    server = Server(tmp_path_factory.mktemp("options") / "server", "max_templates = 32\n",
                    workers=2)
    yield server
    server.close()


class Target:
    """Where runs of one environment go: its template's socket (``path``) and
    the fields naming the environment (none for the default one)."""

    def __init__(self, path: str, fields=()) -> None:
        self.path, self.fields = path, list(fields)


def ensure(service, env: Environment) -> Target:
    """Return the Target of ``env``'s template, which the service starts if need be."""
    with connect(service.path) as sock:
        header, payload = protocol.encode_extended([(protocol.OP, ops.ENSURE.code)]
                                                   + env.fields())
        sock.sendall(header + payload)
        status, reply = protocol.read_response(sock)
    assert status == protocol.OK, reply
    return Target(os.fsdecode(reply), env.fields())


@pytest.fixture(scope="module", params=[None] + cpython_interpreters(),
                ids=lambda python: os.path.basename(python) if python else "default")
def server(service, request):
    """The template runs go to: the default environment's, or one per interpreter."""
    if request.param is None:
        return Target(service.path)
    target = ensure(service, Environment(request.param))
    if target.path == service.path:
        pytest.skip("the default environment's interpreter")
    return target


@pytest.fixture(scope="module")
def python(server):
    """The interpreter the template's runs use: the reference."""
    status, output = request(server.path, "import sys\nsys.executable")
    assert status == 0
    return eval(output)


@pytest.fixture
def work(tmp_path):
    """A working directory with a package directory, zip files and a module."""
    work = tmp_path / "work"
    (work / "app").mkdir(parents=True)
    (work / "app" / "__main__.py").write_text(
        "import sys\nprint('app', __name__, __file__, sys.argv, sys.path[0])\n")
    (work / "empty").mkdir()
    (work / "rel").mkdir()
    (work / "mod.py").write_text("X = 1\n")
    with zipfile.ZipFile(str(work / "app.zip"), "w") as z:
        z.writestr("__main__.py", "import sys\nprint('zip', __file__, sys.argv, sys.path[0])\n")
    with zipfile.ZipFile(str(work / "nomain.zip"), "w") as z:
        z.writestr("other.py", "")
    (work / "app.pyz").write_bytes(b"#!/usr/bin/env python3\n" + (work / "app.zip").read_bytes())
    (work / "startup.py").write_text("print('startup', __name__)\nSTARTED = 1\n")
    return work


# --- driving both ---------------------------------------------------------------------


def run_fields(target, form, source, argv, options=(), env=None, cwd=None, echo=b"0"):
    """Return the fields of a run on the client's fds, as the client sends them."""
    fields = [(protocol.OP, ops.RUN.code)] + target.fields + [
        (protocol.FORM, form.encode()), (protocol.STDIO, b"f")]
    if source is not None:
        fields.append((protocol.SOURCE, source.encode()))
    fields += [(protocol.ARG, os.fsencode(arg)) for arg in argv]
    if cwd is not None:
        fields.append((protocol.CWD, os.fsencode(str(cwd))))
    fields += [(protocol.ENV, os.fsencode("%s=%s" % item)) for item in (env or {}).items()]
    fields += [(protocol.PYOPT, option.encode()) for option in options]
    if echo is not None:
        fields.append((protocol.ECHO, echo))
    return fields


def send_run(path, fields, fds):
    """Send a run with ``fds`` as its 0-2; return the connection (the reply comes
    when the program's process ends)."""
    sock = connect(path)
    header, payload = protocol.encode_extended(fields)
    sock.sendall(header)
    assert socket.send_fds(sock, [payload], list(fds)) == len(payload)
    return sock


def exit_of(sock) -> int:
    """Return the exit code of the run's reply on ``sock`` (-N: died by signal N)."""
    status, payload = protocol.read_response(sock)
    assert status in (protocol.OK, protocol.ERROR), payload
    (code,) = struct.unpack(">i", payload[:4])
    sock.close()
    return code



def both_on_files(server, python, tmp_path, pyargs, form, source, argv, options=(),
                  env=None, stdin=b"", echo=b"0", cwd=None):
    """Run python and pyrust with stdin, stdout and stderr on files; return their
    (stdout, stderr, exit status) triples."""
    env = dict(BASE_ENV, HOME=str(tmp_path), **(env or {}))
    cwd = str(cwd or tmp_path / "work")
    results = []
    for who in ("python", "pyrust"):
        paths = [tmp_path / ("%s.%s" % (who, name)) for name in ("in", "out", "err")]
        paths[0].write_bytes(stdin)
        files = [open(str(paths[0]), "rb"), open(str(paths[1]), "wb"),
                 open(str(paths[2]), "wb")]
        try:
            if who == "python":
                code = subprocess.run([python] + pyargs, stdin=files[0], stdout=files[1],
                                      stderr=files[2], env=env, cwd=cwd, timeout=TIMEOUT,
                                      preexec_fn=default_signals).returncode
            else:
                fields = run_fields(server, form, source, argv, options, env, cwd, echo)
                sock = send_run(server.path, fields, [f.fileno() for f in files])
                code = exit_of(sock)
        finally:
            for f in files:
                f.close()
        results.append((paths[1].read_bytes(), paths[2].read_bytes(), code))
    return results


def c_case(options, env=None, code=STATE, **extra):
    """A -c case: python gets the options, then -c CODE."""
    return dict(pyargs=list(options) + ["-c", code], form="c", source=code, argv=["-c"],
                options=options, env=env, **extra)


def f_case(options, path, args=(), **extra):
    """A program-file case (a file, a directory, a zip file)."""
    return dict(pyargs=list(options) + [path] + list(args), form="f", source=path,
                argv=[path] + list(args), options=options, **extra)


def i_case(options, **extra):
    """No program: the interpreter reads stdin (a prompt only when it is interactive)."""
    return dict(pyargs=list(options), form="i", source=None, argv=[""], options=options,
                **extra)


# --- 1 and 2. options, variables and forms, on files ---------------------------------

CASES = {
    "no option": c_case(()),
    "-u": c_case(("-u",)),
    "PYTHONUNBUFFERED=1": c_case((), {"PYTHONUNBUFFERED": "1"}),
    "PYTHONUNBUFFERED=0 is off": c_case((), {"PYTHONUNBUFFERED": "0"}),
    "-B": c_case(("-B",)),
    "PYTHONDONTWRITEBYTECODE": c_case((), {"PYTHONDONTWRITEBYTECODE": "x"}),
    "-B writes no .pyc": c_case(("-B",), code=PYC),
    "bytecode written without -B": c_case((), code=PYC),
    "-q": c_case(("-q",)),
    "-W error": c_case(("-Werror",)),
    "-W ignore::DeprecationWarning": c_case(("-Wignore::DeprecationWarning",)),
    "-W several, some invalid": c_case(("-Wonce", "-Wbogus", "-Werror::UserWarning",
                                        "-Wignore::no_such_module.Warn")),
    "PYTHONWARNINGS then -W": c_case(("-Werror",), {"PYTHONWARNINGS": "default,,ignore, once "}),
    "PYTHONWARNINGS=error": c_case((), {"PYTHONWARNINGS": "error"}),
    "PYTHONPATH": c_case((), {"PYTHONPATH": "rel::/no/such/dir/:~/x:rel:./rel/../rel"}),
    "PYTHONPATH of the standard library": c_case((), {"PYTHONPATH": "{stdlib}"}),
    "PYTHONPATH imports": c_case((), {"PYTHONPATH": "rel"}, "import inrel\nprint(inrel.__file__)"),
    "-P": c_case(("-P",), {"PYTHONPATH": "rel"}),
    "-P does not find the cwd": c_case(("-P",), code="import mod"),
    "-i without a terminal": c_case(("-i",), code="x = 1\nprint('ran')"),
    "-i and SystemExit": c_case(("-i",), code="raise SystemExit(4)"),
    "-i reads the prompt from stdin": c_case(("-i",), code="x = 6", stdin=b"x * 7\nexit(5)\n"),
    "PYTHONINSPECT without a terminal": c_case((), {"PYTHONINSPECT": "1"},
                                               "print('ran')\nraise SystemExit(3)"),
    "PYTHONINSPECT set by the program": c_case((), code="import os\n"
                                               "os.environ['PYTHONINSPECT'] = '1'"),
    "-c exactly as python (echo off)": c_case((), code="x = 2\nx + 3"),
    "a directory": f_case((), "app", ("a", "b")),
    "a directory under -P": f_case(("-P",), "app"),
    "a directory without __main__": f_case((), "empty"),
    "a zip file": f_case((), "app.zip"),
    "a zip file with a shebang": f_case((), "app.pyz"),
    "a zip file without __main__": f_case((), "nomain.zip"),
    "a path not normalized": f_case((), "rel/../app"),
    "a missing file": f_case((), "nosuch.py"),
    "-i after a directory without __main__": f_case(("-i",), "empty", stdin=b"print(2)\n"),
    "stdin read by the interpreter": i_case((), stdin=b"import sys\nprint(sys.argv, __file__)\n"
                                            b"raise SystemExit(7)\n"),
    "stdin with an error": i_case((), stdin=b"print(1)\n1/0\nprint(2)\n"),
    "-i on stdin": i_case(("-i",), stdin=b"1 + 1\nimport sys; sys.flags.interactive\n"),
    "-i -q and PYTHONSTARTUP on stdin": i_case(("-i", "-q"), stdin=b"STARTED\n",
                                               env={"PYTHONSTARTUP": "startup.py"}),
    "-i and a missing PYTHONSTARTUP": i_case(("-i",), stdin=b"",
                                             env={"PYTHONSTARTUP": "/no/such/file"}),
}


@pytest.mark.parametrize("name", CASES)
def test_same_as_python(server, python, tmp_path, work, name):
    case = dict(CASES[name])
    if (case.get("env") or {}).get("PYTHONPATH") == "{stdlib}":  # the interpreter's own
        stdlib = subprocess.run([python, "-c", "import os; print(os.path.dirname(os.__file__))"],
                                capture_output=True, check=True, timeout=TIMEOUT).stdout
        case["env"] = {"PYTHONPATH": stdlib.decode().strip()}
    (work / "rel" / "inrel.py").write_text("")
    python_result, pyrust_result = both_on_files(server, python, tmp_path, **case)
    assert pyrust_result == python_result


def command_on_files(pyrust_command, service, python, tmp_path, pyargs, env=None, stdin=b"",
                     config="echo = false\n"):
    """Run ``python PYARGS`` and ``pyrust PYARGS`` (the command, through a client)
    with stdin, stdout and stderr on files and the same environment (which names
    the service's socket and a configuration: echo off, as python's -c); return
    their (stdout, stderr, exit status) triples."""
    config_home = tmp_path / "config"
    (config_home / "pyrust").mkdir(parents=True, exist_ok=True)
    (config_home / "pyrust" / "config.toml").write_text("autostart = false\n" + config)
    env = dict(BASE_ENV, HOME=str(tmp_path), PYRUST_SOCKET=service.path,
               XDG_CONFIG_HOME=str(config_home), **(env or {}))
    if pyrust_command[1:] == ["-m", "pyrust"]:
        # The Python client as installed (-I: the case's PYTHONPATH is the run's,
        # not the client's), this checkout on its path.
        pyrust_command = [pyrust_command[0], "-IS", "-c", "import sys; sys.path.append(%r); "
                          "from pyrust.cli import main; sys.exit(main())" % ROOT]
    results = []
    for who, prefix in (("python", [python]), ("pyrust", pyrust_command)):
        paths = [tmp_path / ("%s.%s" % (who, name)) for name in ("in", "out", "err")]
        paths[0].write_bytes(stdin)
        with open(str(paths[0]), "rb") as i, open(str(paths[1]), "wb") as o, \
                open(str(paths[2]), "wb") as e:
            code = subprocess.run(prefix + pyargs, stdin=i, stdout=o, stderr=e, env=env,
                                  cwd=str(tmp_path / "work"), timeout=TIMEOUT,
                                  preexec_fn=default_signals).returncode
        results.append((paths[1].read_bytes(), paths[2].read_bytes(), code))
    return results


@pytest.mark.parametrize("name", CASES)
def test_the_command_is_python(pyrust_command, service, default_python, tmp_path, work, name):
    """The same table through the pyrust command (each client), in the default
    environment: the command line becomes the fields above as python reads it."""
    case = CASES[name]
    env = dict(case.get("env") or {})
    if env.get("PYTHONPATH") == "{stdlib}":
        env["PYTHONPATH"] = os.path.dirname(subprocess.run(
            [default_python, "-c", "import os; print(os.__file__)"], capture_output=True,
            text=True, check=True, timeout=TIMEOUT).stdout.strip())
    (work / "rel" / "inrel.py").write_text("")
    python_result, pyrust_result = command_on_files(
        pyrust_command, service, default_python, tmp_path, case["pyargs"], env,
        case.get("stdin", b""))
    assert pyrust_result == python_result


def test_the_command_echoes_by_default(pyrust_command, service, default_python, tmp_path, work):
    python_result, pyrust_result = command_on_files(
        pyrust_command, service, default_python, tmp_path, ["-c", "x = 2\nx + 3"], config="")
    assert pyrust_result == (python_result[0] + b"5\n",) + python_result[1:]


def test_the_echo_stays_the_default(server, python, tmp_path, work):
    python_result, pyrust_result = both_on_files(
        server, python, tmp_path, ["-c", "x = 2\nx + 3"], "c", "x = 2\nx + 3", ["-c"], echo=None)
    assert pyrust_result == (python_result[0] + b"5\n",) + python_result[1:]


def test_a_per_run_option_python_lacks_is_refused_as_python_refuses_it(server, python, tmp_path,
                                                                        work):
    # -P is new in 3.11; before, python's usage error (exit 2).  Either way: as python.
    python_result, pyrust_result = both_on_files(server, python, tmp_path, **c_case(("-P",)))
    assert pyrust_result == python_result


# --- 3. pyrust out of sight, sessions given back ---------------------------------------


def test_the_server_runs_this_checkout(server):
    # A run sees the executor's recursion-limit wrapper: its file tells where it is.
    status, output = request(server.path, "import sys\nsys.getrecursionlimit.__code__.co_filename")
    assert (status, eval(output)) == (0, os.path.join(ROOT, "pyrust", "server", "executor.py"))


def test_pyrust_is_importable_only_as_the_environment_has_it(server, python, tmp_path, work):
    code = ("import sys\nprint([m for m in sys.modules if m.split('.')[0] == 'pyrust'])\n"
            "try:\n    import pyrust\nexcept ImportError as exc:\n    print(exc)\n"
            "else:\n    print(pyrust.__file__)")
    fake = tmp_path / "fake"
    (fake / "pyrust").mkdir(parents=True)
    (fake / "pyrust" / "__init__.py").write_text("")
    for env in ({}, {"PYTHONPATH": str(fake)}):
        python_result, pyrust_result = both_on_files(server, python, tmp_path,
                                                     **c_case((), env, code))
        assert pyrust_result == python_result


CHECK = ("import sys, warnings\n"
         "print(sys.flags, sys.warnoptions, sys.dont_write_bytecode, warnings.filters, sys.path,"
         " [m for m in sys.modules if m.split('.')[0] == 'pyrust'])")


def captured(target, sock, code, options=(), env=None):
    """Send a captured run on session ``sock``; return (status, exit code, output)."""
    fields = target.fields + [(protocol.FORM, b"c"), (protocol.SOURCE, code.encode()),
                              (protocol.ECHO, b"0")]
    fields += [(protocol.PYOPT, option.encode()) for option in options]
    fields += [(protocol.ENV, ("%s=%s" % item).encode()) for item in (env or {}).items()]
    header, payload = protocol.encode_extended(fields)
    sock.sendall(header + payload)
    status, reply = protocol.read_response(sock)
    return status, struct.unpack(">i", reply[:4])[0], reply[4:].decode()


def test_a_captured_session_gives_the_next_request_the_templates_state(server):
    with connect(server.path) as sock:
        before = request(sock, CHECK)
        safe_path = ("-P",) if eval(request(sock, "import sys\nsys.version_info >= (3, 11)")[1]) \
            else ()
        # Where the environment has pyrust (an editable install), the run's own
        # copy must give way to the service's after the run.
        status, code, output = captured(
            server, sock, "import sys, warnings\ntry:\n    import pyrust\nexcept ImportError:\n"
            "    pass\nprint(sys.flags.inspect, sys.warnoptions)\n"
            "warnings.simplefilter('ignore')\nraise SystemExit(3)",
            ("-i", "-B", "-q", "-Werror") + safe_path,
            {"PYTHONPATH": "/elsewhere", "PYTHONWARNINGS": "ignore"})
        # -i: SystemExit is reported, then the prompt meets the end of stdin.
        assert (status, code) == (protocol.OK, 0)
        assert output.startswith("1 ['ignore', 'error']\nTraceback")
        assert output.endswith("SystemExit: 3\n>>> \n")
        assert request(sock, CHECK) == before
        # The template's filters: a warning is shown once, and again in the next request.
        shown = "import warnings\nwarnings.warn('again')"
        assert "UserWarning: again" in request(sock, shown)[1]
        assert "UserWarning: again" in request(sock, shown)[1]


def test_a_malformed_option_or_echo_is_refused(server):
    with connect(server.path) as sock:
        for field in ((protocol.PYOPT, b"-X"), (protocol.ECHO, b"2")):
            header, payload = protocol.encode_extended([(protocol.SOURCE, b"1"), field])
            sock.sendall(header + payload)
            status, output = protocol.read_response(sock)
            assert status == protocol.BAD_REQUEST
            assert output.startswith(b"malformed extended request: ")
        header, payload = protocol.encode_extended([(protocol.FORM, b"i")])
        sock.sendall(header + payload)  # the prompt needs the client's fds
        assert protocol.read_response(sock)[0] == protocol.BAD_REQUEST
        assert request(sock, "2+3") == (0, "5\n")


# --- 4. python's prompt on a terminal ----------------------------------------------------

PROMPTS = (b">>>", b"...")
#: Terminal control sequences (colours, cursor moves) around 3.13's prompts.
_CONTROL = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")


def converse(master, lines):
    """Type ``lines`` into the terminal ``master``, each once the interpreter waits
    at a prompt (its output ends with one, but for control sequences and
    3.13's automatic indentation); return
    everything it wrote until it closed the terminal."""
    output, sent, answered = b"", 0, 0
    while True:
        ready, _, _ = select.select([master], [], [], TIMEOUT)
        assert ready, "the interpreter neither prompted nor ended: %r" % output
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: every process holding the terminal is gone
            return output
        if not chunk:
            return output
        output += chunk
        waiting = _CONTROL.sub(b"", output[answered:]).rstrip(b" ").endswith(PROMPTS)
        if sent < len(lines) and waiting:
            os.write(master, lines[sent])
            sent, answered = sent + 1, len(output)


def both_on_a_terminal(server, python, tmp_path, pyargs, form, source, argv, options=(),
                       env=None, lines=(), echo=b"0"):
    """Run python and pyrust with a pty as fds 0-2, typing ``lines``; return their
    (output, exit status) pairs."""
    cwd = str(tmp_path / "work")
    results = []
    for who in ("python", "pyrust"):
        home = tmp_path / ("home-" + who)  # each its own ~/.python_history
        home.mkdir()
        run_env = dict(BASE_ENV, HOME=str(home), **(env or {}))
        master, slave = pty.openpty()
        try:
            if who == "python":
                proc = subprocess.Popen([python] + pyargs, stdin=slave, stdout=slave,
                                        stderr=slave, env=run_env, cwd=cwd,
                                        preexec_fn=default_signals)
            else:
                sock = send_run(server.path, run_fields(server, form, source, argv, options,
                                                        run_env, cwd, echo), [slave] * 3)
            os.close(slave)
            output = converse(master, [line.encode() for line in lines])
            code = proc.wait(TIMEOUT) if who == "python" else exit_of(sock)
        finally:
            os.close(master)
        results.append((output, code))
    return results


TERMINAL = {
    "the prompt, then end-of-file": i_case((), lines=[
        "1 + 1\n", "import sys; sys.argv, sys.ps1 == '>' * 3 + ' ', sys.path[0], "
        "sys.flags.inspect\n", "\x04"]),
    "exit(3)": i_case((), lines=["print('bye')\n", "exit(3)\n"]),
    "a block, an error, SystemExit with a message": i_case((), lines=[
        "def f():\n", "    return 1 / 0\n", "\n", "f()\n", "raise SystemExit('gone')\n"]),
    "-q and PYTHONSTARTUP": i_case(("-q",), env={"PYTHONSTARTUP": "startup.py"},
                                   lines=["STARTED, __name__\n", "\x04"]),
    "readline and the hook": i_case(("-q",), lines=[
        "import sys; 'readline' in sys.modules, 'rlcompleter' in sys.modules\n", "\x04"]),
    "-i after a program": c_case(("-i",), code="x = 5\nprint('program')",
                                 lines=["x\n", "\x04"]),
    "-i after an error": c_case(("-i",), code="1 / 0", lines=["\x04"]),
    "-i after SystemExit": c_case(("-i",), code="raise SystemExit(9)", lines=["exit(2)\n"]),
    "PYTHONINSPECT on a terminal": c_case((), {"PYTHONINSPECT": "1"}, "y = 1",
                                          lines=["y + 1\n", "\x04"]),
    "no prompt without -i": c_case((), code="import sys\nprint(sys.stdin.isatty(), "
                                   "'readline' in sys.modules)"),
    "PYTHON_BASIC_REPL": i_case(("-q",), env={"PYTHON_BASIC_REPL": "1"},
                                lines=["2 * 3\n", "\x04"]),
    "a terminal the new REPL cannot use": i_case(("-q",), env={"TERM": "dumb"},
                                                 lines=["2 * 3\n", "\x04"]),
}


@pytest.mark.parametrize("name", TERMINAL)
def test_the_prompt_on_a_terminal_is_pythons(server, python, tmp_path, work, name):
    case = dict(TERMINAL[name])
    case.pop("stdin", None)
    python_result, pyrust_result = both_on_a_terminal(server, python, tmp_path, **case)
    assert pyrust_result == python_result


# --- 5. start-up options (the template's) and the per-run ones ---------------------------

#: Start-up options of an environment's template (part of its key, not per run).
STARTUP = [("-E",), ("-I",), ("-S",), ("-s",), ("-Xdev",), ("-b",), ("-bb",), ("-E", "-S")]
#: Per-run options and variables that the start-up options change the meaning of.
PER_RUN = {"PYTHONPATH": "rel::/no/such/dir", "PYTHONWARNINGS": "once",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "latin-1"}
UNDER_STARTUP = {
    "state": c_case(("-Werror::DeprecationWarning", "-q"), PER_RUN,
                    STATE + "\nprint('\\xe9', sys.stdout.encoding)"),
    "bytes": c_case((), PER_RUN, "print(str(b'x'), b'x' == 'x')"),
    "a directory": f_case(("-P",), "app", env=PER_RUN),
    "stdin": i_case(("-i",), env=dict(PER_RUN, PYTHONSTARTUP="startup.py"), stdin=b"1 + 1\n"),
}


@pytest.fixture(scope="module")
def default_python(service):
    status, output = request(service.path, "import sys\nsys.executable")
    assert status == 0
    return eval(output)


@pytest.mark.parametrize("startup", STARTUP, ids=" ".join)
@pytest.mark.parametrize("name", UNDER_STARTUP)
def test_start_up_options_shape_the_per_run_ones(service, default_python, tmp_path, work,
                                                 startup, name):
    target = ensure(service, Environment(default_python, startup=startup))
    case = dict(UNDER_STARTUP[name])
    if "-P" in case["options"] and not _knows_safe_path(default_python):
        case["options"], case["pyargs"] = (), case["pyargs"][1:]
    case["pyargs"] = list(startup) + case["pyargs"]
    python_result, pyrust_result = both_on_files(target, default_python, tmp_path, **case)
    assert pyrust_result == python_result


@pytest.mark.parametrize("startup", [("-S",), ("-I",), ()], ids=["-S", "-I", "none"])
def test_the_banner_follows_the_start_up_options(service, default_python, tmp_path, work,
                                                 startup):
    target = ensure(service, Environment(default_python, startup=startup))
    case = i_case((), env={"PYTHON_BASIC_REPL": "1"}, lines=["import sys; 'readline' in "
                                                             "sys.modules\n", "\x04"])
    case["pyargs"] = list(startup) + case["pyargs"]
    python_result, pyrust_result = both_on_a_terminal(target, default_python, tmp_path, **case)
    assert pyrust_result == python_result


def _knows_safe_path(python: str) -> bool:
    return subprocess.run([python, "-P", "-c", ""], capture_output=True,
                          timeout=TIMEOUT).returncode == 0
