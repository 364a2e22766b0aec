"""Every run starts clean: what one run does never reaches the next, and a run
ends exactly as ``python`` ends.

Every expected result comes from the real interpreter (``default_python()``,
with the same cwd and environment), never from a hard-coded transcript:

1. The isolation table: run A, then B, on a one-spare server; B must give
   what a fresh ``python -c B`` gives.  Again over protocol v1.
2. Edited modules (in the cwd, next to a script, preloaded) are seen at once.
3. The exit sequence and processes: atexit, threads, os._exit, signals, fork,
   process groups, the client's other fds.
4. A burst of runs, after which the pool is back at its spares.
"""

import collections
import concurrent.futures
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time

import psutil
import pytest

from pyrust.environment import default_python

from conftest import ROOT, TIMEOUT, default_signals, pyrust_env, request

pytestmark = pytest.mark.differential  # a tier: ./test.sh --fast skips it

PYTHON = [default_python()]  # the interpreter runs get by default
#: The pyrust command through the Python client; the tables that exercise the
#: client itself run through each client (the ``pyrust_command`` fixture).
PYRUST = [sys.executable, "-m", "pyrust"]
#: A server with one spare; the pool may grow so that it can refill.
ONE_SPARE = dict(config_text="max_workers = 4\n", workers=1)
#: How long a process of a run that has ended may take to disappear.
GONE_WITHIN = 5.0

Outcome = collections.namedtuple("Outcome", "stdout stderr code")


@pytest.fixture(autouse=True)
def no_process_left_behind(tmp_path):
    """After the test (and after its servers stopped), kill what is left of it.

    A run that leaks (a forked child that went on serving, a worker that
    blocked SIGTERM, a subprocess of a run) must fail its own test, not slow
    down or break the ones after it.  Only processes of this test are
    touched: those whose command line names its tmp_path or that run in it.
    """
    yield
    mine = str(tmp_path)
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        if proc.pid == os.getpid():
            continue
        cmdline = " ".join(proc.info["cmdline"] or ())
        cwd = proc.info["cwd"] or ""
        if mine in cmdline or cwd == mine or cwd.startswith(mine + os.sep):
            try:
                proc.kill()
            except psutil.Error:
                pass



def _env(server_path, overrides=None) -> dict:
    """Return the environment both interpreters get; a None value removes the key.

    The client's configuration turns autostart off: a server that died in a
    test must fail it, not leave a background server of its own behind.
    """
    config_home = os.path.join(os.path.dirname(server_path), "client-config")
    os.makedirs(os.path.join(config_home, "pyrust"), exist_ok=True)
    with open(os.path.join(config_home, "pyrust", "config.toml"), "w") as f:
        f.write("autostart = false\n")
    env = pyrust_env(PYRUST_SOCKET=server_path, XDG_CONFIG_HOME=config_home)
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run(prefix, args, cwd, env, stdin=b"", timeout=TIMEOUT) -> Outcome:
    """Run ``prefix + args``; return its Outcome (text, undecodable bytes escaped)."""
    proc = subprocess.run(prefix + list(args), input=stdin, capture_output=True, cwd=str(cwd),
                          env=env, timeout=timeout, preexec_fn=default_signals)
    return Outcome(proc.stdout.decode("utf-8", "backslashreplace"),
                   proc.stderr.decode("utf-8", "backslashreplace"), proc.returncode)


def write_files(directory, files) -> None:
    """Write ``files`` (name -> text; None deletes) into ``directory``.

    A file that existed gets a later mtime than it had, as an editor saving
    it a moment later would give it (its size changes too, in the tables).
    """
    for name, text in (files or {}).items():
        path = directory / name
        old = path.stat().st_mtime_ns if path.exists() else None
        if text is None:
            path.unlink()
            continue
        path.write_text(text)
        if old is not None:
            later = max(old + 2_000_000_000, path.stat().st_mtime_ns)
            os.utime(path, ns=(later, later))


# --- 1. the isolation table --------------------------------------------------------
#
# (name, A, B, options).  A runs first (pyrust -c A), then B (pyrust -c B) on
# the same one-spare server; B's stdout, stderr and exit status must be those
# of a fresh `python -c B`.  No B ends in a bare expression whose value is not
# None (pyrust echoes it with -c), and no A either (where A is compared).
# Options:
#   files    {name: text} written into the working directory before A
#   between  {name: text or None} written (None: deleted) after A, before B
#   check_a  A's own outcome must also be python's (e.g. its atexit output)
#   check    "not_seeded": B's stdout is not the value random gives after seed(1);
#            "differs_from_a": B's stdout differs from A's (both random)
#   v1       False: not in the v1 table (B dies by a signal, or shows the
#            caller's cwd/env/fds, which a v1 request does not have)

