"""python's command line as pyrust reads it (pyrust/pyoptions.py), checked against
every CPython 3.9-3.13 this machine has; where a run's interpreter comes from
(pyrust/project.py); which PYTHON* variables join an environment's key."""

import os
import subprocess
import sys

import pytest

from conftest import TIMEOUT, cpython_interpreters, pyrust_env
from pyrust import environment, project, pyoptions
from pyrust.errors import ConfigError

pytestmark = pytest.mark.differential  # a tier: ./test.sh --fast skips it

OWN = ("--socket", "--config", "--python")
FLAGS = ("--daemon", "--stop-daemon")


# No pyenv: at least the interpreter running the tests.
INTERPRETERS = cpython_interpreters() or [os.path.realpath(sys.executable)]


def version_of(python: str) -> tuple:
    name = os.path.basename(python)
    if name.startswith("python3."):
        return (3, int(name[8:]))
    return sys.version_info[:2]


# --- the grammar as data ----------------------------------------------------
# (argv, what the parse gives: form, source, args, startup, pyopt)
RUNS = [
    (["-c", "pass"], "c", "pass", [], [], []),
    (["-cpass", "a", "-u"], "c", "pass", ["a", "-u"], [], []),
    (["-uBc", "pass", "x"], "c", "pass", ["x"], [], ["-u", "-B"]),
    (["-uBcpass"], "c", "pass", [], [], ["-u", "-B"]),
    (["-u", "-u", "-c", "pass"], "c", "pass", [], [], ["-u"]),
    (["-Wd", "-W", "error", "-W", "ignore::DeprecationWarning", "-c", "pass"], "c", "pass", [],
     [], ["-Wd", "-Werror", "-Wignore::DeprecationWarning"]),
    (["-uWerror", "-c", "pass"], "c", "pass", [], [], ["-u", "-Werror"]),
    (["-q", "-i", "-c", "pass"], "c", "pass", [], [], ["-q", "-i"]),
    (["-O", "-c", "pass"], "c", "pass", [], ["-O"], []),
    (["-OO", "-c", "pass"], "c", "pass", [], ["-OO"], []),
    (["-O", "-O", "-c", "pass"], "c", "pass", [], ["-OO"], []),
    (["-vv", "-bb", "-c", "pass"], "c", "pass", [], ["-bb", "-vv"], []),
    (["-R", "-v", "-d", "-b", "-S", "-s", "-O", "-E", "-c", "pass"], "c", "pass", [],
     ["-E", "-O", "-s", "-S", "-b", "-d", "-v", "-R"], []),
    (["-I", "-E", "-s", "-c", "pass"], "c", "pass", [], ["-I"], []),
    (["-EsI", "-c", "pass"], "c", "pass", [], ["-I"], []),
    (["-Xdev", "-X", "utf8", "-X", "importtime", "-X", "dev", "-c", "pass"], "c", "pass", [],
     ["-Xdev", "-Xutf8", "-Ximporttime"], []),
    (["-X", "utf8=0", "-Xint_max_str_digits=0", "-Xint_max_str_digits=4300", "-c", "pass"],
     "c", "pass", [], ["-Xutf8=0", "-Xint_max_str_digits=0", "-Xint_max_str_digits=4300"], []),
    (["-Xfaulthandler", "-Xtracemalloc", "-Xtracemalloc=5", "-Xno_such_option=1", "-c", "pass"],
     "c", "pass", [], ["-Xfaulthandler", "-Xtracemalloc", "-Xtracemalloc=5",
                       "-Xno_such_option=1"], []),
    (["-X", "frozen_modules=off", "-X", "warn_default_encoding", "-c", "pass"], "c", "pass", [],
     ["-Xfrozen_modules=off", "-Xwarn_default_encoding"], []),
    (["--check-hash-based-pycs", "always", "-O", "-c", "pass"], "c", "pass", [],
     ["-O", "--check-hash-based-pycs=always"], []),
    (["--check-hash-based-pycs", "never", "--check-hash-based-pycs", "default", "-c", "pass"],
     "c", "pass", [], ["--check-hash-based-pycs=default"], []),
    (["-t", "-c", "pass"], "c", "pass", [], [], []),  # accepted and ignored by 3.9-3.13
    (["-m", "json.tool", "-h"], "m", "json.tool", ["-h"], [], []),
    (["-umjson.tool"], "m", "json.tool", [], [], ["-u"]),
    (["script.py", "-c", "x"], "f", "script.py", ["-c", "x"], [], []),
    (["-u", "--", "-c", "x"], "f", "-c", ["x"], [], ["-u"]),
    (["--", "-", "a"], "-", "-", ["a"], [], []),
    (["-", "-u"], "-", "-", ["-u"], [], []),
    (["-B"], None, None, [], [], ["-B"]),
    ([], None, None, [], [], []),
    (["--"], None, None, [], [], []),
]


