"""Talk to a running service.  The ``pyrust`` command's hot path.

Only C-level modules and the package's leaf modules are imported here, so a
``pyrust -c`` call costs little more than the interpreter's own start-up.
"""

import _signal
import _socket

from pyrust import environment, ops, protocol, trust
from pyrust.errors import PyrustError, ServiceUnavailable, UntrustedService

MYPY = False
if MYPY:  # for the type checker only: the client imports no typing at run time
    from types import FrameType
    from typing import Callable, Optional, Sequence, Tuple, Union

    from pyrust.environment import Environment

    Socket = _socket.socket
    #: A request as sent: (header, payload, the fds attached to the payload or None).
    Message = Tuple[bytes, bytes, Optional[Sequence[int]]]
    Reply = Tuple[int, bytes]

#: What the client sends on the connection when Ctrl-C is pressed during a run.
INTERRUPT = b"\x03"


def connect(path: str) -> "Socket":
    """Return a socket connected to the service at ``path``, verified as the user's own.

    Raise ServiceUnavailable, with a one-line reason, if nothing accepts there.
    Raise UntrustedService, before anything is sent, if the socket's directory
    is not private to this user or the server runs as another user.
    """
    directory = path.rpartition("/")[0] or "/"
    try:
        problem = trust.directory_problem(directory)
    except OSError as exc:
        raise ServiceUnavailable("no pyrust service at %s (%s)" % (path, exc.strerror)) from None
    if problem is not None:
        raise UntrustedService("refusing %s: %s" % (path, problem))
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
        problem = trust.server_problem(sock)
    except OSError as exc:
        sock.close()
        raise ServiceUnavailable("no pyrust service at %s (%s)" % (path, exc.strerror)) from None
    if problem is not None:
        sock.close()
        raise UntrustedService("refusing %s: %s" % (path, problem))
    return sock


class NotDelivered(ServiceUnavailable):
    """The server closed the connection without reading the whole request.

    The request did not run, so sending it again on a new connection is safe:
    that happens when a worker stops (restart, reload, idle exit) just as the
    request arrives.
    """


def v1_request(code: bytes) -> "Message":
    """Return the message (header, payload, fds) of a v1 request for ``code``."""
    return protocol.HEADER.pack(len(code)), code, None


def extended_request(fields: "Sequence[tuple[int, bytes]]",
                     fds: "Sequence[int] | None" = None) -> "Message":
    """Return the message of an extended request; ``fds`` (0, 1, 2, then those the
    fd-numbers field names) travel with it."""
    header, payload = protocol.encode_extended(fields)
    return header, payload, fds


def execute(sock: "Socket", message: "Message", forward_interrupts: bool = False) -> "Reply":
    """Send ``message`` on ``sock``; return the reply's ``(status, payload)``.

    With ``forward_interrupts``, Ctrl-C while waiting is sent to the server,
    which raises KeyboardInterrupt in the running code.  A server that refused
    the request before reading all of it (too large) replied before closing:
    that reply is returned.  Raise NotDelivered if the server closed the
    connection without reading the request and without a reply (a reset, or
    a broken pipe while sending): it did not run.  Raise ServiceUnavailable
    if it closed after reading it: it may have run.
    """
    interrupts = _Interrupts(sock) if forward_interrupts else None
    try:
        # Ctrl-C is taken over before the request leaves: the program may
        # start (and the user press Ctrl-C) before the send returns here.
        previous = _signal.signal(_signal.SIGINT, interrupts) if interrupts else None
        try:
            _send(sock, message)
        except (BrokenPipeError, ConnectionResetError) as exc:
            refusal = _refusal(sock)
            if refusal is not None:
                return refusal
            raise _not_delivered(exc) from None
        if interrupts is not None:
            interrupts.request_sent()
        return read_reply(sock)
    except ConnectionResetError as exc:
        # A Unix socket resets only when closed with unread data in it: the
        # request was not read whole, so it did not run.
        raise _not_delivered(exc) from None
    except protocol.ConnectionClosed:
        raise ServiceUnavailable("the worker running the code died before it replied (it "
                                 "crashed, or was killed for ignoring its time limit; the "
                                 "service log says which), so the code may have run part way"
                                 ) from None
    except OSError as exc:  # a timeout, or an error of this end: nothing says the worker died
        raise ServiceUnavailable("lost the connection to the service (%s), so the code may "
                                 "have run part way" % (exc.strerror or exc)) from None
    finally:
        if interrupts is not None:
            _signal.signal(_signal.SIGINT, previous)


#: The longest reply a pyrust service sends: config.MAX_MESSAGE_BYTES (not imported
#: here: the client stays lean; a test checks they agree).
MAX_REPLY_BYTES = 1024 ** 3


