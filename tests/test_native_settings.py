"""The native client's settings reader (client/settings.c) against the Python client.

settings.c is built on its own with -DPYRUST_SETTINGS_SELFTEST (a test-only main that
prints what read_config, find_project, its port of minitoml.read and expand_user give,
as JSON), with the generated header, -Werror and the sanitizers.  Then, differentially:

* its port of minitoml.read gives exactly what minitoml.read gives (the same table, the
  same Unsupported decisions) for every document test_minitoml's strategies write;
* find_project either hands off or gives what project.nearest_project gives, and does
  not hand off the ordinary documents (the strategies' plain ones, realistic
  pyproject.toml files);
* read_config either hands off or accepts what config.load_config accepts, with the same
  socket, python, preload, echo and autostart; what load_config refuses is handed off;
  ordinary configuration files are read natively;
* expand_user is os.path.expanduser (HOME set, empty, unset; ~user; an unknown user).

Handing off is always allowed (the Python client then answers): these tests measure
that the common cases are not handed off, and that nothing else differs.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import tomllib

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st
from hypothesis.control import currently_in_test_context

from conftest import ROOT, TIMEOUT
from pyrust import config as pyconfig, native, project
from pyrust.errors import ConfigError
from test_minitoml import (FALLBACK, READ, REFUSED, documents, fast, mangled_documents,
                           salted_documents, same)

CC = shutil.which(os.environ.get("CC") or "cc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc or $CC): the native "
                                "client is not built here, the Python client stays")
SOURCE = os.path.join(ROOT, "client", "settings.c")
EXAMPLES = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
SANITIZER_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=99",
                 "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
HAND_OFF = "hand_off"


def build(directory: str, flags: list, out: str) -> str:
    """Compile settings.c's self-test into ``directory``/``out``; return its path."""
    header = os.path.join(directory, native.HEADER)
    with open(header, "w", encoding="ascii") as f:
        f.write(native.render_header("/launcher", "/python"))
    binary = os.path.join(directory, out)
    result = subprocess.run([CC, *native.CFLAGS, *native.STRICT, *flags,
                             "-DPYRUST_SETTINGS_SELFTEST", "-I", directory, "-o", binary,
                             SOURCE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    return binary


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """The self-test, built with the sanitizers."""
    return build(str(tmp_path_factory.mktemp("build")), native.SANITIZE, "selftest")


def environment(**changes) -> dict:
    env = dict(os.environ, **SANITIZER_ENV)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run(binary, *args, **env):
    """Run one self-test command; return its JSON answer."""
    result = subprocess.run([binary, *args], capture_output=True, env=environment(**env),
                            timeout=TIMEOUT)
    assert (result.returncode, result.stderr) == (0, b""), result.stderr.decode(errors="replace")
    return json.loads(result.stdout.decode("utf-8"))


class Selftest:
    """One self-test process answering commands on stdin: fast enough for hypothesis,
    and a leak anywhere is reported (and fails the test) when it exits."""

    def __init__(self, binary: str) -> None:
        self.process = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=environment())

    def ask(self, *fields: str):
        assert all("\t" not in f and "\n" not in f for f in fields)
        self.process.stdin.write(("\t".join(fields) + "\n").encode("utf-8", "surrogateescape"))
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the self-test died: " + self.process.stderr.read().decode(errors="replace")
        return json.loads(line.decode("utf-8"))

    def close(self) -> None:
        self.process.stdin.close()
        stderr = self.process.stderr.read()
        assert (self.process.wait(TIMEOUT), stderr) == (0, b""), stderr.decode(errors="replace")
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.fixture(scope="module")
def selftest(binary):
    process = Selftest(binary)
    yield process
    process.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("work"))


def write(path: str, data) -> str:
    with open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


# --- the build ----------------------------------------------------------------------
def test_it_builds_warning_free_at_O2(tmp_path):
    """-O2 finds other warnings than the sanitizer build's -O1."""
    build(str(tmp_path), [], "selftest")


