"""The floor: the least a Python server does to answer v1 requests correctly.

    python bench/floor.py [--fork] SOCKET

One process, a blocking ``accept()``, and per request: read the frame,
compile (cached by source, as pyrust caches), run the body in fresh globals
with stdout captured, echo the repr of a final bare expression, reply.  An
error's reply is ``Name: message`` rather than a full traceback.  No pyrust
code is imported: every pyrust figure is also reported as a ratio to this.

With ``--fork`` it is the floor of a fresh process per connection, as
pyrust serves connections now: the parent only accepts, forks a child per
connection (the fork is on that connection's path: nothing is forked in
advance) and reaps the children that ended; the child serves the one
connection with the parent's empty compile cache, then exits.

It binds SOCKET itself (the directory must exist and be private), sends
``READY=1`` to ``$NOTIFY_SOCKET`` when listening, and runs until killed.
"""

import ast
import builtins
import io
import os
import socket
import struct
import sys
import types

HEADER = struct.Struct(">I")
REPLY = struct.Struct(">BI")


def compile_program(source: str) -> "tuple[types.CodeType, types.CodeType | None]":
    """Return ``(body, echo)`` code objects; ``echo`` evaluates a final bare expression."""
    tree = ast.parse(source, "<string>")
    echo = None
    last = tree.body[-1] if tree.body else None
    if isinstance(last, ast.Expr):
        del tree.body[-1]
        echo = compile(ast.Expression(last.value), "<string>", "eval")
    return compile(tree, "<string>", "exec"), echo


def run(source: str, cache: "dict[str, tuple[types.CodeType, types.CodeType | None]]",
        ) -> "tuple[int, bytes]":
    """Run ``source``; return ``(status, output bytes)``."""
    out = io.StringIO()
    saved, sys.stdout = sys.stdout, out
    try:
        program = cache.get(source)
        if program is None:
            program = cache[source] = compile_program(source)
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        exec(program[0], namespace)
        if program[1] is not None:
            value = eval(program[1], namespace)
            if value is not None:
                out.write(repr(value) + "\n")
        status = 0
    except BaseException as exc:  # the floor answers everything
        out.write("%s: %s\n" % (type(exc).__name__, exc))
        status = 1
    finally:
        sys.stdout = saved
    return status, out.getvalue().encode("utf-8")


def recv_exact(conn: socket.socket, size: int) -> "bytes | None":
    """Return ``size`` bytes from ``conn``, or None if it closes first."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve_connection(conn: socket.socket,
                     cache: "dict[str, tuple[types.CodeType, types.CodeType | None]]") -> None:
    """Answer requests on ``conn`` until the client closes it."""
    while True:
        header = recv_exact(conn, HEADER.size)
        code = header and recv_exact(conn, HEADER.unpack(header)[0])
        if code is None:
            return
        status, output = run(code.decode("utf-8"), cache)
        conn.sendall(REPLY.pack(status, len(output)) + output)


def serve(listener: socket.socket) -> None:
    """Answer requests, one connection at a time, forever."""
    cache: "dict[str, tuple[types.CodeType, types.CodeType | None]]" = {}
    while True:
        conn, _ = listener.accept()
        with conn:
            serve_connection(conn, cache)


def serve_forking(listener: socket.socket) -> None:
    """Serve each connection in a child forked for it, forever."""
    while True:
        _reap()  # before waiting: the parent is charged the children it reaps
        conn, _ = listener.accept()
        if os.fork() == 0:
            status = 1
            try:
                listener.close()
                with conn:
                    serve_connection(conn, {})
                status = 0
            finally:
                os._exit(status)
        conn.close()


def _reap() -> None:
    """Collect every child that has ended, without waiting for the others."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def main(path: str, forking: bool = False) -> None:
    """Listen on ``path``, tell the service manager, and serve forever."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(socket.SOMAXCONN)
    address = os.environ.pop("NOTIFY_SOCKET", None)
    if address:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.sendto(b"READY=1", address)
    (serve_forking if forking else serve)(listener)


if __name__ == "__main__":
    main(sys.argv[-1], forking="--fork" in sys.argv[1:-1])
