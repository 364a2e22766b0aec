"""Service-manager notifications (the ``sd_notify`` protocol).

The supervisor reports readiness, status and watchdog pings to
``$NOTIFY_SOCKET``: one datagram per message, ``KEY=value`` lines.  A leading
``@`` in the address means Linux's abstract namespace.  Without
``$NOTIFY_SOCKET`` every call is a no-op, so standalone servers need no
special case.  Neither do servers whose listener went away for good (the
temporary socket ``pyrust --daemon`` listens on until ``READY=1``): the first
send that finds it gone says so once and makes the notifier inactive.

Sending never waits: a manager that does not read its socket (a full queue,
ten datagrams by default on Linux) loses the message rather than hanging the
service, which would otherwise stop serving in the middle of a ``STATUS=``
update.  So a few lines of non-blocking socket code send the messages; the
``systemd`` binding (package systemd-python), whose ``sd_notify`` blocks,
sends them only when asked for by name.
"""

from __future__ import annotations

import errno
import logging
import os
import socket

# For mypy only, which takes any name TYPE_CHECKING as true (python never runs
# this block: the server imports no typing).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

log = logging.getLogger("pyrust.notify")

#: Send errors meaning nobody will ever listen at the address again: the
#: socket file is gone, or nothing is bound to it any more.
LISTENER_GONE = (errno.ENOENT, errno.ECONNREFUSED)


def _binding_sender() -> Callable[[str, str], None] | None:
    """Return a function sending with systemd-python's ``sd_notify``, or None without it."""
    try:
        from systemd import daemon
    except ImportError:
        return None

    def send(address: str, message: str) -> None:
        # sd_notify reads the address from the environment, which pyrust keeps
        # clean for the programs it runs: set it only for the call.
        os.environ["NOTIFY_SOCKET"] = address
        try:
            if not daemon.notify(message):
                raise OSError("sd_notify failed")
        finally:
            del os.environ["NOTIFY_SOCKET"]

    return send


def _socket_sender(address: str, message: str) -> None:
    """Send ``message`` to ``address`` with a plain datagram socket, without waiting;
    raise BlockingIOError if the listener's queue is full."""
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                       | socket.SOCK_NONBLOCK) as sock:
        sock.sendto(message.encode("utf-8"), target)


class Notifier:
    """Sends notifications to the service manager that started this process, if any."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None,
                 backend: str = "auto") -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec
        sender = _binding_sender() if backend == "systemd-python" else None
        if backend == "systemd-python" and sender is None:
            raise ImportError("systemd-python is not installed")
        self.backend = "systemd-python" if sender else "socket"
        self._send = sender or _socket_sender

    @classmethod
    def from_environment(cls, backend: str = "auto") -> "Notifier":
        """Return a Notifier for ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``.

        The variables are removed from the environment so the programs the
        workers run, and their subprocesses, do not inherit them.  The
        watchdog applies only if ``$WATCHDOG_PID`` is unset or names this process.
        """
        address = os.environ.pop("NOTIFY_SOCKET", None)
        usec = os.environ.pop("WATCHDOG_USEC", None)
        pid = os.environ.pop("WATCHDOG_PID", None)
        watchdog = None
        if usec and usec.isdigit() and int(usec) > 0 and pid in (None, str(os.getpid())):
            watchdog = int(usec)
        return cls(address, watchdog, backend)

    @property
    def active(self) -> bool:
        """Whether a service manager listens."""
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Return seconds between watchdog pings (a third of the timeout), or None."""
        if self.watchdog_usec is None or self.address is None:
            return None
        return self.watchdog_usec / 3e6

    def notify(self, message: str) -> bool:
        """Send ``message``; return whether it was sent.  Failures are logged, not raised.

        If the listener is gone for good (LISTENER_GONE) the notifier becomes
        inactive: no further message is sent, and no watchdog is due.
        """
        if self.address is None:
            return False
        try:
            self._send(self.address, message)
            return True
        except BlockingIOError:
            log.debug("the service manager does not read its notify socket %r: %r dropped",
                      self.address, message)
            return False
        except OSError as exc:
            if exc.errno in LISTENER_GONE:
                log.info("the service manager's notify socket %s is gone; no more notifications",
                         self.address)
                self.address = None
            else:
                log.warning("cannot notify the service manager at %r: %s", self.address, exc)
            return False
