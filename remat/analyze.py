"""remat.analyze: the planning half of the backend, run offline on a model's example inputs.

Dynamo and AOTAutograd trace the training step on fake tensors; the partitioner plans the joint
graph and stops the compilation there, so no forward or backward step runs and no activation
memory is allocated.

    report = remat.analyze(model, example_inputs, memory_budget="60%", loss_fn=loss_fn)
    print(report.summary())
    print(report.explain())          # one row per decided activation, with the reason
    report.timeline("timeline.png")  # live bytes per slot: baseline vs plan, and the cap
    report.to_json("plan.json")      # problem + plan + config; remat.analyze.load("plan.json")
    points = remat.pareto(model, example_inputs, budgets=["90%", "70%", "50%"], loss_fn=loss_fn)
    points.plot("pareto.png")
"""

from __future__ import annotations

import json
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from .backend import GraphReport, RematPartitioner, _Stop
from .config import RematConfig, parse_budget
from .errors import InfeasibleBudgetError, PlanError, RematError, fmt_bytes
from .plan import Decision, Plan
from .problem import Problem
from .simulate import MemoryTimeline, check, simulate, store_all_plan

__all__ = [
    "ExplainRow", "Explanation", "ParetoPoint", "ParetoResult", "Report", "analyze", "fmt_time",
    "load", "load_plan", "pareto",
]

JSON_FORMAT = "remat.report/1"


def default_loss(outputs: Any) -> torch.Tensor:
    """Sum of every floating-point tensor in the model's outputs."""
    leaves = [t for t in torch.utils._pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not leaves:
        raise TypeError("the model returned no floating-point tensor; pass loss_fn=")
    return sum(t.sum() for t in leaves)


def fmt_time(seconds: float) -> str:
    """Human-readable duration: 3e-7 -> '0.30 us'."""
    s = float(seconds)
    if s == 0:
        return "0 s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(s) >= scale:
            return f"{s / scale:.2f} {unit}"
    return f"{s / 1e-9:.2f} ns"


# ---- explain -------------------------------------------------------------------------------------

_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_int_mm", "addbmm"}


def _op_kind(op: str) -> str:
    """A short class of an ATen op named like 'mul.Tensor': pointwise, reduction, matmul..."""
    base, _, overload = op.partition(".")
    if base in _MATMUL:
        return "matmul"
    if "convolution" in base or base.startswith("conv"):
        return "convolution"
    if "attention" in base:
        return "attention"
    if base.startswith("inductor_") or "rand" in base or "dropout" in base:
        return "random"
    for ns in (torch.ops.aten, torch.ops.prims):
        try:
            packet = getattr(ns, base)
            tags = set(getattr(packet, overload or "default").tags)
        except (AttributeError, RuntimeError):
            continue
        if torch.Tag.nondeterministic_seeded in tags:
            return "random"
        if torch.Tag.pointwise in tags:
            return "pointwise"
        if torch.Tag.reduction in tags:
            return "reduction"
        break
    if base in ("var_mean", "native_layer_norm", "native_batch_norm", "_native_batch_norm_legit_functional",
                "_softmax", "_log_softmax", "amax", "sum", "mean"):
        return "reduction"
    return "op"


@dataclass(frozen=True)
class ExplainRow:
    """One decided activation: what it is, what the plan does with it, and why."""

    name: str
    op: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int
    decision: Decision
    cost_s: float  # recompute time (RECOMPUTE, or what recomputing would cost for STORE) or transfer time (OFFLOAD)
    cost: str  # cost_s with its meaning, readable
    peak_saving_bytes: int  # how much lower the plan's peak is than it would be with this one stored
    why: str

    def as_dict(self) -> dict:
        return {
            "name": self.name, "op": self.op, "shape": list(self.shape), "dtype": self.dtype,
            "bytes": self.bytes, "decision": self.decision.value, "cost_s": self.cost_s,
            "cost": self.cost, "peak_saving_bytes": self.peak_saving_bytes, "why": self.why,
        }


class Explanation(list):
    """The rows of ``Report.explain()``: a list of ExplainRow that prints as a table."""

    COLUMNS = ("name", "op", "shape", "dtype", "bytes", "decision", "cost", "why")

    def _cells(self, r: ExplainRow) -> list[str]:
        shape = "x".join(str(s) for s in r.shape) if r.shape else "-"
        return [r.name, r.op, shape, r.dtype or "-", fmt_bytes(r.bytes), r.decision.value, r.cost, r.why]

    def table(self, markdown: bool = False, max_rows: int | None = None) -> str:
        rows = list(self) if max_rows is None else list(self)[:max_rows]
        cells = [self._cells(r) for r in rows]
        header = [c for c in self.COLUMNS]
        if markdown:
            out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        else:
            widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(header)]
            widths[-1] = 0  # the last column is free text: no padding
            fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
            out = [fmt(header), fmt(["-" * max(w, len(h)) for w, h in zip(widths, header)])]
            out += [fmt(row) for row in cells]
        if max_rows is not None and len(self) > max_rows:
            out.append(f"... {len(self) - max_rows} more rows")
        return "\n".join(out)

    def to_markdown(self) -> str:
        return self.table(markdown=True)

    def __str__(self) -> str:
        return self.table()

    def counts(self) -> dict[str, int]:
        return {d.value: sum(1 for r in self if r.decision is d) for d in Decision}


