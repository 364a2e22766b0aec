"""Fixtures that run real servers on real sockets.

A test owns the listening socket: it binds it, then hands the fd to the server
exactly as systemd does (fd 3, ``LISTEN_FDS=1``, ``LISTEN_PID`` = the server's
pid).  Connections made before the server is up wait in the backlog, so no
test ever sleeps or polls to wait for readiness.
"""

import os
import queue
import signal
import socket
import subprocess
import sys
import threading

import pytest

from pyrust import protocol

TIMEOUT = 30.0  # upper bound on any single blocking call in the tests
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#: The clients a test can run "the pyrust command" through: the Python client,
#: the native one (client/pyrust.c), and the native one built with the address
#: and undefined-behaviour sanitizers (the main differential table only).
CLIENTS = ("python", "native")
CLIENTS_SANITIZED = CLIENTS + ("native-sanitized",)
#: Where ./test.sh leaves the builds it made (else they are built once per session).
NATIVE_ENV = {"native": "PYRUST_TEST_NATIVE", "native-sanitized": "PYRUST_TEST_NATIVE_SANITIZED"}
_native_builds = {}


def native_client(name: str, tmp_path_factory) -> str:
    """Return the path of the native client ``name`` ("native" or "native-sanitized"):
    the one ./test.sh built, else one built (strict) once per session into the
    session's base temp directory.  Skip the test where no C compiler exists; fail
    it where the client does not build."""
    if name not in _native_builds:
        given = os.environ.get(NATIVE_ENV[name])
        if given:
            _native_builds[name] = (given, None, None) if os.access(given, os.X_OK) else (
                None, None, "%s=%s is not an executable" % (NATIVE_ENV[name], given))
        else:
            _native_builds[name] = _build_native(name, tmp_path_factory.getbasetemp())
    path, skip, failure = _native_builds[name]
    if skip:
        pytest.skip(skip)
    if failure:
        pytest.fail(failure, pytrace=False)
    return path


def _build_native(name, base):
    """Build client ``name`` under ``base``; return (path, skip reason, failure)."""
    from pyrust import native

    directory = base / "native-client"
    directory.mkdir(exist_ok=True)
    out, launcher = directory / ("pyrust-" + name), directory / "pyrust-python"
    args = ["--out", str(out), "--launcher", str(launcher), "--python", sys.executable,
            "--strict"] + (["--sanitize"] if name == "native-sanitized" else [])
    proc = subprocess.run([sys.executable, "-m", "pyrust.native", *args], capture_output=True,
                          text=True, env=pyrust_env())
    if proc.returncode == native.NO_COMPILER:
        if os.environ.get("CI") == "true":  # test.sh installs one there
            return None, None, "no C compiler in CI: the native client was not built"
        return None, "no C compiler: the native client was not built", None
    if proc.returncode != 0:
        return None, None, "building the %s client failed:\n%s" % (name, proc.stderr)
    return str(out), None, None


def client_command(name: str, tmp_path_factory) -> list:
    """Return the argv prefix that runs the pyrust command through client ``name``."""
    if name == "python":
        return [sys.executable, "-m", "pyrust"]
    return [native_client(name, tmp_path_factory)]


@pytest.fixture(params=CLIENTS)
def pyrust_command(request, tmp_path_factory) -> list:
    """The pyrust command (an argv prefix), once through each client."""
    return client_command(request.param, tmp_path_factory)


@pytest.fixture(params=CLIENTS_SANITIZED)
def pyrust_command_sanitized(request, tmp_path_factory) -> list:
    """The pyrust command through each client, the sanitized native build too."""
    return client_command(request.param, tmp_path_factory)


def cpython_interpreters() -> list:
    """Return the real interpreters (never a pyenv shim) of CPython 3.9-3.13 found here."""
    import glob

    found = {}
    for path in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3.*"))):
        name = os.path.basename(path)
        if name.count(".") == 1 and name[8:].isdigit() and 9 <= int(name[8:]) <= 13:
            found.setdefault(name, path)
    return list(found.values())


def default_signals() -> None:
    """In a child before exec: python's dispositions, whatever the test runner
    ignores (nohup, CI), so that python and pyrust start from the same place."""
    for sig in signal.valid_signals():
        try:
            if signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass


def pyrust_env(**extra) -> dict:
    """Return an environment that runs this checkout's pyrust with this interpreter."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LISTEN_", "NOTIFY_SOCKET", "PYRUST_"))}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def request(path_or_sock, code, timeout=TIMEOUT):
    """Send one v1 request (str or raw bytes); return ``(status, output_text)``."""
    payload = code.encode() if isinstance(code, str) else code
    if isinstance(path_or_sock, socket.socket):
        path_or_sock.sendall(protocol.encode_request(payload))
        status, out = protocol.read_response(path_or_sock)
        return status, out.decode()
    with connect(path_or_sock, timeout) as sock:
        return request(sock, payload)


def read_request(conn) -> dict:
    """Return the fields of one request read from ``conn`` ({} for a v1 request), as a
    server of the tests' own reads it; close the fds it carried."""
    (length,) = protocol.HEADER.unpack(protocol.recv_exact(conn, 4))
    if not length & protocol.EXTENDED_FLAG:
        protocol.recv_exact(conn, length)
        return {}
    length &= ~protocol.EXTENDED_FLAG
    payload = b""
    while len(payload) < length:
        data, fds, _, _ = socket.recv_fds(conn, length - len(payload), 300)
        for fd in fds:
            os.close(fd)
        if not data:
            raise EOFError
        payload += data
    return protocol.decode_fields(payload)


