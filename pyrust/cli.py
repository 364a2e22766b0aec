"""The ``pyrust`` command: parse the command line, run it, choose the exit code.

The client paths import no server code and no ``argparse``/``re``: the
command line is python's own (pyrust/pyoptions.py) plus pyrust's few long
options and subcommands.  A run goes to the warm template of its environment
(pyrust/project.py chooses it); what pyrust leaves to python (``-V``, an
option python refuses) ``exec``s the interpreter itself.  ``pyrust serve``
hands its arguments to the server's entry point.
"""

import os
import sys

from pyrust import __version__
from pyrust.ops import COMMANDS, Command, Op

MYPY = False
if MYPY:  # for the type checker only: the client imports no typing at run time
    from _socket import socket

    from pyrust.config import Config
    from pyrust.environment import Environment
    from pyrust.project import Choice
    from pyrust.pyoptions import CommandLine

_SYNOPSIS = """\
usage: pyrust [OPTION ...] -c CODE [ARG ...]
       pyrust [OPTION ...] -m MODULE [ARG ...]
       pyrust [OPTION ...] FILE [ARG ...]     (a script, or a directory or zip with __main__.py)
       pyrust [OPTION ...] [-] [ARG ...]      (program on stdin; python's prompt on a terminal)
"""

_DESCRIPTION = """
Runs the program in a warm interpreter exactly as python would: the same
output, exit status, argv, working directory and environment, with the
terminal's own stdin, stdout and stderr. One difference: with -c, the value
of a final bare expression is echoed, as the interactive interpreter does
(echo = false in the configuration or in [tool.pyrust] turns that off).

OPTION is one of pyrust's own options or any option python takes (-u, -B,
-O, -E, -I, -W ARG, -X OPT, -i, ...), in any order before the program.
Options python applies at start-up get a warm interpreter of their own; -V,
--version, -x and python's --help-* run the interpreter itself.

  --python PATH    the interpreter, or a venv directory (else $PYRUST_PYTHON,
                   the active venv's, the nearest pyproject.toml's
                   [tool.pyrust] python, the configuration's 'python', the
                   one pyrust is installed with)
  --socket PATH    socket path (else $PYRUST_SOCKET, the config's 'socket',
                   $XDG_RUNTIME_DIR/pyrust/pyrust.sock, ${TMPDIR:-/tmp}/pyrust-$UID/pyrust.sock)
  --config FILE    configuration file (default $XDG_CONFIG_HOME/pyrust/config.toml)
"""

_EXIT_STATUS = """
exit status: the program's own, as python gives it (130 and the like when it
was interrupted); 124 when it ran past its time limit; 2 for usage errors;
125 when pyrust itself failed (no service, request refused, worker lost, an
environment that cannot start).
"""

EXIT_USAGE = 2
#: pyrust's own failures; below 126/127 (shell) and 128+N (killed by signal N).
EXIT_SERVICE = 125
#: pyrust's own options, each with a value; they may come anywhere before the program.
OWN_OPTIONS = ("--socket", "--config", "--python")
#: The commands pyrust carries out itself; those that send an op are in pyrust/ops.py.
LOCAL_COMMANDS = (
    Command("version", "pyrust's own version",
            doc="pyrust's own version (`pyrust -V` is python's)"),
    Command("--daemon", "start a standalone service in the background",
            doc="start a standalone server in the background; returns once it answers (or "
                "at once if one already does)"),
    Command("serve", "run the service in the foreground (see 'pyrust serve --help')",
            usage="serve [--socket PATH] [--config FILE] [--log-file FILE] [--SETTING VALUE ...]",
            doc="run the server in the foreground (`--socket`, `--config`, `--log-file FILE`: "
                "a log file rolled over by size, and every setting as `--key-with-dashes "
                "VALUE`; `pyrust serve --help` lists them); it uses a socket passed by "
                "systemd (`LISTEN_FDS`) or launchd, else binds its own"),
)
_COMMANDS = tuple(command for _, command in COMMANDS.values()) + LOCAL_COMMANDS
#: pyrust's own flags; the action of a command line is the flag or subcommand it names.
OWN_FLAGS = tuple(c.spelling for c in _COMMANDS if c.is_flag)
#: First arguments that are pyrust's subcommands, not a script of that name.
SUBCOMMANDS = tuple(c.spelling for c in _COMMANDS if not c.is_flag)


