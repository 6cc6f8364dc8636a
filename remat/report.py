"""remat.report: what remat decided for one graph, why, and its JSON form.

    report.summary()                 # one line: baseline, cap, predicted peak, decisions, time
    print(report.explain())          # one row per decided activation, with the reason
    report.timeline("timeline.png")  # live bytes per slot: baseline vs plan, and the cap
    report.to_json("plan.json")      # problem + plan + config; remat.report.load("plan.json")

Every number of the explanation comes from the problem, the plan and the simulator.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from .planning import GraphReport, offload_note
from .capture import Captured
from .config import RematConfig
from .errors import fmt_bytes
from .plan import Decision, Plan, status_words
from .plots import plot_peak_vs_size, plot_timeline
from .problem import Activation, Problem
from .simulate import MemoryTimeline, live_intervals, recompute_starts, simulate, store_all_plan
from .symbolic import describe_sizes, live_bytes, peak_formula, peaks_at

__all__ = [
    "ExplainRow", "Explanation", "JSON_FORMAT", "Report", "explain_plan", "fmt_time", "load", "load_plan",
]

JSON_FORMAT = "remat.report/1"


def fmt_time(seconds: float) -> str:
    """Human-readable duration: 3e-7 -> '0.30 us'."""
    s = float(seconds)
    if s == 0:
        return "0 s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(s) >= scale:
            return f"{s / scale:.2f} {unit}"
    return f"{s / 1e-9:.2f} ns"


# ---- the decision table --------------------------------------------------------------------------

_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_int_mm", "addbmm"}
_REDUCTIONS = {"var_mean", "native_layer_norm", "native_batch_norm", "_native_batch_norm_legit_functional",
               "_softmax", "_log_softmax", "amax", "sum", "mean"}


def _op_tags(base: str, overload: str) -> set | None:
    """The torch.Tag set of aten/prims op ``base.overload``, or None when neither has it."""
    for ns in (torch.ops.aten, torch.ops.prims):
        try:
            packet = getattr(ns, base)
            return set(getattr(packet, overload or "default").tags)
        except (AttributeError, RuntimeError):
            continue
    return None


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
    tags = _op_tags(base, overload) or set()
    if torch.Tag.nondeterministic_seeded in tags:
        return "random"
    if torch.Tag.pointwise in tags:
        return "pointwise"
    if torch.Tag.reduction in tags:
        return "reduction"
    return "reduction" if base in _REDUCTIONS else "op"


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
    module: str = ""  # module path of the op that computes it ("" when the capture did not record one)
    source: str = ""  # what a person recognises: 'blocks.3.attn (sdpa)', else 'mul (pointwise)'

    def as_dict(self) -> dict:
        return {
            "name": self.name, "source": self.source, "module": self.module, "op": self.op,
            "shape": list(self.shape), "dtype": self.dtype, "bytes": self.bytes,
            "decision": self.decision.value, "cost_s": self.cost_s, "cost": self.cost,
            "peak_saving_bytes": self.peak_saving_bytes, "why": self.why,
        }


class Explanation(list):
    """The rows of ``Report.explain()``: a list of ExplainRow that prints as a table.

    ``top(n)`` keeps the rows that matter most (the largest peak savings and the costliest
    recomputations or copies); ``table(width=...)`` fits every line into a terminal's width,
    cutting long cells with an ellipsis."""

    COLUMNS = ("source", "node", "shape", "dtype", "bytes", "decision", "cost", "why")
    _CELL_CAP = {"source": 32, "node": 26, "shape": 18, "cost": 24}  # widest cell before a cut

    def _cells(self, r: ExplainRow) -> list[str]:
        shape = "x".join(str(s) for s in r.shape) if r.shape else "-"
        return [r.source or r.name, r.name, shape, r.dtype or "-", fmt_bytes(r.bytes), r.decision.value, r.cost, r.why]

    def top(self, n: int) -> "Explanation":
        """At most ``n`` rows in creation order: half by peak saving, the rest by cost (not STORE)."""
        if n >= len(self):
            return Explanation(self)
        by_saving = sorted(self, key=lambda r: -r.peak_saving_bytes)
        by_cost = sorted((r for r in self if r.decision is not Decision.STORE), key=lambda r: -r.cost_s)
        chosen: dict[str, ExplainRow] = {r.name: r for r in by_saving[: (n + 1) // 2] if r.peak_saving_bytes > 0}
        for r in by_cost + by_saving:
            if len(chosen) >= n:
                break
            chosen.setdefault(r.name, r)
        return Explanation(r for r in self if r.name in chosen)

    def table(self, markdown: bool = False, max_rows: int | None = None, width: int | None = None) -> str:
        """The rows as text (``markdown``: a Markdown table); ``max_rows``: the ``top`` rows only,
        with a line saying how many more there are; ``width``: no line longer than that."""
        rows = self if max_rows is None else self.top(max_rows)
        cells = [self._cells(r) for r in rows]
        if markdown:
            out = ["| " + " | ".join(self.COLUMNS) + " |", "|" + "|".join("---" for _ in self.COLUMNS) + "|"]
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        else:
            out = _aligned(list(self.COLUMNS), cells, width, self._CELL_CAP if width else {})
        if len(rows) < len(self):
            out.append(f"... {len(self) - len(rows)} more rows (--rows all shows them)")
        return "\n".join(out)

    def to_markdown(self) -> str:
        return self.table(markdown=True)

    def __str__(self) -> str:
        return self.table()

    def counts(self) -> dict[str, int]:
        return {d.value: sum(1 for r in self if r.decision is d) for d in Decision}


def _cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, ending in an ellipsis when cut."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "\u2026"


_MIN_FREE_TEXT = 48  # narrower than this, the last column goes on indented lines of its own


def _aligned(header: list[str], cells: list[list[str]], width: int | None, caps: dict[str, int]) -> list[str]:
    """Columns padded to their widest cell (capped by ``caps``); the last column is free text that
    takes what is left of ``width``, or, when that is too little, is wrapped onto indented lines
    under its row; every line is cut at ``width``."""
    widths = [min(max([len(h)] + [len(row[i]) for row in cells]), caps.get(h, 10**6)) for i, h in enumerate(header)]
    widths[-1] = 0  # the last column is free text: no padding
    below = width is not None and width - sum(w + 2 for w in widths[:-1]) < _MIN_FREE_TEXT

    def line(row: list[str]) -> list[str]:
        padded = [_cut(c, w).ljust(w) for c, w in zip(row[:-1], widths)] + ([] if below else [row[-1]])
        text = "  ".join(padded).rstrip()
        if width is None:
            return [text]
        extra = textwrap.wrap(row[-1], width - 4, initial_indent="    ", subsequent_indent="    ") if below else []
        return [_cut(text, width)] + extra

    rule = ["-" * max(w, len(h)) for w, h in zip(widths, header)][:-1] + ["" if below else "---"]
    return [ln for row in [header, rule, *cells] for ln in line(row)]


@dataclass(frozen=True)
class _Facts:
    """What every row of the table reads: the plan, its simulation and its recompute schedule."""

    problem: Problem
    plan: Plan
    timeline: MemoryTimeline
    budget: int | None
    starts: dict[str, int]  # slot where each recomputed activation is recomputed
    intervals: dict[str, list[tuple[int, int]]]  # live intervals of each activation on the device
    readers: dict[str, list[str]]  # input -> its recomputed consumers, earliest start first

    def slot(self, t: int) -> str:
        return f"slot {t} ({self.problem.slots[t].name})"

    def span(self, lo: int, hi: int) -> str:
        side = lambda t: "fwd" if t < self.problem.num_forward else "bwd"  # noqa: E731
        return f"slots {lo}-{hi} ({side(lo)}..{side(hi)})"


def _facts(problem: Problem, plan: Plan, tl: MemoryTimeline, budget: int | None) -> _Facts:
    starts = recompute_starts(problem, plan)
    recomputed = [n for n, d in plan.decisions.items() if d is Decision.RECOMPUTE]
    readers: dict[str, list[str]] = {}
    for c in sorted(recomputed, key=lambda c: starts.get(c, 0)):
        for i in problem.activation(c).inputs:
            readers.setdefault(i, []).append(c)
    return _Facts(problem, plan, tl, budget, starts, live_intervals(problem, plan), readers)


def _short_op(op: str) -> str:
    """'_scaled_dot_product_flash_attention_for_cpu.default' -> 'sdpa'; 'addmm.default' -> 'addmm'."""
    base = op.split(".")[0]
    return "sdpa" if "scaled_dot_product" in base else base.lstrip("_")


def source_of(a: Activation) -> str:
    """How a person names an activation: its module path and op ('blocks.3.attn (sdpa)') when the
    capture recorded the module, else its op and kind ('mul (pointwise)')."""
    module = getattr(a, "module", "")  # set by the capture from nn_module_stack
    return f"{module} ({_short_op(a.op)})" if module else _what(a)


def _what(a: Activation) -> str:
    """'mul (pointwise)': the op's name and, when it says more, its kind."""
    kind = _op_kind(a.op)
    base = a.op.split(".")[0]
    return base if kind in (base, "op") else f"{base} ({kind})"


