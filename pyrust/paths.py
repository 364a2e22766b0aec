"""Where pyrust's files live.  A leaf module: it imports only ``os`` and ``sys``.

Client and server call the same functions, so they always agree on the socket.
"""

import os
import sys

SOCKET_NAME = "pyrust.sock"
APP = "pyrust"
#: The launchd agent's label (its plist is ~/Library/LaunchAgents/LABEL.plist).
LAUNCHD_LABEL = "io.pyrust.agent"


def _xdg_dir(variable: str, fallback: str) -> str:
    """Return ``$variable`` if set to an absolute path, else ``~/fallback``."""
    value = os.environ.get(variable, "")
    if os.path.isabs(value):
        return value
    return os.path.join(os.path.expanduser("~"), fallback)


def default_socket_path() -> str:
    """Return the socket path used when nothing else names one.

    ``$XDG_RUNTIME_DIR/pyrust/pyrust.sock`` where the runtime directory is set
    (it is private to the user by the XDG spec); on macOS ``$TMPDIR/pyrust.sock``
    (the per-user private temporary directory, which the launchd agent uses);
    else ``${TMPDIR:-/tmp}/pyrust-$UID/pyrust.sock``.  Nothing makes that last
    directory private but its creator, so client and server both verify it.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        return os.path.join(runtime, APP, SOCKET_NAME)
    tmpdir = os.environ.get("TMPDIR", "")
    if sys.platform == "darwin" and os.path.isabs(tmpdir):
        return os.path.join(tmpdir, SOCKET_NAME)
    return os.path.join(tmpdir if os.path.isabs(tmpdir) else "/tmp",
                        "%s-%d" % (APP, os.getuid()), SOCKET_NAME)


def socket_unit_file(path: str) -> "str | None":
    """Return the installed service-manager file that owns socket ``path``, or None.

    pyrust's systemd socket unit listens on the default path, and so does its
    launchd agent; the client never starts a server of its own on a path one
    of them owns.
    """
    if path != default_socket_path():
        return None
    if sys.platform == "darwin":
        candidate = os.path.join(os.path.expanduser("~"), "Library", "LaunchAgents",
                                 LAUNCHD_LABEL + ".plist")
    else:
        candidate = os.path.join(_xdg_dir("XDG_CONFIG_HOME", ".config"), "systemd", "user",
                                 "pyrust.socket")
    return candidate if os.path.exists(candidate) else None


def resolve_socket_path(cli_value: "str | None", config_value: "str | None") -> str:
    """Return the socket path: ``--socket``, ``$PYRUST_SOCKET``, config, default."""
    for candidate in (cli_value, os.environ.get("PYRUST_SOCKET"), config_value):
        if candidate:
            return os.path.abspath(os.path.expanduser(candidate))
    return default_socket_path()


def default_config_path() -> str:
    """Return ``$XDG_CONFIG_HOME/pyrust/config.toml`` (``~/.config`` by default)."""
    return os.path.join(_xdg_dir("XDG_CONFIG_HOME", ".config"), APP, "config.toml")


def default_log_path() -> str:
    """Return the log file of a background server: ``$XDG_STATE_HOME/pyrust/pyrust.log``."""
    return os.path.join(_xdg_dir("XDG_STATE_HOME", ".local/state"), APP, "pyrust.log")
