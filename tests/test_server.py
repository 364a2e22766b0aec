"""The pre-fork server, end to end: real sockets, real processes, real signals."""

import os
import re
import signal
import socket
import stat
import struct
import threading

import psutil
import pytest

from pyrust import protocol
from pyrust.server.main import EXIT_STARTUP
from conftest import TIMEOUT, connect, request


@pytest.mark.soak  # a tier: ./test.sh --fast skips it
def test_fifty_threads_each_get_their_own_replies(make_server):
    server = make_server(workers=2)
    errors = []

    def client(n):
        try:
            # Half the threads keep one connection, half connect per request.
            sock = server.connect() if n % 2 else None
            for i in range(200):
                code = "print(%d)\n%d * 1000 + %d" % (n, n, i)
                reply = request(sock or server.path, code)
                if reply != (0, "%d\n%d\n" % (n, n * 1000 + i)):
                    errors.append((n, i, reply))
            if sock:
                sock.close()
        except Exception as exc:  # reported below; a thread must not die silently
            errors.append((n, repr(exc)))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_two_hundred_requests_on_one_connection(server):
    with server.connect() as sock:
        for i in range(200):
            assert request(sock, "x = %d\nx * 2" % i) == (0, "%d\n" % (i * 2))


def test_fresh_globals_per_request_on_one_connection(server):
    with server.connect() as sock:
        assert request(sock, "leak = 1") == (0, "")
        assert request(sock, "'leak' in globals()") == (0, "False\n")


def test_a_five_mib_program_is_served(server):
    code = "data = '" + "x" * (5 * 1024 * 1024) + "'\nlen(data)"
    assert server.request(code) == (0, "%d\n" % (5 * 1024 * 1024))


def test_an_oversized_request_is_refused_and_the_server_keeps_serving(make_server):
    server = make_server("max_request_bytes = 1048576\n", workers=1)
    code = b"#" * (1024 * 1024 + 1)
    with server.connect() as sock:
        sock.sendall(struct.pack(">I", len(code)))  # the body need not even be sent
        status, output = protocol.read_response(sock)
        assert status == protocol.BAD_REQUEST
        assert output.decode() == ("request too large (1048577 bytes; the limit is 1048576, "
                                   "setting max_request_bytes)")
        assert sock.recv(1) == b""  # the unread body would desynchronise the stream
    assert server.request("#" * (1024 * 1024)) == (0, "")  # exactly the maximum is fine
    assert server.request("2+3") == (0, "5\n")


def test_invalid_utf8_is_refused_and_the_connection_stays_usable(server):
    with server.connect() as sock:
        status, output = request(sock, b"print('\xff')")
        assert status == protocol.BAD_REQUEST and "not valid UTF-8" in output
        assert request(sock, "2+3") == (0, "5\n")


@pytest.mark.parametrize("fragment", [b"", b"\x00\x00", b"\x00\x00\x00\x10print(", None])
def test_clients_that_vanish_do_not_disturb_others(make_server, fragment):
    server = make_server(workers=1)  # one worker: anything stuck would block the rest
    with server.connect() as sock:
        if fragment is None:  # a whole request, then gone before the reply
            sock.sendall(protocol.encode_request(b"import time; time.sleep(0.2); 1"))
        else:
            sock.sendall(fragment)
    for i in range(3):
        assert server.request("%d + 1" % i) == (0, "%d\n" % (i + 1))


def test_an_idle_connection_is_closed_and_does_not_block_others(make_server):
    server = make_server("idle_timeout = 0.3\n", workers=1)
    with server.connect() as idle:
        # The single worker is stuck with `idle` until the timeout frees it.
        assert server.request("2+3") == (0, "5\n")
        assert idle.recv(1) == b""
    assert "idle for 0.3 s" in server.log()


def test_a_killed_worker_is_replaced(make_server):
    server = make_server(workers=1)
    with server.connect() as sock:
        status, pid = request(sock, "import os; os.getpid()")
        # The worker is SIGKILLed while it runs a request (not while it sits in
        # accept(), where the kernel may hand it one more connection as it dies).
        sock.sendall(protocol.encode_request(b"import os, signal; os.kill(os.getpid(), 9)"))
        # The supervisor, which holds a copy of every connection, answers for it.
        assert protocol.read_response(sock) == (protocol.WORKER_DIED, (
            b"the worker died while running the code: it was killed by SIGKILL"))
        with pytest.raises(protocol.ConnectionClosed):
            protocol.read_response(sock)
    status, new_pid = server.request("import os; os.getpid()")
    assert status == 0 and new_pid != pid
    for i in range(5):
        assert server.request("%d * 3" % i) == (0, "%d\n" % (i * 3))
    assert "worker %d died" % int(pid) in server.log()
    assert "killed by SIGKILL" in server.log()


def test_exit_in_a_program_does_not_end_the_session(make_server):
    server = make_server(workers=1)
    with server.connect() as sock:
        pid = request(sock, "import os; os.getpid()")
        assert request(sock, "raise SystemExit(4)")[0] == protocol.ERROR
        assert request(sock, "import sys; sys.exit(0)") == (0, "")
        assert request(sock, "import os; os.getpid()") == pid
    assert server.request("import os; os.getpid()") != pid  # a new connection, a new process


