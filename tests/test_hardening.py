"""Only its user gets in; bad input and bad code never take the service down.

Every case runs against a live server and ends by checking it still serves.
"""

import os
import signal
import threading

import psutil
import pytest

from pyrust import protocol
from conftest import TIMEOUT, request


def still_serves(server):
    assert server.request("2+3") == (0, "5\n")


def died_running(server, code) -> str:
    """Send ``code``; assert the worker died running it; return how, as the
    supervisor (which holds a copy of the connection) told the client."""
    with server.connect() as sock:
        sock.sendall(protocol.encode_request(code.encode()))
        status, output = protocol.read_response(sock)
        assert status == protocol.WORKER_DIED
        with pytest.raises(protocol.ConnectionClosed):
            protocol.read_response(sock)
    prefix = b"the worker died while running the code: "
    assert output.startswith(prefix)
    return output[len(prefix):].decode()


# --- access ----------------------------------------------------------------------

@pytest.fixture
def public_server():
    """A server whose socket everyone can reach (only this test's own directory
    under /tmp is opened), to test the second line of defence."""
    import shutil
    import tempfile
    from pathlib import Path
    from conftest import Server

    top = tempfile.mkdtemp(prefix="pyrust-public-")
    server = Server(Path(top) / "server", workers=1)
    for path, mode in ((top, 0o755), (server.dir, 0o755), (server.path, 0o777)):
        os.chmod(path, mode)
    yield server
    server.close()
    shutil.rmtree(top)


def test_another_uid_is_refused_by_peer_credentials(public_server):
    server = public_server
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes `nobody` and tries its luck
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, repr(request(server.path, "2+3")).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reply:
        answer = reply.read()
    os.waitpid(pid, 0)
    status, output = eval(answer)
    assert status == protocol.BAD_REQUEST
    assert output == "refused: this service belongs to uid %d and your uid is 65534" % os.getuid()
    assert "refused a connection from uid 65534" in server.log()
    still_serves(server)


# --- limits ----------------------------------------------------------------------

def test_output_over_the_reply_limit_is_refused(make_server):
    server = make_server("max_reply_bytes = 100000\n", workers=1)
    status, output = server.request("print('x' * 300000)")
    assert status == protocol.BAD_REQUEST
    assert output == ("output too large (300001 bytes; the limit is 100000, "
                      "setting max_reply_bytes)")
    assert server.request("print('x' * 99999)") == (0, "x" * 99999 + "\n")
    still_serves(server)


def test_the_memory_limit_turns_a_huge_allocation_into_memory_error(make_server):
    server = make_server("max_worker_memory = 1073741824\n", workers=1)
    with server.connect() as sock:
        pid = request(sock, "import os; os.getpid()")
        status, output = request(sock, "b = bytearray(2 * 1024 ** 3)")
        assert status == protocol.ERROR and output.endswith("MemoryError\n")
        assert request(sock, "import os; os.getpid()") == pid  # the same worker goes on
    still_serves(server)


# --- time limits -----------------------------------------------------------------

def test_a_runaway_loop_is_interrupted_with_a_clear_message(make_server):
    server = make_server("request_timeout = 0.5\n", workers=1)
    with server.connect() as sock:
        pid = request(sock, "import os; os.getpid()")
        status, output = request(sock, "print('started')\nwhile True: pass")
        assert status == protocol.TIMEOUT
        assert output.startswith("started\nTraceback (most recent call last):\n")
        assert output.endswith("pyrust.RequestTimeout: timed out after 0.5 s\n")
        assert request(sock, "import os; os.getpid()") == pid  # the session goes on
    still_serves(server)


@pytest.mark.parametrize("code", [
    "while True:\n    try:\n        while True: pass\n    except BaseException: pass",
    "import time; time.sleep(60)",
])
def test_code_that_catches_the_interrupt_gets_it_again(make_server, code):
    server = make_server("request_timeout = 0.3\n", workers=1)
    status, output = server.request(code)
    assert status == protocol.TIMEOUT
    assert output.endswith("pyrust.RequestTimeout: timed out after 0.3 s\n")
    still_serves(server)


