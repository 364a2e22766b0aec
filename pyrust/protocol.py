"""The wire protocol: framing shared by the client and the server.

v1 request:  ``[u32 big-endian length][length bytes of UTF-8 code]``
Response:    ``[u8 status][u32 big-endian length][length bytes of payload]``

The extended request sets the length's top bit (never valid in v1) and
carries fields (``[u8 tag][u32 length][value]``), with the client's fds 0-2
attached (``SCM_RIGHTS``) to the payload.  Several requests may follow each
other on one connection; every request gets exactly one response, in order.
``docs/protocol.md`` has byte-exact examples.

This is a leaf module: it imports nothing from the package, and only the C
``_struct`` accelerator from the standard library, so the client stays lean.
"""

from _struct import Struct

MYPY = False
if MYPY:  # for the type checker only: the client imports no typing at run time
    from _socket import socket
    from typing import Any, Iterable

    #: A decoded extended payload: {tag: value}, a list of values for repeated tags.
    Fields = dict[int, Any]

#: Status codes of a response.  Codes 3 and up are failures of the request that
#: are not the code's fault; clients treat any code they do not know as failure.
OK = 0              #: the code ran; the payload is its output
ERROR = 1           #: the code raised; the payload is its output, then the traceback
BAD_REQUEST = 2     #: the frame was refused (too large, not UTF-8, malformed); says why
TIMEOUT = 3         #: the code ran past the request time limit
WORKER_DIED = 4     #: reserved: the worker running the code died (signal, os._exit)
SERVICE_ERROR = 5   #: the service failed for a reason of its own
WRONG_TEMPLATE = 6  #: this socket serves another environment: ask the service (op ensure)

STATUS_NAMES = {
    OK: "ok",
    ERROR: "error",
    BAD_REQUEST: "bad request",
    TIMEOUT: "timeout",
    WORKER_DIED: "worker died",
    SERVICE_ERROR: "service error",
    WRONG_TEMPLATE: "wrong environment",
}

#: A request length with this bit set can never be a valid v1 length (it would
#: be 2 GiB or more, far above any configurable maximum), so the bit
#: announces the extended request form.
EXTENDED_FLAG = 0x8000_0000

HEADER = Struct(">I")            # request header: payload length
RESPONSE_HEADER = Struct(">BI")  # response header: status, payload length
FIELD = Struct(">BI")            # extended field header: tag, value length
EXIT_CODE = Struct(">i")         # extended run response: the program's exit code

# Extended request fields (tags).  Unknown tags are refused, not skipped.
OP = 1        #: one byte: an op's code (pyrust/ops.py)
FORM = 2      #: one byte: "c" code, "f" file, "m" module, "-" program read from stdin
SOURCE = 3    #: UTF-8: the code, the file's path, or the module's name
ARG = 4       #: sys.argv, one entry (bytes) per field, argv[0] first; absent: as python sets it
CWD = 5       #: the client's working directory (bytes)
ENV = 6       #: one KEY=VALUE of the client's environment (bytes), repeated
TIMEOUT_MS = 7  #: u32: time limit in milliseconds (0: none); absent: the server's
STDIO = 8     #: one byte: "f" fds 0-2 are attached; "c" capture output as v1 does
UMASK = 9     #: u32: the client's umask; absent: the worker's
FD_NUMBERS = 10  #: u32 each: the numbers of the fds attached after 0-2, in order
# The environment (template) a run belongs to; together, its key.  See
# pyrust/environment.py and docs/protocol.md.
PYTHON = 11   #: the interpreter's absolute path (bytes)
PRELOAD = 12  #: one preloaded module's name (UTF-8), repeated, in order
ROOT = 13     #: the project directory the preloads import from (bytes)
STARTUP = 14  #: one start-up option ("-O", "-Xdev") or variable ("PYTHONHASHSEED=0"), repeated
# How the run behaves, as python's per-run options and the echo setting say.
PYOPT = 15    #: one per-run python option as python spells it ("-u", "-Werror"), repeated
ECHO = 16     #: one byte: "1" echo a final -c expression (the default), "0" python's exact -c
#: Every field's name, as docs/protocol.md and the native client spell it.
FIELD_NAMES = {OP: "op", FORM: "form", SOURCE: "source", ARG: "arg", CWD: "cwd", ENV: "env",
               TIMEOUT_MS: "timeout_ms", STDIO: "stdio", UMASK: "umask",
               FD_NUMBERS: "fd_numbers", PYTHON: "python", PRELOAD: "preload", ROOT: "root",
               STARTUP: "startup", PYOPT: "pyopt", ECHO: "echo"}
REPEATED = (ARG, ENV, PRELOAD, STARTUP, PYOPT)
SINGLE = (OP, FORM, SOURCE, CWD, TIMEOUT_MS, STDIO, UMASK, FD_NUMBERS, PYTHON, ROOT, ECHO)
#: The fields that name a run's environment, in their canonical order.
TEMPLATE_FIELDS = (PYTHON, PRELOAD, ROOT, STARTUP)
#: Fields whose value has a fixed size, in bytes.
SIZES = {OP: 1, FORM: 1, TIMEOUT_MS: 4, STDIO: 1, UMASK: 4, ECHO: 1}



