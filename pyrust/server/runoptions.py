"""Python's per-run options, as python would have applied them at start.

A template's start-up options and ``PYTHON*`` variables are fixed for its life
(they are part of its environment's key).  These are not: the options ``-u -B
-q -i -P -W ARG`` (request field PYOPT) and the per-run variables of the run's
own environment (PYTHONPATH, PYTHONWARNINGS, PYTHONUNBUFFERED,
PYTHONDONTWRITEBYTECODE, PYTHONINSPECT, PYTHONSTARTUP, PYTHON_BASIC_REPL; the
others python reads when it uses them, from the run's ``os.environ``).  This
module computes what python would have built from them at start-up:
``sys.path``, ``sys.warnoptions`` and the warnings filters,
``sys.dont_write_bytecode``, ``sys.flags``.  Under -E or -I (the template's
``sys.flags.ignore_environment``) every ``PYTHON*`` variable is ignored, as
python ignores them.

Stdlib only, and 3.9-compatible: the template runs the user's interpreter.
"""

from __future__ import annotations

import collections
import functools
import io
import operator
import os
import sys

MYPY = False
if MYPY:  # true for the type checker only: a run's sys.modules must not gain typing
    from types import CodeType, ModuleType
    from typing import Any, Mapping

    #: An entry of warnings.filters: (action, message, category, module, lineno).
    _Filter = tuple[str, object, object, object, int]

_FLAGS = sys.flags
#: Python 3.13 shows inspect, interactive and quiet as 0 or 1, whatever the count.
_FLAGS_CLAMPED = sys.version_info >= (3, 13)
#: Before 3.11 there is no -P, and -I is what keeps sys.path[0] out.
_HAS_SAFE_PATH = sys.version_info >= (3, 11)
_STDLIB_ZIP = "python%d%d.zip" % sys.version_info[:2]


def env_flag(value: str | None) -> int:
    """Return the level a flag variable sets, as python reads it: unset or
    empty is 0, a decimal integer is itself, anything else (or negative) is 1."""
    if not value:
        return 0
    text = value.lstrip(" \t\n\r\f\v")
    digits = text[1:] if text[:1] in "+-" else text
    if not digits.isdigit() or not digits.isascii():
        return 1
    number = int(text)
    return number if 0 <= number < 1 << 31 else 1


class RunOptions(collections.namedtuple("RunOptions", (
        "unbuffered dont_write_bytecode quiet inspect interactive safe_path warnoptions "
        "pythonpath startup basic_repl unknown"))):
    """What python would start a run with.  ``inspect`` and ``interactive`` are
    levels (-i -i is 2); ``safe_path``: no sys.path[0] entry; ``warnoptions``:
    sys.warnoptions; ``pythonpath``/``startup``: the variables' values or None;
    ``unknown``: options this interpreter does not have (-P before 3.11)."""


def run_options(options: tuple[str, ...], env: Mapping[str, str]) -> RunOptions:
    """Return the RunOptions of per-run ``options`` under environment ``env``
    (a mapping: the run's variables), ignoring ``PYTHON*`` under -E/-I."""
    get = env.get if not _FLAGS.ignore_environment else (lambda name: None)
    count = options.count
    cmdline = [option[2:] for option in options if option.startswith("-W")]
    inspect = max(count("-i"), env_flag(get("PYTHONINSPECT")))
    unknown = () if _HAS_SAFE_PATH or "-P" not in options else ("-P",)
    return RunOptions(
        unbuffered=bool("-u" in options or env_flag(get("PYTHONUNBUFFERED"))),
        dont_write_bytecode=bool("-B" in options or env_flag(get("PYTHONDONTWRITEBYTECODE"))),
        quiet=count("-q"), inspect=inspect, interactive=count("-i"),
        safe_path=_template_safe_path() or "-P" in options,
        warnoptions=warnoptions(get("PYTHONWARNINGS"), cmdline),
        pythonpath=get("PYTHONPATH") or None, startup=get("PYTHONSTARTUP") or None,
        basic_repl=bool(get("PYTHON_BASIC_REPL")), unknown=unknown)


def _template_safe_path() -> bool:
    """Whether the template's python leaves sys.path[0] out (-P, -I, PYTHONSAFEPATH)."""
    if _HAS_SAFE_PATH:
        return bool(_FLAGS.safe_path)
    return bool(_FLAGS.isolated)


# -- sys.path -------------------------------------------------------------------------


def pythonpath_entries(value: str | None) -> list[str]:
    """Return the sys.path entries python makes of PYTHONPATH ``value`` in the
    current directory: absolute and normalized (site does it, and 3.11's
    path computation), as written before 3.11 without site; empty entries
    are the current directory (or "")."""
    if not value:
        return []
    parts = value.split(os.pathsep)
    if _HAS_SAFE_PATH or not _FLAGS.no_site:
        return [os.path.abspath(part) for part in parts]
    return parts


