"""The op registry (pyrust/ops.py): each op declared once, and everything that
lists ops (the dispatch, the client's flags and --help, the native client's
build header, docs/protocol.md's table) follows it."""

import re
import sys

import pytest

from pyrust import cli, native, ops
from pyrust.docgen import ROOT
from pyrust.server import control
from pyrust.server.worker import Worker


def test_codes_and_names_are_unique_single_bytes():
    assert len({op.code for op in ops.OPS}) == len({op.name for op in ops.OPS}) == len(ops.OPS)
    assert all(len(op.code) == 1 and op.by in (ops.WORKER, ops.SERVICE) for op in ops.OPS)
    assert ops.BY_CODE == {op.code: op for op in ops.OPS}


@pytest.mark.parametrize("op", ops.OPS, ids=lambda op: op.name)
def test_every_op_has_exactly_one_handler_where_it_is_carried_out(op):
    in_worker = callable(getattr(Worker, op.handler_name, None))
    in_service = op in control.HANDLERS and hasattr(control, op.handler_name)
    assert (in_worker, in_service) == (op.by == ops.WORKER, op.by == ops.SERVICE)


def test_no_handler_is_left_without_its_op():
    names = {op.handler_name for op in ops.OPS}
    assert {n for n in dir(Worker) if n.startswith("op_")} <= names
    assert {n for n in vars(control) if n.startswith("op_")} <= names


def test_the_client_flags_and_subcommands_are_the_declared_commands():
    declared = [c for op in ops.OPS for c in op.commands] + list(cli.LOCAL_COMMANDS)
    assert sorted(cli.OWN_FLAGS) == sorted(c.spelling for c in declared if c.is_flag)
    assert sorted(cli.SUBCOMMANDS) == sorted(c.spelling for c in declared if not c.is_flag)
    for spelling, (op, command) in ops.COMMANDS.items():
        assert command in op.commands and command.spelling == spelling


def test_help_shows_every_command_with_its_line():
    text = cli.usage()
    for command in cli.documented_commands():
        assert re.search(r"^  %s +%s$" % (re.escape(command.spelling), re.escape(command.help)),
                         text, re.M), command.spelling
        assert re.search(r"^       pyrust (.* \| )?%s( \|.*)?$" % re.escape(command.usage),
                         text, re.M), command.usage


def test_the_native_client_knows_the_same_flags_and_codes():
    header = native.wire_header()
    flags = re.search(r"#define PYRUST_OWN_FLAGS (.*)", header).group(1)
    assert re.findall(r'"([^"]*)"', flags) == list(cli.OWN_FLAGS)
    assert '#define OP_RUN "r"' in header and '#define OP_ENSURE "e"' in header
    assert (ops.RUN.code, ops.ENSURE.code) == (b"r", b"e")


def test_the_protocol_docs_op_table_is_the_registry():
    with open("%s/docs/protocol.md" % ROOT, encoding="utf-8") as f:
        text = f.read()
    table = text.split("<!-- ops:begin -->")[1].split("<!-- ops:end -->")[0]
    rows = re.findall(r"^\| `(.)` \| ([\w-]+) \| (\w+) \| (.*) \|$", table, re.M)
    assert rows == [(op.code.decode(), op.name, op.by, op.doc) for op in ops.OPS], \
        "docs/protocol.md is stale: run %s -m pyrust.docgen" % sys.executable
