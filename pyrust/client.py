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


class NotDelivered(ServiceUnavailable):
    """The server closed the connection without reading the whole request.

    The request did not run, so sending it again on a new connection is safe:
    that happens when a worker stops (restart, reload, idle exit) just as the
    request arrives.
    """


def execute(sock, code: bytes) -> "tuple[int, bytes]":
    """Send ``code`` (UTF-8) as one v1 request on ``sock``; return ``(status, output)``.

    Raise NotDelivered if the server closed the connection without reading
    the request (a reset, or a broken pipe while sending): it did not run.
    Raise ServiceUnavailable if it closed after reading it: it may have run.
    """
    try:
        sock.sendall(protocol.encode_request(code))
        return protocol.read_response(sock)
    except (BrokenPipeError, ConnectionResetError) as exc:
        # A Unix socket resets only when closed with unread data in it.
        raise NotDelivered("the service closed the connection without reading the request "
                           "(%s)" % exc.strerror) from None
    except (protocol.ConnectionClosed, OSError) as exc:
        raise ServiceUnavailable("the worker running the code died before it replied (it "
                                 "crashed, or was killed for ignoring its time limit; the "
                                 "service log says which), so the code may have run part way"
                                 ) from None


#: A request the server closed without reading never ran: send it again, at most this often.
DELIVERY_ATTEMPTS = 3


def request(connect_fn, code: bytes) -> "tuple[int, bytes]":
    """Run ``code`` on a connection from ``connect_fn()``; return ``(status, output)``.

    A request the server closed without reading (NotDelivered) is sent again
    on a new connection, up to DELIVERY_ATTEMPTS times; no request is ever
    sent twice once the server has read it.
    """
    for attempt in range(DELIVERY_ATTEMPTS):
        sock = connect_fn()
        try:
            return execute(sock, code)
        except NotDelivered:
            if attempt == DELIVERY_ATTEMPTS - 1:
                raise
        finally:
            sock.close()
    raise AssertionError("unreachable")


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
