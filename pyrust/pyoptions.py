"""Python's own command line, as CPython 3.9 to 3.13 parse it, for the ``pyrust`` command.

``pyrust`` stands in for ``python``, so it reads python's options exactly as
python's ``getopt`` does: short options combine (``-uB``, ``-OO``), an
option's value is attached or the next argument (``-Wd``, ``-W d``,
``-Xdev``, ``-X dev``), ``-c``/``-m``/a file/``-`` end the options, ``--``
ends them too, and only ``--check-hash-based-pycs MODE`` (value always the
next argument), ``--help`` and ``--version`` and python's ``--help-*`` are long
options.  Each option is classified:

* start-up: it shapes the interpreter, so it is part of the environment's
  key (``-E -I -s -S -O -b -d -v -R``, every ``-X``,
  ``--check-hash-based-pycs``), spelled canonically (``CommandLine.startup``);
* per run: the warm interpreter applies it to one run (``-u -B -q -i -P -W``),
  sent as the request's PYOPT fields (``CommandLine.pyopt``);
* fallback: anything else python accepts or refuses (``-V``, ``-x``,
  ``--help-env``, an unknown option, a missing value, a value python would
  refuse at start-up): the caller ``exec``s the real python with the same
  arguments, so python itself does (or refuses) it.

``-h``, ``-?`` and ``--help`` are the caller's own help.  The caller's own
long options (``--socket PATH``...) may appear anywhere before the program.

A leaf module: it imports nothing, so the client's start-up stays short.
"""

# Typing-only imports: mypy takes any name TYPE_CHECKING as true, python never
# runs this block.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Container, Sequence

#: Start-up flags that count when repeated (``-OO``, ``-vv``), in canonical order.
COUNTED = "Obdv"
#: The start-up options' canonical order: flags by letter, then -X, then the pyc mode.
ORDER = "EIOsSbdvR"
#: Per-run flags, sent once each as the request's PYOPT fields.
PER_RUN = "uBqiP"
#: Options that take a value, attached or as the next argument.
WITH_VALUE = "cmWX"
#: Options python accepts that pyrust leaves to python: -V prints python's own
#: version, -x skips a first line (a cold start is a small price for it).
DEFERRED_FALLBACK = "Vx"
#: Accepted and ignored by every python 3.9-3.13 (a Python 2 leftover).
IGNORED = "t"
HELP = "h?"
PYC_MODES = ("default", "always", "never")


class CommandLine:
    """A parsed ``pyrust``/``python`` command line.

    ``own``: {option: value} of the caller's own options (value None: missing);
    ``flag``: the caller's own flag that ended parsing, or None;
    ``help``: -h/-?/--help was given (before anything ended parsing);
    ``fallback``: why python itself must run this command line, or None;
    ``startup``, ``pyopt``: the start-up and per-run options, spelled as python does
    with the value attached ("-OO", "-Xdev", "--check-hash-based-pycs=always",
    "-Werror");
    ``form``: "c", "m", "f" (a file, a directory or a zip), "-" (stdin), or
    None when no program is named; ``source``: the code, module, path or "-";
    ``args``: the arguments after the program (or after the caller's flag);
    ``options``: python's option arguments as given (what came before the program);
    ``python_args``: the arguments without the caller's own options, for ``exec``.
    """

    def __init__(self) -> None:
        self.own: "dict[str, str | None]" = {}
        self.flag: "str | None" = None
        self.help = False
        self.fallback: "str | None" = None
        self.form: "str | None" = None
        self.source: "str | None" = None
        self.args: "list[str]" = []
        self.options: "list[str]" = []
        self.python_args: "list[str]" = []
        self.startup: "list[str]" = []
        self.pyopt: "list[str]" = []
        self._counts: "dict[str, int]" = {}
        self._xoptions: "list[str]" = []
        self._pyc_mode: "str | None" = None
        self._stop = False

    def __repr__(self) -> str:
        return "<CommandLine form=%r source=%r startup=%r pyopt=%r fallback=%r>" % (
            self.form, self.source, self.startup, self.pyopt, self.fallback)


def parse(argv: "Sequence[str]", own_options: "Container[str]" = (),
          own_flags: "Container[str]" = ()) -> CommandLine:
    """Return the CommandLine ``argv`` (without the command's name) states.

    ``own_options`` are the caller's long options with a value (``--socket PATH``
    or ``--socket=PATH``), ``own_flags`` its long flags (``--daemon``), which end
    parsing.  Never raises: whatever python would refuse becomes a fallback.
    """
    line = CommandLine()
    i = 0
    while i < len(argv) and line.form is None:
        arg = argv[i]
        name = arg.partition("=")[0]
        if arg.startswith("--") and name in own_options:
            i = _own_option(line, argv, i, name)
            continue
        if arg in own_flags:
            line.flag, line.args = arg, list(argv[i + 1:])
            return _finish(line)
        if arg == "-" or not arg.startswith("-"):
            _program(line, "-" if arg == "-" else "f", arg, argv[i + 1:])
            break
        line.options.append(arg)
        line.python_args.append(arg)
        if arg == "--":
            if i + 1 < len(argv):
                following = argv[i + 1]
                _program(line, "-" if following == "-" else "f", following, argv[i + 2:])
            break
        i = _long_option(line, argv, i) if arg.startswith("--") else _short_options(line, argv, i)
        if line.help or line._stop:
            # Python stops right here (help, or an error): so does the parse.
            line.python_args += argv[i:]
            break
    return _finish(line)