def documented_commands() -> "list[Command]":
    """Return every command in the order help and docs show them: subcommands,
    then flags (pyrust's own first, then those that send an op)."""
    flags = sorted((c for c in _COMMANDS if c.is_flag), key=lambda c: c not in LOCAL_COMMANDS)
    return [c for c in _COMMANDS if not c.is_flag] + flags


def usage() -> str:
    """Return ``pyrust --help``'s text: the commands' lines come from their declarations."""
    commands = documented_commands()
    flags = [c.usage for c in commands if c.is_flag]
    lines = ["       pyrust %s\n" % c.usage for c in commands if not c.is_flag]
    lines.append("       pyrust %s\n       pyrust --help\n" % " | ".join(flags))
    described = ["  %-15s  %s\n" % (c.spelling, c.help) for c in commands]
    return _SYNOPSIS + "".join(lines) + _DESCRIPTION + "".join(described) + _EXIT_STATUS


class UsageError(Exception):
    """The command line is wrong; the message says how."""


def _absolute(option: str, value: "str | None") -> str:
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
    """Return the command line ``argv`` as a dict; raise UsageError if malformed.

    Keys: "socket", "config", "python" (absolute paths or None), "line" (the
    pyoptions.CommandLine), "action" ("run", "python": exec the interpreter
    itself, "help", or the subcommand or flag named, as spelled), "rest" (a
    subcommand's or flag's arguments).
    """
    from pyrust import pyoptions

    line = pyoptions.parse(argv, OWN_OPTIONS, OWN_FLAGS)
    opts = {"line": line, "rest": line.args, "action": "run"}
    for option in OWN_OPTIONS:
        given = option in line.own
        opts[option[2:]] = _absolute(option, line.own[option]) if given else None
    if line.flag:
        opts["action"] = line.flag
    elif line.help:
        opts["action"] = "help"
    elif line.fallback:
        opts["action"] = "python"
    elif line.form == "f" and line.source in SUBCOMMANDS and not line.options:
        opts["action"] = line.source
    return opts


def load_settings(opts: dict) -> "tuple[str, Config | None]":
    """Return (socket path, Config or None): the config is read only if a file exists.

    Read once per command line: the result is kept in ``opts``.
    """
    if "settings" in opts:
        return opts["settings"]
    from pyrust.paths import default_config_path, resolve_socket_path

    config = None
    # Reading TOML costs imports; do it only when a configuration exists.
    if opts["config"] is not None or os.path.exists(default_config_path()):
        from pyrust.config import load_config

        config = load_config(opts["config"])
    configured = config.socket if config is not None else None
    opts["settings"] = resolve_socket_path(opts["socket"], configured), config
    return opts["settings"]


def connect(opts: dict, autostart: bool = True) -> "socket":
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


def _working_directory() -> "str | None":
    """Return the working directory (str), or None if it was removed."""
    try:
        return os.getcwd()
    except OSError:
        return None


def choose_environment(opts: dict) -> "tuple[Choice, Environment]":
    """Return (project.Choice, environment.Environment) of this command line's run:
    the interpreter, preloads and echo the sources name, and the start-up options
    and ``PYTHON*`` variables of the key.  Raise ConfigError if a source is malformed."""
    from pyrust.environment import Environment, startup_items
    from pyrust.project import choose

    choice = choose(opts["python"], load_settings(opts)[1], _working_directory(), os.environ)
    startup = startup_items(opts["line"].startup, os.environ)
    return choice, Environment(choice.python, choice.preload, choice.root, startup)


def exec_python(opts: dict) -> int:
    """Replace this process by the run's interpreter with python's own arguments
    (the command line without pyrust's options): for what pyrust leaves to python.

    Raise PyrustError if the interpreter cannot be run.
    """
    from pyrust.errors import PyrustError

    python = choose_environment(opts)[0].python
    try:
        os.execv(python, [python] + opts["line"].python_args)
    except OSError as exc:
        raise PyrustError("cannot run the interpreter %s (%s)" % (python, exc.strerror)) from None
    return EXIT_SERVICE  # not reached


