"""The [tool.pyrust] reader (pyrust/minitoml.py) against tomllib.

Whatever the reader accepts must mean exactly what tomllib says it means;
whatever it does not read goes to tomllib, and load_project then answers (or
fails) exactly as it did when tomllib read every file.  Hypothesis builds
documents: a table inside other tables, comments, strings of every kind
(multi-line ones holding lines that look like headers), arrays across lines
and odd whitespace; then tables salted with what the reader must refuse; then
tables cut and spliced a character at a time.
"""

import ast
import subprocess
import sys
import tomllib

import pytest
from hypothesis import assume, given, settings, strategies as st

from conftest import ROOT, TIMEOUT
from pyrust import minitoml, project
from pyrust.errors import ConfigError

FALLBACK = "falls back to tomllib"
EXAMPLES = settings(max_examples=300, deadline=None)


def fast(text: str):
    """Return what the reader gives for ``text``, or FALLBACK."""
    try:
        return minitoml.read(text)
    except minitoml.Unsupported:
        return FALLBACK


def full(text: str):
    """Return what tomllib gives for ``text``'s [tool.pyrust] (raise if not TOML)."""
    return tomllib.loads(text).get("tool", {}).get("pyrust")


def same(got, expected) -> bool:
    """Equal, and of the same types (True == 1, but not here)."""
    return got == expected and repr(got) == repr(expected)


# --- documents -----------------------------------------------------------------
WS = st.sampled_from(["", " ", "   ", "\t", " \t "])
#: Pieces of string and comment text: any character TOML allows there, and
#: pieces of the syntax around them.
PIECES = st.one_of(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
    st.sampled_from(["[tool.pyrust]", "[tool.pyrust.x]", "pyrust = 1", '"""', "'''", "#",
                     "\t", "=", ",", "[", "]", "{", "\\", '"', "'", "é", "\x85", "\u2028"]))


def text_without(forbidden: str):
    return st.lists(PIECES, max_size=6).map("".join).filter(
        lambda s: not any(c in s for c in forbidden))


BASIC = text_without('"\\').map(lambda s: ('"%s"' % s, s))
LITERAL = text_without("'").map(lambda s: ("'%s'" % s, s))
STRING = st.one_of(BASIC, LITERAL)
BOOL = st.sampled_from([("true", True), ("false", False)])
COMMENT = text_without("").map(lambda s: "#" + s)
TRAIL = st.one_of(WS, st.tuples(WS, COMMENT).map("".join))
#: What may sit between an array's brackets and items: spaces, line breaks, comments.
GAPS = st.lists(st.one_of(WS, st.tuples(WS, st.one_of(st.just(""), COMMENT), WS).map(
    lambda t: t[0] + t[1] + "\n" + t[2])), max_size=3).map("".join)
FILLER = st.lists(st.one_of(WS, st.tuples(WS, COMMENT).map("".join)), max_size=2)


@st.composite
def arrays(draw, items):
    """Return (text, value) of an array of ``items`` (a strategy of (text, value))."""
    chosen = draw(st.lists(items, max_size=4))
    text = "[" + draw(GAPS)
    for i, (source, _) in enumerate(chosen):
        text += source + draw(GAPS)
        if i < len(chosen) - 1 or draw(st.booleans()):
            text += "," + draw(GAPS)
    return text + "]", [value for _, value in chosen]


TABLE_VALUE = st.one_of(STRING, BOOL, arrays(STRING))
HEADER = st.sampled_from(["[tool.pyrust]", "[ tool.pyrust ]", "[tool . pyrust]",
                          '[tool."pyrust"]', "[\t'tool'.pyrust]"])


@st.composite
def tables(draw, values=TABLE_VALUE, keys=None):
    """Return (text, value) of a [tool.pyrust] table, lines ending in line breaks."""
    if keys is None:
        keys = draw(st.permutations(sorted(minitoml.KEYS)))[:draw(st.integers(0, 3))]
    lines = [draw(WS) + draw(HEADER) + draw(TRAIL)]
    table = {}
    for key in keys:
        lines += draw(FILLER)
        source, value = draw(values)
        lines.append(draw(WS) + key + draw(WS) + "=" + draw(WS) + source + draw(TRAIL))
        table[key] = value
    lines += draw(FILLER)
    return "\n".join(lines) + "\n", table


