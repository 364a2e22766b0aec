"""What a request asks for: the one place its rules are written.

``decode_v1`` and ``decode_extended`` turn a request's payload (and the fds
that came with it) into a ``Request``: the op it names and, for a run, the
``Job``.  The worker decodes what it receives with them, the service decodes
the ops forwarded to it with them, the fuzz test's model predicts the
server's answers with them, and ``run_fields`` (the client's encoder) builds
a run's fields by the same rules (forms, stdio, ``argv[0]``, fd numbers).

A module of the client's side: it imports only C modules and leaf modules
(protocol, ops, environment, pyoptions), so the ``pyrust`` command reads it
for little and never imports server code.
"""

import os
from _struct import Struct

from pyrust import ops, protocol
from pyrust.environment import Environment, key_of
from pyrust.pyoptions import PER_RUN

#: How a run's program is given: code (-c), stdin (-), a file or directory or
#: zip (f), a module (-m), or none: python's interactive prompt (i).
FORMS = ("c", "-", "f", "m", "i")
#: stdio f: the client's fds 0-2 (and those FD_NUMBERS names) are the program's;
#: stdio c: the output is captured into the reply, as in v1.
STDIO_FDS, STDIO_CAPTURE = b"f", b"c"
#: Per-run python options a run may carry (PYOPT), besides ``-W`` with its value.
SIMPLE_OPTIONS = tuple("-" + flag for flag in PER_RUN)
#: The most fds a client may pass besides 0-2 (SCM_MAX_FD is 253).
MAX_EXTRA_FDS = 250
#: The highest fd number a run may ask for.
MAX_FD_NUMBER = 1 << 20
_U32 = Struct(">I")


class Job:
    """One run: ``form`` one of FORMS; ``source`` the code, path or module;
    ``argv`` sys.argv; ``cwd`` and ``env`` (dict) the client's, or None for the
    worker's; ``time_limit`` seconds (0: none); ``fds`` the client's 0-2 (and
    more, to go to the numbers ``targets`` lists) or None to capture the
    output; ``umask`` the client's, or None to keep the worker's; ``options``
    python's per-run options as it spells them ("-u", "-Werror"); ``echo``
    whether a final ``-c`` expression is shown."""

    __slots__ = ("form", "source", "argv", "cwd", "env", "time_limit", "fds", "umask",
                 "targets", "options", "echo")

    def __init__(self, form: str, source: str, argv: "tuple[str, ...] | list[str]",
                 cwd: "str | None", env: "dict[str, str] | None", time_limit: float,
                 fds: "tuple[int, ...] | None", umask: "int | None" = None,
                 targets: "tuple[int, ...]" = (), options: "tuple[str, ...]" = (),
                 echo: bool = True) -> None:
        self.form, self.source, self.argv, self.cwd, self.env = form, source, argv, cwd, env
        self.time_limit, self.fds, self.umask, self.targets = time_limit, fds, umask, targets
        self.options, self.echo = options, echo

    def __repr__(self) -> str:
        return "Job(%s)" % ", ".join("%s=%r" % (name, getattr(self, name))
                                     for name in self.__slots__)


class Request:
    """One decoded request: ``op`` (an ops.Op), ``job`` (the Job of a run, else
    None), ``env`` (the Environment op ensure names; None for other ops),
    ``fields`` ({tag: value}; {} for v1), ``payload`` (the raw fields, which a
    service op is forwarded as), ``extended`` and ``fds`` (every fd received
    with it; a run on the client's fds has them as its job's)."""

    __slots__ = ("op", "job", "env", "fields", "payload", "extended", "fds")

    def __init__(self, op: ops.Op, job: "Job | None", env: "Environment | None",
                 fields: dict, payload: bytes, extended: bool,
                 fds: "tuple[int, ...]" = ()) -> None:
        self.op, self.job, self.env, self.fields = op, job, env, fields
        self.payload, self.extended, self.fds = payload, extended, fds

    def env_key(self) -> "bytes | None":
        """Return the key of the environment the request names (the same bytes as
        ``Environment.key()``), or None if it names none."""
        if protocol.PYTHON not in self.fields:
            return None
        return key_of(self.fields)