def connect(path, timeout=TIMEOUT) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


class Gate:
    """A socket the test listens on, so a program inside the server can tell
    the test it started and wait for the test's word to go on: ordering by
    events, never by sleeping."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(16)
        self.sock.settimeout(TIMEOUT)

    def program(self, first: str = "", result: str = "None") -> str:
        """Return code that connects, sends ``first``, waits for a byte, then gives ``result``."""
        return ("import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect(%r)\n"
                "s.sendall(%r)\ns.recv(1)\n%s" % (self.path, first.encode(), result))

    def accept(self) -> socket.socket:
        """Return the connection of the next program that reached the gate."""
        conn = self.sock.accept()[0]
        conn.settimeout(TIMEOUT)
        return conn

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def gate(tmp_path):
    g = Gate(tmp_path / "gate.sock")
    yield g
    g.close()


class Server:
    """A ``pyrust serve`` process started on a socket the test owns."""

    def __init__(self, base, config_text="", workers=2, env=None):
        base.mkdir(mode=0o700)
        self.dir = base
        self.path = str(base / "pyrust.sock")
        self.log_path = base / "server.log"
        config = base / "config.toml"
        config.write_text("workers = %d\n%s" % (workers, config_text))
        self.config_path = str(config)
        self.env = env or {}
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(128)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(base / "notify.sock"))
        self.notify.settimeout(1.0)
        self.notifications = queue.Queue()
        self._reading = True
        threading.Thread(target=self._read_notifications, daemon=True).start()
        self.start()

    def _read_notifications(self) -> None:
        """Read every notification as it arrives, as a service manager does: a queue
        left full makes the service drop what it sends (STATUS= every few seconds)."""
        while self._reading:
            try:
                self.notifications.put(self.notify.recv(4096).decode())
            except socket.timeout:
                continue
            except OSError:  # closed
                return

    def start(self):
        """Start a server process on the listening socket (again, after a stop)."""
        fd = self.listener.fileno()
        # bash (dash takes single-digit fds only) sets LISTEN_PID to its own
        # pid, then execs the server (same pid) with the listener as fd 3
        # (moved there unless it is fd 3 already: "3<&3 3<&-" would close it).
        moves = "" if fd == 3 else " 3<&%d %d<&-" % (fd, fd)
        script = 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"%s' % moves
        command = ["/bin/bash", "-c", script, "bash", sys.executable, "-m", "pyrust",
                   "serve", "--config", self.config_path]
        env = pyrust_env(LISTEN_FDS="1", NOTIFY_SOCKET=self.notify.getsockname(), **self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=env, cwd=str(self.dir))

    def wait_notification(self, key: str) -> str:
        """Return the next service-manager message that contains ``key`` (e.g. READY=1)."""
        while True:
            try:
                message = self.notifications.get(timeout=TIMEOUT)
            except queue.Empty:
                raise TimeoutError("no %s from the service within %s s" % (key, TIMEOUT)) \
                    from None
            if key in message.split("\n"):
                return message

    def request(self, code, timeout=TIMEOUT):
        return request(self.path, code, timeout)

    def connect(self, timeout=TIMEOUT):
        return connect(self.path, timeout)

    def worker_pids(self) -> set:
        """Return the pids of every template's workers (the service's grandchildren)."""
        import psutil

        return {p.pid for t in psutil.Process(self.proc.pid).children() for p in t.children()}

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig=signal.SIGTERM) -> int:
        """Signal the supervisor and return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(TIMEOUT)

    def close(self):
        _end(self.proc)
        self.listener.close()
        self._reading = False
        self.notify.close()


@pytest.fixture
def make_server(tmp_path):
    """Return a factory of Servers; every server is stopped after the test."""
    servers = []

    def factory(config_text="", workers=2, env=None):
        server = Server(tmp_path / ("server%d" % len(servers)), config_text, workers, env)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.close()


@pytest.fixture
def server(make_server):
    """A running two-worker server with the default configuration."""
    return make_server()


class Standalone:
    """A ``pyrust serve --socket PATH`` process that binds its own socket."""

    def __init__(self, base, socket_path, args=(), env=None):
        base.mkdir(exist_ok=True)
        self.path = socket_path
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(base / ("notify-%d.sock" % id(self))))
        self.notify.settimeout(TIMEOUT)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyrust", "serve", "--socket", socket_path, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=pyrust_env(NOTIFY_SOCKET=self.notify.getsockname(), **(env or {})))

    def wait_ready(self) -> bool:
        """Return True once READY=1 arrives, False if the server exits first."""
        import select

        while True:
            readable, _, _ = select.select([self.notify, self.proc.stderr], [], [], TIMEOUT)
            assert readable, "server neither became ready nor exited"
            if self.notify in readable:
                if "READY=1" in self.notify.recv(4096).decode().split("\n"):
                    return True
            else:  # stderr closed or wrote: wait for the exit if it is ending
                self.proc.wait(TIMEOUT)
                return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(TIMEOUT)
        self.notify.close()
        return code

    def stderr(self) -> str:
        return self.proc.stderr.read().decode()


@pytest.fixture
def standalone(tmp_path):
    """Return a factory of Standalone servers; all are stopped after the test."""
    started = []

    def factory(socket_path, args=(), env=None):
        server = Standalone(tmp_path / "standalone", socket_path, args, env)
        started.append(server)
        return server

    yield factory
    for server in started:
        _end(server.proc)
        server.notify.close()


def _end(proc):
    """Stop a server process (gracefully if it still runs) and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(TIMEOUT)