def test_the_client_includes_it_warning_free(tmp_path):
    """client/pyrust.c includes settings.c: strict, whatever of it the client uses."""
    result = native.compile_client(str(tmp_path / "pyrust"), "/launcher", "/python",
                                   strict=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the port of minitoml.read ------------------------------------------------------
def port(selftest, workdir, text: str):
    """Return what settings.c's minitoml port gives for ``text``: fast()'s terms."""
    path = write(os.path.join(workdir, "port.toml"), text)
    answer = selftest.ask("minitoml", path)
    return {"unsupported": FALLBACK, "none": None}.get(answer["result"],
                                                       answer.get("table", answer))


def agree(got, expected) -> bool:
    """same(), but a table's keys in any order (python's dict keeps the text's order)."""
    if isinstance(got, dict) and isinstance(expected, dict) and set(got) == set(expected):
        got = {key: got[key] for key in expected}
    return same(got, expected)


@pytest.mark.fuzz  # a tier: ./test.sh --fast skips it
@EXAMPLES
@given(documents())
def test_the_port_reads_a_readable_table_as_minitoml_does(selftest, workdir, document):
    text, table = document
    assert agree(port(selftest, workdir, text), table)


@pytest.mark.fuzz  # a tier: ./test.sh --fast skips it
@EXAMPLES
@given(salted_documents())
def test_the_port_refuses_what_minitoml_refuses(selftest, workdir, text):
    assert agree(port(selftest, workdir, text), fast(text))


@pytest.mark.fuzz  # a tier: ./test.sh --fast skips it
@EXAMPLES
@given(mangled_documents())
def test_the_port_of_a_mangled_table_is_minitoml(selftest, workdir, text):
    assert agree(port(selftest, workdir, text), fast(text))


@pytest.mark.parametrize("text", list(READ.values()) + list(REFUSED.values()),
                         ids=["read: " + k for k in READ] + ["refused: " + k for k in REFUSED])
def test_the_port_on_minitomls_own_cases(selftest, workdir, text):
    assert agree(port(selftest, workdir, text), fast(text))


def test_deep_nesting_is_a_hand_off_not_a_crash(selftest, workdir):
    for opening, closing in (("[", "]"), ("{a = ", "}")):
        text = "x = " + opening * 5000 + "1" + closing * 5000 + "\n[tool.pyrust]\n"
        assert port(selftest, workdir, text) == {"result": "limit"}
    text = "x = " + "[" * 30 + "1" + "]" * 30 + "\n[tool.pyrust]\necho = true\n"
    assert port(selftest, workdir, text) == {"echo": True}


# --- find_project against project.nearest_project ------------------------------------
def python_project(cwd):
    """What nearest_project gives: None, (path, python, preload, echo), or the error."""
    try:
        found = project.nearest_project(cwd)
    except Exception as exc:  # the error itself is the outcome (even a crash)
        return type(exc).__name__
    return found and (found.path, found.python, found.preload, found.echo)


def native_project(answer):
    """The same, from find_project's answer (python resolved as the client must)."""
    if answer["status"] != "ok":
        return HAND_OFF
    if answer["path"] is None:
        return None
    root = os.path.dirname(answer["path"])
    python = answer["python"]
    return (answer["path"], python and project.interpreter_path(python, root),
            answer["preload"] if answer["preload_set"] else None,
            None if answer["echo"] < 0 else bool(answer["echo"]))


def check_project(selftest, directory: str, text, native_expected=False):
    """find_project in ``directory`` (holding ``text``) hands off or agrees with python.
    native_expected: assert it does not hand off ("ordinary": where python reads the
    table without tomllib, accepts it, and its module names are ASCII)."""
    write(os.path.join(directory, "pyproject.toml"), text)
    got = native_project(selftest.ask("project", directory))
    expected = python_project(directory)
    if native_expected == "ordinary":
        native_expected = ordinary(text) and not isinstance(expected, str)
    if native_expected:
        assert got != HAND_OFF, expected
    if got != HAND_OFF:
        assert got == expected
    tally(got, expected)
    return got


def tally(got, expected) -> None:
    """Count outcomes in hypothesis's statistics (--hypothesis-show-statistics)."""
    if currently_in_test_context():
        event("native: %s; python: %s" % (outcome(got), outcome(expected)))


def outcome(value) -> str:
    """A few words for hypothesis's statistics."""
    if value in (HAND_OFF, None) or isinstance(value, str):
        return str(value)
    return "a table"


def ordinary(text: str) -> bool:
    """Whether minitoml reads ``text`` and its module names (if a list) are ASCII."""
    table = fast(text)
    if table is FALLBACK:
        return False
    preload = (table or {}).get("preload")
    return not isinstance(preload, list) or all(isinstance(n, str) and n.isascii()
                                                for n in preload)


@pytest.mark.fuzz  # a tier: ./test.sh --fast skips it
@EXAMPLES
@given(documents())
def test_a_project_is_found_as_python_finds_it(selftest, workdir, document):
    text, _ = document
    directory = os.path.join(workdir, "project")
    os.makedirs(directory, exist_ok=True)
    check_project(selftest, directory, text, native_expected="ordinary")


@pytest.mark.fuzz  # a tier: ./test.sh --fast skips it
@EXAMPLES
@given(st.one_of(salted_documents(), mangled_documents()))
def test_a_malformed_project_is_handed_off_or_read_as_python_reads_it(selftest, workdir, text):
    directory = os.path.join(workdir, "project")
    os.makedirs(directory, exist_ok=True)
    check_project(selftest, directory, text, native_expected="ordinary")


@pytest.mark.fuzz  # a tier: ./test.sh --fast skips it
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200).map(lambda b: b"[tool.pyrust]\n" + b))
def test_any_bytes_are_handed_off_or_read_as_python_reads_them(selftest, workdir, data):
    directory = os.path.join(workdir, "bytes")
    os.makedirs(directory, exist_ok=True)
    check_project(selftest, directory, data)