def v1_job(code: str, time_limit: float) -> Job:
    """Return the Job of a protocol v1 request: ``python -c`` with captured output."""
    return Job("c", code, ("-c",), None, None, time_limit, None)


def decode_v1(payload: bytes, time_limit: float) -> Request:
    """Return the run a v1 ``payload`` (UTF-8 code) asks for, limited to
    ``time_limit`` seconds; raise ProtocolError (not fatal) if it is not UTF-8."""
    return Request(ops.RUN, v1_job(protocol.decode_code(payload), time_limit), None, {},
                   payload, False)


def decode_extended(payload: bytes, fds: "tuple[int, ...]", time_limit: float) -> Request:
    """Return the request an extended ``payload`` and the ``fds`` attached to it
    ask for; a captured run without a timeout field gets ``time_limit``.

    Raise ProtocolError (not fatal: the payload was read whole) if it is
    malformed; the fds stay the caller's to close.
    """
    fields = protocol.decode_fields(payload)
    op = ops.BY_CODE.get(fields.get(protocol.OP, ops.RUN.code))
    if op is None:
        raise protocol.malformed("unknown op %r" % fields[protocol.OP])
    job = _job(fields, fds, time_limit) if op is ops.RUN else None
    env = _environment(fields) if op is ops.ENSURE else None
    return Request(op, job, env, fields, payload, True, fds)


def _environment(fields: dict) -> Environment:
    """Return the Environment ``fields`` name; raise ProtocolError if none or malformed."""
    try:
        env = Environment.from_fields(fields)
    except (ValueError, UnicodeDecodeError) as exc:
        raise protocol.ProtocolError(str(exc), False) from None
    if env is None:
        raise protocol.ProtocolError("op %s needs an environment (field %d)"
                                     % (ops.ENSURE.code.decode(), protocol.PYTHON), False)
    return env


def _job(fields: dict, fds: "tuple[int, ...]", time_limit: float) -> Job:
    """Return the Job of a run's ``fields``; raise ProtocolError if malformed."""
    form = fields.get(protocol.FORM, b"c").decode("ascii", "replace")
    stdio = fields.get(protocol.STDIO, STDIO_CAPTURE)
    if form not in FORMS or stdio not in (STDIO_CAPTURE, STDIO_FDS) or \
            (protocol.SOURCE not in fields and form != "i"):
        raise protocol.malformed("needs a form (c, -, f, m, i), a source (but for i), "
                                 "and stdio c or f")
    targets = _fd_targets(fields.get(protocol.FD_NUMBERS, b""))
    if stdio == STDIO_FDS and len(fds) != 3 + len(targets):
        raise protocol.malformed("stdio f needs the client's fds 0, 1 and 2 attached, then "
                                 "one fd for each number in the fd-numbers field")
    if form == "i" and stdio != STDIO_FDS:
        raise protocol.malformed("form i (python's prompt) needs stdio f")
    source = protocol.decode_code(fields.get(protocol.SOURCE, b""))
    argv = [os.fsdecode(a) for a in fields[protocol.ARG]] or [default_argv0(form, source)]
    env = None
    if fields[protocol.ENV]:
        env = dict(os.fsdecode(e).partition("=")[::2] for e in fields[protocol.ENV])
    cwd = os.fsdecode(fields[protocol.CWD]) if protocol.CWD in fields else None
    # A run on the client's terminal has no time limit unless it asks for
    # one, as python has none; a captured run has the service's.
    limit = 0.0 if stdio == STDIO_FDS else time_limit
    if protocol.TIMEOUT_MS in fields:
        limit = _U32.unpack(fields[protocol.TIMEOUT_MS])[0] / 1000.0
    umask = _U32.unpack(fields[protocol.UMASK])[0] & 0o777 if protocol.UMASK in fields else None
    options = _options(fields[protocol.PYOPT])
    echo = fields.get(protocol.ECHO, b"1")
    if echo not in (b"0", b"1"):
        raise protocol.malformed("echo is 0 or 1")
    return Job(form, source, argv, cwd, env, limit, fds if stdio == STDIO_FDS else None,
               umask, targets, options, echo == b"1")


