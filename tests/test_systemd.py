"""pyrust under a real systemd user manager, installed by install.sh.

The fixture starts a private ``systemd --user`` (its own HOME, runtime and
config directories) and waits for its READY=1; outside CI the tests skip when
no manager can run here, under ``CI=true`` that is a failure.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import psutil
import pytest

from conftest import ROOT, TIMEOUT
from pyrust import client, protocol

pytestmark = pytest.mark.systemd  # a tier: ./test.sh --fast skips it

SYSTEMD = "/lib/systemd/systemd"
INSTALL_TIMEOUT = 300  # a first install builds the venv (and systemd-python)


def _unavailable(reason):
    if os.environ.get("CI") == "true":
        pytest.fail("systemd user manager needed in CI: " + reason)
    pytest.skip(reason)


class UserManager:
    """A private ``systemd --user`` and the environment that talks to it."""

    def __init__(self, home):
        runtime = home / "run"
        runtime.mkdir(mode=0o700)
        self.home = home
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("XDG_", "LISTEN_", "NOTIFY_", "PYRUST_", "DBUS_"))}
        self.env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime),
                        XDG_CONFIG_HOME=str(home / ".config"),
                        XDG_DATA_HOME=str(home / ".local" / "share"),
                        XDG_STATE_HOME=str(home / ".local" / "state"),
                        # Reuse the real pip cache: the install builds wheels.
                        XDG_CACHE_HOME=os.path.expanduser("~/.cache"),
                        PYRUST_BIN_DIR=str(home / "bin"), PYRUST_PYTHON=sys.executable)
        self.env["PATH"] = str(home / "bin") + os.pathsep + self.env["PATH"]
        self.socket_path = str(runtime / "pyrust" / "pyrust.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(home / "manager-notify"))
        notify.settimeout(TIMEOUT)
        with notify:
            self.proc = subprocess.Popen(
                [SYSTEMD, "--user"], env=dict(self.env, NOTIFY_SOCKET=notify.getsockname()),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=open(home / "manager.log", "wb"))
            while b"READY=1" not in notify.recv(4096).split(b"\n"):
                pass

    def run(self, *command, check=True, timeout=TIMEOUT):
        result = subprocess.run(command, env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError("%s failed (%d):\n%s%s" % (command, result.returncode,
                                                            result.stdout, result.stderr))
        return result

    def systemctl(self, *args, check=True):
        return self.run("systemctl", "--user", *args, check=check)

    def main_pid(self) -> int:
        return int(self.systemctl("show", "-p", "MainPID", "--value", "pyrust.service")
                   .stdout.strip())

    def is_active(self, unit="pyrust.service") -> str:
        return self.systemctl("is-active", unit, check=False).stdout.strip()

    def request(self, code: str):
        return client.request(lambda: client.connect(self.socket_path), code.encode())

    def stop(self):
        self.proc.terminate()  # the manager stops its units, then exits
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    if not os.path.exists(SYSTEMD) or not shutil.which("systemctl"):
        _unavailable("systemd is not installed")
    if not os.path.isdir("/run/systemd/system"):
        try:
            os.makedirs("/run/systemd/system")  # what makes systemd --user believe it may run
        except OSError as exc:
            _unavailable("cannot create /run/systemd/system: %s" % exc)
    manager = UserManager(tmp_path_factory.mktemp("home"))
    yield manager
    manager.stop()


@pytest.fixture(scope="module")
def installed(manager):
    """The manager, with pyrust installed by ./install.sh."""
    result = manager.run(os.path.join(ROOT, "install.sh"), timeout=INSTALL_TIMEOUT)
    assert "self-check 'pyrust -c \"2+3\"' printed 5" in result.stdout
    return manager


@pytest.fixture(autouse=True)
def fresh_start_limit(request):
    """These tests restart the service more often than systemd's start limit
    (5 starts in 10 s) allows a real user; each test starts with a fresh count."""
    if "installed" in request.fixturenames:
        manager = request.getfixturevalue("installed")
        manager.systemctl("reset-failed", "pyrust.service", "pyrust.socket", check=False)


def test_install_sets_up_socket_activation(installed):
    unit_dir = installed.home / ".config" / "systemd" / "user"
    assert (unit_dir / "pyrust.socket").exists() and (unit_dir / "pyrust.service").exists()
    assert installed.is_active("pyrust.socket") == "active"
    assert installed.run("pyrust", "-c", "2+3").stdout == "5\n"
    mode = os.stat(installed.socket_path).st_mode & 0o777
    assert mode == 0o600
    assert os.stat(os.path.dirname(installed.socket_path)).st_mode & 0o777 == 0o700


def test_the_service_starts_on_the_first_connection(installed):
    installed.systemctl("stop", "pyrust.service")
    assert installed.is_active() == "inactive"
    assert installed.is_active("pyrust.socket") == "active"  # the socket stays, listening
    assert installed.run("pyrust", "-c", "2+3").stdout == "5\n"
    assert installed.is_active() == "active"


def test_status_shows_the_service_status_text(installed):
    assert installed.request("1") == (0, b"1\n")
    status = installed.systemctl("status", "pyrust.socket", "pyrust.service").stdout
    assert "Status: \"" in status and "runs served" in status and "spares" in status


def test_a_killed_service_is_reactivated_and_leaves_no_files(installed):
    assert installed.request("1") == (0, b"1\n")
    pid = installed.main_pid()
    workers = psutil.Process(pid).children()
    os.kill(pid, signal.SIGKILL)
    psutil.wait_procs(workers, timeout=TIMEOUT)  # they follow their supervisor
    assert installed.request("2+3") == (0, b"5\n")
    assert installed.main_pid() not in (0, pid)
    # Nothing stale: besides the socket, only the new service's environment
    # sockets, each live (the default environment's is a link to the socket).
    directory = os.path.dirname(installed.socket_path)
    entries = sorted(os.listdir(directory))
    assert "pyrust.sock" in entries
    for name in entries:
        path = os.path.join(directory, name)
        if name != "pyrust.sock":
            assert name.startswith("env-") and name.endswith(".sock"), entries
            with socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(TIMEOUT)
                probe.connect(path)  # refused if a dead service left it


def run_client_loop(manager, count, during):
    """Run ``count`` requests on fresh connections while ``during()`` runs; return failures."""
    failures, started = [], threading.Event()

    def loop():
        for i in range(count):
            if i == count // 4:
                started.set()
            try:
                reply = manager.request("%d * 2" % i)
            except Exception as exc:  # counted below; the loop must go on
                reply = repr(exc)
            if reply != (0, b"%d\n" % (i * 2)):
                failures.append((i, reply))

    thread = threading.Thread(target=loop)
    thread.start()
    assert started.wait(TIMEOUT)
    during()
    thread.join(TIMEOUT * 2)
    assert not thread.is_alive()
    return failures


def test_stopping_the_service_under_load_loses_no_request(installed):
    assert run_client_loop(installed, 400, lambda: installed.systemctl("stop", "pyrust.service")) == []
    assert installed.is_active() == "active"  # the queued requests activated it again


def test_reload_under_load_fails_no_request(installed):
    assert installed.request("1") == (0, b"1\n")
    pid = installed.main_pid()
    assert run_client_loop(installed, 400, lambda: installed.systemctl("reload", "pyrust.service")) == []
    assert installed.main_pid() == pid  # reloaded in place, not restarted


def test_idle_exit_then_reactivation(installed):
    config = installed.home / ".config" / "pyrust" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("idle_exit = 0.5\n")
    try:
        installed.systemctl("restart", "pyrust.service")
        assert installed.request("2+3") == (0, b"5\n")
        supervisor = psutil.Process(installed.main_pid())
        gone, alive = psutil.wait_procs([supervisor], timeout=TIMEOUT)
        assert alive == []
        assert installed.is_active() == "inactive"  # exit 0: not a failure, not restarted
        assert installed.request("2+3") == (0, b"5\n")
        assert installed.is_active() == "active"
    finally:
        config.unlink()
        installed.systemctl("restart", "pyrust.service")


def test_the_rendered_units_verify(installed):
    unit_dir = installed.home / ".config" / "systemd" / "user"
    result = installed.run("systemd-analyze", "--user", "verify",
                           str(unit_dir / "pyrust.socket"), str(unit_dir / "pyrust.service"),
                           check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_reinstall_upgrades_and_restarts_the_service(installed):
    assert installed.request("1") == (0, b"1\n")
    pid = installed.main_pid()
    result = installed.run(os.path.join(ROOT, "install.sh"), timeout=INSTALL_TIMEOUT)
    assert "printed 5" in result.stdout
    assert installed.main_pid() not in (0, pid)  # no stale code keeps serving


def test_uninstall_leaves_nothing(installed):
    installed.run(os.path.join(ROOT, "install.sh"), "--uninstall", timeout=INSTALL_TIMEOUT)
    home = installed.home
    assert not (home / ".config" / "systemd" / "user" / "pyrust.socket").exists()
    assert not (home / ".config" / "systemd" / "user" / "pyrust.service").exists()
    assert not (home / ".local" / "share" / "pyrust").exists()
    assert not (home / "bin" / "pyrust").exists()
    assert not os.path.exists(os.path.dirname(installed.socket_path))
    units = installed.systemctl("list-unit-files", "pyrust*", "--no-legend", check=False)
    assert units.stdout.strip() == ""


def test_systemd_socket_activate(tmp_path):
    """systemd-socket-activate passes the socket exactly as systemd does."""
    if not shutil.which("systemd-socket-activate"):
        _unavailable("systemd-socket-activate is not installed")
    path = str(tmp_path / "pyrust.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    env["PYTHONPATH"] = ROOT
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", path, "-E", "PYTHONPATH",
         sys.executable, "-m", "pyrust", "serve", "--workers", "1"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr.readline().decode().startswith("Listening on ")
        assert client.request(lambda: client.connect(path), b"2+3") == (protocol.OK, b"5\n")
        assert client.request(lambda: client.connect(path), b"import os; 'LISTEN_FDS' in os.environ") \
            == (protocol.OK, b"False\n")
    finally:
        proc.terminate()
        assert proc.wait(TIMEOUT) == 0