REALISTIC = {
    "a package with its tools": '''\
[build-system]
requires = ["setuptools>=61", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "example"
version = "1.2.3"
description = """A "quoted" description
[tool.pyrust]
that spans lines."""
readme = {file = "README.md", content-type = "text/markdown"}
authors = [
    {name = "A. Person", email = "a@example.org"},
    {name = 'B. \\Person'},
]
license = {text = "MIT"}
requires-python = ">=3.9"
dependencies = [
    "numpy>=1.24",  # arrays
    "pandas >= 2; python_version >= '3.10'",
    'pyrust',
]
classifiers = ["Programming Language :: Python :: 3",
               "License :: OSI Approved :: MIT License"]

[project.optional-dependencies]
test = ["pytest>=7", "hypothesis"]

[project.scripts]
example = "example.cli:main"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pyrust]
python = ".venv"          # the project's venv
preload = [
    "numpy",
    "pandas",             # heavy
    "example.models",
]
echo = false

[tool.black]
line-length = 99
target-version = ['py39', 'py310']
extend-exclude = \'\'\'
/(
  \\.eggs
)/
\'\'\'

[tool.ruff.lint]
select = ["E", "F", "I"]
ignore = []
per-file-ignores = {"tests/*" = ["E501"]}

[tool.pytest.ini_options]
addopts = "-q --strict-markers"
timeout = 30
ratio = 0.5
when = 1979-05-27T07:32:00Z

[[tool.cibuildwheel.overrides]]
select = "cp3*"
inherit.environment = "append"
''',
    "a poetry project": '''\
[tool.poetry]
name = "poetry-demo"
version = "0.1.0"
authors = ["Someone <someone@example.org>"]

[tool.poetry.dependencies]
python = "^3.9"
requests = {version = "^2.31", extras = ["socks"]}

[tool.pyrust]
preload = ["requests", "json"]

[build-system]
requires = ["poetry-core"]
build-backend = "poetry.core.masonry.api"
''',
    "a minimal table, CRLF": '[project]\r\nname = "crlf"\r\n[tool.pyrust]\r\necho = true\r\n',
    "the table first, no final line break": "[tool.pyrust]\npython = '/opt/venv'",
    "only the header": "[tool.pyrust]\n",
    "python with ~": '[tool.pyrust]\npython = "~/venvs/app"\n',
    "no table, the header in a comment": "# [tool.pyrust]\n[project]\nname = 'x'\n",
    "no table, the header in a multi-line string": 'x = """\n[tool.pyrust]\n"""\n',
}