class ProtocolError(Exception):
    """A frame that cannot be accepted; ``str()`` is the message for the peer.

    ``fatal`` says whether the connection's framing is lost (the payload was
    not read), so the server must close the connection after replying.
    """

    def __init__(self, message: str, fatal: bool) -> None:
        super().__init__(message)
        self.fatal = fatal


def malformed(why: str, fatal: bool = False) -> ProtocolError:
    """Return the refusal of a malformed extended request, saying ``why``."""
    return ProtocolError("malformed extended request: " + why, fatal)


class ConnectionClosed(Exception):
    """The peer closed the connection; ``partial`` is true if mid-frame."""

    def __init__(self, partial: bool) -> None:
        super().__init__("connection closed mid-frame" if partial else "connection closed")
        self.partial = partial


def encode_request(code: bytes) -> bytes:
    """Return the v1 request frame carrying ``code`` (already UTF-8)."""
    return HEADER.pack(len(code)) + code


def encode_response(status: int, output: bytes) -> bytes:
    """Return the v1 response frame for ``status`` and ``output``."""
    return RESPONSE_HEADER.pack(status, len(output)) + output


def recv_exact(sock: "socket", size: int, started: bool = False) -> bytes:
    """Return exactly ``size`` bytes read from ``sock``.

    Raise ConnectionClosed if the peer closes first; it is ``partial`` when
    any byte of the frame had arrived (``started`` says one already had).
    """
    if not size:
        return b""
    data = sock.recv(size)
    if len(data) == size:  # the common case: one recv is enough
        return data
    if not data:
        raise ConnectionClosed(partial=started)
    buf = bytearray(data)
    while len(buf) < size:
        chunk = sock.recv(min(size - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionClosed(partial=True)
        buf += chunk
    return bytes(buf)


def too_large(what: str, size: int, limit: int, setting: str) -> str:
    """Return the refusal of something over a limit, naming the setting that raises it:
    'request too large (N bytes; the limit is M, setting max_request_bytes)'."""
    return "%s too large (%d bytes; the limit is %d, setting %s)" % (what, size, limit, setting)


def check_length(length: int, max_size: int) -> None:
    """Raise ProtocolError (fatal) unless payload ``length`` (the header's value
    without EXTENDED_FLAG) is at most ``max_size``."""
    if length > max_size:
        raise ProtocolError(too_large("request", length, max_size, "max_request_bytes"),
                            fatal=True)


def decode_code(payload: bytes) -> str:
    """Return the request payload as text; raise ProtocolError if not UTF-8."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            "invalid request: code is not valid UTF-8 (byte %d: %s)" % (exc.start, exc.reason),
            fatal=False,
        ) from None


def read_response(sock: "socket", max_size: int = 1 << 32) -> "tuple[int, bytes]":
    """Read one response from ``sock``; return ``(status, output)``.

    Raise ProtocolError (fatal) if it announces more than ``max_size`` bytes,
    before reading them; ConnectionClosed if the server closes before the
    response is whole.
    """
    status, length = RESPONSE_HEADER.unpack(recv_exact(sock, RESPONSE_HEADER.size))
    if length > max_size:
        raise ProtocolError("reply announced %d bytes, more than a pyrust service ever sends "
                            "(%d)" % (length, max_size), fatal=True)
    return status, recv_exact(sock, length, started=True)


def encode_fields(fields: "Iterable[tuple[int, bytes]]") -> bytes:
    """Return the extended payload for ``fields``: (tag, bytes value) pairs."""
    return b"".join(FIELD.pack(tag, len(value)) + value for tag, value in fields)


def encode_extended(fields: "Iterable[tuple[int, bytes]]") -> "tuple[bytes, bytes]":
    """Return (header, payload) of an extended request; send the fds with the payload."""
    payload = encode_fields(fields)
    return HEADER.pack(EXTENDED_FLAG | len(payload)), payload


def decode_fields(payload: bytes) -> "Fields":
    """Return {tag: value} (a list of values for repeated tags) from an extended payload.

    Raise ProtocolError (not fatal: the payload was read whole) if malformed.
    """
    fields: "Fields" = {tag: [] for tag in REPEATED}
    offset = 0
    while offset < len(payload):
        if offset + FIELD.size > len(payload):
            raise malformed("truncated field header")
        tag, size = FIELD.unpack_from(payload, offset)
        offset += FIELD.size
        value = payload[offset:offset + size]
        if len(value) != size:
            raise malformed("field %d is truncated" % tag)
        offset += size
        if SIZES.get(tag, size) != size:
            raise malformed("field %d must be %d bytes, not %d" % (tag, SIZES[tag], size))
        if tag in REPEATED:
            fields[tag].append(value)
        elif tag in SINGLE and tag not in fields:
            fields[tag] = value
        else:
            raise malformed("unknown or repeated field %d" % tag)
    return fields
