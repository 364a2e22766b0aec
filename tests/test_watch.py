"""The watcher of preloaded modules: real files, real inotify, no sleeps.

inotify queues an event before the write's close, the rename or the unlink
returns, so every test checks right after the syscall.  Tests that apply to
both implementations run over both (``watcher_class``).
"""

import errno
import importlib
import importlib.machinery
import os
import select
import struct
import sys
import time

import pytest

from pyrust.server import watch
from pyrust.server.watch import (
    IN_CREATE, IN_ISDIR, IN_Q_OVERFLOW, PollingWatcher, Watcher, changed_since,
    modules_to_watch, open_watcher, parse_events,
)

TIMEOUT = 30.0
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
EXT = importlib.machinery.EXTENSION_SUFFIXES[0]


class Tree:
    """An environment on disk: ``early`` and ``later`` surround ``site`` on the
    search path; ``site`` holds package ``pkg`` (``pkg.mod``) and module ``single``."""

    def __init__(self, root):
        self.early, self.site, self.later = (root / n for n in ("early", "site", "later"))
        for directory in (self.early, self.site / "pkg", self.later):
            directory.mkdir(parents=True)
        self.scratch = root / "scratch"  # where new versions are written before os.replace
        self.scratch.mkdir()
        self.init = write(self.site / "pkg" / "__init__.py", "from . import mod\n")
        self.mod = write(self.site / "pkg" / "mod.py", "VALUE = 1\n")
        self.single = write(self.site / "single.py", "X = 1\n")
        self.files = {"pkg": str(self.init), "pkg.mod": str(self.mod), "single": str(self.single)}
        self.search_path = [str(self.early), str(self.site), str(self.later)]


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.fixture
def tree(tmp_path):
    return Tree(tmp_path)


@pytest.fixture(params=[pytest.param(Watcher, marks=linux_only), PollingWatcher],
                ids=["inotify", "polling"])
def watcher_class(request):
    return request.param


@pytest.fixture
def make(request):
    """Return a function creating a watcher that is closed after the test."""
    def make(cls, tree):
        watcher = cls(tree.files, tree.search_path)
        request.addfinalizer(watcher.close)
        return watcher
    return make


def test_an_edit_is_pending_before_anyone_reads_and_read_names_it(tree, watcher_class, make):
    watcher = make(watcher_class, tree)
    assert not watcher.pending()
    write(tree.mod, "VALUE = 2  # longer\n")
    later = time.time_ns() + 10**9
    os.utime(tree.mod, ns=(later, later))
    assert watcher.pending()
    assert watcher.pending()  # asking reads nothing
    assert watcher.read() == [str(tree.mod)]
    assert not watcher.pending() and watcher.read() == []
    write(tree.single, "X = 22\n")
    assert watcher.pending()
    assert watcher.read() == [str(tree.single)]


def test_a_replacement_by_rename_is_named(tree, watcher_class, make):
    watcher = make(watcher_class, tree)
    new = write(tree.scratch / "mod.py", "VALUE = 9\n")  # same size: only the inode differs
    os.replace(new, tree.mod)
    assert watcher.pending()
    assert watcher.read() == [str(tree.mod)]
    assert not watcher.pending()


def test_a_simulated_pip_upgrade_names_the_package_files_only(tree, watcher_class, make):
    old_info = tree.site / "pkg-1.0.dist-info"
    old_info.mkdir()
    write(old_info / "RECORD", "pkg/__init__.py,,\n")
    watcher = make(watcher_class, tree)
    # As pip does: new files written aside, moved over the old ones, metadata rewritten.
    for target, text in ((tree.init, "from . import mod  # 2.0\n"), (tree.mod, "VALUE = 2.0\n")):
        os.replace(write(tree.scratch / target.name, text), target)
    new_info = tree.site / "pkg-2.0.dist-info"
    new_info.mkdir()
    write(new_info / "RECORD", "pkg/__init__.py,,\n")
    os.remove(old_info / "RECORD")
    old_info.rmdir()
    assert watcher.pending()
    assert watcher.read() == sorted([str(tree.init), str(tree.mod)])
    assert not watcher.pending()


@pytest.mark.parametrize("name", ["single.py", "single" + EXT, "pkg/__init__.py"])
def test_a_module_appearing_earlier_on_the_path_is_named_as_shadowing(tree, watcher_class, make, name):
    (tree.early / "pkg").mkdir()  # a namespace portion: harmless until it gets an __init__
    watcher = make(watcher_class, tree)
    assert not watcher.pending()
    write(tree.early / name, "")
    assert watcher.pending()
    assert watcher.read() == [str(tree.early / name)]
    assert not watcher.pending()


def test_a_module_moved_in_earlier_on_the_path_is_named(tree, watcher_class, make):
    watcher = make(watcher_class, tree)
    os.replace(write(tree.scratch / "single.py", ""), tree.early / "single.py")
    assert watcher.read() == [str(tree.early / "single.py")]