def _off_device(f: _Facts, a: Activation) -> tuple[int, str, int]:
    """For an activation not stored: (peak saving, its effect in words, its first backward slot).

    The saving is exact: the plan is simulated again with this one activation stored (the
    inputs no longer needed simply drop out) and the peaks are compared.
    """
    dec = dict(f.plan.decisions)
    dec[a.name] = Decision.STORE
    stored_peak = simulate(f.problem, dec).peak_bytes
    peak, nf = f.timeline.peak_bytes, f.problem.num_forward
    saving = max(0, stored_peak - peak)
    back = [iv for iv in f.intervals.get(a.name, ()) if iv[0] >= nf]
    back_lo = back[0][0] if back else f.starts.get(a.name, nf)
    lo, hi = a.last_forward_use + 1, back_lo - 1  # off the device (where STORE would keep it)
    if f.plan.decisions[a.name] is Decision.OFFLOAD:
        fwd = [iv for iv in f.intervals.get(a.name, ()) if iv[0] < nf]
        if fwd:
            lo = fwd[0][1] + 1
    if saving > 0:
        effect = f"saves {fmt_bytes(saving)} at the peak"
        if f.budget is not None and stored_peak > f.budget >= peak:
            effect += " (storing it would break the cap)"
    elif lo <= hi:
        effect = f"frees {fmt_bytes(a.bytes)} over {f.span(lo, hi)}, not at the peak"
    else:
        effect = "frees nothing"
    return saving, effect, back_lo


