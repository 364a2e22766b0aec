"""The issue's targets, judged against one run's figures.

Each target gives a row: what was measured, the limit, whether it was met,
and by how much it was missed.  A section that was skipped gives "not run".
"""

from __future__ import annotations

HEADLINE = "2+3"
#: The warm path's p50 against its floor's, per mode: a persistent connection against
#: the floor's one process, a connection per request against the forking floor.
P50_RATIO_LIMITS = {"persistent": 1.25, "per-connection": 1.5}
P99_RATIO_LIMIT = 2.0
CV_LIMIT = 0.10
PREDECESSOR_MEAN_US = 190.0
SCALING_LIMIT = 1.7
COLD_START_LIMIT_MS = 150.0
HEAVY_IMPORT_LIMIT = 10.0


def _row(target: str, measured: str, met: bool | None, note: str = "") -> dict:
    verdict = "not run" if met is None else ("met" if met else "MISSED")
    return {"target": target, "measured": measured, "verdict": verdict, "note": note}


def _missed_by(value: float, limit: float, higher_is_better: bool = False) -> str:
    """Return "by N%" for a value on the wrong side of ``limit``, else ""."""
    if (value >= limit) if higher_is_better else (value <= limit):
        return ""
    return "by %.0f%%" % (abs(value / limit - 1) * 100)


def _ratio_rows(placement: str, cases: list) -> list:
    """Return the ratio rows of one placement, per mode: the headline program's p50
    (and, on a persistent connection, its p99), then the worst case's p50."""
    rows = []
    for mode, limit in P50_RATIO_LIMITS.items():
        in_mode = [r for r in cases if r["mode"] == mode]
        if not in_mode:
            continue
        for r in (r for r in in_mode if r["program"] == HEADLINE):
            ratio = r["ratio_p50"]
            rows.append(_row("warm p50 <= %.2fx %s (%s, %s, %s)"
                             % (limit, _floor_name(r), placement, mode, HEADLINE),
                             "%.2fx (%.1f vs %.1f us)" % (ratio, r["pyrust"]["p50"],
                                                          r["floor"]["p50"]),
                             ratio <= limit, _missed_by(ratio, limit)))
            if mode == "persistent":
                tail = r["pyrust"]["p99"] / r["floor"]["p99"]
                rows.append(_row("warm p99 <= %.0fx floor p99 (%s, %s, %s)"
                                 % (P99_RATIO_LIMIT, placement, mode, HEADLINE),
                                 "%.2fx (%.1f vs %.1f us)" % (tail, r["pyrust"]["p99"],
                                                              r["floor"]["p99"]),
                                 tail <= P99_RATIO_LIMIT, _missed_by(tail, P99_RATIO_LIMIT)))
        worst = max(in_mode, key=lambda r: r["ratio_p50"])
        rows.append(_row("warm p50 <= %.2fx %s (%s, %s, every program)"
                         % (limit, _floor_name(worst), placement, mode),
                         "worst %.2fx (%s)" % (worst["ratio_p50"], worst["program"]),
                         worst["ratio_p50"] <= limit, _missed_by(worst["ratio_p50"], limit)))
    return rows


def _floor_name(row: dict) -> str:
    return row.get("floor_server", "floor")


def _predecessor_row(placement: str, cases: list) -> list:
    """Return the seed's check: ``2+3`` on one persistent v1 connection, mean <= 190 us."""
    rows = []
    for r in (r for r in cases if r["program"] == HEADLINE and r["mode"] == "persistent"):
        mean = r["pyrust"]["mean"]
        rows.append(_row("%s on one persistent v1 connection: mean <= %.0f us (%s)"
                         % (HEADLINE, PREDECESSOR_MEAN_US, placement), "%.1f us" % mean,
                         mean <= PREDECESSOR_MEAN_US, _missed_by(mean, PREDECESSOR_MEAN_US)))
    return rows


