"""The torch.compile backend: options -> Inductor with remat's partitioner.

``torch.compile(model, backend="remat", options={"memory_budget": "300MiB"})`` reaches
``remat_backend`` through the ``torch_dynamo_backends`` entry point. Without a budget it is plain
Inductor. With one, Inductor runs as usual but partitions the joint graph with
``RematPartitioner``: capture -> solve -> simulate (check) -> rewrite. After fusion, Inductor's
own estimate of each graph's peak (``remat.inductor_check``) is compared with the cap; when it is
over, the graph is planned again, lower by the excess.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch._inductor.custom_graph_pass import CustomPartitionerFn

from . import __version__
from .capture import Captured, capture
from .config import RematConfig
from .cost import device_spec
from .errors import InfeasibleBudgetError, fmt_bytes
from .inductor_check import InductorPeaks
from .passes.apply_plan import apply_plan
from .plan import Decision, Plan
from .simulate import MemoryTimeline, check, store_all_peak
from .solvers import get_solver

log = logging.getLogger("remat")
_SOURCE_HASH = hashlib.sha256(
    b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.rglob("*.py")))
).hexdigest()[:16]


@dataclass
class GraphReport:
    """What remat decided for one joint graph, and what it predicts."""

    captured: Captured
    plan: Plan
    timeline: MemoryTimeline
    baseline_peak_bytes: int
    budget_bytes: int | None
    partition_time_s: float = 0.0
    forward_code: str = ""  # the rewritten forward and backward graphs (filled by the backend)
    backward_code: str = ""
    inductor_peak_bytes: int | None = None  # Inductor's estimate after fusion (remat.inductor_check)
    plans_made: int = 1  # 2 or 3 when Inductor's estimate was over the cap and the graph was planned lower

    @property
    def problem(self):
        return self.captured.problem


@dataclass
class CompileLog:
    """Reports of every graph that a compiled model partitioned, newest last."""

    reports: list[GraphReport] = field(default_factory=list)


LAST_COMPILE = CompileLog()  # the reports of the most recent remat compilation in this process


class _Stop(Exception):
    """Raised by an analysis-only partitioner to stop compilation after planning."""

    def __init__(self, report: GraphReport) -> None:
        super().__init__("remat analysis done")
        self.report = report


def plan_joint_graph(
    joint: fx.GraphModule, num_fwd_outputs: int, static_lifetime_input_indices: list[int] | None, cfg: RematConfig,
    lower_by: int = 0,
) -> tuple[GraphReport, Any]:
    """Capture the Problem of a joint graph, solve it and check the plan with the simulator
    (``lower_by``: bytes to plan below the usual target, after Inductor found the last plan over)."""
    from torch._functorch import partitioners as P

    t0 = time.perf_counter()
    joint.graph.eliminate_dead_code()
    joint.recompile()
    if P.has_recomputable_ops(joint):
        joint = P.cleanup_recompute_tags(joint, is_default_partition=False)
    P.force_save_collectives(joint)
    P.force_save_effectful_ops(joint)
    P.force_save_bw_mutation_src(joint)
    info = P.classify_nodes(joint, static_lifetime_input_indices or [], num_fwd_outputs)
    spec = device_spec(cfg.device)
    captured = capture(
        joint,
        forward_nodes=forward_nodes(joint, info),
        num_fwd_outputs=num_fwd_outputs,
        spec=spec,
        host_bandwidth=cfg.offload_bandwidth(on_cuda=_on_cuda(joint)),
        name=f"graph{len(LAST_COMPILE.reports)}",
    )
    problem = captured.problem
    baseline = store_all_peak(problem)
    budget = cfg.memory_budget.resolve(baseline) if cfg.memory_budget is not None else None
    target = cfg.planning_target(budget)
    if target is not None:
        target -= lower_by
    solve = get_solver(cfg.solver)
    try:
        plan = solve(problem, target, time_limit=cfg.time_limit, gap=cfg.gap)
    except InfeasibleBudgetError as e:
        if budget is None or e.min_peak_bytes > budget:
            raise InfeasibleBudgetError(budget, e.min_peak_bytes) from None
        target = e.min_peak_bytes  # the reserve shrinks to what the cap can afford
        plan = solve(problem, target, time_limit=cfg.time_limit, gap=cfg.gap)
    timeline = check(problem, plan, target)
    report = GraphReport(captured, plan, timeline, baseline, budget, time.perf_counter() - t0)
    return report, (joint, info)


def _on_cuda(joint: fx.GraphModule) -> bool:
    return any(
        isinstance(v := n.meta.get("val"), torch.Tensor) and v.device.type == "cuda"
        for n in joint.graph.find_nodes(op="placeholder")
    )


def forward_nodes(joint: fx.GraphModule, info: Any) -> set:
    """Ops that run in the forward graph: those the forward outputs need, and every output of a
    forward tuple op (a dropout mask that only backward reads is still made in forward)."""
    import operator

    fwd = set(info.required_fw_nodes)
    return fwd | {n for n in joint.graph.nodes if n.target is operator.getitem and n.args[0] in fwd}


class RematPartitioner(CustomPartitionerFn):
    """Inductor's partitioner hook: plan with remat, then build forward and backward graphs."""

    def __init__(self, cfg: RematConfig, analyze_only: bool = False, lower_by: int = 0) -> None:
        self.cfg = cfg
        self.analyze_only = analyze_only
        self.lower_by = lower_by

    def __call__(self, gm: fx.GraphModule, joint_inputs: Sequence[object], **kwargs: Any):
        num_fwd_outputs = kwargs["num_fwd_outputs"]
        static = kwargs.get("static_lifetime_input_indices")
        report, (joint, info) = plan_joint_graph(gm, num_fwd_outputs, static, self.cfg, self.lower_by)
        if self.analyze_only:
            raise _Stop(report)
        LAST_COMPILE.reports.append(report)
        if self.cfg.verbose:
            print(summary_line(report))
        log.info("%s", summary_line(report))
        fw, bw = apply_plan(
            joint,
            forward_nodes=forward_nodes(joint, info),
            plan=report.plan,
            folded=set(report.captured.folded),
            num_fwd_outputs=num_fwd_outputs,
            static_lifetime_input_nodes=info.static_lifetime_input_nodes,
            problem=report.captured.problem,
            transfers=report.timeline.transfers,
        )
        report.forward_code, report.backward_code = fw.code, bw.code
        return fw, bw

    def uuid(self) -> str:
        key = f"remat {__version__} {_SOURCE_HASH} {self.cfg.key()} {self.analyze_only} {self.lower_by}"
        return hashlib.sha256(key.encode()).hexdigest()