def default_argv0(form: str, source: str) -> str:
    """Return ``sys.argv[0]`` as python sets it for a program given by ``form``."""
    return {"c": "-c", "-": "-", "f": source, "m": "-m", "i": ""}[form]


def check_options(values: "list[str]") -> "tuple[str, ...]":
    """Return the per-run options ``values`` as a tuple; raise ValueError naming
    the first one that is not ``-u -B -q -i -P`` or ``-W`` with its value."""
    for value in values:
        if value not in SIMPLE_OPTIONS and not value.startswith("-W"):
            raise ValueError("unknown per-run python option %r" % value)
    return tuple(values)


def _options(values: "list[bytes]") -> "tuple[str, ...]":
    try:
        return check_options([os.fsdecode(value) for value in values])
    except ValueError as exc:
        raise protocol.malformed(str(exc)) from None


def _fd_targets(value: bytes) -> "tuple[int, ...]":
    """Return the fd numbers of the fd-numbers field; raise ProtocolError if malformed."""
    if len(value) % _U32.size or len(value) // _U32.size > MAX_EXTRA_FDS:
        raise protocol.malformed("the fd-numbers field holds up to %d u32 numbers" % MAX_EXTRA_FDS)
    targets = tuple(n for (n,) in _U32.iter_unpack(value))
    if any(n < 3 or n > MAX_FD_NUMBER for n in targets) or len(set(targets)) != len(targets):
        raise protocol.malformed("fd numbers must be distinct, from 3 to %d" % MAX_FD_NUMBER)
    return targets


def run_fields(form: str, source: str, argv: "list[str]", *, stdio: bytes = STDIO_FDS,
               env: "Environment | None" = None, echo: bool = True,
               options: "tuple[str, ...] | list[str]" = (),
               environ: "list[tuple[bytes, bytes]] | None" = None, cwd: "bytes | None" = None,
               umask: "int | None" = None, fd_numbers: "tuple[int, ...]" = (),
               timeout_ms: "int | None" = None) -> "list[tuple[int, bytes]]":
    """Return the fields of a run, as ``decode_extended`` reads them: the program
    (``form``, ``source``, ``argv``), how its output travels (``stdio``), its
    Environment, the echo setting, per-run python ``options``, the client's
    ``environ`` (KEY, VALUE pairs), ``cwd``, ``umask``, the numbers of the fds
    passed after 0-2 and a time limit.  Raise ValueError if one breaks a rule
    the server would refuse it for.
    """
    if form not in FORMS or stdio not in (STDIO_CAPTURE, STDIO_FDS):
        raise ValueError("form %r, stdio %r" % (form, stdio))
    check_options(list(options))
    fields = [(protocol.OP, ops.RUN.code)] + (env.fields() if env is not None else [])
    fields += [(protocol.FORM, form.encode()),
               (protocol.SOURCE, source.encode("utf-8", "surrogateescape")),
               (protocol.STDIO, stdio), (protocol.ECHO, b"1" if echo else b"0")]
    fields += [(protocol.PYOPT, os.fsencode(option)) for option in options]
    fields += [(protocol.ARG, os.fsencode(arg)) for arg in argv]
    fields += [(protocol.ENV, key + b"=" + value) for key, value in environ or ()]
    if cwd is not None:
        fields.append((protocol.CWD, cwd))
    if umask is not None:
        fields.append((protocol.UMASK, _U32.pack(umask)))
    if fd_numbers:
        fields.append((protocol.FD_NUMBERS, b"".join(_U32.pack(fd) for fd in fd_numbers)))
    if timeout_ms is not None:
        fields.append((protocol.TIMEOUT_MS, _U32.pack(timeout_ms)))
    return fields
