"""The native client (client/pyrust.c) as a program: it builds clean, it survives
hostile replies as the Python client does, and it hands off what it does not do.

1. It compiles with -Wall -Wextra -Werror (native.py --strict).
2. Hostile replies from a server the test owns (a real Unix socket in a 0700
   directory): a short header, a huge length, a connection closed mid-reply or
   without a reply, an unknown status, an OK without an exit code.  Each client
   must exit 125 with one ``pyrust: ...`` line on stderr (never a traceback, a
   crash or a signal), and the same line.
3. The hand-off: a client built against a recording launcher shows which
   invocations exec the Python client (with the same argv) and which run
   natively, without any timing: ``PYRUST_NO_NATIVE=1``, the service commands,
   ``--help``, unknown options, autostart; never the run path.
"""

import os
import resource
import socket
import struct
import subprocess
import sys
import threading

import pytest

from conftest import TIMEOUT, pyrust_env, read_request
from pyrust import client, config, native, ops, protocol

# --- 1. the build -----------------------------------------------------------------------


def test_the_client_builds_with_warnings_as_errors(tmp_path):
    assert {"-Wall", "-Wextra"} <= set(native.CFLAGS) and "-Werror" in native.STRICT
    proc = subprocess.run(
        [sys.executable, "-m", "pyrust.native", "--out", str(tmp_path / "pyrust"),
         "--launcher", str(tmp_path / "pyrust-python"), "--strict"],
        capture_output=True, text=True, env=pyrust_env(), timeout=TIMEOUT * 4)
    if proc.returncode == native.NO_COMPILER:
        pytest.skip("no C compiler: the native client was not built")
    assert proc.returncode == 0, "-Wall -Wextra -Werror build failed:\n" + proc.stderr
    assert proc.stderr == ""  # not even a note
    assert os.access(str(tmp_path / "pyrust"), os.X_OK)


def test_the_clients_reply_limit_is_the_services():
    assert client.MAX_REPLY_BYTES == config.MAX_MESSAGE_BYTES


# --- 2. hostile replies -----------------------------------------------------------------

DIED = ("pyrust: the worker running the code died before it replied (it crashed, or was "
        "killed for ignoring its time limit; the service log says which), so the code may "
        "have run part way\n")

#: name -> (the bytes sent in reply to the run, then the connection is closed;
#: the line both clients must print).
HOSTILE = {
    "short header": (b"\x00\x00\x00", DIED),
    "huge length": (struct.pack(">BI", protocol.OK, 0xFFFFFFFF),
                    "pyrust: the service's reply announced 4294967295 bytes, more than a "
                    "pyrust service ever sends (%d), so the code may have run part way\n"
                    % config.MAX_MESSAGE_BYTES),
    "closed mid-reply": (struct.pack(">BI", protocol.OK, 100) + b"x" * 10, DIED),
    "closed without a reply": (b"", DIED),
    "unknown status": (struct.pack(">BI", 99, 5) + b"hello", "pyrust: status 99: hello\n"),
    "OK without an exit code": (struct.pack(">BI", protocol.OK, 2) + b"\x00\x01",
                                "pyrust: the service's reply (ok) has no exit code (2 bytes), "
                                "so the code may have run part way\n"),
}


class HostileServer:
    """A server on a socket the test owns that reads each request whole (closing
    the fds it carries), answers op ensure with its own socket ("run here"), and
    answers anything else with ``reply``, then closes the connection."""

    def __init__(self, directory, reply: bytes) -> None:
        directory.mkdir(mode=0o700)
        self.path = str(directory / "pyrust.sock")
        self.reply = reply
        self.ops = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn = self.listener.accept()[0]
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(TIMEOUT)
                try:
                    fields = read_request(conn)
                except (OSError, EOFError, protocol.ConnectionClosed):
                    continue
                self.ops.append(fields.get(protocol.OP))
                if fields.get(protocol.OP) == ops.ENSURE.code:
                    conn.sendall(protocol.encode_response(protocol.OK, os.fsencode(self.path)))
                else:
                    conn.sendall(self.reply)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        self.thread.join(TIMEOUT)
        self.listener.close()


