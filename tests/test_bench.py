"""The benchmark works: it checks a real server's every reply, and its figures are all there.

Nothing here times anything or judges a figure's value: that is the bench's job.
"""

import json
import shutil
import subprocess
import sys

import pytest

from bench import client, coldstart, environments, servers, startup, stats, throughput
from bench.programs import PROGRAMS, Program
from conftest import ROOT, TIMEOUT, pyrust_env

pytestmark = pytest.mark.bench  # a tier: ./test.sh --fast skips it

FIGURES = {"n", "mean", "p50", "p90", "p99", "p99.9", "max", "cv"}


@pytest.mark.parametrize("timer", [client.time_persistent, client.time_per_connection])
def test_the_client_verifies_every_reply_to_the_program_table(server, timer):
    for program in PROGRAMS:
        run = timer(server.path, program, 30, 3)
        assert (run.verified, run.wrong) == (30, []), program.label
        figures = stats.summarize(run.samples)
        assert set(figures) == FIGURES and figures["n"] == 30
        assert 0 < figures["p50"] <= figures["p99.9"] <= figures["max"]


def test_replies_are_judged_by_status_and_output():
    assert PROGRAMS[0].accepts(0, b"5\n")
    assert not PROGRAMS[0].accepts(0, b"6\n") and not PROGRAMS[0].accepts(1, b"5\n")
    division = next(p for p in PROGRAMS if p.code == "1/0")
    assert division.accepts(1, b"Traceback ...\nZeroDivisionError: division by zero\n")
    assert not division.accepts(0, b"ZeroDivisionError")


def test_odd_replies_that_are_wrong_are_counted():
    run = client._verify(PROGRAMS[0], [1, 2, 3], [(0, b"5\n"), (1, b"5\n")])
    assert (run.verified, run.wrong) == (2, [(1, b"5\n")])


def test_a_wrong_reference_reply_stops_the_case(server):
    with pytest.raises(client.WrongReply):
        client.time_persistent(server.path, Program("2+3", 0, "6\n"), 10, 1)


def test_throughput_clients_check_their_replies(server):
    figures = throughput.measure(server.path, server.proc.pid, PROGRAMS[0], concurrency=2,
                                 duration=0.05)
    assert figures["requests"] > 0 and figures["wrong"] == 0
    assert figures["connections"] > figures["requests"]
    assert {"rps", "server_cpu", "client_cpu"} <= set(figures)


@pytest.mark.parametrize("forking", [False, True])
def test_the_floors_answer_the_program_table(tmp_path, forking):
    directory = servers.private_dir(str(tmp_path), "floor")
    with servers.start_floor(directory, forking=forking) as floor:
        for program in PROGRAMS:
            for timer in (client.time_persistent, client.time_per_connection):
                run = timer(floor.path, program, 5, 1)
                assert (run.verified, run.wrong) == (5, []), program.label


@pytest.mark.skipif(shutil.which(coldstart.ACTIVATE) is None,
                    reason="needs systemd-socket-activate")
def test_a_cold_start_is_served_by_socket_activation(tmp_path):
    directory = servers.private_dir(str(tmp_path), "cold")
    command = [sys.executable, "-m", "pyrust", "serve", "--config",
               servers.pyrust_config(directory, workers=1)]
    result = coldstart.first_request(directory, command, pyrust_env(), PROGRAMS[0])
    assert result["ok"] and result["ms"] > 0


def test_the_bench_command_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "warm,throughput,memory,hotpath",
         "--json", str(out)],
        cwd=ROOT, env=pyrust_env(), capture_output=True, text=True, timeout=TIMEOUT * 4)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    rows = results["warm"]["rows"]
    assert len(rows) == len(servers.placements()) * len(PROGRAMS) * 2
    for row in rows:
        for name in ("pyrust", "floor"):
            assert FIGURES <= set(row[name])
            assert (row[name]["verified"], row[name]["wrong"]) == (row[name]["n"], 0)
        assert row["ratio_p50"] > 0
    _check_new_connections(results["throughput"])
    _check_memory(results["memory"])
    assert results["hot_path"]["handlers"] and results["hot_path"]["profile"]
    targets = [t["target"] for t in results["targets"]]
    assert any(t.startswith("warm p50") for t in targets)
    assert sum("on one persistent v1 connection: mean <= 190 us" in t
               for t in targets) == len(servers.placements())
    for heading in ("## Warm path", "## New connections", "## Memory and forks",
                    "## Targets"):
        assert heading in done.stdout