ISOLATION = [
    ("json.dumps monkeypatched",
     "import json\njson.dumps = lambda *a, **k: 'patched'",
     "import json\nprint(json.dumps({'a': 1}))", {}),
    ("decimal context precision",
     "import decimal\ndecimal.getcontext().prec = 3",
     "import decimal\nprint(decimal.Decimal(1) / decimal.Decimal(7))", {}),
    ("warnings turned into errors",
     "import warnings\nwarnings.simplefilter('error')",
     "import warnings\nwarnings.warn('careful')\nprint('after')", {}),
    ("warnings ignored",
     "import warnings\nwarnings.simplefilter('ignore')",
     "import warnings\nwarnings.warn('careful')\nprint('after')", {}),
    ("builtins.len replaced",
     "import builtins\nbuiltins.len = lambda x: 42",
     "print(len('abc'))", {}),
    ("builtins.print replaced",
     "import builtins\nbuiltins.print = lambda *a, **k: None",
     "print('visible')", {}),
    ("a name added to builtins",
     "import builtins\nbuiltins.leaked_name = 'leak'",
     "print(leaked_name)", {}),
    ("module in the cwd edited",
     "import mymod\nprint(mymod.X)",
     "import mymod\nprint(mymod.X)",
     {"files": {"mymod.py": "X = 1\n"}, "between": {"mymod.py": "X = 2  # a new size\n"},
      "check_a": True}),
    ("module in the cwd deleted",
     "import gone_mod\nprint(gone_mod.X)",
     "import gone_mod\nprint(gone_mod.X)",
     {"files": {"gone_mod.py": "X = 1\n"}, "between": {"gone_mod.py": None}}),
    ("int max str digits",
     "import sys\nsys.set_int_max_str_digits(0)",
     "print(len(str(10 ** 5000)))", {}),
    ("SIGINT ignored",
     "import signal\n_ = signal.signal(signal.SIGINT, signal.SIG_IGN)",
     "import os, signal\nprint(signal.getsignal(signal.SIGINT), flush=True)\n"
     "os.kill(os.getpid(), signal.SIGINT)\nprint('not reached')", {"v1": False}),
    ("SIGTERM ignored",
     "import signal\n_ = signal.signal(signal.SIGTERM, signal.SIG_IGN)",
     "import os, signal\nprint(signal.getsignal(signal.SIGTERM), flush=True)\n"
     "os.kill(os.getpid(), signal.SIGTERM)\nprint('survived')", {"v1": False}),
    ("SIGCHLD ignored",
     "import signal\n_ = signal.signal(signal.SIGCHLD, signal.SIG_IGN)",
     "import subprocess\nprint(subprocess.run(['false']).returncode)", {}),
    ("SIGPIPE set to default",
     "import signal\n_ = signal.signal(signal.SIGPIPE, signal.SIG_DFL)",
     "import signal\nprint(signal.getsignal(signal.SIGPIPE))", {}),
    ("every signal disposition",
     "import signal\nfor s in (signal.SIGUSR1, signal.SIGHUP, signal.SIGQUIT, signal.SIGALRM):\n"
     "    _ = signal.signal(s, signal.SIG_IGN)",
     "import signal\nfor s in sorted(signal.valid_signals()):\n"
     "    try:\n        print(int(s), signal.getsignal(s))\n    except ValueError:\n"
     "        pass",
     # Over v1 the service's time limit owns SIGALRM and its stop SIGTERM (README).
     {"v1": False}),
    ("signal mask",
     "import signal\n_ = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, "
     "signal.SIGUSR1})",
     "import signal\nprint(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))", {}),
    ("an alarm left pending",
     "import signal\n_ = signal.setitimer(signal.ITIMER_REAL, 0.3)",
     "import time\ntime.sleep(0.6)\nprint('slept')", {}),
    ("gc disabled",
     "import gc\ngc.disable()",
     "import gc\nprint(gc.isenabled())", {}),
    ("gc thresholds",
     "import gc\ngc.set_threshold(1, 1, 1)",
     "import gc\nprint(gc.get_threshold())", {}),
    ("sys.settrace",
     "import sys\ndef tracer(frame, event, arg):\n    print('traced', event)\n    return tracer\n"
     "sys.settrace(tracer)",
     "import sys\nprint(sys.gettrace())\ndef f():\n    return 1\nx = f()\nprint('end')", {}),
    ("sys.setprofile",
     "import sys\nsys.setprofile(lambda frame, event, arg: print('profiled', event))",
     "import sys\nprint(sys.getprofile())\nprint('end')", {}),
    ("threading.settrace",
     "import threading\nthreading.settrace(lambda *a: None)",
     "import threading\nprint(threading.gettrace())", {}),
    ("sys.modules entry added",
     "import sys, types\nm = types.ModuleType('ghostmod')\nm.X = 'ghost'\n"
     "sys.modules['ghostmod'] = m",
     "import ghostmod\nprint(ghostmod.X)", {}),
    ("sys.modules entry replaced",
     "import sys, types\nsys.modules['json'] = types.ModuleType('json')",
     "import json\nprint(json.dumps([1]))", {}),
    ("sys.modules entry removed",
     "import json, sys\ndel sys.modules['json.decoder']",
     "import json, json.decoder\nprint(json.decoder.JSONDecodeError is json.JSONDecodeError)",
     {}),
    ("an import blocker on sys.meta_path",
     "import sys\nclass Blocker:\n    @staticmethod\n    def find_spec(name, path=None, target=None):\n"
     "        raise ImportError('blocked ' + name)\nsys.meta_path.insert(0, Blocker)",
     "import xml.dom.minidom\nprint('imported')", {}),
    ("time zone changed",
     "import os, time\nos.environ['TZ'] = 'JST-9'\ntime.tzset()",
     "import time\nprint(time.tzname, time.timezone, time.localtime(0).tm_hour)", {}),
    ("logging.basicConfig",
     "import logging\nlogging.basicConfig(level=logging.DEBUG, format='A %(message)s')",
     "import logging\nlogging.info('x')\nlogging.warning('w')\nprint(logging.getLogger().level)",
     {}),
    ("a handler on the root logger",
     "import logging, sys\nlogging.getLogger().addHandler(logging.StreamHandler(sys.stdout))\n"
     "logging.getLogger().setLevel(logging.INFO)",
     "import logging\nprint(logging.getLogger().handlers, logging.getLogger().level)\n"
     "logging.error('e')", {}),
    ("faulthandler enabled",
     "import faulthandler\nfaulthandler.enable()",
     "import faulthandler\nprint(faulthandler.is_enabled())", {}),
    ("tracemalloc started",
     "import tracemalloc\ntracemalloc.start(5)",
     "import tracemalloc\nprint(tracemalloc.is_tracing(), tracemalloc.get_traceback_limit())",
     {}),
    ("copyreg",
     "import copyreg\ncopyreg.pickle(complex, lambda c: (str, ('hijacked',)))",
     "import pickle\nprint(pickle.loads(pickle.dumps(1+2j)))", {}),
    ("codecs.register",
     "import codecs\ncodecs.register(lambda name: codecs.lookup('utf-8') "
     "if name == 'pyrust_leak' else None)\n_ = 'x'.encode('pyrust_leak')",
     "print('abc'.encode('pyrust_leak'))", {}),
    ("a daemon thread left running",
     "import threading, time\nthreading.Thread(target=time.sleep, args=(600,), daemon=True, "
     "name='leftover').start()\nprint('a')",
     "import threading\nprint(threading.active_count(), [t.name for t in threading.enumerate()])",
     {}),
    ("a daemon thread that keeps printing",
     "import threading, time\ndef tick():\n    while True:\n        print('tick', flush=True)\n"
     "        time.sleep(0.01)\nthreading.Thread(target=tick, daemon=True).start()",
     "import time\ntime.sleep(0.3)\nprint('b')", {}),
    ("threading.stack_size",
     "import threading\n_ = threading.stack_size(256 * 1024)",
     "import threading\nprint(threading.stack_size())", {}),
    ("umask",
     "import os\n_ = os.umask(0o077)",
     "import os\nprint(oct(os.umask(0)))", {}),
    ("nice",
     "import os\n_ = os.nice(5)",
     "import os\nprint(os.nice(0))", {}),
    ("CPU affinity",
     "import os\nos.sched_setaffinity(0, {min(os.sched_getaffinity(0))})",
     "import os\nprint(sorted(os.sched_getaffinity(0)))", {}),
    ("sys.addaudithook",
     "import sys\ndef hook(event, args):\n    if event == 'open':\n        print('audit', event)\n"
     "sys.addaudithook(hook)",
     "f = open('/dev/null')\nf.close()\nprint('opened')", {}),
    ("os.register_at_fork",
     "import os\nos.register_at_fork(after_in_child=lambda: print('leaked fork hook', flush=True))",
     "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\n_ = os.waitpid(pid, 0)\n"
     "print('parent')", {}),
    ("random seeded",
     "import random\nrandom.seed(1)",
     "import random\nprint(random.random())", {"check": "not_seeded"}),
    ("random state is new in every run",
     "import random\nprint(random.random())",
     "import random\nprint(random.random())", {"check": "differs_from_a"}),
    ("fds left open",
     "import os, socket\nfds = [os.open('/dev/null', os.O_RDONLY) for _ in range(3)]\n"
     "os.dup2(fds[0], 40)\nr, w = os.pipe()\ns = socket.socket().detach()\n"
     "for fd in fds + [40, r, w, s]:\n    os.set_inheritable(fd, True)",
     "import os\nprint(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))", {"v1": False}),
    ("RLIMIT_NOFILE lowered",
     "import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (20, 20))",
     "import resource\nprint(resource.getrlimit(resource.RLIMIT_NOFILE))", {}),
    ("recursion limit",
     "import sys\nsys.setrecursionlimit(60)",
     "import sys\ndef depth(n):\n    return n if n == 0 else depth(n - 1)\n"
     "print(depth(500), sys.getrecursionlimit())", {}),
    ("switch interval",
     "import sys\nsys.setswitchinterval(1.0)",
     "import sys\nprint(sys.getswitchinterval())", {}),
    ("sys.dont_write_bytecode",
     "import sys\nsys.dont_write_bytecode = not sys.dont_write_bytecode",
     "import sys\nprint(sys.dont_write_bytecode)", {}),
    ("sys.stdout reconfigured",
     "import sys\nsys.stdout.reconfigure(encoding='ascii', errors='replace', "
     "line_buffering=True)",
     "import sys\nprint(sys.stdout.encoding, sys.stdout.errors, sys.stdout.line_buffering)\n"
     "print('\\u00e9')",
     # v1 captures the output in a stream of its own (UTF-8, strict).
     {"v1": False}),
    ("sys.stdout replaced",
     "import os, sys\nsys.stdout = open(os.devnull, 'w')",
     "print('visible')", {}),
    ("sys.stdout closed",
     "import sys\nsys.stdout.close()",
     "import sys\nprint(sys.stdout.closed)", {}),
    ("os.environ changed",
     "import os\nos.environ['PYRUST_LEAK'] = 'leaked'\n_ = os.environ.pop('HOME', None)\n"
     "os.environ['PATH'] = '/nowhere'",
     "import os\nprint(sorted(os.environ.items()))", {"v1": False}),
    ("os.putenv",
     "import os\nos.putenv('PYRUST_PUTENV', 'leaked')",
     "import subprocess\nprint(subprocess.run(['sh', '-c', 'echo \"[$PYRUST_PUTENV]\"'], "
     "capture_output=True, text=True).stdout.strip())", {}),
    ("os.chdir",
     "import os\nos.chdir('/')",
     "import os\nprint(os.getcwd())", {}),
    ("sys.path changed",
     "import sys\nsys.path.insert(0, '/nowhere')\nsys.path.append('/elsewhere')",
     "import sys\nprint('/nowhere' in sys.path, '/elsewhere' in sys.path, repr(sys.path[0]))",
     {}),
    ("a module attribute changed",
     "import os.path\nos.path.sep = 'X'\nos.sep = 'Y'",
     "import os\nprint(os.sep, os.path.sep, os.path.join('a', 'b'))", {}),
    ("tempfile.tempdir",
     "import tempfile\ntempfile.tempdir = '/nonexistent-pyrust'",
     "import tempfile\nprint(tempfile.gettempdir())", {}),
    ("mock.patch started and never stopped",
     "from unittest import mock\n_ = mock.patch('os.getcwd', return_value='/patched').start()",
     "import os\nprint(os.getcwd() != '/patched')", {}),
    ("threading.excepthook",
     "import threading\nthreading.excepthook = lambda args: print('hooked', args.exc_type.__name__)",
     "import threading\ndef boom():\n    raise ValueError('in thread')\n"
     "t = threading.Thread(target=boom, name='worker')\nt.start()\nt.join()\nprint('joined')", {}),
    ("sys.excepthook",
     "import sys\nsys.excepthook = lambda *args: print('hooked')",
     "raise ValueError('plain')", {}),
    ("sys.exit replaced",
     "import sys\nsys.exit = lambda *a: None",
     "import sys\nsys.exit(3)", {}),
    ("atexit handler",
     "import atexit\natexit.register(print, 'bye from A')\nprint('a')",
     "print('b')", {"check_a": True}),
    ("locale",
     "import locale\n_ = locale.setlocale(locale.LC_ALL, 'C')\n"
     "_ = locale.setlocale(locale.LC_NUMERIC, 'C.UTF-8')",
     "import locale\nprint(locale.setlocale(locale.LC_ALL))", {}),
    ("socket default timeout",
     "import socket\nsocket.setdefaulttimeout(5)",
     "import socket\nprint(socket.getdefaulttimeout())", {}),
    ("mimetypes.add_type",
     "import mimetypes\nmimetypes.add_type('application/x-pyrust', '.pyr')",
     "import mimetypes\nprint(mimetypes.guess_type('a.pyr'))", {}),
    ("asyncio event loop policy",
     "import asyncio\nclass Policy(asyncio.DefaultEventLoopPolicy):\n    pass\n"
     "asyncio.set_event_loop_policy(Policy())",
     "import asyncio\nprint(type(asyncio.get_event_loop_policy()).__name__)", {}),
]


