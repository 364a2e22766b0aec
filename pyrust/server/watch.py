"""Notice when a preloaded module's code changes on disk.

The template creates a watcher after preloading; the workers it forks inherit
its fd.  A worker asks :meth:`Watcher.pending` at the start of every run (one
``poll`` with a zero timeout, which reads nothing); only the template calls
:meth:`Watcher.read`, which consumes the queued events and names the changes
that matter.  A reader in a worker would steal the template's events.

What counts as a change of a preloaded module:

1. its file is written and closed, replaced (``os.replace``, as editors and
   pip do), deleted, renamed away, or has its attributes changed;
2. an entry appears that would now be imported in its place: ``T.py``, ``T/``,
   ``T.so``, ``T.<tag>.so`` or ``T.pyd`` for a top-level name ``T`` in a
   search-path directory before the one ``T`` was found in (or ``__init__.py``
   in an existing ``T/`` there, which until then was only a namespace portion).

On Linux :class:`Watcher` uses inotify on the containing directories, the
only kind of watch that survives a file being replaced by rename.  Elsewhere,
or when inotify fails (no more watches or instances), :class:`PollingWatcher`
compares ``stat`` results against a snapshot instead.  :func:`open_watcher`
picks one.  Neither sees a change made between the preload and the watcher's
creation; :func:`changed_since` closes that gap.

Not seen: a write whose fd is still open (or through ``mmap``), a new
directory or ``.pth`` file that changes the search path, a swapped symlink
above a watched directory, and files inside zip archives.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.machinery
import logging
import os
import select
import struct
import sys
from dataclasses import dataclass, field
from typing import AbstractSet, Iterator, Mapping, NamedTuple, Sequence, TypeVar, Union

log = logging.getLogger("pyrust.watch")

# <sys/inotify.h>
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_EXCL_UNLINK = 0x04000000
IN_MASK_ADD = 0x20000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: Events in a directory holding watched files.  The *_SELF events cover the
#: directory itself being removed or renamed away (``mv pkg /tmp``).
FILE_DIR_MASK = (IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM
                 | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF)
#: Events in a directory where only a new, shadowing entry matters.
SHADOW_DIR_MASK = IN_CREATE | IN_MOVED_TO
#: The watch (and every file under it) is gone.
WATCH_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED

EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event without name[]
READ_SIZE = 64 * 1024  # many events per read; one event is at most 16 + NAME_MAX + 1 bytes

#: File times come from the kernel's coarse clock, up to one tick (1-10 ms)
#: behind time.time_ns(); changed_since() allows for two ticks.
TIMESTAMP_SLACK_NS = 20_000_000


def modules_to_watch(names_before: AbstractSet[str],
                     modules: Mapping[str, object]) -> dict[str, str]:
    """Return ``{module name: absolute file path}`` of the modules in ``modules``
    (``sys.modules`` after preloading) that are not in ``names_before`` and were
    loaded from a file that exists: not built-in or frozen modules, namespace
    packages (no ``__file__``), nor files inside a zip or already deleted."""
    found = {}
    for name, module in list(modules.items()):
        if name in names_before or module is None:
            continue
        spec = getattr(module, "__spec__", None)
        if getattr(spec, "origin", None) in ("built-in", "frozen"):
            continue  # a frozen module's __file__ names source it was not loaded from
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and os.path.isfile(path):
            found[name] = os.path.abspath(path)
    return found


@dataclass
class _Directory:
    """What matters in one watched directory."""
    files: dict = field(default_factory=dict)   # entry name -> path reported when it changes
    stems: set = field(default_factory=set)     # a new importable entry with this stem shadows
    siblings: set = field(default_factory=set)  # stems of watched files (inotify only, see _plan)


def _plan(files: Mapping[str, str], search_path: Sequence[str]) -> dict[str, _Directory]:
    """Return ``{directory: what matters in it}`` for ``files`` and ``search_path``."""
    plan: dict[str, _Directory] = {}
    for path in files.values():
        # For a symlinked file, edits reach the target: watch both names.
        for variant in {path, os.path.realpath(path)}:
            directory, name = os.path.split(variant)
            entry = plan.setdefault(directory, _Directory())
            entry.files[name] = path
            stem = name.partition(".")[0]
            if stem != "__init__":
                # mod.<tag>.so or mod/ built next to mod.py is imported instead of
                # it; free to notice with inotify, five stats a file when polling.
                entry.siblings.add(stem)
    for directory, stem in _shadowing(files, search_path):
        plan.setdefault(directory, _Directory()).stems.add(stem)
    return plan


def _shadowing(files: Mapping[str, str], search_path: Sequence[str]) -> Iterator[tuple[str, str]]:
    """Yield ``(directory, stem)``: an importable ``stem`` appearing in
    ``directory`` would be imported instead of a preloaded top-level module."""
    entries = [os.path.abspath(entry or os.curdir) for entry in search_path]
    real = [os.path.realpath(entry) for entry in entries]
    roots: dict[str, str] = {}
    for name in sorted(files, key=lambda n: n.count(".")):  # a package before its submodules
        top = name.partition(".")[0]
        if top not in roots:
            root = _search_root(name, files[name])
            if root is not None:
                roots[top] = root
    for top, root in roots.items():
        try:
            index = real.index(os.path.realpath(root))
        except ValueError:
            continue  # found outside the search path (a tweaked __path__): nothing shadows it
        for earlier in entries[:index]:
            if not os.path.isdir(earlier):
                continue  # never created here: a new directory on the path is out of scope
            yield earlier, top
            portion = os.path.join(earlier, top)
            if os.path.isdir(portion):  # a namespace portion until an __init__ appears in it
                yield portion, "__init__"


def _search_root(name: str, path: str) -> str | None:
    """Return the search-path directory module ``name`` was found in, judging by
    its file ``path``, or None if the path does not fit the name (an alias such as
    ``os.path``)."""
    levels = name.count(".") + (1 if os.path.basename(path).startswith("__init__.") else 0)
    root = os.path.dirname(path)
    for _ in range(levels):
        root = os.path.dirname(root)
    first = os.path.relpath(path, root).split(os.sep)[0]
    return root if first.partition(".")[0] == name.partition(".")[0] else None


def _importable_stem(name: str, is_dir: bool) -> str | None:
    """Return the module name directory entry ``name`` would import as, or None."""
    if is_dir:
        return name if "." not in name else None
    stem, _, suffix = name.partition(".")
    tagged = suffix.endswith((".so", ".pyd")) and suffix.count(".") == 1  # T.abi3.so
    return stem if suffix in ("py", "so", "pyd") or tagged else None


def _candidate_paths(plan: Mapping[str, _Directory]) -> list[str]:
    """Return the paths whose appearance would shadow a preloaded module, for
    this interpreter's suffixes (what polling and :func:`changed_since` stat)."""
    suffixes = [".py"] + importlib.machinery.EXTENSION_SUFFIXES
    paths: set[str] = set()
    for directory, entry in plan.items():
        for stem in entry.stems:
            base = os.path.join(directory, stem)
            paths.update(base + suffix for suffix in suffixes)
            paths.add(os.path.join(base, "__init__.py"))
    return sorted(paths)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def changed_since(files: Mapping[str, str], search_path: Sequence[str], since_ns: int) -> list[str]:
    """Return, sorted, the watched files that are missing or changed at or
    after ``since_ns`` (``time.time_ns()`` taken before the preload), and the
    shadowing candidates that appeared since then.

    Call it right after creating the watcher: the preload saw what changed
    before ``since_ns``, the watcher sees what changes after its creation, this
    names what changed in between.  Clock slack makes it err towards naming a
    file (a needless rebuild); a network file system's skewed clock can hide one.
    """
    limit = since_ns - TIMESTAMP_SLACK_NS
    changed = []
    for path in sorted(set(files.values())):
        status = _stat(path)
        if status is None or status.st_ctime_ns >= limit:
            changed.append(path)
    for path in _candidate_paths(_plan(files, search_path)):
        status = _stat(path)
        if status is not None and status.st_ctime_ns >= limit:
            changed.append(path)
    return sorted(changed)


