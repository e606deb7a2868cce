"""Two metrics of an experiment's runs (`raysft compare --pareto X,Y`): the runs no other run beats on both, and a plot
marking them."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from raysft.errors import RaysftError
from raysft.results.ranking import RunRow, experiment_runs, lower_is_better

# `--pareto X,Y`: a short name per axis (or any logged metric); the score is higher-better, the costs lower-better.
PARETO_AXES = {
    "score": "objective", "objective": "objective",
    "k": "trained_entries", "entries": "trained_entries",
    "bytes": "delta_bytes", "delta_bytes": "delta_bytes",
    "time": "time/total_s", "memory": "peak_memory_bytes", "mem": "peak_memory_bytes",
}
PARETO_LABELS = {
    "objective": "dev score (targets' average)", "trained_entries": "K (trained entries)",
    "delta_bytes": "delta size (bytes)", "time/total_s": "wall time (s)", "peak_memory_bytes": "peak memory (bytes)",
}


def pareto_metric(axis: str, task_metric: str) -> str:
    """An axis name as given to --pareto → the metric it reads (the task's metric name, f1 or acc, is the score)."""
    name = axis.strip()
    if name in (task_metric, "f1", "acc"):
        return "objective" if name == task_metric else f"{name}/dev/avg"
    return PARETO_AXES.get(name, name)


def pareto_front(points: list[tuple[float, float]], higher: tuple[bool, bool]) -> list[int]:
    """The indices of the points no other point dominates (at least as good on both axes, better on one)."""
    def key(p):
        return tuple(v if up else -v for v, up in zip(p, higher))

    keyed = [key(p) for p in points]
    front = []
    for i, a in enumerate(keyed):
        if not any(b[0] >= a[0] and b[1] >= a[1] and b != a for b in keyed):
            front.append(i)
    return front


@dataclass
class Pareto:
    x: str
    y: str
    rows: list[RunRow]
    front: list[RunRow]
    plot: Path


def pareto(tracking_uri: str | None, experiment: str, axes: str, plot: Path | None = None) -> Pareto:
    """The experiment's runs on two metrics (``axes`` = "X,Y"), their Pareto front, and a plot marking it."""
    names = [a for a in axes.split(",")]
    if len(names) != 2 or not all(n.strip() for n in names):
        raise RaysftError(f"--pareto {axes!r}: give two axes separated by a comma, e.g. --pareto f1,delta_bytes "
                          f"(any two of score, k, bytes, time, memory, or metric names)")
    _, _, exp, rows = experiment_runs(tracking_uri, experiment)
    task_metric = next((r.params["metric"] for r in rows if r.params.get("metric")), "acc")
    x, y = (pareto_metric(n, task_metric) for n in names)
    if x == y:
        raise RaysftError(f"--pareto {axes}: both axes read '{x}': give two different ones")

    def finite(r, m):
        v = r.metrics.get(m)
        return isinstance(v, float) and math.isfinite(v)

    have = [r for r in rows if finite(r, x) and finite(r, y)]
    if not have:
        missing = [m for m in (x, y) if not any(finite(r, m) for r in rows)]
        names_known = sorted({k for r in rows for k in r.metrics if not k.startswith("loss/")})
        raise RaysftError(f"no run in experiment '{exp.name}' has the metric '{(missing or [x])[0]}': known metrics are "
                          f"{', '.join(names_known[:15]) or 'none'}")
    higher = (not lower_is_better(x), not lower_is_better(y))
    front_idx = pareto_front([(r.metrics[x], r.metrics[y]) for r in have], higher)
    front = sorted((have[i] for i in front_idx), key=lambda r: r.metrics[x])
    plot = plot or Path("runs") / "compare" / f"{exp.name}-pareto-{_slug(x)}-{_slug(y)}.png"
    pareto_plot(have, set(front_idx), x, y, plot, f"{exp.name}: {len(front)} of {len(have)} runs on the Pareto front")
    return Pareto(x, y, have, front, plot)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


def pareto_plot(rows: list[RunRow], front: set[int], x: str, y: str, path: Path, title: str) -> Path:
    """Every run as a point coloured by method, the front's points ringed and joined by a step line, each front point
    labelled with its run name; a cost (lower is better) on the horizontal axis and a score on the vertical one when
    the pair is one of each; a log scale for an axis spanning more than 100x; written atomically (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not lower_is_better(x) and lower_is_better(y):
        x, y = y, x
    fig = Figure(figsize=(7.5, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    methods = sorted({r.method for r in rows})
    colours = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
    for i, m in enumerate(methods):
        pts = [(r.metrics[x], r.metrics[y]) for r in rows if r.method == m]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=28, color=colours[i % len(colours)], label=m, zorder=2)
    pts = sorted(((rows[i].metrics[x], rows[i].metrics[y], rows[i].name or rows[i].run_id[:8]) for i in front))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=110, facecolors="none", edgecolors="black", linewidths=1.4,
               label="Pareto front", zorder=3)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], color="black", linewidth=1, drawstyle="steps-post", zorder=1)
    for px, py, name in pts:
        ax.annotate(name, (px, py), textcoords="offset points", xytext=(5, 5), fontsize=7)
    for values, scale in (([r.metrics[x] for r in rows], ax.set_xscale), ([r.metrics[y] for r in rows], ax.set_yscale)):
        if min(values) > 0 and max(values) / min(values) > 100:
            scale("log")
    ax.set_xlabel(PARETO_LABELS.get(x, x) + (" ↓" if lower_is_better(x) else " ↑"))
    ax.set_ylabel(PARETO_LABELS.get(y, y) + (" ↓" if lower_is_better(y) else " ↑"))
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path
