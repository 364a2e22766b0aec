"""pyrust/request.py: the one decoder of requests, and the client's encoder
that shares its rules (the worker, the service and the fuzz model use them)."""

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrust import ops, protocol
from pyrust.environment import Environment
from pyrust.request import (
    FORMS,
    MAX_EXTRA_FDS,
    SIMPLE_OPTIONS,
    decode_extended,
    decode_v1,
    run_fields,
)

LIMIT = 30.0


def decode(fields, fds=()):
    return decode_extended(protocol.encode_fields(fields), tuple(fds), LIMIT)


def refusal(fields, fds=()):
    with pytest.raises(protocol.ProtocolError) as caught:
        decode(fields, fds)
    assert not caught.value.fatal  # the payload was read: the connection goes on
    return str(caught.value)


def test_a_v1_request_is_captured_code_with_the_service_limit():
    request = decode_v1("2+3".encode(), LIMIT)
    job = request.job
    assert (request.op, request.extended, request.fields) == (ops.RUN, False, {})
    assert (job.form, job.source, list(job.argv), job.fds, job.time_limit, job.echo) == \
        ("c", "2+3", ["-c"], None, LIMIT, True)


def test_v1_code_that_is_not_utf8_is_refused_with_the_byte():
    with pytest.raises(protocol.ProtocolError, match=r"not valid UTF-8 \(byte 1: "):
        decode_v1(b"1\xff", LIMIT)


def test_an_extended_request_without_op_is_a_captured_run():
    request = decode([(protocol.SOURCE, b"print(1)")])
    assert request.op is ops.RUN and request.extended
    assert (request.job.form, request.job.argv, request.job.fds) == ("c", ["-c"], None)
    assert request.job.time_limit == LIMIT


@pytest.mark.parametrize("op", [op for op in ops.OPS if op not in (ops.RUN, ops.ENSURE)])
def test_every_service_op_decodes_to_itself_with_no_job(op):
    request = decode([(protocol.OP, op.code)])
    assert (request.op, request.job, request.env) == (op, None, None)


def test_an_unknown_op_is_refused_by_its_code():
    assert refusal([(protocol.OP, b"x")]) == "malformed extended request: unknown op b'x'"


def test_ensure_needs_an_environment_and_decodes_it():
    assert refusal([(protocol.OP, ops.ENSURE.code)]) == \
        "op e needs an environment (field %d)" % protocol.PYTHON
    env = Environment("/usr/bin/python3", ["json"], "/p", ["-O"])
    request = decode([(protocol.OP, ops.ENSURE.code)] + env.fields())
    assert request.env == env and request.env_key() == env.key()
    assert "not absolute" in refusal([(protocol.OP, ops.ENSURE.code),
                                      (protocol.PYTHON, b"python3")])


@pytest.mark.parametrize("fields, why", [
    ([(protocol.FORM, b"x"), (protocol.SOURCE, b"1")], "needs a form"),
    ([(protocol.FORM, b"c")], "needs a form"),
    ([(protocol.SOURCE, b"1"), (protocol.STDIO, b"z")], "needs a form"),
    ([(protocol.FORM, b"i")], "form i (python's prompt) needs stdio f"),
    ([(protocol.SOURCE, b"1"), (protocol.STDIO, b"f")], "stdio f needs the client's fds"),
    ([(protocol.SOURCE, b"1"), (protocol.ECHO, b"2")], "echo is 0 or 1"),
    ([(protocol.SOURCE, b"1"), (protocol.PYOPT, b"-O")], "unknown per-run python option '-O'"),
    ([(protocol.SOURCE, b"\xff")], "not valid UTF-8"),
    ([(protocol.SOURCE, b"1"), (protocol.FD_NUMBERS, b"\0\0\0\1")], "fd numbers must be"),
    ([(protocol.SOURCE, b"1"), (protocol.FD_NUMBERS, b"\0\0\0\5\0\0\0\5")], "distinct"),
    ([(protocol.SOURCE, b"1"), (protocol.FD_NUMBERS, b"\0\0\5")], "holds up to 250"),
    ([(protocol.SOURCE, b"1"), (protocol.FD_NUMBERS, b"\0\0\0\7" * (MAX_EXTRA_FDS + 1))],
     "holds up to 250"),
])
def test_a_malformed_run_is_refused_with_its_reason(fields, why):
    assert why in refusal(fields)