# Values of the other tables: only their text matters.
def ml_string(quote: str, extra_pieces):
    body = st.lists(st.one_of(text_without(quote + "\\"), st.sampled_from(extra_pieces)),
                    max_size=5).map("".join)
    ending = st.sampled_from(["", quote, quote * 2])
    return st.tuples(body, ending).map(lambda t: t[0] + t[1]).filter(
        lambda s: quote * 3 not in s and not s.endswith("\\")).map(
        lambda s: quote * 3 + s + quote * 3)


ML_PIECES = ["\n", "\n[tool.pyrust]\n", "\n[tool.pyrust.x]\n", "\npyrust = 1\n", '\n"""',
             "\n'''", "\n# c\n", "\n[other]\n"]
OTHER_SCALAR = st.one_of(
    STRING.map(lambda t: t[0]), BOOL.map(lambda t: t[0]),
    st.sampled_from(["42", "-17", "+1_000", "0xDEAD_BEEF", "0o755", "0b1101", "3.14",
                     "-2E-3", "inf", "-nan", "1979-05-27", "07:32:00", "1979-05-27T07:32:00Z",
                     "1979-05-27T00:32:00.999999-07:00", r'"tab\tquote\"back\\slash\u00e9"',
                     r'"\"[tool.pyrust]\""', r"'C:\venv'", r'"\\"']))
OTHER_ML = st.one_of(ml_string('"', ML_PIECES + ['\\"', "\\\\", "\\\n   "]),
                     ml_string("'", ML_PIECES + ["\\", '"']))


def inline_tables(values):
    pairs = st.lists(st.tuples(st.sampled_from(["a", "b-c", '"d e"', "'f'", "g.h"]), values),
                     max_size=3, unique_by=lambda pair: pair[0])
    return st.tuples(WS, pairs).map(lambda t: "{" + t[0] + ", ".join(
        "%s = %s" % pair for pair in t[1]) + t[0] + "}")


OTHER_VALUE = st.recursive(
    st.one_of(OTHER_SCALAR, OTHER_ML),
    lambda inner: st.one_of(arrays(inner.map(lambda s: (s, None))).map(lambda t: t[0]),
                            inline_tables(OTHER_SCALAR)),
    max_leaves=6)
#: Keys of other tables: no two share a first part, and none reaches tool.pyrust.
OTHER_KEYS = ["name", "version", "a-b_c", "1234", '"quoted key"', "'lit key'", '"with.dot"',
              '""', "physical.color", 'site . "example.org"', "x.'y'.z"]
OTHER_TABLES = ["[project]", "[build-system]", "[tool.black]", "[tool.ruff.lint]", "[tool]",
                "[tool.pyrust-extra]", "[project.urls]", '["tool".other]', "[ tool . spaced ]",
                "[tool.pyrustx]"]


@st.composite
def other_table(draw, header):
    """Return the text of a table (or the root table, with header "") of other tools."""
    lines = [draw(WS) + header + draw(TRAIL)] if header else []
    for key in draw(st.lists(st.sampled_from(OTHER_KEYS), unique=True, max_size=3)):
        lines += draw(FILLER)
        lines.append(draw(WS) + key + draw(WS) + "=" + draw(WS) + draw(OTHER_VALUE)
                     + draw(TRAIL))
    return "".join(line + "\n" for line in lines)


@st.composite
def surroundings(draw):
    """Return (before, after): valid TOML around a table, touching no tool.pyrust."""
    names = draw(st.lists(st.sampled_from(OTHER_TABLES), unique=True, max_size=4))
    arrays_of_tables = ["[[tool.cibw.overrides]]", "[[products]]"]
    headers = names + draw(st.lists(st.sampled_from(arrays_of_tables), max_size=2))
    headers = draw(st.permutations(headers))
    split = draw(st.integers(0, len(headers)))
    before = draw(other_table("")) + "".join(draw(other_table(h)) for h in headers[:split])
    after = "".join(draw(other_table(h)) for h in headers[split:])
    return before, after


@st.composite
def documents(draw):
    """Return (text, table) of a document the reader must read: table None if it has none."""
    before, after = draw(surroundings())
    table_text, table = draw(tables())
    kind = draw(st.sampled_from(["table", "none", "hidden"]))
    if kind == "none":
        table_text, table = "", None
    elif kind == "hidden":  # the table is the content of a multi-line string
        quote = draw(st.sampled_from(['"""', "'''"]))
        assume(quote not in table_text and "\\" not in table_text)
        table_text, table = "hidden = %s\n%s%s\n" % (quote, table_text, quote), None
    return before + table_text + after, table


