"""Hostile bytes against a live server: it answers exactly what protocol v1 prescribes.

Hypothesis builds byte streams that mix valid requests (whose replies are known
in advance) with hostile pieces: payloads that are not UTF-8, lengths above the
maximum, extended-form headers (the top bit) with garbage fields, truncated
frames, raw garbage, streams
cut at any byte and connections dropped without reading.  Each stream goes to
one live server over one connection, split into arbitrary chunks, and the
replies are checked against the protocol:

* a valid request gets its exact reply, in order;
* a payload that is not UTF-8 gets status 2 and the stream goes on;
* a length above ``max_request_bytes`` (with or without the top bit) gets
  status 2, then the server closes: nothing after it on that connection is
  answered;
* a top-bit header with an acceptable length is an extended request: its
  payload is read whole, and malformed fields get status 2 while the stream
  goes on;
* a frame cut short by end-of-file gets nothing.

After every stream the supervisor and the very same workers are still alive
(none died and was replaced) and a fresh client is served.
"""

import re
import signal
import socket
import struct
from typing import NamedTuple, Optional

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pyrust import protocol
from pyrust.request import decode_extended
from conftest import request

pytestmark = pytest.mark.fuzz  # a tier: ./test.sh --fast skips it

MAX = 4096  # max_request_bytes of the servers here: absurd lengths stay cheap
CONFIG = "max_request_bytes = %d\n" % MAX
TOP_BIT = 0x8000_0000
EXAMPLES = 600  # per property test: the file runs in 10 to 20 s on 2 CPUs
#: Bound on each blocking call on a fuzzed connection.  The server answers
#: these frames in microseconds; the bound only turns a missing reply into a
#: failure quickly, since Hypothesis replays a failure many times to shrink it.
FUZZ_TIMEOUT = 10.0

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None,
    # One server serves every example of a test: starting one per example
    # would cost more than the examples themselves.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large])


# -- What the server must answer -----------------------------------------------

class Reply(NamedTuple):
    """An expected response: ``status`` (None: the code ran, 0 or 1) and the output.

    ``output`` is the exact bytes, or a regular expression the whole output
    must match, or None for any (valid UTF-8) output.
    """
    status: Optional[int]
    output: object = None

    def matches(self, status: int, output: bytes) -> bool:
        try:
            output.decode("utf-8")
        except UnicodeDecodeError:
            return False  # every response payload is UTF-8, whatever the code wrote
        if self.status is None:
            return status in (protocol.OK, protocol.ERROR)
        if status != self.status:
            return False
        if isinstance(self.output, bytes):
            return output == self.output
        return self.output is None or self.output.fullmatch(output) is not None


RAN = Reply(None)  # a program this model does not know: it ran, succeeded or raised


def too_large(length: int) -> Reply:
    return Reply(protocol.BAD_REQUEST, protocol.too_large(
        "request", length, MAX, "max_request_bytes").encode())


def extended_reply(payload: bytes, known: dict) -> Reply:
    """The reply to an extended request carrying ``payload`` (fields), by the
    rules of pyrust/request.py, which the worker decodes with: malformed fields
    get status 2 and its reason; a well-formed request runs (RAN).  No fds come
    with a fuzzed request, so a run on the client's fds is malformed."""
    try:
        decode_extended(payload, (), 30.0)
    except protocol.ProtocolError as exc:
        return Reply(protocol.BAD_REQUEST, str(exc).encode())
    return RAN


def not_utf8(payload: bytes) -> Reply:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Reply(protocol.BAD_REQUEST, (
            "invalid request: code is not valid UTF-8 (byte %d: %s)"
            % (exc.start, exc.reason)).encode())
    raise AssertionError("the payload is valid UTF-8: %r" % payload)


def model_replies(stream: bytes, known: dict) -> list:
    """Return the replies protocol v1 prescribes for ``stream`` followed by end-of-file.

    ``known`` maps the programs whose replies are known to those replies; any
    other UTF-8 payload is expected to run (RAN).  The replies stop at a refused
    length (the server then closes) or at a frame cut short (it gets nothing).
    """
    replies, pos = [], 0
    while len(stream) - pos >= 4:
        (length,) = struct.unpack_from(">I", stream, pos)
        pos += 4
        extended = bool(length & TOP_BIT)
        length &= ~TOP_BIT
        if length > MAX:
            return replies + [too_large(length)]
        if len(stream) - pos < length:
            break
        payload = stream[pos:pos + length]
        pos += length
        if extended:
            replies.append(extended_reply(payload, known))
            continue
        try:
            code = payload.decode("utf-8")
        except UnicodeDecodeError:
            replies.append(not_utf8(payload))
        else:
            replies.append(known.get(code, RAN))
    return replies


