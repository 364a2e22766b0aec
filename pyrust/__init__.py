"""pyrust: a warm CPython behind a per-user Unix socket."""

__version__ = "0.1.0"