@pytest.mark.parametrize("code", [
    # C code that never checks for signals
    "sum(range(10 ** 13))",
    # blocks the signal the interrupt uses
    "import signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])\nwhile True: pass",
    # takes the signal over
    "import signal\n_ = signal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True: pass",
])
def test_code_that_ignores_the_interrupt_loses_its_worker(make_server, code):
    server = make_server("request_timeout = 0.3\nkill_grace = 0.3\n", workers=1)
    assert died_running(server, code) == ("it ran past its time limit and ignored the "
                                          "interrupt, so it was killed")
    still_serves(server)
    assert "ignored the interrupt; killing the worker" in server.log()
    assert "died while running a request" in server.log()


@pytest.mark.parametrize("code, returncode", [
    ("import os; os._exit(3)", 3),
    ("import ctypes; ctypes.string_at(0)", -signal.SIGSEGV),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
])
def test_the_cli_ends_as_python_when_the_program_ends_abruptly(make_server, code, returncode):
    import subprocess
    import sys
    from conftest import pyrust_env

    server = make_server(workers=1)
    result = subprocess.run([sys.executable, "-m", "pyrust", "-c", code],
                            capture_output=True, timeout=TIMEOUT,
                            env=pyrust_env(PYRUST_SOCKET=server.path))
    assert (result.returncode, result.stderr) == (returncode, b"")
    still_serves(server)


# --- no waiting behind slow work -------------------------------------------------

def test_a_quick_request_is_not_kept_waiting_by_slow_ones(make_server, gate):
    server = make_server("max_workers = 4\n", workers=1)
    slow = gate.program(result="'slow'")
    replies = []
    threads = [threading.Thread(target=lambda: replies.append(server.request(slow)))
               for _ in range(3)]
    for t in threads:
        t.start()
    held = [gate.accept() for _ in range(3)]  # all three slow requests are running
    # Every worker that existed is busy; this one is answered anyway, and first.
    assert server.request("2+3") == (0, "5\n")
    assert replies == []
    for conn in held:
        conn.sendall(b"!")
        conn.close()
    for t in threads:
        t.join(TIMEOUT)
    assert replies == [(0, "'slow'\n")] * 3


def test_the_pool_never_passes_max_workers(make_server, gate):
    import json
    import subprocess
    import sys
    from conftest import pyrust_env

    server = make_server("max_workers = 2\n", workers=1)
    threads = [threading.Thread(target=server.request, args=(gate.program(),))
               for _ in range(2)]
    for t in threads:
        t.start()
    held = [gate.accept() for _ in range(2)]  # two workers busy: the ceiling
    status = subprocess.Popen([sys.executable, "-m", "pyrust", "status", "--json"],
                              stdout=subprocess.PIPE, env=pyrust_env(PYRUST_SOCKET=server.path))
    for conn in held:  # the status query waits in the backlog until one ends
        conn.sendall(b"!")
    for t in threads:
        t.join(TIMEOUT)
    out, _ = status.communicate(timeout=TIMEOUT)
    assert len(json.loads(out)["workers"]) <= 2
    assert len(server.worker_pids()) <= 2
    still_serves(server)


# --- crashes -----------------------------------------------------------------------