def _slot_ref(problem: Problem, t: int) -> str:
    return f"slot {t} ({problem.slots[t].name})"


def _span(problem: Problem, lo: int, hi: int) -> str:
    nf = problem.num_forward
    side = lambda t: "fwd" if t < nf else "bwd"  # noqa: E731
    return f"slots {lo}-{hi} ({side(lo)}..{side(hi)})"


def _explain(problem: Problem, plan: Plan, tl: MemoryTimeline, budget: int | None) -> Explanation:
    """Rows of the decision table; every number comes from the problem and the simulator.

    The peak saving of a RECOMPUTE or OFFLOAD activation is exact: the plan is simulated again
    with that one activation stored (everything else unchanged) and the peaks are compared.
    """
    from .simulate import live_intervals, recompute_starts

    peak = tl.peak_bytes
    starts = recompute_starts(problem, plan)
    intervals = live_intervals(problem, plan)
    recomputed = {n for n, d in plan.decisions.items() if d is Decision.RECOMPUTE}
    readers: dict[str, list[str]] = {}  # input -> its recomputed consumers, earliest start first
    for c in sorted(recomputed, key=lambda c: starts.get(c, 0)):
        for i in problem.activation(c).inputs:
            readers.setdefault(i, []).append(c)

    def peak_if_stored(name: str) -> int:
        dec = dict(plan.decisions)
        dec[name] = Decision.STORE
        return simulate(problem, dec).peak_bytes  # inputs no longer needed simply drop out

    rows = Explanation()
    order = sorted(plan.decisions, key=lambda n: (problem.activation(n).created, n))
    for name in order:
        a = problem.activation(name)
        d = plan.decisions[name]
        kind = _op_kind(a.op)
        base = a.op.split(".")[0]
        what = base if kind in (base, "op") else f"{base} ({kind})"
        saving = 0
        if d in (Decision.RECOMPUTE, Decision.OFFLOAD):
            stored_peak = peak_if_stored(name)
            saving = max(0, stored_peak - peak)
            back = [iv for iv in intervals.get(name, ()) if iv[0] >= problem.num_forward]
            back_lo = back[0][0] if back else starts.get(name, problem.num_forward)
            lo, hi = a.last_forward_use + 1, back_lo - 1  # off the device (where STORE would keep it)
            if d is Decision.OFFLOAD:
                fwd = [iv for iv in intervals.get(name, ()) if iv[0] < problem.num_forward]
                if fwd:
                    lo = fwd[0][1] + 1
            if saving > 0:
                effect = f"saves {fmt_bytes(saving)} at the peak"
                if budget is not None and stored_peak > budget >= peak:
                    effect += " (storing it would break the cap)"
            elif lo <= hi:
                effect = f"frees {fmt_bytes(a.bytes)} over {_span(problem, lo, hi)}, not at the peak"
            else:
                effect = "frees nothing"
        if d is Decision.RECOMPUTE:
            r = starts.get(name, back_lo)
            cost_s = a.compute_time
            cost = f"{fmt_time(cost_s)} recompute"
            why = f"recompute: {fmt_time(cost_s)} to redo {what} at {_slot_ref(problem, r)}; {effect}"
            if a.inputs:
                shown = ", ".join(a.inputs[:3]) + (", ..." if len(a.inputs) > 3 else "")
                why += f"; from {shown}"
        elif d is Decision.OFFLOAD:
            transfer = a.bytes / problem.host_bandwidth
            cost_s = transfer
            cost = f"{fmt_time(transfer)} copy each way"
            sched = tl.transfers
            where = ""
            if sched is not None and name in sched.free_after:
                where = (f", on host from {_slot_ref(problem, sched.free_after[name] + 1)}, prefetched from "
                         f"{_slot_ref(problem, sched.prefetch_at[name])}")
            why = (f"offload: {fmt_time(transfer)} each way over the link{where}; the plan's copies leave "
                   f"{fmt_time(tl.transfer_time)} unhidden in all; {effect}")
            if a.recomputable:
                why += f"; recompute would cost {fmt_time(a.compute_time)}"
        else:
            cost_s = a.compute_time
            cost = f"({fmt_time(cost_s)} to recompute)" if a.recomputable else "-"
            reasons = []
            if a.backward_uses:
                reasons.append(f"read by backward at {_slot_ref(problem, a.backward_uses[0])}")
            if name in readers:
                c = readers[name][0]
                reasons.append(f"input to recompute {c} at slot {starts.get(c)}")
            if not a.recomputable:
                reasons.append(f"{what} cannot be recomputed (random or impure)")
            elif budget is None:
                reasons.append(f"no cap; recompute would cost {fmt_time(a.compute_time)}")
            else:
                reasons.append(f"recompute would cost {fmt_time(a.compute_time)}")
                if peak <= budget:
                    reasons.append("the cap is met without it")
            why = "store: " + "; ".join(reasons)
        rows.append(ExplainRow(
            name=name, op=a.op, shape=tuple(a.shape), dtype=a.dtype, bytes=a.bytes, decision=d,
            cost_s=float(cost_s), cost=cost, peak_saving_bytes=int(saving), why=why,
        ))
    return rows


