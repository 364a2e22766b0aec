"""The operations a request can name, each declared once, here.

An op has its one-byte code on the wire (extended field 1), the process
that carries it out, the line docs/protocol.md shows for it, and the
command-line spellings that send it, with their ``--help`` text:

* ``WORKER`` ops are carried out by the worker that took the connection
  (``Worker.op_<name>``); ``SERVICE`` ops are forwarded by that worker to the
  service, which carries them out (``pyrust.server.control.op_<name>``).
  The dispatch looks the handler up by that name, and a test checks every op
  has exactly one.
* ``pyrust/cli.py`` builds its flags, subcommands and usage from
  ``commands``; docs/protocol.md's op table is generated from ``doc``
  (``python -m pyrust.docgen``).

Adding an op is one entry here plus its handler.  A leaf module: it imports
nothing, so the client reads it for free.
"""

WORKER, SERVICE = "worker", "service"


class Command:
    """A command-line spelling: a flag (``--stop-daemon``) or a subcommand
    (``status``), its usage (``status [--json]``), its ``--help`` line, its
    README line (``doc``; the ``--help`` line if not given), how the reply is
    shown (``show``: a function of pyrust.status, or "" for the text as sent)
    and the exit status when no service answers."""

    __slots__ = ("spelling", "usage", "help", "doc", "show", "unavailable_exit")

    def __init__(self, spelling: str, help: str, usage: str = "", doc: str = "",
                 show: str = "", unavailable_exit: int = 125) -> None:
        self.spelling, self.usage, self.help = spelling, usage or spelling, help
        self.doc, self.show, self.unavailable_exit = doc or help, show, unavailable_exit

    @property
    def is_flag(self) -> bool:
        """Whether the spelling is a flag (``--x``) rather than a subcommand."""
        return self.spelling.startswith("--")


class Op:
    """One operation: ``name``, wire ``code``, who carries it out (WORKER or
    SERVICE), its ``doc`` line and the ``commands`` that send it."""

    __slots__ = ("name", "code", "by", "doc", "commands", "handler_name")

    def __init__(self, name: str, code: bytes, by: str, doc: str,
                 commands: "tuple[Command, ...]" = ()) -> None:
        self.name, self.code, self.by, self.doc, self.commands = name, code, by, doc, commands
        #: The function (or method) that carries the op out; made once, as the
        #: worker looks it up for every request.
        self.handler_name = "op_" + name.replace("-", "_")

    def __repr__(self) -> str:
        return "<op %s %r>" % (self.name, self.code)


RUN = Op("run", b"r", WORKER,
         "run a program (the default when field 1 is absent); fields 2-16 say how")
STATUS = Op("status", b"s", SERVICE, "the service's state and its environments, as JSON", (
    Command("status", "the service's state and its environments (--json for every figure)",
            usage="status [--json]", show="describe", unavailable_exit=1, doc=(
                "version, how the socket was obtained, its path, the service's and the "
                "workers' pids, uptime, spares ready and workers busy, what a fork of a "
                "template costs (p50, p99), runs served and failed (apart from control "
                "requests such as `status` itself), p50 and p99 of the last 1000 runs, time "
                "since the last failed run, memory per process, and every environment's "
                "template: interpreter and version, venv, project, preloads, start-up "
                "options, spares, runs served, memory, age and idle time, and (`--json`, "
                "`costs`) what its fresh processes cost in all: its own CPU time and page "
                "faults, and its reaped workers', with their start-up's apart")),
    Command("--daemon-status", "exit 0 if a service answers, 1 if not", show="one_line",
            unavailable_exit=1,
            doc="exit 0 if a service answers (and say where), 1 if not; never starts one"),
))
STOP = Op("stop", b"S", SERVICE,
          "stop the service as `systemctl stop` does: requests in flight finish", (
              Command("--stop-daemon", "stop the running service (requests in flight finish)",
                      doc="stop the running service; requests in flight finish"),
          ))
CLEAR_CACHE = Op("clear-cache", b"C", SERVICE, "clear every worker's compile cache", (
    Command("--clear-cache", "clear the running service's compile caches"),
))
RELOAD = Op("reload", b"R", SERVICE,
            "read the configuration again and replace the templates, as `systemctl reload` does")
VERSION = Op("version", b"v", SERVICE,
             "pyrust's version and that of the Python the service runs on")
ENSURE = Op("ensure", b"e", SERVICE,
            "start (or find) the template of the environment fields 11-14 name; the reply "
            "is its socket's path (see Environments)")

#: Every op, in the order docs and ``--help`` show them.
OPS = (RUN, STATUS, STOP, CLEAR_CACHE, RELOAD, VERSION, ENSURE)
BY_CODE = {op.code: op for op in OPS}
#: Each command-line spelling, and the op it sends.
COMMANDS = {command.spelling: (op, command) for op in OPS for command in op.commands}
