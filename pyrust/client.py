"""Talk to a running service.  The ``pyrust`` command's hot path.

Only C-level modules and the package's leaf modules are imported here, so a
``pyrust -c`` call costs little more than the interpreter's own start-up.
"""

import _signal
import _socket

from pyrust import protocol
from pyrust.errors import ServiceUnavailable

_FDS = protocol.Struct("3i")
#: What the client sends on the connection when Ctrl-C is pressed during a run.
INTERRUPT = b"\x03"


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


def v1_request(code: bytes):
    """Return the message (header, payload, fds) of a v1 request for ``code``."""
    return protocol.HEADER.pack(len(code)), code, None


def extended_request(fields, fds=None):
    """Return the message of an extended request; ``fds`` (0, 1, 2) travel with it."""
    header, payload = protocol.encode_extended(fields)
    return header, payload, fds


def execute(sock, message, forward_interrupts: bool = False) -> "tuple[int, bytes]":
    """Send ``message`` on ``sock``; return the reply's ``(status, payload)``.

    With ``forward_interrupts``, Ctrl-C while waiting is sent to the server,
    which raises KeyboardInterrupt in the running code.  Raise NotDelivered
    if the server closed the connection without reading the request (a reset,
    or a broken pipe while sending): it did not run.  Raise
    ServiceUnavailable if it closed after reading it: it may have run.
    """
    header, payload, fds = message
    previous = None
    try:
        if fds is None:
            sock.sendall(header + payload)
        else:  # the fds ride on the payload, never on the header (see docs/protocol.md)
            sock.sendall(header)
            sent = sock.sendmsg([payload], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                             _FDS.pack(*fds))])
            if sent < len(payload):
                sock.sendall(payload[sent:])
        if forward_interrupts:
            previous = _signal.signal(_signal.SIGINT, lambda *_: sock.send(INTERRUPT))
        return protocol.read_response(sock)
    except (BrokenPipeError, ConnectionResetError) as exc:
        # A Unix socket resets only when closed with unread data in it.
        raise NotDelivered("the service closed the connection without reading the request "
                           "(%s)" % exc.strerror) from None
    except (protocol.ConnectionClosed, OSError):
        raise ServiceUnavailable("the worker running the code died before it replied (it "
                                 "crashed, or was killed for ignoring its time limit; the "
                                 "service log says which), so the code may have run part way"
                                 ) from None
    finally:
        if previous is not None:
            _signal.signal(_signal.SIGINT, previous)


#: A request the server closed without reading never ran: send it again, at most this often.
DELIVERY_ATTEMPTS = 3


def request(connect_fn, message, forward_interrupts: bool = False) -> "tuple[int, bytes]":
    """Send ``message`` on a connection from ``connect_fn()``; return ``(status, payload)``.

    A request the server closed without reading (NotDelivered) is sent again
    on a new connection, up to DELIVERY_ATTEMPTS times; no request is ever
    sent twice once the server has read it.  A bytes ``message`` is v1 code.
    """
    if isinstance(message, bytes):
        message = v1_request(message)
    for attempt in range(DELIVERY_ATTEMPTS):
        sock = connect_fn()
        try:
            return execute(sock, message, forward_interrupts)
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
        return execute(sock, v1_request(b""))[0] == protocol.OK
    except (ServiceUnavailable, OSError):
        return False
    finally:
        sock.close()