def _row(a: Activation, d: Decision, cost_s: float, cost: str, saving: int, why: str) -> ExplainRow:
    return ExplainRow(name=a.name, op=a.op, shape=tuple(a.shape), dtype=a.dtype, bytes=a.bytes, decision=d,
                      cost_s=float(cost_s), cost=cost, peak_saving_bytes=int(saving), why=why,
                      module=getattr(a, "module", ""), source=source_of(a))


def _recompute_row(f: _Facts, a: Activation) -> ExplainRow:
    saving, effect, back_lo = _off_device(f, a)
    at = f.starts.get(a.name, back_lo)
    cost_s = a.compute_time
    why = f"recompute: {fmt_time(cost_s)} to redo {_what(a)} at {f.slot(at)}; {effect}"
    if a.inputs:
        shown = ", ".join(a.inputs[:3]) + (", ..." if len(a.inputs) > 3 else "")
        why += f"; from {shown}"
    return _row(a, Decision.RECOMPUTE, cost_s, f"{fmt_time(cost_s)} recompute", saving, why)


def _offload_row(f: _Facts, a: Activation) -> ExplainRow:
    saving, effect, _ = _off_device(f, a)
    transfer = a.bytes / f.problem.host_bandwidth
    sched = f.timeline.transfers
    where = ""
    if sched is not None and a.name in sched.free_after:
        where = (f", on host from {f.slot(sched.free_after[a.name] + 1)}, prefetched from "
                 f"{f.slot(sched.prefetch_at[a.name])}")
    why = (f"offload: {fmt_time(transfer)} each way over the link{where}; the plan's copies leave "
           f"{fmt_time(f.timeline.transfer_time)} unhidden in all; {effect}")
    if a.recomputable:
        why += f"; recompute would cost {fmt_time(a.compute_time)}"
    return _row(a, Decision.OFFLOAD, transfer, f"{fmt_time(transfer)} copy each way", saving, why)


