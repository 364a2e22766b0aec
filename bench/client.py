"""The bench client: timed v1 round trips on a Unix socket, and nothing else.

No process is spawned and nothing is imported on the hot path.  Request
frames are built before timing starts; each round trip is timed with
``time.perf_counter_ns``.  Every reply is checked: the loop compares it with
the bytes of a reply already proven correct (one ``==`` on a few bytes), and
anything else takes the slow path, which reads the whole frame and checks it
against the program.  Sockets are blocking and carry no Python-level timeout
(which would add a ``poll()`` per call); a SIGALRM watchdog bounds each run.
"""

from __future__ import annotations

import _socket
import collections
import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Protocol

from bench.programs import REPLY_HEADER, reply_frame

RECV_SIZE = 65536
#: Seconds a run may take beyond its per-request allowance before it is abandoned.
BASE_TIMEOUT = 30.0
PER_REQUEST_TIMEOUT = 0.01


class Run(collections.namedtuple("Run", "samples verified wrong")):
    """A timed run: ``samples`` (round-trip times in ns, in order), the number
    of replies ``verified`` correct and the ``wrong`` ones (a list of
    ``(status, output)``)."""


class Request(Protocol):
    """What the client sends and checks: a Program, or environments.ExtendedRun."""

    @property
    def code(self) -> str: ...

    @property
    def frame(self) -> bytes: ...

    def accepts(self, status: int, output: bytes) -> bool: ...


class WrongReply(Exception):
    """The server's reply to a reference request was not the program's answer."""


@contextlib.contextmanager
def watchdog(count: int) -> Iterator[None]:
    """Raise TimeoutError in the block if it outlives an allowance for ``count`` requests.

    Uses SIGALRM, so it works only in the main thread; nothing is done per request.
    """
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError("bench run of %d requests timed out" % count)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, BASE_TIMEOUT + count * PER_REQUEST_TIMEOUT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def connect(path: str) -> _socket.socket:
    """Return a blocking socket connected to ``path``."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def read_reply(sock: _socket.socket, data: bytes) -> "tuple[int, bytes]":
    """Return ``(status, output)`` of the reply that starts with ``data``, reading the rest.

    Raise ConnectionError if the server closes the connection first.
    """
    buf = bytearray(data)
    while len(buf) < REPLY_HEADER.size or \
            len(buf) < REPLY_HEADER.size + REPLY_HEADER.unpack_from(buf)[1]:
        chunk = sock.recv(RECV_SIZE)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-reply")
        buf += chunk
    status, length = REPLY_HEADER.unpack_from(buf)
    return status, bytes(buf[REPLY_HEADER.size:REPLY_HEADER.size + length])


def reference_reply(path: str, program: Request) -> bytes:
    """Send ``program`` once on a new connection; return the reply frame.

    Raise WrongReply if the reply is not a correct answer to the program.
    """
    with watchdog(1):
        sock = connect(path)
        try:
            sock.sendall(program.frame)
            status, output = read_reply(sock, b"")
        finally:
            sock.close()
    if not program.accepts(status, output):
        raise WrongReply("%r: got status %d, output %r" % (program.code, status, output))
    return reply_frame(status, output)


def time_persistent(path: str, program: Request, count: int, warmup: int) -> Run:
    """Time ``count`` round trips of ``program`` on one connection, after ``warmup``
    untimed ones.  Raise WrongReply if a reference request is answered wrongly."""
    expected = reference_reply(path, program)
    with watchdog(count + warmup):
        sock = connect(path)
        try:
            _persistent_loop(sock, program.frame, expected, warmup)
            samples, odd = _persistent_loop(sock, program.frame, expected, count)
        finally:
            sock.close()
    return _verify(program, samples, odd)


def _persistent_loop(sock: _socket.socket, frame: bytes, expected: bytes, count: int,
                     ) -> tuple[list[int], list[tuple[int, bytes]]]:
    samples = [0] * count
    odd: list[tuple[int, bytes]] = []
    sendall, recv, clock = sock.sendall, sock.recv, time.perf_counter_ns
    for i in range(count):
        start = clock()
        sendall(frame)
        reply = recv(RECV_SIZE)
        samples[i] = clock() - start
        if reply != expected:  # a different or partial reply: finish reading it
            odd.append(read_reply(sock, reply))
    return samples, odd


def time_per_connection(path: str, program: Request, count: int, warmup: int) -> Run:
    """Time ``count`` requests of ``program`` that each use a new connection
    (``socket()`` to ``close()``), after ``warmup`` untimed ones.  Raise
    WrongReply if a reference request is answered wrongly."""
    expected = reference_reply(path, program)
    with watchdog(count + warmup):
        _per_connection_loop(path, program.frame, expected, warmup)
        samples, odd = _per_connection_loop(path, program.frame, expected, count)
    return _verify(program, samples, odd)


def _per_connection_loop(path: str, frame: bytes, expected: bytes, count: int,
                         ) -> tuple[list[int], list[tuple[int, bytes]]]:
    samples = [0] * count
    odd: list[tuple[int, bytes]] = []
    new, clock = _socket.socket, time.perf_counter_ns
    family, kind = _socket.AF_UNIX, _socket.SOCK_STREAM
    for i in range(count):
        start = clock()
        sock = new(family, kind)
        sock.connect(path)
        sock.sendall(frame)
        reply = sock.recv(RECV_SIZE)
        if reply != expected:
            odd.append(read_reply(sock, reply))
        sock.close()
        samples[i] = clock() - start
    return samples, odd


def _verify(program: Request, samples: list[int], odd: list[tuple[int, bytes]]) -> Run:
    """Return the Run, with the odd replies that are not correct answers counted as wrong."""
    wrong = [reply for reply in odd if not program.accepts(*reply)]
    return Run(samples, len(samples) - len(wrong), wrong)
