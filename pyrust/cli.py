"""The ``pyrust`` command: parse the command line, run it, choose the exit code.

The client paths import no server code and no ``argparse``/``re``: they are
parsed by hand, as python's own command line is.  ``pyrust serve`` hands its
arguments to the server's entry point.
"""

import os
import sys

from pyrust import __version__

USAGE = """\
usage: pyrust [--socket PATH] [--config FILE] -c CODE [ARG ...]
       pyrust [--socket PATH] [--config FILE] FILE [ARG ...]
       pyrust [--socket PATH] [--config FILE] -m MODULE [ARG ...]
       pyrust [--socket PATH] [--config FILE] - [ARG ...]   (program on stdin; also when piped)
       pyrust status [--json]
       pyrust --daemon | --stop-daemon | --daemon-status | --clear-cache
       pyrust serve [--socket PATH] [--config FILE] [--workers N] [--log-level LEVEL]
                    [--log-file FILE]
       pyrust --version | --help

Runs the program in the warm service exactly as python would: the same
output, exit status, argv, working directory and environment, with the
terminal's own stdin, stdout and stderr. One difference: with -c, the value
of a final bare expression is echoed, as the interactive interpreter does.

  --daemon         start a standalone service in the background
  --stop-daemon    stop the running service (requests in flight finish)
  --daemon-status  exit 0 if a service answers, 1 if not
  --clear-cache    clear the running service's compile caches
  status           the service's state (--json for every figure)
  serve            run the service in the foreground (see 'pyrust serve --help')
  --socket         socket path (else $PYRUST_SOCKET, the config's 'socket',
                   $XDG_RUNTIME_DIR/pyrust/pyrust.sock, ${TMPDIR:-/tmp}/pyrust-$UID/pyrust.sock)
  --config         configuration file (default $XDG_CONFIG_HOME/pyrust/config.toml)

exit status: the program's own, as python gives it (130 and the like when it
was interrupted); 124 when it ran past its time limit; 2 for usage errors;
125 when pyrust itself failed (no service, request refused, worker lost).
"""

EXIT_USAGE = 2
#: pyrust's own failures; below 126/127 (shell) and 128+N (killed by signal N).
EXIT_SERVICE = 125
_FLAGS = {"--daemon": "daemon", "--stop-daemon": "stop", "--daemon-status": "daemon-status",
          "--clear-cache": "clear-cache", "--version": "version", "-V": "version",
          "--help": "help", "-h": "help"}


class UsageError(Exception):
    """The command line is wrong; the message says how."""


def _absolute(option: str, value: str) -> str:
    """Return ``value`` made absolute against this process's working directory.

    A background server runs in ``/``, so a relative path must be resolved
    here, before anything is started.  Raise UsageError if it cannot be.
    """
    if not value:
        raise UsageError("%s needs a value" % option)
    try:
        return os.path.abspath(os.path.expanduser(value))
    except OSError as exc:  # the working directory was removed
        raise UsageError("%s %s: cannot resolve a relative path (%s); give it from /"
                         % (option, value, exc.strerror)) from None


def parse_args(argv: list) -> dict:
    """Return the options in ``argv`` as a dict; raise UsageError if malformed."""
    opts = {"socket": None, "config": None, "action": None, "form": None, "source": None,
            "rest": []}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in ("--socket", "--config"):
            if not eq:
                i += 1
                if i == len(argv):
                    raise UsageError("%s needs a value" % name)
                value = argv[i]
            opts[name[2:]] = _absolute(name, value)
        elif arg[:2] in ("-c", "-m"):
            source = arg[2:]
            if not source:
                i += 1
                if i == len(argv):
                    raise UsageError("%s needs an argument" % arg)
                source = argv[i]
            return dict(opts, action="run", form=arg[1], source=source, rest=argv[i + 1:])
        elif arg in _FLAGS:
            return dict(opts, action=_FLAGS[arg], rest=argv[i + 1:])
        elif arg in ("serve", "status"):
            return dict(opts, action=arg, rest=argv[i + 1:])
        elif arg == "-" or not arg.startswith("-"):
            form = "-" if arg == "-" else "f"
            return dict(opts, action="run", form=form, source=arg, rest=argv[i + 1:])
        else:
            raise UsageError("unknown option %r" % arg)
        i += 1
    if not sys.stdin.isatty():  # `pyrust < script.py`, as python reads it
        return dict(opts, action="run", form="-", source="", rest=[])
    raise UsageError("nothing to run (the interactive interpreter is python's own job)")


def load_settings(opts: dict):
    """Return (socket path, Config or None): the config is read only if a file exists."""
    from pyrust.paths import default_config_path, resolve_socket_path

    config = None
    # Reading TOML costs imports; do it only when a configuration exists.
    if opts["config"] is not None or os.path.exists(default_config_path()):
        from pyrust.config import load_config

        config = load_config(opts["config"])
    return resolve_socket_path(opts["socket"], config and config.socket), config


def connect(opts: dict, autostart: bool = True):
    """Return a socket connected to the service, autostarting a server if allowed.

    Raise PyrustError, saying what to do, when no service can be reached.
    """
    from pyrust import client
    from pyrust.errors import PyrustError, ServiceUnavailable

    path, config = load_settings(opts)
    try:
        return client.connect(path)
    except ServiceUnavailable as exc:
        if not autostart:
            raise
        if config is not None and not config.autostart:
            raise PyrustError("%s; start it with 'pyrust --daemon' (autostart is off in the "
                              "configuration)" % exc) from None
    from pyrust.daemon import start_daemon

    start_daemon(path, opts["config"], announce=False)
    return client.connect(path)


