"""The readable report: Markdown tables that read well in a terminal too.

``render`` turns one run's results (the dict the JSON file holds) into text;
every section it finds is shown, skipped ones with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def table(headers: list, rows: list, align: str = "") -> str:
    """Return a Markdown pipe table, padded.  ``align`` has one letter per column,
    ``l`` or ``r``; by default the first two columns are left-aligned, the others right."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(str(h))] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    align = align or "ll" + "r" * (len(headers) - 2)

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) if a == "l" else v.rjust(w)
                                 for v, w, a in zip(values, widths, align)) + " |"
    rule = "|" + "|".join("-" * (w + 1) + ("-" if a == "l" else ":")
                          for w, a in zip(widths, align)) + "|"
    return "\n".join([line([str(h) for h in headers]), rule] + [line(r) for r in cells])


def _us(value: float) -> str:
    return "%.1f" % value


def _checked(*cases: dict) -> str:
    wrong = sum(c["wrong"] for c in cases)
    return "all %d" % sum(c["verified"] for c in cases) if not wrong else "%d WRONG" % wrong


def machine_section(m: dict) -> str:
    rows = [(k, m[k]) for k in ("command", "date", "host", "cpus", "cpu_model", "memory", "kernel",
                                "python", "commit", "load_before", "load_after", "other_load")
            if k in m]
    return "## Machine and run\n\n" + table(["", ""], rows, align="ll")


def warm_section(warm: dict) -> str:
    parts = ["## Warm path: pyrust against the floor (µs per round trip)\n\n"
             "pyrust with its default %d spares and the floors, all pinned with "
             "taskset. Persistent: %d timed requests on one connection (one pyrust process) "
             "after %d untimed, against the floor's one process; per-connection: %d timed "
             "connections after %d untimed, each served by a fresh pyrust process (forked in "
             "advance) and by a fresh process of the forking floor (forked after accept()), "
             "the floor of these rows. CV = coefficient of variation of 20 consecutive batch "
             "means (the floor's beside pyrust's: what the machine's own noise gives); srv CPU "
             "= server CPU time per request (schedstat, exited workers included); x floor = "
             "pyrust p50 / floor p50."
             % (warm.get("pyrust_spares", warm.get("pyrust_workers", 0)),
                warm["requests_per_case"], warm["warmup_per_case"],
                warm.get("connections_per_case", warm["requests_per_case"]),
                warm.get("connection_warmup_per_case", warm["warmup_per_case"]))]
    for placement in warm["placements"]:
        rows = []
        for r in (r for r in warm["rows"] if r["placement"] == placement["name"]):
            p, f = r["pyrust"], r["floor"]
            rows.append([r["program"], r["mode"], _us(p["mean"]), _us(p["p50"]), _us(p["p90"]),
                         _us(p["p99"]), _us(p["p99.9"]), _us(p["max"]), "%.1f%%" % (p["cv"] * 100),
                         _us(p["server_cpu_per_request"]), _us(f["mean"]), _us(f["p50"]),
                         _us(f["p99"]), "%.1f%%" % (f["cv"] * 100),
                         _us(f["server_cpu_per_request"]),
                         "%.2fx" % r["ratio_p50"], _checked(p, f)])
        bare = placement.get("raw")
        bare = ("Bare round trip here (one byte to a forked echo process over a socketpair): "
                "p50 %.1f µs, mean %.1f µs.\n\n" % (bare["p50"], bare["mean"]) if bare else "")
        parts.append("### %s (%s)\n\n%s" % (placement["name"], placement["describe"], bare) + table(
            ["program", "connection", "mean", "p50", "p90", "p99", "p99.9", "max", "CV",
             "srv CPU", "floor mean", "floor p50", "floor p99", "floor CV", "floor srv CPU",
             "x floor",
             "replies verified"], rows))
    return "\n\n".join(parts)


