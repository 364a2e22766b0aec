"""Run one program the way ``python -c`` would, inside a long-lived worker.

Each run gets a fresh ``__main__`` module, its own captured stdout/stderr
(interleaved in the order written), REPL-style echo of a final bare
expression, and tracebacks formatted exactly as ``python -c`` prints them.
Interpreter state a later run would see (``sys`` streams and hooks, argv,
path, ``__main__``, the working directory) is restored afterwards.
"""

import ast
import builtins
import collections
import io
import linecache
import os
import signal
import sys
import types
from importlib.machinery import BuiltinImporter

from pyrust import protocol

FILENAME = "<string>"  # what python -c names the code in tracebacks
#: Programs larger than this are compiled every time rather than cached, so
#: the cache's memory stays bounded by ``entries × 1 MiB``.
CACHE_MAX_SOURCE = 1 << 20
#: Recursion levels that the interpreter counts below the program's frame
#: besides pyrust's Python frames (C-level calls such as exec() itself); they
#: differ by version, and the differential test against python -c checks them.
_EXTRA_DEPTH = {(3, 9): 2, (3, 10): 2, (3, 11): 1}.get(sys.version_info[:2], 0)
_get_recursion_limit = sys.getrecursionlimit
_set_recursion_limit = sys.setrecursionlimit
#: Python 3.13+ shows the source lines of python -c code in tracebacks.
_SHOW_SOURCE = sys.version_info >= (3, 13)
#: ``sys`` attributes a program may rebind and the next one must not see.
_SYS_ATTRS = ("stdin", "stdout", "stderr", "argv", "displayhook", "excepthook")


#: Exit code of a run stopped by its time limit (as timeout(1) uses).
EXIT_TIMEOUT = 124
#: After the first interrupt, how often it is raised again in code that catches it.
REINTERRUPT_INTERVAL = 1.0


class RequestTimeout(BaseException):
    """Raised inside a program that runs past its time limit.

    A BaseException, like KeyboardInterrupt, so ``except Exception`` does not
    swallow it; code that swallows it anyway gets it again every second, and
    the supervisor kills a worker whose request outlives the grace period.
    """

    __module__ = "pyrust"

    def __init__(self, seconds: float) -> None:
        super().__init__("timed out after %g s" % seconds)


class Result(collections.namedtuple("Result", "status output exit_code")):
    """What a run produced: wire status, output bytes, and python's exit code."""


