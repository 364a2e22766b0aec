"""The program of a run, as python finds it for each form, and its sys.path[0].

Forms: "c" code (``-c``), "-" a program read from stdin, "f" a file (or a
directory or zip file holding ``__main__.py``), "m" a module (``-m``), "i"
the interactive prompt with no program.
"""

import ast
import collections
import os
import sys

from pyrust import protocol
from pyrust.server.report import print_like_python

# For mypy only, which takes any name TYPE_CHECKING as true: a worker imports
# no typing (the programs it runs would find it already imported).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, TextIO

    from pyrust.server.executor import Job

FILENAME = "<string>"  # what python -c names the code in tracebacks


class Program(collections.namedtuple("Program", "body echo")):
    """A compiled program: ``body`` (exec code) and ``echo`` (eval code of a
    final bare expression, or None)."""


def compile_program(source: "str | bytes", filename: str = FILENAME,
                    echo: bool = True) -> Program:
    """Return ``source`` compiled for a run; raise SyntaxError (or ValueError) if it
    does not compile.  With ``echo``, a final bare expression is compiled apart so
    its value can be shown as the interactive interpreter shows it."""
    tree = compile(source, filename, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    assert isinstance(tree, ast.Module)  # what "exec" mode parses to
    last = None
    final = tree.body[-1] if tree.body else None
    if echo and isinstance(final, ast.Expr):
        tree.body.pop()
        last = compile(ast.Expression(final.value), filename, "eval", dont_inherit=True)
    return Program(compile(tree, filename, "exec", dont_inherit=True), last)


def python_abspath(path: str) -> str:
    """Return ``path`` made absolute as python makes a script's path (3.9+): the
    working directory, a slash, then the path as given, never normalized."""
    if os.path.isabs(path):
        return path
    return os.getcwd() + os.sep + path


def main_importer(path: str) -> "str | None":
    """Return ``path`` if python runs it as a package (a directory or a zip file,
    by its ``__main__`` module), else None.

    As python decides: a ``sys.path_hooks`` hook accepts the path (the answer
    is cached in ``sys.path_importer_cache``, under the path as given).
    """
    cache = sys.path_importer_cache
    try:
        importer = cache[path]
    except KeyError:
        cache[path] = importer = None
        for hook in sys.path_hooks:
            try:
                importer = hook(path)
            except ImportError:
                continue
            except Exception as exc:  # python reports it, then runs the path as a file
                sys.stderr.write("Failed checking if argv[0] is an import path entry\n")
                tb = exc.__traceback__  # never None for a caught exception
                sys.excepthook(type(exc), exc, tb.tb_next if tb is not None else None)
                return None
            cache[path] = importer
            break
    return path if importer is not None else None


def path0(job: "Job", safe_path: bool) -> "str | None":
    """Return what python puts in sys.path[0] for ``job`` (None: nothing):
    "" for code, stdin and the prompt, the working directory for a module, the
    script's real directory for a file, the absolute path of a directory or
    zip file (even under -P).  Under -P (``safe_path``) nothing else."""
    if job.form == "f":
        package = main_importer(python_abspath(job.source))
        if package is not None:
            return package
    if safe_path:
        return None
    if job.form == "m":
        return os.getcwd()
    if job.form == "f":
        return os.path.dirname(os.path.realpath(job.source))
    return ""


def read_file(path: str, limit: int) -> bytes:
    """Return the bytes of program file ``path``; raise OSError if it cannot be
    read, ProtocolError (not fatal) if it holds more than ``limit`` bytes."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        want = min(limit + 1, size + 1 if size > 0 else 1 << 16)  # one read for a file
        chunks, total = [], 0
        while total <= limit:
            chunk = f.read(min(want, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            want = 1 << 20
        if total > limit:
            raise protocol.ProtocolError(protocol.too_large(
                "request", max(size, total), limit, "max_request_bytes"), fatal=False)
    return b"".join(chunks)


def is_zip(path: str) -> bool:
    """Return whether python would run file ``path`` as a zip of a package."""
    import zipimport

    try:
        zipimport.zipimporter(path)
    except (ImportError, OSError):
        return False
    return True


def load(job: "Job", namespace: "dict[str, object]", err: "TextIO",
         compiled: "Callable[[str, bool], Program]", limit: int) -> "Program | int":
    """Return the job's program compiled (``-c`` code through ``compiled(source,
    echo)``), setting what python sets for its form in ``namespace``; or the
    exit code python gives when it cannot, the error written to ``err``.

    Raise ProtocolError (not fatal) for a file over ``limit`` bytes.
    """
    try:
        if job.form == "c":
            return compiled(job.source, job.echo)
        if job.form == "-":
            namespace["__file__"] = "<stdin>"
            return compile_program(job.source, "<stdin>", echo=False)
        # A file: python reads it as bytes (so its coding declaration
        # applies) and, since 3.9, names it by its absolute path.
        path = python_abspath(job.source)
        namespace["__file__"] = path
        return compile_program(read_file(job.source, limit), path, echo=False)
    except protocol.ProtocolError:
        raise
    except OSError as exc:  # python's own words for a script it cannot open
        err.write(cant_open(job.source, exc))
        return 2
    except Exception as exc:  # SyntaxError, ValueError (NUL bytes), RecursionError...
        # Like python: no "Traceback" header, just the error and its caret.
        print_like_python(exc, None, err)
        return 1


def cant_open(path: str, exc: OSError) -> str:
    """Return python's own words for a script it cannot open."""
    # %s: an OSError's errno is None when it was raised without one.
    return "%s: can't open file %r: [Errno %s] %s\n" % (
        sys.executable, python_abspath(path), exc.errno, exc.strerror)


def unknown_option(option: str) -> str:
    """Return python's complaint about a command-line option it does not have."""
    return ("Unknown option: %s\nusage: %s [option] ... [-c cmd | -m mod | file | -] [arg] ...\n"
            "Try `python -h' for more information.\n" % (option, sys.executable))
