"""The ``pyrust`` command: transcripts against a live server, lean start-up, --daemon."""

import os
import platform
import re
import subprocess
import sys

import pytest

from conftest import TIMEOUT, pyrust_env
from pyrust import __version__

TRACEBACK = ('Traceback (most recent call last):\n  File "<string>", line 1, in <module>\n'
             + ('    1/0\n    ~^~\n' if sys.version_info >= (3, 13) else '')  # as python shows it
             + 'ZeroDivisionError: division by zero\n')

# (arguments, stdout, stderr, exit status); "{socket}" is the live server's path.
TRANSCRIPTS = [
    (["-c", "2+3"], "5\n", "", 0),
    (["-c", "print(42)"], "42\n", "", 0),
    (["-c", "x = 10\ny = 20\nx + y"], "30\n", "", 0),
    (["-c2+3"], "5\n", "", 0),
    (["-c", ""], "", "", 0),
    (["-c", "print('\u00e9\u2713')"], "\u00e9\u2713\n", "", 0),
    (["-c", "1/0"], "", TRACEBACK, 1),
    (["-c", "raise SystemExit(0)"], "", "", 0),
    (["-c", "raise SystemExit('bye')"], "", "bye\n", 1),
    (["--socket", "{socket}", "-c", "2+3"], "5\n", "", 0),
    (["--socket={socket}", "-c", "2+3"], "5\n", "", 0),
    (["-c", "import sys; print(sys.argv)", "a", "-b"], "['-c', 'a', '-b']\n", "", 0),
    # What python itself refuses is python's to say: the interpreter runs the command line.
    (["-c"], "", "Argument expected for the -c option\n", 2),
    (["--bogus"], "", "unknown option --bogus\n", 2),
    (["-uZ", "-c", "1"], "", "Unknown option: -Z\n", 2),
    ([], "", "", 0),  # stdin is /dev/null: an empty program, as `python < /dev/null`
    (["--socket"], "", "pyrust: --socket needs a value\n", 2),
    # -V and --version are the interpreter's, as scripts that check it expect.
    (["--version"], "Python %s\n" % platform.python_version(), "", 0),
    (["-V"], "Python %s\n" % platform.python_version(), "", 0),
    (["version"], "pyrust %s\n" % __version__, "", 0),
    # python's options: per run, and start-up ones (a template of their own).
    (["-u", "-c", "2+3"], "5\n", "", 0),
    (["-uc", "import sys; print(sys.argv)", "-u"], "['-c', '-u']\n", "", 0),
    (["-B", "-c", "import sys; sys.dont_write_bytecode"], "True\n", "", 0),
    (["-O", "-c", "__debug__"], "False\n", "", 0),
    (["-E", "-c", "import sys; sys.flags.ignore_environment"], "1\n", "", 0),
    (["-X", "dev", "-c", "import sys; sys.flags.dev_mode"], "True\n", "", 0),
    (["-W", "error", "-c", "import sys; sys.warnoptions"], "['error']\n", "", 0),
    (["--config", "{noautostart}", "--socket", "/nonexistent/pyrust.sock", "-c", "1"], "",
     "pyrust: no pyrust service at /nonexistent/pyrust.sock (No such file or directory); "
     "start it with 'pyrust --daemon' (autostart is off in the configuration)\n", 125),
    (["--socket", "/dev/null/pyrust.sock", "-c", "1"], "",
     "pyrust: refusing /dev/null/pyrust.sock: socket directory /dev/null is not a "
     "directory; move it away or choose another --socket\n", 125),
]


