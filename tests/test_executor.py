"""The executor: python -c semantics inside a long-lived process."""

import os
import subprocess
import sys

import pytest

from conftest import request
from pyrust import protocol
from pyrust.request import v1_job
from pyrust.server.executor import Executor

# The program table: code -> (status, output).
PROGRAMS = [
    ("2+3", 0, "5\n"),
    ("(10 + 20) * 3 / 2", 0, "45.0\n"),
    ("x = 10\ny = 20\nx + y", 0, "30\n"),
    ("print(42)", 0, "42\n"),
    ("10 + 5 * 2 - 8 / 4 % 3", 0, "18.0\n"),
    ("42", 0, "42\n"),
    ("x = 10\ny = 20\nz = x + y\nz * 2", 0, "60\n"),
    ("", 0, ""),
    ("None", 0, ""),
    ("'a'", 0, "'a'\n"),
    ("print('x')\n1", 0, "x\n1\n"),
    ("import sys; print('o'); print('e', file=sys.stderr); print('o2')", 0, "o\ne\no2\n"),
    ("if True:\n    1", 0, ""),  # only a top-level final expression is echoed
]

# Programs whose stdout+stderr and exit code must match `python -c` byte for
# byte (none ends in a bare expression that python -c would not echo).
DIFFERENTIAL = [
    "print(42)",
    "import sys; print('out'); print('err', file=sys.stderr)",
    "1/0",
    "undefined_var",
    "def f():\n    raise ValueError('deep')\ndef g():\n    f()\ng()",
    "1+",
    "(",
    "if True:\nprint(1)",
    "print('unterminated)",
    "import sys; sys.exit(3)",
    "import sys; sys.exit(-1)",
    "import sys; sys.exit(None)",
    "import sys; sys.exit(0)",
    "raise SystemExit('bye')",
    "raise SystemExit",
    "try:\n    1/0\nexcept Exception as e:\n    raise KeyError('k') from e",
    "try:\n    1/0\nexcept Exception:\n    raise KeyError('k')",
    "print('\u00e9 \u2713 \u65e5\u672c')",
    "print(sorted(globals()))",
    "print(__name__, __doc__, __package__, __spec__)",
    "import sys; print(sys.argv)",
    "x = [1, 2, 3]; x[5]",
    "import json; json.loads('{')",
    "assert 1 == 2, 'nope'",
    "exec('1/0')",
    "import sys; _ = sys.stdout.write('no newline')",
    "import sys; _ = sys.stderr.write('\\udcff\\n')",
    "import sys; print(sys.getrecursionlimit())",
    "import sys; sys.setrecursionlimit(2000); print(sys.getrecursionlimit())",
    "class E(Exception):\n    def __str__(self): return 'custom'\nraise E()",
    "raise ExceptionGroup('eg', [ValueError(1), TypeError(2)])" if sys.version_info >= (3, 11)
    else "raise ValueError(1)",
    "print(type(__builtins__).__name__, __loader__.__name__)",
    "input()",
]
#: Only meaningful through a real worker: under pytest the C stack below the
#: executor is deeper than in a worker, and python counts it.
DIFFERENTIAL_IN_WORKER = DIFFERENTIAL + ["def r(): r()\nr()"]


def run(executor, code):
    """Run ``code`` as a protocol v1 request would."""
    return executor.run(v1_job(code, 0))


@pytest.fixture
def executor():
    return Executor(cache_size=16)


@pytest.mark.parametrize("code, status, output", PROGRAMS)
def test_program_table(executor, code, status, output):
    result = run(executor, code)
    assert (result.status, result.output.decode()) == (status, output)


@pytest.mark.parametrize("code, name", [("1/0", "ZeroDivisionError"),
                                         ("undefined_var", "NameError")])
def test_errors_have_status_1_and_a_traceback(executor, code, name):
    result = run(executor, code)
    assert result.status == protocol.ERROR
    text = result.output.decode()
    assert text.startswith("Traceback (most recent call last):\n")
    assert '  File "<string>", line 1, in <module>\n' in text
    assert text.splitlines()[-1].startswith(name + ": ")


