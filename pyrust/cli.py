"""The ``pyrust`` command: parse the command line, run it, choose the exit code.

The client paths import no server code and no ``argparse``/``re``: they are
parsed by hand, as python's own command line is.  ``pyrust serve`` hands its
arguments to the server's entry point.
"""

import os
import sys

from pyrust import __version__

USAGE = """\
usage: pyrust [--socket PATH] [--config FILE] -c CODE
       pyrust [--socket PATH] [--config FILE] --daemon
       pyrust serve [--socket PATH] [--config FILE] [--workers N] [--log-level LEVEL]
       pyrust --version | --help

  -c CODE    run CODE in the warm service and print its output; the value of a
             final bare expression is echoed as the interactive interpreter does
  --daemon   start a standalone service in the background; return once it answers
  serve      run the service in the foreground (see 'pyrust serve --help')
  --socket   socket path (else $PYRUST_SOCKET, the config's 'socket',
             $XDG_RUNTIME_DIR/pyrust/pyrust.sock, /tmp/pyrust-$UID/pyrust.sock)
  --config   configuration file (default $XDG_CONFIG_HOME/pyrust/config.toml)

exit status: 0 when the code ran, 1 when it raised or the service refused or
failed the request; 2 for usage errors; 125 when no service could be reached.
"""

EXIT_USAGE = 2
#: No service could be reached; below 126/127 (shell) and 128+N (killed by signal N).
EXIT_SERVICE = 125


class UsageError(Exception):
    """The command line is wrong; the message says how."""


def parse_args(argv: list) -> dict:
    """Return the options in ``argv`` as a dict; raise UsageError if malformed."""
    opts = {"socket": None, "config": None, "action": None, "code": None, "rest": []}
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
            opts[name[2:]] = value
        elif arg == "-c" or (arg.startswith("-c") and len(arg) > 2):
            code = arg[2:] if len(arg) > 2 else None
            if code is None:
                if i + 1 == len(argv):
                    raise UsageError("-c needs an argument")
                i += 1
                code = argv[i]
            return dict(opts, action="run", code=code, rest=argv[i + 1:])
        elif arg in ("--daemon", "--version", "--help", "-h", "-V"):
            return dict(opts, action=arg.lstrip("-"), rest=argv[i + 1:])
        elif arg == "serve":
            return dict(opts, action="serve", rest=argv[i + 1:])
        else:
            raise UsageError("unknown argument %r" % arg)
        i += 1
    raise UsageError("nothing to do")


def load_settings(opts: dict):
    """Return (socket path, Config or None): the config is read only if a file exists."""
    from pyrust.paths import default_config_path, resolve_socket_path

    config = None
    # Reading TOML costs imports; do it only when a configuration exists.
    if opts["config"] is not None or os.path.exists(default_config_path()):
        from pyrust.config import load_config

        config = load_config(opts["config"])
    return resolve_socket_path(opts["socket"], config and config.socket), config


def connect(opts: dict):
    """Return a socket connected to the service, autostarting a server if allowed.

    Raise PyrustError, saying what to do, when no service can be reached.
    """
    from pyrust import client
    from pyrust.errors import PyrustError, ServiceUnavailable

    path, config = load_settings(opts)
    try:
        return client.connect(path)
    except ServiceUnavailable as exc:
        if config is not None and not config.autostart:
            raise PyrustError("%s; start it with 'pyrust --daemon' (autostart is off in the "
                              "configuration)" % exc) from None
    from pyrust.daemon import start_daemon

    start_daemon(path, opts["config"], announce=False)
    return client.connect(path)


def run_code(opts: dict) -> int:
    """``pyrust -c CODE``: run it, write its output, return the exit code."""
    from pyrust import client, protocol

    if opts["rest"]:
        raise UsageError("arguments after -c CODE are not supported yet")
    code = opts["code"].encode("utf-8", "surrogateescape")
    status, output = client.request(lambda: connect(opts), code)
    if status == protocol.OK:
        sys.stdout.buffer.write(output)
        return 0
    if status == protocol.ERROR:  # the program's output, then its traceback
        sys.stderr.buffer.write(output)
        return 1
    name = protocol.STATUS_NAMES.get(status, "status %d" % status)
    sys.stderr.write("pyrust: %s: %s\n" % (name, output.decode("utf-8", "replace").rstrip()))
    return 1


def main(argv: list = None) -> int:
    """Run the ``pyrust`` command line; return the exit status."""
    from pyrust.errors import PyrustError

    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(argv)
        action = opts["action"]
        if action == "run":
            return run_code(opts)
        if action == "serve":
            from pyrust.server.main import main as serve

            passed = [a for k in ("socket", "config") if opts[k] for a in ("--" + k, opts[k])]
            return serve(passed + opts["rest"])
        if action == "daemon":
            from pyrust.daemon import start_daemon

            return start_daemon(load_settings(opts)[0], opts["config"])
        if action in ("version", "V"):
            print("pyrust %s" % __version__)
            return 0
        sys.stdout.write(USAGE)
        return 0
    except UsageError as exc:
        sys.stderr.write("pyrust: %s\n%s" % (exc, USAGE))
        return EXIT_USAGE
    except PyrustError as exc:
        sys.stderr.write("pyrust: %s\n" % exc)
        return EXIT_SERVICE
    except KeyboardInterrupt:
        return 130
