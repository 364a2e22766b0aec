"""Render the service manager's files from the templates in ``packaging/``.

``install.sh`` runs ``python -m pyrust.units systemd|launchd ...``; the tests
call the same functions, so what is verified is what gets installed.
"""

from __future__ import annotations

import argparse
import os
import plistlib
import re
import sys
from typing import Any

from pyrust.paths import LAUNCHD_LABEL

SYSTEMD_UNITS = ("pyrust.socket", "pyrust.service")
#: macOS limits sun_path to 104 bytes, the terminating NUL included.
MAX_DARWIN_SOCKET_PATH = 103
_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


def _substitute(text: str, values: dict[str, str]) -> str:
    """Return ``text`` with every ``@NAME@`` replaced; raise KeyError naming a missing value."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def systemd_quote(path: str) -> str:
    """Return ``path`` as one ExecStart= word: quoted, with ``%`` and quotes escaped."""
    escaped = path.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return '"%s"' % escaped


def render_systemd(template_dir: str, python: str) -> dict[str, str]:
    """Return ``{unit name: text}`` for the user units, running ``python -m pyrust``."""
    values = {"PYRUST_PYTHON": systemd_quote(python)}
    units = {}
    for name in SYSTEMD_UNITS:
        with open(os.path.join(template_dir, "systemd", name), encoding="utf-8") as f:
            units[name] = _substitute(f.read(), values)
    return units


def render_launchd(template_dir: str, python: str, socket_path: str, log_path: str) -> bytes:
    """Return the agent's plist (XML bytes).  Raise ValueError for a path launchd cannot take."""
    for path in (python, socket_path, log_path):
        if not os.path.isabs(path):
            raise ValueError("launchd needs absolute paths (it expands no '~'): %r" % path)
    if len(socket_path.encode()) > MAX_DARWIN_SOCKET_PATH:
        raise ValueError("socket path is longer than the %d bytes macOS allows: %s"
                         % (MAX_DARWIN_SOCKET_PATH, socket_path))
    values = {"LABEL": LAUNCHD_LABEL, "PYRUST_PYTHON": python, "SOCKET_PATH": socket_path,
              "LOG_PATH": log_path}
    with open(os.path.join(template_dir, "launchd", "pyrust.plist"), "rb") as f:
        template = plistlib.load(f)
    # Substituting in the parsed plist (not the XML text) escapes every value.
    return plistlib.dumps(_substitute_tree(template, values))


def render_launcher(python: str) -> str:
    """Return the ``pyrust`` command's script for the venv of ``python``.

    pip's console script imports ``re`` and runs all of ``site`` before pyrust;
    this one starts python with ``-I -S`` and puts pyrust's own site-packages
    on the path, so a call costs little more than a bare interpreter.
    """
    site = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return ("#!%s -IS\n"
            "# The pyrust command: python without site, pyrust on the path.\n"
            "import sys\nsys.path.append(%r)\nfrom pyrust.cli import main\n"
            "sys.exit(main())\n" % (python, site))


def _substitute_tree(node: Any, values: dict[str, str]) -> Any:
    """Return the parsed plist ``node`` with ``@NAME@`` replaced in every string."""
    if isinstance(node, dict):
        return {_substitute(k, values): _substitute_tree(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_tree(v, values) for v in node]
    if isinstance(node, str):
        return _substitute(node, values)
    return node


def main(argv: list[str] | None = None) -> int:
    """``python -m pyrust.units``: write the rendered files into ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m pyrust.units")
    parser.add_argument("kind", choices=("systemd", "launchd", "launcher"))
    parser.add_argument("--templates", help="the packaging/ directory")
    parser.add_argument("--out", required=True, help="directory to write into")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--socket", help="socket path (launchd)")
    parser.add_argument("--log", help="log file (launchd)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.kind == "launcher":
        files = {"pyrust": render_launcher(args.python).encode()}
    elif args.kind == "systemd":
        files = {k: v.encode() for k, v in render_systemd(args.templates, args.python).items()}
    else:
        files = {LAUNCHD_LABEL + ".plist": render_launchd(
            args.templates, args.python, args.socket, args.log)}
    for name, data in files.items():
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(data)
        if args.kind == "launcher":
            os.chmod(os.path.join(args.out, name), 0o755)
        print(os.path.join(args.out, name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
