"""``pyrust serve``: the server's entry point, the one place it exits from."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Any, Callable, NamedTuple

from pyrust.config import Config, apply_settings, load_config
from pyrust.errors import PyrustError
from pyrust.paths import resolve_socket_path
from pyrust.server.activation import obtain_listener
from pyrust.server.logs import LOG_BACKUPS, LOG_MAX_BYTES, setup_logging
from pyrust.server.notify import Notifier
from pyrust.server.service import Service

log = logging.getLogger("pyrust")

#: Settings with no flag of their own: ``--socket`` is serve's own (it names the
#: path to bind, and resolves as the client does).
NO_FLAG = ("socket",)

_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _number(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """Return a converter that gives ``convert(text)``, or ``text`` itself when it is
    no number, so that the setting's check refuses it in its own words."""
    def number(text: str) -> Any:
        try:
            return convert(text)
        except ValueError:
            return text
    return number


def _modules(text: str) -> list:
    """Return a comma-separated list of module names as a list ("" is none)."""
    return [name.strip() for name in text.split(",")] if text.strip() else []


class FlagKind(NamedTuple):
    """How ``pyrust serve`` takes a setting whose check is of one kind."""

    #: The flag's text -> the value the check takes (or the text, for it to refuse).
    convert: Callable[[str], Any]
    metavar: str
    #: What the flag accepts, where the file's words (the check's) do not fit.
    accepts: "str | None" = None


#: Every kind of check, and how its flags are read.
FLAG_KINDS = {
    "count": FlagKind(_number(int), "N"),
    "bytes": FlagKind(_number(int), "BYTES"),
    "seconds": FlagKind(_number(float), "SECONDS"),
    "boolean": FlagKind(lambda text: _BOOLEANS.get(text.lower(), text), "BOOL",
                        "true or false (also yes/no, 1/0)"),
    "modules": FlagKind(_modules, "MODULES",
                        'comma-separated module names, e.g. "json,numpy.linalg"'),
    "python": FlagKind(str, "PATH"),
    "log_level": FlagKind(str, "LEVEL"),
}


def setting_flags() -> "dict[str, dataclasses.Field]":
    """Return every setting that is a flag of ``pyrust serve``, by its flag."""
    return {"--" + field.name.replace("_", "-"): field for field in dataclasses.fields(Config)
            if field.name not in NO_FLAG}


def _flag_help(field: "dataclasses.Field") -> str:
    """Return a setting's flag help: its meaning, what it accepts, its default."""
    check = field.metadata["check"]
    accepts = FLAG_KINDS[check.kind].accepts or check.expected
    text = "%s. Accepts %s. Default: %s." % (field.metadata["doc"], accepts,
                                             field.metadata["shown"])
    return text.replace("`", "").replace("%", "%%")  # plain text, and argparse formats it


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of `pyrust serve`: its own options, then one per setting."""
    parser = argparse.ArgumentParser(
        prog="pyrust serve",
        description="Run the pyrust service in the foreground. It uses the socket a "
                    "service manager passes (LISTEN_FDS) or binds its own.",
        epilog="Each option after --log-file is a setting of the configuration file (README's "
               "table), with dashes for underscores; it overrides the file's value and passes "
               "the same check.")
    parser.add_argument("--socket", metavar="PATH",
                        help="socket to bind when none is passed in (default: see README)")
    parser.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    parser.add_argument("--log-file", metavar="FILE",
                        help="log to FILE instead of stderr, rolled over at %d MiB with %d old "
                             "files kept; stdout and stderr go there too"
                             % (LOG_MAX_BYTES >> 20, LOG_BACKUPS))
    for flag, field in setting_flags().items():
        # No type= or choices=: the value passes the same check as the file's.
        kind = FLAG_KINDS[field.metadata["check"].kind]
        parser.add_argument(flag, dest=field.name, metavar=kind.metavar,
                            help=_flag_help(field))
    return parser


#: Exit status for a server that cannot start (EX_CONFIG): the systemd unit
#: lists it in RestartPreventExitStatus=, so a bad setting is not retried forever.
EXIT_STARTUP = 78


def configure(args: argparse.Namespace) -> Config:
    """Return the configuration: the file, then the command line's overrides.

    Both pass the same checks; raise ConfigError naming the file or the
    command line, the key and the accepted range on a bad value.
    """
    overrides = {}
    for field in setting_flags().values():
        text = getattr(args, field.name)
        if text is not None:
            overrides[field.name] = FLAG_KINDS[field.metadata["check"].kind].convert(text)
    return apply_settings(load_config(args.config), overrides, "command line")


def main(argv: "list[str]") -> int:
    """Run the server with command-line ``argv``; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = configure(args)
        journal = os.environ.get("JOURNAL_STREAM")  # setup_logging takes it away
        setup_logging(config.log_level, args.log_file)
        notifier = Notifier.from_environment()
        listener = obtain_listener(resolve_socket_path(args.socket, config.socket))
        try:
            service = Service(config, listener, notifier, lambda: configure(args),
                              args.log_file and os.path.abspath(args.log_file), journal)
            return service.run()
        except BaseException:
            listener.close()
            raise
    except PyrustError as exc:
        print("pyrust: %s" % exc, file=sys.stderr)
        return EXIT_STARTUP