def _limit_memory():
    """In the client before exec: 2 GiB of address space, so a client that believes a
    huge length and allocates it fails here whatever the machine's memory."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_an_error_of_the_clients_own_end_is_not_called_a_dead_worker():
    """A reply that does not come in time (a timeout is the only error the Python
    client's own end meets; the native client has none) says what happened."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(0.05)
        with pytest.raises(client.ServiceUnavailable) as caught:
            client.execute(ours, client.v1_request(b"2+3"))
    assert str(caught.value) == ("lost the connection to the service (timed out), so the "
                                 "code may have run part way")


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_reply_is_a_clear_error(pyrust_command_sanitized, tmp_path, name):
    reply, message = HOSTILE[name]
    server = HostileServer(tmp_path / "run", reply)
    (tmp_path / "config").mkdir()
    # AddressSanitizer reserves terabytes of address space: no limit there, where
    # it reports any allocation it finds too large anyway.
    sanitized = pyrust_command_sanitized[0].endswith("sanitized")
    try:
        result = subprocess.run(
            pyrust_command_sanitized + ["--socket", server.path, "-c", "2+3"],
            capture_output=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT,
            preexec_fn=None if sanitized else _limit_memory,
            env=pyrust_env(XDG_CONFIG_HOME=str(tmp_path / "config"), HOME=str(tmp_path)))
    finally:
        server.close()
    assert ops.RUN.code in server.ops  # the reply under test is the run's
    stderr = result.stderr.decode("utf-8", "backslashreplace")
    assert result.returncode == 125, (result.returncode, stderr)  # never a signal (< 0)
    assert (result.stdout, stderr) == (b"", message)


# --- 3. the hand-off --------------------------------------------------------------------

#: The launcher the recording client hands off to: it says so, with its argv.
RECORDER = "#!/bin/sh\nprintf 'handed off:'\nfor a in \"$@\"; do printf ' [%s]' \"$a\"; done\n" \
           "echo\nexit 42\n"


@pytest.fixture(scope="module")
def recording_client(tmp_path_factory):
    """A native client whose hand-off target is a recording shell script."""
    directory = tmp_path_factory.mktemp("recording")
    launcher = directory / "launcher"
    try:
        proc = native.compile_client(str(directory / "pyrust"), str(launcher), sys.executable,
                                     strict=True)
    except FileNotFoundError:
        pytest.skip("no C compiler: the native client was not built")
    assert proc.returncode == 0, proc.stderr
    launcher.write_text(RECORDER)
    launcher.chmod(0o755)
    return str(directory / "pyrust")


def handed_off(args) -> str:
    return "handed off:%s\n" % "".join(" [%s]" % a for a in args)


def run_recording(recording_client, tmp_path, args, **env):
    (tmp_path / "config").mkdir(exist_ok=True)
    return subprocess.run([recording_client] + args, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=TIMEOUT,
                          env=pyrust_env(XDG_CONFIG_HOME=str(tmp_path / "config"),
                                         HOME=str(tmp_path), **env))


def test_pyrust_no_native_hands_everything_to_the_python_client(recording_client, server,
                                                               tmp_path):
    args = ["-c", "2+3", "a", ""]
    result = run_recording(recording_client, tmp_path, args, PYRUST_SOCKET=server.path,
                           PYRUST_NO_NATIVE="1")
    assert (result.stdout, result.returncode) == (handed_off(args), 42)


@pytest.mark.parametrize("args", [
    ["status"], ["status", "--json"], ["--daemon"], ["--stop-daemon"], ["--daemon-status"],
    ["--clear-cache"], ["--help"], ["--bogus-option", "-c", "1"],
], ids=" ".join)
def test_what_it_does_not_do_itself_is_handed_off(recording_client, server, tmp_path, args):
    result = run_recording(recording_client, tmp_path, args, PYRUST_SOCKET=server.path)
    assert (result.stdout, result.returncode) == (handed_off(args), 42)


def test_autostart_is_handed_off(recording_client, tmp_path):
    """Nothing answers on the socket and autostart is on: the Python client starts
    the service (here: the recorder says it was asked)."""
    (tmp_path / "run").mkdir(mode=0o700)
    args = ["--socket", str(tmp_path / "run" / "pyrust.sock"), "-c", "2+3"]
    result = run_recording(recording_client, tmp_path, args)
    assert (result.stdout, result.returncode) == (handed_off(args), 42)


@pytest.mark.parametrize("args, stdout", [
    pytest.param(args, stdout, id=" ".join(args)) for args, stdout in [
        (["-c", "2+3"], "5\n"),
        (["-c", "import sys; print(sys.argv)", "x"], "['-c', 'x']\n"),
        (["-u", "-c", "print('unbuffered')"], "unbuffered\n"),
    ]])
def test_the_run_path_never_hands_off(recording_client, server, tmp_path, args, stdout):
    result = run_recording(recording_client, tmp_path, args, PYRUST_SOCKET=server.path)
    assert (result.stdout, result.stderr, result.returncode) == (stdout, "", 0)