def pyrust(args, env=None, command=None, **kwargs):
    """Run the pyrust command with this checkout (through the client ``command``, an
    argv prefix; the Python client by default); return the CompletedProcess."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    command = command or [sys.executable, "-m", "pyrust"]
    return subprocess.run([*command, *args], capture_output=True,
                          timeout=TIMEOUT, env=pyrust_env(**(env or {})), **kwargs)


@pytest.mark.parametrize("args, stdout, stderr, code", TRANSCRIPTS,
                         ids=lambda v: repr(v) if isinstance(v, list) else "")
def test_transcript(pyrust_command, server, tmp_path, args, stdout, stderr, code):
    noautostart = tmp_path / "noautostart.toml"
    noautostart.write_text("autostart = false\n")
    args = [a.replace("{socket}", server.path).replace("{noautostart}", str(noautostart))
            for a in args]
    result = pyrust(args, command=pyrust_command, env={"PYRUST_SOCKET": server.path,
                               "XDG_STATE_HOME": str(tmp_path / "state")})
    # Usage errors print the usage after the message.
    assert result.stderr.decode().startswith(stderr) if code == 2 else \
        result.stderr.decode() == stderr
    assert (result.stdout.decode(), result.returncode) == (stdout, code)


def test_help(pyrust_command, server):
    result = pyrust(["--help"], command=pyrust_command)
    assert result.returncode == 0 and "usage: pyrust" in result.stdout.decode()


def test_socket_from_the_configuration_file(pyrust_command, server, tmp_path):
    config = tmp_path / "pyrust" / "config.toml"
    config.parent.mkdir()
    config.write_text("socket = %r\n" % server.path)
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert pyrust(["-c", "2+3"], command=pyrust_command, env=env).stdout == b"5\n"
    assert pyrust(["--config", str(config), "-c", "2+3"], command=pyrust_command).stdout == b"5\n"


def test_a_bad_configuration_is_reported_by_the_client(pyrust_command, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("socket = 3\n")
    result = pyrust(["--config", str(config), "-c", "2+3"], command=pyrust_command)
    assert result.returncode == 125
    assert result.stderr.decode().startswith("pyrust: %s: key 'socket'" % config)


def test_the_client_imports_no_server_code(server):
    code = ("import sys; sys.argv = ['pyrust', '--socket', %r, '-c', '1']\n"
            "from pyrust.cli import main; assert main() == 0" % server.path)
    # -S: site's own imports (an editable install's finder pulls in re) are not the client's.
    result = subprocess.run([sys.executable, "-S", "-X", "importtime", "-c", code],
                            capture_output=True, timeout=TIMEOUT, env=pyrust_env())
    assert result.returncode == 0 and result.stdout == b"1\n"
    imported = set(re.findall(r"\|\s+(\S+)\n", result.stderr.decode()))
    assert "pyrust.client" in imported  # the measurement does see the client path
    heavy = {"pyrust.server", "pyrust.config", "argparse", "re", "socket", "subprocess",
             "logging", "dataclasses", "tomllib", "tomli", "selectors", "enum"}
    assert imported & heavy == set()
    assert not any(name.startswith("pyrust.server") for name in imported)


def isolated_env(tmp_path) -> dict:
    (tmp_path / "run").mkdir(mode=0o700, exist_ok=True)
    return {"XDG_RUNTIME_DIR": str(tmp_path / "run"), "XDG_STATE_HOME": str(tmp_path / "state"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"), "HOME": str(tmp_path)}


def stop_background_server(socket_path):
    """SIGTERM the standalone server listening on ``socket_path`` and wait for it to go."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] and socket_path in proc.info["cmdline"]:
            try:
                proc.terminate()
                proc.wait(TIMEOUT)
            except psutil.NoSuchProcess:
                pass  # it was already on its way out (after --stop-daemon)


