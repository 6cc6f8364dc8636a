"""remat.pareto: sweep caps on a step's peak; trace the step once, solve once per cap.

Each cap is planned as compiling at that cap plans it (``remat.planning.cap_and_target`` and
``solve_within``: the plan aims at the cap less the reserve), so the point at "50%" is the plan
that ``remat.analyze(..., memory_budget="50%")`` gives.

    points = remat.pareto(model, example_inputs, budgets=["90%", "70%", "50%", "min"], loss_fn=loss_fn)
    print(points)                    # one line per cap; infeasible caps are points, not exceptions
    points.plot("pareto.png")        # predicted peak vs predicted step-time overhead
"""

from __future__ import annotations

import sys
import time
import types
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from .analyze import analyze
from .planning import GraphReport, cap_and_target, solve_within
from .config import Budget, RematConfig, parse_budget
from .errors import InfeasibleBudgetError, PlanError, fmt_bytes
from .plan import Decision
from .plots import plot_pareto
from .report import Report, fmt_time
from .simulate import check
from .solvers import min_peak

__all__ = ["DEFAULT_BUDGETS", "PARETO_FORMAT", "ParetoPoint", "ParetoResult", "pareto"]

PARETO_FORMAT = "remat.pareto/1"
DEFAULT_BUDGETS = ("90%", "80%", "70%", "60%", "50%", "40%", "30%")