# -- Pieces of a stream ------------------------------------------------------------

class Piece(NamedTuple):
    """Bytes to send, the reply they must get (None: none), and whether they
    end the conversation: after a refused length the server closes, and a
    frame cut short is completed by nothing but the end of the stream."""
    data: bytes
    reply: Optional[Reply]
    closes: bool = False
    code: Optional[str] = None  # the program, for a valid request


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def _program(code: str, reply: Reply) -> Piece:
    return Piece(frame(code.encode()), reply, code=code)


def _padded(n: int, pad: int) -> Piece:
    """``n*3`` behind a comment, so its length reaches up to exactly the maximum."""
    tail = "\n%d*3" % n
    return _program("#" * min(pad, MAX - len(tail)) + tail, Reply(0, b"%d\n" % (n * 3)))


numbers = st.integers(-10**12, 10**12)

#: Valid requests whose replies are known exactly (or, for a traceback, its shape).
programs = st.one_of(
    numbers.map(lambda n: _program("%d*3" % n, Reply(0, b"%d\n" % (n * 3)))),
    numbers.map(lambda n: _program("print(%d)\nNone" % n, Reply(0, b"%d\n" % n))),
    st.text(max_size=40).map(
        lambda s: _program(repr(s), Reply(0, (repr(s) + "\n").encode()))),
    st.just(_program("", Reply(0, b""))),
    st.integers(1, 255).map(lambda n: _program("raise SystemExit(%d)" % n, Reply(1, b""))),
    numbers.map(lambda n: _program("raise ValueError(%d)" % n, Reply(1, re.compile(
        rb"Traceback \(most recent call last\):\n.*\nValueError: %d\n" % n, re.S)))),
    st.builds(_padded, numbers, st.one_of(st.integers(0, MAX), st.just(MAX))),
)


def _invalid_utf8(payload: bytes, cut: int, bad: bytes, at_end: bytes) -> Piece:
    cut %= len(payload) + 1
    payload = payload[:cut] + bad + payload[cut:] + at_end
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:  # the neighbours completed the bad bytes into a character (b"\xc3" b"\x80")
        payload += b"\xff"
    return Piece(frame(payload), not_utf8(payload))


#: Payloads that are not UTF-8: arbitrary bytes with, anywhere, a byte that
#: never occurs in UTF-8, a lone continuation byte, an encoded surrogate, an
#: overlong form or a code point above U+10FFFF, and perhaps a character cut
#: short at the very end.
invalid_utf8 = st.builds(
    _invalid_utf8, st.binary(max_size=64), st.integers(0, 64),
    st.sampled_from([b"\xff", b"\xfe", b"\xc0\xaf", b"\x80", b"\xed\xa0\x80",
                     b"\xf4\x90\x80\x80", b""]),
    st.sampled_from([b"", b"\xe2\x82", b"\xc3", b"\xf0\x9f\x98"]))

garbage = st.binary(max_size=64)  # whatever follows a refused header is never read

#: A length above the maximum (or with the top bit set), then anything: one
#: refusal, then the server closes.  The tail may even hold valid requests.
oversized = st.builds(
    lambda n, tail: Piece(struct.pack(">I", n) + tail, too_large(n), closes=True),
    st.one_of(st.just(MAX + 1), st.integers(MAX + 1, TOP_BIT - 1), st.just(TOP_BIT - 1)),
    st.one_of(garbage, programs.map(lambda p: p.data)))
reserved = st.builds(
    lambda n, tail: Piece(struct.pack(">I", n) + tail, too_large(n & ~TOP_BIT), closes=True),
    st.one_of(st.sampled_from([TOP_BIT + MAX + 1, 0xFFFF_FFFF]),
              st.integers(TOP_BIT + MAX + 1, 0xFFFF_FFFF)),
    st.one_of(garbage, programs.map(lambda p: p.data)))