def test_daemon_starts_a_background_server_once(tmp_path):
    env = isolated_env(tmp_path)
    socket_path = str(tmp_path / "run" / "pyrust" / "pyrust.sock")
    first = pyrust(["--daemon"], env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.decode().startswith("pyrust: serving on %s (pid " % socket_path)
    try:
        assert pyrust(["-c", "2+3"], env=env).stdout == b"5\n"
        again = pyrust(["--daemon"], env=env)
        assert again.returncode == 0
        assert again.stdout.decode() == "pyrust: already serving on %s\n" % socket_path
        assert os.path.exists(tmp_path / "state" / "pyrust" / "pyrust.log")
    finally:
        stop_background_server(socket_path)


def test_concurrent_first_calls_start_one_server(pyrust_command, tmp_path):
    env = isolated_env(tmp_path)
    socket_path = str(tmp_path / "run" / "pyrust" / "pyrust.sock")
    try:
        calls = [subprocess.Popen([*pyrust_command, "-c", "import os; os.getppid()"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=pyrust_env(**env)) for _ in range(4)]
        results = [(c.communicate(timeout=TIMEOUT), c.returncode) for c in calls]
        assert [code for _, code in results] == [0] * 4, results
        supervisors = {out for (out, _), _ in results}  # a worker's parent is the supervisor
        assert len(supervisors) == 1
        assert all(err == b"" for (_, err), _ in results)  # autostart says nothing
    finally:
        stop_background_server(socket_path)


def test_no_autostart_where_a_socket_unit_owns_the_path(pyrust_command, tmp_path):
    env = isolated_env(tmp_path)
    unit = tmp_path / "config" / "systemd" / "user" / "pyrust.socket"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Socket]\n")
    result = pyrust(["-c", "2+3"], command=pyrust_command, env=env)
    assert result.returncode == 125
    assert result.stderr.decode() == (
        "pyrust: %s owns %s but nothing answers there; start it with the service manager "
        "(systemctl --user start pyrust.socket)\n" % (unit, tmp_path / "run" / "pyrust" / "pyrust.sock"))
    assert not os.path.exists(tmp_path / "run" / "pyrust")


def test_daemon_reports_a_server_that_cannot_start(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('preload = ["no_such_module_xyz"]\n')
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    result = pyrust(["--socket", str(tmp_path / "s.sock"), "--config", str(config), "--daemon"],
                    env=env)
    assert result.returncode == 125
    assert "the server did not start" in result.stderr.decode()
    assert "cannot preload module 'no_such_module_xyz'" in result.stderr.decode()


def test_status_reports_the_running_service(make_server):
    import json

    import psutil

    server = make_server('preload = ["fractions"]\n', workers=2)
    assert server.request("1") == (0, "1\n")
    result = pyrust(["status", "--json"], env={"PYRUST_SOCKET": server.path})
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["version"] == __version__
    assert status["socket"] == {"path": server.path, "obtained_from": "systemd"}
    assert status["supervisor"]["pid"] == server.proc.pid
    assert status["supervisor"]["rss"] == pytest.approx(
        psutil.Process(server.proc.pid).memory_info().rss, rel=0.5)
    workers = {w["pid"]: w for w in status["workers"]}
    answering = [w for w in status["workers"] if w["state"] == "busy"]
    assert len(answering) == 1  # the one answering, whose connection this is
    assert set(workers) - {answering[0]["pid"]} <= server.worker_pids()
    assert all(w["rss"] > 0 for w in status["workers"])
    assert status["workers_busy"] == 1
    assert status["spares"] >= 1  # the answering one's replacement may still be forking
    assert status["forks"]["total"] >= 3 and status["forks"]["p50_ms"] > 0
    assert status["runs_served"] == 1 and status["runs_failed"] == 0
    assert status["control_requests"] == 0  # this query is counted after it answers
    assert status["recent_runs"]["count"] == 1 and status["recent_runs"]["p50_ms"] > 0
    assert status["seconds_since_last_failure"] is None
    assert status["preloaded_modules"] == ["fractions"]
    assert status["uptime_seconds"] > 0
    assert status["compile_cache"]["capacity"] == 256
    human = pyrust(["status"], env={"PYRUST_SOCKET": server.path}).stdout.decode()
    assert "socket:     %s (from systemd)" % server.path in human
    assert "preloaded:  fractions" in human
    assert "runs:       1 served, 0 failed; last failure never\n" in human
    assert "control:    1 requests (status and the like)\n" in human


def test_status_separates_runs_from_queries_and_times_recent_runs(make_server):
    import json

    server = make_server(workers=1)
    # Once it is ready, the default environment's socket is there: no run
    # needs to ask the service for it (op e, which is a control request).
    server.wait_notification("READY=1")
    env = {"PYRUST_SOCKET": server.path}
    for code in ("2+3", "print(1)", "sum(range(100000))"):
        assert pyrust(["-c", code], env=env).returncode == 0
    assert pyrust(["--daemon-status"], env=env).returncode == 0
    before = json.loads(pyrust(["status", "--json"], env=env).stdout)
    assert (before["runs_served"], before["runs_failed"]) == (3, 0)
    assert before["control_requests"] == 1  # --daemon-status; not this query
    assert before["recent_runs"]["count"] == 3
    assert 0 < before["recent_runs"]["p50_ms"] <= before["recent_runs"]["p99_ms"]
    assert before["seconds_since_last_failure"] is None
    assert pyrust(["-c", "1/0"], env=env).returncode == 1
    after = json.loads(pyrust(["status", "--json"], env=env).stdout)
    assert (after["runs_served"], after["runs_failed"], after["control_requests"]) == (3, 1, 2)
    assert 0 <= after["seconds_since_last_failure"] < TIMEOUT
    # What the fresh processes cost: every run's worker counted once reaped,
    # its start-up a part of its whole; the template's own usage at its forks.
    (costs,) = [t["costs"] for t in after["templates"] if t["default"]]
    assert costs["forks"] >= costs["workers_ended"] >= 1
    assert 0 < costs["start_faults"] < costs["worker_faults"]
    assert 0 < costs["start_cpu"] <= costs["worker_cpu"]
    assert costs["template_cpu"] > 0 and costs["template_faults"] > 0
    human = pyrust(["status"], env=env).stdout.decode()
    assert re.search(r"^runs: +3 served, 1 failed; last failure \d+ s ago$", human, re.M)
    assert re.search(r"^latency: +p50 [\d.]+ ms, p99 [\d.]+ ms \(last 4 runs\)$", human, re.M)


def test_debug_log_has_one_line_per_run(make_server):
    server = make_server('log_level = "debug"\n', workers=1)
    env = {"PYRUST_SOCKET": server.path}
    assert pyrust(["-c", "2+3"], env=env).returncode == 0
    assert pyrust(["-c", "raise SystemExit(3)"], env=env).returncode == 3
    assert server.request("print(1)") == (0, "1\n")
    assert server.stop() == 0
    runs = re.findall(r"DEBUG: run on a connection from pid (\d+): form (\w), (\d+) bytes, "
                      r"exit (\d+) \(status (\d)\), [\d.]+ ms", server.log())
    assert [(form, size, code, status) for _, form, size, code, status in runs] == [
        ("c", "3", "0", "0"), ("c", "19", "3", "1"), ("c", "8", "0", "0")]
    assert all(int(pid) > 0 for pid, *_ in runs)


def test_old_flags_ask_the_service(make_server, tmp_path):
    server = make_server(workers=1)
    env = {"PYRUST_SOCKET": server.path}
    alive = pyrust(["--daemon-status"], env=env)
    assert alive.returncode == 0
    assert alive.stdout.decode().startswith("pyrust: serving on %s (supervisor pid %d"
                                            % (server.path, server.proc.pid))
    assert pyrust(["-c", "x = 1\nx"], env=env).stdout == b"1\n"  # compiled and cached
    cleared = pyrust(["--clear-cache"], env=env)
    assert (cleared.returncode, cleared.stdout) == (0, b"compile caches cleared\n")
    assert b'"runs_served": 1' in pyrust(["status", "--json"], env=env).stdout
    stopped = pyrust(["--stop-daemon"], env=env)
    assert (stopped.returncode, stopped.stdout) == (0, b"stopping\n")
    assert server.proc.wait(TIMEOUT) == 0
    gone = pyrust(["--daemon-status"], env={"PYRUST_SOCKET": str(tmp_path / "none.sock")})
    assert gone.returncode == 1 and gone.stderr.startswith(b"pyrust: no pyrust service at ")
    assert not os.path.exists(tmp_path / "none.sock")  # asking never starts a service


@pytest.mark.parametrize("form", ["stdin", "file", "-c"])
def test_an_oversized_program_is_refused_with_the_true_reason(pyrust_command, make_server,
                                                              tmp_path, form):
    server = make_server("max_request_bytes = 60000\n", workers=1)
    env = {"PYRUST_SOCKET": server.path}
    program = "x = 1\n" * (12_000_000 // 6 if form == "stdin" else 12_000)
    if form == "stdin":  # 12 MB: the server refuses long before the client has sent it
        result = pyrust(["-"], command=pyrust_command, env=env, stdin=None,
                        input=program.encode())
    elif form == "file":
        (tmp_path / "big.py").write_text(program)
        result = pyrust([str(tmp_path / "big.py")], command=pyrust_command, env=env)
    else:
        result = pyrust(["-c", program], command=pyrust_command, env=env)
    assert result.returncode == 125
    match = re.fullmatch(r"pyrust: bad request: request too large \((\d+) bytes; the limit is "
                         r"60000, setting max_request_bytes\)\n", result.stderr.decode())
    assert match, result.stderr
    assert int(match.group(1)) >= len(program)
    assert result.stdout == b""
    assert pyrust(["-c", "2+3"], command=pyrust_command, env=env).stdout == b"5\n"


# --- relative paths on the command line -------------------------------------

def test_relative_paths_are_resolved_against_the_working_directory(tmp_path, monkeypatch):
    from pyrust.cli import UsageError, parse_args

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    opts = parse_args(["--config", "conf/p.toml", "--socket=~/s.sock", "-u", "--python", "v",
                       "-c", "1"])
    assert opts["config"] == str(tmp_path / "conf" / "p.toml")
    assert opts["socket"] == str(tmp_path / "home" / "s.sock")
    assert opts["python"] == str(tmp_path / "v")
    assert parse_args(["--config", "/a/../b.toml", "-c", "1"])["config"] == "/b.toml"
    with pytest.raises(UsageError, match="--config needs a value"):
        parse_args(["--config=", "-c", "1"])


def test_a_relative_config_reaches_an_autostarted_server(tmp_path):
    import json

    import psutil

    env = isolated_env(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "rel.toml").write_text("workers = 1\ncompile_cache_size = 7\n")
    socket_path = str(tmp_path / "run" / "pyrust" / "pyrust.sock")
    try:
        # The background server runs in /: it can only find the file by an absolute path.
        result = pyrust(["--config", "rel.toml", "-c", "2+3"], env=env, cwd=str(work))
        assert (result.returncode, result.stdout, result.stderr) == (0, b"5\n", b"")
        status = json.loads(pyrust(["status", "--json"], env=env).stdout)
        assert status["compile_cache"]["capacity"] == 7  # the file's setting, not the default
        supervisor = psutil.Process(status["supervisor"]["pid"])
        assert str(work / "rel.toml") in supervisor.cmdline()
    finally:
        pyrust(["--stop-daemon"], env=env)
        stop_background_server(socket_path)  # waits until it is gone


def test_a_relative_bad_config_is_named_in_full(pyrust_command, tmp_path):
    (tmp_path / "bad.toml").write_text("idle_timeout = inf\n")
    result = pyrust(["--config", "bad.toml", "--socket", "s.sock", "-c", "1"],
                    command=pyrust_command, cwd=str(tmp_path))
    assert result.returncode == 125
    assert result.stderr.decode() == (
        "pyrust: %s: key 'idle_timeout': expected a number of seconds from 0.001 to 31536000 "
        "(365 days), got inf\n" % (tmp_path / "bad.toml"))
    assert not os.path.exists(tmp_path / "s.sock")


@pytest.mark.parametrize("argv, action, rest", [
    (["status", "--json"], "status", ["--json"]),
    (["--socket", "/s", "version"], "version", []),
    (["serve", "--workers", "2"], "serve", ["--workers", "2"]),
    (["-u", "status"], "run", []),       # after python's options: a script named status
    (["--", "version", "x"], "run", ["x"]),
    (["-h", "-Z"], "help", []), (["-u", "--help"], "help", []), (["-?"], "help", []),
    (["--daemon"], "--daemon", []), (["--python", "/p", "--stop-daemon"], "--stop-daemon", []),
    (["-V"], "python", []), (["-x", "f"], "python", []), (["--bogus"], "python", []),
    (["-c", "1", "--daemon"], "run", ["--daemon"]),
    ([], "run", []),
])
def test_the_command_line_names_its_action(argv, action, rest):
    from pyrust.cli import parse_args

    opts = parse_args(argv)
    assert (opts["action"], opts["rest"]) == (action, rest)