@pytest.mark.fuzz  # a tier: ./test.sh --fast skips it
@EXAMPLES
@given(documents())
def test_a_table_the_reader_can_read_is_read_as_tomllib_reads_it(document):
    text, table = document
    assert same(full(text), table)  # the generator writes valid TOML
    assert same(fast(text), table)


# --- what the reader must refuse -------------------------------------------------
REFUSED_VALUES = [
    "3", "1.5", "1979-05-27", "inf", '"""x"""', "'''x'''", r'"a\tb"', r'"\u00e9"', "{a = 1}",
    "[1, 2]", '["a", 1]', '[["a"]]', "[,]", '["a",,]', '"a" "b"', "tru", "truex", "True", "",
    '"unterminated', "'unterminated", '"a\x01"', "'a\x7f'", '"\\', '["a"', '"a\nb"', '["a" "b"]',
    '["a"\n,,]', "[\n# \x02\n]", '"a",', "true false",
]
REFUSED_KEYS = ["pyhton", '"python"', "python.x", "'echo'", "echo . x", "py thon", "tool"]
REFUSED_LINES = [
    "[tool.pyrust.x]", "[[tool.pyrust]]", "[tool.pyrust]", "[tool]\npyrust = 1",
    "[tool]\npyrust.x = 1", '[tool]\n"pyrust" = {}', "tool.pyrust.x = 1", "tool = {}", "[[tool]]",
    "[ tool.pyrust . x ]", "# \x01", "[tool.pyrust", "[tool.pyrust]]", "[[tool.pyrust]",
    "\r", "\ufeff",
]


@st.composite
def salted_documents(draw):
    """Return a document whose table holds some of what the reader must refuse."""
    before, after = draw(surroundings())
    values = st.one_of(TABLE_VALUE, st.sampled_from(REFUSED_VALUES).map(lambda v: (v, None)))
    keys = draw(st.lists(st.one_of(st.sampled_from(sorted(minitoml.KEYS)),
                                   st.sampled_from(REFUSED_KEYS)), max_size=4))
    table_text, _ = draw(tables(values, keys))
    lines = table_text.split("\n")
    for line in draw(st.lists(st.sampled_from(REFUSED_LINES), max_size=2)):
        # Before the header only a header: a key there would belong to
        # another table, where keys defined twice are not the reader's business.
        lines.insert(draw(st.integers(0 if line.startswith("[") else 1, len(lines))), line)
    return before + "\n".join(lines) + after


def assert_read_as_tomllib_reads_or_left_to_it(text):
    """Whatever the reader does not leave to tomllib, it reads exactly as tomllib does."""
    got = fast(text)
    if got is not FALLBACK:
        assert same(full(text), got)


@pytest.mark.fuzz  # a tier: ./test.sh --fast skips it
@EXAMPLES
@given(salted_documents())
def test_what_the_reader_accepts_among_refusals_is_what_tomllib_says(text):
    assert_read_as_tomllib_reads_or_left_to_it(text)


@st.composite
def mangled_documents(draw):
    """Return a document whose table (the last one) had characters deleted,
    inserted or replaced after its header, no line of it starting a new table:
    whatever tomllib then refuses is the table's fault."""
    before, _ = draw(surroundings())
    table_text, _ = draw(tables())
    text = before + table_text
    start = len(before) + table_text.index("\n")
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(start, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "replace"]))
        char = draw(st.sampled_from("\"'#=,.\\ \t{}[]\n0aeflrstuy\x01\x7fé\r"))
        if op == "insert":
            text = text[:at] + char + text[at:]
        elif at < len(text):
            text = text[:at] + (char if op == "replace" else "") + text[at + 1:]
    assume(not any(line.lstrip(" \t").startswith("[")
                   for line in text[start:].replace("\r\n", "\n").split("\n")[1:]))
    return text


@pytest.mark.fuzz  # a tier: ./test.sh --fast skips it
@EXAMPLES
@given(mangled_documents())
def test_a_mangled_table_is_read_as_tomllib_reads_it_or_left_to_it(text):
    assert_read_as_tomllib_reads_or_left_to_it(text)


