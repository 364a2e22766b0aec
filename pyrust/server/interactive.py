"""Python's interactive mode, on the client's own terminal, in a warm process.

What ``python`` does around its prompt, step by step as its ``main.c`` does
it: the banner, importing readline, PYTHONSTARTUP, ``sys.__interactivehook__``
and the prompt itself.  The prompt is the interpreter's own: its C loop
(``PyRun_InteractiveLoopFlags``, through ctypes) on every version, or on 3.13
the new REPL (``_pyrepl``) where python would use it.  So prompts, tracebacks,
``exit()`` and end-of-file behave exactly as under python, down to the
process exiting from inside the loop on ``SystemExit``, as python's does.

Stdlib only, and 3.9-compatible: the template runs the user's interpreter.
"""

import ctypes
import os
import runpy
import sys

from pyrust.server.osutil import libc
from pyrust.server.report import system_exit_code

# For mypy only, which takes any name TYPE_CHECKING as true: a worker imports
# no typing (the programs it runs would find it already imported).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any, Callable

    from pyrust.server.runoptions import RunOptions

COPYRIGHT = 'Type "help", "copyright", "credits" or "license" for more information.'
#: 3.11 imports readline and rlcompleter before sys.path[0] exists; 3.9 only readline, after.
READLINE_FIRST = sys.version_info >= (3, 11)
#: Python 3.13 has the new REPL.
PYREPL = sys.version_info >= (3, 13)


def stdin_is_interactive(options: "RunOptions") -> bool:
    """Return whether python treats stdin as interactive: a terminal, or -i."""
    return options.interactive > 0 or os.isatty(0)


def before_path0(options: "RunOptions", program: bool) -> None:
    """Do what python's start-up does on the client's terminal before it puts
    sys.path[0] in place: -u's unbuffered C streams; on 3.11+, readline."""
    if options.unbuffered:
        set_unbuffered()
    if READLINE_FIRST:
        import_readline(options, program)


def after_path0(options: "RunOptions", program: bool) -> None:
    """Do what python's start-up does on the client's terminal after it puts
    sys.path[0] in place: the banner; before 3.11, readline."""
    banner(options, program)
    if not READLINE_FIRST:
        import_readline(options, program)


def banner(options: "RunOptions", program: bool) -> None:
    """Write python's start-up banner to fd 2 where python writes it: not under
    -q, and only for the prompt without a program (any time under -v)."""
    if options.quiet:
        return
    if not sys.flags.verbose and (program or not stdin_is_interactive(options)):
        return
    text = "Python %s on %s\n" % (sys.version, sys.platform)
    if not sys.flags.no_site:
        text += COPYRIGHT + "\n"
    os.write(2, text.encode("utf-8", "backslashreplace"))


def import_readline(options: "RunOptions", program: bool) -> None:
    """Import readline (and on 3.11+ rlcompleter) as python does before its
    prompt on a terminal; failures are ignored, as python ignores them."""
    if sys.flags.isolated or (not options.inspect and program) or not os.isatty(0):
        return
    for name in ("readline", "rlcompleter") if READLINE_FIRST else ("readline",):
        try:
            __import__(name)
        except BaseException:  # python clears whatever the import raised
            pass


def main(options: "RunOptions") -> int:
    """Run the prompt without a program (``python`` with stdin interactive, or a
    program read from stdin otherwise); return python's exit code (that of the
    start-up file or the interactive hook, if one ended it before the prompt)."""
    interactive = stdin_is_interactive(options)
    if interactive:
        code = run_startup(options) if options.startup else None
        if code is None:
            code = run_hook()
        if code is not None:
            return code
    if PYREPL and os.isatty(0) and not options.basic_repl:
        # python -m's own runner, private: typeshed does not declare it.
        run_as_main = runpy._run_module_as_main  # type: ignore[attr-defined]
        return _module_code(run_as_main, "_pyrepl", False)
    if interactive:
        return int(_c_loop() != 0)
    return int(_c_api().PyRun_SimpleFileExFlags(_c_stdin(), b"<stdin>", 0, None) != 0)


def after_program(options: "RunOptions", code: int) -> int:
    """Enter the prompt after a program as python's -i (or PYTHONINSPECT, also
    when the program set it) does on an interactive stdin; return the exit
    code: the program's ``code`` when there is no prompt, else the prompt's."""
    if not options.inspect and not _getenv_set("PYTHONINSPECT"):
        return code
    if not stdin_is_interactive(options):
        return code
    hooked = run_hook()
    if hooked is not None:
        return hooked
    if PYREPL and os.isatty(0) and not options.basic_repl:
        from _pyrepl.main import interactive_console

        return _module_code(interactive_console, pythonstartup=True)
    return int(_c_loop() != 0)