def summary_line(r: GraphReport) -> str:
    from .errors import fmt_bytes

    p = r.plan
    counts = ", ".join(f"{len(p.names(d))} {d.value}" for d in Decision)
    cap = fmt_bytes(r.budget_bytes) if r.budget_bytes is not None else "none"
    return (
        f"remat[{r.problem.name}]: baseline {fmt_bytes(r.baseline_peak_bytes)}, cap {cap}, "
        f"predicted {fmt_bytes(r.timeline.peak_bytes)}; {counts}; +{r.plan.objective * 1e3:.2f} ms, "
        f"{p.solver} {p.status} in {p.solve_time_s:.2f} s{_offload_note(r)}{_inductor_note(r)}"
    )


def _inductor_note(r: GraphReport) -> str:
    if r.inductor_peak_bytes is None:
        return ""
    again = f", after {r.plans_made} plans" if r.plans_made > 1 else ""
    return f"; Inductor estimates {fmt_bytes(r.inductor_peak_bytes)}{again}"


def _offload_note(r: GraphReport) -> str:
    """Why a plan with offload on moves nothing to host (empty when it does, or offload is off)."""
    prob = r.problem
    if prob.host_bandwidth <= 0 or r.plan.names(Decision.OFFLOAD):
        return ""
    able = sum(1 for a in prob.activations if a.offloadable and a.backward_uses)
    if not able:
        return "; offload on, but nothing can be offloaded (no contiguous activation that backward reads)"
    return f"; offload on, none of {able} offloadable activations chosen (storing or recomputing costs less)"