@pytest.mark.parametrize("argv, form, source, args, startup, pyopt", RUNS, ids=repr)
def test_a_run_is_classified(argv, form, source, args, startup, pyopt):
    line = pyoptions.parse(argv, OWN, FLAGS)
    assert (line.form, line.source, line.args) == (form, source, args)
    assert (line.startup, line.pyopt) == (startup, pyopt)
    assert (line.fallback, line.help, line.flag, line.own) == (None, False, None, {})
    assert line.python_args == argv


# (argv, why python itself runs it)
FALLBACKS = [
    (["-V"], "-V"), (["-VV"], "-V"), (["--version"], "--version"), (["-uV", "-c", "1"], "-V"),
    (["-x", "script.py"], "-x"), (["-Z"], "unknown option -Z"), (["-J"], "unknown option -J"),
    (["-uZc", "pass"], "unknown option -Z"), (["-b-help-env"], "unknown option --"),
    (["--help-env"], "--help-env"), (["--help-xoptions"], "--help-xoptions"),
    (["--help-all"], "--help-all"), (["--bogus", "-c", "1"], "--bogus"),
    (["--check-hash-based-pycs=always", "-c", "1"], "--check-hash-based-pycs=always"),
    (["--check-hash-based-pycs", "sometimes"], "--check-hash-based-pycs needs default, "
                                                "always or never"),
    (["--check-hash-based-pycs"], "--check-hash-based-pycs needs default, always or never"),
    (["-c"], "-c needs an argument"), (["-u", "-m"], "-m needs an argument"),
    (["-W"], "-W needs an argument"), (["-X"], "-X needs an argument"),
    (["-Xutf8=2", "-c", "1"], "-X utf8=2 (python checks that value)"),
    (["-Xint_max_str_digits=5", "-c", "1"], "-X int_max_str_digits=5 (python checks that value)"),
    (["-Xint_max_str_digits", "-c", "1"], "-X int_max_str_digits (python checks that value)"),
    (["-Xtracemalloc=x", "-c", "1"], "-X tracemalloc=x (python checks that value)"),
    (["-Xfrozen_modules=maybe", "-c", "1"],
     "-X frozen_modules=maybe (python checks that value)"),
    (["-Xcpu_count=0", "-c", "1"], "-X cpu_count=0 (python checks that value)"),
    (["-Xgil=0", "-c", "1"], "-X gil=0 (python checks that value)"),
]


@pytest.mark.parametrize("argv, why", FALLBACKS, ids=repr)
def test_what_python_must_do_itself_is_left_to_it(argv, why):
    line = pyoptions.parse(argv, OWN, FLAGS)
    assert line.fallback == why
    assert line.python_args == argv


@pytest.mark.parametrize("argv", [["-h"], ["-?"], ["--help"], ["-uh", "-Z"], ["-h", "-c", "1"],
                                  ["-V", "-h"]], ids=repr)
def test_help_is_pyruts_own(argv):
    assert pyoptions.parse(argv, OWN, FLAGS).help


def test_pyrusts_own_options_come_anywhere_before_the_program():
    line = pyoptions.parse(["-u", "--socket", "/s", "-O", "--python=/py", "-c", "1",
                            "--config", "x"], OWN, FLAGS)
    assert line.own == {"--socket": "/s", "--python": "/py"}
    assert (line.startup, line.pyopt, line.args) == (["-O"], ["-u"], ["--config", "x"])
    assert line.python_args == ["-u", "-O", "-c", "1", "--config", "x"]
    assert line.options == ["-u", "-O", "-c"]
    missing = pyoptions.parse(["-u", "--socket"], OWN, FLAGS)
    assert missing.own == {"--socket": None}
    flagged = pyoptions.parse(["--socket=/s", "--daemon", "x"], OWN, FLAGS)
    assert (flagged.flag, flagged.args, flagged.own) == ("--daemon", ["x"], {"--socket": "/s"})
    # A fallback that python reads past keeps reading pyrust's options.
    deferred = pyoptions.parse(["-V", "--python", "/py"], OWN, FLAGS)
    assert (deferred.fallback, deferred.own, deferred.python_args) == ("-V", {"--python": "/py"},
                                                                       ["-V"])