@pytest.mark.parametrize("text", REALISTIC.values(), ids=list(REALISTIC))
def test_realistic_projects_are_read_natively(selftest, workdir, text):
    directory = os.path.join(workdir, "realistic")
    os.makedirs(directory, exist_ok=True)
    check_project(selftest, directory, text, native_expected=True)


def test_the_first_realistic_project_in_full(selftest, workdir):
    directory = os.path.join(workdir, "full")
    os.makedirs(directory, exist_ok=True)
    write(os.path.join(directory, "pyproject.toml"), REALISTIC["a package with its tools"])
    assert selftest.ask("project", directory) == {
        "status": "ok", "path": os.path.join(directory, "pyproject.toml"), "python": ".venv",
        "preload_set": True, "preload": ["numpy", "pandas", "example.models"], "echo": 0}


HANDED_OFF = {
    "python not a string": "[tool.pyrust]\npython = true\n",
    "python empty": '[tool.pyrust]\npython = ""\n',
    "preload a string": '[tool.pyrust]\npreload = "numpy"\n',
    "preload not a module": '[tool.pyrust]\npreload = ["numpy-x"]\n',
    "preload an empty name": '[tool.pyrust]\npreload = [""]\n',
    "preload a digit first": '[tool.pyrust]\npreload = ["json", "a.1b"]\n',
    "preload an empty part": '[tool.pyrust]\npreload = ["a..b"]\n',
    "preload non-ASCII (python's isidentifier takes it)": '[tool.pyrust]\npreload = ["é"]\n',
    "echo a string": '[tool.pyrust]\necho = "yes"\n',
    "a number": "[tool.pyrust]\necho = 1\n",
    "an unknown key": "[tool.pyrust]\nfoo = 1\n",
    "a subtable": "[tool.pyrust]\n[tool.pyrust.x]\n",
    "not UTF-8": b'[tool.pyrust]\npython = "\xff"\n',
    "a surrogate": b'[tool.pyrust]\npython = "\xed\xa0\x80"\n',
    "an overlong form": b'[tool.pyrust]\npython = "\xc0\xaf"\n',
    "a NUL in the table": b'[tool.pyrust]\npython = "a\x00b"\n',
}


@pytest.mark.parametrize("text", HANDED_OFF.values(), ids=list(HANDED_OFF))
def test_what_python_refuses_or_reads_with_tomllib_is_handed_off(selftest, workdir, text):
    directory = os.path.join(workdir, "handed")
    os.makedirs(directory, exist_ok=True)
    assert check_project(selftest, directory, text) == HAND_OFF


def test_the_nearest_pyproject_upwards(selftest, tmp_path):
    root = tmp_path / "root"
    deep = root / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (root / "pyproject.toml").write_text('[tool.pyrust]\npreload = ["json"]\n')
    (root / "a" / "b" / "pyproject.toml").mkdir()  # a directory: not a file, go on up
    for cwd in (deep, root / "a", root, str(deep) + "/", str(root) + "//a/./b"):
        answer = selftest.ask("project", str(cwd))
        assert answer["path"] == os.path.join(str(root), "pyproject.toml")
        assert native_project(answer) == python_project(str(cwd))
    (root / "a" / "pyproject.toml").write_text("[project]\nname = 'x'\n")  # nearer, no table
    assert selftest.ask("project", str(deep))["path"] is None
    assert python_project(str(deep)) is None
    (root / "a" / "pyproject.toml").unlink()
    (root / "a" / "pyproject.toml").symlink_to(root / "pyproject.toml")
    answer = selftest.ask("project", str(deep))
    assert answer["path"] == os.path.join(str(root), "a", "pyproject.toml")
    assert native_project(answer) == python_project(str(deep))


