"""Configuration: one dataclass holding every setting and its default.

The file is TOML, by default ``$XDG_CONFIG_HOME/pyrust/config.toml``, with the
settings as top-level keys::

    workers = 4
    preload = ["numpy", "pandas"]
    max_request_bytes = 10485760

Every key is optional; an unknown key, a value of the wrong type or an
unreadable file is a ConfigError naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import os

from pyrust.errors import ConfigError
from pyrust.paths import default_config_path

#: Upper bound on ``workers``: the scoreboard holds two generations of them.
MAX_WORKERS = 512


def _positive_int(value):
    if type(value) is not int or value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def _non_negative_int(value):
    if type(value) is not int or value < 0:
        raise ValueError("expected a whole number of at least 0")
    return value


def _positive_seconds(value):
    if type(value) not in (int, float) or not value > 0:
        raise ValueError("expected a number of seconds greater than 0")
    return float(value)


def _optional_path(value):
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty path string")
    return value


def _module_names(value):
    if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value):
        raise ValueError("expected a list of module names, e.g. [\"json\", \"numpy\"]")
    return list(value)


def _non_negative_seconds(value):
    if type(value) not in (int, float) or not value >= 0:
        raise ValueError("expected a number of seconds, 0 or more")
    return float(value)


def _boolean(value):
    if type(value) is not bool:
        raise ValueError("expected true or false")
    return value


def _worker_count(value):
    if type(value) is not int or not 1 <= value <= MAX_WORKERS:
        raise ValueError("expected a whole number from 1 to %d" % MAX_WORKERS)
    return value


def _log_level(value):
    if value not in ("debug", "info", "warning", "error"):
        raise ValueError('expected one of "debug", "info", "warning", "error"')
    return value


def _setting(default=None, check=None, factory=None, doc=""):
    """Declare a setting: its default, the check its TOML value must pass, its meaning."""
    meta = {"check": check, "doc": doc}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Config:
    """Every pyrust setting, with its default."""

    @property
    def pool_ceiling(self) -> int:
        """The most workers the pool may run at once."""
        return min(self.max_workers or 4 * self.workers, MAX_WORKERS)

    socket: str | None = _setting(
        None, _optional_path,
        doc="socket path (default: $XDG_RUNTIME_DIR/pyrust/pyrust.sock)")
    workers: int = _setting(
        check=_worker_count, factory=lambda: min(os.cpu_count() or 1, MAX_WORKERS),
        doc="worker processes (default: one per CPU)")
    preload: list = _setting(
        check=_module_names, factory=list,
        doc="modules imported once before the workers fork")
    max_workers: int = _setting(
        0, _non_negative_int,
        doc="ceiling the pool grows to while every worker is busy (0: four times `workers`)")
    shrink_after: float = _setting(
        30.0, _positive_seconds,
        doc="seconds an extra worker may stay idle before it is retired")
    max_request_bytes: int = _setting(
        10 * 1024 * 1024, _positive_int,
        doc="largest request payload accepted, in bytes")
    max_reply_bytes: int = _setting(
        64 * 1024 * 1024, _positive_int,
        doc="largest output a request may produce, in bytes")
    request_timeout: float = _setting(
        30.0, _non_negative_seconds,
        doc="seconds a request may run before it is interrupted (0: no limit)")
    kill_grace: float = _setting(
        5.0, _positive_seconds,
        doc="seconds after the interrupt before a worker that ignores it is killed")
    max_requests: int = _setting(
        0, _non_negative_int,
        doc="requests after which a worker is replaced (0: never)")
    max_requests_jitter: int = _setting(
        0, _non_negative_int,
        doc="up to this many more requests, at random per worker, so they do not all "
            "restart at once")
    max_worker_rss: int = _setting(
        1024 ** 3, _non_negative_int,
        doc="resident memory (bytes) above which a worker is replaced between requests "
            "(0: never)")
    max_worker_memory: int = _setting(
        0, _non_negative_int,
        doc="address-space limit per worker (RLIMIT_AS, bytes); beyond it allocations "
            "raise MemoryError (0: no limit)")
    idle_timeout: float = _setting(
        60.0, _positive_seconds,
        doc="seconds a connection may wait between or inside requests before it is closed")
    compile_cache_size: int = _setting(
        256, _non_negative_int,
        doc="compiled programs kept per worker (0 turns the cache off)")
    graceful_timeout: float = _setting(
        30.0, _positive_seconds,
        doc="seconds in-flight requests get to finish on stop before workers are killed")
    idle_exit: float = _setting(
        3600.0, _non_negative_seconds,
        doc="seconds without a request after which the service exits (0: never)")
    autostart: bool = _setting(
        True, _boolean,
        doc="let `pyrust -c` start a background server when none answers and no "
            "socket unit owns the path")
    log_level: str = _setting(
        "info", _log_level, doc="debug, info, warning or error")


def parse_config(data: dict, source: str) -> Config:
    """Return the Config described by ``data`` (a parsed TOML table).

    Raise ConfigError naming ``source`` and the key on any unknown key or bad value.
    """
    fields = {f.name: f for f in dataclasses.fields(Config)}
    values = {}
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            raise ConfigError("%s: unknown key %r (known keys: %s)"
                              % (source, key, ", ".join(sorted(fields))))
        try:
            values[key] = field.metadata["check"](value)
        except ValueError as exc:
            raise ConfigError("%s: key %r: %s, got %r" % (source, key, exc, value)) from None
    config = Config(**values)
    if config.max_workers and config.max_workers < config.workers:
        raise ConfigError("%s: key 'max_workers': %d is less than workers (%d)"
                          % (source, config.max_workers, config.workers))
    return config


def load_config(path: str | None = None) -> Config:
    """Return the configuration read from ``path``, or from the default file.

    A missing default file means all defaults; a missing explicit ``path`` is
    an error.  Raise ConfigError if the file cannot be read or parsed.
    """
    explicit = path is not None
    path = path if explicit else default_config_path()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if explicit:
            raise ConfigError("%s: configuration file not found" % path) from None
        return Config()
    except OSError as exc:
        raise ConfigError("%s: cannot read configuration: %s" % (path, exc.strerror)) from None
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("%s: not valid TOML: %s" % (path, exc)) from None
    return parse_config(data, path)