def _store_row(f: _Facts, a: Activation) -> ExplainRow:
    reasons = []
    if a.backward_uses:
        reasons.append(f"read by backward at {f.slot(a.backward_uses[0])}")
    if a.name in f.readers:
        c = f.readers[a.name][0]
        reasons.append(f"input to recompute {c} at slot {f.starts.get(c)}")
    if not a.recomputable:
        reasons.append(f"{_what(a)} cannot be recomputed (random or impure)")
    elif f.budget is None:
        reasons.append(f"no cap; recompute would cost {fmt_time(a.compute_time)}")
    else:
        reasons.append(f"recompute would cost {fmt_time(a.compute_time)}")
        if f.timeline.peak_bytes <= f.budget:
            reasons.append("the cap is met without it")
    cost = f"({fmt_time(a.compute_time)} to recompute)" if a.recomputable else "-"
    return _row(a, Decision.STORE, a.compute_time, cost, 0, "store: " + "; ".join(reasons))


_ROW_OF = {Decision.STORE: _store_row, Decision.RECOMPUTE: _recompute_row, Decision.OFFLOAD: _offload_row}


def explain_plan(problem: Problem, plan: Plan, tl: MemoryTimeline, budget: int | None) -> Explanation:
    """Rows of the decision table, in creation order: one per activation that the plan decides."""
    f = _facts(problem, plan, tl, budget)
    order = sorted(plan.decisions, key=lambda n: (problem.activation(n).created, n))
    return Explanation(_ROW_OF[plan.decisions[n]](f, problem.activation(n)) for n in order)


# ---- figures in words ----------------------------------------------------------------------------


def peak_figures(graph: GraphReport, measured_bytes: int | None = None) -> list[str]:
    """One line per figure of the step's peak (model prediction, Inductor's estimate when the
    graph was compiled, measured when given) and one saying which the cap was checked against."""
    lines = [f"model prediction    {fmt_bytes(graph.timeline.peak_bytes):>12}  remat's simulation of the plan"]
    if graph.inductor_peak_bytes is not None:
        again = f" (plan {graph.plans_made} of the check loop)" if graph.plans_made > 1 else ""
        lines.append(f"Inductor's estimate {fmt_bytes(graph.inductor_peak_bytes):>12}  after fusion{again}")
    if measured_bytes is not None:
        lines.append(f"measured            {fmt_bytes(measured_bytes):>12}  one real step, above resident memory")
    if graph.budget_bytes is None:
        return lines + ["no cap"]
    checked = "model prediction and Inductor's estimate" if graph.inductor_peak_bytes is not None else "model prediction"
    target = graph.plan.budget_bytes
    why = "set by the check loop from Inductor's estimates" if graph.plans_made > 1 else "the cap less the reserve"
    aim = f", planned at {fmt_bytes(target)} ({why})" if target is not None and target < graph.budget_bytes else ""
    return lines + [f"cap {fmt_bytes(graph.budget_bytes)}{aim}; checked against the {checked}"]


