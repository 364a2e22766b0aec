"""``pyrust serve``: the server's entry point, the one place it exits from."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys

from pyrust.config import load_config
from pyrust.errors import PyrustError, StartupError
from pyrust.paths import resolve_socket_path
from pyrust.server.activation import bind_standalone, systemd_listener
from pyrust.server.notify import Notifier
from pyrust.server.supervisor import Supervisor

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
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    return parser


def preload(modules: list) -> None:
    """Import ``modules`` so every worker starts with them; raise StartupError on failure."""
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # SystemExit or KeyboardInterrupt from a module, too
            raise StartupError("cannot preload module %r: %s: %s"
                               % (name, type(exc).__name__, exc)) from None
        log.debug("preloaded %s", name)


def main(argv: list) -> int:
    """Run the server with command-line ``argv``; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        overrides = {k: v for k, v in (("workers", args.workers), ("log_level", args.log_level))
                     if v is not None}
        if overrides.get("workers", 1) < 1:
            raise StartupError("--workers must be at least 1")
        config = dataclasses.replace(config, **overrides)
        logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                            format="pyrust[%(process)d]: %(levelname)s: %(message)s")
        notifier = Notifier.from_environment()
        listener = systemd_listener() or bind_standalone(
            resolve_socket_path(args.socket, config.socket))
        try:
            preload(config.preload)
            return Supervisor(config, listener, notifier).run()
        except BaseException:
            listener.close()
            raise
    except PyrustError as exc:
        print("pyrust: %s" % exc, file=sys.stderr)
        return 1
