"""The programs the bench sends, with the replies that prove them served correctly.

This is the core issue's table.  A successful program's reply is known byte
for byte; an error's output is a traceback whose exact text depends on the
server, so it is checked by status and by the exception name it must contain.
"""

import collections
from _struct import Struct

REQUEST_HEADER = Struct(">I")
REPLY_HEADER = Struct(">BI")


class Program(collections.namedtuple("Program", "code status output")):
    """One program: ``code`` (str), the expected ``status``, and ``output``:
    the exact output (str) when status is 0, else a text the output must contain."""

    @property
    def label(self) -> str:
        """Return the code as one printable line, e.g. ``x = 10; y = 20; x + y``."""
        return self.code.replace("\n", "; ") if self.code else "(empty)"

    @property
    def frame(self) -> bytes:
        """Return the v1 request frame carrying the code."""
        data = self.code.encode("utf-8")
        return REQUEST_HEADER.pack(len(data)) + data

    def accepts(self, status: int, output: bytes) -> bool:
        """Return whether ``(status, output)`` is a correct reply to this program."""
        if status != self.status:
            return False
        if self.status == 0:
            return output == self.output.encode("utf-8")
        return self.output.encode("utf-8") in output


PROGRAMS = (
    Program("2+3", 0, "5\n"),
    Program("(10 + 20) * 3 / 2", 0, "45.0\n"),
    Program("x = 10\ny = 20\nx + y", 0, "30\n"),
    Program("print(42)", 0, "42\n"),
    Program("10 + 5 * 2 - 8 / 4 % 3", 0, "18.0\n"),
    Program("42", 0, "42\n"),
    Program("x = 10\ny = 20\nz = x + y\nz * 2", 0, "60\n"),
    Program("", 0, ""),
    Program("1/0", 1, "ZeroDivisionError"),
    Program("undefined_var", 1, "NameError"),
)


def reply_frame(status: int, output: bytes) -> bytes:
    """Return the v1 response frame for ``status`` and ``output``."""
    return REPLY_HEADER.pack(status, len(output)) + output