class _Sink(io.BytesIO):
    """The bytes both captured streams write to; survives the program closing them.

    Beyond ``limit`` bytes it keeps counting but stores nothing more, so a
    program printing without end cannot grow the worker without bound.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.size = 0

    def write(self, data) -> int:
        self.size += len(data)
        if self.size <= self.limit:
            return super().write(data)
        return len(data)

    def close(self):
        pass


class Program(collections.namedtuple("Program", "body echo")):
    """A compiled program: ``body`` (exec code) and ``echo`` (eval code of a
    final bare expression, or None)."""


def compile_program(source: str, filename: str = FILENAME) -> Program:
    """Return ``source`` compiled for a run; raise SyntaxError (or ValueError) if it does not compile."""
    tree = compile(source, filename, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    echo = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body.pop()
        echo = compile(ast.Expression(last.value), filename, "eval", dont_inherit=True)
    return Program(compile(tree, filename, "exec", dont_inherit=True), echo)


class Executor:
    """Runs programs with a bounded LRU cache of compiled code keyed by source."""

    def __init__(self, cache_size: int, max_output: int = 1 << 62) -> None:
        self.cache_size = cache_size
        self.max_output = max_output
        self._cache = collections.OrderedDict()
        self._time_limit = 0.0  # of the run in progress; 0 when none runs
        # The worker's own directory, to return to after each run even if the
        # program renamed or removed the directory it moved to.
        self._home_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def install_timer(self) -> None:
        """Take SIGALRM for time limits (main thread only; the worker calls it once)."""
        signal.signal(signal.SIGALRM, self._on_alarm)

    def timer_installed(self) -> bool:
        """Return whether SIGALRM is still ours (a program may have taken it)."""
        return signal.getsignal(signal.SIGALRM) == self._on_alarm

    def _on_alarm(self, signum, frame) -> None:
        if self._time_limit:  # only inside a run: never in pyrust's own code around it
            raise RequestTimeout(self._time_limit)

    def clear_cache(self) -> int:
        """Empty the compile cache; return how many entries it held."""
        count = len(self._cache)
        self._cache.clear()
        return count

    def cache_len(self) -> int:
        """Return the number of compiled programs cached."""
        return len(self._cache)

    def _compiled(self, source: str) -> Program:
        """Return ``source`` compiled, from the cache when it is there."""
        program = self._cache.get(source)
        if program is not None:
            self._cache.move_to_end(source)
            return program
        program = compile_program(source)
        if self.cache_size and len(source) <= CACHE_MAX_SOURCE:
            self._cache[source] = program
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return program

    def run(self, source: str, time_limit: float = 0.0) -> Result:
        """Run ``source`` as ``python -c`` would; return its Result.

        ``time_limit`` (seconds, 0 for none) interrupts the program with
        RequestTimeout (status TIMEOUT) if it runs longer; install_timer()
        must have been called.  Output beyond ``max_output`` bytes is dropped
        and the run refused (status BAD_REQUEST).  Never raises for anything
        the program does: exceptions, SystemExit and KeyboardInterrupt all
        become part of the Result.
        """
        sink = _Sink(self.max_output)
        out = io.TextIOWrapper(sink, encoding="utf-8", write_through=True)
        err = io.TextIOWrapper(sink, encoding="utf-8", errors="backslashreplace",
                               write_through=True)
        saved = [getattr(sys, name) for name in _SYS_ATTRS]
        saved_path = sys.path[:]
        saved_main = sys.modules.get("__main__")
        main = _fresh_main()
        sys.modules["__main__"] = main
        sys.stdin, sys.stdout, sys.stderr = io.StringIO(), out, err
        sys.argv = ["-c"]
        try:
            exit_code = self._execute(source, main.__dict__, err, time_limit)
        except RequestTimeout:  # the alarm fired just as the program ended
            exit_code = EXIT_TIMEOUT
        finally:
            for name, value in zip(_SYS_ATTRS, saved):
                setattr(sys, name, value)
            if sys.path != saved_path:
                sys.path[:] = saved_path
            sys.modules["__main__"] = saved_main
            os.fchdir(self._home_fd)
        if sink.size > sink.limit:
            return Result(protocol.BAD_REQUEST, b"output too large: %d bytes, the maximum is %d "
                          b"bytes (max_reply_bytes in the configuration)"
                          % (sink.size, sink.limit), 1)
        output = _utf8(sink.getvalue())
        if exit_code == EXIT_TIMEOUT:
            return Result(protocol.TIMEOUT, output, exit_code)
        return Result(protocol.OK if exit_code == 0 else protocol.ERROR, output, exit_code)

    def _execute(self, source: str, namespace: dict, err, time_limit: float) -> int:
        """Compile and run ``source`` in ``namespace``; return python's exit code."""
        try:
            program = self._compiled(source)
        except Exception as exc:  # SyntaxError, ValueError (NUL bytes), RecursionError...
            # Like python -c: no "Traceback" header, just the error and its caret.
            _print_like_python(exc, None, err)
            return 1
        limit = _get_recursion_limit()
        # python -c runs the program's frame at depth 1; here pyrust's frames
        # lie below it, so the limit grows by their number and a program may
        # recurse exactly as deep as under python. The program sees (and sets)
        # the limit as python -c would show it.
        offset = _stack_depth() + _EXTRA_DEPTH
        _set_recursion_limit(limit + offset)
        sys.getrecursionlimit = lambda: _get_recursion_limit() - offset
        sys.setrecursionlimit = lambda n: _set_recursion_limit(n + offset)
        if _SHOW_SOURCE:
            linecache.cache[FILENAME] = (len(source), None, source.splitlines(True), FILENAME)
        if time_limit:
            self._time_limit = time_limit
            signal.setitimer(signal.ITIMER_REAL, time_limit, REINTERRUPT_INTERVAL)
        try:
            exec(program.body, namespace)
            if program.echo is not None:
                _echo(eval(program.echo, namespace))
        except SystemExit as exc:
            return _system_exit_code(exc, err)
        except RequestTimeout as exc:
            _print_exception(exc, err)
            return EXIT_TIMEOUT
        except BaseException as exc:
            _print_exception(exc, err)
            return 1
        finally:
            if time_limit:
                self._time_limit = 0.0
                signal.setitimer(signal.ITIMER_REAL, 0)
            sys.getrecursionlimit = _get_recursion_limit
            sys.setrecursionlimit = _set_recursion_limit
            _set_recursion_limit(limit)
            if _SHOW_SOURCE:
                linecache.cache.pop(FILENAME, None)
        return 0


def _fresh_main() -> types.ModuleType:
    """Return a new ``__main__`` module whose globals look as under python -c."""
    main = types.ModuleType("__main__")
    main.__dict__.update(__builtins__=builtins, __annotations__={},
                         __loader__=BuiltinImporter)
    return main


def _stack_depth() -> int:
    """Return the number of Python frames on the stack, the caller's included."""
    depth, frame = 0, sys._getframe(1)
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    return depth


def _echo(value) -> None:
    """Write ``value`` as ``sys.displayhook`` does, without touching ``builtins._``."""
    if value is not None:
        sys.stdout.write(repr(value) + "\n")


def _print_exception(exc: BaseException, err) -> None:
    """Print ``exc`` with its traceback as python -c does, without pyrust's own frame."""
    tb = exc.__traceback__
    # The first entry is Executor._execute, which called exec(); python's
    # traceback starts at the program's own frame.
    tb = tb.tb_next if tb is not None else None
    _print_like_python(exc, tb, err)


def _print_like_python(exc: BaseException, tb, err) -> None:
    """Print ``exc`` with python's own C printer (not the traceback module, whose
    carets differ), to ``err`` whatever the program did to ``sys.stderr``."""
    saved = sys.stderr
    sys.stderr = err
    try:
        sys.__excepthook__(type(exc), exc.with_traceback(tb), tb)
    finally:
        sys.stderr = saved


def _system_exit_code(exc: SystemExit, err) -> int:
    """Return the exit code python gives for ``exc``, printing a message as it does."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF  # as the OS truncates it: exit(-1) and exit(255) give 255
    err.write("%s\n" % (code,))
    return 1


def _utf8(data: bytes) -> bytes:
    """Return ``data`` unchanged if valid UTF-8, else with bad bytes replaced by U+FFFD."""
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace").encode("utf-8")