def warm_targets(warm: dict) -> list:
    rows = []
    for placement in [p["name"] for p in warm["placements"]]:
        cases = [r for r in warm["rows"] if r["placement"] == placement]
        rows += _predecessor_row(placement, cases)
        rows += _ratio_rows(placement, cases)
        worst = max(cases, key=lambda r: r["pyrust"]["cv"])
        cv = worst["pyrust"]["cv"]
        rows.append(_row("CV of batch means < %d%% (%s, pinned)" % (CV_LIMIT * 100, placement),
                         "worst %.1f%% (%s, %s)" % (cv * 100, worst["program"], worst["mode"]),
                         cv < CV_LIMIT, _missed_by(cv, CV_LIMIT)))
    slowest = max(warm["rows"], key=lambda r: r["pyrust"]["mean"])
    mean, far = slowest["pyrust"]["mean"], PREDECESSOR_MEAN_US / 2
    rows.append(_row("warm mean far inside the predecessor's %.0f us (taken as <= %.0f us, "
                     "every case)" % (PREDECESSOR_MEAN_US, far),
                     "worst %.1f us (%s, %s, %s)" % (mean, slowest["placement"],
                                                     slowest["program"], slowest["mode"]),
                     mean <= far, _missed_by(mean, far)))
    return rows


def throughput_targets(throughput: dict) -> list:
    """Return the pool target: the default spares against one spare, unpinned, in
    new connections per second at 4 clients or more."""
    pool = throughput.get("default_spares", 1)
    target = "%d spares >= %.1fx 1 spare at >= 4 clients (new connections/s, unpinned)" % (
        pool, SCALING_LIMIT)
    by_name = {c["name"]: c for c in throughput["configurations"]}
    many, one = by_name.get("pyrust, unpinned"), by_name.get("pyrust, 1 spare, unpinned")
    if pool == 1 or many is None or one is None:
        return [_row(target, "one CPU: no pool to compare", None)]
    single = {r["concurrency"]: r["rps"] for r in one["rows"]}
    ratios = {r["concurrency"]: r["rps"] / single[r["concurrency"]]
              for r in many["rows"] if r["concurrency"] >= 4 and single.get(r["concurrency"])}
    if not ratios:
        return [_row(target, "no point with 4 clients or more", None)]
    worst = min(ratios, key=ratios.__getitem__)
    return [_row(target, "worst %.2fx (%d clients)" % (ratios[worst], worst),
                 ratios[worst] >= SCALING_LIMIT, _missed_by(ratios[worst], SCALING_LIMIT, True))]


def cold_targets(cold: dict) -> list:
    case = cold.get("no preload")
    if case is None:
        return [_row("first request after activation < %.0f ms" % COLD_START_LIMIT_MS,
                     cold.get("skipped", "not measured"), None)]
    return [_row("first request after activation < %.0f ms (no preload)" % COLD_START_LIMIT_MS,
                 "median %.1f ms, max %.1f ms" % (case["median"], case["max"]),
                 case["max"] < COLD_START_LIMIT_MS, _missed_by(case["max"], COLD_START_LIMIT_MS))]


def alternative_targets(alt: dict) -> list:
    if "results" not in alt:
        return [_row('pyrust -c "2+3" no slower than python -c', alt.get("skipped", ""), None)]
    by = {r["name"]: r for r in alt["results"]}
    pyrust, python = by['pyrust -c "2+3"'], by['python -c "print(2+3)"']
    ratio = pyrust["mean"] / python["mean"]
    rows = [_row('pyrust -c "2+3" no slower than python -c "print(2+3)" (same interpreter)',
                 "%.2fx (%.1f vs %.1f ms)" % (ratio, pyrust["mean"], python["mean"]),
                 ratio <= 1.0, _missed_by(ratio, 1.0))]
    if "pyrust -c numpy (preloaded)" in by:
        speedup = by["python -c numpy"]["mean"] / by["pyrust -c numpy (preloaded)"]["mean"]
        rows.append(_row("preloaded numpy import >= %.0fx faster than plain python"
                         % HEAVY_IMPORT_LIMIT, "%.1fx" % speedup,
                         speedup >= HEAVY_IMPORT_LIMIT,
                         _missed_by(speedup, HEAVY_IMPORT_LIMIT, True)))
    else:
        rows.append(_row("preloaded heavy import >= %.0fx faster" % HEAVY_IMPORT_LIMIT,
                         alt.get("numpy", "numpy not installed"), None))
    return rows


