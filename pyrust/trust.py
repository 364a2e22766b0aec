"""Who may stand at either end of the socket.  A leaf module: it imports nothing
from the package, and only C-level modules at import time (the client's hot
path uses it).

Both ends check the other: the server refuses connections from other users,
and the client refuses a socket in a directory someone else controls, or a
server that another user runs, before it sends anything (a program, its
environment and its terminal are the user's secrets).
"""

import _socket
import os
import stat
from _struct import Struct

# Typing-only imports: mypy takes any name TYPE_CHECKING as true, python never
# runs this block, so the client's hot path imports no ctypes.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes

_UCRED = Struct("3i")  # Linux struct ucred: pid, uid, gid


def peer_uid(sock: "_socket.socket", libc: "ctypes.CDLL | None" = None) -> int:
    """Return the uid of the process at the other end of the Unix socket ``sock``.

    On the server's side that is the client; on the client's side, the process
    that called ``listen()`` (for a socket unit, the user's service manager).
    Raise OSError if the OS cannot say.
    """
    return peer_credentials(sock, libc)[1]


def peer_credentials(sock: "_socket.socket",
                     libc: "ctypes.CDLL | None" = None) -> "tuple[int, int]":
    """Return ``(pid, uid)`` of the process at the other end of the Unix socket ``sock``.

    Linux: ``SO_PEERCRED``.  macOS and the BSDs: ``getpeereid(2)``, which
    tells no pid (0).  ``libc`` stands in for the C library in tests.
    Raise OSError if the OS cannot say.
    """
    if libc is None and hasattr(_socket, "SO_PEERCRED"):
        pid, uid, _ = _UCRED.unpack(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED,
                                                    _UCRED.size))
        return pid, uid
    import ctypes
    import ctypes.util

    if libc is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
    if libc.getpeereid(sock.fileno(), ctypes.byref(uid), ctypes.byref(gid)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "getpeereid: %s" % os.strerror(err))
    return 0, uid.value


def describe_uid(uid: int) -> str:
    """Return ``uid`` with its user name where one exists: 'uid 65534 (nobody)'."""
    try:
        import pwd

        return "uid %d (%s)" % (uid, pwd.getpwuid(uid).pw_name)
    except (ImportError, KeyError):
        return "uid %d" % uid


def directory_problem(directory: str) -> "str | None":
    """Return why ``directory`` may not hold this user's socket, with the fix; None if it may.

    It may when it is a real directory (not a symbolic link) that this user
    owns and that is closed to group and others, so nobody else can put a
    socket there or replace ours.  Raise FileNotFoundError if it does not exist.
    """
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode):
        return ("socket directory %s is a symbolic link; remove it (pyrust creates the "
                "directory itself) or choose another --socket" % directory)
    if not stat.S_ISDIR(st.st_mode):
        return ("socket directory %s is not a directory; move it away or choose another "
                "--socket" % directory)
    if st.st_uid != os.getuid():
        return ("socket directory %s belongs to %s, not to you (uid %d), so someone else "
                "controls what listens there; choose another --socket (or set "
                "$XDG_RUNTIME_DIR), and have an administrator remove it"
                % (directory, describe_uid(st.st_uid), os.getuid()))
    if st.st_mode & 0o077:
        return ("socket directory %s is open to other users (mode %03o); run: chmod 700 %s"
                % (directory, stat.S_IMODE(st.st_mode), directory))
    return None


def server_problem(sock: "_socket.socket") -> "str | None":
    """Return why the server at the other end of ``sock`` is not to be trusted; None if it is.

    Trusted means: it runs as this very user (root's service for root only).
    """
    try:
        uid = peer_uid(sock)
    except OSError as exc:
        return "cannot tell who runs the server listening there (%s)" % exc.strerror
    if uid == os.getuid():
        return None
    return ("the server listening there runs as %s, not as you (uid %d); nothing was sent "
            "to it. Stop that server, or choose another --socket"
            % (describe_uid(uid), os.getuid()))
