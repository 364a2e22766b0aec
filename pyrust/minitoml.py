"""Read one table of a pyproject.toml, ``[tool.pyrust]``, without a TOML library.

Every run in a project reads that table, and the client's start-up is the
user's latency: importing ``tomllib`` (``re``, ``enum``, ``typing``,
``string``, ``datetime``) costs more than the rest of a warm run.  This
reader knows only the small part of TOML such a table uses, and says so
(Unsupported) whenever the document holds anything else within the table or
anything that could change it; the caller then parses with a full TOML
parser, so a table this reader reads means what tomllib says it means.

Inside the table it reads blank lines, ``#`` comments and ``key = value``
lines for the keys ``python``, ``preload`` and ``echo``, whose value is a
basic string without backslashes, a literal string, ``true``, ``false``, or
an array of such strings (across lines, with comments and a trailing comma).
The rest of the document is only skimmed: strings, arrays, inline tables and
comments are followed so that a line inside a multi-line string is never
taken for a table header, and every header and key is checked for a path
that could add to the table (``[tool.pyrust.x]``, ``[[tool.pyrust]]``, a
second ``[tool.pyrust]``, ``pyrust = ...`` under ``[tool]``, ``tool = {...}``
at the top).

So for a document tomllib reads, ``read`` gives the table tomllib gives, or
raises Unsupported.  Values and keys outside the table are followed, not
checked: a mistake there (a bad escape or number, a key defined twice) is the
business of the tools that own those tables, and ``read`` may still give the
table where tomllib refuses the whole document.
"""

# For mypy only, which takes any name TYPE_CHECKING as true; python never runs
# this block (and the module imports nothing, not even typing).
TYPE_CHECKING = False
if TYPE_CHECKING:
    #: A value read (None: a skimmed value, outside the table).
    Value = str | bool | list["Value"] | None

TABLE = ("tool", "pyrust")
KEYS = frozenset(("python", "preload", "echo"))
_WS = frozenset(" \t")
_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
#: Characters of numbers, dates, booleans, inf and nan: skimmed, never read.
_SCALAR = _BARE | frozenset("+.:")
_NUMERIC = frozenset("0123456789+-")
_WORDS = frozenset(("true", "false", "inf", "nan"))
_QUOTES = frozenset("\"'")
#: What TOML forbids in comments and one-line strings (a tab is allowed).
_ILLEGAL = frozenset(chr(i) for i in range(32) if i != 9) | frozenset("\x7f")


class Unsupported(Exception):
    """The document holds something this reader does not read: use a full TOML parser."""


def read(text: str) -> "dict[str, Value] | None":
    """Return the ``[tool.pyrust]`` table of TOML document ``text`` as a dict
    (what tomllib gives for it), or None if the document has no such table.

    Raise Unsupported if the document holds anything this reader does not
    read within the table or anything that could add to the table.
    """
    reader = _Reader(text.replace("\r\n", "\n"))  # as tomllib does
    return reader.document()


def _touches(path: "tuple[str, ...]") -> bool:
    """Return whether key path ``path`` is ``tool``, ``tool.pyrust`` or below it."""
    return path[:len(TABLE)] == TABLE[:len(path)]