# --- by hand --------------------------------------------------------------------
READ = {
    "header with spaces and a comment": '  [tool.pyrust]  # pyrust\n\tpython = ".venv"  # c\n',
    "CRLF line ends": '[tool.pyrust]\r\npreload = [\r\n  "json", # c\r\n]\r\necho = true\r\n',
    "no final line break": "[tool.pyrust]\necho = false",
    "a comment at the end": "[tool.pyrust]\necho = false # x",
    "an empty table": "[tool.pyrust]\n",
    "empty arrays": "[tool.pyrust]\npreload = [ ]\n",
    "a trailing comma": '[tool.pyrust]\npreload = ["a",]\n',
    "an array across lines": ('[tool.pyrust]\npreload = [  # the heavy ones\n  "numpy",\n\n'
                              "  # and\n  'pandas' , # more\n]  # end\necho=false\n"),
    "a literal string with a backslash": "[tool.pyrust]\npython = 'C:\\venv'\n",
    "unicode and tabs": '[tool.pyrust]\npython = "v\u00e9/\u00f1\tx"\n',
    "quotes of the other kind": "[tool.pyrust]\npreload = [\"it's\", '\"x\"', \"#\", '[y]']\n",
    "a quoted header": "[tool.\"pyrust\"]\necho = true\n",
    "the header inside a multi-line string": 'd = """\n[tool.pyrust]\npython = "x"\n"""\n',
    "inside a multi-line literal string": "d = '''\n[tool.pyrust]\n'''\n",
    "the header only in a comment": "# [tool.pyrust]\n[project]\n",
    "the header only in a string": 'x = "\\"[tool.pyrust]\\""\n',
    "the header as a key": "'[tool.pyrust]' = 1\n",
    "an escaped quote hides a string's end": 'x = """a\\"""\n[tool.pyrust]\n"""\n',
    "an escaped backslash does not": 'x = """a\\\\"""\n[tool.pyrust]\necho = true\n',
    "quotes ending a multi-line string": 'x = """a""""\ny = \'\'\'b\'\'\'\'\'\n[tool.pyrust]\n',
    "nested arrays starting lines": 'm = [\n  ["a", "b"],\n  [1, 2],\n]\n[tool.pyrust]\n',
    "other keys under [tool]": "[tool]\nblack = {line-length = 99}\n[tool.pyrust]\necho = true\n",
    "[tool] after the table": "[tool.pyrust]\necho = true\n[tool]\nother = 1\n",
    "pyrust elsewhere": ('[project]\ndependencies = ["pyrust>=1"]\n[project.scripts]\n'
                         'pyrust = "x"\n[tool.pyrust-extra]\n[tool.pyrustx]\n[tool.pyrust]\n'),
}


@pytest.mark.parametrize("text", READ.values(), ids=list(READ))
def test_tables_the_reader_reads(text):
    assert fast(text) is not FALLBACK
    assert same(fast(text), full(text))