def _own_option(line: CommandLine, argv: "Sequence[str]", i: int, name: str) -> int:
    """Record the caller's option at ``argv[i]``; return the index after it."""
    arg = argv[i]
    if arg != name:
        line.own[name] = arg[len(name) + 1:]
        return i + 1
    line.own[name] = argv[i + 1] if i + 1 < len(argv) else None
    return i + 2


def _program(line: CommandLine, form: str, source: str, rest: "Sequence[str]",
             separate: bool = True) -> None:
    """Record the program and the arguments after it; ``separate``: the source was an
    argument of its own (not attached, as in ``-cCODE``), so python's argv has it."""
    line.form, line.source, line.args = form, source, list(rest)
    if separate:
        line.python_args.append(source)
    line.python_args += line.args


def _short_options(line: CommandLine, argv: "Sequence[str]", i: int) -> int:
    """Parse the group of short options ``argv[i]`` (``-uBc``); return the next index."""
    arg = argv[i]
    for j in range(1, len(arg)):
        letter = arg[j]
        if letter not in WITH_VALUE:
            if not _flag(line, letter):
                break
            continue
        separate = j + 1 == len(arg)  # "-W error", not "-Werror"
        if separate and i + 1 == len(argv):
            _stop(line, "-%s needs an argument" % letter)
            return i + 1
        value = argv[i + 1] if separate else arg[j + 1:]
        following = i + 2 if separate else i + 1
        if letter in "cm":
            _program(line, letter, value, argv[following:], separate)
            return following
        if separate:
            line.options.append(value)
            line.python_args.append(value)
        if letter == "W":
            line.pyopt.append("-W" + value)
        elif not _x_option_ok(value):
            # Python reads on, then refuses the value at start-up: so do we.
            line.fallback = line.fallback or "-X %s (python checks that value)" % value
        elif "-X" + value not in line._xoptions:
            line._xoptions.append("-X" + value)
        return following
    return i + 1


def _stop(line: CommandLine, why: str) -> None:
    """Record that python stops at this option (an error): fall back to it."""
    line.fallback, line._stop = why, True


def _flag(line: CommandLine, letter: str) -> bool:
    """Record the value-less short option ``letter``; return False if parsing stops."""
    if letter in COUNTED or letter in ORDER:
        line._counts[letter] = line._counts.get(letter, 0) + 1
    elif letter in PER_RUN:
        if "-" + letter not in line.pyopt:
            line.pyopt.append("-" + letter)
    elif letter in HELP:
        line.help = True
        return False
    elif letter in DEFERRED_FALLBACK:
        line.fallback = line.fallback or "-" + letter
    elif letter not in IGNORED:
        # Unknown (-J, -Z...), or "-" (a long option inside a group): python's error.
        _stop(line, "unknown option -%s" % letter)
        return False
    return True


def _long_option(line: CommandLine, argv: "Sequence[str]", i: int) -> int:
    """Parse the long option ``argv[i]``; return the next index."""
    arg = argv[i]
    if arg == "--help":
        line.help = True
    elif arg == "--version":
        line.fallback = line.fallback or arg
    elif arg == "--check-hash-based-pycs":
        if i + 1 < len(argv) and argv[i + 1] in PYC_MODES:
            line._pyc_mode = argv[i + 1]
            line.options.append(argv[i + 1])
            line.python_args.append(argv[i + 1])
            return i + 2
        _stop(line, "--check-hash-based-pycs needs default, always or never")
    else:  # --help-env and the like (3.11+), or unknown: python's own answer
        _stop(line, arg)
    return i + 1


#: -X options whose value python checks at start-up: the values every python
#: 3.9-3.13 accepts.  Any other value falls back to python, which decides.
_X_CHECKS: "dict[str, Callable[[str | None], bool]]" = {
    "utf8": lambda v: v in (None, "0", "1"),
    "int_max_str_digits": lambda v: _number(v, 0, 0) or _number(v, 640, 2 ** 31 - 1),
    "tracemalloc": lambda v: v is None or _number(v, 0, 65535),
    "frozen_modules": lambda v: v in ("on", "off"),
    "cpu_count": lambda v: v == "default" or _number(v, 1, 2 ** 31 - 1),
    "gil": lambda v: v == "1",
}


def _number(value: "str | None", low: int, high: int) -> bool:
    """Return whether ``value`` is plain decimal digits for a number from ``low`` to ``high``."""
    # "".isdigit() is False, so the empty string is no number either.
    return value is not None and value.isascii() and value.isdigit() and \
        len(value) <= 10 and low <= int(value) <= high


def _x_option_ok(value: str) -> bool:
    """Return whether every python 3.9-3.13 starts with ``-X value``."""
    name, eq, setting = value.partition("=")
    check = _X_CHECKS.get(name)
    return check is None or check(setting if eq else None)


def _finish(line: CommandLine) -> CommandLine:
    """Spell the start-up options canonically."""
    counts = line._counts
    if counts.get("I"):  # -I implies -E and -s: one template for both spellings
        counts.pop("E", None)
        counts.pop("s", None)
    for letter in ORDER:
        if counts.get(letter):
            line.startup.append("-" + letter * (counts[letter] if letter in COUNTED else 1))
    line.startup += line._xoptions
    if line._pyc_mode:
        line.startup.append("--check-hash-based-pycs=" + line._pyc_mode)
    return line
