"""Run one program the way ``python`` would, inside a long-lived worker.

A Job names the program (``-c`` code, a file, a module, or a program read
from stdin), its argv, cwd, environment, time limit, and either the client's
fds 0-2 or None to capture the output as protocol v1 does.  Each run gets a
fresh ``__main__``; tracebacks, exit codes and ``SystemExit`` behave exactly
as under ``python``.  The one intended difference: with ``-c``, the value of
a final bare expression is echoed as the interactive interpreter does.
"""

import _signal
import ast
import collections
import linecache
import os
import runpy
import signal
import sys

from pyrust import protocol
from pyrust.server import osutil
from pyrust.server.runstate import (Borrowed, Capture, client_streams, enter_for_good,
                                    exit_sequence, fresh_main)

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
#: Exit code of a run stopped by its time limit (as timeout(1) uses).
EXIT_TIMEOUT = 124
#: What _execute returns for a run its time limit stopped: no exit code can be
#: this, so SystemExit(124) stays an ordinary exit.
_TIMED_OUT = -1000
#: Exit code meaning "die by SIGINT", as python does after an uncaught KeyboardInterrupt.
EXIT_SIGINT = -signal.SIGINT
#: Exit status of a run pyrust refused after it had taken the client's terminal.
EXIT_REFUSED = 125
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


class Job(collections.namedtuple("Job", "form source argv cwd env time_limit fds umask targets",
                                  defaults=(None, ()))):
    """One run: ``form`` is "c", "-", "f" or "m"; ``fds`` the client's 0-2 (and more,
    to go to the numbers ``targets`` lists) or None to capture the output; ``umask``
    the client's, or None to keep the worker's."""


def v1_job(code: str, time_limit: float) -> Job:
    """Return the Job of a protocol v1 request: ``python -c`` with captured output."""
    return Job("c", code, ("-c",), None, None, time_limit, None)


class Result(collections.namedtuple("Result", "status output exit_code")):
    """What a run produced: wire status, captured output bytes, and python's exit code."""


class Program(collections.namedtuple("Program", "body echo")):
    """A compiled program: ``body`` (exec code) and ``echo`` (eval code of a
    final bare expression, or None)."""


def compile_program(source, filename: str = FILENAME, echo: bool = True) -> Program:
    """Return ``source`` compiled for a run; raise SyntaxError (or ValueError) if it does not compile."""
    tree = compile(source, filename, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    last = None
    if echo and tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body.pop().value), filename, "eval", dont_inherit=True)
    return Program(compile(tree, filename, "exec", dont_inherit=True), last)


