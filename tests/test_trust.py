"""The client trusts no one: a socket in another user's directory, or a server run
by another user, gets nothing from it; and the checks behind that, one by one."""

import os
import select
import socket
import subprocess

import pytest

from conftest import TIMEOUT, pyrust_env
from pyrust import trust

NOBODY = 65534
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to become nobody")


class FakeServer:
    """A listener another user runs: a forked child binds ``path``, drops to
    uid 65534 and listens (``SO_PEERCRED`` records who called ``listen()``).
    When asked, it reports how many connections reached it and how many
    bytes they carried."""

    def __init__(self, path: str) -> None:
        self.report_r, report_w = os.pipe()
        done_r, self.done_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(self.report_r)
                self._serve(path, report_w, done_r)
            finally:
                os._exit(0)
        os.close(report_w)
        os.close(done_r)
        assert os.read(self.report_r, 1) == b"L"  # it listens: the client may try

    @staticmethod
    def _serve(path: str, report_w: int, done_r: int) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, 0o777)
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        sock.listen(8)
        os.write(report_w, b"L")
        select.select([done_r], [], [], TIMEOUT)
        sock.setblocking(False)
        connections = received = 0
        while True:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                break
            connections += 1
            conn.settimeout(TIMEOUT)
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                received += len(data)
            conn.close()
        os.write(report_w, b"%d %d" % (connections, received))

    def report(self) -> "tuple[int, int]":
        """Return (connections, bytes received); the fake server then exits."""
        os.write(self.done_w, b"x")
        with os.fdopen(self.report_r, "rb") as f:
            connections, received = f.read().split()
        os.close(self.done_w)
        os.waitpid(self.pid, 0)
        return int(connections), int(received)


def fallback_env(tmp_path) -> dict:
    """An environment whose socket is the fallback ``$TMPDIR/pyrust-$UID/pyrust.sock``,
    with a sticky, world-writable ``$TMPDIR`` as /tmp is."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    tmpdir.chmod(0o1777)
    env = pyrust_env(TMPDIR=str(tmpdir), HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "cfg"),
                     XDG_STATE_HOME=str(tmp_path / "state"))
    env.pop("XDG_RUNTIME_DIR", None)
    return env


def run_client(command, args, env):
    """Run the pyrust command through client ``command`` (an argv prefix)."""
    return subprocess.run([*command, *args], env=env, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=TIMEOUT)


CLIENT_COMMANDS = [["-c", "print('secret')"], ["--daemon"], ["--daemon-status"], ["status"],
                   ["--stop-daemon"]]


@needs_root
@pytest.mark.parametrize("args", CLIENT_COMMANDS, ids=lambda a: a[0])
def test_a_directory_another_user_made_first_gets_nothing(pyrust_command, tmp_path, args):
    env = fallback_env(tmp_path)
    directory = tmp_path / "tmp" / ("pyrust-%d" % os.getuid())
    directory.mkdir()
    directory.chmod(0o755)
    os.chown(directory, NOBODY, NOBODY)  # as if the other user had created it
    fake = FakeServer(str(directory / "pyrust.sock"))
    result = run_client(pyrust_command, args, env)
    assert fake.report() == (0, 0)  # not even a connection
    assert result.returncode == 125
    assert result.stdout == b""
    assert result.stderr.decode() == (
        "pyrust: refusing %s: socket directory %s belongs to uid 65534 (nobody), not to you "
        "(uid 0), so someone else controls what listens there; choose another --socket (or "
        "set $XDG_RUNTIME_DIR), and have an administrator remove it\n"
        % (directory / "pyrust.sock", directory))
    assert not (tmp_path / "state").exists()  # no server was started either


@needs_root
@pytest.mark.parametrize("args", CLIENT_COMMANDS, ids=lambda a: a[0])
def test_a_server_run_by_another_user_gets_nothing(pyrust_command, tmp_path, args):
    env = fallback_env(tmp_path)
    directory = tmp_path / "tmp" / ("pyrust-%d" % os.getuid())
    directory.mkdir(mode=0o700)  # ours and private, yet someone else listens in it
    fake = FakeServer(str(directory / "pyrust.sock"))
    result = run_client(pyrust_command, args, env)
    assert fake.report() == (1, 0)  # it connected, checked, and sent nothing
    assert result.returncode == 125
    assert result.stderr.decode() == (
        "pyrust: refusing %s: the server listening there runs as uid 65534 (nobody), not as "
        "you (uid 0); nothing was sent to it. Stop that server, or choose another --socket\n"
        % (directory / "pyrust.sock"))


@pytest.mark.parametrize("setup, problem", [
    ("symlink", "is a symbolic link; remove it"),
    ("open", "is open to other users (mode 770); run: chmod 700"),
    ("file", "is not a directory"),
])
def test_the_client_refuses_an_unsafe_directory_before_connecting(pyrust_command, tmp_path, setup,
                                                                  problem):
    directory = tmp_path / "sockdir"
    if setup == "symlink":
        (tmp_path / "real").mkdir(mode=0o700)
        directory.symlink_to(tmp_path / "real")
    elif setup == "open":
        directory.mkdir(mode=0o700)
        directory.chmod(0o770)
    else:
        directory.write_text("")
    socket_path = str(directory / "pyrust.sock")
    result = run_client(pyrust_command, ["--socket", socket_path, "-c", "1"],
                        pyrust_env(HOME=str(tmp_path)))
    assert result.returncode == 125
    assert result.stderr.decode().startswith("pyrust: refusing %s: socket directory %s %s"
                                             % (socket_path, directory, problem))


def test_a_private_directory_and_our_own_peer_pass(tmp_path):
    directory = tmp_path / "ok"
    directory.mkdir(mode=0o700)
    assert trust.directory_problem(str(directory)) is None
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert trust.peer_uid(left) == os.getuid()
        assert trust.server_problem(left) is None


def test_a_missing_directory_means_no_service(tmp_path):
    with pytest.raises(FileNotFoundError):
        trust.directory_problem(str(tmp_path / "absent"))


def test_getpeereid_is_used_where_so_peercred_is_missing():
    class FakeLibc:
        def getpeereid(self, fd, uid, gid):
            uid._obj.value = 501
            return 0

    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert trust.peer_uid(left, libc=FakeLibc()) == 501