def throughput_section(t: dict) -> str:
    configs = t["configurations"]
    floors = {(c["placement"], r["concurrency"]): r["rps"] for c in configs
              if c["server"] != "pyrust" for r in c["rows"]}
    rows = []
    for config in configs:
        for r in config["rows"]:
            floor = floors.get((config["placement"], r["concurrency"]))
            rows.append([config["name"], r["concurrency"], "%.0f" % r["rps"],
                         "%.0f-%.0f" % (r["rps_min"], r["rps_max"]),
                         "%.0f%%" % (r["server_cpu"] * 100), "%.0f%%" % (r["client_cpu"] * 100),
                         "%.0f" % ((r["server_cpu"] + r["client_cpu"]) / r["rps"] * 1e6)
                         if r["rps"] else "-",
                         "%.0f" % (r["parent_cpu"] / r["rps"] * 1e6) if r["rps"] else "-",
                         "%.0f (%.0f)" % (r["faults"] / r["rps"], r["parent_faults"] / r["rps"])
                         if r["rps"] else "-",
                         "%.2f" % r["forks_per_connection"] if "forks" in r else "-",
                         "%.2fx" % (r["rps"] / floor) if floor and config["server"] == "pyrust"
                         else "-"])
    wrong = sum(r["wrong"] for c in configs for r in c["rows"])
    total = sum(r["requests"] for c in configs for r in c["rows"])
    return ("## New connections: the sustained rate, a fresh process per connection "
            "(`%s`, connections/s)\n\n"
            "Closed-loop clients, each looping connect, send, receive, close; the rate is "
            "the median of %d repeats of %g s, each with fresh servers (range: "
            "slowest-fastest). pyrust keeps its spares (default %d) refilled as they go: "
            "the template forks a replacement as soon as a spare takes a connection. The "
            "forking floor forks a child per connection after accept(). Unpinned, or the "
            "server's tree and the clients pinned as in the warm path. CPU columns are "
            "shares of one CPU; CPU µs/conn is server and client CPU time per connection, "
            "parent µs/conn the share of it spent in the process that forks (pyrust's "
            "template, the floor's parent); faults/conn = minor page faults of the server's "
            "processes per connection (copy-on-write copies, and the code pages a fresh "
            "process maps again), in brackets those of the parent; forks/conn = spares the "
            "template forked per connection made (from its status; 1.00: every connection "
            "had a fresh process); x floor compares with the forking floor in the same "
            "placement. %d replies checked, %d wrong.\n\n"
            % (t["program"], t["repeats"], t["duration"], t.get("default_spares", 0),
               total, wrong)
            + table(["configuration", "clients", "conn/s", "range", "srv CPU", "client CPU",
                     "CPU µs/conn", "parent µs/conn", "faults/conn", "forks/conn", "x floor"],
                    rows, align="l" + "r" * 10)
            + _costs_table(configs))


def _costs_table(configs: list) -> str:
    """Return the table of what one connection cost pyrust, from its status."""
    rows = []
    for config in (c for c in configs if c["server"] == "pyrust"):
        for r in (r for r in config["rows"] if "worker_cpu_us" in r):
            rows.append([config["name"], r["concurrency"],
                         "%.0f" % r["template_cpu_us"], "%.0f" % r["template_faults"],
                         "%.0f" % r["start_cpu_us"], "%.0f" % r["start_faults"],
                         "%.0f" % (r["worker_cpu_us"] - r["start_cpu_us"]),
                         "%.0f" % (r["worker_faults"] - r["start_faults"]),
                         "%.0f" % (r["template_cpu_us"] + r["worker_cpu_us"]),
                         "%.0f" % (r["template_faults"] + r["worker_faults"])])
    if not rows:
        return ""
    return ("\n\n### What one connection costs pyrust, by process and phase\n\n"
            "From pyrust's status (`costs`, read before and after each point): the "
            "template's CPU time (µs) and minor page faults per fork (the fork, and the "
            "pages its loop writes again after it), and per worker reaped, from its own "
            "resource usage: its start-up (fork to accept(): CPython's at-fork handlers, "
            "the worker's set-up, its warm-up run) and the rest (the connection, and its "
            "exit, from wait4). Medians over the repeats.\n\n"
            + table(["configuration", "clients", "template CPU", "template faults",
                     "start CPU", "start faults", "serve+exit CPU", "serve+exit faults",
                     "total CPU", "total faults"], rows, align="l" + "r" * 9))