def _getenv_set(name: str) -> bool:
    """Return whether the process environment (as C sees it) has ``name`` set
    and non-empty, unless the template ignores the environment."""
    if sys.flags.ignore_environment:
        return False
    getenv = libc.getenv
    getenv.restype = ctypes.c_char_p
    return bool(getenv(name.encode()))


def run_startup(options: "RunOptions") -> "int | None":
    """Run the PYTHONSTARTUP file in ``__main__`` as python does before its
    prompt; return None to go on, or an exit code if it raised SystemExit
    while python's own handling still returns."""
    sys.audit("cpython.run_startup", options.startup)
    try:
        fd = os.open(options.startup, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        sys.stderr.write("Could not open PYTHONSTARTUP\n")
        return _print_error(exc, None)
    fdopen = libc.fdopen
    fdopen.restype = ctypes.c_void_p
    fp = fdopen(fd, b"r")
    # python's own runner: __file__ set for the run, errors printed, SystemExit exits.
    _c_api().PyRun_SimpleFileExFlags(fp, os.fsencode(options.startup), 1, None)
    return None


def run_hook() -> "int | None":
    """Call ``sys.__interactivehook__`` as python does before its prompt; return
    None to go on, or the exit code of a SystemExit it raised."""
    hook = getattr(sys, "__interactivehook__", None)
    if hook is None:
        return None
    try:
        sys.audit("cpython.run_interactivehook", hook)
        hook()
    except BaseException as exc:
        sys.stderr.write("Failed calling sys.__interactivehook__\n")
        return _print_error(exc, _below_caller(exc))
    return None


def _below_caller(exc: BaseException) -> "TracebackType | None":
    """Return the traceback of a caught ``exc`` without its first entry (the
    frame that caught it), as python's start-up shows it."""
    tb = exc.__traceback__
    return tb.tb_next if tb is not None else None


def _print_error(exc: BaseException, tb: "TracebackType | None") -> "int | None":
    """Report ``exc`` as python's start-up does (``pymain_err_print``): return
    the exit code of a SystemExit, else print it and return None."""
    if isinstance(exc, SystemExit):
        return system_exit_code(exc, sys.stderr)
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
    if sys.version_info >= (3, 12):
        sys.last_exc = exc
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)
    return None


def _module_code(run: "Callable[..., object]", *args: "Any", **kwargs: "Any") -> int:
    """Run the new REPL: ``run(*args, **kwargs)``; return 0, or 1 if it raised
    (printed as python prints it): python 3.13 turns any other outcome into 1."""
    try:
        run(*args, **kwargs)
    except BaseException as exc:
        code = 1
        if isinstance(exc, SystemExit):
            code = system_exit_code(exc, sys.stderr)
        else:
            _print_error(exc, _below_caller(exc))
        return int(code != 0)
    return 0


def _c_loop() -> int:
    """Run the interpreter's own interactive loop on C's stdin until end-of-file."""
    return _c_api().PyRun_InteractiveLoopFlags(_c_stdin(), b"<stdin>", None)


class _CApi:
    """The interpreter's C functions this module calls (the GIL stays held)."""

    def __init__(self) -> None:
        api = ctypes.pythonapi
        self.PyRun_InteractiveLoopFlags = api.PyRun_InteractiveLoopFlags
        self.PyRun_SimpleFileExFlags = api.PyRun_SimpleFileExFlags
        for function in (self.PyRun_InteractiveLoopFlags, self.PyRun_SimpleFileExFlags):
            function.restype = ctypes.c_int
        self.PyRun_InteractiveLoopFlags.argtypes = (ctypes.c_void_p, ctypes.c_char_p,
                                                    ctypes.c_void_p)
        self.PyRun_SimpleFileExFlags.argtypes = (ctypes.c_void_p, ctypes.c_char_p,
                                                 ctypes.c_int, ctypes.c_void_p)


_api: "_CApi | None" = None


def _c_api() -> _CApi:
    global _api
    if _api is None:
        _api = _CApi()
    return _api


def _c_stdin() -> "int | None":
    """Return C's ``stdin`` (a ``FILE *``, None if NULL), which reads fd 0."""
    cdll = ctypes.CDLL(None)
    for name in ("stdin", "__stdinp"):  # glibc and musl; macOS
        try:
            return ctypes.c_void_p.in_dll(cdll, name).value
        except ValueError:
            continue
    raise OSError("cannot find the C library's stdin")


def set_unbuffered() -> None:
    """Make C's standard streams unbuffered, as python's -u does at start (the
    prompt reads and writes through them)."""
    cdll = ctypes.CDLL(None)
    for name in (("stdin", "stdout", "stderr"), ("__stdinp", "__stdoutp", "__stderrp")):
        try:
            streams = [ctypes.c_void_p.in_dll(cdll, n).value for n in name]
        except ValueError:
            continue
        for stream in streams:
            libc.setvbuf(ctypes.c_void_p(stream), None, 2, 8192)  # _IONBF
        return
