"""Configuration: defaults, valid files, and errors that name the file and key."""

import dataclasses
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TIMEOUT, pyrust_env
from pyrust import paths
from pyrust.config import MAX_SECONDS, Config, apply_settings, load_config
from pyrust.errors import ConfigError
from pyrust.server.main import (
    EXIT_STARTUP,
    FLAG_KINDS,
    build_parser,
    configure,
    setting_flags,
)

SETTINGS = [field.name for field in dataclasses.fields(Config)]


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


# --- every setting is bounded ----------------------------------------------

def bad_value(key, value):
    """Return ``value`` as TOML for ``key``; "a string" is a plausible wrong string."""
    if value == "a string":
        return {"socket": '"relative/pyrust.sock"', "log_level": '"loud"'}.get(key, '"a string"')
    return value


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e30", "a string", "{ a = 1 }"])
@pytest.mark.parametrize("key", SETTINGS)
def test_every_setting_refuses_bad_values_in_one_line(tmp_path, key, value):
    path = write(tmp_path, "%s = %s\n" % (key, bad_value(key, value)))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300
    expected = dataclasses.fields(Config)[SETTINGS.index(key)].metadata["check"].expected
    assert message.startswith("%s: key %r: expected %s, got " % (path, key, expected))


def test_every_default_is_within_its_range():
    for field in dataclasses.fields(Config):
        value = getattr(Config(), field.name)
        if value is not None:  # socket: None means "resolve the default path"
            assert field.metadata["check"](value) == value, field.name


@pytest.mark.parametrize("text", [
    "request_timeout = 0", "idle_exit = 0", "max_worker_memory = 0", "max_worker_rss = 0",
    "request_timeout = 31536000", "idle_timeout = 31536000.0", "kill_grace = 0.001",
    "max_worker_memory = 67108864", "max_worker_memory = 1099511627776",
    "max_request_bytes = 1", "max_reply_bytes = 1073741824", "compile_cache_size = 65536",
    "workers = 512", "socket = '~/pyrust.sock'",
    "socket = '/%s'" % ("s" * 106), "preload = ['os.path', '_x']", "preload = []",
])
def test_values_at_the_bounds_are_accepted(tmp_path, text):
    load_config(write(tmp_path, text))


@pytest.mark.parametrize("text, detail", [
    ("request_timeout = 31536000.5", ""), ("idle_timeout = 0", ""),
    ("graceful_timeout = 0.0009", ""), ("max_worker_memory = 1", ""),
    ("max_worker_memory = 67108863", ""), ("max_reply_bytes = 1073741825", ""),
    ("max_request_bytes = 0", ""), ("compile_cache_size = 65537", ""),
    ("workers = 513", ""),
    ("max_workers = 513", ""), ("workers = 2.0", ""), ("max_worker_rss = 1.5e9", ""),
    ("autostart = 1", ""), ("autostart = 'true'", ""), ("log_level = 'INFO'", ""),
    ("socket = ''", ""), ("socket = 'pyrust.sock'", " (a relative path)"),
    ("socket = '/%s'" % ("s" * 107), " (108 bytes)"),
    ('socket = "/a\\u0000b"', " (a NUL character)"),
    ("preload = ['a b']", " ('a b' is not a module name)"),
    ("preload = ['a..b']", " ('a..b' is not a module name)"),
    ("preload = ['1x']", " ('1x' is not a module name)"),
    ("preload = [1]", " (1 is not a module name)"),
    ("idle_exit = 1979-05-27", ""), ("[request_timeout]\nseconds = 3", ""),
])
def test_values_out_of_range_are_refused(tmp_path, text, detail):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(path + ": key ")
    assert message.endswith(detail)


def test_a_long_value_is_cut_short_in_the_message(tmp_path):
    path = write(tmp_path, "socket = %r\n" % ("x" * 500))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.endswith("xxx ... (a relative path)") and "x" * 60 not in message


# --- command-line overrides pass the same checks ----------------------------