def _seeded_value(cwd, env) -> str:
    """Return what python prints for random.random() right after random.seed(1)."""
    return run(PYTHON, ["-c", "import random\nrandom.seed(1)\nprint(random.random())"],
               cwd, env).stdout


def _check_b(opts, got_a, got_b, want_b, cwd, env) -> None:
    """Assert B's outcome under pyrust against python's, as the case's check asks."""
    check = opts.get("check")
    if check is None:
        assert got_b == want_b
        return
    assert (got_b.stderr, got_b.code) == (want_b.stderr, want_b.code)
    assert 0 <= float(got_b.stdout) < 1
    if check == "not_seeded":
        assert got_b.stdout != _seeded_value(cwd, env)
    else:  # differs_from_a
        assert got_b.stdout != got_a.stdout


@pytest.mark.parametrize("a, b, opts", [pytest.param(a, b, o, id=n) for n, a, b, o in ISOLATION])
def test_nothing_of_a_run_reaches_the_next(pyrust_command, make_server, tmp_path, a, b, opts):
    server = make_server(**ONE_SPARE)
    work = tmp_path / "work"
    work.mkdir()
    env = _env(server.path)
    write_files(work, opts.get("files"))
    want_a = run(PYTHON, ["-c", a], work, env) if opts.get("check_a") else None
    got_a = run(pyrust_command, ["-c", a], work, env)
    write_files(work, opts.get("between"))
    got_b = run(pyrust_command, ["-c", b], work, env)
    want_b = run(PYTHON, ["-c", b], work, env)
    if want_a is not None:
        assert {"A": got_a, "B": got_b} == {"A": want_a, "B": want_b}
    _check_b(opts, got_a, got_b, want_b, work, env)