@dataclass(frozen=True)
class ParetoPoint:
    """One cap of a sweep: what the plan reaches there (or why no plan does)."""

    label: str  # the budget as given ("70%", "300MiB", "min")
    budget_bytes: int
    feasible: bool
    predicted_peak_bytes: int | None = None
    added_time_s: float | None = None
    overhead: float | None = None  # added_time_s / predicted no-remat step time
    solve_time_s: float = 0.0
    status: str = ""
    counts: dict | None = None
    error: str | None = None
    report: Report | None = field(default=None, repr=False, compare=False)
    target_bytes: int | None = None  # the peak the plan aimed at: the cap less the reserve
    status_words: str = ""  # the solver's status in words (``remat.report.status_words``)

    def as_dict(self) -> dict:
        return {
            "label": self.label, "budget_bytes": self.budget_bytes, "target_bytes": self.target_bytes,
            "feasible": self.feasible, "predicted_peak_bytes": self.predicted_peak_bytes,
            "added_time_s": self.added_time_s, "overhead": self.overhead, "solve_time_s": self.solve_time_s,
            "status": self.status, "status_words": self.status_words, "counts": self.counts, "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ParetoPoint":
        known = {f.name for f in fields(cls)} - {"report"}
        return cls(**{k: v for k, v in d.items() if k in known})


class ParetoResult(list):
    """The points of ``remat.pareto``, in the order of the budgets (largest cap first)."""

    def __init__(self, points: Iterable[ParetoPoint], baseline_peak_bytes: int, step_time_s: float, name: str = "") -> None:
        super().__init__(points)
        self.baseline_peak_bytes = baseline_peak_bytes
        self.step_time_s = step_time_s
        self.name = name

    @property
    def feasible(self) -> list[ParetoPoint]:
        return [p for p in self if p.feasible]

    def table(self) -> str:
        head = f"{'cap':>8}  {'cap bytes':>12}  {'predicted peak':>14}  {'of baseline':>11}  {'overhead':>9}  {'added':>10}  {'solve':>8}  status"
        lines = [f"baseline (no remat): peak {fmt_bytes(self.baseline_peak_bytes)}, predicted step {fmt_time(self.step_time_s)}"]
        reserved = [p for p in self.feasible if p.target_bytes is not None and p.target_bytes < p.budget_bytes]
        if reserved:
            p = reserved[0]
            lines.append(f"each cap is planned as compiling plans it: aiming at the cap less the reserve "
                         f"({1 - p.target_bytes / p.budget_bytes:.0%}); peaks are the model's predictions")
        lines.append(head)
        for p in self:
            if p.feasible:
                lines.append(
                    f"{p.label:>8}  {fmt_bytes(p.budget_bytes):>12}  {fmt_bytes(p.predicted_peak_bytes):>14}  "
                    f"{p.predicted_peak_bytes / max(self.baseline_peak_bytes, 1):>10.0%}  {p.overhead:>8.1%}  "
                    f"{fmt_time(p.added_time_s):>10}  {p.solve_time_s:>7.2f}s  {p.status_words or p.status}"
                )
            else:
                lines.append(f"{p.label:>8}  {fmt_bytes(p.budget_bytes):>12}  {'-':>14}  {'-':>11}  {'-':>9}  {'-':>10}  {p.solve_time_s:>7.2f}s  {p.error}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """PNG of predicted peak vs predicted step-time overhead, one point per feasible cap."""
        return plot_pareto([p.as_dict() for p in self.feasible], self.baseline_peak_bytes, path,
                           title=title or f"remat pareto {self.name}".strip())

    def to_dict(self) -> dict:
        return {"format": PARETO_FORMAT, "baseline_peak_bytes": self.baseline_peak_bytes,
                "step_time_s": self.step_time_s, "name": self.name, "points": [p.as_dict() for p in self]}

    @classmethod
    def from_dict(cls, d: dict) -> "ParetoResult":
        """A sweep saved with ``to_dict`` (as ``remat pareto --json`` writes it), without its reports."""
        if d.get("format", PARETO_FORMAT) != PARETO_FORMAT or not isinstance(d.get("points"), list):
            raise ValueError(f"not a remat Pareto sweep (format {d.get('format')!r}, expected {PARETO_FORMAT!r})")
        return cls([ParetoPoint.from_dict(p) for p in d["points"]], int(d["baseline_peak_bytes"]),
                   float(d.get("step_time_s", 0.0)), name=d.get("name", ""))


def _solve_point(graph: GraphReport, cfg: RematConfig, label: str, budget: Budget | None) -> ParetoPoint:
    """Plan one cap as the backend does (``budget`` None: the smallest reachable peak)."""
    problem, baseline = graph.problem, graph.baseline_peak_bytes
    t0 = time.perf_counter()
    try:
        if budget is None:
            cap = target = min_peak(problem, time_limit=cfg.time_limit)
        else:
            cap, target = cap_and_target(replace(cfg, memory_budget=budget), problem, baseline, lower_by=0)
        plan, target = solve_within(cfg, problem, cap, target)
        tl = check(problem, plan, target)
    except InfeasibleBudgetError as e:
        return ParetoPoint(label, budget.resolve(baseline) if budget is not None else e.min_peak_bytes, False, solve_time_s=time.perf_counter() - t0, status="infeasible",
                           error=f"infeasible: smallest peak is {fmt_bytes(e.min_peak_bytes)}")
    except PlanError as e:
        return ParetoPoint(label, budget.resolve(baseline) if budget else 0, False,
                           solve_time_s=time.perf_counter() - t0, status="error", error=str(e).splitlines()[0])
    seconds = time.perf_counter() - t0  # for "min": finding the smallest peak counts as solve time
    g = GraphReport(graph.captured, plan, tl, baseline, cap, seconds)
    rep = Report(g, replace(cfg, memory_budget=budget if budget is not None else cap))
    return ParetoPoint(
        label, cap, True, tl.peak_bytes, tl.added_time, rep.overhead, plan.solve_time_s if budget else seconds,
        plan.status, {d.value: len(plan.names(d)) for d in Decision}, report=rep, target_bytes=target,
        status_words=rep.status_words,
    )


def _parse_budgets(budgets: Sequence[Any]) -> list[tuple[str, Budget | None]]:
    """(label, parsed budget) per cap; None stands for "min"."""
    parsed: list[tuple[str, Budget | None]] = []
    for b in budgets:
        if isinstance(b, str) and b.strip().lower() == "min":
            parsed.append(("min", None))
        else:
            parsed.append((f"{b:.0%}" if isinstance(b, float) else str(b), parse_budget(b)))
    return parsed


def _sweep(graph: GraphReport, cfg: RematConfig, parsed: list[tuple[str, Budget | None]], progress: bool) -> list[ParetoPoint]:
    """Solve every cap in order; a tqdm bar on stderr when ``progress``."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(parsed), desc="remat pareto", unit="cap", file=sys.stderr, leave=False)
    points = []
    try:
        for label, budget in parsed:
            if bar is not None:
                bar.set_postfix_str(label)
            points.append(_solve_point(graph, cfg, label, budget))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return points


def pareto(
    model,
    example_inputs,
    budgets: Sequence[Any] = DEFAULT_BUDGETS,
    loss_fn=None,
    progress: bool = True,
    plot: str | Path | None = None,
    **options,
) -> ParetoResult:
    """Sweep caps on the step's peak: trace once, solve once per cap.

    ``budgets``: anything ``memory_budget`` accepts ("70%", 0.7, "300MiB", bytes) and "min" for
    the smallest peak that any plan reaches. Caps no plan meets give infeasible points (with the
    smallest reachable peak in ``error``) instead of an exception. A tqdm progress bar goes to
    stderr unless ``progress=False``. With ``plot=path`` the predicted peak vs predicted step-time
    overhead is written as a PNG.
    """
    options.pop("memory_budget", None)
    cfg = RematConfig.from_options(options)
    parsed = _parse_budgets(budgets)
    base = analyze(model, example_inputs, memory_budget=None, loss_fn=loss_fn, **options)
    points = _sweep(base.graph, cfg, parsed, progress)
    result = ParetoResult(points, base.graph.baseline_peak_bytes, base.step_time_s, name=base.problem.name)
    if plot is not None:
        result.plot(plot)
    return result


# ``remat.pareto`` is both this module and (in ``remat/__init__``) the function: importing the
# module replaces the package attribute, so make the module callable as the function too.
class _CallableModule(types.ModuleType):
    def __call__(self, model, example_inputs, budgets: Sequence[Any] = DEFAULT_BUDGETS, **kwargs) -> ParetoResult:
        return pareto(model, example_inputs, budgets=budgets, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