def test_no_cwd_or_no_file_is_no_project(selftest, binary, tmp_path):
    empty = {"status": "ok", "path": None, "python": None, "preload_set": False, "preload": [],
             "echo": -1}
    assert run(binary, "project") == empty  # the cwd is gone: NULL
    assert selftest.ask("project", "") == empty
    assert python_project(None) is None and python_project("") is None
    (tmp_path / "a").mkdir()
    if not os.path.exists("/pyproject.toml"):
        assert selftest.ask("project", str(tmp_path / "a")) == empty
        assert selftest.ask("project", "/") == empty
    relative = selftest.ask("project", "relative/dir")  # from this process's cwd, as python
    assert native_project(relative) == python_project("relative/dir")


def test_a_relative_cwd_ends_in_the_process_cwd(binary, tmp_path, monkeypatch):
    """dirname("a") is "": the last candidate is "pyproject.toml", as python's."""
    (tmp_path / "pyproject.toml").write_text("[tool.pyrust]\necho = false\n")
    monkeypatch.chdir(tmp_path)
    result = subprocess.run([binary, "project", "a/b"], capture_output=True, cwd=str(tmp_path),
                            env=environment(), timeout=TIMEOUT)
    answer = json.loads(result.stdout)
    assert (answer["path"], answer["echo"]) == ("pyproject.toml", 0)
    assert native_project(answer) == python_project("a/b")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_pyproject_is_handed_off(selftest, tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.pyrust]\n")
    path.chmod(0)
    assert selftest.ask("project", str(tmp_path))["status"] == HAND_OFF
    assert python_project(str(tmp_path)) == "ConfigError"


def test_a_huge_pyproject_is_handed_off_without_the_marker_only_if_huge(selftest, tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_bytes(b"# " + b"x" * (17 << 20) + b"\n[tool.pyrust]\n")
    assert selftest.ask("project", str(tmp_path))["status"] == HAND_OFF
    path.write_bytes(b'x = """' + b"\\" * (4 << 20) + b'"""\n[tool.pyrust]\necho = false\n')
    assert selftest.ask("project", str(tmp_path))["echo"] == 0  # and in linear time


# --- read_config against config.load_config ------------------------------------------
def python_config(path):
    """What load_config gives: the five fields the client uses, or "ConfigError"."""
    try:
        found = pyconfig.load_config(path)
    except ConfigError:
        return "ConfigError"
    return {"socket": found.socket, "python": found.python, "preload": found.preload,
            "echo": found.echo, "autostart": found.autostart}


def native_config(answer):
    if answer["status"] != "ok":
        return answer["status"]
    return {key: answer[key] for key in ("socket", "python", "echo", "autostart")} | {
        "preload": answer["preload"]}


def boundaries(low, high, integral):
    """Numbers (as TOML text) at and around a range's ends."""
    values = {"0", "-1", "1", str(int(high)), str(int(high) + 1), "99999999999999999999999",
              "-99999999999999999999999"}
    if low:
        values |= {repr(low) if not integral else str(int(low)),
                   str(int(low) - 1) if integral else "0.0009999"}
    if not integral:
        values |= {"0.5", "1e3", "1E-3", "-0.0", "3.0e7", "31536000.0", "31536000.5", "1e400",
                   "1e-400", "2_000.000_1", "+1.5"}
    else:
        values |= {"1_0", "+2", "-0", "2.0", "1e2"}
    return sorted(values)


def value_pool(check):
    """TOML texts of values setting ``check`` accepts and refuses."""
    common = ["true", "false", '"x"', "[]"]
    kind = check.kind
    if kind in ("seconds", "count", "bytes"):
        return common + boundaries(check.low, check.high, kind != "seconds")
    if kind in ("socket", "python"):
        return common + ['"/tmp/pyrust.sock"', "'/tmp/lit.sock'", '"~/s.sock"', '"~"',
                         '"~root/x.sock"', '"~no-such-user-pyrust/x"', '"relative.sock"', '""',
                         '"/%s"' % ("a" * 106), '"/%s"' % ("a" * 107), '"/é%s"' % ("a" * 104),
                         '"/tab\there"', '"~/%s"' % ("b" * 100), "'/usr/bin/python3'"]
    if kind == "modules":
        return common + ['["json", "os.path"]', "['a_b', \"_c1\"]", '["json",]', '["1a"]',
                         '["a..b"]', '["a."]', '[""]', '["a-b"]', '["numpy"  , # c\n  "x"\n]',
                         '"json"', '[\n]', '[ "a" ]']
    if kind == "boolean":
        return common
    if kind == "log_level":
        return common + ['"debug"', "'info'", '"warning"', '"error"', '"DEBUG"', '"trace"']
    raise AssertionError(kind)


FIELDS = {f.name: f.metadata["check"] for f in dataclasses.fields(pyconfig.Config)}
WS = st.sampled_from(["", " ", "\t", "  "])
COMMENT = st.sampled_from(["", " # comment", "# ünïcode", "#", " #\t[x] = 'y'"])


def accepted(key: str, value: str) -> bool:
    """Whether check_setting accepts ``value`` (TOML text) for ``key``."""
    try:
        pyconfig.check_setting(key, tomllib.loads("v = " + value)["v"], "test")
    except ConfigError:
        return False
    return True


def valid_pool(key: str) -> list:
    return [value for value in value_pool(FIELDS[key]) if accepted(key, value)]


@st.composite
def config_lines(draw, valid=False):
    """Return a config document of plain lines: key = value, comments, blank lines;
    valid: only values check_setting accepts."""
    keys = draw(st.lists(st.sampled_from(sorted(FIELDS)), unique=True, max_size=6))
    lines = []
    for key in keys:
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["", "# a comment", "   ", "\t# x"])))
        value = draw(st.sampled_from(valid_pool(key) if valid else value_pool(FIELDS[key])))
        lines.append(draw(WS) + key + draw(WS) + "=" + draw(WS) + value + draw(WS) + draw(COMMENT))
    end = draw(st.sampled_from(["\n", "", "\n\n", "\n# end"]))
    newline = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    return newline.join(lines) + end


