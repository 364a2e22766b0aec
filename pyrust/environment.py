"""Which environment a run belongs to, and where that environment's template listens.

An environment is what python's start-up fixes and a run cannot change: the
interpreter (its venv follows from its path), the modules its template
preloads (and the project directory they import from), and the start-up
options and ``PYTHON*`` variables that shape the interpreter (``-O``,
``-X dev``, ``PYTHONHASHSEED``...).  The service keeps one warm template per
environment; each listens on its own socket beside the main one, named by a
hash of the environment's key, so a client reaches its template directly.

A leaf module: it imports only ``os``, ``sys`` and the protocol, so client
and service agree on keys and socket names without importing each other.
"""

import os
import sys

from pyrust import protocol

# Typing-only imports: mypy takes any name TYPE_CHECKING as true, python never
# runs this block (the client's hot path imports no typing).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable, Mapping

    #: A decoded request: bytes for a single field, a list of bytes for a repeated one.
    Fields = dict[int, Any]

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


def default_python() -> str:
    """Return the interpreter pyrust was installed with: the base interpreter of
    pyrust's own venv (so pyrust's dependencies are not importable by runs),
    or this interpreter when it runs outside a venv.

    The same under ``-S`` (the ``pyrust`` launcher's ``-IS``), where site has
    not set ``sys.prefix`` to the venv: client and service must agree.
    """
    if sys.prefix == sys.base_prefix and not _venv_config():
        return sys.executable
    base = getattr(sys, "_base_executable", "")
    if base and base != sys.executable:
        return base
    # Before 3.11, a venv's _base_executable names the venv's own python.
    return os.path.join(sys.base_prefix, "bin", "python%d.%d" % sys.version_info[:2])


def _venv_config() -> bool:
    """Return whether this interpreter was started from a venv (a pyvenv.cfg
    beside its executable or one directory up, as python looks for it)."""
    bindir = os.path.dirname(sys.executable)
    return any(os.path.exists(os.path.join(d, "pyvenv.cfg"))
               for d in (bindir, os.path.dirname(bindir)))


class Environment:
    """One environment: ``python`` (absolute path), ``preload`` (module names),
    ``root`` (the project directory preloads import from, or ""), ``startup``
    (start-up options and ``PYTHON*=value`` variables, in canonical order)."""

    __slots__ = ("python", "preload", "root", "startup")

    def __init__(self, python: str, preload: "Iterable[str]" = (), root: str = "",
                 startup: "Iterable[str]" = ()) -> None:
        self.python = python
        self.preload = tuple(preload)
        self.root = root
        self.startup = tuple(startup)

    def fields(self) -> "list[tuple[int, bytes]]":
        """Return the environment as extended-request fields, in canonical order."""
        fields = [(protocol.PYTHON, os.fsencode(self.python))]
        fields += [(protocol.PRELOAD, name.encode()) for name in self.preload]
        if self.root:
            fields.append((protocol.ROOT, os.fsencode(self.root)))
        fields += [(protocol.STARTUP, os.fsencode(item)) for item in self.startup]
        return fields

    def key(self) -> bytes:
        """Return the bytes that identify the environment: its encoded fields."""
        return protocol.encode_fields(self.fields())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Environment) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        return "Environment(%r, %r, %r, %r)" % (self.python, self.preload, self.root,
                                                self.startup)

    @classmethod
    def from_fields(cls, fields: "Fields") -> "Environment | None":
        """Return the Environment a decoded request names, or None if it names none.

        Raise ValueError if the fields are not a valid environment.
        """
        python = fields.get(protocol.PYTHON)
        if python is None:
            if fields.get(protocol.ROOT) is not None or fields[protocol.PRELOAD] or \
                    fields[protocol.STARTUP]:
                raise ValueError("an environment without its interpreter (field %d)"
                                 % protocol.PYTHON)
            return None
        path = os.fsdecode(python)
        if not os.path.isabs(path):
            raise ValueError("the interpreter's path %r is not absolute" % path)
        preload = [name.decode("utf-8") for name in fields[protocol.PRELOAD]]
        if not all(part.isidentifier() for name in preload for part in name.split(".")):
            raise ValueError("a preload entry is not a module name")
        root = os.fsdecode(fields.get(protocol.ROOT, b""))
        return cls(path, preload, root, [os.fsdecode(s) for s in fields[protocol.STARTUP]])


def key_of(fields: "Fields") -> bytes:
    """Return the key of the environment decoded request ``fields`` name (which
    must hold a PYTHON field): the same bytes as ``Environment.key()``."""
    items = [(protocol.PYTHON, fields[protocol.PYTHON])]
    items += [(protocol.PRELOAD, name) for name in fields[protocol.PRELOAD]]
    if fields.get(protocol.ROOT):
        items.append((protocol.ROOT, fields[protocol.ROOT]))
    items += [(protocol.STARTUP, item) for item in fields[protocol.STARTUP]]
    return protocol.encode_fields(items)


def fnv1a64(data: bytes) -> int:
    """Return the 64-bit FNV-1a hash of ``data`` (simple to compute in any client)."""
    value = _FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV_PRIME) & _MASK
    return value


def template_socket(main_path: str, key: bytes) -> str:
    """Return the socket of the template for environment ``key``, beside the
    service's main socket ``main_path``:
    ``DIR/env-<16 hex digits of FNV-1a 64 of basename NUL key>.sock``."""
    directory, _, name = main_path.rpartition("/")
    digest = fnv1a64(os.fsencode(name) + b"\0" + key)
    return "%s/env-%016x.sock" % (directory, digest)


#: The ``PYTHON*`` variables a warm interpreter applies to each run (from the
#: run's own environment); every other ``PYTHON*`` variable shapes start-up,
#: so it is part of the environment's key.
PER_RUN_VARIABLES = (
    "PYTHONPATH", "PYTHONWARNINGS", "PYTHONUNBUFFERED", "PYTHONIOENCODING",
    "PYTHONDONTWRITEBYTECODE", "PYTHONINSPECT", "PYTHONSTARTUP", "PYTHONBREAKPOINT",
    "PYTHON_COLORS", "PYTHON_HISTORY", "PYTHON_BASIC_REPL",
)
#: Start-up options under which python reads no ``PYTHON*`` variable.
IGNORE_ENVIRONMENT = ("-E", "-I")


def startup_items(options: "Iterable[str]", environ: "Mapping[str, str]") -> "list[str]":
    """Return an environment's start-up items: ``options`` (start-up options in
    canonical order, see pyrust/pyoptions.py), then the start-up ``PYTHON*``
    variables of ``environ`` as "NAME=value", sorted by name.

    None of the variables with -E or -I among the options (python reads none);
    none set to the empty string (python treats those as unset).
    """
    items = list(options)
    if any(option in IGNORE_ENVIRONMENT for option in items):
        return items
    return items + ["%s=%s" % (name, environ[name]) for name in sorted(environ)
                    if name.startswith("PYTHON") and name not in PER_RUN_VARIABLES
                    and environ[name]]