def cold_section(c: dict) -> str:
    head = "## Cold start: first request after socket activation (ms, connect to reply)\n\n"
    if "skipped" in c:
        return head + "Skipped: %s." % c["skipped"]
    rows = [[name, c[name]["runs"], "%.1f" % c[name]["min"], "%.1f" % c[name]["median"],
             "%.1f" % c[name]["max"], "%d/%d" % (c[name]["verified"], c[name]["runs"])]
            for name in ("no preload", "preload numpy") if name in c]
    text = head + ("Server: `%s` from the %s install, default pool, activated by "
                   "systemd-socket-activate.\n\n" % (c["server"], c["install"]))
    text += table(["case", "runs", "min", "median", "max", "replies verified"], rows,
                  align="lrrrrr")
    return text + ("\n\nnumpy: %s" % c["numpy"] if "numpy" in c else "")


def alternative_section(a: dict) -> str:
    head = "## The user's alternative: a new process per call (hyperfine, ms)\n\n"
    if "skipped" in a:
        return head + "Skipped: %s." % a["skipped"]
    by = {r["name"]: r for r in a["results"]}
    base = by['python -c "print(2+3)"']["mean"]
    rows = [[r["name"], "%.2f ± %.2f" % (r["mean"], r["stddev"]), "%.2f" % r["median"],
             "%.2f" % r["min"], "%.2f" % r["max"], "%.2fx" % (r["mean"] / base)]
            for r in a["results"]]
    text = head + ("%d runs each after 3 warm-ups; every command's output was checked first. "
                   "`python` is the non-editable install's venv interpreter; `base python` is "
                   "the interpreter that venv was made from.\n\n" % a["runs"])
    text += table(["command", "mean ± σ", "median", "min", "max", "x python -c"], rows,
                  align="lrrrrr")
    return text + ("\n\nnumpy: %s" % a["numpy"] if "numpy" in a else "")


def _memory_rows(case: dict, phases: list) -> list:
    rows = []
    spares = len(case["idle"]["spares"])
    for name, key, label in (("template", "template", "template"),
                             ("spare", "spare_mean", "fresh spare (mean of %d)" % spares),
                             ("session", "session", "session worker")):
        for kind in ("rss", "uss", "pss"):
            rows.append([label, kind.upper()]
                        + ["%.1f" % case[p][key][kind] for p in phases]
                        + ["%+.2f" % case["growth"][name][kind]])
    return rows


def memory_section(m: dict) -> str:
    phases = ["idle", "warm", "after"]
    names = ["idle", "after %d conn + %d req" % (m["warm_connections"],
                                                 m["warm_session_requests"]),
             "after %d conn + %d req" % (m["connections"], m["session_requests"])]
    parts = ["## Memory and forks: the template and its spares (MiB)\n\n"
             "pyrust with %d spares; per case %d new connections (each a fresh process, "
             "one program of the table each) and %d requests on one session (a persistent "
             "connection), %s replies verified. The template is the supervisor, which has "
             "imported the preloads and forks every spare; each snapshot reads the spares "
             "that wait in accept() at that moment, so the spares of the last two columns "
             "were forked after the load before them. RSS counts shared pages, USS only the "
             "process's own, PSS shares the shared ones out. Growth = last column minus "
             "the one before: a leak would show in the template or in late spares."
             % (m["spares"], m["connections"], m["session_requests"], _checked(m))]
    for case in m["cases"]:
        parts.append("### %s\n\n" % case["name"] + table(
            ["process", "measure"] + names + ["growth"], _memory_rows(case, phases),
            align="ll" + "r" * (len(phases) + 1)))
    rows = []
    for case in m["cases"]:
        f, t, s = case["forks"], case["after"]["template"], case["after"]["spare_mean"]
        rows.append([case["name"], f["total"], f["count"],
                     "%.3f" % f["p50_ms"] if f["p50_ms"] is not None else "-",
                     "%.3f" % f["p99_ms"] if f["p99_ms"] is not None else "-",
                     "%.0f" % case["template_cpu_per_connection"],
                     "%.1f" % t["rss"], "%.1f" % t["uss"], "%.1f" % t["pss"],
                     "%.1f" % s["rss"], "%.1f" % s["uss"], "%.1f" % s["pss"]])
    parts.append("### What a fork costs the template, and what a spare weighs\n\n"
                 "fork p50/p99: the parent's side of os.fork() in the template (ms, its "
                 "status, over the last `timed` forks after the load); template CPU/conn: the "
                 "template's CPU time per new connection (µs, schedstat: the fork, the "
                 "hand-over, the reaping). Memory after the load (MiB).\n\n"
                 + table(["case", "forks", "timed", "fork p50", "fork p99", "template CPU/conn",
                          "template RSS", "USS", "PSS", "spare RSS", "USS", "PSS"], rows,
                         align="l" + "r" * 11))
    if "numpy" in m:
        parts.append("numpy: %s" % m["numpy"])
    return "\n\n".join(parts)


