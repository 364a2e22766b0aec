"""Where the socket comes from and how the manager hears from us: launchd
(against a fake libSystem: macOS cannot run here), sd_notify with both
backends, and the rendered service files."""

import ctypes
import errno
import os
import plistlib
import socket
import threading

import pytest

from conftest import ROOT, TIMEOUT
from pyrust import units
from pyrust.errors import StartupError
from pyrust.server import activation
from pyrust.server.notify import Notifier

PACKAGING = os.path.join(ROOT, "packaging")


class FakeLibSystem:
    """Behaves as launch_activate_socket(3) documents: on success it stores a
    malloc'd array of fds and its length through the pointers, and the caller
    must free() the array; ESRCH when launchd did not start the process."""

    def __init__(self, fds=None, error=0):
        self.fds, self.error = fds, error
        self.names, self.freed = [], []
        self._arrays = []

    def launch_activate_socket(self, name, fds_pointer, count_pointer):
        self.names.append(name)
        if self.error:
            return self.error
        array = (ctypes.c_int * len(self.fds))(*self.fds)
        self._arrays.append(array)
        fds_pointer[0] = ctypes.cast(array, ctypes.POINTER(ctypes.c_int))
        count_pointer[0] = len(self.fds)
        return 0

    def free(self, pointer):
        self.freed.append(ctypes.addressof(pointer.contents))


