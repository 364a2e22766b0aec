"""Which environment a run asks for: its interpreter, its preloads, its echo setting.

The interpreter is the one ``python`` would be for the user: ``--python PATH``
or ``$PYRUST_PYTHON``, else the active venv's (``$VIRTUAL_ENV/bin/python``),
else the project's, else the user configuration's, else the one pyrust is
installed with.  A directory stands for the venv it holds (``DIR/bin/python``).
Paths are made absolute but symlinks are kept: a venv's python is a symlink,
and python finds its venv by the path it was started by.

The project is the nearest ``pyproject.toml`` from the run's working
directory upwards.  Its ``[tool.pyrust]`` table may set ``python`` (relative
to the file's directory), ``preload`` (imported from the project's directory)
and ``echo``; each overrides the user configuration's key of the same name::

    [tool.pyrust]
    python = ".venv"
    preload = ["numpy", "myproject.models"]

The file is parsed only if its bytes contain ``[tool.pyrust]``, so a project
that does not use pyrust costs a file read, not a TOML parser.  Even then the
table is read by pyrust.minitoml, which imports nothing: ``tomllib`` costs
more start-up than the rest of a warm run.  Only a file that reader does not
read (a number, an escape, a subtable, ...) goes to the full parser, which
also gives the errors.
"""

import os
import sys

from pyrust.errors import ConfigError

# Typing-only imports: mypy takes any name TYPE_CHECKING as true, python never
# runs this block (the client's hot path imports no typing, nor the config).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable, Mapping, NoReturn

    from pyrust.config import Config

PYPROJECT = "pyproject.toml"
MARKER = b"[tool.pyrust]"


class Project:
    """A project's ``[tool.pyrust]`` settings: ``path`` (its pyproject.toml), ``root``
    (that file's directory), ``python`` (an absolute path, or None), ``preload``
    (module names, or None), ``echo`` (a bool, or None); None: not set there."""

    __slots__ = ("path", "root", "python", "preload", "echo")

    def __init__(self, path: str, python: "str | None" = None,
                 preload: "list[str] | None" = None, echo: "bool | None" = None) -> None:
        self.path, self.root = path, os.path.dirname(path)
        self.python, self.preload, self.echo = python, preload, echo


class Choice:
    """The environment a run asks for: ``python`` (absolute path), ``preload``
    (module names), ``root`` (the project directory preloads import from, or ""),
    ``echo`` (echo a final -c expression), ``project`` (the Project, or None)."""

    __slots__ = ("python", "preload", "root", "echo", "project")

    def __init__(self, python: str, preload: "Iterable[str]", root: str, echo: bool,
                 project: "Project | None") -> None:
        self.python, self.preload, self.root = python, list(preload), root
        self.echo, self.project = echo, project


def find_pyproject(start: str) -> "str | None":
    """Return the path of the nearest pyproject.toml in ``start`` (absolute) or
    above it, or None if there is none."""
    directory = start
    while True:
        candidate = os.path.join(directory, PYPROJECT)
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def load_project(path: str) -> "Project | None":
    """Return the Project of pyproject.toml ``path``, or None if it has no
    ``[tool.pyrust]`` table.

    Raise ConfigError, one line naming the file and the key, if the file cannot
    be read or parsed, or the table holds an unknown key or a bad value.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError("%s: cannot read: %s" % (path, exc.strerror)) from None
    if MARKER not in data:
        return None
    from pyrust import minitoml  # here: a file without the marker needs no reader

    try:
        table = minitoml.read(data.decode("utf-8"))
    except (UnicodeDecodeError, minitoml.Unsupported):
        table = _parse(path, data).get("tool", {}).get("pyrust")
    if table is None:  # the marker was in a string or a comment
        return None
    return _project(path, table)


def _parse(path: str, data: bytes) -> dict:
    """Return the TOML document ``data``; raise ConfigError if it is not TOML."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError("%s: reading [tool.pyrust] needs the tomli package on "
                              "python < 3.11" % path) from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("%s: not valid TOML: %s" % (path, exc)) from None


