"""Exceptions shared across pyrust.  A leaf module: it imports nothing.

Inside a process errors are exceptions; only the CLI and the server entry
point turn them into messages and exit codes.
"""


class PyrustError(Exception):
    """Base class; ``str()`` is a complete message for the user."""


class ConfigError(PyrustError):
    """The configuration file is unreadable or holds a bad key or value."""


class ServiceUnavailable(PyrustError):
    """Nothing accepted the connection on the socket path."""


class UntrustedService(PyrustError):
    """The socket's directory or the server behind it belongs to another user."""


class SocketInUse(PyrustError):
    """Another server is already listening on the socket path."""


class StartupError(PyrustError):
    """The server cannot start (bad socket path, a preload that fails, ...)."""