def read_reply(sock: "Socket") -> "Reply":
    """Read one reply; raise ServiceUnavailable if it announces a length no pyrust
    service sends (before allocating room for it), ConnectionClosed if the
    server closes before it is whole."""
    try:
        return protocol.read_response(sock, MAX_REPLY_BYTES)
    except protocol.ProtocolError as exc:
        raise ServiceUnavailable("the service's %s, so the code may have run part way"
                                 % exc) from None


class _Interrupts:
    """The SIGINT handler of a run: each Ctrl-C becomes an INTERRUPT byte on the
    connection, sent once the whole request is (never inside its frame)."""

    def __init__(self, sock: "Socket") -> None:
        self.sock = sock
        self.sent = False
        self.pending = 0

    def __call__(self, signum: int, frame: "FrameType | None") -> None:
        if self.sent:
            self.sock.send(INTERRUPT)
        else:
            self.pending += 1

    def request_sent(self) -> None:
        self.sent = True
        if self.pending:
            self.sock.send(INTERRUPT * self.pending)


def _send(sock: "Socket", message: "Message") -> None:
    """Send the (header, payload, fds) ``message``; the fds ride on the payload."""
    header, payload, fds = message
    if fds is None:
        sock.sendall(header + payload)
        return
    sock.sendall(header)  # never the fds on the header: see docs/protocol.md
    sent = sock.sendmsg([payload], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                     protocol.Struct("%di" % len(fds)).pack(*fds))])
    if sent < len(payload):
        sock.sendall(payload[sent:])


def _not_delivered(exc: OSError) -> NotDelivered:
    return NotDelivered("the service closed the connection without reading the request "
                        "(%s)" % exc.strerror)


def _refusal(sock: "Socket") -> "Reply | None":
    """Return the ``(status, payload)`` a server sent before closing on an unread request,
    or None if it sent none.  Whatever it sent is already queued here, so nothing waits."""
    sock.setblocking(False)
    try:
        return read_reply(sock)
    except (protocol.ConnectionClosed, OSError):
        return None


#: A request the server closed without reading never ran: send it again, at most this often.
DELIVERY_ATTEMPTS = 3


def request(connect_fn: "Callable[[], Socket]", message: "Union[Message, bytes]",
            forward_interrupts: bool = False) -> "Reply":
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


class _NoTemplate(Exception):
    """Nothing accepts on an environment's template socket (yet): ask the service."""


def _template_connection(path: str) -> "Socket":
    """Return a connection to the template socket ``path``; raise _NoTemplate if
    nothing accepts there, or if it is not to be trusted: then the main socket,
    in the same directory, is refused with a message that names it, or the
    service names a socket that ``connect`` refuses in turn."""
    try:
        return connect(path)
    except (ServiceUnavailable, UntrustedService):
        raise _NoTemplate() from None


def ensure(connect_main: "Callable[[], Socket]", env: "Environment") -> str:
    """Return the socket of the template of Environment ``env``, which the service
    (on a connection from ``connect_main()``) starts if it has none.

    Raise PyrustError with the service's one-line reason if it cannot start it
    (no such interpreter, not CPython 3.9+, a preload that fails).
    """
    message = extended_request([(protocol.OP, ops.ENSURE.code)] + env.fields())
    status, payload = request(connect_main, message)
    if status != protocol.OK:
        reason = payload.decode("utf-8", "replace").strip()
        raise PyrustError(reason or "the service cannot start the environment of %s (%s)"
                          % (env.python, protocol.STATUS_NAMES.get(status, status)))
    return payload.decode("utf-8", "surrogateescape")


def run(main_path: str, env: "Environment", message: "Message",
        connect_main: "Callable[[], Socket]", forward_interrupts: bool = True) -> "Reply":
    """Send the run ``message`` to the template of Environment ``env``; return the reply.

    The template's socket beside the service's main socket ``main_path`` is
    tried first.  If nothing accepts there, or the worker there answers
    WRONG_TEMPLATE (the run did not start), the service is asked for the
    template (``ensure``, on ``connect_main()``, which may start a service) and
    the run goes to the socket it names.  That is asked up to ENSURE_ATTEMPTS
    times: a template the service replaced (its environment changed) may
    still take a connection while it ends; the last WRONG_TEMPLATE is
    returned to the caller.  Delivery follows ``request``.
    """
    own = environment.template_socket(main_path, env.key())
    try:
        reply = request(lambda: _template_connection(own), message, forward_interrupts)
        if reply[0] != protocol.WRONG_TEMPLATE:
            return reply
    except _NoTemplate:
        pass
    for _ in range(ENSURE_ATTEMPTS):
        named = ensure(connect_main, env)
        # The lambda runs within this iteration, so it sees this iteration's path.
        reply = request(lambda: connect(named), message, forward_interrupts)  # noqa: B023
        if reply[0] != protocol.WRONG_TEMPLATE:
            break
    return reply


#: How often a run asks the service for its template before it gives up.
ENSURE_ATTEMPTS = 3
