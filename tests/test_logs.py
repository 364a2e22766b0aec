"""The service's log: repeats counted, the file bounded, the journal's format,
and a notifier that stops once its listener is gone."""

import io
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import TIMEOUT, pyrust_env, request
from pyrust.server import logs
from pyrust.server.notify import Notifier
from test_cli import isolated_env, pyrust

FILE_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} pyrust\[\d+\]: "
                       r"(DEBUG|INFO|WARNING|ERROR|CRITICAL): ")


# -- repeats ---------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def counting_logger(name, clock):
    """Return (logger, its output) with a RepeatFilter on ``clock``, as setup_logging builds it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.addFilter(logs.RepeatFilter(clock=clock))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def test_a_repeated_warning_is_logged_once_then_counted():
    clock = Clock()
    log, out = counting_logger("pyrust.test.repeats", clock)
    for i in range(100):
        log.warning("cannot notify %r: %s", "/tmp/x", "gone %d" % i)
        clock.now += 0.5  # all 100 within the window
    assert out.getvalue() == "WARNING: cannot notify '/tmp/x': gone 0\n"
    clock.now = 1000.0 + logs.REPEAT_WINDOW + 1
    log.warning("cannot notify %r: %s", "/tmp/x", "gone again")
    assert out.getvalue().splitlines()[1:] == [
        "WARNING: cannot notify '/tmp/x': gone again "
        "(99 similar messages suppressed in the last 61 s)"]
    log.warning("cannot notify %r: %s", "/tmp/x", "and again")  # a new window begins
    assert len(out.getvalue().splitlines()) == 2


def test_other_kinds_and_lower_levels_are_not_counted():
    clock = Clock()
    log, out = counting_logger("pyrust.test.kinds", clock)
    for _ in range(3):
        log.warning("worker %d died", 12)
        log.error("worker %d died", 12)  # another level: another kind
        log.info("reloaded")  # narration is never suppressed
        log.debug("worker %d started", 13)
    lines = out.getvalue().splitlines()
    assert lines.count("WARNING: worker 12 died") == 1
    assert lines.count("ERROR: worker 12 died") == 1
    assert lines.count("INFO: reloaded") == 3
    assert lines.count("DEBUG: worker 13 started") == 3


def test_journal_lines_carry_their_priority_on_every_line():
    formatter = logs.JournalFormatter()
    record = logging.makeLogRecord({"name": "pyrust.worker", "levelno": logging.ERROR,
                                    "levelname": "ERROR", "msg": "internal error\nTraceback"})
    assert formatter.format(record) == "<3>pyrust.worker: internal error\n<3>Traceback"
    assert [logs.syslog_priority(level) for level in (50, 40, 30, 20, 10)] == [2, 3, 4, 6, 7]


# -- the bounded file ------------------------------------------------------------


@pytest.fixture
def std_fds():
    """Give fds 1 and 2 back to pytest after a test points them at a log file."""
    saved = os.dup(1), os.dup(2)
    yield
    for fd, copy in zip((1, 2), saved):
        os.dup2(copy, fd)
        os.close(copy)


def record(text):
    return logging.makeLogRecord({"msg": text, "levelno": logging.INFO, "levelname": "INFO"})


def test_rollover_keeps_the_backups_and_moves_fds_1_and_2(tmp_path, std_fds):
    path = tmp_path / "pyrust.log"
    handler = logs.RotatingLog(str(path), max_bytes=200, backups=2)
    os.write(2, b"stray before\n")  # fd 2 is the log file from the start
    for i in range(4):
        handler.handle(record("line %d %s" % (i, "x" * 60)))
    assert (tmp_path / "pyrust.log.1").exists()
    os.write(2, b"stray after\n")
    os.write(1, b"stdout after\n")
    assert path.read_text().endswith("stray after\nstdout after\n")  # the current file
    assert "stray before" in (tmp_path / "pyrust.log.1").read_text()
    for i in range(20):
        handler.handle(record("more %d %s" % (i, "x" * 60)))
    handler.close()
    assert sorted(os.listdir(tmp_path)) == ["pyrust.log", "pyrust.log.1", "pyrust.log.2"]
    assert all(p.stat().st_size <= 200 for p in tmp_path.iterdir())


def test_a_process_whose_file_was_rolled_over_follows_it(tmp_path, std_fds):
    # Two handlers on one path stand for the supervisor and a worker.
    path = tmp_path / "pyrust.log"
    first = logs.RotatingLog(str(path), max_bytes=200, backups=3)
    second = logs.RotatingLog(str(path), max_bytes=200, backups=3)
    for i in range(3):
        first.handle(record("first %d %s" % (i, "x" * 60)))
    assert (tmp_path / "pyrust.log.1").exists()
    second.doRollover()  # its file is full too: it must not roll over what first just began
    second.handle(record("second"))
    first.handle(record("first again"))
    os.write(2, b"stray\n")
    assert not (tmp_path / "pyrust.log.2").exists()
    assert path.read_text().splitlines()[-3:] == ["second", "first again", "stray"]
    first.close()
    second.close()


def test_a_log_file_that_cannot_be_opened_stops_the_server(tmp_path):
    result = pyrust(["serve", "--socket", str(tmp_path / "s.sock"),
                     "--log-file", str(tmp_path / "missing" / "pyrust.log")])
    assert result.returncode == 78
    assert result.stderr.decode().startswith("pyrust: cannot open the log file %s"
                                             % (tmp_path / "missing" / "pyrust.log"))


# -- the notifier ----------------------------------------------------------------


def backend_or_skip(backend):
    if backend == "systemd-python":
        pytest.importorskip("systemd.daemon")
    return backend


@pytest.mark.parametrize("backend", ["socket", "systemd-python"])
@pytest.mark.parametrize("how", ["removed", "closed"])  # ENOENT, ECONNREFUSED
def test_the_notifier_stops_once_its_socket_is_gone(tmp_path, caplog, backend, how):
    address = str(tmp_path / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    notifier = Notifier(address, watchdog_usec=3000000, backend=backend_or_skip(backend))
    assert notifier.notify("READY=1")
    receiver.close()
    if how == "removed":
        os.unlink(address)
    caplog.set_level(logging.INFO, logger="pyrust.notify")
    assert not notifier.notify("STATUS=busy")
    assert not notifier.active and notifier.watchdog_interval() is None
    assert not notifier.notify("STATUS=busy") and not notifier.notify("WATCHDOG=1")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "the service manager's notify socket %s is gone; no more notifications"
         % address)]


def test_other_notify_errors_are_warnings_and_it_keeps_trying(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    notifier = Notifier(str(tmp_path / "file" / "notify"), backend="socket")  # ENOTDIR
    assert not notifier.notify("STATUS=x") and not notifier.notify("STATUS=y")
    assert notifier.active
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]  # the filter is the handler's


# -- real servers ----------------------------------------------------------------


def test_pyrust_logging_leaves_the_root_logger_alone():
    code = ("import logging\nfrom pyrust.server.logs import setup_logging\n"
            "setup_logging('info')\n"
            "assert not logging.getLogger().handlers and not logging.getLogger('pyrust').propagate\n"
            "logging.getLogger('pyrust.supervisor').warning('ours')\n"
            "logging.warning('theirs')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=TIMEOUT,
                            env=pyrust_env(JOURNAL_STREAM="1:1"), text=True)  # not fd 2's
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"pyrust\[\d+\]: WARNING: ours\nWARNING:root:theirs\n", result.stderr)


def wait_for_line(path, text, timeout=TIMEOUT):
    """Return once ``text`` appears in the file at ``path``; fail after ``timeout`` seconds.

    The daemon's server is not the test's to hand a socket to; its log is
    all there is to watch.
    """
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, "%r not logged in %g s" % (text, timeout)
        time.sleep(0.02)


def test_a_daemon_logs_to_its_file_with_timestamps_and_no_repeats(tmp_path):
    env = isolated_env(tmp_path)
    socket_path = str(tmp_path / "run" / "s.sock")
    started = pyrust(["--socket", socket_path, "--daemon"], env=env)
    assert started.returncode == 0, started.stderr
    pid = int(re.search(r"\(pid (\d+),", started.stdout.decode()).group(1))
    import psutil

    server = psutil.Process(pid)
    log_path = tmp_path / "state" / "pyrust" / "pyrust.log"
    try:
        # Its notify socket is gone now.  A reload sends RELOADING=1 and READY=1,
        # the stop STOPPING=1: each used to log "cannot notify", as STATUS= did
        # every 5 s.  (The signals one at a time: sent together, SIGTERM's
        # handler would run first and the reload would not happen.)
        os.kill(pid, signal.SIGHUP)
        wait_for_line(log_path, "INFO: reloaded")
        os.kill(pid, signal.SIGTERM)
        server.wait(TIMEOUT)  # not our child: the log's last line tells how it ended
    finally:
        if server.is_running():
            server.kill()
    text = log_path.read_text()
    lines = text.splitlines()
    assert all(FILE_LINE.match(line) for line in lines), text
    assert "cannot notify" not in text
    assert sum("notify socket" in line and "is gone" in line for line in lines) == 1, text
    assert "INFO: reloaded" in text and lines[-1].endswith("INFO: stopped"), text


def test_under_systemd_the_log_speaks_the_journals_format(tmp_path):
    base = tmp_path / "srv"
    base.mkdir(mode=0o700)
    stderr_path = base / "journal"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(base / "notify"))
    with open(stderr_path, "wb") as stderr, notify:
        st = os.fstat(stderr.fileno())
        env = pyrust_env(NOTIFY_SOCKET=str(base / "notify"),
                         JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyrust", "serve", "--socket", str(base / "s.sock"),
             "--workers", "1"], stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=env)
        try:
            while select.select([notify], [], [], TIMEOUT)[0]:
                if b"READY=1" in notify.recv(4096).split(b"\n"):
                    break
            else:
                pytest.fail("the server did not become ready: %s" % stderr_path.read_text())
            # Programs do not inherit the service's journal stream.
            assert request(str(base / "s.sock"), "import os; os.environ.get('JOURNAL_STREAM')") \
                == (0, "")
        finally:
            proc.terminate()
            assert proc.wait(TIMEOUT) == 0
    lines = stderr_path.read_text().splitlines()
    assert lines[0].startswith("<6>pyrust.service: serving on %s" % (base / "s.sock"))
    assert lines[-1] == "<6>pyrust.service: stopped"
    assert all(re.match(r"<[2-7]>pyrust\.\w+: ", line) for line in lines), lines