def listening_socket(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(8)
    return sock


def test_launchd_passes_its_socket_and_the_array_is_freed(tmp_path):
    original = listening_socket(str(tmp_path / "s.sock"))
    fd = os.dup(original.fileno())
    lib = FakeLibSystem(fds=[fd])
    listener = activation.launchd_listener(lib)
    assert lib.names == [b"pyrust"]
    assert lib.freed == [ctypes.addressof(lib._arrays[0])]  # free()d exactly once, the array itself
    assert (listener.source, listener.owned) == ("launchd", False)
    assert listener.path == str(tmp_path / "s.sock")
    assert not os.get_inheritable(fd)
    listener.close()
    assert os.path.exists(tmp_path / "s.sock")  # a socket launchd owns is never unlinked
    original.close()


def test_launchd_esrch_means_not_started_by_launchd():
    lib = FakeLibSystem(error=errno.ESRCH)
    assert activation.launchd_listener(lib) is None
    assert lib.freed == []


def test_launchd_other_errors_are_start_up_errors():
    with pytest.raises(StartupError, match="launch_activate_socket"):
        activation.launchd_listener(FakeLibSystem(error=errno.ENOENT))


def test_launchd_is_not_consulted_off_macos():
    assert activation.launchd_listener() is None


def test_systemd_variables_for_another_process_are_ignored(monkeypatch):
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert activation.systemd_listener() is None
    assert "LISTEN_FDS" not in os.environ and "LISTEN_PID" not in os.environ


@pytest.mark.parametrize("backend", ["socket", "systemd-python"])
def test_notify_backends_deliver_messages(tmp_path, monkeypatch, backend):
    if backend == "systemd-python":
        try:
            import systemd.daemon  # noqa: F401
        except ImportError:
            if os.environ.get("CI") == "true":
                pytest.fail("systemd-python must be installed in CI")
            pytest.skip("systemd-python is not installed")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify"))
    receiver.settimeout(TIMEOUT)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    notifier = Notifier.from_environment(backend)
    assert notifier.backend == backend
    assert "NOTIFY_SOCKET" not in os.environ  # programs must not inherit it
    assert notifier.watchdog_interval() == 1.0
    assert notifier.notify("READY=1\nSTATUS=ok")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=ok"
    assert "NOTIFY_SOCKET" not in os.environ


def test_notify_abstract_address():
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0pyrust-test-%d" % os.getpid())
    receiver.settimeout(TIMEOUT)
    assert Notifier("@pyrust-test-%d" % os.getpid(), backend="socket").notify("WATCHDOG=1")
    assert receiver.recv(100) == b"WATCHDOG=1"


def test_a_manager_that_does_not_read_never_blocks_the_service(tmp_path):
    """Its queue full (ten datagrams on Linux), the messages are dropped: the
    service goes on serving, and the next message read is the newest left."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify"))
    receiver.settimeout(TIMEOUT)
    notifier = Notifier(str(tmp_path / "notify"))
    assert notifier.backend == "socket"  # the default: it never waits
    sent = []
    sender = threading.Thread(target=lambda: sent.extend(
        notifier.notify("STATUS=%d" % i) for i in range(50)), daemon=True)
    sender.start()
    sender.join(TIMEOUT)
    assert not sender.is_alive(), "notify() blocked on a manager that does not read"
    assert sent[0] and not sent[-1] and notifier.active  # a full queue is not a gone listener
    assert receiver.recv(100) == b"STATUS=0"
    assert notifier.notify("READY=1")  # room again
    assert receiver.recv(100) == b"STATUS=1"


def test_watchdog_for_another_pid_is_ignored(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent")
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Notifier.from_environment("socket").watchdog_interval() is None


def test_without_a_manager_notify_is_a_no_op():
    notifier = Notifier(None, backend="socket")
    assert not notifier.active and not notifier.notify("READY=1")


def test_systemd_units_render_with_absolute_quoted_paths():
    rendered = units.render_systemd(PACKAGING, "/opt/py rust/100%/bin/python")
    service, sock = rendered["pyrust.service"], rendered["pyrust.socket"]
    assert 'ExecStart="/opt/py rust/100%%/bin/python" -m pyrust serve\n' in service
    assert "@" not in service.replace("$MAINPID", "")
    for line in ("Type=notify", "Restart=on-failure", "RestartPreventExitStatus=78",
                 "ExecReload=/bin/kill -HUP $MAINPID", "KillMode=mixed"):
        assert line + "\n" in service
    assert "WatchdogSec=" in service and "TimeoutStopSec=" in service
    for line in ("ListenStream=%t/pyrust/pyrust.sock", "SocketMode=0600", "DirectoryMode=0700",
                 "FileDescriptorName=pyrust"):
        assert line + "\n" in sock


def test_launchd_plist_has_the_documented_keys(tmp_path):
    data = units.render_launchd(PACKAGING, "/Users/me/.local/share/pyrust/venv/bin/python",
                                "/var/folders/xy/T/pyrust.sock", "/Users/me/pyrust.log")
    plist = plistlib.loads(data)
    assert plist["Label"] == "io.pyrust.agent"
    assert plist["ProgramArguments"] == ["/Users/me/.local/share/pyrust/venv/bin/python", "-m",
                                         "pyrust", "serve", "--log-file", "/Users/me/pyrust.log"]
    assert plist["StandardErrorPath"] == "/Users/me/pyrust.log"  # what python prints before
    sock = plist["Sockets"]["pyrust"]  # the name launch_activate_socket asks for
    assert sock["SockPathName"] == "/var/folders/xy/T/pyrust.sock"
    assert sock["SockPathMode"] == 384 == 0o600  # decimal in the plist
    assert sock["SockType"] == "stream" and sock["SockFamily"] == "Unix"
    assert "KeepAlive" not in plist and "RunAtLoad" not in plist  # started on demand only


@pytest.mark.parametrize("socket_path, message", [
    ("~/pyrust.sock", "absolute"),
    ("/" + "x" * 103, "longer than the 103 bytes"),
])
def test_launchd_refuses_paths_it_cannot_use(socket_path, message):
    with pytest.raises(ValueError, match=message):
        units.render_launchd(PACKAGING, "/usr/bin/python3", socket_path, "/tmp/log")


def test_units_command_writes_the_files(tmp_path):
    assert units.main(["systemd", "--templates", PACKAGING, "--out", str(tmp_path),
                       "--python", "/usr/bin/python3"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["pyrust.service", "pyrust.socket"]