#: An extended header with an acceptable length and garbage for fields: one
#: status-2 reply, and the stream goes on.
extended_garbage = st.builds(
    lambda payload: Piece(struct.pack(">I", TOP_BIT | len(payload)) + payload,
                          extended_reply(payload, {}), closes=False),
    st.binary(max_size=48).filter(lambda p: extended_reply(p, {}) is not RAN))


def _truncated(header_bytes: int, length: int, payload: bytes) -> Piece:
    if header_bytes < 4:
        return Piece(struct.pack(">I", length)[:header_bytes], None, closes=True)
    return Piece(struct.pack(">I", length) + payload[:length - 1], None, closes=True)


#: A frame cut short by end-of-file: part of a header, or a header and less
#: payload than it announces (up to the whole payload but one byte).
truncated = st.builds(_truncated, st.integers(1, 4), st.integers(1, MAX), st.binary(max_size=256))

#: A stream: requests and refusals the connection survives, then perhaps one
#: piece after which nothing more is answered.
streams = st.builds(
    lambda body, end: body + ([end] if end is not None else []),
    st.lists(st.one_of(programs, programs, invalid_utf8, extended_garbage), max_size=12),
    st.one_of(st.none(), oversized, reserved, truncated))

chunkings = st.lists(st.integers(1, 1500), min_size=1, max_size=6)


# -- Talking to the server -----------------------------------------------------------