def remat_backend(gm: fx.GraphModule, example_inputs: Sequence[Any], options: dict | None = None, **kw: Any):
    """torch.compile backend "remat": Inductor with a peak-memory-capped partitioner."""
    from torch._inductor.compile_fx import compile_fx

    if kw:
        raise TypeError(f"remat backend: unexpected keyword(s) {sorted(kw)}; pass settings as options={{...}}")
    cfg = RematConfig.from_options(options)
    if cfg.memory_budget is None:
        return compile_fx(gm, example_inputs)
    # Inductor's buffer reuse keeps a freed buffer allocated until a later same-sized allocation
    # takes it, which can hold memory across the step's peak; the plan frees at last use. Its
    # peak-memory reordering counts host and device bytes alike (it pulls every prefetch to the
    # start of the backward to free host inputs early); the plan already fixes the order. The
    # backward is compiled now rather than at the first backward call, so that Inductor's own
    # estimate of both graphs is known here: when it leaves less than the reserve under the cap,
    # the graph is planned again, lower by the excess (at most MAX_PLANS times).
    def patches(lower_by: int = 0, **extra: Any) -> dict:
        return {"custom_partitioner_fn": RematPartitioner(cfg, lower_by=lower_by),
                "allow_buffer_reuse": False, "reorder_for_peak_memory": False, **extra}

    if not cfg.inductor_check:
        return compile_fx(gm, example_inputs, config_patches=patches())
    lower_by, best = 0, None  # best: (estimate, compiled, report)
    for attempt in range(1, MAX_PLANS + 1):
        peaks = InductorPeaks()
        first = len(LAST_COMPILE.reports)
        try:
            with _backward_compiled_now():
                compiled = compile_fx(gm, example_inputs,
                                      config_patches=patches(lower_by, _post_fusion_custom_pass=peaks))
        except Exception as e:
            if best is not None and _caused_by(e, InfeasibleBudgetError):
                break  # cannot plan lower: keep the best plan so far
            raise
        new = LAST_COMPILE.reports[first:]
        del LAST_COMPILE.reports[first:]
        if not new or peaks.peak_bytes is None or new[-1].budget_bytes is None:
            LAST_COMPILE.reports.extend(new)
            return compiled
        report = new[-1]
        report.inductor_peak_bytes, report.plans_made = peaks.peak_bytes, attempt
        improved = best is None or peaks.peak_bytes < best[0]
        if improved:
            best = (peaks.peak_bytes, compiled, report)
        # Inductor does not see op workspaces either: its estimate must leave the reserve free too
        over = peaks.peak_bytes - cfg.planning_target(report.budget_bytes)
        if over <= 0 or not improved:
            break
        lower_by += over + report.budget_bytes // 100  # the estimate moves less than the plan
    est, compiled, report = best
    LAST_COMPILE.reports.append(report)
    if est > report.budget_bytes:
        log.warning("remat[%s]: Inductor estimates a peak of %s, over the cap %s, after %d plans",
                    report.problem.name, fmt_bytes(est), fmt_bytes(report.budget_bytes), report.plans_made)
    return compiled


MAX_PLANS = 3  # plans per graph: the first, and two more when Inductor's estimate is over the cap


def _backward_compiled_now():
    from torch._functorch import config as functorch_config

    if hasattr(functorch_config, "force_non_lazy_backward_lowering"):
        return functorch_config.patch(force_non_lazy_backward_lowering=True)
    return contextlib.nullcontext()


def _caused_by(e: BaseException | None, kind: type) -> BaseException | None:
    """``e`` or the exception in its cause/context chain that is a ``kind``."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