class Event(NamedTuple):
    """One ``struct inotify_event``."""
    wd: int
    mask: int
    cookie: int
    name: str


def parse_events(buffer: bytes) -> list[Event]:
    """Return the events in ``buffer`` (what one ``read`` of an inotify fd gave).
    Raise ValueError if it ends inside an event (the kernel never splits one)."""
    events = []
    offset = 0
    while offset < len(buffer):
        if offset + EVENT_HEADER.size > len(buffer):
            raise ValueError("inotify buffer ends inside an event header")
        wd, mask, cookie, length = EVENT_HEADER.unpack_from(buffer, offset)
        offset += EVENT_HEADER.size
        if offset + length > len(buffer):
            raise ValueError("inotify buffer ends inside an event name")
        name = buffer[offset:offset + length].split(b"\0", 1)[0]  # NUL-padded
        offset += length
        events.append(Event(wd, mask, cookie, os.fsdecode(name)))
    return events


_libc: ctypes.CDLL | None = None


def _inotify_libc() -> ctypes.CDLL:
    """Return the C library with its inotify functions declared, loaded on first
    use.  Raise OSError if it has no inotify."""
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "inotify_init1"):
            raise OSError(errno.ENOSYS, "no inotify in this C library")
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        _libc = libc
    return _libc