SALT = ["[section]", "a.b = 1", '"workers" = 1', "workers = 0x10", "workers = 0o7",
        "workers = 0b1", "kill_grace = inf", "kill_grace = nan", "kill_grace = +inf",
        "idle_exit = 1979-05-27", 'socket = "\\u002ftmp/x"', 'socket = """/tmp/x"""',
        "socket = '''/tmp/x'''", 'python = {path = "/x"}', "unknown_key = 1", "workers = 01",
        "workers = 1__0", "workers = 1_", "kill_grace = 1.", "kill_grace = .5",
        "kill_grace = 1e", "echo = True", "echo = truex", "echo = true false", "workers =",
        "= 1", "\ufeffecho = true", 'preload = ["é"]', 'preload = ["a", 1]', "preload = [[]]",
        'preload = ["a" "b"]', 'preload = ["a",,]', "preload = [,]", 'preload = ["a"',
        "echo = true\x01", "# \x7f", "echo = true\recho = false", 'socket = "/a\x00b"',
        "workers = 2\nworkers = 2", "max_workers = 1", "max_workers = 512\nworkers = 1",
        "[[x]]", "workers = 1 # ok\n  [x]"]


@st.composite
def salted_configs(draw):
    text = draw(config_lines())
    lines = text.split("\n")
    for salt in draw(st.lists(st.sampled_from(SALT), min_size=1, max_size=2)):
        lines.insert(draw(st.integers(0, len(lines))), salt)
    return "\n".join(lines)


def check_config(selftest, workdir, text, plain=False):
    """read_config hands off, or agrees with load_config; plain: it must not hand off
    what load_config accepts, and must hand off what it refuses."""
    path = write(os.path.join(workdir, "config.toml"), text)
    got = native_config(selftest.ask("config", path, "explicit"))
    expected = python_config(path)
    if got != HAND_OFF:
        assert got == expected
    else:
        assert not plain or expected == "ConfigError", expected
    tally(got, expected)
    return got, expected


@pytest.mark.fuzz  # a tier: ./test.sh --fast skips it
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(config_lines(), config_lines(valid=True)))
def test_a_plain_config_is_read_as_load_config_reads_it(selftest, workdir, text):
    check_config(selftest, workdir, text, plain=True)


