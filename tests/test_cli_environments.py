"""The ``pyrust`` command's run path against a scripted service on real sockets:
which socket it tries first, when it asks the service (ensure), what a run
request carries (its environment, python's per-run options, echo, form)."""

import os
import re
import socket
import subprocess
import sys
import threading

import pytest

from conftest import TIMEOUT, pyrust_env, read_request
from pyrust import client, environment, ops, protocol


class FakeService:
    """A main socket and the template sockets it creates, each answering by script.

    ``ensure_reply``: (status, payload) for op ensure, or None to bind the
    template socket the fields name and answer with its path.  ``run_replies``:
    {socket path: status} for runs (OK runs answer ``exit_code``).  Every
    request is recorded as (socket path, decoded fields).
    """

    def __init__(self, directory) -> None:
        self.dir = str(directory)
        self.path = os.path.join(self.dir, "pyrust.sock")
        self.ensure_reply = None
        self.run_replies = {}
        self.exit_code = 7
        self.requests = []
        self.listeners = []
        self.listen(self.path)

    def listen(self, path: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(8)
        self.listeners.append(sock)
        threading.Thread(target=self._serve, args=(sock, path), daemon=True).start()

    def _serve(self, listener, path) -> None:
        while True:
            try:
                conn = listener.accept()[0]
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(TIMEOUT)
                fields = read_request(conn)
                self.requests.append((path, fields))
                status, payload = self._answer(path, fields)
                conn.sendall(protocol.encode_response(status, payload))

    def _answer(self, path, fields) -> tuple:
        if fields[protocol.OP] == ops.ENSURE.code:
            if self.ensure_reply is not None:
                return self.ensure_reply
            env = environment.Environment.from_fields(fields)
            template = environment.template_socket(self.path, env.key())
            if not os.path.exists(template):
                self.listen(template)
            return protocol.OK, os.fsencode(template)
        status = self.run_replies.get(path, protocol.OK)
        if status == protocol.OK:
            return status, protocol.EXIT_CODE.pack(self.exit_code)
        return status, b"this socket serves another environment\n"

    def runs(self) -> list:
        return [(path, f) for path, f in self.requests if f[protocol.OP] == ops.RUN.code]

    def close(self) -> None:
        for sock in self.listeners:
            sock.close()


@pytest.fixture
def service(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    fake = FakeService(directory)
    yield fake
    fake.close()


PYTHON = "/opt/py/bin/python"


def client_env(tmp_path, **extra) -> dict:
    """An environment without PYTHON* start-up variables, venv or config of the caller's."""
    env = {k: v for k, v in pyrust_env().items()
           if not (k.startswith("PYTHON") and k != "PYTHONPATH") and k != "VIRTUAL_ENV"}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), HOME=str(tmp_path))
    env.update(extra)
    return env