class Executor:
    """Runs Jobs, with a bounded LRU cache of compiled ``-c`` code keyed by source."""

    def __init__(self, cache_size: int, max_output: int = 1 << 62,
                 max_program: int = 1 << 62) -> None:
        self.cache_size = cache_size
        self.max_program = max_program  # bytes of a program file (max_request_bytes)
        self._cache = collections.OrderedDict()
        self._borrowed = Borrowed()
        self._capture = Capture(max_output)
        self._time_limit = 0.0  # of the run in progress; 0 when none runs
        self._hidden_depth = None  # recursion the interpreter counts beyond Python frames

    def calibrate(self) -> None:
        """Measure the recursion the interpreter counts below the caller beyond its
        Python frames (C-level entries into the eval loop, which differ by
        version and by how this process was started), so a program may
        recurse exactly as deep as under python.  Call it where the runs'
        stack begins (the worker does, before it accepts); it costs one dive
        to the recursion limit, about a thousand calls."""
        depth = _stack_depth() + 1  # and _free_frames' own frame
        self._hidden_depth = max(0, _get_recursion_limit() - depth - _free_frames())

    # -- signals: the time limit ---------------------------------------------------

    def install_signals(self) -> None:
        """Take SIGALRM (time limits); main thread only."""
        signal.signal(signal.SIGALRM, self._on_alarm)

    def signals_installed(self) -> bool:
        """Return whether the handler is still ours (a program may have taken it)."""
        # _signal's getsignal: the signal module's wraps the answer in an Enum.
        return _signal.getsignal(signal.SIGALRM) == self._on_alarm

    def _on_alarm(self, signum, frame) -> None:
        if self._time_limit:  # only inside a run: never in pyrust's own code around it
            raise RequestTimeout(self._time_limit)

    # -- the compile cache --------------------------------------------------------

    def clear_cache(self) -> int:
        """Empty the compile cache; return how many entries it held."""
        count = len(self._cache)
        self._cache.clear()
        return count

    def cache_len(self) -> int:
        """Return the number of compiled programs cached."""
        return len(self._cache)

    def _compiled(self, source: str) -> Program:
        """Return ``-c`` code ``source`` compiled, from the cache when it is there."""
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

    # -- runs -----------------------------------------------------------------------

    def run(self, job: Job) -> Result:
        """Run ``job``, whose output is captured, as python would; return its Result.

        install_signals() must have been called for time limits.  Captured
        output beyond ``max_output`` bytes is dropped and the run refused
        (status BAD_REQUEST), as is a program file over ``max_program`` bytes
        (it does not run).  Never raises for anything the program does:
        exceptions, SystemExit and interrupts become part of the Result.  The
        process is given back as it was, for the connection's next request.
        """
        capture = self._capture
        streams = capture.begin()
        try:
            self._borrowed.enter(job, streams, fresh_main())
        except OSError as exc:
            message = "pyrust: cannot enter %s: %s\n" % (job.cwd, exc.strerror)
            return Result(protocol.ERROR, message.encode(), 1)
        try:
            exit_code = self._execute(job, sys.modules["__main__"].__dict__, streams[2])
        except RequestTimeout:  # the alarm fired just as the program ended
            exit_code = _TIMED_OUT
        except KeyboardInterrupt:
            exit_code = EXIT_SIGINT
        except protocol.ProtocolError as exc:  # a program file over the limit
            return Result(protocol.BAD_REQUEST, str(exc).encode(), 1)
        finally:
            self._borrowed.leave()
        return _result(exit_code, capture)

    def refuse_file(self, job: Job):
        """Return the refusal of a program file over ``max_program`` bytes, or None.

        Checked before a run takes the client's terminal, so the refusal can
        still go back as a reply; a file that cannot be read is python's to report.
        """
        if job.form != "f":
            return None
        try:
            size = os.stat(os.path.join(job.cwd or "", job.source)).st_size
        except OSError:
            return None
        return self._too_large(size) if size > self.max_program else None

    def _too_large(self, size: int) -> str:
        return protocol.too_large("request", size, self.max_program, "max_request_bytes")

    def run_to_exit(self, job: Job) -> None:
        """Run ``job`` on the client's own fds; this process then ends as python ends.

        The process becomes the run's: the client's fds at their numbers (none
        of pyrust's left but what the caller keeps), umask, argv, cwd,
        environment, a fresh ``__main__``, python's signal dispositions.
        After the program: non-daemon threads joined, atexit handlers run,
        streams flushed; the process exits with python's exit status, or dies
        by the signal python would die by.  A process the program forks ends
        here too, never in pyrust's code.  Never returns.
        """
        code = 1
        try:
            self._borrowed.close()  # first: its fds may have the numbers the client's need
            osutil.place_fds(job.fds, job.targets)
            if job.umask is not None:
                os.umask(job.umask)
            osutil.python_signals(keep=(signal.SIGALRM,) if job.time_limit else ())
            enter_for_good(job, fresh_main())
            streams = client_streams(os.environ)
            sys.stdin, sys.stdout, sys.stderr = streams
            code = self._execute(job, sys.modules["__main__"].__dict__, streams[2])
        except RequestTimeout:  # the alarm fired just as the program ended
            code = _TIMED_OUT
        except KeyboardInterrupt:
            code = EXIT_SIGINT
        except protocol.ProtocolError as exc:  # the file grew past the limit just now
            os.write(2, b"pyrust: %s\n" % str(exc).encode())
            code = EXIT_REFUSED
        except OSError as exc:  # the client's directory is gone
            os.write(2, b"pyrust: cannot enter %s: %s\n" % (
                os.fsencode(job.cwd or "."), exc.strerror.encode()))
        finally:
            osutil.exit_as(exit_sequence(EXIT_TIMEOUT if code == _TIMED_OUT else code))

    def _load(self, job: Job, namespace: dict) -> Program:
        """Return the job's program compiled, setting what python sets for its form."""
        # sys.path[0] is what python puts there for the form (the worker's own
        # entry is put back after the run).
        if job.form == "c":
            sys.path[0] = ""
            return self._compiled(job.source)
        if job.form == "-":
            sys.path[0] = ""
            namespace["__file__"] = "<stdin>"
            return compile_program(job.source, "<stdin>", echo=False)
        # A file: python reads it as bytes (so its coding declaration applies)
        # and, since 3.9, names it by its absolute path.
        path = os.path.abspath(job.source)
        sys.path[0] = os.path.dirname(os.path.realpath(job.source))
        namespace["__file__"] = path
        with open(job.source, "rb") as f:
            source = f.read(self.max_program + 1)
            if len(source) > self.max_program:
                size = max(os.fstat(f.fileno()).st_size, len(source))
                raise protocol.ProtocolError(self._too_large(size), fatal=False)
        return compile_program(source, path, echo=False)

    def _execute(self, job: Job, namespace: dict, err) -> int:
        """Compile and run the job's program in ``namespace``; return python's exit code."""
        program = None
        if job.form != "m":
            try:
                program = self._load(job, namespace)
            except protocol.ProtocolError:
                raise
            except OSError as exc:  # python's own words for a script it cannot open
                err.write("%s: can't open file %r: [Errno %d] %s\n" % (
                    sys.executable, os.path.abspath(job.source), exc.errno, exc.strerror))
                return 2
            except Exception as exc:  # SyntaxError, ValueError (NUL bytes), RecursionError...
                # Like python: no "Traceback" header, just the error and its caret.
                _print_like_python(exc, None, err)
                return 1
        else:
            sys.path[0] = os.getcwd()
        limit = _get_recursion_limit()
        # python runs the program's frame at depth 1; here pyrust's frames lie
        # below it, so the limit grows by their number and a program may
        # recurse exactly as deep as under python. The program sees (and sets)
        # the limit as python would show it.
        if self._hidden_depth is None:
            self.calibrate()
        offset = _stack_depth() + self._hidden_depth + _EXTRA_DEPTH
        _set_recursion_limit(limit + offset)
        sys.getrecursionlimit = lambda: _get_recursion_limit() - offset
        sys.setrecursionlimit = lambda n: _set_recursion_limit(n + offset)
        if _SHOW_SOURCE and job.form == "c":
            linecache.cache[FILENAME] = (len(job.source), None,
                                         job.source.splitlines(True), FILENAME)
        if job.time_limit:
            self._time_limit = job.time_limit
            signal.setitimer(signal.ITIMER_REAL, job.time_limit, REINTERRUPT_INTERVAL)
        try:
            if program is None:
                # Exactly what python -m does, down to its frames in tracebacks.
                runpy._run_module_as_main(job.source)
            else:
                exec(program.body, namespace)
                if program.echo is not None:
                    _echo(eval(program.echo, namespace))
        except SystemExit as exc:
            return _system_exit_code(exc, err)
        except RequestTimeout as exc:
            _print_exception(exc, err)
            return _TIMED_OUT
        except KeyboardInterrupt as exc:
            _print_exception(exc, err)
            return EXIT_SIGINT
        except BaseException as exc:
            _print_exception(exc, err)
            return 1
        finally:
            if job.time_limit:
                self._time_limit = 0.0
                signal.setitimer(signal.ITIMER_REAL, 0)
            sys.getrecursionlimit = _get_recursion_limit
            sys.setrecursionlimit = _set_recursion_limit
            _set_recursion_limit(limit)
            if _SHOW_SOURCE:
                linecache.cache.pop(FILENAME, None)
        return 0