# The same table over protocol v1: a connection per request, output captured
# (stdout and stderr in one stream, in the order written), code run in the
# service's cwd and environment.  Python's expected output is its stdout and
# stderr on one pipe, unbuffered so that they keep that order.  Left out: cases
# whose B dies by a signal (a v1 reply cannot say so) or shows the caller's
# cwd, environment or fds (a v1 request has none of its own).
V1_CASES = [pytest.param(a, b, o, id=n) for n, a, b, o in ISOLATION if o.get("v1", True)]


def run_merged(prefix, args, cwd, env) -> Outcome:
    """Run ``prefix + args`` with stderr on stdout's pipe, unbuffered; return the Outcome."""
    proc = subprocess.run(prefix + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd=str(cwd),
                          env=dict(env, PYTHONUNBUFFERED="1"), timeout=TIMEOUT,
                          preexec_fn=default_signals)
    return Outcome(proc.stdout.decode("utf-8", "backslashreplace"), "", proc.returncode)


@pytest.mark.parametrize("a, b, opts", V1_CASES)
def test_nothing_of_a_v1_request_reaches_the_next(make_server, a, b, opts):
    server = make_server(**ONE_SPARE)
    work = server.dir  # where v1 code runs
    # v1 code runs in the template's environment: the service's, without the
    # PYTHON* variables, which belong to an environment's key.
    env = {k: v for k, v in pyrust_env().items() if not k.startswith("PYTHON")}
    write_files(work, opts.get("files"))
    status_a, out_a = request(server.path, a)
    write_files(work, opts.get("between"))
    status_b, out_b = request(server.path, b)
    want = run_merged(PYTHON, ["-c", b], work, env)
    assert want.code >= 0, "the table is wrong: python's B dies by a signal; mark it v1: False"
    if opts.get("check"):
        got = Outcome(out_b, "", 0 if status_b == 0 else 1)
        _check_b(opts, Outcome(out_a, "", status_a), got, Outcome("", "", 0), work, env)
    else:
        assert (out_b, status_b == 0) == (want.stdout, want.code == 0)