def hotpath_section(h: dict) -> str:
    rows = [[r["program"], r["mode"], _us(r["pyrust"]), _us(r["floor"]),
             _us(r["pyrust"] - r["floor"])] for r in h["handlers"]]
    profile = [[r["function"], "%.0f" % r["calls"] if r["calls"] >= 1 else "%.2f" % r["calls"],
                "%.2f" % r["own"], "%.2f" % r["cumulative"]] for r in h["profile"]]
    return ("## Hot path: pyrust's and the floor's code in-process, no scheduler (µs)\n\n"
            "persistent: one request on an open connection (a session's next request); "
            "per-connection: what a worker does with the one connection it serves, with an "
            "empty compile cache as in a fresh process (pyrust: take the slot, hand the "
            "supervisor a copy, check the peer, serve; the floor: serve), accept(), the "
            "process's birth and exit excluded.\n\n"
            + table(["program", "path", "pyrust", "floor", "difference"], rows)
            + "\n\ncProfile of pyrust's per-request path for `2+3` (%d requests; cProfile "
              "inflates small Python functions, read the shares):\n\n" % h["requests"]
            + table(["function", "calls/req", "own µs/req", "cumulative µs/req"], profile,
                    align="lrrr"))


def _ms(value: float) -> str:
    return "%.1f" % value


def _runs_checked(case: dict, extra_ok: bool = True) -> str:
    total = case["runs"] + (1 if "first_ms" in case else 0)
    right = case["verified"] + (1 if "first_ms" in case and not case["first_problem"] else 0)
    return "%d/%d" % (right, total) + ("" if right == total and extra_ok else " WRONG")