# --- the grammar against the real interpreters --------------------------------
PROBE = ("import sys; f = sys.flags; print(repr((sys.argv, sys.warnoptions, "
         "sorted(sys._xoptions.items()), f.optimize, f.verbose, f.bytes_warning, f.debug, "
         "f.isolated, f.ignore_environment, f.no_user_site, f.no_site, f.dont_write_bytecode, "
         "f.quiet, f.inspect, getattr(f, 'safe_path', None))))")


def expected_flags(line, version) -> tuple:
    """Return what PROBE prints when python runs the command line ``line`` parsed."""
    counts = {letter: 0 for letter in "ObdvIEsSBqiP"}
    for option in line.startup + line.pyopt:
        if option[:2] not in ("-W", "-X", "--"):
            counts[option[1]] = len(option) - 1
    if counts["I"]:
        counts["E"] = counts["s"] = 1
    xoptions = {}
    for option in line.startup:
        if option.startswith("-X"):
            name, eq, value = option[2:].partition("=")
            xoptions[name] = value if eq else True
    # sys.warnoptions: -X dev's "default" first, then -W's, then -b's (lowest to highest).
    warnings = ["default"] if "dev" in xoptions else []
    warnings += [option[2:] for option in line.pyopt if option.startswith("-W")]
    if counts["b"]:
        warnings.append("error::BytesWarning" if counts["b"] > 1 else "default::BytesWarning")
    safe_path = None if version < (3, 11) else bool(counts["P"] or counts["I"])
    return (["-c"] + line.args, warnings, sorted(xoptions.items()), counts["O"], counts["v"],
            counts["b"], counts["d"], counts["I"], counts["E"], counts["s"], counts["S"],
            counts["B"], counts["q"], counts["i"], safe_path)


# -v makes python noisy on stderr, -S removes site: both are harmless here.
PROBED = [argv for argv, form, *_ in RUNS if form == "c"] + [
    ["-P", "-c", "pass", "a"], ["-IP", "-c", "pass"], ["-Xdev", "-Werror", "-c", "pass"],
]


@pytest.mark.parametrize("python", INTERPRETERS)
def test_python_reads_every_run_as_pyrust_does(python, tmp_path):
    version = version_of(python)
    for argv in PROBED:
        if "P" in argv[0] and version < (3, 11):
            continue  # -P is 3.11's (the executor answers for older ones)
        argv = [a[:-4] + PROBE if a.endswith("pass") else a for a in argv]
        line = pyoptions.parse(argv, OWN, FLAGS)
        assert line.fallback is None, argv
        result = subprocess.run([python, *argv], capture_output=True, timeout=TIMEOUT,
                                stdin=subprocess.DEVNULL, cwd=str(tmp_path),
                                env={"PATH": os.environ["PATH"]})
        assert result.returncode == 0, (argv, result.stderr[-2000:])
        last = result.stdout.decode().strip().splitlines()[-1]
        assert eval(last) == expected_flags(line, version), argv