# ---- the report ----------------------------------------------------------------------------------


def _config_to_dict(cfg: RematConfig) -> dict:
    """Every RematConfig field as JSON (the budget as bytes or a ratio, a custom device as a dict)."""
    from dataclasses import fields

    out = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    b = cfg.memory_budget
    out["memory_budget"] = None if b is None else (b.bytes if b.bytes is not None else b.ratio)
    if isinstance(cfg.device, tuple):
        out["device"] = dict(cfg.device)
    return out


@dataclass
class Report:
    """What remat decides for a model's training step under a budget, and what it predicts."""

    graph: GraphReport
    config: RematConfig
    _baseline: MemoryTimeline | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def problem(self) -> Problem:
        return self.graph.problem

    @property
    def plan(self) -> Plan:
        return self.graph.plan

    @property
    def memory(self) -> MemoryTimeline:
        """The simulator's MemoryTimeline of the plan."""
        return self.graph.timeline

    @property
    def baseline(self) -> MemoryTimeline:
        """The simulator's MemoryTimeline of the no-remat plan (store everything backward reads)."""
        if self._baseline is None:
            self._baseline = simulate(self.problem, store_all_plan(self.problem))
        return self._baseline

    @property
    def baseline_peak_bytes(self) -> int:
        return self.graph.baseline_peak_bytes

    @property
    def budget_bytes(self) -> int | None:
        return self.graph.budget_bytes

    @property
    def predicted_peak_bytes(self) -> int:
        return self.graph.timeline.peak_bytes

    @property
    def solve_time_s(self) -> float:
        return self.graph.plan.solve_time_s

    @property
    def solver_status(self) -> str:
        return self.graph.plan.status

    @property
    def added_time_s(self) -> float:
        return self.graph.timeline.added_time

    @property
    def step_time_s(self) -> float:
        """Predicted time of the step without remat (sum of the slots' compute times)."""
        return float(sum(s.compute_time for s in self.problem.slots))

    @property
    def overhead(self) -> float:
        """Predicted added time as a fraction of the no-remat step time."""
        base = self.step_time_s
        return self.added_time_s / base if base > 0 else 0.0

    @property
    def decisions(self) -> dict[str, Decision]:
        return dict(self.graph.plan.decisions)

    def summary(self) -> str:
        from .backend import summary_line

        return summary_line(self.graph)

    # ---- explain / plot / JSON ----------------------------------------------------------------
    def explain(self) -> Explanation:
        """One row per decided activation: name, op, shape, dtype, bytes, decision, cost and why.

        ``print(report.explain())`` prints the table; the rows are ``ExplainRow`` objects. The
        reasons come from the problem, the plan and the simulated timeline: the slot where a
        value is recomputed or read, its recompute cost, and how much higher the peak would be
        if it were stored instead.
        """
        return _explain(self.problem, self.plan, self.memory, self.budget_bytes)

    def timeline(self, path: str | Path, title: str | None = None) -> Path:
        """Write a PNG of live device bytes per slot (forward then backward) for the baseline and
        the plan, with the cap as a line. Returns the path."""
        from .plots import plot_timeline

        return plot_timeline(self, path, title=title)

    def to_dict(self) -> dict:
        return {
            "format": JSON_FORMAT,
            "summary": self.summary(),
            "config": _config_to_dict(self.config),
            "baseline_peak_bytes": self.baseline_peak_bytes,
            "budget_bytes": self.budget_bytes,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "added_time_s": self.added_time_s,
            "step_time_s": self.step_time_s,
            "partition_time_s": self.graph.partition_time_s,
            "plan": self.plan.to_dict(),
            "problem": self.problem.to_dict(),
            "forward_nodes": list(self.graph.captured.forward_nodes),
            "backward_order": list(self.graph.captured.backward_order),
        }

    def to_json(self, path: str | Path) -> Path:
        """Save the problem, the plan and the config as JSON; ``remat.analyze.load`` reads it back."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "Report":
        from .capture import Captured

        if d.get("format") != JSON_FORMAT:
            raise ValueError(f"not a remat report (format {d.get('format')!r}, expected {JSON_FORMAT!r})")
        problem = Problem.from_dict(d["problem"])
        plan = Plan.from_dict(d["plan"])
        budget = d.get("budget_bytes")
        tl = simulate(problem, plan)
        captured = Captured(problem, list(d.get("forward_nodes", [])), list(d.get("backward_order", [])))
        graph = GraphReport(captured, plan, tl, int(d["baseline_peak_bytes"]), budget,
                            float(d.get("partition_time_s", 0.0)))
        cfg = dict(d.get("config", {}))
        if isinstance(cfg.get("device"), list):
            cfg["device"] = dict(cfg["device"])
        return cls(graph, RematConfig.from_options(cfg))

    @classmethod
    def from_json(cls, path: str | Path) -> "Report":
        return cls.from_dict(json.loads(Path(path).read_text()))


def load(path: str | Path) -> Report:
    """Read a report saved with ``Report.to_json``."""
    return Report.from_json(path)


def load_plan(path: str | Path) -> Plan:
    """The Plan of a report saved with ``Report.to_json`` (or of a bare ``Plan.save`` file)."""
    d = json.loads(Path(path).read_text())
    if d.get("format") == JSON_FORMAT:
        return Plan.from_dict(d["plan"])
    return Plan.from_dict(d)


# ---- analysis ------------------------------------------------------------------------------------


def capture_step(model: Callable, example_inputs: Any, loss_fn: Callable | None, partitioner: RematPartitioner) -> GraphReport:
    """Trace model+loss with Dynamo/AOTAutograd/Inductor's joint passes and plan it."""
    from torch._inductor.compile_fx import compile_fx

    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    loss_of = loss_fn or default_loss

    def step(*inputs):
        return loss_of(model(*inputs))

    def backend(gm, inputs):
        return compile_fx(gm, inputs, config_patches={"custom_partitioner_fn": partitioner})

    torch._dynamo.reset()
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    try:
        with torch._inductor.config.patch(force_disable_caches=True):
            compiled(*example_inputs)
    except Exception as e:  # Dynamo wraps backend errors; find our result or the real error
        err: BaseException | None = e
        while err is not None:
            if isinstance(err, _Stop):
                return err.report
            if not isinstance(err, torch._dynamo.exc.BackendCompilerFailed) and err is not e and _is_remat_error(err):
                raise err from None
            err = getattr(err, "inner_exception", None) or err.__cause__
        raise
    finally:
        torch._dynamo.reset()
    raise RuntimeError("the model's step has no backward graph: do its parameters or inputs require grad?")