def pyrust(command, service, tmp_path, args, env=None, **kwargs):
    """Run the pyrust command through client ``command`` (an argv prefix) on ``service``."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([*command, "--socket", service.path,
                           "--python", PYTHON, *args], capture_output=True, timeout=TIMEOUT,
                          cwd=str(tmp_path), env=env or client_env(tmp_path), **kwargs)


def test_a_new_environment_is_ensured_then_run_in_its_template(pyrust_command, service, tmp_path):
    env = client_env(tmp_path, PYTHONHASHSEED="3", PYTHONWARNINGS="error")
    result = pyrust(pyrust_command, service, tmp_path,
                    ["-u", "-O", "-X", "dev", "-W", "error", "-c", "2+3", "a"], env=env)
    assert (result.returncode, result.stderr) == (7, b"")
    expected = environment.Environment(PYTHON, startup=["-O", "-Xdev", "PYTHONHASHSEED=3"])
    template = environment.template_socket(service.path, expected.key())
    (ensure_path, ensure), (run_path, run) = service.requests
    assert (ensure_path, ensure[protocol.OP]) == (service.path, ops.ENSURE.code)
    assert environment.Environment.from_fields(ensure) == expected
    assert run_path == template
    assert environment.Environment.from_fields(run) == expected
    assert (run[protocol.FORM], run[protocol.SOURCE], run[protocol.ARG]) == (
        b"c", b"2+3", [b"-c", b"a"])
    assert (run[protocol.PYOPT], run[protocol.ECHO]) == ([b"-u", b"-Werror"], b"1")
    assert b"PYTHONWARNINGS=error" in run[protocol.ENV]  # per run: the run applies it
    # The next run goes straight to the template.
    assert pyrust(pyrust_command, service, tmp_path, ["-O", "-Xdev", "-c", "1"],
                  env=env).returncode == 7
    assert [path for path, _ in service.requests[2:]] == [template]


def test_a_template_that_serves_another_environment_sends_the_client_to_the_service(
        pyrust_command, service, tmp_path):
    env = environment.Environment(PYTHON)
    stale = environment.template_socket(service.path, env.key())
    service.listen(stale)
    service.run_replies[stale] = protocol.WRONG_TEMPLATE
    service.ensure_reply = (protocol.OK, os.fsencode(service.path))  # "use the main socket"
    result = pyrust(pyrust_command, service, tmp_path, ["-c", "1"])
    assert (result.returncode, result.stderr) == (7, b"")
    assert [(path, f[protocol.OP]) for path, f in service.requests] == [
        (stale, ops.RUN.code), (service.path, ops.ENSURE.code),
        (service.path, ops.RUN.code)]
    assert service.requests[0][1] == service.requests[2][1]  # the same request, sent again


def test_no_retry_storm_when_the_named_socket_is_wrong_too(pyrust_command, service, tmp_path):
    env = environment.Environment(PYTHON)
    stale = environment.template_socket(service.path, env.key())
    service.listen(stale)
    service.run_replies[stale] = protocol.WRONG_TEMPLATE
    service.ensure_reply = (protocol.OK, os.fsencode(stale))
    result = pyrust(pyrust_command, service, tmp_path, ["-c", "1"])
    assert result.returncode == 125
    assert result.stderr == b"pyrust: wrong environment: this socket serves another " \
                            b"environment\n"
    # The run, then ENSURE_ATTEMPTS rounds of (ensure, run): then it gives up.
    assert len(service.requests) == 1 + 2 * client.ENSURE_ATTEMPTS


def test_an_environment_that_cannot_start_is_a_clear_error(pyrust_command, service, tmp_path):
    service.ensure_reply = (protocol.SERVICE_ERROR,
                            b"%s: no such file or directory\n" % PYTHON.encode())
    result = pyrust(pyrust_command, service, tmp_path, ["-c", "1"])
    assert (result.returncode, result.stdout) == (125, b"")
    assert result.stderr == b"pyrust: /opt/py/bin/python: no such file or directory\n"
    assert not service.runs()


def test_the_project_names_preloads_root_and_echo(pyrust_command, service, tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pyrust]\npreload = ["json", "csv"]\necho = false\n')
    (tmp_path / "sub").mkdir()
    result = subprocess.run([*pyrust_command, "--socket", service.path,
                             "--python", PYTHON, "-c", "1"], capture_output=True,
                            timeout=TIMEOUT, cwd=str(tmp_path / "sub"),
                            stdin=subprocess.DEVNULL, env=client_env(tmp_path))
    assert result.returncode == 7, result.stderr
    (_, run), = service.runs()
    assert environment.Environment.from_fields(run) == environment.Environment(
        PYTHON, ["json", "csv"], str(tmp_path))
    assert run[protocol.ECHO] == b"0"


@pytest.mark.parametrize("args, stdin, form, source, argv", [
    ([], b"print(1)\n", b"-", b"print(1)\n", [b""]),
    (["-", "a"], b"x = 1", b"-", b"x = 1", [b"-", b"a"]),
    (["-i"], b"1\n", b"i", b"", [b""]),
    (["-i", "-", "a"], b"1\n", b"i", b"", [b"-", b"a"]),
    (["script.py", "b"], b"", b"f", b"script.py", [b"script.py", b"b"]),
    (["-m", "json.tool", "-h"], b"", b"m", b"json.tool", [b"-m", b"-h"]),
])
def test_each_program_form(pyrust_command, service, tmp_path, args, stdin, form, source, argv):
    result = pyrust(pyrust_command, service, tmp_path, args, stdin=None, input=stdin)
    assert result.returncode == 7, result.stderr
    (_, run), = service.runs()
    assert (run[protocol.FORM], run[protocol.SOURCE], run[protocol.ARG]) == (form, source, argv)


def test_a_terminal_on_stdin_gets_pythons_prompt(pyrust_command, service, tmp_path):
    leader, follower = os.openpty()
    try:
        result = pyrust(pyrust_command, service, tmp_path, ["-q"], stdin=follower)
    finally:
        os.close(leader)
        os.close(follower)
    assert result.returncode == 7, result.stderr
    (_, run), = service.runs()
    assert (run[protocol.FORM], run[protocol.ARG], run[protocol.PYOPT]) == (b"i", [b""], [b"-q"])


def test_the_run_path_stays_lean(service, tmp_path):
    code = ("import sys; sys.argv = ['pyrust', '--socket', %r, '--python', %r, '-u', '-c', '1']"
            "\nfrom pyrust.cli import main; sys.exit(main())" % (service.path, PYTHON))
    # -S: site's own imports (an editable install's finder pulls in re) are not the client's.
    result = subprocess.run([sys.executable, "-S", "-X", "importtime", "-c", code],
                            capture_output=True, timeout=TIMEOUT, cwd=str(tmp_path),
                            env=client_env(tmp_path), stdin=subprocess.DEVNULL)
    assert result.returncode == 7, result.stderr[-2000:]
    imported = set(re.findall(r"\|\s+(\S+)\n", result.stderr.decode()))
    assert {"pyrust.client", "pyrust.pyoptions", "pyrust.project"} <= imported
    heavy = {"pyrust.config", "argparse", "re", "socket", "subprocess", "logging",
             "dataclasses", "tomllib", "tomli", "selectors", "enum"}
    assert imported & heavy == set()
    assert not any(name.startswith("pyrust.server") for name in imported)


def test_an_untrusted_directory_is_refused_by_the_main_sockets_name(pyrust_command, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    result = subprocess.run([*pyrust_command, "--socket",
                             str(shared / "pyrust.sock"), "-c", "1"], capture_output=True,
                            timeout=TIMEOUT, env=client_env(tmp_path), stdin=subprocess.DEVNULL)
    assert result.returncode == 125
    assert result.stderr.decode().startswith("pyrust: refusing %s: " % (shared / "pyrust.sock"))


def fake_venv(directory, python) -> str:
    """Make ``directory``/bin/python a link to ``python``; return ``directory``."""
    (directory / "bin").mkdir(parents=True)
    (directory / "bin" / "python").symlink_to(python)
    return str(directory)


def test_version_is_the_chosen_interpreters(pyrust_command, tmp_path):
    from test_pyoptions import INTERPRETERS

    first, last = INTERPRETERS[0], INTERPRETERS[-1]
    version = {p: subprocess.run([p, "-V"], capture_output=True, timeout=TIMEOUT).stdout
               for p in (first, last)}
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[tool.pyrust]\npython = "venv"\n')
    fake_venv(project / "venv", first)
    other = fake_venv(tmp_path / "active", last)

    def pyrust_version(**extra):
        return subprocess.run([*pyrust_command, "-V"], capture_output=True,
                              timeout=TIMEOUT, cwd=str(project / "src"),
                              env=client_env(tmp_path, **extra)).stdout

    assert pyrust_version() == version[first]
    assert pyrust_version(VIRTUAL_ENV=other) == version[last]
    assert pyrust_version(PYRUST_PYTHON=first, VIRTUAL_ENV=other) == version[first]


def test_an_interpreter_that_does_not_exist_is_named(pyrust_command, tmp_path):
    result = subprocess.run([*pyrust_command, "--python", str(tmp_path / "no"),
                             "-V"], capture_output=True, timeout=TIMEOUT,
                            env=client_env(tmp_path))
    assert (result.returncode, result.stdout) == (125, b"")
    assert result.stderr.decode() == "pyrust: cannot run the interpreter %s (No such file or " \
                                     "directory)\n" % (tmp_path / "no")