def _project(path: str, table: object) -> Project:
    """Return the Project ``table`` (the parsed ``[tool.pyrust]``) describes."""
    if not isinstance(table, dict):
        raise ConfigError("%s: [tool.pyrust] must be a table" % path)

    def bad(key: str, expected: str) -> "NoReturn":
        raise ConfigError("%s: [tool.pyrust] key %r: expected %s, got %r"
                          % (path, key, expected, table[key]))

    unknown = sorted(set(table) - {"python", "preload", "echo"})
    if unknown:
        raise ConfigError("%s: [tool.pyrust]: unknown key %r (known keys: echo, preload, "
                          "python)" % (path, unknown[0]))
    python, preload, echo = table.get("python"), table.get("preload"), table.get("echo")
    if python is not None:
        if not isinstance(python, str) or not python or "\0" in python:
            bad("python", "the path of a python executable or of a venv")
        python = interpreter_path(python, os.path.dirname(path))
    if preload is not None and not (isinstance(preload, list) and all(
            isinstance(n, str) and all(p.isidentifier() for p in n.split(".")) for n in preload)):
        bad("preload", 'a list of module names, e.g. ["json", "numpy.linalg"]')
    if echo is not None and type(echo) is not bool:
        bad("echo", "true or false")
    return Project(path, python, preload, echo)


def nearest_project(cwd: "str | None") -> "Project | None":
    """Return the Project of the nearest pyproject.toml from ``cwd`` upwards, or
    None (no such file, no ``[tool.pyrust]`` in it, or ``cwd`` is None).

    Raise ConfigError if that file's ``[tool.pyrust]`` is malformed.
    """
    path = find_pyproject(cwd) if cwd else None
    return load_project(path) if path else None


def interpreter_path(value: str, base: str) -> str:
    """Return the interpreter ``value`` names, made absolute against directory
    ``base`` (``~`` expanded, symlinks kept); a directory means its bin/python."""
    path = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
    if os.path.isdir(path):
        path = os.path.join(path, "bin", "python")
    return path


def choose(cli_python: "str | None", config: "Config | None", cwd: "str | None",
           environ: "Mapping[str, str]") -> Choice:
    """Return the environment a run in ``cwd`` (None if it is gone) asks for.

    ``cli_python`` is ``--python``'s absolute path or None; ``config`` the user
    Config or None (no file); ``environ`` the client's environment.  Raise
    ConfigError if the project's settings are malformed or a relative
    ``$PYRUST_PYTHON`` cannot be resolved.
    """
    project = nearest_project(cwd)
    python = _interpreter(cli_python, config, cwd, environ, project)
    if project is not None and project.preload is not None:
        preload, root = project.preload, project.root if project.preload else ""
    else:
        preload, root = (config.preload if config is not None else []), ""
    echo = config.echo if config is not None else True
    if project is not None and project.echo is not None:
        echo = project.echo
    return Choice(python, preload, root, echo, project)


def _interpreter(cli_python: "str | None", config: "Config | None", cwd: "str | None",
                 environ: "Mapping[str, str]", project: "Project | None") -> str:
    """Return the interpreter's absolute path, from the first source that names one."""
    if cli_python:
        return interpreter_path(cli_python, "/")
    named = environ.get("PYRUST_PYTHON")
    if named:
        if cwd is None and not os.path.isabs(os.path.expanduser(named)):
            raise ConfigError("$PYRUST_PYTHON %s: a relative path, and the working directory "
                              "is gone" % named)
        return interpreter_path(named, cwd or "/")
    venv = environ.get("VIRTUAL_ENV")
    if venv:  # activate scripts set it absolute; a relative one is the cwd's
        return os.path.join(os.path.normpath(os.path.join(cwd or "/", venv)), "bin", "python")
    if project is not None and project.python is not None:
        return project.python
    if config is not None and config.python is not None:
        return interpreter_path(config.python, "/")
    from pyrust.environment import default_python

    return default_python()
