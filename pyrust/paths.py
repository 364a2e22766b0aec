"""Where pyrust's files live.  A leaf module: it imports only ``os``.

Client and server call the same functions, so they always agree on the socket.
"""

import os

SOCKET_NAME = "pyrust.sock"
APP = "pyrust"


def _xdg_dir(variable: str, fallback: str) -> str:
    """Return ``$variable`` if set to an absolute path, else ``~/fallback``."""
    value = os.environ.get(variable, "")
    if os.path.isabs(value):
        return value
    return os.path.join(os.path.expanduser("~"), fallback)


def default_socket_path() -> str:
    """Return the socket path used when nothing else names one.

    ``$XDG_RUNTIME_DIR/pyrust/pyrust.sock`` where the runtime directory exists
    (it is private to the user by the XDG spec), else ``/tmp/pyrust-$UID/``.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        return os.path.join(runtime, APP, SOCKET_NAME)
    return os.path.join("/tmp", "%s-%d" % (APP, os.getuid()), SOCKET_NAME)


def resolve_socket_path(cli_value, config_value) -> str:
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
