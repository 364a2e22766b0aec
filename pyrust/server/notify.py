"""Service-manager notifications (the ``sd_notify`` protocol).

The supervisor reports readiness and status to ``$NOTIFY_SOCKET``: one
datagram per message, ``KEY=value`` lines.  A leading ``@`` in the address
means Linux's abstract namespace.  Without ``$NOTIFY_SOCKET`` every call is a
no-op, so standalone servers need no special case.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("pyrust.notify")


class Notifier:
    """Sends notifications to the address taken from the environment at creation."""

    def __init__(self, address: str | None) -> None:
        if address and address[0] == "@":
            address = "\0" + address[1:]
        self.address = address or None

    @classmethod
    def from_environment(cls) -> "Notifier":
        """Return a Notifier for ``$NOTIFY_SOCKET``, removing the variable so
        that programs run by the workers and their subprocesses do not inherit it."""
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    def notify(self, message: str) -> bool:
        """Send ``message``; return whether it was sent.  Failures are logged, not raised."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode("utf-8"), self.address)
            return True
        except OSError as exc:
            log.warning("cannot notify the service manager at %r: %s", self.address, exc)
            return False
