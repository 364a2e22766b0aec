"""``pyrust serve``: the server's entry point, the one place it exits from."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pyrust.config import LOG_LEVELS, Config, apply_settings, load_config
from pyrust.errors import PyrustError
from pyrust.paths import resolve_socket_path
from pyrust.server.activation import obtain_listener
from pyrust.server.logs import LOG_BACKUPS, LOG_MAX_BYTES, setup_logging
from pyrust.server.notify import Notifier
from pyrust.server.service import Service

log = logging.getLogger("pyrust")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrust serve",
        description="Run the pyrust service in the foreground. It uses the socket a "
                    "service manager passes (LISTEN_FDS) or binds its own.")
    parser.add_argument("--socket", metavar="PATH",
                        help="socket to bind when none is passed in (default: see README)")
    parser.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    parser.add_argument("--workers", type=int, metavar="N", help="number of worker processes")
    # No choices=: the value passes the same check as the file's log_level.
    parser.add_argument("--log-level", metavar="LEVEL", help=", ".join(LOG_LEVELS))
    parser.add_argument("--log-file", metavar="FILE",
                        help="log to FILE instead of stderr, rolled over at %d MiB with %d old "
                             "files kept; stdout and stderr go there too"
                             % (LOG_MAX_BYTES >> 20, LOG_BACKUPS))
    return parser


#: Exit status for a server that cannot start (EX_CONFIG): the systemd unit
#: lists it in RestartPreventExitStatus=, so a bad setting is not retried forever.
EXIT_STARTUP = 78


def configure(args) -> "Config":
    """Return the configuration: the file, then the command line's overrides.

    Both pass the same checks; raise ConfigError naming the file or the
    command line, the key and the accepted range on a bad value.
    """
    overrides = {k: v for k, v in (("workers", args.workers), ("log_level", args.log_level))
                 if v is not None}
    return apply_settings(load_config(args.config), overrides, "command line")


def main(argv: list) -> int:
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