def send_in_chunks(sock, data: bytes, sizes: list) -> bool:
    """Send ``data`` in pieces of the given sizes (cycled); return False if the
    server closed the connection first (only allowed after a refused length)."""
    pos, i = 0, 0
    try:
        while pos < len(data):
            size = sizes[i % len(sizes)]
            sock.sendall(data[pos:pos + size])
            pos, i = pos + size, i + 1
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def end_of_writing(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:  # the server closed first
        pass


def read_replies(sock) -> list:
    """Read responses until the server closes the connection; return them.

    A close with unread request bytes reaches a Unix-socket peer as
    ECONNRESET rather than end-of-file; both mean "closed" once every
    complete response has been read.  A response cut short is an error.
    """
    replies = []
    while True:
        try:
            replies.append(protocol.read_response(sock))
        except protocol.ConnectionClosed as exc:
            assert not exc.partial, "a response was cut short after %r" % replies
            return replies
        except ConnectionResetError:
            return replies


def assert_replies(expected: list, actual: list) -> None:
    assert len(actual) == len(expected) and all(
        e.matches(*a) for e, a in zip(expected, actual)), (
        "expected %r\n     got %r" % (expected, actual))


def expected_of(pieces: list) -> list:
    """Return the replies the pieces must get: each one's, up to the first that closes."""
    replies = []
    for piece in pieces:
        if piece.reply is not None:
            replies.append(piece.reply)
        if piece.closes:
            break
    return replies


class Health:
    """Checks that a server survived: same supervisor, no worker died, and serving."""

    def __init__(self, server):
        self.server = server
        assert server.request("2+3") == (0, "5\n")  # the workers are up

    def connect(self):
        return self.server.connect(FUZZ_TIMEOUT)

    def check(self):
        assert self.server.proc.poll() is None, "the supervisor died"
        assert request(self.server.path, "2+3", FUZZ_TIMEOUT) == (0, "5\n")  # a fresh client

    def final_check(self):
        self.check()
        log = self.server.log()
        for sign in ("died", "crashed", "internal error", "Traceback"):
            assert sign not in log, log


@pytest.fixture
def fuzz_server(make_server):
    """One two-worker server with a 4 KiB request maximum, shared by all examples."""
    server = make_server(CONFIG, workers=2)
    health = Health(server)
    yield health
    health.final_check()


# -- Properties ---------------------------------------------------------------------

@FUZZ_SETTINGS
@given(pieces=streams, sizes=chunkings)
def test_a_pipelined_stream_gets_exactly_the_replies_v1_prescribes(fuzz_server, pieces, sizes):
    """All pieces sent at once in arbitrary chunks, then end-of-file: every
    request before the first closing piece is answered in order, nothing after it."""
    stream = b"".join(p.data for p in pieces)
    expected = expected_of(pieces)
    # The model of the protocol agrees with how the stream was built.
    assert model_replies(stream, {p.code: p.reply for p in pieces if p.code is not None}) \
        == expected
    with fuzz_server.connect() as sock:
        # Nothing here can deadlock: the server reads everything it is sent
        # (or closes), and its replies fit in the socket buffer unread.
        sent = send_in_chunks(sock, stream, sizes)
        assert sent or (pieces and pieces[-1].closes), "the server closed a connection it must keep"
        fuzz_server.check()  # a hostile connection does not block other clients
        end_of_writing(sock)
        assert_replies(expected, read_replies(sock))
    fuzz_server.check()


@FUZZ_SETTINGS
@given(pieces=streams, sizes=chunkings)
def test_request_by_request_each_reply_comes_before_the_next_request(fuzz_server, pieces,
                                                                      sizes):
    """One piece at a time, each reply read before the next piece is sent:
    the server answers every whole frame at once, and after a refused length
    it has closed the connection."""
    with fuzz_server.connect() as sock:
        for piece in pieces:
            assert send_in_chunks(sock, piece.data, sizes) or piece.closes
            if piece.reply is not None:
                status, output = protocol.read_response(sock)
                assert piece.reply.matches(status, output), (piece, status, output)
        fuzz_server.check()
        end_of_writing(sock)  # completes nothing: a cut frame stays unanswered
        assert read_replies(sock) == []


@FUZZ_SETTINGS
@given(pieces=streams, sizes=chunkings, cut=st.integers(0, 1 << 16), read=st.booleans())
def test_a_client_that_vanishes_anywhere_harms_nobody(fuzz_server, pieces, sizes, cut, read):
    """The stream is cut at an arbitrary byte and the client closes at once,
    perhaps without reading a single reply (the server's replies then meet a
    closed socket).  If it reads, it gets the replies of the whole frames it sent."""
    stream = b"".join(p.data for p in pieces)
    stream = stream[:cut % (len(stream) + 1)]
    known = {p.code: p.reply for p in pieces if p.code is not None}
    with fuzz_server.connect() as sock:
        send_in_chunks(sock, stream, sizes)
        if read:
            end_of_writing(sock)
            assert_replies(model_replies(stream, known), read_replies(sock))
    fuzz_server.check()


#: Byte soup: raw garbage, bare headers of any length and whole frames, in any
#: order, so frames straddle pieces and garbage is taken for headers.
soup_pieces = st.one_of(
    programs, invalid_utf8,
    st.binary(min_size=1, max_size=24).map(lambda b: Piece(b, None)),
    st.one_of(st.integers(0, 64), st.sampled_from([MAX, MAX + 1, TOP_BIT, 0xFFFF_FFFF]),
              st.integers(0, 0xFFFF_FFFF)).map(lambda n: Piece(struct.pack(">I", n), None)),
)


@FUZZ_SETTINGS
@given(pieces=st.lists(soup_pieces, max_size=16), sizes=chunkings)
def test_byte_soup_is_framed_as_v1_says(fuzz_server, pieces, sizes):
    """Arbitrary bytes are read as v1 frames, however they fall: the replies
    are those of a reference parser of the stream (a program it does not
    know, made of garbage, must merely run and answer 0 or 1)."""
    stream = b"".join(p.data for p in pieces)
    known = {p.code: p.reply for p in pieces if p.code is not None}
    with fuzz_server.connect() as sock:
        send_in_chunks(sock, stream, sizes)
        end_of_writing(sock)
        assert_replies(model_replies(stream, known), read_replies(sock))
    fuzz_server.check()


# -- A bug the hostile streams found (fixed) -------------------------------------------------

def test_a_frame_cut_short_leaves_no_worker_marked_busy(make_server):
    """A client that sends a header and part of its payload, then closes, leaves
    the worker idle: the status the service manager sees says 0 busy."""
    server = make_server(CONFIG, workers=1)
    server.wait_notification("READY=1")
    with server.connect() as sock:
        sock.sendall(struct.pack(">I", 10) + b"abc")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # the worker has seen the end and closed its side
    server.proc.send_signal(signal.SIGHUP)  # a reload reports the status at once
    assert ", 0 busy," in server.wait_notification("READY=1")
    # The retiring worker may take this connection as it stops and close it
    # unread: the documented resend rule (pyrust's client follows it) applies.
    from pyrust import client
    assert client.request(lambda: client.connect(server.path), b"2+3") == (0, b"5\n")