@pytest.mark.parametrize("key", sorted(FIELDS))
def test_every_value_of_every_setting(selftest, workdir, key):
    """Each setting's pool, alone: accepted natively exactly where python accepts."""
    outcomes = set()
    for value in value_pool(FIELDS[key]):
        got, expected = check_config(selftest, workdir, "%s = %s\n" % (key, value), plain=True)
        outcomes.add(got == HAND_OFF)
    assert outcomes == {True, False}  # each pool holds both


@pytest.mark.fuzz  # a tier: ./test.sh --fast skips it
@EXAMPLES
@given(salted_configs())
def test_a_salted_config_is_handed_off_or_read_as_load_config_reads_it(selftest, workdir, text):
    check_config(selftest, workdir, text)


@pytest.mark.fuzz  # a tier: ./test.sh --fast skips it
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=120),
                 st.tuples(config_lines(), st.binary(max_size=8), st.integers(0, 200)).map(
                     lambda t: t[0].encode()[:t[2]] + t[1] + t[0].encode()[t[2]:])))
def test_any_bytes_are_handed_off_or_read_as_load_config_reads_them(selftest, workdir, data):
    check_config(selftest, workdir, data)


def test_a_full_config(selftest, workdir):
    text = """\
# pyrust configuration
socket = "/tmp/pyrust-test/pyrust.sock"
workers = 2
max_workers = 8
preload = [
    "json",        # cheap
    "os.path",
    'collections.abc',
]
max_request_bytes = 10_485_760
max_reply_bytes = 67108864
request_timeout = 30
kill_grace = 5.0
max_worker_rss = 0
max_worker_memory = 1073741824
idle_timeout = 6e1
compile_cache_size = 256
graceful_timeout = 30.5
idle_exit = 0
autostart = false
log_level = "warning"
python = "~/venvs/default"
echo = false
template_idle_exit = 600
max_templates = 8
"""
    path = write(os.path.join(workdir, "full.toml"), text)
    assert selftest.ask("config", path) == {
        "status": "ok", "socket": "/tmp/pyrust-test/pyrust.sock", "python": "~/venvs/default",
        "preload": ["json", "os.path", "collections.abc"], "echo": False, "autostart": False}
    assert native_config(selftest.ask("config", path)) == python_config(path)


def test_an_empty_config_is_all_defaults(selftest, workdir):
    for text in ("", "\n", "# only a comment", "  \n\t\n"):
        path = write(os.path.join(workdir, "empty.toml"), text)
        assert selftest.ask("config", path, "explicit") == {
            "status": "ok", "socket": None, "python": None, "preload": [], "echo": True,
            "autostart": True}
        assert python_config(path) == native_config(selftest.ask("config", path))


def test_a_missing_config(selftest, workdir):
    missing = os.path.join(workdir, "no-such-config.toml")
    assert selftest.ask("config", missing)["status"] == "absent"  # the default file: defaults
    assert selftest.ask("config", missing, "explicit")["status"] == HAND_OFF  # --config: error
    assert python_config(missing) == "ConfigError"
    not_a_directory = os.path.join(write(os.path.join(workdir, "file"), ""), "config.toml")
    assert selftest.ask("config", not_a_directory)["status"] == HAND_OFF  # python: an error
    assert selftest.ask("config", workdir)["status"] == HAND_OFF  # a directory
    assert selftest.ask("config", "", "explicit")["status"] == HAND_OFF
    assert selftest.ask("config", "")["status"] == "absent"


def test_the_workers_cross_check_uses_the_cpu_count(selftest, workdir):
    cpus = min(os.cpu_count() or 1, pyconfig.MAX_WORKERS)
    for text in ("max_workers = %d\n" % cpus, "max_workers = %d\n" % (cpus - 1),
                 "workers = 3\nmax_workers = 2\n", "max_workers = 2\nworkers = 2\n"):
        got, expected = check_config(selftest, workdir, text, plain=True)
        assert (got == HAND_OFF) == (expected == "ConfigError")


