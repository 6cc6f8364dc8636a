"""PNG plots of reports, sweeps and benchmarks (matplotlib, Agg backend: no display needed).

The plots take plain data (numbers, lists, names) and import no other remat module: ``Report``,
``ParetoResult`` and the benchmarks pass them what to draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

_UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo", "pgf"):
        try:
            matplotlib.use("Agg", force=True)
        except Exception:  # pragma: no cover - a backend already in use elsewhere
            pass
    import matplotlib.pyplot as plt

    return plt


def byte_unit(max_bytes: float) -> tuple[str, float]:
    """The largest binary unit in which ``max_bytes`` is at least 1 (MiB for 5e6)."""
    for name, scale in _UNITS:
        if max_bytes >= scale:
            return name, scale
    return "B", 1


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_timeline(
    path: str | Path,
    baseline: Sequence[int],
    plan: Sequence[int],
    fixed: Sequence[int],
    num_forward: int,
    *,
    baseline_peak: int,
    plan_peak: int,
    peak_slot: int = -1,
    cap: int | None = None,
    host: Sequence[int] | None = None,
    host_peak: int = 0,
    layer_starts: Sequence[int] = (),
    title: str = "",
) -> Path:
    """Live device bytes per slot (forward, then backward): the no-remat baseline, the plan, its
    fixed part (not decided) and the cap; ``host``: bytes held on the host per slot, if any;
    ``layer_starts``: slots where a repeated layer begins (thin dotted lines)."""
    plt = _pyplot()
    top = max([*baseline, *plan, cap or 0, 1])
    unit, scale = byte_unit(top)
    xs = range(len(baseline))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(xs, [b / scale for b in baseline], color="tab:gray", lw=1.2, label=f"no remat (peak {baseline_peak / scale:.1f} {unit})")
    ax.plot(xs, [b / scale for b in plan], color="tab:blue", lw=1.5, label=f"plan (peak {plan_peak / scale:.1f} {unit})")
    ax.fill_between(xs, [f / scale for f in fixed], color="tab:blue", alpha=0.12, lw=0, label="fixed (not decided)")
    if host is not None:
        ax.plot(xs, [h / scale for h in host], color="tab:green", lw=1.0, ls=":",
                label=f"offloaded, on host (peak {host_peak / scale:.1f} {unit})")
    if cap is not None:
        ax.axhline(cap / scale, color="tab:red", ls="--", lw=1.2, label=f"cap {cap / scale:.1f} {unit}")
    for i, t in enumerate(layer_starts):
        ax.axvline(t - 0.5, color="tab:purple", lw=0.6, ls=":", alpha=0.7, label="layer start" if i == 0 else None)
    nf = num_forward
    if 0 < nf < len(baseline):
        ax.axvline(nf - 0.5, color="black", lw=0.8, alpha=0.5)
        ymax = top / scale * 1.08
        ax.text(nf / 2, ymax, "forward", ha="center", va="top", fontsize=9)
        ax.text(nf + (len(baseline) - nf) / 2, ymax, "backward", ha="center", va="top", fontsize=9)
        ax.set_ylim(0, ymax * 1.04)
    if peak_slot >= 0:
        ax.plot([peak_slot], [plan_peak / scale], "o", color="tab:blue", ms=4)
    ax.set_xlabel("slot (ops in schedule order: forward, then backward)")
    ax.set_ylabel(f"live device memory ({unit})")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_pareto(points: Sequence[dict], baseline_peak_bytes: int, path: str | Path, title: str = "") -> Path:
    """Predicted peak vs predicted step-time overhead, one point per feasible cap of a sweep.

    ``points``: one dict per feasible cap, with ``label``, ``budget_bytes``,
    ``predicted_peak_bytes`` and ``overhead`` (a fraction of the no-remat step).
    """
    plt = _pyplot()
    top = max([baseline_peak_bytes, *(p["predicted_peak_bytes"] for p in points), 1])
    unit, scale = byte_unit(top)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([0.0], [baseline_peak_bytes / scale], "s", color="tab:gray", label="no remat")
    if points:
        order = sorted(points, key=lambda p: p["overhead"])
        ax.plot([100 * p["overhead"] for p in order], [p["predicted_peak_bytes"] / scale for p in order],
                "o-", color="tab:blue", label="remat plan at cap")
        labels: dict[tuple, list[str]] = {}  # caps that reach the same plan share one label
        for p in points:
            labels.setdefault((p["overhead"], p["predicted_peak_bytes"]), []).append(p["label"])
            ax.plot([100 * p["overhead"]], [p["budget_bytes"] / scale], "_", color="tab:red", ms=10)
        for (ov, peak), names in labels.items():
            ax.annotate(", ".join(names), (100 * ov, peak / scale), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax.plot([], [], "_", color="tab:red", label="cap")
    ax.set_xlabel("predicted step-time overhead (% of the no-remat step)")
    ax.set_ylabel(f"predicted peak ({unit})")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=-1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_benchmark(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Measured step peak vs measured step time, one labelled point per configuration."""
    plt = _pyplot()
    good = [r for r in rows if r.get("measured_peak_bytes") is not None and r.get("step_time_s") is not None]
    top = max([r["measured_peak_bytes"] for r in good] + [1])
    unit, scale = byte_unit(top)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for r in good:
        name = r["config"]
        color = "tab:blue" if name.startswith("remat") else "tab:orange" if name.startswith("amb") else "tab:gray"
        x, y = 1e3 * r["step_time_s"], r["measured_peak_bytes"] / scale
        ax.plot([x], [y], "o", color=color)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 3), fontsize=8)
    xs = [r["step_time_s"] for r in good if r["step_time_s"] > 0]
    if xs and max(xs) / min(xs) > 20:  # one slow outlier would squash the others
        ax.set_xscale("log")
    ax.set_xlabel("step time (ms, median of unprofiled steps)")
    ax.set_ylabel(f"measured step peak ({unit})")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_peak_vs_size(path: str | Path, sizes: Sequence[int], plan: Sequence[int], baseline: Sequence[int], *,
                      symbol: str, cap: int | None = None, buckets: Sequence[tuple[int, int]] = (),
                      title: str = "") -> Path:
    """The predicted peak of a plan and of storing everything (no remat) at each size of a
    dynamic size ``symbol``, with the cap as a line; ``buckets``: the sizes each plan of a split
    range covers (shaded in turn)."""
    plt = _pyplot()
    unit, scale = byte_unit(max([*plan, *baseline, cap or 0, 1]))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.plot(sizes, [b / scale for b in baseline], color="tab:gray", lw=1.2, label="no remat (store everything)")
    ax.plot(sizes, [p / scale for p in plan], color="tab:blue", lw=1.5, label="plan")
    if cap is not None:
        ax.axhline(cap / scale, color="tab:red", ls="--", lw=1.2, label=f"cap {cap / scale:.1f} {unit}")
    for i, (lo, hi) in enumerate(buckets):
        ax.axvspan(lo, hi, color="tab:green" if i % 2 == 0 else "tab:olive", alpha=0.08, lw=0,
                   label="buckets" if i == 0 else None)
    ax.set_xlabel(f"size {symbol}")
    ax.set_ylabel(f"predicted peak ({unit})")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