# --- 2. edited modules are seen at once ---------------------------------------------

ROUNDS = 4


def _module_text(round_):
    """Return a module whose VALUE names the round; every round has a new size."""
    return "VALUE = %r\n" % ("round %d " % round_ + "x" * round_)


def _edit(path, round_):
    write_files(path.parent, {path.name: _module_text(round_)})


def test_an_edited_module_in_the_cwd_is_seen_at_once(make_server, tmp_path):
    server = make_server(**ONE_SPARE)
    work = tmp_path / "work"
    work.mkdir()
    env = _env(server.path)
    code = "import cwd_mod\nprint(cwd_mod.VALUE)"
    for round_ in range(ROUNDS):
        _edit(work / "cwd_mod.py", round_)
        got = run(PYRUST, ["-c", code], work, env)
        assert got == run(PYTHON, ["-c", code], work, env), "round %d" % round_


def test_an_edited_module_next_to_a_script_is_seen_at_once(make_server, tmp_path):
    server = make_server(**ONE_SPARE)
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "main_script.py").write_text("import script_mod\nprint(script_mod.VALUE)\n")
    elsewhere = tmp_path / "elsewhere"  # the cwd is not the script's directory
    elsewhere.mkdir()
    env = _env(server.path)
    script = str(scripts / "main_script.py")
    for round_ in range(ROUNDS):
        _edit(scripts / "script_mod.py", round_)
        got = run(PYRUST, [script], elsewhere, env)
        assert got == run(PYTHON, [script], elsewhere, env), "round %d" % round_


def test_an_edited_preloaded_module_is_seen_at_once(make_server, tmp_path):
    modules = tmp_path / "modules"
    modules.mkdir()
    _edit(modules / "watched_mod.py", 0)
    path = ROOT + os.pathsep + str(modules)
    server = make_server('preload = ["watched_mod"]\nmax_workers = 4\n', workers=1,
                         env={"PYTHONPATH": path})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env(server.path, {"PYTHONPATH": path})
    code = "import watched_mod\nprint(watched_mod.VALUE)"
    # The client reads the server's configuration, so its runs are the
    # environment that preloads watched_mod.
    pyrust = PYRUST + ["--config", server.config_path]
    for round_ in range(ROUNDS):
        if round_:
            _edit(modules / "watched_mod.py", round_)
        got = run(pyrust, ["-c", code], elsewhere, env)
        assert got == run(PYTHON, ["-c", code], elsewhere, env), "round %d" % round_


# --- 3. the exit sequence and processes ---------------------------------------------
#
# (name, program, options); each runs as `python -c`/`python FILE` and as
# `pyrust -c`/`pyrust FILE`, one after the other in the same directory.
# Options:
#   env      overrides of the environment (None removes a variable)
#   gone     files into which the program writes pids: every such process
#            must be gone soon after the run ends (none survives, as under python)
#   alive    files of pids that must still run after the run (as under python);
#            the test kills them afterwards

