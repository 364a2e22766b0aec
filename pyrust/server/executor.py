"""Run one program the way ``python`` would, inside a long-lived worker.

A Job names the program (``-c`` code, a file, a module, a program read from
stdin, or none: the interactive prompt), its argv, cwd, environment, time
limit, python's per-run options (``-u -B -q -i -P -W``), and either the
client's fds 0-2 or None to capture the output as protocol v1 does.  Each run
gets a fresh ``__main__``; tracebacks, exit codes and ``SystemExit`` behave
exactly as under ``python``, and so does what the options and the run's
``PYTHON*`` variables change (see runoptions.py, interactive.py).  The one
intended difference: with ``-c``, the value of a final bare expression is
echoed as the interactive interpreter does, unless the job asks for python's
exact ``-c`` (``echo`` false).
"""

from __future__ import annotations

import _signal
import collections
import linecache
import os
import runpy
import signal
import sys

from pyrust import protocol
from pyrust.request import Job, v1_job
from pyrust.server import interactive, osutil, runoptions
from pyrust.server.program import (
    FILENAME,
    Program,
    compile_program,
    is_zip,
    load,
    path0,
    python_abspath,
    unknown_option,
)
from pyrust.server.report import (
    echo as _echo,
    free_frames as _free_frames,
    print_exception,
    stack_depth as _stack_depth,
    system_exit_code as _system_exit_code,
    utf8 as _utf8,
)
from pyrust.server.runstate import (
    Borrowed,
    Capture,
    client_streams,
    enter_for_good,
    exit_sequence,
    fresh_main,
)

MYPY = False
if MYPY:  # true for the type checker only: a run's sys.modules must not gain typing
    from types import FrameType
    from typing import Any, Callable, TextIO

#: Programs larger than this are compiled every time rather than cached, so
#: the cache's memory stays bounded by ``entries × 1 MiB``.
CACHE_MAX_SOURCE = 1 << 20
#: Recursion levels that the interpreter counts below the program's frame
#: besides pyrust's Python frames (C-level calls such as exec() itself); they
#: differ by version, and the differential test against python -c checks them.
#: They are those of the run path once CPython has specialized it (see
#: Executor.prepare): 3.11 counts one level more before.
_EXTRA_DEPTH = {(3, 9): 2, (3, 10): 2}.get(sys.version_info[:2], 0)
#: What Executor.prepare runs: a ``-c`` program that echoes, as most requests do.
REHEARSAL = v1_job("x = 1\nx", 0)
#: Runs of REHEARSAL in Executor.prepare: enough for CPython 3.11+ to specialize
#: the bytecode of the run path (it does so after a few runs of a code object).
REHEARSALS = 20
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


class Result(collections.namedtuple("Result", "status output exit_code")):
    """What a run produced: wire status, captured output bytes, and python's exit code."""