def test_stdio_f_takes_fds_0_to_2_then_one_per_number():
    fields = [(protocol.SOURCE, b"1"), (protocol.STDIO, b"f"),
              (protocol.FD_NUMBERS, struct.pack(">II", 7, 9))]
    assert "stdio f needs" in refusal(fields, (10, 11, 12))
    job = decode(fields, (10, 11, 12, 13, 14)).job
    assert (job.fds, job.targets, job.time_limit) == ((10, 11, 12, 13, 14), (7, 9), 0.0)


def test_fds_sent_with_a_captured_run_are_not_the_jobs():
    request = decode([(protocol.SOURCE, b"1")], (10, 11, 12))
    assert request.job.fds is None and request.fds == (10, 11, 12)


def test_argv0_defaults_as_python_sets_it():
    for form, source, argv0 in (("c", "1", "-c"), ("-", "1", "-"), ("f", "a.py", "a.py"),
                                ("m", "json", "-m")):
        job = decode([(protocol.FORM, form.encode()), (protocol.SOURCE, source.encode())]).job
        assert list(job.argv) == [argv0]
    job = decode([(protocol.FORM, b"i"), (protocol.STDIO, b"f")], (3, 4, 5)).job
    assert list(job.argv) == [""]


paths = st.binary(min_size=1, max_size=20).filter(lambda b: b"\0" not in b)
texts = st.text(max_size=30)


@settings(max_examples=300, deadline=None)
@given(form=st.sampled_from([f for f in FORMS if f != "i"]), source=texts,
       argv=st.lists(st.text(max_size=10), max_size=4),
       options=st.lists(st.sampled_from(SIMPLE_OPTIONS + ("-Werror", "-Wignore::x")),
                        max_size=3),
       environ=st.lists(st.tuples(paths.filter(lambda b: b"=" not in b), paths), max_size=3),
       cwd=st.none() | paths, umask=st.none() | st.integers(0, 0o777),
       targets=st.lists(st.integers(3, 1 << 20), unique=True, max_size=4),
       echo=st.booleans(), captured=st.booleans(),
       timeout=st.none() | st.integers(0, 2 ** 32 - 1))
def test_what_the_client_encodes_decodes_to_the_same_run(form, source, argv, options, environ,
                                                         cwd, umask, targets, echo, captured,
                                                         timeout):
    stdio = b"c" if captured else b"f"
    env = Environment("/usr/bin/python3", ["json"], "", ["-O"])
    fields = run_fields(form, source, argv, stdio=stdio, env=env, echo=echo, options=options,
                        environ=environ, cwd=cwd, umask=umask, fd_numbers=tuple(targets),
                        timeout_ms=timeout)
    fds = () if captured else tuple(range(100, 103 + len(targets)))
    request = decode(fields, fds)
    job = request.job
    assert request.op is ops.RUN and request.env_key() == env.key()
    assert (job.form, job.source, job.echo, job.options, job.targets) == \
        (form, source, echo, tuple(options), tuple(targets))
    assert job.argv == ([os.fsdecode(os.fsencode(a)) for a in argv] or
                        [{"c": "-c", "-": "-", "f": source, "m": "-m"}[form]])
    assert job.fds == (None if captured else fds)
    assert job.umask == umask
    assert job.cwd == (None if cwd is None else os.fsdecode(cwd))
    assert job.env == ({os.fsdecode(k): os.fsdecode(v) for k, v in environ} or None)
    expected = (LIMIT if captured else 0.0) if timeout is None else timeout / 1000.0
    assert job.time_limit == expected


def test_the_encoder_refuses_what_the_decoder_would():
    with pytest.raises(ValueError):
        run_fields("x", "1", [])
    with pytest.raises(ValueError, match="'-O'"):
        run_fields("c", "1", [], options=["-O"])