_HANDLER_CODES = (Executor._on_alarm.__code__,)


def _result(exit_code: int, capture) -> Result:
    """Return the Result of a run that ended with ``exit_code``."""
    output = b""
    if capture is not None:
        if capture.size > capture.limit:
            return Result(protocol.BAD_REQUEST, protocol.too_large(
                "output", capture.size, capture.limit, "max_reply_bytes").encode(), 1)
        output = _utf8(capture.getvalue())
    if exit_code == _TIMED_OUT:
        return Result(protocol.TIMEOUT, output, EXIT_TIMEOUT)
    return Result(protocol.OK if exit_code == 0 else protocol.ERROR, output, exit_code)


def _free_frames() -> int:
    """Return how many more Python frames fit below the recursion limit under the caller."""
    def dive(n: int) -> int:
        try:
            return dive(n + 1)
        except RecursionError:
            return n
    return dive(1)


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
    """Print ``exc`` with its traceback as python does, without pyrust's own frames."""
    tb = exc.__traceback__
    # The first entry is Executor._execute, which called exec(); python's
    # traceback starts at the program's own frame.
    tb = tb.tb_next if tb is not None else None
    # An interrupt raised by pyrust's signal handlers ends in the handler's
    # frame; python's own handlers are C and leave none.
    entries = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    if entries and entries[-1].tb_frame.f_code in _HANDLER_CODES:
        entries.pop()
        if entries:
            entries[-1].tb_next = None
    _print_like_python(exc, entries[0] if entries else None, err)


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