def program(line: "CommandLine") -> "tuple[str, str, list[str]]":
    """Return (form, source, sys.argv) of the run ``line`` names.

    No program, or "-", with a terminal on stdin (or -i) is python's
    interactive prompt, form "i"; without one the program is read from stdin.
    """
    from pyrust.request import default_argv0

    form, source = line.form, line.source or ""
    if form is not None and form != "-":  # c, m or f
        return form, source, [default_argv0(form, source)] + line.args
    argv0 = source  # "-", or "" when no program was named
    if os.isatty(0) or "-i" in line.pyopt:
        return "i", "", [argv0] + line.args
    code = sys.stdin.buffer.read() if sys.stdin is not None else b""
    return "-", code.decode("utf-8", "surrogateescape"), [argv0] + line.args


def run_program(opts: dict) -> int:
    """Run the program in the service with this process's fds 0-2; return its exit code."""
    from pyrust import client, protocol, request

    choice, env = choose_environment(opts)
    line = opts["line"]
    form, source, argv = program(line)
    try:
        cwd = os.getcwdb()
    except OSError:
        cwd = None  # the directory is gone: the program runs in the service's own
    mask = os.umask(0o022)
    os.umask(mask)
    extra = _open_fds()
    fields = request.run_fields(form, source, argv, env=env, echo=choice.echo,
                                options=line.pyopt, environ=list(os.environb.items()), cwd=cwd,
                                umask=mask, fd_numbers=extra)
    message = client.extended_request(fields, (0, 1, 2) + extra)
    status, payload = client.run(load_settings(opts)[0], env, message, lambda: connect(opts))
    if status in (protocol.OK, protocol.ERROR, protocol.TIMEOUT):
        if len(payload) < 4:  # not from a pyrust service: no exit code to give
            sys.stderr.write("pyrust: the service's reply (%s) has no exit code (%d bytes), "
                             "so the code may have run part way\n"
                             % (protocol.STATUS_NAMES[status], len(payload)))
            return EXIT_SERVICE
        (code,) = protocol.EXIT_CODE.unpack(payload[:4])
        return _die_by_signal(-code) if code < 0 else code
    return _failed(status, payload)


def _open_fds() -> tuple:
    """Return this process's open fds above 2 (``3>file``, ``<(...)``), which the
    program gets at the same numbers, as python would have them."""
    from pyrust.request import MAX_EXTRA_FDS

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
    """Send the op with code ``op`` (never autostarting a service); return the reply."""
    from pyrust import client, protocol

    message = client.extended_request([(protocol.OP, op)])
    return client.request(lambda: connect(opts, autostart=False), message)


def service_command(opts: dict, op: "Op", command: Command) -> int:
    """Carry out a command that sends ``op`` to the service (``status``,
    ``--stop-daemon``...) and show the reply as ``command`` says."""
    from pyrust import protocol
    from pyrust.errors import ServiceUnavailable

    try:
        status, payload = control(opts, op.code)
    except ServiceUnavailable as exc:
        sys.stderr.write("pyrust: %s\n" % exc)
        return command.unavailable_exit
    if status != protocol.OK:
        return _failed(status, payload)
    if command.show and "--json" not in opts["rest"]:
        from pyrust import status as presentation

        payload = getattr(presentation, command.show)(payload)
    sys.stdout.write(payload.decode("utf-8", "replace"))
    return 0


def main(argv: "list[str] | None" = None) -> int:
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
        if action == "--daemon":
            from pyrust.daemon import start_daemon

            return start_daemon(load_settings(opts)[0], opts["config"])
        if action == "python":
            return exec_python(opts)
        if action == "version":
            sys.stdout.write("pyrust %s\n" % __version__)
            return 0
        if action == "help":
            sys.stdout.write(usage())
            return 0
        return service_command(opts, *COMMANDS[action])
    except UsageError as exc:
        sys.stderr.write("pyrust: %s\n%s" % (exc, usage()))
        return EXIT_USAGE
    except PyrustError as exc:
        sys.stderr.write("pyrust: %s\n" % exc)
        return EXIT_SERVICE
    except KeyboardInterrupt:
        return 130