@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "command line: key 'workers': expected a whole number from 1 to 512, "
                         "got 0"),
    (["--workers", "513"], "command line: key 'workers': expected a whole number from 1 to 512, "
                           "got 513"),
    (["--log-level", "loud"], "command line: key 'log_level': expected \"debug\", \"info\", "
                              "\"warning\" or \"error\", got 'loud'"),
    (["--workers", "3"], "command line: key 'workers': 3 is more than max_workers (2)"),
])
def test_serve_overrides_pass_the_same_checks(tmp_path, args, message):
    path = write(tmp_path, "workers = 1\nmax_workers = 2\n")
    with pytest.raises(ConfigError) as info:
        configure(build_parser().parse_args(["--config", path] + args))
    assert str(info.value) == message


def test_serve_overrides_apply(tmp_path):
    path = write(tmp_path, "workers = 1\nmax_workers = 4\n")
    config = configure(build_parser().parse_args(["--config", path, "--workers", "3",
                                                  "--log-level", "debug"]))
    assert (config.workers, config.log_level, config.max_workers) == (3, "debug", 4)


#: Per kind of check: a flag's text that lands (and the value it lands as), and texts
#: the check refuses.
FLAG_VALUES = {
    "count": ("3", 3, ["x", "2.0", "-1", "99999", "1e2"]),
    "bytes": ("67108864", 67108864, ["x", "-1", "1.5e9", "10 MiB", "1099511627777"]),
    "seconds": ("1.5", 1.5, ["inf", "nan", "-1", "x", "1e30"]),
    "boolean": ("no", False, ["maybe", "", "2", "on"]),
    "modules": ("json, os.path", ["json", "os.path"], ["a b", "json,,os", "1x"]),
    "python": ("/usr/bin/python3", "/usr/bin/python3", ["python3", "", "/a\0b"]),
    "log_level": ("debug", "debug", ["loud", "DEBUG", ""]),
}
FLAGS = setting_flags()


def check_of(flag):
    return FLAGS[flag].metadata["check"]


def test_every_setting_but_socket_is_a_serve_option():
    options = {a.dest for a in build_parser()._actions if a.option_strings}
    assert set(FLAGS) == {"--" + key.replace("_", "-") for key in SETTINGS} - {"--socket"}
    assert {f.name for f in FLAGS.values()} <= options
    assert {check_of(flag).kind for flag in FLAGS} == set(FLAG_VALUES) == set(FLAG_KINDS)


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_a_good_serve_option_lands_in_the_config(tmp_path, flag):
    text, value, _ = FLAG_VALUES[check_of(flag).kind]
    config = configure(build_parser().parse_args(["--config", write(tmp_path, ""), flag, text]))
    assert getattr(config, FLAGS[flag].name) == value
    assert dataclasses.replace(config, **{FLAGS[flag].name: getattr(Config(), FLAGS[flag].name)}
                               ) == Config()  # and nothing else changed


@pytest.mark.parametrize("flag, text", [(flag, text) for flag in sorted(FLAGS)
                                        for text in FLAG_VALUES[check_of(flag).kind][2]])
def test_a_bad_serve_option_is_refused_by_its_check(tmp_path, flag, text):
    key = FLAGS[flag].name
    with pytest.raises(ConfigError) as info:
        configure(build_parser().parse_args(["--config", write(tmp_path, ""), flag, text]))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("command line: key %r: expected %s, got "
                              % (key, check_of(flag).expected)), message


@pytest.mark.parametrize("text, value", [
    ("true", True), ("TRUE", True), ("yes", True), ("1", True),
    ("false", False), ("No", False), ("0", False)])
def test_a_boolean_option_takes_these_words(tmp_path, text, value):
    args = build_parser().parse_args(["--config", write(tmp_path, ""), "--echo", text])
    assert configure(args).echo is value


def test_an_empty_preload_option_overrides_the_file(tmp_path):
    path = write(tmp_path, 'preload = ["json"]\n')
    assert configure(build_parser().parse_args(["--config", path, "--preload", ""])).preload == []


@settings(max_examples=200, deadline=None)
@given(flag=st.sampled_from(sorted(FLAGS)), text=st.text(max_size=12))
def test_any_option_text_lands_or_gets_the_one_line_error(flag, text):
    """Whatever the text, a flag's value is either one the file could hold or refused
    in the file's words."""
    args = build_parser().parse_args(["--config", os.devnull, flag + "=" + text])
    key = FLAGS[flag].name
    try:
        config = configure(args)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        assert str(exc).startswith("command line: key %r: " % key), exc
    else:
        value = getattr(config, key)
        assert check_of(flag)(value) == value