@pytest.mark.parametrize("python", INTERPRETERS)
def test_a_fallback_is_exactly_python(python, tmp_path):
    """pyrust execs the interpreter: the same output, errors and exit status."""
    (tmp_path / "script.py").write_text("#!skipped by -x\nprint('ran')\n")
    env = pyrust_env(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"))
    env.pop("VIRTUAL_ENV", None)
    for argv, _ in FALLBACKS:
        own = subprocess.run([sys.executable, "-m", "pyrust", "--python", python, *argv],
                             capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                             cwd=str(tmp_path), env=env)
        real = subprocess.run([python, *argv], capture_output=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL, cwd=str(tmp_path), env=env)
        assert (own.returncode, own.stdout, own.stderr) == \
            (real.returncode, real.stdout, real.stderr), argv


@pytest.mark.parametrize("python", INTERPRETERS)
def test_python_refuses_what_pyrust_calls_an_error(python, tmp_path):
    """The options that stop the parse are errors (or help) to python too."""
    for argv, why in FALLBACKS:
        line = pyoptions.parse(argv, OWN, FLAGS)
        if line.fallback in ("-V", "--version", "-x") or why.startswith("--help-"):
            continue
        if why == "unknown option --" and version_of(python) >= (3, 11):
            continue  # a long option inside a group: 3.11's --help-env
        result = subprocess.run([python, *argv], capture_output=True, timeout=TIMEOUT,
                                stdin=subprocess.DEVNULL, cwd=str(tmp_path),
                                env={"PATH": os.environ["PATH"]})
        accepted_before = {"-Xfrozen_modules=maybe": (3, 11), "-Xcpu_count=0": (3, 13),
                           "-Xgil=0": (3, 13)}
        if version_of(python) < accepted_before.get(argv[0], (0,)):
            continue  # that python does not know the option yet: any value goes
        assert result.returncode != 0, (argv, result.stderr)


# --- which PYTHON* variables join the key ------------------------------------

def test_start_up_variables_join_the_key_sorted_after_the_options():
    environ = {"PYTHONPATH": "/p", "PYTHONWARNINGS": "error", "PYTHONHASHSEED": "0",
               "PYTHONDEVMODE": "1", "PYTHON_GIL": "1", "PYTHONUNBUFFERED": "1",
               "PYTHONSTARTUP": "s.py", "PYTHON_COLORS": "0", "PYTHONOPTIMIZE": "",
               "PATH": "/bin", "MYPYTHONX": "1", "PYTHONSAFEPATH": "1"}
    assert environment.startup_items(["-O", "-Xdev"], environ) == [
        "-O", "-Xdev", "PYTHONDEVMODE=1", "PYTHONHASHSEED=0", "PYTHONSAFEPATH=1", "PYTHON_GIL=1"]
    assert environment.startup_items(["-E"], environ) == ["-E"]
    assert environment.startup_items(["-I", "-O"], environ) == ["-I", "-O"]
    assert set(environment.PER_RUN_VARIABLES) == {
        "PYTHONPATH", "PYTHONWARNINGS", "PYTHONUNBUFFERED", "PYTHONIOENCODING",
        "PYTHONDONTWRITEBYTECODE", "PYTHONINSPECT", "PYTHONSTARTUP", "PYTHONBREAKPOINT",
        "PYTHON_COLORS", "PYTHON_HISTORY", "PYTHON_BASIC_REPL"}


# --- where the interpreter, preloads and echo come from ------------------------

class Config:
    """Stands for pyrust.config.Config: only the keys the choice reads."""

    def __init__(self, python=None, preload=(), echo=True) -> None:
        self.python, self.preload, self.echo = python, list(preload), echo


@pytest.fixture
def tree(tmp_path):
    """tmp/proj/pyproject.toml ([tool.pyrust]), tmp/proj/sub/deep, tmp/plain/pyproject.toml
    (no [tool.pyrust]) under tmp/proj, and venvs tmp/proj/.venv and tmp/other."""
    proj = tmp_path / "proj"
    (proj / "sub" / "deep").mkdir(parents=True)
    (proj / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / "other" / "bin").mkdir(parents=True)
    (proj / "pyproject.toml").write_text(
        '[project]\nname = "p"\n\n[tool.pyrust]\npython = ".venv"\n'
        'preload = ["json", "p.models"]\necho = false\n')
    (proj / "plain").mkdir()
    (proj / "plain" / "pyproject.toml").write_text('[project]\nname = "plain"\n')
    return tmp_path


def test_the_nearest_pyproject_is_found_upwards(tree):
    proj = tree / "proj"
    assert project.find_pyproject(str(proj / "sub" / "deep")) == str(proj / "pyproject.toml")
    assert project.find_pyproject(str(proj / "plain")) == str(proj / "plain" / "pyproject.toml")
    found = project.nearest_project(str(proj / "sub" / "deep"))
    assert (found.root, found.python, found.preload, found.echo) == (
        str(proj), str(proj / ".venv" / "bin" / "python"), ["json", "p.models"], False)
    # The nearest file is the project, even without [tool.pyrust]: nothing above it counts.
    assert project.nearest_project(str(proj / "plain")) is None
    assert project.nearest_project(None) is None


def test_a_file_that_only_mentions_the_table_is_not_a_project(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\ndescription = "see [tool.pyrust]"\n')
    assert project.nearest_project(str(tmp_path)) is None


@pytest.mark.parametrize("table, message", [
    ('python = 3', "key 'python': expected the path of a python executable or of a venv, got 3"),
    ('preload = "json"', "key 'preload': expected a list of module names"),
    ('preload = ["no-dash"]', "key 'preload': expected a list of module names"),
    ('echo = "no"', "key 'echo': expected true or false, got 'no'"),
    ('pyhton = "x"', "unknown key 'pyhton' (known keys: echo, preload, python)"),
])
def test_a_malformed_table_is_a_clear_error(tmp_path, table, message):
    (tmp_path / "pyproject.toml").write_text("[tool.pyrust]\n%s\n" % table)
    with pytest.raises(ConfigError) as error:
        project.nearest_project(str(tmp_path))
    assert str(error.value).startswith("%s: [tool.pyrust]" % (tmp_path / "pyproject.toml"))
    assert message in str(error.value)


def test_invalid_toml_names_the_file(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.pyrust]\npython = \n")
    with pytest.raises(ConfigError, match="pyproject.toml: not valid TOML"):
        project.nearest_project(str(tmp_path))


def choose(tree, cwd="proj/sub", cli=None, config=None, **environ):
    return project.choose(cli, config, str(tree / cwd), environ)


def test_the_interpreter_comes_from_the_first_source_that_names_one(tree):
    proj, other = tree / "proj", tree / "other"
    config = Config(python=str(other), preload=["csv"])
    venv_python = str(proj / ".venv" / "bin" / "python")
    # --python, else $PYRUST_PYTHON (relative to the cwd), else $VIRTUAL_ENV, else the
    # project's, else the config's, else the interpreter pyrust is installed with.
    assert choose(tree, cli="/usr/bin/python3", config=config, PYRUST_PYTHON="/x",
                  VIRTUAL_ENV="/venv").python == "/usr/bin/python3"
    assert choose(tree, config=config, PYRUST_PYTHON="../../other",
                  VIRTUAL_ENV="/venv").python == str(other / "bin" / "python")
    assert choose(tree, config=config, VIRTUAL_ENV="/venv/").python == "/venv/bin/python"
    assert choose(tree, config=config).python == venv_python
    assert choose(tree, cwd=".", config=config).python == str(other / "bin" / "python")
    assert choose(tree, cwd=".").python == environment.default_python()
    # A file is used as it is, symlinks kept (a venv's python is one).
    (other / "bin" / "python").symlink_to(sys.executable)
    assert choose(tree, cli=str(other / "bin" / "python")).python == \
        str(other / "bin" / "python")


def test_preloads_and_echo_come_from_the_project_then_the_config(tree):
    config = Config(preload=["csv"], echo=False)
    inside = choose(tree, config=config)
    assert (inside.preload, inside.root, inside.echo) == (
        ["json", "p.models"], str(tree / "proj"), False)
    outside = choose(tree, cwd=".", config=config)
    assert (outside.preload, outside.root, outside.echo, outside.project) == (
        ["csv"], "", False, None)
    default = choose(tree, cwd=".")
    assert (default.preload, default.root, default.echo) == ([], "", True)
    (tree / "proj" / "pyproject.toml").write_text("[tool.pyrust]\npreload = []\necho = true\n")
    emptied = choose(tree, config=config)
    assert (emptied.preload, emptied.root, emptied.echo) == ([], "", True)
    assert emptied.python == environment.default_python()


def test_the_default_interpreter_is_the_same_with_or_without_site(tmp_path):
    """The launcher runs the client with -IS, the service runs without: both must
    name the base interpreter of pyrust's venv, or the default environment splits."""
    base = INTERPRETERS[0]
    subprocess.run([base, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True,
                   timeout=TIMEOUT)
    code = ("import sys; sys.path.insert(0, %r)\nfrom pyrust.environment import default_python"
            "\nprint(default_python())" % os.path.dirname(os.path.dirname(project.__file__)))
    answers = {subprocess.run([str(tmp_path / "venv" / "bin" / "python"), *flags, "-c", code],
                              capture_output=True, check=True, timeout=TIMEOUT).stdout
               for flags in ([], ["-IS"], ["-S"])}
    assert answers == {os.fsencode(base) + b"\n"}