class _Reader:
    """A cursor over a document: ``text`` and the position ``pos`` in it."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.end = text, 0, len(text)

    def document(self) -> "dict[str, Value] | None":
        """Return the table (or None), reading the whole document."""
        table: "dict[str, Value] | None" = None
        current: "tuple[str, ...]" = ()
        while True:
            self.blank()
            if self.pos >= self.end:
                return table
            if self.peek() == "[":
                path, array = self.header()
                if path == TABLE and not array:
                    if table is not None:
                        raise Unsupported("a second [tool.pyrust]")
                    table = self.table()
                elif _touches(path) and (array or len(path) > len(TABLE)):
                    raise Unsupported("a table in or around [tool.pyrust]")
                current = path
            else:  # a key = value line of another table
                key = self.key()
                if _touches(current + key):
                    raise Unsupported("a key that reaches into [tool.pyrust]")
                self.expect("=")
                self.skip(_WS)
                self.value(strict=False)
                self.line_end()

    def table(self) -> "dict[str, Value]":
        """Return the body of ``[tool.pyrust]``, up to the next header or the end."""
        table: "dict[str, Value]" = {}
        while True:
            self.blank()
            if self.pos >= self.end or self.peek() == "[":
                return table
            start = self.pos
            self.skip(_BARE)
            name = self.text[start:self.pos]
            if name not in KEYS or name in table:
                raise Unsupported("a key other than python, preload, echo, or one twice")
            self.skip(_WS)
            self.expect("=")
            self.skip(_WS)
            table[name] = self.value(strict=True)
            self.line_end()

    def header(self) -> "tuple[tuple[str, ...], bool]":
        """Return the key path of the header at ``pos`` and whether it is ``[[...]]``."""
        self.pos += 1
        array = self.peek() == "["
        self.pos += array
        self.skip(_WS)
        path = self.key()
        self.expect("]")
        if array and self.peek() != "]":
            raise Unsupported("an unclosed [[")
        self.pos += array
        self.line_end()
        return path, array

    def key(self) -> "tuple[str, ...]":
        """Return the (dotted) key at ``pos`` as a tuple, skipping the spaces after it."""
        parts = []
        while True:
            if self.peek() in _QUOTES:
                part = self.string(strict=True)
                assert part is not None  # strict: a string it cannot read raises
                parts.append(part)
            else:
                start = self.pos
                self.skip(_BARE)
                if self.pos == start:
                    raise Unsupported("not a key")
                parts.append(self.text[start:self.pos])
            self.skip(_WS)
            if self.peek() != ".":
                return tuple(parts)
            self.pos += 1
            self.skip(_WS)

    def value(self, strict: bool) -> "Value":
        """Return the value at ``pos``.  ``strict``: only the values the table may
        hold; otherwise skim any value and return None for what is not read."""
        char = self.peek()
        if char in _QUOTES:
            return self.string(strict)
        if char == "[":
            return self.array(strict)
        if strict:
            for word, result in (("true", True), ("false", False)):
                if self.text.startswith(word, self.pos):
                    self.pos += len(word)
                    return result
            raise Unsupported("a value other than a string, a boolean or an array")
        if char == "{":
            self.inline_table()
        else:
            start = self.pos
            self.skip(_SCALAR)
            word = self.text[start:self.pos]
            if not word or word[0] not in _NUMERIC and word not in _WORDS:
                raise Unsupported("not a value")
        return None

    def string(self, strict: bool) -> "str | None":
        """Return the string at ``pos`` (None for a skimmed multi-line or escaped one)."""
        text, quote, start = self.text, self.peek(), self.pos + 1
        if text.startswith(quote * 3, self.pos):
            if strict:
                raise Unsupported("a multi-line string")
            close = self.find(quote * 3, start + 2, quote == '"')
            self.pos = close + 3
            for _ in range(2):  # up to two quotes end the content: """a"""""
                if self.peek() == quote:
                    self.pos += 1
            return None
        close = self.find(quote, start, quote == '"')
        content = text[start:close]
        if not _ILLEGAL.isdisjoint(content):  # a line break too: the string is not closed
            raise Unsupported("a string with a line break or a control character")
        self.pos = close + 1
        if quote == '"' and "\\" in content:
            if strict:
                raise Unsupported("an escape sequence")
            return None
        return content

    def find(self, delimiter: str, start: int, escapes: bool) -> int:
        """Return where ``delimiter`` closes the string whose content starts at
        ``start``; with ``escapes``, a backslash hides the character after it."""
        while True:
            close = self.text.find(delimiter, start)
            if close < 0:
                raise Unsupported("an unterminated string")
            backslash = self.text.find("\\", start, close) if escapes else -1
            if backslash < 0:
                return close
            start = backslash + 2

    def array(self, strict: bool) -> "list[Value]":
        """Return the array at ``pos``; ``strict``: an array of strings."""
        self.pos += 1
        items: "list[Value]" = []
        while True:
            self.blank()
            if self.peek() == "]":
                break
            if strict and self.peek() not in _QUOTES:
                raise Unsupported("an array holding other than strings")
            items.append(self.value(strict))
            self.blank()
            if self.peek() == "]":
                break
            self.expect(",")
        self.pos += 1
        return items

    def inline_table(self) -> None:
        """Skim the inline table at ``pos`` (one line, as TOML 1.0 wants)."""
        self.pos += 1
        self.skip(_WS)
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            self.key()
            self.expect("=")
            self.skip(_WS)
            self.value(strict=False)
            self.skip(_WS)
            if self.peek() == "}":
                self.pos += 1
                return
            self.expect(",")
            self.skip(_WS)

    def blank(self) -> None:
        """Skip spaces, comments and line breaks."""
        while True:
            self.skip(_WS)
            char = self.peek()
            if char == "#":
                self.comment()
            elif char == "\n":
                self.pos += 1
            else:
                return

    def line_end(self) -> None:
        """Skip the rest of a line: spaces, a comment, the line break or the end."""
        self.skip(_WS)
        if self.peek() == "#":
            self.comment()
        if self.pos < self.end:
            self.expect("\n")

    def comment(self) -> None:
        """Skip the comment at ``pos`` up to its line break."""
        close = self.text.find("\n", self.pos)
        close = self.end if close < 0 else close
        if not _ILLEGAL.isdisjoint(self.text[self.pos:close]):
            raise Unsupported("a control character in a comment")
        self.pos = close

    def peek(self) -> str:
        """Return the character at ``pos``, or "" at the end."""
        return self.text[self.pos] if self.pos < self.end else ""

    def skip(self, chars: "frozenset[str]") -> None:
        """Move ``pos`` past any of ``chars``."""
        text, pos, end = self.text, self.pos, self.end
        while pos < end and text[pos] in chars:
            pos += 1
        self.pos = pos

    def expect(self, char: str) -> None:
        """Move past ``char`` at ``pos``; raise Unsupported if another is there."""
        if self.peek() != char:
            raise Unsupported("expected %r at offset %d" % (char, self.pos))
        self.pos += 1
