"""Blocks of the docs made from the code, so that each fact is written once.

    python -m pyrust.docgen [--check] [--root DIR]

rewrites every block of ``BLOCKS`` in place: the text between
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in its file is what the
block's render function returns.  With ``--check`` it writes nothing, prints
a diff of each stale file and exits 1 if any is stale (0 if none is).

To generate another block: put the two marker lines in the doc and add
(file, name, render function) to ``BLOCKS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
from typing import Callable, NamedTuple

from pyrust.config import Config

#: The checkout's root, where the docs are.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Block(NamedTuple):
    """A generated block: ``name`` in ``path`` (relative to the root) holds ``render()``."""

    path: str
    name: str
    render: Callable[[], str]


def replace_block(text: str, name: str, body: str) -> str:
    """Return ``text`` with the lines between block ``name``'s markers replaced by ``body``.

    Raise ValueError if the markers are not each there once, begin before end,
    on lines of their own.
    """
    begin, end = "<!-- %s:begin -->\n" % name, "\n<!-- %s:end -->" % name
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError("block %r: need one %r line and one %r line"
                         % (name, begin.strip(), end.strip()))
    start, stop = text.index(begin) + len(begin), text.index(end)
    if stop < start - 1:
        raise ValueError("block %r: its end marker comes before its begin marker" % name)
    body = body.rstrip("\n")
    return text[:start] + body + ("\n" if body else "") + text[stop + 1:]


def settings_table() -> str:
    """Return README's settings table: one row per field of Config, from its metadata."""
    rows = ["| key | default | accepted | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(Config):
        meta = field.metadata
        rows.append("| `%s` | %s | %s | %s |"
                    % (field.name, meta["shown"], meta["accepted"], meta["doc"]))
    return "\n".join(rows) + "\n"


def commands_table() -> str:
    """Return README's table of pyrust's commands, from their declarations
    (pyrust/ops.py for those that send an op, pyrust/cli.py for the others)."""
    from pyrust import cli

    rows = ["| command | what it does |", "|---|---|"]
    rows += ["| `pyrust %s` | %s |" % (c.usage, c.doc) for c in cli.documented_commands()]
    return "\n".join(rows) + "\n"


def ops_table() -> str:
    """Return docs/protocol.md's table of ops (field 1), from pyrust/ops.py."""
    from pyrust import ops

    rows = ["| code | op | carried out by | what it does |", "|---|---|---|---|"]
    rows += ["| `%s` | %s | %s | %s |" % (op.code.decode(), op.name, op.by, op.doc)
             for op in ops.OPS]
    return "\n".join(rows) + "\n"


#: Every generated block.
BLOCKS = [
    Block("README.md", "settings", settings_table),
    Block("README.md", "commands", commands_table),
    Block("docs/protocol.md", "ops", ops_table),
]


def generate(root: str = ROOT) -> "list[tuple[str, str, str]]":
    """Return (path, current text, generated text) for every file holding a block.

    Raise OSError if a file cannot be read, ValueError if its markers are wrong.
    """
    texts: "dict[str, tuple[str, str]]" = {}
    for block in BLOCKS:
        path = os.path.join(root, block.path)
        if path not in texts:
            with open(path, encoding="utf-8") as f:
                current = f.read()
            texts[path] = (current, current)
        current, new = texts[path]
        texts[path] = (current, replace_block(new, block.name, block.render()))
    return [(path, current, new) for path, (current, new) in texts.items()]


def stale(root: str = ROOT) -> "list[tuple[str, str]]":
    """Return (path, unified diff) for every file whose blocks are out of date."""
    return [(path, "".join(difflib.unified_diff(
                current.splitlines(keepends=True), new.splitlines(keepends=True),
                path + " (now)", path + " (generated)")))
            for path, current, new in generate(root) if current != new]


def main(argv: "list[str] | None" = None) -> int:
    """``python -m pyrust.docgen``: rewrite the generated blocks, or check them."""
    parser = argparse.ArgumentParser(prog="python -m pyrust.docgen",
                                     description="Rewrite the docs' generated blocks.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; show a diff and exit 1 if a block is stale")
    parser.add_argument("--root", default=ROOT, help="the checkout (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        diffs = stale(args.root)
        for _path, diff in diffs:
            sys.stdout.write(diff)
        if diffs:
            print("stale: run `python -m pyrust.docgen` to regenerate", file=sys.stderr)
        return 1 if diffs else 0
    for path, current, new in generate(args.root):
        if new != current:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            print("rewrote %s" % path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