def test_socket_length_counts_home_bytes(binary, tmp_path, monkeypatch):
    """"~/..." is measured after expansion, in bytes."""
    home = "/" + "h" * 50
    monkeypatch.setenv("HOME", home)
    for length in (55, 56, 57):
        text = 'socket = "~/%s"\n' % ("s" * length)
        path = write(str(tmp_path / "c.toml"), text)
        got = native_config(run(binary, "config", path, HOME=home))
        expected = python_config(path)
        assert got == (HAND_OFF if expected == "ConfigError" else expected)
        assert (got == HAND_OFF) == (len(home) + 1 + length > pyconfig.MAX_SOCKET_PATH)


# --- expand_user against os.path.expanduser -------------------------------------------
PATHS = ["~", "~/", "~/x", "~//x/", "~root", "~root/", "~root/.config", "~no-such-user-pyrust",
         "~no-such-user-pyrust/x", "x/~", "", "/~", "~~", "~ /x", "~.", "~/~"]


@pytest.mark.parametrize("home", ["/home/someone", "/home/slash//", "/", "", "rel/home",
                                  "/h\u00e9/x", None],
                         ids=["set", "trailing slashes", "root", "empty", "relative",
                              "non-ASCII", "unset"])
def test_expand_user_is_expanduser(binary, home, monkeypatch):
    if home is None:
        monkeypatch.delenv("HOME", raising=False)
    else:
        monkeypatch.setenv("HOME", home)
    result = subprocess.run([binary], input="".join("expand\t%s\n" % p for p in PATHS).encode(),
                            capture_output=True, env=environment(HOME=home), timeout=TIMEOUT)
    assert (result.returncode, result.stderr) == (0, b"")
    got = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert got == [os.path.expanduser(p) for p in PATHS]


# --- interpreter_path against project.interpreter_path ---------------------------------
PART = st.sampled_from(["a", "..", ".", "", "venv", "bin", "~", "~root", "b c", "\u00e9", "..."])


@st.composite
def interpreter_values(draw, base):
    """Return (value, base): a path of parts and slashes, against a base directory."""
    parts = draw(st.lists(PART, max_size=6))
    value = draw(st.sampled_from(["", "/", "//", "///"])) + "/".join(parts)
    return value, draw(st.sampled_from([base, base + "/", base + "//sub/..", "/", "//", "///x",
                                        "/a/b/../c", "", "rel/dir"]))


@pytest.fixture(scope="module")
def venvs(tmp_path_factory):
    """A directory where some of the generated paths are directories (venvs)."""
    base = tmp_path_factory.mktemp("venvs")
    for name in ("venv", "a/venv", "a", "\u00e9"):
        (base / name).mkdir(parents=True, exist_ok=True)
    return str(base)


def test_interpreter_path_is_pythons(selftest, venvs):
    @settings(max_examples=300, deadline=None)
    @given(interpreter_values(venvs))
    def check(case):
        value, base = case
        assert selftest.ask("interpreter", value, base) == project.interpreter_path(value, base)
    check()


@pytest.mark.parametrize("value", ["", ".", "..", "/..", "//..", "///..", "//a//b/", "a/../..",
                                   "../../x", "/./a/./", "~", "~/..", "~root/../x", "a/..//.."])
@pytest.mark.parametrize("base", ["/", "", "/p/q", "rel"])
def test_interpreter_path_corner_cases(selftest, value, base):
    assert selftest.ask("interpreter", value, base) == project.interpreter_path(value, base)


@pytest.mark.parametrize("home", ["/h\u00e9", "/home/x", "relative", ""])
def test_a_python_under_home(binary, tmp_path, monkeypatch, home):
    """python = "~/...": absolute after expansion, whatever the home's characters."""
    monkeypatch.setenv("HOME", home)
    path = write(str(tmp_path / "c.toml"), 'python = "~/venv"\n')
    got = native_config(run(binary, "config", path, HOME=home))
    assert got == (HAND_OFF if python_config(path) == "ConfigError" else python_config(path))
    assert (got == HAND_OFF) == (home == "relative")  # "" + "/venv" is absolute
