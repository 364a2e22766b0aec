"""Where the listening socket comes from: handed over by the OS, or bound here.

A socket handed over by the service manager is used as it is: never re-bound,
re-listened or unlinked.  A socket bound here (standalone mode) lives in a
0700 directory with mode 0600, is guarded by a lock file so two servers never
fight over one path, and is removed on exit only if it is still ours.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import stat
import sys

from pyrust.errors import SocketInUse, StartupError
from pyrust.trust import directory_problem

SD_LISTEN_FDS_START = 3
#: The name of the socket in the launchd plist's ``Sockets`` dictionary and
#: systemd's ``FileDescriptorName=``.
SOCKET_NAME = "pyrust"
#: sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107


class Listener:
    """The listening socket and how it was obtained.

    ``source`` is ``"systemd"`` or ``"standalone"``; ``owned`` says whether
    pyrust bound the path itself and so must remove it on exit.
    """

    def __init__(self, sock: socket.socket, source: str, path: str, owned: bool,
                 lock_fd: int | None = None) -> None:
        self.sock = sock
        self.source = source
        self.path = path
        self.owned = owned
        self._lock_fd = lock_fd
        self._inode = os.stat(path).st_ino if owned else None

    def in_child(self) -> None:
        """In a forked worker: close the copy of the lock fd (the lock stays the
        supervisor's, whose own fd keeps it; a run must not inherit the fd)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        """Close the socket; unlink the path only if this process bound it and it is unchanged."""
        self.sock.close()
        if self.owned:
            try:
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def systemd_listener() -> Listener | None:
    """Return the socket systemd passed (``LISTEN_FDS``), or None if it passed none.

    The ``LISTEN_*`` variables are removed from the environment so programs
    and their subprocesses do not see them; the fd is made close-on-exec.
    Raise StartupError if what was passed is not a listening stream socket.
    """
    pid = os.environ.pop("LISTEN_PID", None)
    count = os.environ.pop("LISTEN_FDS", None)
    names = os.environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None or pid != str(os.getpid()):
        return None  # not for us: LISTEN_PID must name this very process
    try:
        fds = range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count))
    except ValueError:
        raise StartupError("LISTEN_FDS=%r is not a number" % count) from None
    if not fds:
        return None
    labels = names.split(":") if names else []
    # With several sockets, the one named "pyrust" (FileDescriptorName=) wins.
    fd = fds[labels.index(SOCKET_NAME)] if SOCKET_NAME in labels[:len(fds)] else fds[0]
    for other in fds:  # the others are not ours to keep open in every worker
        if other != fd:
            os.close(other)
    return _passed_listener(fd, "systemd")


def launchd_listener(lib: ctypes.CDLL | None = None) -> Listener | None:
    """Return the socket launchd passed (``launch_activate_socket``), or None.

    None when launchd did not start this process (``ESRCH``) or on systems
    without launchd.  ``lib`` stands in for libSystem in tests.
    Raise StartupError if launchd reports another error.
    """
    if lib is None:
        if sys.platform != "darwin":
            return None
        lib = ctypes.CDLL("/usr/lib/libSystem.dylib", use_errno=True)
    fds = ctypes.POINTER(ctypes.c_int)()
    count = ctypes.c_size_t(0)
    err = lib.launch_activate_socket(SOCKET_NAME.encode(), ctypes.pointer(fds),
                                     ctypes.pointer(count))
    if err == errno.ESRCH:
        return None  # not started by launchd
    if err:
        raise StartupError("launch_activate_socket(%r) failed: %s"
                           % (SOCKET_NAME, os.strerror(err)))
    try:
        received = [fds[i] for i in range(count.value)]
    finally:
        lib.free(fds)  # the array is ours to free, per launch_activate_socket(3)
    if not received:
        raise StartupError("launchd passed no socket named %r" % SOCKET_NAME)
    for extra in received[1:]:
        os.close(extra)
    return _passed_listener(received[0], "launchd")


def _passed_listener(fd: int, source: str) -> Listener:
    """Adopt a socket the service manager passed: close-on-exec, never re-bound.

    Raise StartupError unless it is a listening Unix stream socket.
    """
    os.set_inheritable(fd, False)  # programs' subprocesses must not inherit the listener
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or \
            not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise StartupError("the socket passed by %s (fd %d) is not a listening Unix "
                           "stream socket; use ListenStream= with Accept=no" % (source, fd))
    path = sock.getsockname()
    return Listener(sock, source, path if isinstance(path, str) else repr(path), owned=False)


def obtain_listener(path: str) -> Listener:
    """Return the listening socket: systemd's, else launchd's, else one bound at ``path``."""
    return systemd_listener() or launchd_listener() or bind_standalone(path)


def bind_standalone(path: str) -> Listener:
    """Bind and listen on ``path`` and return the Listener.

    Creates the parent directory with mode 0700 and the socket with mode 0600.
    A stale socket file (nothing listening) is replaced.  Raise SocketInUse if
    another server listens there, StartupError if the path is unusable.
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise StartupError("socket path is %d bytes, longer than the %d the OS allows: %s"
                           % (len(os.fsencode(path)), MAX_SOCKET_PATH, path))
    directory = os.path.dirname(path)
    if not os.path.lexists(directory):
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)  # another server may race us
        except OSError as exc:
            raise StartupError("cannot create socket directory %s: %s"
                               % (directory, exc.strerror)) from None
    _check_private_directory(directory)
    lock_fd = _lock(path + ".lock")
    try:
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket file is born 0600: no window at 0755
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        sock.listen(socket.SOMAXCONN)
        return Listener(sock, "standalone", path, owned=True, lock_fd=lock_fd)
    except OSError as exc:
        os.close(lock_fd)
        raise StartupError("cannot listen on %s: %s" % (path, exc.strerror)) from None
    except BaseException:
        os.close(lock_fd)
        raise


def _check_private_directory(directory: str) -> None:
    """Raise StartupError unless ``directory`` is a real directory only this user can enter."""
    problem = directory_problem(directory)
    if problem is not None:
        raise StartupError(problem)


def _lock(lock_path: str) -> int:
    """Take the exclusive lock every standalone server on this path holds; return its fd."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StartupError("cannot open lock file %s: %s" % (lock_path, exc.strerror)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SocketInUse("another pyrust server is already running on %s"
                          % lock_path[:-len(".lock")]) from None
    return fd


def _remove_stale(path: str) -> None:
    """Unlink ``path`` if it is a socket nobody listens on; raise if it is live or not a socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartupError("%s exists and is not a socket; move it away or choose another "
                           "path with --socket" % path)
    # The lock keeps other standalone servers out, but a service manager's
    # socket unit may own this path: only a refused connection proves it stale.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
    else:
        raise SocketInUse("a live socket already listens on %s (a socket unit or another "
                          "server owns it); not taking it over" % path)
    finally:
        probe.close()
    os.unlink(path)