REFUSED = {
    "a multi-line string": '[tool.pyrust]\npython = """x"""\n',
    "a multi-line literal string": "[tool.pyrust]\npython = '''x'''\n",
    "a backslash": '[tool.pyrust]\npython = "C:\\\\venv"\n',
    "an escape in an array": '[tool.pyrust]\npreload = ["a\\u0062"]\n',
    "a dotted key": '[tool.pyrust]\npython.path = "x"\n',
    "a quoted key": '[tool.pyrust]\n"python" = "x"\n',
    "a literal quoted key": "[tool.pyrust]\n'echo' = true\n",
    "an inline table": '[tool.pyrust]\npython = {path = "x"}\n',
    "a number": "[tool.pyrust]\npython = 3\n",
    "a date": "[tool.pyrust]\necho = 1979-05-27\n",
    "an array of booleans": "[tool.pyrust]\npreload = [true]\n",
    "a nested array": '[tool.pyrust]\npreload = [["json"]]\n',
    "an unknown key": '[tool.pyrust]\npyhton = "x"\n',
    "a key twice": "[tool.pyrust]\necho = true\necho = false\n",
    "a second header": '[tool.pyrust]\necho = true\n[tool.pyrust]\npython = "x"\n',
    "a second header spelled otherwise": '[tool.pyrust]\n[tool . "pyrust"]\n',
    "a subtable": "[tool.pyrust]\n[tool.pyrust.extra]\nx = 1\n",
    "a subtable first": "[tool.pyrust.extra]\n[tool.pyrust]\n",
    "an array of tables": "[[tool.pyrust]]\necho = true\n# [tool.pyrust]\n",
    "tool an array of tables": "[[tool]]\n[tool.pyrust]\n",
    "pyrust = under [tool]": "[tool]\npyrust = {echo = true}\n# [tool.pyrust]\n",
    "a dotted pyrust key under [tool]": "[tool]\npyrust.echo = true\n# [tool.pyrust]\n",
    "a quoted pyrust key under [tool]": '[tool]\n"pyrust".echo = true\n[tool.pyrust]\n',
    "a top-level dotted key": "tool.pyrust.echo = true\n# [tool.pyrust]\n",
    "a top-level inline table": "tool = {pyrust = {echo = true}}\n# [tool.pyrust]\n",
    "a control character in a comment": "[tool.pyrust] # \x01\n",
    "a control character in a string": '[tool.pyrust]\npython = "a\x7fb"\n',
    "an unterminated string": '[tool.pyrust]\npython = "x\n',
    "an unterminated array": '[tool.pyrust]\npreload = ["a"\n',
    "no value": "[tool.pyrust]\npython = \n",
    "two values": '[tool.pyrust]\npython = "a" "b"\n',
    "more after the header": "[tool.pyrust] x\n",
    "a lone carriage return": "[tool.pyrust]\recho = true\n",
    "a byte order mark": "\ufeff[tool.pyrust]\n",
    "an array of a comma": "[tool.pyrust]\npreload = [,]\n",
    "more after true": "[tool.pyrust]\necho = truex\n",
    "a date-time with a space elsewhere": "when = 1979-05-27 07:32:00\n[tool.pyrust]\n",
    "a bare word as a value elsewhere": "x = [1,\n[tool.pyrust]\n]\n",
}


def test_a_mistake_in_another_tools_table_is_that_tools_business():
    """pip and the other tools refuse such a file; pyrust reads its own table."""
    text = '[project]\nversion = 1.2.3\nname = "a\\q"\n[tool.pyrust]\necho = true\n'
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(text)
    assert minitoml.read(text) == {"echo": True}


def outcome(path: str):
    """Return what load_project gives for ``path``: its fields or its error."""
    try:
        found = project.load_project(path)
    except Exception as exc:  # the error itself is the outcome (even a crash)
        return type(exc).__name__, str(exc)
    return found and (found.path, found.python, found.preload, found.echo)


@pytest.mark.parametrize("text", REFUSED.values(), ids=list(REFUSED))
def test_what_the_reader_refuses_is_tomllibs_as_before(text, tmp_path, monkeypatch):
    with pytest.raises(minitoml.Unsupported):
        minitoml.read(text)
    path = str(tmp_path / "pyproject.toml")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    now = outcome(path)

    def refuse(text):
        raise minitoml.Unsupported("tomllib reads every file, as before the reader")
    monkeypatch.setattr(minitoml, "read", refuse)
    assert now == outcome(path)


def test_a_file_that_is_not_utf8_is_not_toml(tmp_path):
    (tmp_path / "pyproject.toml").write_bytes(b'[tool.pyrust]\npython = "\xff"\n')
    with pytest.raises(ConfigError, match="pyproject.toml: not valid TOML"):
        project.nearest_project(str(tmp_path))


def test_the_reader_is_a_leaf_that_imports_nothing():
    tree = ast.parse(open(minitoml.__file__, encoding="utf-8").read())
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import,
                                                                     ast.ImportFrom))]


def test_reading_a_project_imports_no_toml_parser(tmp_path):
    """The client's run path reads the table without tomllib and its imports."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "p"\n\n[tool.pyrust]\npreload = ["json"]  # warm\necho = false\n')
    code = ("import sys; sys.path.insert(0, %r)\nfrom pyrust import project\n"
            "found = project.load_project('pyproject.toml')\n"
            "print(found.preload, found.echo, sorted(set(sys.modules) & "
            "{'tomllib', 'tomli', 're', 'enum', 'typing', 'string'}))" % ROOT)
    result = subprocess.run([sys.executable, "-IS", "-c", code], cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert (result.returncode, result.stdout) == (0, "['json'] False []\n"), result.stderr