def summary_of(graph: GraphReport, gap_target: float) -> str:
    """One line: baseline, cap, the model's predicted peak, decisions, added time, solver status."""
    p = graph.plan
    counts = ", ".join(f"{len(p.names(d))} {d.value}" for d in Decision)
    cap = fmt_bytes(graph.budget_bytes) if graph.budget_bytes is not None else "none"
    inductor = "" if graph.inductor_peak_bytes is None else f", Inductor estimates {fmt_bytes(graph.inductor_peak_bytes)}"
    return (f"remat[{graph.problem.name}]: baseline {fmt_bytes(graph.baseline_peak_bytes)}, cap {cap}, "
            f"model predicts {fmt_bytes(graph.timeline.peak_bytes)}{inductor}; {counts}; "
            f"+{fmt_time(graph.timeline.added_time)}; {p.solver}: {status_words(p, gap_target)} ({p.solve_time_s:.2f} s)"
            f"{offload_note(graph)}")


# ---- layers and the memory snapshot --------------------------------------------------------------


def layer_starts(problem: Problem) -> list[int]:
    """Forward slots where a repeated layer (``Problem.layers``) begins, and the backward slots
    where its backward begins (its earliest backward read); [] when no layers were found."""
    starts: set[int] = set()
    for cls in getattr(problem, "layers", ()):
        for layer in cls:
            acts = [problem.activation(n) for n in layer]
            starts.add(min(a.created for a in acts))
            reads = [a.backward_uses[0] for a in acts if a.backward_uses]
            if reads:
                starts.add(min(reads))
    return sorted(starts)


def _live_blocks(problem: Problem, plan: Plan) -> list[tuple[str, int, int, int]]:
    """(label, bytes, first slot, last slot) of every device block of the plan: each activation's
    forward lifetime merged with its intervals on the device in backward, and the rest of each
    slot's simulated bytes (fixed bytes, readers moved after a recomputing kernel, other runs of a
    repeated graph) as one 'other' block per run of slots with equal bytes."""
    n = len(problem.slots)
    device = simulate(problem, plan).device_bytes
    backward = live_intervals(problem, plan)
    spans: dict[str, list[tuple[int, int]]] = {a.name: [(a.created, a.last_forward_use)] for a in problem.activations}
    for name, ivs in backward.items():
        spans[name] = spans[name] + [tuple(iv) for iv in ivs]
    rest = _bytes_outside(problem, device, spans)
    if min(rest, default=0) < 0:  # the capture shares some storages: keep fixed bytes whole
        spans = {k: [tuple(iv) for iv in backward.get(k, ())] for k in spans}
        rest = _bytes_outside(problem, device, spans)
    blocks = [(source_of(problem.activation(k)) + f" [{k}]", problem.activation(k).bytes, lo, hi)
              for k, ivs in spans.items() for lo, hi in _merged(ivs) if lo <= hi]
    t = 0
    while t < n:
        end = t
        while end + 1 < n and rest[end + 1] == rest[t]:
            end += 1
        if rest[t] > 0:
            blocks.append(("other: temporaries, gradients, outputs (not decided)", rest[t], t, end))
        t = end + 1
    return blocks


def _bytes_outside(problem: Problem, device: tuple[int, ...], spans: dict[str, list[tuple[int, int]]]) -> list[int]:
    """Each slot's simulated bytes less the activations' blocks live there."""
    rest = list(device)
    for name, ivs in spans.items():
        size = problem.activation(name).bytes
        for lo, hi in _merged(ivs):
            for t in range(max(lo, 0), min(hi, len(rest) - 1) + 1):
                rest[t] -= size
    return rest