def _cold_rows(e: dict) -> list:
    rows = []
    for c in e["cold"]:
        starts = sorted(c["template_start_ms"])
        start = "%.0f" % starts[len(starts) // 2] if starts else "-"
        rows.append([c["placement"], c["case"], c["runs"], _ms(c["first_ms"]), _ms(c["median"]),
                     _ms(c["p90"]), _ms(c["min"]), _ms(c["max"]), start, _runs_checked(c)])
    return rows


def _warm_rows(e: dict) -> list:
    rows = []
    for placement in [p["name"] for p in e["placements"]]:
        cases = [w for w in e["warm"] if w["placement"] == placement]
        python = next(w for w in cases if w["command"].endswith('-c "print(2+3)"'))
        for w in cases:
            rows.append([placement, w["command"], w["runs"], _ms(w["median"]), _ms(w["p90"]),
                         _ms(w["min"]), _ms(w["max"]),
                         "%.2fx" % (w["median"] / python["median"]), _runs_checked(w)])
    return rows


def _path_rows(e: dict) -> list:
    return [[r["placement"], r["mode"], r["environment"], r["socket"], _us(r["mean"]),
             _us(r["p50"]), _us(r["p90"]), _us(r["p99"]), _us(r["max"]),
             "all %d" % r["verified"] if not r["wrong"] else "%d WRONG" % r["wrong"]]
            for r in e["request_path"]]


def environments_section(e: dict) -> str:
    label = e["label"]
    return "\n\n".join([
        "## Environments: a new environment's first run, its later runs, its socket\n\n"
        "A standalone server per placement (its tree pinned with taskset, the bench and the "
        "processes it starts pinned as in the warm path), its default environment `%s`; "
        "`%s` is a venv the bench made from Python %s (`%s`). Processes are timed from "
        "spawn to exit with their output read, and each must print `5`. No user "
        "configuration; %d environments per server, `max_templates = %d`%s."
        % (e["default_python"], label, e["version"], e["interpreter"],
           e["environments_per_server"], e["max_templates"],
           ", so none is ended to make room" if e["max_templates"] >= e["environments_per_server"]
           else ": the least recently used are ended to make room, during the cold runs"),
        "### Cold template: the first run of a new environment (ms, whole process)\n\n"
        "`pyrust --python %s -c \"2+3\"` when its environment has no template: the client, "
        "its failed connection to the environment's socket, op `e` on the main socket, the "
        "template's start (interpreter, pyrust's server code, the preloads, its spares), "
        "then the run on the new socket. Every run is a new environment "
        "(`PYTHONHASHSEED=<n>`, which keys a template of its own); with preload, run in a "
        "project whose `[tool.pyrust]` preloads %s. `first` is the case's first run, "
        "apart from the statistics over the %d after it; `template start` is the median of "
        "what the service's log says each template took from its spawn to serving."
        % (label, ", ".join("`%s`" % m for m in e["preload"]), e["runs"])
        + "\n\n" + table(["placement", "case", "runs", "first", "median", "p90", "min", "max",
                           "template start", "output verified"], _cold_rows(e)),
        "### Warm runs: the same commands once the template serves (ms, whole process)\n\n"
        "%d runs of each, interleaved, after 2 untimed (the first of which starts a "
        "template not up yet). In the project, the client finds and reads its "
        "pyproject.toml, whose `[tool.pyrust]` table names the environment's preloads. "
        "x python = median / the venv's `python -c` median." % e["runs"]
        + "\n\n" + table(["placement", "command", "runs", "median", "p90", "min", "max",
                           "x python", "output verified"], _warm_rows(e)),
        "### Request path: a run sent straight to each socket (µs per round trip)\n\n"
        "No process spawned (bench/client.py): an extended run of `2+3` with the "
        "environment's fields and captured output, to the venv's template on its own "
        "socket and to the default environment on the main socket, beside v1 `2+3` on the "
        "main socket. Persistent: %d timed requests on one connection after %d; "
        "per-connection: %d connections after %d, each a fresh process of that template."
        % (e["requests"], e["warmup"], e["connections"], max(1, e["connections"] // 10))
        + "\n\n" + table(["placement", "connection", "environment", "socket", "mean", "p50",
                           "p90", "p99", "max", "replies verified"], _path_rows(e),
                          align="llll" + "r" * 5 + "l")] + _wrong_outputs(e))


def _wrong_outputs(e: dict) -> list:
    """Return a paragraph quoting the first wrong outputs, if any."""
    wrong = [w for case in e["cold"] + e["warm"] for w in case["wrong_examples"]]
    wrong += [c["first_problem"] for c in e["cold"] if c["first_problem"]]
    wrong += [w for r in e["request_path"] for w in r["wrong_examples"]]
    return ["WRONG outputs (first %d):\n\n" % len(wrong[:5])
            + "\n".join("    %s" % w for w in wrong[:5])] if wrong else []


def _startup_rows(rows: list, by: dict) -> list:
    python, floor = by.get('python -c "print(2+3)"'), by.get("/bin/true")
    return [[r["command"], r["runs"], _ms(r["median"]) if r["median"] >= 10 else
             "%.2f" % r["median"], "%.2f ± %.2f" % (r["mean"], r["stddev"]), "%.2f" % r["min"],
             "%.2f" % r["max"], "%.2f" % r["cpu_median"],
             "%.2fx" % (r["median"] / python["median"]) if python else "-",
             "%.1fx" % (r["median"] / floor["median"]) if floor else "-",
             "%d/%d" % (r["verified"], r["runs"]) + ("" if r["verified"] == r["runs"]
                                                     else " WRONG")] for r in rows]


_STARTUP_HEADERS = ["command", "runs", "median", "mean ± σ", "min", "max", "own CPU",
                    "x python -c", "x /bin/true", "output verified"]


def _startup_placement(p: dict) -> str:
    where = ("everything on CPU %d" % p["client_cpus"][0] if p["client_cpus"] == p["server_cpus"]
             else "commands on CPU %d, the server on CPU %d"
             % (p["client_cpus"][0], p["server_cpus"][0]))
    by = {r["command"]: r for r in p["rows"]}
    text = "### %s (%s)\n\n" % (p["placement"][:1].upper() + p["placement"][1:], where)
    text += table(_STARTUP_HEADERS, _startup_rows(p["rows"], by), align="l" + "r" * 8 + "l")
    if "numpy_rows" in p:
        pyrust_row, python_row = p["numpy_rows"]
        text += ("\n\nWith numpy preloaded (%s): %.1fx faster than python, median over "
                 "median.\n\n" % (p["placement"], python_row["median"] / pyrust_row["median"]))
        text += table(_STARTUP_HEADERS[:7] + ["output verified"],
                      [r[:7] + r[9:] for r in _startup_rows(p["numpy_rows"], {})],
                      align="l" + "r" * 6 + "l")
    return text


def startup_section(s: dict) -> str:
    head = "## Start-up: one whole `pyrust` process against `python` (ms)\n\n"
    if "skipped" in s:
        return head + "Skipped: %s." % s["skipped"]
    text = head + (
        "The non-editable install of this checkout with the native client built into it as "
        "install.sh builds it (`cc -O2`) and a standalone server of that install, in both "
        "placements: every process (the server's tree, the bench, the commands) pinned to "
        "one CPU, so that the server's whole work for a run (the worker, its exit, the "
        "template forking the next spare) adds to the command's time; then the server on "
        "the other CPU. Hyperfine's way: %d untimed runs of each command, then %d timed "
        "runs, interleaved; each a whole process from spawn to exit with its output read and "
        "checked. `own CPU` is the command's own user + system time (median, from its "
        "rusage): for the clients, what the client process itself costs; the rest of their "
        "time is the service's. `python` is the install's venv interpreter (`%s`). No "
        "configuration file for the clients, as after install.sh; with numpy, the clients "
        "read the server's (`preload = [\"numpy\"]`, which the Python client reads with its "
        "TOML reader and config checks). x python -c and x /bin/true: median over that "
        "command's median.\n\n" % (s["warm_up"], s["runs"], s["python"]))
    if s.get("native_skipped"):
        text += "Native client: %s.\n\n" % s["native_skipped"]
    text += "\n\n".join(_startup_placement(p) for p in s["placements"])
    if "numpy_skipped" in s:
        text += "\n\nWith numpy preloaded: skipped, %s." % s["numpy_skipped"]
    return text


def targets_section(rows: list) -> str:
    if not rows:
        return "## Targets\n\nNo target concerns the sections that ran."
    return "## Targets\n\n" + table(["target", "measured", "verdict", "note"],
                                    [[r["target"], r["measured"], r["verdict"], r["note"]]
                                     for r in rows], align="llll")


#: Each part of the report: its key in the results, and what renders it (a section's
#: dict, or the targets' list of rows).
SECTIONS: tuple[tuple[str, Callable[[Any], str]], ...] = (
    ("machine", machine_section), ("warm", warm_section),
    ("throughput", throughput_section), ("cold_start", cold_section),
    ("alternative", alternative_section), ("memory", memory_section),
    ("hot_path", hotpath_section), ("environments", environments_section),
    ("startup", startup_section), ("targets", targets_section))


def render(results: dict) -> str:
    """Return the whole report for ``results``; a failed section shows why."""
    parts = []
    for key, render_one in SECTIONS:
        section = results.get(key)
        if isinstance(section, dict) and "failed" in section:
            parts.append("## %s\n\nThis section FAILED: %s" % (key, section["failed"]))
        elif section is not None:
            parts.append(render_one(section))
    return "\n\n".join(parts) + "\n"
