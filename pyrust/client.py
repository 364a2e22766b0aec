"""Talk to a running service.  The ``pyrust`` command's hot path.

Only C-level modules and the package's leaf modules are imported here, so a
``pyrust -c`` call costs little more than the interpreter's own start-up.
"""

import _socket

from pyrust import protocol
from pyrust.errors import ServiceUnavailable


def connect(path: str):
    """Return a socket connected to the service at ``path``.

    Raise ServiceUnavailable, with a one-line reason, if nothing accepts there.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise ServiceUnavailable("no pyrust service at %s (%s)" % (path, exc.strerror)) from None
    return sock


def execute(sock, code: bytes) -> "tuple[int, bytes]":
    """Send ``code`` (UTF-8) as one v1 request on ``sock``; return ``(status, output)``.

    Raise ServiceUnavailable if the service closes the connection before the
    reply is whole (the request may not have run; nothing is retried).
    """
    try:
        sock.sendall(protocol.encode_request(code))
        return protocol.read_response(sock)
    except (protocol.ConnectionClosed, OSError) as exc:
        raise ServiceUnavailable("the service closed the connection before replying (%s)"
                                 % (getattr(exc, "strerror", None) or exc)) from None


def is_serving(path: str) -> bool:
    """Return whether a service at ``path`` answers an empty request."""
    try:
        sock = connect(path)
    except ServiceUnavailable:
        return False
    try:
        sock.settimeout(10.0)
        return execute(sock, b"")[0] == protocol.OK
    except (ServiceUnavailable, OSError):
        return False
    finally:
        sock.close()