def test_entries_later_on_the_path_or_unrelated_are_consumed_and_ignored(tree, watcher_class, make):
    watcher = make(watcher_class, tree)
    write(tree.later / "single.py", "")  # the site one still wins
    write(tree.early / "unrelated.py", "")
    write(tree.early / "single.py~", "")  # an editor's backup is not importable
    write(tree.site / "other.py", "")  # in a watched directory
    write(tree.site / "pkg" / "notes.txt", "")
    os.remove(tree.site / "other.py")
    (tree.site / "pkg" / "__pycache__").mkdir()
    # pending() may be True (inotify: events queued), but nothing is relevant.
    assert watcher.read() == []
    assert not watcher.pending()


def test_a_deleted_module_is_named(tree, watcher_class, make):
    watcher = make(watcher_class, tree)
    os.remove(tree.mod)
    assert watcher.pending()
    assert watcher.read() == [str(tree.mod)]


def test_a_symlinked_module_is_named_when_its_target_changes(tree, watcher_class, make):
    target = write(tree.scratch / "real_single.py", "X = 1\n")
    os.remove(tree.single)
    os.symlink(target, tree.single)
    watcher = make(watcher_class, tree)
    write(target, "X = 22\n")
    assert watcher.pending()
    assert watcher.read() == [str(tree.single)]


def test_a_package_directory_moved_away_names_its_files(tree, watcher_class, make):
    watcher = make(watcher_class, tree)
    os.rename(tree.site / "pkg", tree.scratch / "pkg")
    assert watcher.pending()
    assert watcher.read() == sorted([str(tree.init), str(tree.mod)])


def test_missing_search_path_entries_are_skipped_not_created(tree, watcher_class, make):
    tree.search_path[:0] = [str(tree.early / "absent"), str(tree.single)]  # nothing, a file
    watcher = make(watcher_class, tree)
    assert not (tree.early / "absent").exists()
    write(tree.early / "single.py", "")
    assert watcher.read() == [str(tree.early / "single.py")]


def test_a_closed_watcher_refuses_to_answer(tree, watcher_class, make):
    watcher = make(watcher_class, tree)
    watcher.close()
    for call in (watcher.pending, watcher.read):
        with pytest.raises(ValueError):
            call()
    watcher.close()  # twice is fine


# -- inotify only ---------------------------------------------------------------------

@linux_only
def test_the_fd_is_nonblocking_close_on_exec_and_read_never_blocks(tree, make):
    watcher = make(Watcher, tree)
    assert not os.get_inheritable(watcher.fileno())
    assert not os.get_blocking(watcher.fileno())
    assert watcher.read() == []  # nothing queued: returns at once