FORKED_CHILD_EXITS = """\
import os, sys
pid = os.fork()
if pid == 0:
    with open('child.pid', 'w') as f:
        f.write(str(os.getpid()))
    print('child', flush=True)
    sys.exit(5)
_, status = os.waitpid(pid, 0)
print('parent saw', os.waitstatus_to_exitcode(status))
"""

FORKED_CHILD_RETURNS = """\
import os
pid = os.fork()
if pid == 0:
    with open('child.pid', 'w') as f:
        f.write(str(os.getpid()))
    print('child ends by falling off the end')
else:
    _, status = os.waitpid(pid, 0)
    print('parent saw', os.waitstatus_to_exitcode(status))
"""

FORKED_CHILD_RAISES = """\
import atexit, os
PARENT = os.getpid()
atexit.register(lambda: print('atexit in', 'parent' if os.getpid() == PARENT else 'child'))
pid = os.fork()
if pid == 0:
    with open('child.pid', 'w') as f:
        f.write(str(os.getpid()))
    raise ValueError('in the child')
_, status = os.waitpid(pid, 0)
print('parent saw', os.waitstatus_to_exitcode(status))
"""

SLEEPER = """\
import subprocess
p = subprocess.Popen(['sleep', '600'], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL%s)
with open('sleeper.pid', 'w') as f:
    f.write(str(p.pid))
print('left a sleeper behind')
"""

EXITS = [
    ("atexit handlers print, last registered first",
     "import atexit, sys\natexit.register(print, 'first registered')\n"
     "atexit.register(lambda: print('to stderr', file=sys.stderr))\n"
     "atexit.register(print, 'last registered')\nprint('main ends')", {}),
    ("atexit handlers run after SystemExit",
     "import atexit, sys\natexit.register(print, 'handler')\nsys.exit(3)", {}),
    ("atexit handlers run after an uncaught exception",
     "import atexit, sys\natexit.register(lambda: print('handler', file=sys.stderr))\n"
     "raise ValueError('main')", {}),
    ("atexit handler unregistered",
     "import atexit\natexit.register(print, 'never')\natexit.unregister(print)\nprint('main')", {}),
    ("a non-daemon thread prints after the main program ends",
     "import threading, time\nended = threading.Event()\ndef late():\n    ended.wait()\n"
     "    time.sleep(0.2)\n    print('late', flush=True)\n"
     "threading.Thread(target=late).start()\nprint('main ends', flush=True)\nended.set()", {}),
    ("SystemExit waits for a non-daemon thread",
     "import sys, threading\ngo = threading.Event()\n"
     "def late():\n    go.wait()\n    print('thread done')\n"
     "threading.Thread(target=late).start()\ntry:\n    sys.exit(4)\nfinally:\n    go.set()", {}),
    ("buffered output is flushed at exit",
     "import sys\n_ = sys.stdout.write('no newline, buffered')\n_ = sys.stderr.write('err')",
     {"env": {"PYTHONUNBUFFERED": None}}),
    ("os._exit(7)",
     "import os\nprint('flushed', flush=True)\nos._exit(7)", {}),
    ("os._exit loses buffered output",
     "import os\nprint('flushed', flush=True)\nprint('lost in the buffer')\nos._exit(0)",
     {"env": {"PYTHONUNBUFFERED": None}}),
    ("segfault", "import ctypes\nctypes.string_at(0)", {}),
    ("SIGKILL of itself", "import os\nprint('dying', flush=True)\nos.kill(os.getpid(), 9)", {}),
    ("SIGTERM of itself", "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)", {}),
    ("SIGINT of itself, uncaught", "import os, signal\nos.kill(os.getpid(), signal.SIGINT)", {}),
    ("closerange(3, 1024)",
     "import os\nos.closerange(3, 1024)\nprint('closed')\nraise SystemExit(3)", {}),
    ("close every fd above 2 by number",
     "import os\nfor fd in range(3, 1024):\n    try:\n        os.close(fd)\n    except OSError:\n"
     "        pass\nprint('closed')", {}),
    ("a forked child exits with sys.exit", FORKED_CHILD_EXITS, {"gone": ["child.pid"]}),
    ("a forked child returns", FORKED_CHILD_RETURNS, {"gone": ["child.pid"]}),
    ("a forked child raises", FORKED_CHILD_RAISES, {"gone": ["child.pid"]}),
    ("a forked child is left unwaited",
     "import os\nif os.fork() == 0:\n    with open('child.pid', 'w') as f:\n"
     "        f.write(str(os.getpid()))\n    os._exit(0)\nprint('parent ends')",
     {"gone": ["child.pid"]}),
    ("a subprocess left sleeping in the run's process group", SLEEPER % "",
     {"alive": ["sleeper.pid"]}),
    ("a subprocess left sleeping in its own session", SLEEPER % ", start_new_session=True",
     {"alive": ["sleeper.pid"]}),
]


def _pid(path) -> int:
    return int(path.read_text())