def quick_section(tmp_path, name: str):
    """Run ``python -m bench --quick --only NAME``; return its CompletedProcess and
    every figure it wrote (the --json file), failing if it did not exit 0."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", name, "--json", str(out)],
        cwd=ROOT, env=pyrust_env(), capture_output=True, text=True, timeout=TIMEOUT * 4)
    assert done.returncode == 0, done.stderr
    return done, json.loads(out.read_text())


def test_the_startup_section_times_and_checks_every_process(tmp_path):
    """The start-up section: the native client (where it builds), the Python client,
    python -c, python -I -S -c and /bin/true, each process's output checked; the numpy
    case where numpy is installed; the targets judged."""
    done, results = quick_section(tmp_path, "startup")
    section = results["startup"]
    assert "skipped" not in section, section
    placements = section["placements"]
    assert [p["placement"] for p in placements] == [p.name for p in servers.placements()]
    assert section["rows"] == placements[0]["rows"]  # the same-CPU regime leads
    for placement in placements:
        commands = [r["command"] for r in placement["rows"]]
        assert commands[-4:] == [startup.PYTHON_CLIENT, startup.PYTHON, startup.PYTHON_IS,
                                 startup.TRUE]
        assert commands[:-4] == ([startup.NATIVE] if section["native"] else [])
        for row in placement["rows"] + placement.get("numpy_rows", []):
            assert (row["runs"], row["verified"]) == (3, 3), row
            assert 0 < row["min"] <= row["median"] <= row["max"] and row["stddev"] >= 0
            assert 0 <= row["cpu_median"] <= row["max"], row  # its own CPU, within its time
        assert ("numpy_rows" in placement) == ("numpy_skipped" not in section)
    targets = [t for t in results["targets"]
               if t["target"].startswith(("native pyrust", "numpy preloaded"))]
    assert len(targets) == (3 if section["native"] else 1) * len(placements)
    assert "## Start-up" in done.stdout


def _check_new_connections(section):
    """Every placement (and unpinned) has pyrust and the forking floor at 1, 2, 4, 8 and 16
    clients, every reply right, and pyrust's template forked for its connections."""
    placements = {"unpinned"} | {p.name for p in servers.placements()}
    found = {(c["placement"], c["server"]) for c in section["configurations"]}
    assert found >= {(p, s) for p in placements for s in ("pyrust", "forking floor")}
    for config in section["configurations"]:
        assert [r["concurrency"] for r in config["rows"]] == [1, 2, 4, 8, 16]
        for row in config["rows"]:
            assert row["requests"] > 0 and row["wrong"] == 0 and row["rps"] > 0
            if config["server"] == "pyrust":
                assert row["forks"] >= row["requests"] and row["forks_per_connection"] > 0


def _check_memory(memory):
    """The template, its spares and the session are measured in every phase, with
    growth, and the fork figures come from the template's status."""
    assert memory["wrong"] == 0 and memory["verified"] == memory["requests"]
    assert memory["cases"][0]["preload"] == []
    for case in memory["cases"]:
        for phase in ("idle", "warm", "after"):
            snapshot = case[phase]
            assert len(snapshot["spares"]) == memory["spares"]
            for footprint in [snapshot["template"], snapshot["spare_mean"], snapshot["session"],
                              *snapshot["spares"].values()]:
                assert set(footprint) == {"rss", "uss", "pss"}
        assert set(case["growth"]) == {"template", "spare", "session"}
        forks = case["forks"]
        assert forks["total"] >= memory["connections"] and forks["count"] > 0
        assert forks["p50_ms"] is not None and forks["p99_ms"] is not None
        assert case["template_cpu_per_connection"] > 0


def test_an_environment_run_request_carries_its_fields_and_expects_exit_code_0():
    from pyrust import protocol
    from pyrust.environment import Environment

    run = environments.run_request(Environment("/v/bin/python", ["json"],
                                               startup=["PYTHONHASHSEED=1"]))
    (length,) = protocol.HEADER.unpack(run.frame[:4])
    assert length == protocol.EXTENDED_FLAG | (len(run.frame) - 4)
    fields = protocol.decode_fields(run.frame[4:])
    assert (fields[protocol.OP], fields[protocol.FORM], fields[protocol.SOURCE],
            fields[protocol.STDIO]) == (b"r", b"c", b"2+3", b"c")
    assert (fields[protocol.PYTHON], fields[protocol.PRELOAD], fields[protocol.STARTUP]) == (
        b"/v/bin/python", [b"json"], [b"PYTHONHASHSEED=1"])
    assert run.accepts(0, b"\0\0\0\0" + b"5\n")
    assert not run.accepts(0, b"5\n") and not run.accepts(6, b"")


def test_template_start_times_are_read_from_the_service_log():
    log = ("pyrust[9]: INFO: the template of python /v/bin/python PYTHONHASHSEED=3 serves "
           "(pid 12, Python 3.12.1, 140 ms)\n"
           "pyrust[9]: INFO: the template of python /v/bin/python PYTHONHASHSEED=3 preloading "
           "json, decimal serves (pid 13, Python 3.12.1, 176 ms)\n")
    assert environments.template_starts(log, [3, 4], ()) == [140.0]
    assert environments.template_starts(log, [3], ("json", "decimal")) == [176.0]


def test_the_environments_section_measures_every_case(tmp_path):
    done, results = quick_section(tmp_path, "environments")
    section = results["environments"]
    placements = [p.name for p in servers.placements()]
    assert [(c["placement"], c["case"]) for c in section["cold"]] == [
        (p, case) for p in placements for case in ("no preload", "preload json, decimal")]
    for case in section["cold"] + section["warm"]:
        assert case["verified"] == case["runs"] == 2 and not case["wrong_examples"]
        assert 0 < case["min"] <= case["median"] <= case["p90"] <= case["max"]
    assert all(c["first_problem"] is None and c["template_start_ms"] for c in section["cold"])
    assert len(section["warm"]) == 5 * len(placements)
    rows = section["request_path"]
    assert len(rows) == 6 * len(placements)
    for row in rows:
        assert FIGURES <= set(row) and (row["verified"], row["wrong"]) == (row["n"], 0)
    # Every environment the section made was still up: none was ended to make room.
    assert set(section["templates_at_end"].values()) == {section["environments_per_server"]}
    assert "## Environments" in done.stdout


def test_the_markdown_report_replaces_only_the_measured_part(tmp_path):
    from bench.cli import BEGIN, END, write_markdown

    page = tmp_path / "benchmarks.md"
    page.write_text("# Title\n\nprose\n\n%s\nold run\n%s\n\nafter\n" % (BEGIN, END))
    write_markdown(str(page), "new run\n")
    assert page.read_text() == "# Title\n\nprose\n\n%s\n\nnew run\n%s\n\nafter\n" % (BEGIN, END)
