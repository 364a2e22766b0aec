"""Latency CDFs of the warm path (matplotlib, from the ``bench`` extra)."""

from __future__ import annotations

import itertools

from bench.stats import cdf_points


def available() -> bool:
    """Return whether matplotlib can be imported."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def draw(samples: dict, path: str, program: str) -> None:
    """Draw a grid of panels, a row per placement and a column per connection
    mode, each with pyrust's CDF against the floor's, to ``path``.

    ``samples`` maps ``(placement, mode, server)`` to round-trip times in ns.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    placements = list(dict.fromkeys(placement for placement, _, _ in samples))
    modes = list(dict.fromkeys(mode for _, mode, _ in samples))
    fig, axes = plt.subplots(len(placements), len(modes), squeeze=False,
                             figsize=(5.2 * len(modes), 3.4 * len(placements)))
    for (row, placement), (column, mode) in itertools.product(enumerate(placements),
                                                              enumerate(modes)):
        ax = axes[row][column]
        # A connection per request is compared with the forking floor (bench/warm.py).
        floor = "floor" if mode == "persistent" else "forking floor"
        for server, style, label in (("pyrust", "-", "pyrust"), ("floor", "--", floor)):
            data = samples.get((placement, mode, server))
            if data:
                xs, ys = cdf_points(data)
                ax.plot(xs, ys, style, label=label)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: "%g" % x))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title("%s, %s" % (placement, mode), fontsize=10)
        ax.set_xlabel("round trip (µs, log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
        ax.set_ylabel("fraction of requests")
    fig.suptitle("Warm path latency CDF, %r" % program, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