def _is_remat_error(err: BaseException) -> bool:
    return isinstance(err, RematError)


def analyze(model, example_inputs, memory_budget=None, loss_fn=None, **options) -> Report:
    """Plan a model's training step offline (fake tensors, no step runs); returns a Report."""
    cfg = RematConfig.from_options({"memory_budget": memory_budget, **options})
    report = capture_step(model, example_inputs, loss_fn, RematPartitioner(cfg, analyze_only=True))
    return Report(report, cfg)


# ---- pareto --------------------------------------------------------------------------------------

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

    def as_dict(self) -> dict:
        return {
            "label": self.label, "budget_bytes": self.budget_bytes, "feasible": self.feasible,
            "predicted_peak_bytes": self.predicted_peak_bytes, "added_time_s": self.added_time_s,
            "overhead": self.overhead, "solve_time_s": self.solve_time_s, "status": self.status,
            "counts": self.counts, "error": self.error,
        }


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
        lines = [f"baseline (no remat): peak {fmt_bytes(self.baseline_peak_bytes)}, predicted step {fmt_time(self.step_time_s)}", head]
        for p in self:
            if p.feasible:
                lines.append(
                    f"{p.label:>8}  {fmt_bytes(p.budget_bytes):>12}  {fmt_bytes(p.predicted_peak_bytes):>14}  "
                    f"{p.predicted_peak_bytes / max(self.baseline_peak_bytes, 1):>10.0%}  {p.overhead:>8.1%}  "
                    f"{fmt_time(p.added_time_s):>10}  {p.solve_time_s:>7.2f}s  {p.status}"
                )
            else:
                lines.append(f"{p.label:>8}  {fmt_bytes(p.budget_bytes):>12}  {'-':>14}  {'-':>11}  {'-':>9}  {'-':>10}  {p.solve_time_s:>7.2f}s  {p.error}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """PNG of predicted peak vs predicted step-time overhead, one point per feasible cap."""
        from .plots import plot_pareto

        return plot_pareto(self, path, title=title)

    def to_dict(self) -> dict:
        return {"baseline_peak_bytes": self.baseline_peak_bytes, "step_time_s": self.step_time_s,
                "name": self.name, "points": [p.as_dict() for p in self]}


def _solve_point(graph: GraphReport, cfg: RematConfig, label: str, budget: int) -> ParetoPoint:
    from .solvers import get_solver

    problem = graph.problem
    t0 = time.perf_counter()
    try:
        plan = get_solver(cfg.solver)(problem, budget, time_limit=cfg.time_limit, gap=cfg.gap)
        tl = check(problem, plan, budget)
    except InfeasibleBudgetError as e:
        return ParetoPoint(label, budget, False, solve_time_s=time.perf_counter() - t0, status="infeasible",
                           error=f"infeasible: smallest peak is {fmt_bytes(e.min_peak_bytes)}")
    except PlanError as e:
        return ParetoPoint(label, budget, False, solve_time_s=time.perf_counter() - t0, status="error",
                           error=str(e).splitlines()[0])
    g = GraphReport(graph.captured, plan, tl, graph.baseline_peak_bytes, budget, time.perf_counter() - t0)
    rep = Report(g, cfg)
    return ParetoPoint(
        label, budget, True, tl.peak_bytes, tl.added_time, rep.overhead, plan.solve_time_s, plan.status,
        {d.value: len(plan.names(d)) for d in Decision}, report=rep,
    )


def _budget_label(b: Any) -> str:
    if isinstance(b, float):
        return f"{b:.0%}"
    return str(b)


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
    from .solvers import min_peak

    options.pop("memory_budget", None)
    cfg = RematConfig.from_options(options)
    parsed = []
    for b in budgets:
        if isinstance(b, str) and b.strip().lower() == "min":
            parsed.append(("min", None))
        else:
            parsed.append((_budget_label(b), parse_budget(b)))
    base = analyze(model, example_inputs, memory_budget=None, loss_fn=loss_fn, **options)
    graph = base.graph
    baseline = graph.baseline_peak_bytes
    points = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(parsed), desc="remat pareto", unit="cap", file=sys.stderr, leave=False)
    try:
        for label, budget in parsed:
            if bar is not None:
                bar.set_postfix_str(label)
            if budget is None:
                t0 = time.perf_counter()
                nbytes = min_peak(graph.problem, time_limit=cfg.time_limit)
                pt = _solve_point(graph, cfg, label, nbytes)
                pt = _with_extra_time(pt, time.perf_counter() - t0 - pt.solve_time_s)
            else:
                pt = _solve_point(graph, cfg, label, budget.resolve(baseline))
            points.append(pt)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    result = ParetoResult(points, baseline, base.step_time_s, name=graph.problem.name)
    if plot is not None:
        result.plot(plot)
    return result


def _with_extra_time(pt: ParetoPoint, extra: float) -> ParetoPoint:
    from dataclasses import replace

    return replace(pt, solve_time_s=pt.solve_time_s + max(0.0, extra))


# ---- measuring one real step ---------------------------------------------------------------------


def measure_compiled(model, example_inputs, loss_fn=None, memory_budget=None, **options):
    """Compile model+loss with backend "remat", run one warm-up step, then measure one step.

    Returns ``(StepMeasurement, [GraphReport, ...])``: the measured peak above the memory
    allocated before the step, and what the backend planned for each graph.
    """
    from .backend import LAST_COMPILE
    from .measure import measure_step

    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    loss_of = loss_fn or default_loss
    opts = dict(options)
    if memory_budget is not None:
        opts["memory_budget"] = memory_budget
    params = [p for p in (model.parameters() if isinstance(model, torch.nn.Module) else [])]
    torch._dynamo.reset()
    LAST_COMPILE.reports.clear()
    step = torch.compile(lambda *xs: loss_of(model(*xs)), backend="remat", options=opts)
    import torch._functorch.config as fconfig

    # no AOTAutograd/FX-graph cache hit, so that the partitioner runs and reports (kernels may be cached)
    with fconfig.patch(enable_autograd_cache=False), torch._inductor.config.patch(fx_graph_cache=False):
        step(*example_inputs).backward()  # compiles; the partitioner reports into LAST_COMPILE
        reports = list(LAST_COMPILE.reports)
        for p in params:
            p.grad = None
        m = measure_step(lambda: step(*example_inputs).backward())
    for p in params:
        p.grad = None
    torch._dynamo.reset()
    return m, reports


# ``remat.analyze`` is both this module and (in ``remat/__init__``) the function: importing the
# module replaces the package attribute, so make the module callable as the function too.
class _CallableModule(types.ModuleType):
    def __call__(self, model, example_inputs, memory_budget=None, loss_fn=None, **options) -> Report:
        return analyze(model, example_inputs, memory_budget=memory_budget, loss_fn=loss_fn, **options)


sys.modules[__name__].__class__ = _CallableModule
