"""Wire protocol v1: golden frames (shared with docs/protocol.md) and round trips."""

import json
import os
import socket
import sys

import pytest
from hypothesis import given, settings, strategies as st

from pyrust import protocol
from conftest import ROOT, TIMEOUT

GOLDEN = json.load(open(os.path.join(ROOT, "tests", "golden", "v1_frames.json"), encoding="utf-8"))


def frame(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text.replace(" ", ""))


def read_exactly(sock, size):
    return protocol.recv_exact(sock, size)


@pytest.mark.parametrize("case", [c for c in GOLDEN if "code" in c], ids=lambda c: c["name"])
def test_golden_request_encoding(case):
    assert protocol.encode_request(case["code"].encode()) == frame(case["request"])


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: c["name"])
def test_golden_response_encoding(case):
    assert protocol.encode_response(case["status"], case["output"].encode()) == frame(case["response"])


def applies(case) -> bool:
    """Whether a golden case holds for this interpreter (tracebacks differ by version)."""
    below = case.get("python_below")
    return below is None or sys.version_info < tuple(map(int, below.split(".")))


def test_golden_frames_against_a_live_server(server):
    """Every golden request, sent as raw bytes, gets exactly the golden response."""
    for case in filter(applies, GOLDEN):
        with server.connect() as sock:
            sock.sendall(frame(case["request"]))
            expected = frame(case["response"])
            assert read_exactly(sock, len(expected)) == expected, case["name"]
            if case.get("connection_stays_open", True):
                sock.sendall(protocol.encode_request(b"6*7"))
                assert protocol.read_response(sock) == (0, b"42\n"), case["name"]
            else:  # framing is lost: the server closes after its reply
                assert sock.recv(1) == b"", case["name"]


def test_golden_frames_are_in_the_protocol_doc():
    doc = open(os.path.join(ROOT, "docs", "protocol.md"), encoding="utf-8").read()
    for case in GOLDEN:
        assert case["request"] in doc, case["name"]
        # Long replies are shown as their header plus the output's text.
        assert case["response"][:11] in doc, case["name"]
        text = case["output"]
        assert not text or "\0" in text or text.splitlines()[-1] in doc, case["name"]


@given(st.binary(max_size=4096))
def test_request_header_round_trip(payload):
    encoded = protocol.encode_request(payload)
    (length,) = protocol.HEADER.unpack(encoded[:4])
    assert length == len(payload) and encoded[4:] == payload


@settings(deadline=None)
@given(st.integers(0, 255), st.binary(max_size=70000))
def test_response_round_trip_over_a_socket(status, output):
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(TIMEOUT)
        b.settimeout(TIMEOUT)
        # A writer thread is not needed: the socket buffer holds small frames,
        # larger ones are written from the other end while we read.
        import threading
        t = threading.Thread(target=a.sendall, args=(protocol.encode_response(status, output),))
        t.start()
        assert protocol.read_response(b) == (status, output)
        t.join(TIMEOUT)


@given(st.integers(0, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_length_check(length, maximum):
    # The server takes EXTENDED_FLAG off before checking: the form is its own question.
    if length > maximum:
        with pytest.raises(protocol.ProtocolError) as info:
            protocol.check_length(length, maximum)
        assert info.value.fatal
    else:
        protocol.check_length(length, maximum)


def test_truncated_frames_raise_connection_closed():
    for data, partial in ((b"", False), (b"\x00\x00", True), (b"\x00\x00\x00\x05ab", True)):
        a, b = socket.socketpair()
        with a, b:
            b.settimeout(TIMEOUT)
            a.sendall(data)
            a.shutdown(socket.SHUT_WR)
            with pytest.raises(protocol.ConnectionClosed) as info:
                (length,) = protocol.HEADER.unpack(protocol.recv_exact(b, 4))
                protocol.recv_exact(b, length, started=True)
            assert info.value.partial is partial
