"""Reporting the end of a program as python reports it: tracebacks, exit codes,
the -c echo; and the stack measures the recursion limit is corrected with."""

import sys

# For mypy only, which takes any name TYPE_CHECKING as true: a worker imports
# no typing (the programs it runs would find it already imported).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import CodeType, FrameType, TracebackType
    from typing import Container, TextIO


def print_exception(exc: BaseException, err: "TextIO", own_codes: "Container[CodeType]" = (),
                    handler_codes: "Container[CodeType]" = ()) -> None:
    """Print ``exc`` with its traceback as python does, to ``err``: without the
    leading frames whose code is in ``own_codes`` (pyrust's, which caught it
    and called the program) nor a last frame in ``handler_codes`` (pyrust's
    signal handlers; python's own are C and leave none)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code in own_codes:
        tb = tb.tb_next
    entries: "list[TracebackType]" = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    if entries and entries[-1].tb_frame.f_code in handler_codes:
        entries.pop()
        if entries:
            entries[-1].tb_next = None
    print_like_python(exc, entries[0] if entries else None, err)


def print_like_python(exc: BaseException, tb: "TracebackType | None", err: "TextIO") -> None:
    """Print ``exc`` with python's own C printer (not the traceback module, whose
    carets differ), to ``err`` whatever the program did to ``sys.stderr``."""
    saved = sys.stderr
    sys.stderr = err
    try:
        sys.__excepthook__(type(exc), exc.with_traceback(tb), tb)
    finally:
        sys.stderr = saved


def system_exit_code(exc: SystemExit, err: "TextIO") -> int:
    """Return the exit code python gives for ``exc``, printing a message to
    ``err`` as it does for one that is not an integer."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF  # as the OS truncates it: exit(-1) and exit(255) give 255
    err.write("%s\n" % (code,))
    return 1


def echo(value: object) -> None:
    """Write ``value`` as ``sys.displayhook`` does, without touching ``builtins._``."""
    if value is not None:
        sys.stdout.write(repr(value) + "\n")


def utf8(data: bytes) -> bytes:
    """Return ``data`` unchanged if valid UTF-8, else with bad bytes replaced by U+FFFD."""
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace").encode("utf-8")


def free_frames() -> int:
    """Return how many more Python frames fit below the recursion limit under the caller."""
    def dive(n: int) -> int:
        try:
            return dive(n + 1)
        except RecursionError:
            return n
    return dive(1)


def stack_depth() -> int:
    """Return the number of Python frames on the stack, the caller's included."""
    depth = 0
    frame: "FrameType | None" = sys._getframe(1)
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    return depth