class PathTemplate:
    """The template's ``sys.path``, read where it was made: which entries came from
    its own PYTHONPATH and whether it has a sys.path[0] entry, so a run's
    path is built from the rest."""

    def __init__(self) -> None:
        value = None if _FLAGS.ignore_environment else os.environ.get("PYTHONPATH")
        self.own_entries = frozenset(pythonpath_entries(value))
        self.has_path0 = not _template_safe_path()
        # (current path, PYTHONPATH[, cwd]) -> path without path0
        self._built: dict[tuple[object, ...], tuple[str, ...]] = {}

    def run_path(self, current: list[str], pythonpath: str | None) -> list[str]:
        """Return the sys.path python would give a run under PYTHONPATH
        ``pythonpath`` (None: unset), without sys.path[0]: what precedes the
        standard library in ``current`` (eggs a .pth put first) but the
        template's path0 and PYTHONPATH entries, then the run's PYTHONPATH
        entries, then the rest of ``current``; duplicates removed as site does
        (first kept), unless site is off.  Built once for each combination."""
        key: tuple[object, ...] = (tuple(current), pythonpath)
        if pythonpath and _has_relative(pythonpath):
            key += (os.getcwd(),)  # relative entries: a place in the working directory
        built = self._built.get(key)
        if built is None:
            if len(self._built) >= 64:
                self._built.clear()
            built = self._built[key] = self._build(current, pythonpath_entries(pythonpath))
        return list(built)

    def _build(self, current: list[str], entries: list[str]) -> tuple[str, ...]:
        start = 1 if self.has_path0 and current else 0
        stop = _stdlib_index(current, start)
        head = current[start:stop]
        if self.own_entries:
            head = [entry for entry in head if entry not in self.own_entries]
        rest = entries + current[stop:]
        if entries and not _FLAGS.no_site:
            rest = list(dict.fromkeys(rest))
            head = [entry for entry in head if entry not in rest]
        return tuple(head + rest)


@functools.lru_cache(maxsize=64)
def _has_relative(pythonpath: str) -> bool:
    """Return whether PYTHONPATH value ``pythonpath`` has a relative entry."""
    return not all(os.path.isabs(part) for part in pythonpath.split(os.pathsep))


def _stdlib_index(path: list[str], start: int) -> int:
    """Return the index of the standard library's zip entry (python puts it in
    sys.path whether or not it exists), where PYTHONPATH entries end; ``start``
    if it is not there."""
    for index in range(start, len(path)):
        entry = path[index]
        if entry.endswith(_STDLIB_ZIP) and os.path.basename(entry) == _STDLIB_ZIP:
            return index
    return start


# -- warnings ---------------------------------------------------------------------------


def warnoptions(env_value: str | None, cmdline: list[str]) -> tuple[str, ...]:
    """Return sys.warnoptions as python builds it: "default" under dev mode,
    PYTHONWARNINGS' comma-separated entries, the -W values, the -b filter;
    each once, in that order."""
    options = ["default"] if _FLAGS.dev_mode else []
    if env_value:
        options += [item for item in env_value.split(",") if item]
    options += cmdline
    if _FLAGS.bytes_warning:
        options.append("error::BytesWarning" if _FLAGS.bytes_warning > 1
                       else "default::BytesWarning")
    return tuple(dict.fromkeys(options))


def _default_filters() -> list[_Filter]:
    """Return the filters the interpreter starts with, before -W options."""
    if hasattr(sys, "gettotalrefcount"):  # a debug build shows every warning
        return []
    return [("default", None, DeprecationWarning, "__main__", 0),
            ("ignore", None, DeprecationWarning, None, 0),
            ("ignore", None, PendingDeprecationWarning, None, 0),
            ("ignore", None, ImportWarning, None, 0),
            ("ignore", None, ResourceWarning, None, 0)]


