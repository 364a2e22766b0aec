"""Configuration: defaults, valid files, and errors that name the file and key."""

import os

import pytest

from pyrust import paths
from pyrust.config import Config, load_config
from pyrust.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_defaults_when_the_default_file_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    config = load_config()
    assert config == Config()
    assert config.workers == (os.cpu_count() or 1)
    assert config.max_request_bytes == 10 * 1024 * 1024


def test_default_file_location(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "pyrust").mkdir()
    (tmp_path / "pyrust" / "config.toml").write_text("workers = 3\n")
    assert load_config().workers == 3


def test_a_full_file(tmp_path):
    config = load_config(write(tmp_path, '''
socket = "/tmp/x.sock"
workers = 4
preload = ["json", "decimal"]
max_request_bytes = 1024
idle_timeout = 2
compile_cache_size = 0
graceful_timeout = 1.5
log_level = "debug"
'''))
    assert config == Config(socket="/tmp/x.sock", workers=4, preload=["json", "decimal"],
                            max_request_bytes=1024, idle_timeout=2.0, compile_cache_size=0,
                            graceful_timeout=1.5, log_level="debug")
    assert isinstance(config.idle_timeout, float)


@pytest.mark.parametrize("text, key", [
    ("wokers = 2", "wokers"),
    ("workers = 0", "workers"),
    ("workers = '2'", "workers"),
    ("workers = true", "workers"),
    ("preload = 'numpy'", "preload"),
    ("preload = [1]", "preload"),
    ("idle_timeout = -1", "idle_timeout"),
    ("log_level = 'loud'", "log_level"),
    ("socket = ''", "socket"),
])
def test_bad_keys_name_the_file_and_the_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert path in str(info.value) and repr(key) in str(info.value)


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path, "workers = = 2")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path)
    assert path in str(info.value)


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.toml"))


def test_unreadable_file_is_an_error(tmp_path):
    path = tmp_path / "dir.toml"
    path.mkdir()
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(str(path))
    assert str(path) in str(info.value)


def test_socket_path_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("PYRUST_SOCKET", raising=False)
    default = str(tmp_path / "pyrust" / "pyrust.sock")
    assert paths.resolve_socket_path(None, None) == default
    assert paths.resolve_socket_path(None, "/c.sock") == "/c.sock"
    monkeypatch.setenv("PYRUST_SOCKET", "/e.sock")
    assert paths.resolve_socket_path(None, "/c.sock") == "/e.sock"
    assert paths.resolve_socket_path("/a.sock", "/c.sock") == "/a.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.delenv("PYRUST_SOCKET")
    monkeypatch.delenv("TMPDIR", raising=False)
    assert paths.resolve_socket_path(None, None) == "/tmp/pyrust-%d/pyrust.sock" % os.getuid()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert paths.resolve_socket_path(None, None) == str(
        tmp_path / ("pyrust-%d" % os.getuid()) / "pyrust.sock")


def test_every_setting_is_documented_in_the_readme():
    import dataclasses

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    for field in dataclasses.fields(Config):
        assert "| `%s` |" % field.name in readme, field.name