def environments_targets(env: dict) -> list:
    """Return the seed's check for the default environment while other environments'
    templates run beside it: v1 ``2+3`` on the main socket, one connection."""
    return [_row("%s v1 on the main socket, other environments' templates up: mean <= %.0f us "
                 "(%s)" % (HEADLINE, PREDECESSOR_MEAN_US, r["placement"]), "%.1f us" % r["mean"],
                 r["mean"] <= PREDECESSOR_MEAN_US, _missed_by(r["mean"], PREDECESSOR_MEAN_US))
            for r in env["request_path"]
            if r["environment"] == "default, v1" and r["mode"] == "persistent"]


def startup_targets(s: dict) -> list:
    """Return the native client's start-up targets in each placement: its median
    against ``python -c``'s and ``/bin/true``'s, and the numpy run against python's."""
    if "skipped" in s:
        return [_row("native pyrust -c start-up", s["skipped"], None)]
    rows = []
    for placement in s["placements"]:
        rows += _startup_placement_targets(s, placement)
    return rows


def _startup_placement_targets(s: dict, placement: dict) -> list:
    from bench import startup

    where = placement["placement"]
    native = startup.row(placement, startup.NATIVE)
    python, floor = startup.row(placement, startup.PYTHON), startup.row(placement, startup.TRUE)
    if native is None:
        return [_row("native pyrust -c <= %.1fx python -c (%s)"
                     % (startup.PYTHON_RATIO_LIMIT, where), s["native_skipped"], None)]
    assert python is not None and floor is not None  # startup.run times both in every placement
    ratio, floor_ratio = native["median"] / python["median"], native["median"] / floor["median"]
    rows = [_row("native pyrust -c \"2+3\" <= %.1fx python -c \"print(2+3)\" (median, %s)"
                 % (startup.PYTHON_RATIO_LIMIT, where),
                 "%.2fx (%.2f vs %.2f ms)" % (ratio, native["median"], python["median"]),
                 ratio <= startup.PYTHON_RATIO_LIMIT,
                 _missed_by(ratio, startup.PYTHON_RATIO_LIMIT)),
            _row("native pyrust -c \"2+3\" within %.0fx of /bin/true (median, %s)"
                 % (startup.TRUE_RATIO_LIMIT, where),
                 "%.2fx (%.2f vs %.2f ms)" % (floor_ratio, native["median"], floor["median"]),
                 floor_ratio <= startup.TRUE_RATIO_LIMIT,
                 _missed_by(floor_ratio, startup.TRUE_RATIO_LIMIT))]
    name = "numpy preloaded: native pyrust >= %.0fx faster than python (%s)" % (
        startup.NUMPY_SPEEDUP_LIMIT, where)
    if "numpy_rows" in placement and s.get("numpy_native"):
        pyrust_row, python_row = placement["numpy_rows"]
        speedup = python_row["median"] / pyrust_row["median"]
        rows.append(_row(name, "%.1fx (%.2f vs %.2f ms)" % (speedup, pyrust_row["median"],
                                                            python_row["median"]),
                         speedup >= startup.NUMPY_SPEEDUP_LIMIT,
                         _missed_by(speedup, startup.NUMPY_SPEEDUP_LIMIT, True)))
    else:
        rows.append(_row(name, s.get("numpy_skipped", "numpy not measured"), None))
    return rows


def judge(results: dict) -> list:
    """Return the target rows for every section present in ``results``."""
    rows = []
    for key, judge_section in (("warm", warm_targets), ("throughput", throughput_targets),
                               ("cold_start", cold_targets), ("alternative", alternative_targets),
                               ("environments", environments_targets),
                               ("startup", startup_targets)):
        section = results.get(key)
        if isinstance(section, dict) and "failed" in section:
            rows.append(_row("targets of section %s" % key, section["skipped"], None))
        elif section is not None:
            rows += judge_section(section)
    return rows