def test_sigterm_lets_the_request_in_flight_finish(make_server, gate):
    server = make_server(workers=1)
    code = gate.program(first="started", result="'finished'")
    with server.connect() as sock:
        sock.sendall(protocol.encode_request(code.encode()))
        peer = gate.accept()
        with peer:
            assert peer.recv(7) == b"started"
            server.proc.send_signal(signal.SIGTERM)
            server.wait_notification("STOPPING=1")  # the workers have been told to stop
            with server.connect() as late:
                late.sendall(protocol.encode_request(b"'late'"))
                peer.sendall(b"g")
                assert protocol.read_response(sock) == (0, b"'finished'\n")
                assert sock.recv(1) == b""  # a stopping worker takes no further request
                assert server.proc.wait(TIMEOUT) == 0
                # `late` was never accepted: it waits in the socket's backlog, and a
                # new server on the same socket answers it. Nothing is lost.
                server.start()
                assert protocol.read_response(late) == (0, b"'late'\n")


def test_sigterm_on_an_idle_server_exits_0_and_keeps_a_passed_socket(server):
    assert server.request("1") == (0, "1\n")
    with server.connect() as idle_connection:
        assert request(idle_connection, "2") == (0, "2\n")
        assert server.stop() == 0
        assert idle_connection.recv(1) == b""
    assert os.path.exists(server.path)  # a socket handed over is never unlinked
    assert "stopped" in server.log()


def test_preload_imports_modules_before_the_fork(make_server):
    server = make_server('preload = ["decimal", "fractions"]\n')
    assert server.request("import sys; 'decimal' in sys.modules and 'fractions' in sys.modules") \
        == (0, "True\n")
    plain = make_server()
    assert plain.request("import sys; 'fractions' in sys.modules") == (0, "False\n")


def test_a_preload_that_fails_is_a_clear_startup_error(make_server):
    server = make_server('preload = ["json", "no_such_module_xyz"]\n')
    assert server.proc.wait(TIMEOUT) == EXIT_STARTUP
    # One line naming the environment (its interpreter and preloads) and the cause.
    assert re.search(r"^pyrust: python /\S+ preloading json, no_such_module_xyz: cannot preload "
                     r"module 'no_such_module_xyz': ModuleNotFoundError: No module named "
                     r"'no_such_module_xyz'$", server.log(), re.M)


def test_a_bad_configuration_is_a_clear_startup_error(make_server):
    server = make_server("wrokers = 2\n")
    assert server.proc.wait(TIMEOUT) == EXIT_STARTUP
    assert "unknown key 'wrokers'" in server.log()


# --- standalone mode: the server binds its own socket -----------------------

def test_standalone_creates_a_private_directory_and_socket(tmp_path, standalone):
    path = str(tmp_path / "new" / "dir" / "pyrust.sock")
    server = standalone(path)
    assert server.wait_ready()
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert request(path, "2+3") == (0, "5\n")
    assert server.stop() == 0
    assert not os.path.exists(path)  # it removes the socket it bound