def _inotify_init() -> int:
    """Return a new non-blocking, close-on-exec inotify fd.  Raise OSError if
    this system has no inotify or refuses another instance."""
    fd = _inotify_libc().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, "inotify_init1: " + os.strerror(code))
    return fd


_Self = TypeVar("_Self", bound="_Closing")


class _Closing:
    """A context manager that calls :meth:`close` on exit."""

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class Watcher(_Closing):
    """Watches preloaded files and their shadowing candidates with Linux inotify.

    ``files`` is :func:`modules_to_watch`'s answer, ``search_path`` the
    ``sys.path`` the modules were imported with.  Raise OSError if inotify is
    unavailable or a watch cannot be added (e.g. ENOSPC: out of watches); search
    path entries that do not exist or are not directories are skipped.

    The fd is close-on-exec and survives ``fork``: every copy shares one event
    queue, so only one process (the template) may call :meth:`read`.
    """

    def __init__(self, files: Mapping[str, str], search_path: Sequence[str]) -> None:
        self._files = sorted(set(files.values()))
        self._dirs: dict[int, list[tuple[str, _Directory]]] = {}
        self._fd = _inotify_init()
        try:
            for directory, entry in _plan(files, search_path).items():
                self._add(directory, entry)
        except BaseException:
            self.close()
            raise
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)

    def _add(self, directory: str, entry: _Directory) -> None:
        mask = FILE_DIR_MASK if entry.files else SHADOW_DIR_MASK
        # IN_MASK_ADD: two paths of one directory (a symlink) share a watch.
        mask |= IN_MASK_ADD | IN_ONLYDIR | IN_EXCL_UNLINK
        wd = _inotify_libc().inotify_add_watch(self._fd, os.fsencode(directory), mask)
        if wd < 0:
            code = ctypes.get_errno()
            gone = code in (errno.ENOENT, errno.ENOTDIR)
            if gone or (code == errno.EACCES and not entry.files):
                # Nothing can be imported from it; a file already gone is
                # changed_since()'s to report.
                return
            raise OSError(code, "inotify_add_watch %s: %s" % (directory, os.strerror(code)))
        self._dirs.setdefault(wd, []).append((directory, entry))

    def fileno(self) -> int:
        """Return the inotify fd: readable while events are queued."""
        return self._fd

    def pending(self) -> bool:
        """Return True if any event is queued, relevant or not (one ``poll``
        with a zero timeout; reads nothing, so the template still gets every
        event).  Raise ValueError if closed.

        Once a change's syscall has returned (the write's ``close``, the
        ``rename``), this is True in every process sharing the fd until
        :meth:`read` consumes the event."""
        if self._fd < 0:
            raise ValueError("watcher is closed")
        return bool(self._poll.poll(0))

    def read(self) -> list[str]:
        """Consume every queued event; return the sorted paths of relevant
        changes (``[]`` if none: events about other files are dropped).

        After a queue overflow every watched file is named: any of them may
        have changed.  Never blocks.  Raise ValueError if closed."""
        if self._fd < 0:
            raise ValueError("watcher is closed")
        changed: set[str] = set()
        while True:
            try:
                buffer = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                break
            changed.update(self._changes(parse_events(buffer)))
        return sorted(changed)

    def _changes(self, events: Sequence[Event]) -> set[str]:
        """Return the paths that ``events`` say changed."""
        changed: set[str] = set()
        for event in events:
            if event.mask & IN_Q_OVERFLOW:
                changed.update(self._files)
                continue
            for directory, entry in self._dirs.get(event.wd, ()):
                changed.update(_relevant(directory, entry, event))
        return changed

    def close(self) -> None:
        """Close this process's copy of the fd (others keep theirs)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _relevant(directory: str, entry: _Directory, event: Event) -> list[str]:
    """Return the paths ``event`` in ``directory`` changed (usually none or one)."""
    if event.mask & WATCH_GONE:
        return list(entry.files.values())
    if event.name in entry.files:
        return [entry.files[event.name]]
    if event.mask & SHADOW_DIR_MASK:  # a new entry
        stem = _importable_stem(event.name, bool(event.mask & IN_ISDIR))
        if stem is not None and (stem in entry.stems or stem in entry.siblings):
            return [os.path.join(directory, event.name)]
    return []


class PollingWatcher(_Closing):
    """The same contract as :class:`Watcher` without inotify (macOS, or inotify
    refused): compares ``stat`` of the watched files and of the paths that
    would shadow them (``T.py``, ``T/__init__.py``, ``T`` + this interpreter's
    extension suffixes) against a snapshot.

    :meth:`pending` costs one ``stat`` per path (a few microseconds each; it
    stops at the first difference) instead of one ``poll``.  It misses an
    in-place edit that keeps the size and lands within one timestamp tick of
    the previous change (1-10 ms on Linux, whose file times come from a coarse
    clock), and ``mod.<tag>.so`` or ``mod/`` appearing beside ``mod.py``.
    Every process has its own snapshot; :meth:`read` renews only the caller's.
    """

    def __init__(self, files: Mapping[str, str], search_path: Sequence[str]) -> None:
        self._paths = sorted(set(files.values()))
        self._paths += _candidate_paths(_plan(files, search_path))
        self._snapshot: dict[str, tuple | None] | None = self._take()

    def _take(self) -> dict[str, tuple | None]:
        return {path: _status_key(path) for path in self._paths}

    def fileno(self) -> int:
        """Return -1: there is no fd to wait on; call :meth:`pending` on a timer."""
        return -1

    def pending(self) -> bool:
        """Return True if a watched path differs from the snapshot.  Raise
        ValueError if closed."""
        if self._snapshot is None:
            raise ValueError("watcher is closed")
        return any(_status_key(path) != key for path, key in self._snapshot.items())

    def read(self) -> list[str]:
        """Return the sorted paths that differ from the snapshot, and take a new
        one.  Raise ValueError if closed."""
        if self._snapshot is None:
            raise ValueError("watcher is closed")
        fresh = self._take()
        changed = sorted(path for path, key in fresh.items() if self._snapshot[path] != key)
        self._snapshot = fresh
        return changed

    def close(self) -> None:
        """Drop the snapshot: nothing is watched any more."""
        self._snapshot = None


def _status_key(path: str) -> tuple | None:
    """Return what tells one version of ``path`` from another, None if it is
    missing.  The ctime too: tools that keep the mtime (``cp -p``, tar) change it."""
    status = _stat(path)
    if status is None:
        return None
    return status.st_mtime_ns, status.st_ctime_ns, status.st_size, status.st_ino


AnyWatcher = Union[Watcher, PollingWatcher]


def open_watcher(files: Mapping[str, str], search_path: Sequence[str]) -> AnyWatcher:
    """Return an inotify :class:`Watcher` on Linux, else (or if inotify fails,
    which is logged) a :class:`PollingWatcher`."""
    if sys.platform.startswith("linux"):
        try:
            return Watcher(files, search_path)
        except OSError as exc:
            log.warning("cannot watch the preloaded modules with inotify (%s); "
                        "polling their files instead", exc)
    return PollingWatcher(files, search_path)