def _finished(pid: int) -> bool:
    """Return whether process ``pid`` no longer runs (gone, or a zombie: this
    machine's init may never reap an orphan, as under python too)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _assert_gone(pid: int, what: str) -> None:
    """Assert that process ``pid`` stops running within GONE_WITHIN seconds."""
    deadline = time.monotonic() + GONE_WITHIN
    while not _finished(pid):
        assert time.monotonic() < deadline, "%s (pid %d) survived the run" % (what, pid)
        time.sleep(0.01)  # a process, not a server: nothing to wait on but its state


def _assert_running(pid: int, what: str) -> None:
    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        status = "gone"
    assert status not in ("gone", psutil.STATUS_ZOMBIE), "%s (pid %d) is %s" % (what, pid, status)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("form", ["c", "f"])
@pytest.mark.parametrize("code, opts", [pytest.param(c, o, id=n) for n, c, o in EXITS])
def test_a_run_ends_as_python_ends(pyrust_command, make_server, tmp_path, code, opts, form):
    server = make_server(**ONE_SPARE)
    work = tmp_path / "work"
    work.mkdir()
    env = _env(server.path, opts.get("env"))
    if form == "f":
        (work / "prog.py").write_text(code)
    args = ["-c", code] if form == "c" else ["prog.py"]
    outcomes = {}
    try:
        for name, prefix in (("python", PYTHON), ("pyrust", pyrust_command)):
            outcomes[name] = run(prefix, args, work, env)
            for pidfile in opts.get("gone", []):
                _assert_gone(_pid(work / pidfile), "%s under %s" % (pidfile, name))
            for pidfile in opts.get("alive", []):
                _assert_running(_pid(work / pidfile), "%s under %s" % (pidfile, name))
                _kill(_pid(work / pidfile))
            for pidfile in opts.get("gone", []) + opts.get("alive", []):
                (work / pidfile).unlink()
    finally:
        for pidfile in opts.get("alive", []):
            if (work / pidfile).exists():
                _kill(_pid(work / pidfile))
    assert outcomes["pyrust"] == outcomes["python"]


# Shell command lines: {run} is the interpreter (python, or pyrust); each runs
# under bash with a time limit, in a session of its own (so that a hang is
# killed with everything it started).

POOL_PROGRAM = """\
import concurrent.futures, multiprocessing

def square(x):
    return x * x

if __name__ == '__main__':
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        print(list(pool.map(square, range(6))))
    print('done')
"""

SHELL = [
    ("a fd the client opened for writing (3>file)",
     "{run} -c 'import os; _ = os.write(3, b\"x\")' 3>out; echo \"status $?\"; cat out", {}),
    ("a fd the client opened for reading (4<file)",
     "echo hello >in; {run} -c 'import os; print(os.read(4, 100))' 4<in", {}),
    ("a fd at a high number (9>file)",
     "{run} -c 'import os; print(os.write(9, b\"nine\"))' 9>out; cat out", {}),
    ("the fds a run sees", "echo hello >in; {run} -c 'import os; "
     "print(sorted(int(fd) for fd in os.listdir(\"/proc/self/fd\")))' 5<in 7>out", {}),
    ("the client's umask", "umask 077; {run} -c 'import os; print(oct(os.umask(0)))'; "
     "umask 002; {run} -c 'import os; print(oct(os.umask(0)))'", {}),
    ("process substitution", "{run} -m json.tool <(echo '{{}}')", {}),
    ("process substitution, a file to read",
     "{run} -c 'import sys; print(open(sys.argv[1]).read().split())' <(echo a b c)", {}),
    ("a spawn process pool piped into cat",
     "set -o pipefail; {run} pool_prog.py | cat", {"files": {"pool_prog.py": POOL_PROGRAM}}),
    ("a lock the program held is free once the command returns",
     "for i in 1 2 3; do {run} -c 'import fcntl; f = open(\"lockfile\", \"w\"); "
     "fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print(\"locked\")'; done", {}),
    ("a program piped into head", "set -o pipefail; {run} -c 'for i in range(100000): print(i)' "
     "| head -n 2; echo \"status ${{PIPESTATUS[0]}}\"", {}),
]


def run_shell(command, cwd, env) -> Outcome:
    """Run ``command`` under bash, in a session of its own, killed with all it
    started if it runs past TIMEOUT; return its Outcome."""
    proc = subprocess.Popen(["/bin/bash", "-c", command], cwd=str(cwd), env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=default_signals)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        # Not communicate() again: a process outside the session (started by a
        # worker) may hold the pipes open for ever.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()
        proc.stderr.close()
        proc.wait(TIMEOUT)
        pytest.fail("%r did not end within %s s" % (command, TIMEOUT))
    return Outcome(out.decode(errors="backslashreplace"), err.decode(errors="backslashreplace"),
                   proc.returncode)


@pytest.mark.parametrize("command, opts", [pytest.param(c, o, id=n) for n, c, o in SHELL])
def test_shell_pipelines_and_redirections_as_python(pyrust_command, make_server, tmp_path, command, opts):
    server = make_server(**ONE_SPARE)
    env = _env(server.path)
    outcomes = {}
    for name, prefix in (("python", PYTHON), ("pyrust", pyrust_command)):
        work = tmp_path / name  # each its own directory: the commands write files
        work.mkdir()
        write_files(work, opts.get("files"))
        outcomes[name] = run_shell(command.format(run=shlex.join(prefix)), work, env)
    assert outcomes["pyrust"] == outcomes["python"]


def test_a_run_has_no_time_limit_as_under_python(pyrust_command, make_server, tmp_path):
    """request_timeout bounds v1 requests; a `pyrust` run, like python, has none."""
    server = make_server("max_workers = 4\nrequest_timeout = 0.2\n", workers=1)
    env = _env(server.path)
    code = "import time\ntime.sleep(0.6)\nprint('slept')"
    assert run(pyrust_command, ["-c", code], tmp_path, env) == run(PYTHON, ["-c", code], tmp_path, env)


def _readline(stream, timeout=TIMEOUT) -> bytes:
    """Return the next line of ``stream`` (a pipe), failing if none comes in ``timeout``."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no line within %s s" % timeout
    return stream.readline()