def run_python(code):
    python = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            stdin=subprocess.DEVNULL, timeout=60, cwd="/")
    return python.stdout + python.stderr, python.returncode


@pytest.mark.parametrize("code", DIFFERENTIAL)
def test_same_output_and_exit_code_as_python_c(executor, code):
    output, returncode = run_python(code)
    result = run(executor, code)
    assert (result.output, result.exit_code) == (output, returncode)
    assert result.status == (protocol.OK if returncode == 0 else protocol.ERROR)


def test_same_output_as_python_c_through_a_worker(server):
    for code in DIFFERENTIAL_IN_WORKER:
        output, returncode = run_python(code)
        assert server.request(code) == (protocol.OK if returncode == 0 else protocol.ERROR,
                                         output.decode()), code


def test_a_session_recurses_as_deep_as_python_c(server):
    # CPython 3.11 counts recursion differently once it has specialized the
    # run path, which it does after a few runs: every run of a session, early
    # or late, must reach python's depth and print python's traceback.
    code = "def r(): r()\nr()"
    output, _ = run_python(code)
    with server.connect() as sock:
        replies = [request(sock, code) for _ in range(12)]
    assert replies == [(protocol.ERROR, output.decode())] * 12


def test_state_does_not_leak_between_runs(executor, tmp_path):
    cwd, path, argv = os.getcwd(), sys.path[:], sys.argv[:]
    streams = (sys.stdin, sys.stdout, sys.stderr, sys.displayhook, sys.excepthook)
    main = sys.modules["__main__"]
    first = run(executor, 
        "import os, sys\nsecret = 1\nos.chdir(%r)\nsys.argv.append('extra')\n"
        "sys.path.insert(0, '/nowhere')\nsys.displayhook = None\nsys.excepthook = None\n"
        "import __main__; __main__.marker = 1\nsys.stdout = sys.stderr = None" % str(tmp_path))
    assert first.status == protocol.OK, first.output
    second = run(executor, 
        "import os, sys, __main__\n"
        "print('secret' in globals(), hasattr(__main__, 'marker'), os.getcwd(), sys.argv,"
        " '/nowhere' in sys.path)")
    assert second.output.decode() == "False False %s ['-c'] False\n" % cwd
    assert (os.getcwd(), sys.path, sys.argv) == (cwd, path, argv)
    assert (sys.stdin, sys.stdout, sys.stderr, sys.displayhook, sys.excepthook) == streams
    assert sys.modules["__main__"] is main


def test_closing_the_streams_does_not_break_the_next_run(executor):
    result = run(executor, "import sys; print('a'); sys.stdout.close(); sys.stderr.close()")
    assert (result.status, result.output) == (protocol.OK, b"a\n")
    assert run(executor, "print('b')").output == b"b\n"


def test_cache_hit_behaves_like_a_miss(executor):
    for code in ("x = 1\nx + 1", "print(1)", "1/0", "1+"):
        first, second = run(executor, code), run(executor, code)
        assert first == second
    assert executor.cache_len() == 3  # programs that do not compile are not cached


def test_cache_is_bounded_lru():
    executor = Executor(cache_size=2)
    for code in ("1", "2", "1", "3"):  # "2" is least recently used when "3" arrives
        run(executor, code)
    assert executor.cache_len() == 2
    assert set(executor._cache) == {("1", True), ("3", True)}
    assert executor.clear_cache() == 2 and executor.cache_len() == 0


def test_cache_size_zero_disables_it():
    executor = Executor(cache_size=0)
    assert run(executor, "2+3").output == b"5\n"
    assert executor.cache_len() == 0


def test_output_that_is_not_utf8_is_replaced(executor):
    result = run(executor, "import sys; _ = sys.stdout.buffer.write(b'a\\xffb')")
    assert result.output == "a\ufffdb".encode()


def test_future_imports_of_pyrust_do_not_leak_into_programs(executor):
    # executor.py itself uses no __future__ flags today; programs must never inherit any.
    assert run(executor, "def f(x: undefined_name): pass").status == protocol.ERROR
