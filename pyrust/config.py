"""Configuration: one dataclass holding every setting, its default and its range.

The file is TOML, by default ``$XDG_CONFIG_HOME/pyrust/config.toml``, with the
settings as top-level keys::

    workers = 4
    preload = ["numpy", "pandas"]
    request_timeout = 10

Every key is optional.  Every setting declares the values it accepts beside
its default; an unknown key, a value of the wrong type or out of range, or an
unreadable file is a ConfigError, one line naming the file, the key, the
accepted range and the value.  Client and server load files the same way, and
the server's command-line overrides pass the same checks.

Each setting's metadata is all that is said of it anywhere: its check, its
default as the docs show it, and its meaning.  README's settings table
(``python -m pyrust.docgen``), ``pyrust serve``'s flags and the native
client's checks (pyrust/native.py) are made from it.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from pyrust.errors import ConfigError
from pyrust.paths import default_config_path

MYPY = False
if MYPY:  # true for the type checker only: importing typing costs the client ~7 ms
    from typing import Any, Callable

# Every bound in one place.  Values past them would overflow a timer or a
# length field, or could only make the service fail at every start.
#: Longest duration: a year fits every timer the server arms (setitimer,
#: SO_RCVTIMEO's timeval, select), and nothing sensible waits longer.
MAX_SECONDS = 365 * 24 * 3600
#: Shortest duration that cannot mean "none": SO_RCVTIMEO keeps microseconds
#: and reads 0 as "no timeout", so below that a timeout would vanish.
MIN_SECONDS = 0.001
#: Upper bound on ``workers``: the scoreboard holds two generations of them.
MAX_WORKERS = 512
#: Largest request or reply (1 GiB): well inside the wire's 32-bit length
#: fields, and more than a worker should hold in memory.
MAX_MESSAGE_BYTES = 1024 ** 3
#: Largest memory limit (1 TiB): beyond it a limit limits nothing.
MAX_MEMORY_BYTES = 1024 ** 4
#: Smallest address-space limit: below it a worker dies at start, is replaced,
#: dies again: a loop, not a limit.
MIN_ADDRESS_SPACE = 64 * 1024 ** 2
#: Largest compile cache, in programs.
MAX_CACHE_ENTRIES = 65536
#: Longest socket path in bytes: ``sun_path`` holds 108 bytes on Linux, 104 on
#: macOS, the terminating NUL included.
MAX_SOCKET_PATH_LINUX, MAX_SOCKET_PATH_MACOS = 107, 103
MAX_SOCKET_PATH = MAX_SOCKET_PATH_MACOS if sys.platform == "darwin" else MAX_SOCKET_PATH_LINUX
LOG_LEVELS = ("debug", "info", "warning", "error")


class _Check:
    """What a setting accepts: ``expected`` says it in words ("a whole number
    from 1 to 512"); calling the check with a TOML value returns the value to
    store, or raises ValueError whose text (possibly empty) adds why not.

    ``kind`` names the check ("seconds", "count", "bytes", "socket",
    "modules", "boolean", "python", "log_level"), with ``low``, ``high`` and
    ``zero`` (0 is accepted below ``low``) for the numeric ones: what the
    native client's copy of the checks is built from (pyrust/native.py).
    ``zero_means`` says what 0 means where it means something ("no limit").
    """

    def __init__(self, expected: str, convert: Callable[[Any], Any], kind: str,
                 low: float = 0, high: float = 0, zero_means: str | None = None) -> None:
        self.expected = expected
        self._convert = convert
        self.kind, self.low, self.high = kind, low, high
        self.zero_means = zero_means

    @property
    def zero(self) -> bool:
        """Whether 0 is accepted below ``low``: it has a meaning of its own."""
        return self.zero_means is not None and self.low > 0

    def __call__(self, value: Any) -> Any:
        return self._convert(value)


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is a subclass of int: not a number here


def _in_range(value: Any, low: float, high: float, integral: bool) -> bool:
    """Return whether ``value`` is a number from ``low`` to ``high`` (nan is not)."""
    if not (_is_int(value) or (not integral and type(value) is float)):
        return False
    return bool(low <= value <= high)


def _seconds(zero_means: str | None = None) -> _Check:
    """Accept a duration up to MAX_SECONDS; 0 only if it has a meaning (``zero_means``)."""
    low = 0 if zero_means else MIN_SECONDS
    note = "%d days" % (MAX_SECONDS // 86400)
    if zero_means:
        note += "; 0: %s" % zero_means
    expected = "a number of seconds from %g to %d (%s)" % (low, MAX_SECONDS, note)

    def convert(value: Any) -> float:
        if not _in_range(value, low, MAX_SECONDS, integral=False):
            raise ValueError("")
        return float(value)
    return _Check(expected, convert, "seconds", low, MAX_SECONDS, zero_means=zero_means)


def _count(low: int, high: int, zero_means: str | None = None) -> _Check:
    """Accept a whole number from ``low`` to ``high``."""
    note = " (0: %s)" % zero_means if zero_means else ""
    return _Check("a whole number from %d to %d%s" % (low, high, note),
                  lambda value: _whole(value, low, high), "count", low, high,
                  zero_means=zero_means)


def _whole(value: Any, low: int, high: int) -> int:
    """Return ``value`` if it is an int from ``low`` to ``high``; raise ValueError if not."""
    if not _in_range(value, low, high, integral=True):
        raise ValueError("")
    return int(value)


def _unit(size: int) -> str:
    """Return ``size`` in bytes in the largest unit it is a whole number of ("1 GiB"),
    or "" if it is none."""
    for unit, name in ((1024 ** 4, "TiB"), (1024 ** 3, "GiB"), (1024 ** 2, "MiB")):
        if size >= unit and size % unit == 0:
            return "%d %s" % (size // unit, name)
    return ""


def _size(size: int) -> str:
    """Return ``size`` in bytes as people read it: "1073741824 (1 GiB)"."""
    unit = _unit(size)
    return "%d (%s)" % (size, unit) if unit else str(size)


def _bytes(low: int, high: int, zero_means: str | None = None) -> _Check:
    """Accept a size in bytes from ``low`` to ``high``, or 0 if it has a meaning."""
    expected = "a number of bytes from %s to %s" % (_size(low), _size(high))
    if zero_means:
        expected = "0 (%s) or %s" % (zero_means, expected)

    def convert(value: Any) -> int:
        if _is_int(value) and value == 0 and zero_means:
            return 0
        return _whole(value, low, high)
    return _Check(expected, convert, "bytes", low, high, zero_means)


def _socket_path(value: Any) -> str:
    """Return ``value`` if it is a path a socket can be bound at; raise ValueError if not."""
    if not isinstance(value, str) or not value:
        raise ValueError("")
    path = os.path.expanduser(value)
    if not os.path.isabs(path):
        # Relative to what? The client and a background server run in
        # different directories, so they would not meet.
        raise ValueError("a relative path")
    if "\0" in path:
        raise ValueError("a NUL character")
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > MAX_SOCKET_PATH:
        raise ValueError("%d bytes" % size)
    return value


def _module_names(value: Any) -> list:
    """Return ``value`` as a list if it lists dotted module names; raise ValueError if not."""
    if not isinstance(value, list):
        raise ValueError("")
    for name in value:
        if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
            raise ValueError("%s is not a module name" % _short(name))
    return list(value)


def _interpreter(value: Any) -> str:
    """Return ``value`` if it names an interpreter or a venv by an absolute path
    (~/ allowed); raise ValueError if not."""
    if not isinstance(value, str):
        raise ValueError("")
    if not os.path.isabs(os.path.expanduser(value)):
        raise ValueError("a relative path")
    if "\0" in value:
        raise ValueError("a NUL character")
    return value


def _boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError("")
    return value


def _log_level(value: Any) -> str:
    if value not in LOG_LEVELS:
        raise ValueError("")
    return str(value)


_SOCKET_PATH_LIMIT = "an absolute path (~/ allowed) of at most %d bytes"
_SOCKET = _Check(_SOCKET_PATH_LIMIT % MAX_SOCKET_PATH, _socket_path, "socket",
                 high=MAX_SOCKET_PATH)
_MODULES = _Check('a list of module names, e.g. ["json", "numpy.linalg"]', _module_names,
                  "modules")
_BOOLEAN = _Check("true or false", _boolean, "boolean")
_PYTHON = _Check("the absolute path (~/ allowed) of a python executable or of a venv",
                 _interpreter, "python")
#: Upper bound on ``max_templates``: each template is a warm interpreter and its spares.
MAX_TEMPLATES = 64
_LOG_LEVEL = _Check(" or ".join(", ".join('"%s"' % v for v in LOG_LEVELS).rsplit(", ", 1)),
                    _log_level, "log_level")


def _shown(default: Any, check: _Check) -> str:
    """Return ``default`` as the settings table shows it: "`10485760` (10 MiB)",
    "`0` (no limit)", "`true`", "`"info"`"."""
    if isinstance(default, bool):
        text = "true" if default else "false"
    elif isinstance(default, str):
        text = '"%s"' % default
    else:
        text = repr(default)
    if check.zero_means and default == 0:
        note = check.zero_means
    else:
        note = _unit(default) if check.kind == "bytes" else ""
    return "`%s`" % text + (" (%s)" % note if note else "")


def _setting(default: Any, check: _Check, doc: str, shown: str | None = None,
             factory: Callable[[], Any] | None = None, accepted: str | None = None) -> Any:
    """Declare a setting: its default (or the ``factory`` computing it), the check
    its value must pass, and what the docs say of it: its meaning (``doc``,
    Markdown), its default (``shown``: a phrase where the default is computed or
    None; else rendered from the default) and what it accepts (``accepted`` where
    that differs by platform; else the check's ``expected``).
    """
    if shown is None:
        if factory is not None or default is None:
            raise TypeError("a computed or None default needs a phrase (shown=)")
        shown = _shown(default, check)
    meta = {"check": check, "doc": doc, "shown": shown,
            "accepted": accepted or check.expected}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Config:
    """Every pyrust setting, with its default, the values it accepts and its meaning."""

    @property
    def pool_ceiling(self) -> int:
        """The most workers the pool may run at once."""
        return min(self.max_workers or 4 * self.workers, MAX_WORKERS)

    socket: str | None = _setting(
        None, _SOCKET, "socket path", shown="see above",
        accepted=(_SOCKET_PATH_LIMIT + " (%d on macOS)")
        % (MAX_SOCKET_PATH_LINUX, MAX_SOCKET_PATH_MACOS))
    workers: int = _setting(
        None, _count(1, MAX_WORKERS),
        "spare workers kept waiting in `accept()`: each serves one connection and exits, "
        "and a new spare is forked as soon as one takes a connection",
        shown="number of CPUs", factory=lambda: min(os.cpu_count() or 1, MAX_WORKERS))
    preload: list = _setting(
        None, _MODULES,
        "modules the template imports once, before it forks the workers, so every run "
        "finds them loaded; their files are watched, and a change is seen by the next run; "
        "one that fails to import stops the server with a clear error",
        shown="`[]`", factory=list)
    max_workers: int = _setting(
        0, _count(0, MAX_WORKERS, "four times workers"),
        "workers alive at once, spares and busy ones; past it a new connection waits in "
        "the socket's backlog until a worker ends")
    max_request_bytes: int = _setting(
        10 * 1024 ** 2, _bytes(1, MAX_MESSAGE_BYTES),
        "larger requests are refused with status 2")
    max_reply_bytes: int = _setting(
        64 * 1024 ** 2, _bytes(1, MAX_MESSAGE_BYTES),
        "a request whose output grows past this is answered with status 2 instead; the "
        "worker keeps no more than this in memory")
    request_timeout: float = _setting(
        30.0, _seconds(zero_means="no limit"),
        "seconds a protocol request may run (a `pyrust` command's run has no limit, as "
        "under python): then `pyrust.RequestTimeout: timed out after N s` is raised in the "
        "code (again every second if it is caught), and the reply has status 3")
    kill_grace: float = _setting(
        5.0, _seconds(),
        "seconds after the time limit before a worker whose code ignores the interrupt is "
        "killed (and replaced)")
    max_worker_rss: int = _setting(
        1024 ** 3, _bytes(1, MAX_MEMORY_BYTES, zero_means="never"),
        "resident memory above which a worker holding a protocol session ends it after "
        "the request in flight")
    max_worker_memory: int = _setting(
        0, _bytes(MIN_ADDRESS_SPACE, MAX_MEMORY_BYTES, zero_means="no limit"),
        "address-space limit per worker (`RLIMIT_AS`); past it allocations raise "
        "`MemoryError`")
    idle_timeout: float = _setting(
        60.0, _seconds(),
        "seconds a connection may wait between (or inside) requests before the server "
        "closes it")
    compile_cache_size: int = _setting(
        256, _count(0, MAX_CACHE_ENTRIES, "no cache"),
        "compiled programs a worker keeps for the requests of its connection (least "
        "recently used go first; programs over 1 MiB are not kept)")
    graceful_timeout: float = _setting(
        30.0, _seconds(),
        "seconds in-flight requests get to finish when the server stops, before workers "
        "are killed")
    idle_exit: float = _setting(
        3600.0, _seconds(zero_means="never"),
        "seconds without a request after which the service exits; under socket activation "
        "the next connection starts it again")
    autostart: bool = _setting(
        True, _BOOLEAN,
        "`pyrust -c` starts a background server when none answers, unless a socket unit "
        "or launchd agent owns the path")
    log_level: str = _setting(
        "info", _LOG_LEVEL, "how much the server logs (on stderr, or in its log file)")
    python: str | None = _setting(
        None, _PYTHON,
        "the interpreter runs use when no venv is active and neither `--python` nor "
        "`$PYRUST_PYTHON` names one (a project's `[tool.pyrust] python` comes first)",
        shown="pyrust's own interpreter")
    echo: bool = _setting(
        True, _BOOLEAN,
        "echo the value of a final bare expression of `-c` code (false: exactly "
        "python's `-c`)")
    template_idle_exit: float = _setting(
        600.0, _seconds(zero_means="never"),
        "seconds without a run after which an environment's template ends (the default "
        "environment's ends only with the service)")
    max_templates: int = _setting(
        8, _count(1, MAX_TEMPLATES),
        "environments kept warm at once; starting one more ends the least recently used")


def _short(value: Any) -> str:
    """Return ``repr(value)`` cut to one short line, for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:56] + " ..."


def check_setting(key: str, value: Any, source: str) -> Any:
    """Return ``value`` as setting ``key`` stores it.

    Raise ConfigError, one line naming ``source``, the key, the accepted
    values and ``value``, if the key is unknown or the value is not accepted.
    """
    fields = {f.name: f for f in dataclasses.fields(Config)}
    field = fields.get(key)
    if field is None:
        raise ConfigError("%s: unknown key %r (known keys: %s)"
                          % (source, key, ", ".join(sorted(fields))))
    check = field.metadata["check"]
    try:
        return check(value)
    except ValueError as exc:
        why = " (%s)" % exc if str(exc) else ""
        raise ConfigError("%s: key %r: expected %s, got %s%s"
                          % (source, key, check.expected, _short(value), why)) from None


def apply_settings(config: Config, values: dict, source: str) -> Config:
    """Return ``config`` with ``values`` (key: value) applied, each checked.

    Raise ConfigError naming ``source`` and the key on any unknown key, bad
    value, or a pool whose ceiling (``max_workers``) is below ``workers``.
    """
    checked = {key: check_setting(key, value, source) for key, value in values.items()}
    new = dataclasses.replace(config, **checked)
    if new.max_workers and new.max_workers < new.workers:
        if "max_workers" in checked:
            raise ConfigError("%s: key 'max_workers': %d is less than workers (%d)"
                              % (source, new.max_workers, new.workers))
        raise ConfigError("%s: key 'workers': %d is more than max_workers (%d)"
                          % (source, new.workers, new.max_workers))
    return new


def parse_config(data: dict, source: str) -> Config:
    """Return the Config described by ``data`` (a parsed TOML table).

    Raise ConfigError naming ``source`` and the key on any unknown key or bad value.
    """
    return apply_settings(Config(), data, source)


def load_config(path: str | None = None) -> Config:
    """Return the configuration read from ``path``, or from the default file.

    A missing default file means all defaults; a missing explicit ``path`` is
    an error.  Raise ConfigError if the file cannot be read or parsed.
    """
    explicit = path is not None
    path = path if path is not None else default_config_path()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if explicit:
            raise ConfigError("%s: configuration file not found" % path) from None
        return Config()
    except OSError as exc:
        raise ConfigError("%s: cannot read configuration: %s" % (path, exc.strerror)) from None
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("%s: not valid TOML: %s" % (path, exc)) from None
    return parse_config(data, path)
