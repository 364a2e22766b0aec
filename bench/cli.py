"""``python -m bench``: run every section, show progress, print the report, write the files.

Exit status: 0 when every section ran and every reply was verified correct;
1 when a section failed or a reply was wrong (missed targets are reported,
not failures); 2 for a wrong command line.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import TextIO

from bench import (
    alternative,
    coldstart,
    environments,
    hotpath,
    machine,
    memory,
    plot,
    report,
    servers,
    startup,
    targets,
    throughput,
    userinstall,
    warm,
)

SECTIONS = ("warm", "throughput", "cold", "alternative", "memory", "hotpath", "environments",
            "startup")
QUICK = dict(requests=100, warmup=10, connections=20, duration=0.2, repeats=1, cold_runs=2,
             hyperfine_runs=3, memory_requests=1000, memory_connections=20,
             hotpath_requests=500, env_runs=2, startup_runs=3)
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
DOCS = ("docs/benchmarks.json", "docs/benchmarks-cdf.png", "docs/benchmarks.md")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure pyrust's warm path against its floor, its peers and cold Python.")
    add = parser.add_argument
    add("--json", metavar="FILE", help="write every figure to FILE")
    add("--plot", metavar="FILE.png", help="draw warm-path latency CDFs (needs matplotlib)")
    add("--markdown", metavar="FILE", help="replace the part of FILE between %s and %s "
        "with the report" % (BEGIN, END))
    add("--docs", action="store_true", help="regenerate the documented run: the same as "
        "--json %s --plot %s --markdown %s" % DOCS)
    add("--only", metavar="LIST", default=",".join(SECTIONS),
        help="comma-separated sections to run (default: all of %s)" % ",".join(SECTIONS))
    add("--requests", type=int, default=10000, help="timed requests per warm-path case")
    add("--warmup", type=int, default=1000, help="untimed requests before each warm-path case")
    add("--connections", type=int, default=300,
        help="timed connections per per-connection warm-path case (each a fresh process)")
    add("--duration", type=float, default=0.7, help="seconds per new-connection rate point")
    add("--repeats", type=int, default=3,
        help="repeats of each new-connection rate point (fresh servers)")
    add("--cold-runs", type=int, default=10, help="activations per cold-start case")
    add("--hyperfine-runs", type=int, default=40, help="runs per hyperfine command")
    add("--memory-requests", type=int, default=100_000,
        help="requests on one session (a persistent connection) in the memory section")
    add("--memory-connections", type=int, default=1000,
        help="new connections (each a fresh process) in the memory section")
    add("--hotpath-requests", type=int, default=20000, help="requests for the in-process profile")
    add("--env-runs", type=int, default=10,
        help="processes per environments case: new environments' first runs, warm runs "
             "(its request path uses --requests, --warmup and --connections)")
    add("--startup-runs", type=int, default=60,
        help="timed processes per start-up command (native client, Python client, python)")
    add("--quick", action="store_true",
        help="tiny counts: checks that the bench works, measures nothing")
    add("--keep", action="store_true", help="keep the work directory (servers' logs)")
    return parser


class Progress:
    """Progress lines on stderr: rewritten in place on a terminal, one per step otherwise."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.total = self.step = 0

    def expect(self, total: int) -> None:
        """Number the next ``total`` steps."""
        self.total, self.step = total, 0

    def __call__(self, message: str) -> None:
        if self.step < self.total:
            self.step += 1
            message = "[%d/%d] %s" % (self.step, self.total, message)
        line = "[%6.1f s] %s" % (time.monotonic() - self.started, message)
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r\x1b[K" + line[:width])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """Write ``message`` on a line of its own, kept on a terminal too."""
        self.stream.write(("\r\x1b[K" if self.tty else "") + message + "\n")
        self.stream.flush()


def run_sections(args: argparse.Namespace, workdir: str,
                 progress: Progress) -> tuple[dict, dict]:
    """Run the chosen sections; return ``(results, warm samples)``."""
    only = set(args.only.split(","))
    results: dict = {}
    samples: dict = {}
    install: userinstall.UserInstall | None = None

    def section(key: str, name: str, body: Callable[[], dict]) -> None:
        try:
            results[key] = body()
        except Exception as exc:  # one broken section must not hide the others' figures
            progress.note("section %s FAILED: %s" % (name, exc))
            traceback.print_exc()
            results[key] = {"skipped": "failed: %s" % exc, "failed": "%s: %s" % (
                type(exc).__name__, exc)}
    if "warm" in only:
        progress.expect(warm.case_count())
        section("warm", "warm", lambda: warm.run(workdir, args.requests, args.warmup,
                                                 args.connections, progress))
        samples = results["warm"].pop("samples", {})
    progress.expect(0)
    if "throughput" in only:
        section("throughput", "throughput",
                lambda: throughput.run(workdir, args.duration, args.repeats, progress))
    if only & {"cold", "alternative", "startup"}:
        progress("building a non-editable install of this checkout (offline)")
        try:
            install = userinstall.build(workdir)
        except userinstall.Unavailable as exc:
            progress.note("no non-editable install: %s" % exc)
    if "cold" in only:
        section("cold_start", "cold",
                lambda: coldstart.run(workdir, args.cold_runs, progress, install))
    if "alternative" in only:
        section("alternative", "alternative",
                lambda: alternative.run(workdir, install, args.hyperfine_runs, progress))
    if "memory" in only:
        section("memory", "memory", lambda: memory.run(
            workdir, args.memory_connections, args.memory_requests, progress))
    if "hotpath" in only:
        section("hot_path", "hotpath", lambda: hotpath.run(args.hotpath_requests, progress))
    if "environments" in only:
        section("environments", "environments", lambda: environments.run(
            workdir, args.env_runs, args.requests, args.warmup, args.connections, progress))
    if "startup" in only:
        section("startup", "startup",
                lambda: startup.run(workdir, install, args.startup_runs, progress))
    return results, samples


def all_verified(results: dict) -> bool:
    """Return whether no section failed and no reply was wrong."""
    if any(isinstance(s, dict) and "failed" in s for s in results.values()):
        return False
    warm_ok = all(r[s]["wrong"] == 0 for r in results.get("warm", {}).get("rows", [])
                  for s in ("pyrust", "floor"))
    configs = results.get("throughput", {}).get("configurations", [])
    throughput_ok = all(r["wrong"] == 0 for c in configs for r in c["rows"])
    memory_ok = results.get("memory", {}).get("wrong", 0) == 0
    cold = results.get("cold_start", {})
    cold_ok = all(cold[k]["verified"] == cold[k]["runs"] for k in ("no preload", "preload numpy")
                  if k in cold)
    environments_ok = environments.verified(results.get("environments", {}))
    startup_ok = startup.verified(results.get("startup", {}))
    return warm_ok and throughput_ok and memory_ok and cold_ok and environments_ok and startup_ok


def write_markdown(path: str, text: str) -> None:
    """Put ``text`` between the BEGIN and END markers of ``path`` (appended if they are absent)."""
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    block = "%s\n\n%s\n%s" % (BEGIN, text.rstrip("\n"), END)
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + block + "\n"
    with open(path, "w") as f:
        f.write(new)


def main(argv: list[str] | None = None) -> int:
    """Run the bench with command-line ``argv``; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.docs:
        args.json, args.plot, args.markdown = (os.path.join(servers.ROOT, p) for p in DOCS)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        build_parser().error("unknown sections: %s" % ", ".join(sorted(unknown)))
    progress = Progress()
    if args.plot and not plot.available():
        progress.note("--plot: matplotlib is not installed "
                      "(.venv/bin/pip install -e '.[bench]'); no plot")
        args.plot = None
    facts = machine.describe()
    facts["command"] = shlex.join([machine.interpreter(), "-m", "bench", *argv])
    other = machine.OtherLoad()
    workdir = tempfile.mkdtemp(prefix="pyrust-bench-")
    try:
        results, samples = run_sections(args, workdir, progress)
    finally:
        if args.keep:
            progress.note("work directory kept: %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    facts["load_after"] = machine.load_average()
    facts["other_load"] = other.describe()
    facts["other_load_figures"] = other.figures()
    results = {"machine": facts, **results, "targets": targets.judge(results)}
    progress.note("done in %.0f s" % (time.monotonic() - progress.started))
    text = report.render(results)
    sys.stdout.write(text)
    return _write_outputs(args, results, samples, text, all_verified(results), progress)


def _write_outputs(args: argparse.Namespace, results: dict, samples: dict, text: str,
                   verified: bool, progress: Progress) -> int:
    """Write the files asked for; return the exit status."""
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, sort_keys=False)
    if args.markdown:
        write_markdown(args.markdown, "".join("#" + line if line.startswith("#") else line
                                              for line in text.splitlines(True)))
    if args.plot and samples:
        plot.draw(samples, args.plot, warm.PLOTTED)
    if not verified:
        progress.note("FAILED: a section failed or a reply was wrong (see above)")
        return 1
    return 0