class WarningsTemplate:
    """The template's warnings state, how to build a run's from its options,
    and how to put the template's back after a run."""

    def __init__(self) -> None:
        import warnings

        self.module = warnings
        self.options = tuple(sys.warnoptions)
        self.filters: list[_Filter] = list(warnings.filters)
        self._lists = sys.warnoptions, warnings.filters  # the objects themselves
        self.defaults: list[_Filter] | None = _default_filters()
        if _built(self.defaults, self.options) != self.filters:
            # Something in the template changed the filters; build on them.
            self.defaults = None

    def apply(self, options: tuple[str, ...]) -> None:
        """Make sys.warnoptions and the filters what python builds for ``options``,
        reporting invalid ones on sys.stderr as python does at start."""
        if options == self.options:
            return
        warnings = self.module
        sys.warnoptions = list(options)
        warnings.filters[:] = self.defaults if self.defaults is not None else self.filters
        warnings._filters_mutated()
        try:
            exec(_processing(warnings), {"_processoptions": warnings._processoptions, "sys": sys})
        except Exception as exc:  # a -W category whose module fails to import
            # What python says when its start-up import of warnings fails; the
            # module is then not imported, and the program's import tries again.
            sys.stderr.write("'import warnings' failed; traceback:\n")
            assert exc.__traceback__ is not None  # it was raised, so it has one
            tb = exc.__traceback__.tb_next
            sys.__excepthook__(type(exc), exc.with_traceback(tb), tb)
            del sys.modules["warnings"]

    def restore(self) -> None:
        """Put back the template's sys.warnoptions, filters and empty registries
        of warnings shown, whatever the run did to them."""
        warnoptions, filters = self._lists
        warnings = sys.modules["warnings"] = self.module
        sys.warnoptions = warnoptions
        if len(warnoptions) != len(self.options) or tuple(warnoptions) != self.options:
            warnoptions[:] = self.options
        # The program may have rebound or changed the filters: put back the list
        # and its entries (mypy sees self.module as a ModuleType, and typeshed
        # declares filters a read-only Sequence).
        warnings.filters = filters  # type: ignore[attr-defined]
        if filters != self.filters:
            filters[:] = self.filters  # type: ignore[index]
        # Every module's registry of warnings already shown is stale now, as
        # in a new process: "default" shows each warning again, once.
        warnings._filters_mutated()
        if warnings.onceregistry:
            warnings.onceregistry.clear()


@functools.lru_cache(maxsize=1)
def _processing(warnings: ModuleType) -> CodeType:
    """Return code that processes sys.warnoptions as warnings.py does when python
    imports it at start: a traceback through it shows the module's own line."""
    call = "_processoptions(sys.warnoptions)"
    filename: str | None = getattr(warnings, "__file__", None)
    if filename is not None:  # else no source to show
        try:
            with open(filename, encoding="utf-8") as f:
                lineno = [line.rstrip() for line in f].index(call) + 1
        except (OSError, ValueError):
            pass
        else:
            return compile("\n" * (lineno - 1) + call, filename, "exec")
    return compile(call, "<warnings>", "exec")


def _built(defaults: list[_Filter], options: tuple[str, ...]) -> list[_Filter]:
    """Return the filters processing ``options`` onto ``defaults`` gives (the
    process's filters and stderr are left as they were)."""
    import warnings

    # filters is a list at run time (typeshed: a read-only Sequence);
    # _processoptions and _filters_mutated are private: what python's start-up calls.
    saved, saved_err = warnings.filters[:], sys.stderr
    try:
        sys.stderr = io.StringIO()
        warnings.filters[:] = defaults  # type: ignore[index]
        warnings._processoptions(list(options))  # type: ignore[attr-defined]
        return list(warnings.filters)
    finally:
        warnings.filters[:] = saved  # type: ignore[index]
        sys.stderr = saved_err
        warnings._filters_mutated()  # type: ignore[attr-defined]


# -- sys.flags --------------------------------------------------------------------------

_NAMES = tuple(item.partition("=")[0] for item in repr(_FLAGS)[len("sys.flags("):-1].split(", "))


def _flags_class() -> type:
    """Return a tuple type that looks like ``sys.flags``' own (which cannot be
    instantiated): the same fields, repr, name and module."""
    names = ", ".join("%s=%%r" % name for name in _NAMES)
    namespace = {"__slots__": (), "__repr__": lambda self: ("sys.flags(" + names + ")") % self}
    for index, name in enumerate(_NAMES):
        namespace[name] = property(operator.itemgetter(index))
    for name in dir(type(_FLAGS)):  # n_fields and the like, 3.13's gil: as the template's
        if not (name.startswith("_") or name in _NAMES or name in ("count", "index")):
            namespace[name] = getattr(_FLAGS, name)
    cls = type("flags", (tuple,), namespace)
    cls.__module__ = "sys"
    return cls


_Flags = _flags_class()


def run_flags(options: RunOptions) -> Any:
    """Return the ``sys.flags`` a run with ``options`` sees: the template's own
    object when nothing per run differs, else a look-alike with the run's values."""
    key = (options.inspect, options.interactive, options.quiet, options.dont_write_bytecode,
           options.safe_path)
    flags = _run_flags.get(key)
    if flags is None:
        flags = _run_flags[key] = _make_flags(options)
    return flags


_run_flags: dict[tuple[int, int, int, bool, bool], Any] = {}


def _make_flags(options: RunOptions) -> Any:
    level = (lambda n: int(bool(n))) if _FLAGS_CLAMPED else int
    values = {"inspect": level(options.inspect), "interactive": level(options.interactive),
              "quiet": level(options.quiet),
              "dont_write_bytecode": int(options.dont_write_bytecode)}
    if _HAS_SAFE_PATH:
        values["safe_path"] = bool(options.safe_path)
    if all(getattr(_FLAGS, name) == value for name, value in values.items()):
        return _FLAGS
    return _Flags(values.get(name, getattr(_FLAGS, name)) for name in _NAMES)