class Executor:
    """Runs Jobs, with a bounded LRU cache of compiled ``-c`` code keyed by source."""

    def __init__(self, cache_size: int, max_output: int = 1 << 62,
                 max_program: int = 1 << 62) -> None:
        self.cache_size = cache_size
        self.max_program = max_program  # bytes of a program file (max_request_bytes)
        self._cache: collections.OrderedDict[tuple[str, bool], Program] = \
            collections.OrderedDict()  # (source, echo) -> compiled
        self._borrowed = Borrowed()
        self._capture = Capture(max_output)
        self._time_limit = 0.0  # of the run in progress; 0 when none runs
        # Recursion the interpreter counts beyond Python frames; see calibrate.
        self._hidden_depth: int | None = None
        # What the template's python built at start, for runs to build theirs from.
        self._paths = runoptions.PathTemplate()
        self._warnings = runoptions.WarningsTemplate()
        # Per-run options -> RunOptions, under the worker's own environment.
        self._own_env_options: dict[tuple[str, ...], runoptions.RunOptions] = {}
        # (options, sys.path before, sys.flags, dont_write_bytecode, sys.path): see _start
        self._plan: tuple[runoptions.RunOptions, list[str], Any, bool, list[str]] | None = None

    def calibrate(self) -> None:
        """Measure the recursion the interpreter counts below the caller beyond its
        Python frames (C-level entries into the eval loop, which differ by
        version and by how this process was started), so a program may
        recurse exactly as deep as under python.  Call it where the runs'
        stack begins (the worker does, before it accepts); it costs one dive
        to the recursion limit, about a thousand calls."""
        depth = _stack_depth() + 1  # and _free_frames' own frame
        self._hidden_depth = max(0, _get_recursion_limit() - depth - _free_frames())

    def settle(self) -> None:
        """The process serves one connection from now on: see Borrowed.settle."""
        self._borrowed.settle()

    def unsettle(self) -> None:
        """Undo settle, for a process that goes on (a test, the bench)."""
        self._borrowed.unsettle()

    def rehearse(self, runs: int = 1) -> None:
        """Run REHEARSAL ``runs`` times, then empty the compile cache, so a real
        request finds it as a fresh process would."""
        for _ in range(runs):
            self.run(REHEARSAL)
        self.clear_cache()

    def prepare(self, rehearsals: int = REHEARSALS) -> None:
        """Bring the run path to its steady state, then calibrate: ``rehearsals``
        rehearsals (see rehearse).

        CPython specializes a code object's bytecode once it has run a few
        times, writing into it, and a specialized call counts recursion
        differently (see _EXTRA_DEPTH); the run path also fills caches of its
        own (the options, the start plan, the names of pyrust's modules).  The
        template prepares the executor its workers inherit, so none of that is
        written again in each worker, where every page written costs a
        copy-on-write fault, and every run meets the same path.
        """
        self._hidden_depth = 0  # provisional: the rehearsals must not calibrate
        self.rehearse(rehearsals)
        self.calibrate()

    # -- signals: the time limit ---------------------------------------------------

    def install_signals(self) -> None:
        """Take SIGALRM (time limits); main thread only."""
        _signal.signal(_signal.SIGALRM, self._on_alarm)  # not signal's: no Enum made

    def signals_installed(self) -> bool:
        """Return whether the handler is still ours (a program may have taken it)."""
        # _signal's getsignal: the signal module's wraps the answer in an Enum.
        return _signal.getsignal(signal.SIGALRM) == self._on_alarm

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
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

    def _compiled(self, source: str, echo: bool) -> Program:
        """Return ``-c`` code ``source`` compiled, from the cache when it is there."""
        key = (source, echo)
        program = self._cache.get(key)
        if program is not None:
            self._cache.move_to_end(key)
            return program
        program = compile_program(source, echo=echo)
        if self.cache_size and len(source) <= CACHE_MAX_SOURCE:
            self._cache[key] = program
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
            exit_code = self._execute(job, self.options(job), sys.modules["__main__"].__dict__,
                                      streams[2])
        except RequestTimeout:  # the alarm fired just as the program ended
            exit_code = _TIMED_OUT
        except KeyboardInterrupt:
            exit_code = EXIT_SIGINT
        except protocol.ProtocolError as exc:  # a program file over the limit
            return Result(protocol.BAD_REQUEST, str(exc).encode(), 1)
        finally:
            self._borrowed.leave()
            self._warnings.restore()
        return _result(exit_code, capture)

    def options(self, job: Job) -> runoptions.RunOptions:
        """Return the per-run options of ``job``: its python options under its
        environment (the worker's own when it sends none, read once)."""
        if job.env is not None:
            return runoptions.run_options(job.options, job.env)
        options = self._own_env_options.get(job.options)
        if options is None:
            options = runoptions.run_options(job.options, os.environ)
            self._own_env_options[job.options] = options
        return options

    def refuse_file(self, job: Job) -> str | None:
        """Return the refusal of a program file over ``max_program`` bytes, or None.

        Checked before a run takes the client's terminal, so the refusal can
        still go back as a reply; a file that cannot be read is python's to
        report, and a zip file python runs as a package is not read whole.
        """
        if job.form != "f":
            return None
        path = os.path.join(job.cwd or "", job.source)
        try:
            size = os.stat(path).st_size
        except OSError:
            return None
        if size <= self.max_program or is_zip(path):
            return None
        return protocol.too_large("request", size, self.max_program, "max_request_bytes")

    def run_to_exit(self, job: Job, announce: Callable[[int], object] | None = None) -> None:
        """Run ``job`` on the client's own fds; this process then ends as python ends.

        The process becomes the run's: the client's fds at their numbers (none
        of pyrust's left but what the caller keeps), umask, argv, cwd,
        environment, a fresh ``__main__``, python's signal dispositions.
        After the program: non-daemon threads joined, atexit handlers run,
        streams flushed; the process exits with python's exit status, or dies
        by the signal python would die by.  A process the program forks ends
        here too, never in pyrust's code.  Never returns.  Before a plain exit
        status (not a death by signal), ``announce(status)`` is called.
        """
        code = 1
        try:
            self._borrowed.close()  # first: its fds may have the numbers the client's need
            assert job.fds is not None  # a run to exit is a run on the client's fds
            osutil.place_fds(job.fds, job.targets)
            if job.umask is not None:
                os.umask(job.umask)
            osutil.python_signals(keep=(signal.SIGALRM,) if job.time_limit else ())
            enter_for_good(job, fresh_main())
            options = self.options(job)
            streams = client_streams(os.environ, options.unbuffered)
            sys.stdin, sys.stdout, sys.stderr = streams
            code = self._execute(job, options, sys.modules["__main__"].__dict__, streams[2])
        except RequestTimeout:  # the alarm fired just as the program ended
            code = _TIMED_OUT
        except KeyboardInterrupt:
            code = EXIT_SIGINT
        except protocol.ProtocolError as exc:  # the file grew past the limit just now
            os.write(2, b"pyrust: %s\n" % str(exc).encode())
            code = EXIT_REFUSED
        except OSError as exc:  # the client's directory is gone
            os.write(2, b"pyrust: cannot enter %s: %s\n" % (
                os.fsencode(job.cwd or "."), (exc.strerror or str(exc)).encode()))
        finally:
            code = exit_sequence(EXIT_TIMEOUT if code == _TIMED_OUT else code)
            if code >= 0 and announce is not None:
                announce(code & 0xFF)
            osutil.exit_as(code)

    def _execute(self, job: Job, options: runoptions.RunOptions, namespace: dict[str, Any],
                 err: TextIO) -> int:
        """Start as python starts with ``options``, run the job's program in
        ``namespace`` (then python's prompt, where it would enter it); return
        python's exit code."""
        if options.unknown:
            err.write(unknown_option(options.unknown[0]))
            return 2
        package = self._start(job, options)
        code = self._guarded(job, options.inspect, err, self._main, job, options, package,
                             namespace, err)
        if job.form == "i" or code == _TIMED_OUT:
            return code
        if job.fds is None:
            # python's prompt on a captured stdin (empty, not a terminal): a
            # prompt, then end-of-file.
            if options.interactive:
                err.write("%s\n" % (getattr(sys, "ps1", ">>> "),))
                return 0
            return code
        return self._guarded(job, 0, err, interactive.after_program, options, code)

    def _start(self, job: Job, options: runoptions.RunOptions) -> bool:
        """Set up what python's start-up sets up for ``options``: flags, sys.path
        (PYTHONPATH, sys.path[0]), warnings; on the client's terminal the steps
        around the prompt (readline, the banner).  Return whether the program
        is a directory or zip file run by its ``__main__``."""
        plan = self._plan  # the last v1-like start, kept: the hot path repeats it
        if plan is not None and plan[0] is options and job.form == "c" and job.fds is None \
                and sys.path == plan[1]:
            sys.flags, sys.dont_write_bytecode, sys.path[:] = plan[2:]
            return False
        before = sys.path[:]
        sys.flags = runoptions.run_flags(options)
        sys.dont_write_bytecode = options.dont_write_bytecode
        path = self._paths.run_path(sys.path, options.pythonpath)
        if options.warnoptions != self._warnings.options:
            sys.path[:] = path  # python imports -W categories before sys.path[0] exists
            self._warnings.apply(options.warnoptions)
        first = path0(job, options.safe_path)
        if job.fds is None:
            sys.path[:] = path if first is None else [first] + path
            if job.form == "c" and job.env is None and options.warnoptions == \
                    self._warnings.options:
                self._plan = (options, before, sys.flags, sys.dont_write_bytecode, sys.path[:])
        else:
            sys.path[:] = path
            interactive.before_path0(options, job.form != "i")
            if first is not None:
                sys.path.insert(0, first)
            interactive.after_path0(options, job.form != "i")
        return job.form == "f" and first is not None and first == python_abspath(job.source)

    def _main(self, job: Job, options: runoptions.RunOptions, package: bool,
              namespace: dict[str, Any], err: TextIO) -> int:
        """Run the job's program (or the prompt) in ``namespace``; return its exit
        code.  Exceptions propagate, except those python reports before the
        program starts (a file it cannot open, a syntax error)."""
        if job.form == "i":
            return interactive.main(options)
        if job.form == "m" or package:
            # Exactly what python -m does, down to its frames in tracebacks;
            # a package runs as python runs it: "__main__", argv left alone.
            # _run_module_as_main is private (typeshed omits it), but what python -m calls.
            runpy._run_module_as_main(  # type: ignore[attr-defined]
                *((job.source,) if job.form == "m" else ("__main__", False)))
            return 0
        program = load(job, namespace, err, self._compiled, self.max_program)
        if not isinstance(program, Program):
            return program
        if _SHOW_SOURCE and job.form == "c":
            linecache.cache[FILENAME] = (len(job.source), None,
                                         job.source.splitlines(True), FILENAME)
        exec(program.body, namespace)
        if program.echo is not None:
            _echo(eval(program.echo, namespace))
        return 0

    def _guarded(self, job: Job, inspect: int, err: TextIO, call: Callable[..., int],
                 *args: Any) -> int:
        """Return ``call(*args)``'s exit code with the job's recursion and time
        limits in force, turning what it raises into python's exit code (a
        SystemExit under -i is reported as an error, as python does)."""
        limit = _get_recursion_limit()
        # python runs the program's frame at depth 1; here pyrust's frames lie
        # below it, so the limit grows by their number and a program may
        # recurse exactly as deep as under python. The program sees (and sets)
        # the limit as python would show it.
        if self._hidden_depth is None:
            self.calibrate()
        assert self._hidden_depth is not None  # calibrate() sets it
        offset = _stack_depth() + 1 + self._hidden_depth + _EXTRA_DEPTH
        _set_recursion_limit(limit + offset)
        sys.getrecursionlimit = lambda: _get_recursion_limit() - offset
        sys.setrecursionlimit = lambda n: _set_recursion_limit(n + offset)
        if job.time_limit:
            self._time_limit = job.time_limit
            signal.setitimer(signal.ITIMER_REAL, job.time_limit, REINTERRUPT_INTERVAL)
        try:
            return call(*args)
        except protocol.ProtocolError:
            raise
        except SystemExit as exc:
            if not inspect:
                return _system_exit_code(exc, err)
            _print_exception(exc, err)
            return 1
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


_HANDLER_CODES = (Executor._on_alarm.__code__,)
#: pyrust's frames between the catching frame and the program's: not in python's tracebacks.
_OWN_CODES = (Executor._guarded.__code__, Executor._main.__code__)


def _result(exit_code: int, capture: Capture | None) -> Result:
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


def _print_exception(exc: BaseException, err: TextIO) -> None:
    """Print ``exc`` as python does: without pyrust's frames (Executor._guarded,
    which caught it, and _main, which called the program; the time limit's
    handler where an interrupt was raised)."""
    print_exception(exc, err, _OWN_CODES, _HANDLER_CODES)