def _merged(ivs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for lo, hi in sorted(ivs):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def memory_snapshot(problem: Problem, plan: Plan) -> dict:
    """The plan's predicted device memory in the format of ``torch.cuda.memory._snapshot()``:
    one device trace of alloc / free_requested / free_completed events, slot by slot (frees
    before allocations), ``time_us`` the predicted time since the step began, each block's frame
    naming its source; the one segment holds the blocks live at the end of the step."""
    blocks = _live_blocks(problem, plan)
    clock = [0.0]
    for s in problem.slots:
        clock.append(clock[-1] + s.compute_time)
    frees: dict[int, list[int]] = {}
    allocs: dict[int, list[int]] = {}
    for i, (_, _, lo, hi) in enumerate(blocks):
        allocs.setdefault(lo, []).append(i)
        frees.setdefault(hi + 1, []).append(i)
    addr, total = [], 0
    for _, size, _, _ in blocks:  # disjoint addresses, 512-byte aligned as the caching allocator's
        addr.append(total)
        total += -(-max(size, 1) // 512) * 512
    frames = [[{"filename": problem.name, "line": lo, "name": label}] for label, _, lo, _ in blocks]
    trace = []
    for t in range(len(problem.slots) + 1):
        us = int(clock[t] * 1e6)
        for i in frees.get(t, ()):
            for action in ("free_requested", "free_completed"):
                trace.append({"action": action, "addr": addr[i], "size": blocks[i][1], "stream": 0,
                              "time_us": us, "frames": frames[i]})
        for i in allocs.get(t, ()):
            trace.append({"action": "alloc", "addr": addr[i], "size": blocks[i][1], "stream": 0,
                          "time_us": us, "frames": frames[i]})
    segment = {"device": 0, "address": 0, "total_size": total, "allocated_size": 0, "active_size": 0,
               "requested_size": 0, "stream": 0, "segment_type": "large", "blocks": [
                   {"address": 0, "size": total, "requested_size": 0, "state": "inactive", "frames": []}]}
    return {"segments": [segment], "device_traces": [trace]}


# ---- the report ----------------------------------------------------------------------------------


def _range_ends(graph: GraphReport) -> tuple:
    """The size symbol of a dynamic graph's figures (its proof's) and the sizes at the two ends of
    its range (the other symbols at the sizes planned at)."""
    d, sizes = graph.dynamic, graph.captured.symbolic
    by_name = {str(x): x for x in sizes.symbols}
    planned = {by_name[name]: v for name, v in d.planned_at.items() if name in by_name}
    symbol = d.proof.symbol
    lo, hi = d.ranges[str(symbol)]
    return symbol, [{**planned, symbol: lo}, {**planned, symbol: hi}]


def _config_to_dict(cfg: RematConfig) -> dict:
    """Every RematConfig field as JSON (the budget as bytes or a ratio, a custom device as a dict)."""
    out = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    b = cfg.memory_budget
    out["memory_budget"] = None if b is None else (b.bytes if b.bytes is not None else b.ratio)
    if isinstance(cfg.device, tuple):
        out["device"] = dict(cfg.device)
    if cfg.dynamic_range is not None:
        out["dynamic_range"] = {key: list(pair) for key, pair in cfg.dynamic_range}
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
        """One line: baseline, cap, predicted peak, decisions, added time, solver status in words."""
        return summary_of(self.graph, self.config.gap)

    @property
    def status_words(self) -> str:
        """The solver's status in words ('optimal', 'within 1.0 % of the best possible', ...)."""
        return status_words(self.plan, self.config.gap)

    def figures(self, measured_bytes: int | None = None) -> list[str]:
        """The peak figures, each named once, and which one the cap was checked against."""
        return peak_figures(self.graph, measured_bytes)

    # ---- explain / plot / JSON ----------------------------------------------------------------
    def explain(self) -> Explanation:
        """One row per decided activation: name, op, shape, dtype, bytes, decision, cost and why.

        ``print(report.explain())`` prints the table; the rows are ``ExplainRow`` objects. The
        reasons come from the problem, the plan and the simulated timeline: the slot where a
        value is recomputed or read, its recompute cost, and how much higher the peak would be
        if it were stored instead.
        """
        return explain_plan(self.problem, self.plan, self.memory, self.budget_bytes)

    def timeline(self, path: str | Path, title: str | None = None) -> Path:
        """Write a PNG of live device bytes per slot (forward then backward) for the baseline and
        the plan, with the cap as a line. Returns the path."""
        counts = ", ".join(f"{len(self.plan.names(d))} {d.value}" for d in Decision)
        mem = self.memory
        return plot_timeline(
            path, baseline=self.baseline.device_bytes, plan=mem.device_bytes,
            fixed=[s.fixed_bytes for s in self.problem.slots], num_forward=self.problem.num_forward,
            baseline_peak=self.baseline_peak_bytes, plan_peak=self.predicted_peak_bytes,
            peak_slot=mem.peak_slot, cap=self.budget_bytes,
            host=mem.host_bytes if mem.host_peak_bytes > 0 else None, host_peak=mem.host_peak_bytes,
            layer_starts=layer_starts(self.problem),
            title=title or f"remat {self.problem.name}: {counts}; +{self.added_time_s * 1e3:.2f} ms predicted",
        )

    # ---- dynamic shapes --------------------------------------------------------------------------
    def dynamic_lines(self) -> list[str]:
        """Under dynamic shapes, the sizes planned over, the peak of the plan and of storing
        everything as formulas in the size symbol and their values at the range's ends, and the
        added time (empty for a static graph). Op times are priced at the sizes planned at."""
        d = self.graph.dynamic
        if d is None:
            return []
        symbol, ends = _range_ends(self.graph)
        planned = ", ".join(f"{s}={v}" for s, v in d.planned_at.items())
        lines = [f"sizes: {describe_sizes(d.ranges, d.sources)}; planned at {planned}"]
        for what, plan in (("plan", self.plan), ("no remat", store_all_plan(self.problem))):
            live = live_bytes(self.problem, self.graph.captured.symbolic, plan)
            at = ", ".join(f"{fmt_bytes(v)} at {symbol}={p[symbol]}" for v, p in zip(peaks_at(live, ends), ends))
            lines.append(f"peak ({what}): {peak_formula(live, ends[-1])} bytes near {symbol}={ends[-1][symbol]}; {at}")
        if d.buckets is not None:
            lines.append(f"buckets: {d.buckets.describe()}; this plan covers {describe_sizes(d.ranges, {})}")
        lines.append(f"added time: +{fmt_time(self.added_time_s)} at {planned} (op times are priced at the sizes "
                     "planned at, not yet as functions of the sizes)")
        return lines

    def peak_vs_size(self, path: str | Path, points: int = 48) -> Path:
        """Write a PNG of the predicted peak of the plan and of storing everything at sizes across
        the range of a dynamic-shape graph (its first ranged size symbol), with the cap."""
        d = self.graph.dynamic
        if d is None:
            raise ValueError("peak_vs_size needs a dynamic-shape graph (analyze with dynamic_range=)")
        symbol, (low, high) = _range_ends(self.graph)
        lo, hi = low[symbol], high[symbol]
        xs = sorted({lo + (hi - lo) * i // max(points - 1, 1) for i in range(points)})
        at = [{**high, symbol: x} for x in xs]
        sizes = self.graph.captured.symbolic
        plan = peaks_at(live_bytes(self.problem, sizes, self.plan), at)
        base = peaks_at(live_bytes(self.problem, sizes, store_all_plan(self.problem)), at)
        buckets = d.buckets.bounds if d.buckets is not None else ()
        return plot_peak_vs_size(path, xs, plan, base, symbol=str(symbol), cap=self.budget_bytes, buckets=buckets,
                                 title=f"remat {self.problem.name}: peak vs {symbol}, planned at {high[symbol]}")

    def to_memory_snapshot(self, path: str | Path) -> Path:
        """Pickle the plan's predicted device memory as a ``torch.cuda.memory._snapshot()``: open it
        at https://pytorch.org/memory_viz beside a real snapshot of the same step."""
        import pickle

        path = Path(path)
        path.write_bytes(pickle.dumps(memory_snapshot(self.problem, self.plan)))
        return path

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
            "solver_status_words": self.status_words,
            "sources": {n: source_of(self.problem.activation(n)) for n in self.plan.decisions},
            "plan": self.plan.to_dict(),
            "problem": self.problem.to_dict(),
            "forward_nodes": list(self.graph.captured.forward_nodes),
            "backward_order": list(self.graph.captured.backward_order),
        }

    def to_json(self, path: str | Path) -> Path:
        """Save the problem, the plan and the config as JSON; ``load`` reads it back."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "Report":
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