@linux_only
def test_an_edit_keeping_size_and_timestamps_is_named(tree, make):
    watcher = make(Watcher, tree)
    status = os.stat(tree.single)
    write(tree.single, "X = 2\n")  # polling cannot tell this from no change
    os.utime(tree.single, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert watcher.read() == [str(tree.single)]


@linux_only
def test_a_new_package_directory_or_extension_beside_a_module_is_named(tree, make):
    watcher = make(Watcher, tree)
    (tree.early / "single").mkdir()  # its __init__.py cannot be seen from here: name the directory
    write(tree.site / "pkg" / ("mod" + EXT), "")  # imported instead of mod.py
    assert watcher.read() == sorted([str(tree.early / "single"), str(tree.site / "pkg" / ("mod" + EXT))])


@linux_only
def test_a_forked_child_sees_the_event_and_leaves_it_to_the_parent(tree, make):
    watcher = make(Watcher, tree)
    write(tree.mod, "VALUE = 3\n")
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: asks, never reads
        try:
            os.write(writable, b"1" if watcher.pending() else b"0")
        finally:
            os._exit(0)
    os.close(writable)
    try:
        assert select.select([readable], [], [], TIMEOUT)[0], "child did not answer"
        assert os.read(readable, 1) == b"1"
    finally:
        os.close(readable)
        os.waitpid(pid, 0)
    assert watcher.pending()
    assert watcher.read() == [str(tree.mod)]
    assert not watcher.pending()


@linux_only
def test_a_worker_sees_pending_until_the_template_reads(tree, make):
    watcher = make(Watcher, tree)
    readable, writable = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # forked before the change, as a spare worker is
        try:
            for _ in range(3):  # a run starts each time the test says go
                os.write(writable, b"1" if watcher.pending() else b"0")
                if select.select([go_read], [], [], TIMEOUT)[0]:
                    os.read(go_read, 1)
        finally:
            os._exit(0)

    def answer():
        assert select.select([readable], [], [], TIMEOUT)[0], "child did not answer"
        return os.read(readable, 1)

    try:
        assert answer() == b"0"
        write(tree.mod, "VALUE = 4\n")
        os.write(go_write, b"x")
        assert answer() == b"1"  # the change finished before the run asked
        assert watcher.read() == [str(tree.mod)]
        os.write(go_write, b"x")
        assert answer() == b"0"  # consumed; the template's stale flag covers it from here
        os.write(go_write, b"x")
    finally:
        for fd in (readable, writable, go_read, go_write):
            os.close(fd)
        os.waitpid(pid, 0)


def event(wd, mask, name=b"", pad=0):
    name = name + b"\0" * pad if name or pad else b""
    return struct.pack("iIII", wd, mask, 0, len(name)) + name


def test_the_parser_reads_several_events_and_padded_names():
    buffer = (event(1, IN_CREATE, b"single.py", pad=7) + event(-1, IN_Q_OVERFLOW)
              + event(2, IN_CREATE | IN_ISDIR, b"pkg", pad=13))
    assert parse_events(buffer) == [(1, IN_CREATE, 0, "single.py"), (-1, IN_Q_OVERFLOW, 0, ""),
                                    (2, IN_CREATE | IN_ISDIR, 0, "pkg")]
    with pytest.raises(ValueError):
        parse_events(buffer[:-3])


@linux_only
def test_an_overflow_names_every_watched_file(tree, make):
    watcher = make(Watcher, tree)
    assert watcher._changes(parse_events(event(-1, IN_Q_OVERFLOW))) == set(tree.files.values())


@linux_only
def test_a_real_queue_overflow_names_every_watched_file(tree, make):
    limit = int(open("/proc/sys/fs/inotify/max_queued_events").read())
    if limit > 100_000:
        pytest.skip("max_queued_events is %d: too many files to overflow it" % limit)
    junk = [write(tree.site / name, "") for name in ("junk-a", "junk-b")]
    watcher = make(Watcher, tree)
    for i in range(limit + 1):  # alternate files: the kernel merges only repeated events
        os.utime(junk[i % 2])
    assert watcher.read() == sorted(tree.files.values())


@linux_only
def test_open_watcher_falls_back_to_polling_when_inotify_fails(tree, monkeypatch):
    with open_watcher(tree.files, tree.search_path) as watcher:
        assert isinstance(watcher, Watcher)

    def refuse():
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(watch, "_inotify_init", refuse)
    with open_watcher(tree.files, tree.search_path) as watcher:
        assert isinstance(watcher, PollingWatcher) and watcher.fileno() == -1
        os.remove(tree.single)
        assert watcher.pending() and watcher.read() == [str(tree.single)]


# -- changed_since and modules_to_watch -----------------------------------------------

def test_changed_since_names_what_changed_between_preload_and_watch(tree):
    assert changed_since(tree.files, tree.search_path, time.time_ns() + 10**10) == []
    since = time.time_ns()
    write(tree.mod, "VALUE = 5\n")
    os.remove(tree.single)
    write(tree.early / "pkg.py", "")
    write(tree.later / "single.py", "")  # not shadowing
    changed = set(changed_since(tree.files, tree.search_path, since))
    expected = {str(tree.mod), str(tree.single), str(tree.early / "pkg.py")}
    # pkg/__init__.py was written just before ``since``, within the clock's
    # slack: naming it too errs on the safe side.
    assert expected <= changed <= expected | {str(tree.init)}


@pytest.fixture
def imported(tmp_path):
    """Import package ``wpkg`` (with ``wpkg.sub``) and namespace package ``wns``
    (with ``wns.part``) from ``tmp_path/lib``; return ``(names before, lib)``."""
    lib = tmp_path / "lib"
    (lib / "wpkg").mkdir(parents=True)
    (lib / "wns").mkdir()
    write(lib / "wpkg" / "__init__.py", "from . import sub\n")
    write(lib / "wpkg" / "sub.py", "")
    write(lib / "wns" / "part.py", "")
    before = set(sys.modules)
    sys.path.insert(0, str(lib))
    try:
        importlib.import_module("wpkg")
        importlib.import_module("wns.part")
        yield before, lib
    finally:
        sys.path.remove(str(lib))
        for name in set(sys.modules) - before:
            del sys.modules[name]


def test_modules_to_watch_names_the_files_a_real_import_loaded(imported):
    before, lib = imported
    assert modules_to_watch(before, sys.modules) == {
        "wpkg": str(lib / "wpkg" / "__init__.py"),
        "wpkg.sub": str(lib / "wpkg" / "sub.py"),
        "wns.part": str(lib / "wns" / "part.py"),
    }


def test_modules_to_watch_skips_builtin_frozen_namespace_and_missing(tmp_path):
    gone = type(sys)("gone")
    gone.__file__ = str(tmp_path / "gone.py")
    modules = {"sys": sys, "gone": gone, "absent": None, "wns": type(sys)("wns"),
               "os": sys.modules["os"], "kept": watch}
    assert modules_to_watch({"kept"}, modules) == (
        {} if sys.modules["os"].__spec__.origin == "frozen" else {"os": sys.modules["os"].__file__})


def test_a_real_import_is_watched_for_edits_and_shadowing(imported, tmp_path, watcher_class):
    before, lib = imported
    early = tmp_path / "early"
    early.mkdir()
    files = modules_to_watch(before, sys.modules)
    with watcher_class(files, [str(early), str(lib)] + sys.path) as watcher:
        write(lib / "wpkg" / "sub.py", "CHANGED = True\n")
        write(early / "wns.py", "")  # a module wins over a namespace package
        assert watcher.pending()
        assert watcher.read() == sorted([str(lib / "wpkg" / "sub.py"), str(early / "wns.py")])