def test_standalone_replaces_a_stale_socket(tmp_path, standalone):
    path = str(tmp_path / "pyrust.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: what a crash leaves behind
    server = standalone(path)
    assert server.wait_ready()
    assert request(path, "2+3") == (0, "5\n")
    assert server.stop() == 0


def test_standalone_never_steals_a_live_socket(tmp_path, standalone):
    path = str(tmp_path / "pyrust.sock")
    owner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    owner.bind(path)
    owner.listen(1)
    with owner:
        server = standalone(path)
        assert not server.wait_ready()
        assert server.proc.returncode == EXIT_STARTUP
        assert "a live socket already listens on %s" % path in server.stderr()
        assert stat.S_ISSOCK(os.stat(path).st_mode)  # still there, still the owner's
        client = connect(path)
        owner.settimeout(TIMEOUT)
        owner.accept()[0].close()
        client.close()


def test_a_second_standalone_server_on_the_same_path_is_refused(tmp_path, standalone):
    path = str(tmp_path / "pyrust.sock")
    first = standalone(path)
    assert first.wait_ready()
    second = standalone(path)
    assert not second.wait_ready()
    assert second.proc.returncode == EXIT_STARTUP
    assert "already running on %s" % path in second.stderr()
    assert request(path, "2+3") == (0, "5\n")  # the first one is untouched
    assert first.stop() == 0


def test_standalone_refuses_a_path_that_is_not_a_socket(tmp_path, standalone):
    path = tmp_path / "pyrust.sock"
    path.write_text("precious")
    server = standalone(str(path))
    assert not server.wait_ready()
    assert "exists and is not a socket" in server.stderr()
    assert path.read_text() == "precious"


def test_workers_stop_when_the_supervisor_is_killed(make_server):
    import psutil

    server = make_server(workers=2)
    assert server.request("1") == (0, "1\n")
    workers = []
    for pid in server.worker_pids():
        try:
            workers.append(psutil.Process(pid))
        except psutil.NoSuchProcess:  # the worker that served "1", ending with its connection
            pass
    assert workers  # the spares (one may still be forking)
    server.proc.kill()  # SIGKILL: the supervisor gets no chance to stop them
    server.proc.wait(TIMEOUT)
    gone, alive = psutil.wait_procs(workers, timeout=TIMEOUT)
    assert alive == []


def test_a_program_that_takes_over_sigterm_does_not_break_the_stop(make_server):
    server = make_server("graceful_timeout = 5\n", workers=1)
    assert server.request("import signal; _ = signal.signal(signal.SIGTERM, signal.SIG_IGN)") \
        == (0, "")
    assert server.request("2+3") == (0, "5\n")
    assert server.stop() == 0
    assert "killing them" not in server.log()


@pytest.mark.parametrize("problem, message", [
    ("symlink", "is a symbolic link"),
    ("open", "is open to other users (mode 755); run: chmod 700"),
    ("foreign", "belongs to uid 65534 (nobody), not to you"),
])
def test_standalone_refuses_an_unsafe_directory(tmp_path, standalone, problem, message):
    directory = tmp_path / "sockdir"
    if problem == "symlink":
        (tmp_path / "real").mkdir(mode=0o700)
        directory.symlink_to(tmp_path / "real")
    else:
        directory.mkdir(mode=0o700)
        if problem == "open":
            directory.chmod(0o755)
        else:
            os.chown(directory, 65534, 65534)
    server = standalone(str(directory / "pyrust.sock"))
    assert not server.wait_ready()
    assert server.proc.returncode == EXIT_STARTUP
    assert message in server.stderr()
    assert not os.path.exists(directory / "pyrust.sock")


def test_ready_and_status_reach_the_service_manager(server):
    message = server.wait_notification("READY=1")
    assert "STATUS=1 environment, 2 spares, 0 busy, 0 runs served, 0 failed" in message


def test_watchdog_pings_come_from_the_supervisor_loop(make_server):
    server = make_server(env={"WATCHDOG_USEC": "300000"})  # a ping every 0.1 s
    server.wait_notification("READY=1")
    server.wait_notification("WATCHDOG=1")
    server.wait_notification("WATCHDOG=1")
    assert server.request("2+3") == (0, "5\n")


def test_sighup_reloads_the_configuration_and_replaces_the_workers(make_server):
    server = make_server(workers=1)
    server.wait_notification("READY=1")
    old = server.worker_pids()
    with open(server.config_path, "w") as f:
        f.write('workers = 2\npreload = ["fractions"]\n')
    server.proc.send_signal(signal.SIGHUP)
    server.wait_notification("RELOADING=1")
    assert "STATUS=" in server.wait_notification("READY=1")
    # The old workers finish what they had accepted, then leave (some may be
    # gone already).
    retiring = []
    for pid in old:
        try:
            retiring.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    gone, alive = psutil.wait_procs(retiring, timeout=TIMEOUT)
    assert alive == []
    replies = {server.request("import os, sys; (os.getpid(), 'fractions' in sys.modules)")
               for _ in range(20)}
    for status, output in replies:
        pid, preloaded = eval(output)
        assert status == 0 and pid not in old and preloaded


def test_a_bad_configuration_on_reload_keeps_the_old_one(make_server):
    server = make_server(workers=1)
    server.wait_notification("READY=1")
    with open(server.config_path, "w") as f:
        f.write("workers = 'many'\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_notification("READY=1")
    assert server.request("2+3") == (0, "5\n")
    assert "keeping the running configuration" in server.log()


def test_idle_exit_keeps_waiting_connections_for_the_next_server(make_server):
    server = make_server("idle_exit = 0.3\n", workers=1)
    assert server.request("1") == (0, "1\n")
    assert server.proc.wait(TIMEOUT) == 0  # no request for 0.3 s: it exits, cleanly
    assert "no request for 0.3 s, exiting" in server.log()
    with server.connect() as sock:  # the socket (the test's, as systemd's) still listens
        sock.sendall(protocol.encode_request(b"2+3"))
        server.start()  # what socket activation does on this connection
        assert protocol.read_response(sock) == (0, b"5\n")


@pytest.mark.parametrize("tag, value", [(protocol.TIMEOUT_MS, b"\x01\x02"),
                                        (protocol.OP, b"rr"), (protocol.STDIO, b"")])
def test_a_field_of_the_wrong_size_is_refused_and_the_worker_goes_on(make_server, tag, value):
    server = make_server(workers=1)
    pid = server.request("import os; os.getpid()")
    with server.connect() as sock:
        header, payload = protocol.encode_extended([(protocol.SOURCE, b"1"), (tag, value)])
        sock.sendall(header + payload)
        status, output = protocol.read_response(sock)
        assert status == protocol.BAD_REQUEST
        assert output.startswith(b"malformed extended request: field %d must be" % tag)
        assert request(sock, "2+3") == (0, "5\n")  # the payload was read: the stream goes on
        assert request(sock, "import os; os.getpid()") != pid  # this connection's process