GROUP_PROGRAM = """\
import os, subprocess
p = subprocess.Popen(['sleep', '600'])
with open('group.pid', 'w') as f:
    f.write('%d %d' % (os.getpid(), p.pid))
print('ready', flush=True)
p.wait()
print('sleep ended')
"""


def test_ctrl_c_reaches_the_whole_group_as_in_a_terminal(pyrust_command, make_server, tmp_path):
    """A terminal's Ctrl-C goes to the foreground process group: python and the
    subprocess it waits for.  Here the client stands for that group."""
    server = make_server(**ONE_SPARE)
    env = _env(server.path)
    codes = {}
    for name, prefix in (("python", PYTHON), ("pyrust", pyrust_command)):
        work = tmp_path / name
        work.mkdir()
        proc = subprocess.Popen(prefix + ["-c", GROUP_PROGRAM], cwd=str(work), env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=default_signals)
        try:
            assert _readline(proc.stdout) == b"ready\n"
            os.killpg(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=TIMEOUT)
            # Where the interrupt lands (in wait() or just after it) varies, so
            # only the end of the traceback is compared.
            codes[name] = (proc.returncode, out, err.splitlines()[-1:])
            _, sleeper = map(int, (work / "group.pid").read_text().split())
            _assert_gone(sleeper, "the subprocess under %s" % name)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(TIMEOUT)
    assert codes["pyrust"] == codes["python"]
    assert codes["python"][0] == -signal.SIGINT


def test_the_group_gets_sighup_when_the_client_goes_away(pyrust_command, make_server, tmp_path):
    """As when a terminal closes: the run and what it started are hung up."""
    server = make_server(**ONE_SPARE)
    proc = subprocess.Popen(pyrust_command + ["-c", GROUP_PROGRAM], cwd=str(tmp_path),
                            env=_env(server.path), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=default_signals)
    try:
        assert _readline(proc.stdout) == b"ready\n"
        program, sleeper = map(int, (tmp_path / "group.pid").read_text().split())
        proc.kill()
        proc.wait(TIMEOUT)
        _assert_gone(sleeper, "the run's subprocess")
        _assert_gone(program, "the run")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        if (tmp_path / "group.pid").exists():
            _kill(int((tmp_path / "group.pid").read_text().split()[1]))


# --- 4. a burst ------------------------------------------------------------------------

BURST_RUNS = 200
BURST_CLIENTS = 16


def _spares(status: dict) -> int:
    """Return the spares a status reply reports (workers idle in accept())."""
    if "spares" in status:
        return status["spares"]
    return sum(1 for w in status["workers"] if w["state"] == "idle")


@pytest.mark.soak  # a tier: ./test.sh --fast skips it
def test_a_burst_of_runs_then_the_pool_is_back_at_its_spares(make_server):
    workers = 2
    server = make_server("max_workers = 8\n", workers=workers)
    env = _env(server.path)

    def one(i):
        proc = subprocess.run(PYRUST + ["-c", "print(%d * 7)" % i], stdin=subprocess.DEVNULL,
                              capture_output=True, env=env, timeout=TIMEOUT)
        return i, proc.returncode, proc.stdout, proc.stderr

    with concurrent.futures.ThreadPoolExecutor(BURST_CLIENTS) as pool:
        results = list(pool.map(one, range(BURST_RUNS)))
    failures = [r for r in results if r[1:] != (0, b"%d\n" % (r[0] * 7), b"")]
    assert failures == []
    # The pool refills asynchronously: ask until it has (each query is itself a
    # connection, whose worker is not a spare; its replacement is forked at once).
    deadline = time.monotonic() + TIMEOUT
    seen = []
    while True:
        proc = subprocess.run(PYRUST + ["status", "--json"], stdin=subprocess.DEVNULL,
                              capture_output=True, env=env, timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stderr
        status = json.loads(proc.stdout)
        seen.append(_spares(status))
        if seen[-1] == workers:
            break
        assert time.monotonic() < deadline, "spares seen in %d queries: %s ... %s; last " \
            "status: %s" % (len(seen), seen[:5], seen[-5:], status)