def run_program(opts: dict) -> int:
    """Run the program in the service with this process's fds 0-2; return its exit code."""
    from pyrust import client, protocol

    form, source = opts["form"], opts["source"]
    # sys.argv[0] as python sets it: "-c", "-m" (runpy then puts the path), the
    # script's path, "-", or "" for a program piped in without "-".
    argv0 = {"c": "-c", "m": "-m", "f": source}.get(form, source)
    if form == "-":  # the program comes from stdin, as `python -` reads it
        source = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    fields = [(protocol.OP, protocol.OP_RUN), (protocol.FORM, form.encode()),
              (protocol.SOURCE, source.encode("utf-8", "surrogateescape")),
              (protocol.STDIO, b"f")]
    fields += [(protocol.ARG, os.fsencode(arg)) for arg in [argv0] + opts["rest"]]
    fields += [(protocol.ENV, key + b"=" + value) for key, value in os.environb.items()]
    try:
        fields.append((protocol.CWD, os.getcwdb()))
    except OSError:
        pass  # the directory is gone: the program runs in the service's own
    mask = os.umask(0o022)
    os.umask(mask)
    fields.append((protocol.UMASK, mask.to_bytes(4, "big")))
    extra = _open_fds()
    if extra:
        fields.append((protocol.FD_NUMBERS, b"".join(fd.to_bytes(4, "big") for fd in extra)))
    message = client.extended_request(fields, (0, 1, 2) + extra)
    status, payload = client.request(lambda: connect(opts), message, forward_interrupts=True)
    if status in (protocol.OK, protocol.ERROR, protocol.TIMEOUT) and len(payload) >= 4:
        (code,) = protocol.EXIT_CODE.unpack(payload[:4])
        return _die_by_signal(-code) if code < 0 else code
    return _failed(status, payload)


#: The most fds beyond 0-2 a run takes along (one message carries 253 at most).
MAX_EXTRA_FDS = 250


def _open_fds() -> tuple:
    """Return this process's open fds above 2 (``3>file``, ``<(...)``), which the
    program gets at the same numbers, as python would have them."""
    for listing in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(listing)
        except OSError:
            continue
        fds = []
        for name in names:
            fd = int(name)
            if fd > 2:
                try:
                    os.fstat(fd)  # the listing's own fd is closed by now
                except OSError:
                    continue
                fds.append(fd)
        return tuple(sorted(fds)[:MAX_EXTRA_FDS])
    return ()


def _die_by_signal(signum: int) -> int:
    """End this process by ``signum``, as python does after an uncaught KeyboardInterrupt
    or when a signal killed it; return 128 + signum if the signal does not end it."""
    import _signal

    sys.stdout.flush()
    try:
        _signal.signal(signum, _signal.SIG_DFL)
    except (OSError, ValueError):  # SIGKILL keeps its default anyway
        pass
    os.kill(os.getpid(), signum)
    return 128 + signum


def _failed(status: int, payload: bytes) -> int:
    """Report a request the service refused or failed; return EXIT_SERVICE."""
    from pyrust import protocol

    name = protocol.STATUS_NAMES.get(status, "status %d" % status)
    sys.stderr.write("pyrust: %s: %s\n" % (name, payload.decode("utf-8", "replace").rstrip()))
    return EXIT_SERVICE


def control(opts: dict, op: bytes) -> "tuple[int, bytes]":
    """Send control operation ``op`` (never autostarting a service); return the reply."""
    from pyrust import client, protocol

    message = client.extended_request([(protocol.OP, op)])
    return client.request(lambda: connect(opts, autostart=False), message)


def service_command(opts: dict) -> int:
    """``status``, ``--stop-daemon``, ``--daemon-status``, ``--clear-cache``."""
    from pyrust import protocol
    from pyrust.errors import ServiceUnavailable

    action = opts["action"]
    op = {"status": protocol.OP_STATUS, "daemon-status": protocol.OP_STATUS,
          "stop": protocol.OP_STOP, "clear-cache": protocol.OP_CLEAR_CACHE}[action]
    try:
        status, payload = control(opts, op)
    except ServiceUnavailable as exc:
        sys.stderr.write("pyrust: %s\n" % exc)
        return 1 if action in ("daemon-status", "status") else EXIT_SERVICE
    if status != protocol.OK:
        return _failed(status, payload)
    if action == "status" and "--json" not in opts["rest"]:
        from pyrust.status import describe

        payload = describe(payload)
    elif action == "daemon-status":
        from pyrust.status import one_line

        payload = one_line(payload)
    sys.stdout.write(payload.decode("utf-8", "replace"))
    return 0


def main(argv: list = None) -> int:
    """Run the ``pyrust`` command line; return the exit status."""
    from pyrust.errors import PyrustError

    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(argv)
        action = opts["action"]
        if action == "run":
            return run_program(opts)
        if action == "serve":
            from pyrust.server.main import main as serve

            passed = [a for k in ("socket", "config") if opts[k] for a in ("--" + k, opts[k])]
            return serve(passed + opts["rest"])
        if action == "daemon":
            from pyrust.daemon import start_daemon

            return start_daemon(load_settings(opts)[0], opts["config"])
        if action == "version":
            print("pyrust %s" % __version__)
            return 0
        if action == "help":
            sys.stdout.write(USAGE)
            return 0
        return service_command(opts)
    except UsageError as exc:
        sys.stderr.write("pyrust: %s\n%s" % (exc, USAGE))
        return EXIT_USAGE
    except PyrustError as exc:
        sys.stderr.write("pyrust: %s\n" % exc)
        return EXIT_SERVICE
    except KeyboardInterrupt:
        return 130