@pytest.mark.parametrize("code, how", [
    ("import os; os._exit(3)", "exit status 3"),
    ("import ctypes; ctypes.string_at(0)", "killed by SIGSEGV"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL"),
])
def test_a_worker_that_dies_is_reported_and_replaced(make_server, code, how):
    server = make_server(workers=1)
    assert died_running(server, code) == "it " + how.replace("killed", "was killed")\
        .replace("exit status", "exited with status")
    still_serves(server)
    assert "died while running a request" in server.log() and how in server.log()


@pytest.mark.parametrize("code, last_line", [
    ("raise MemoryError", "MemoryError"),
    ("def f(): f()\nf()", "RecursionError: maximum recursion depth exceeded"),
    ("import sys; sys.setrecursionlimit(10**6)\n"
     "def f(n): return f(n + 1) if n < 50000 else n\nf(0)", None),
])
def test_exhaustion_inside_the_code_is_an_error_not_a_crash(make_server, code, last_line):
    server = make_server(workers=1)
    status, output = server.request(code)
    if last_line is None:
        assert (status, output) == (0, "50000\n")
    else:
        assert status == protocol.ERROR and output.splitlines()[-1] == last_line
    # Interpreter state the code changed does not reach the next request.
    assert server.request("import sys; sys.getrecursionlimit()") == (0, "1000\n")
    still_serves(server)


def test_code_that_closes_or_replaces_fds_0_to_2(make_server):
    server = make_server(workers=1)
    with server.connect() as sock:
        pid = request(sock, "import os; os.getpid()")
        assert request(sock, "import os\nfor fd in (0, 1, 2): os.close(fd)")[0] == 0
        assert request(sock, "import os\nfd = os.open(os.devnull, os.O_WRONLY)\n"
                       "os.dup2(fd, 1); os.dup2(fd, 2)")[0] == 0
        assert request(sock, b"\xff")[0] == protocol.BAD_REQUEST  # makes the worker log a line
        assert request(sock, "import os; os.getpid()") == pid
    assert "refused a request: invalid request" in server.log()  # its stderr still works
    still_serves(server)


# --- recycling ---------------------------------------------------------------------

def test_a_worker_over_max_worker_rss_is_replaced_between_requests(make_server):
    server = make_server("max_worker_rss = 209715200\n", workers=1)
    with server.connect() as sock:  # a session, so the worker outlives the request
        status, pid = request(sock, "import builtins, os\n"
                              "builtins.hog = bytearray(300 * 1024 * 1024)\nos.getpid()")
        assert status == 0
        gone, alive = psutil.wait_procs([psutil.Process(int(pid))], timeout=TIMEOUT)
        assert alive == []
    assert "over max_worker_rss; replacing it" in server.log()


BREAK_START = '''
import os
import signal
from pyrust.server import worker

FLAG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "broken")
_start = worker.Worker.start


def start(self, *args):
    if os.path.exists(FLAG):
        raise RuntimeError("worker start-up is broken")
    _start(self, *args)


worker.Worker.start = start
'''


def test_workers_that_fail_at_start_are_forked_ever_more_slowly_until_they_work(
        make_server, tmp_path):
    import re
    import time

    from conftest import ROOT

    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "breakstart.py").write_text(BREAK_START)
    (modules / "broken").write_text("")
    server = make_server('preload = ["breakstart"]\n', workers=2,
                         env={"PYTHONPATH": "%s:%s" % (modules, ROOT)})
    # Each failed worker leaves its traceback (the supervisor's own line is
    # logged once and then counted, as every repeated error is).
    seen, deadline = [], time.monotonic() + TIMEOUT
    while len(seen) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)  # the log is the only witness of forks that fail
        count = server.log().count("RuntimeError: worker start-up is broken")
        seen += [time.monotonic()] * (count - len(seen))
    assert len(seen) >= 5
    # Without the pauses (0.1 + 0.2 + 0.4 + 0.8 s) five forks take milliseconds.
    assert seen[4] - seen[0] > 1.2
    assert re.search(r"ERROR: worker \d+ failed at start \(exit status 70, [\d.]+ s after its "
                     r"fork; 1 in a row\); next fork in 0.1 s", server.log())
    (modules / "broken").unlink()  # the cause goes away; the service recovers by itself
    assert server.request("2+3") == (0, "5\n")