def test_the_serve_help_names_each_setting_with_its_range(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's wrapping
    for flag in FLAGS:
        accepts = FLAG_KINDS[check_of(flag).kind].accepts
        assert "%s %s" % (flag, FLAG_KINDS[check_of(flag).kind].metavar) in out
        assert "Accepts %s" % (accepts or check_of(flag).expected) in out, flag


def test_a_bad_serve_option_stops_the_server_in_one_line(tmp_path):
    socket_path = str(tmp_path / "s.sock")
    result = subprocess.run([sys.executable, "-m", "pyrust", "serve", "--config", os.devnull,
                             "--socket", socket_path, "--idle-timeout", "forever"],
                            capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                            env=pyrust_env())
    assert result.returncode == EXIT_STARTUP
    assert result.stderr.decode() == (
        "pyrust: command line: key 'idle_timeout': expected a number of seconds from 0.001 "
        "to 31536000 (365 days), got 'forever'\n")
    assert not os.path.exists(socket_path)


def test_a_file_ceiling_below_its_workers_names_max_workers(tmp_path):
    with pytest.raises(ConfigError, match=r": key 'max_workers': 2 is less than workers \(3\)$"):
        apply_settings(Config(), {"workers": 3, "max_workers": 2}, "FILE")


# --- end to end: the server and the client refuse at load, in one line ------

END_TO_END = ["request_timeout = inf", "idle_timeout = inf", "idle_timeout = 1e30",
              "max_worker_memory = 1", "idle_exit = { a = 1 }", "workers = nan"]


def one_line_error(result, path, key) -> str:
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pyrust: %s: key %r: expected " % (path, key)), lines[0]
    return lines[0]


@pytest.mark.parametrize("text", END_TO_END, ids=lambda t: t.replace(" ", ""))
def test_the_server_refuses_a_bad_setting_at_start(tmp_path, text):
    path = write(tmp_path, text + "\n")
    socket_path = str(tmp_path / "s.sock")
    result = subprocess.run([sys.executable, "-m", "pyrust", "serve", "--config", path,
                             "--socket", socket_path], capture_output=True, timeout=TIMEOUT,
                            stdin=subprocess.DEVNULL, env=pyrust_env())
    assert result.returncode == EXIT_STARTUP
    one_line_error(result, path, text.split()[0])
    assert not os.path.exists(socket_path)  # refused before anything was bound


@pytest.mark.parametrize("text", END_TO_END, ids=lambda t: t.replace(" ", ""))
def test_the_client_refuses_a_bad_setting_before_connecting(tmp_path, text):
    path = write(tmp_path, text + "\n")
    result = subprocess.run([sys.executable, "-m", "pyrust", "--config", path, "--socket",
                             str(tmp_path / "s.sock"), "-c", "1"], capture_output=True,
                            timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                            env=pyrust_env(XDG_STATE_HOME=str(tmp_path / "state")))
    assert (result.returncode, result.stdout) == (125, b"")
    one_line_error(result, path, text.split()[0])
    assert not os.path.exists(tmp_path / "s.sock")  # no server was started


def test_a_server_at_the_upper_bounds_serves(make_server):
    durations = ["request_timeout", "idle_timeout", "kill_grace", "graceful_timeout",
                 "idle_exit"]
    server = make_server("".join("%s = %d\n" % (key, MAX_SECONDS) for key in durations)
                         + "max_request_bytes = 1073741824\nmax_reply_bytes = 1073741824\n"
                         "max_worker_rss = 1099511627776\nmax_worker_memory = 1099511627776\n"
                         "compile_cache_size = 65536\n", workers=1)
    assert server.request("2+3") == (0, "5\n")
    assert server.stop() == 0


def test_a_server_at_the_smallest_memory_limit_serves(make_server):
    server = make_server("max_worker_memory = 67108864\n", workers=1)
    assert server.request("2+3") == (0, "5\n")
    assert server.request("bytearray(128 * 1024 * 1024)")[0] != 0  # the limit holds
    assert server.request("2+3") == (0, "5\n")
