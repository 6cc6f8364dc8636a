"""Planning one joint graph: capture -> layers -> cap -> solve -> check, and its report.

``plan_joint_graph`` is what remat's partitioner runs on each joint graph (in the backend, and
offline in ``remat.analyze``): it captures the ``Problem`` (``remat.capture``) with op times from
the ``cost_model`` option (the roofline, or measured costs from ``remat.profile``, built once per
process per device, thread count and cost model: ``graph_costs``), finds the repeated layers
(``remat.structure``), resolves the cap (``cap_and_target``: bytes, a ratio of plain
torch.compile's peak (``reference_peak``), or "min"; less what earlier graphs of the step keep),
solves it (``solve_within``) and checks the plan with the simulator (``cap_and_plan``; under
torch.distributed rank 0 runs it and every rank gets its plan: ``remat.ranks``). Under dynamic shapes
(``remat.symbolic``) a graph with a range of sizes is planned at the range's worst corner and its
plan proven over the range (``solve_over_range``); ``GraphReport.dynamic`` records it. ``GraphReport``
is the plain record of one planned graph; ``summary_line`` prints it.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from .capture import Captured, capture
from .config import RematConfig
from .cost import device_spec
from .errors import InfeasibleBudgetError, fmt_bytes
from .kernel_groups import KernelGroups, with_kernels
from .plan import Decision, Plan, status_words
from .ranks import agree_across_ranks
from .simulate import MemoryTimeline, check, store_all_peak
from .solvers import get_solver
from .structure import with_layers
from .symbolic import (
    Box, DynamicPlan, PeakProof, SymbolicSizes, describe_sizes, dynamic_plan, live_bytes, prove_peak, range_box,
    worst_corner,
)

if TYPE_CHECKING:
    from .profile import MeasuredCosts, ProfileStats

log = logging.getLogger("remat")


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
    # "remat plan", or "plain torch.compile": its partition met the cap where remat's plans did not
    compiled_with: str = "remat plan"
    # what priced the ops: "roofline", "measured (N ops measured, M cached, K roofline)", or a saved profile
    cost_model: str = "roofline"
    # the peak a ratio budget is a fraction of: plain torch.compile's (see ``reference_peak``)
    reference_peak_bytes: int | None = None
    reference: str = ""  # where it comes from: "plain torch.compile (compiled)", "... (modelled)"
    # under a byte cap, what the graphs compiled before this one keep while it runs: budget_bytes
    # is this graph's share of the step's cap (step_cap_bytes), 0 for ratio and "min" budgets
    resident_before_bytes: int = 0
    # what this graph keeps until its backward runs (saved activations, gradients of its outputs):
    # read from its compiled backward's inputs, else the plan's live bytes at the end of forward
    kept_bytes: int | None = None
    # dynamic shapes: the sizes the plan was made for and proven over, its symbolic peak
    # (``remat.symbolic.DynamicPlan``); None when every size is static
    dynamic: DynamicPlan | None = None

    @property
    def problem(self):
        return self.captured.problem

    @property
    def step_cap_bytes(self) -> int | None:
        """The cap on the whole step that this graph's share was taken from."""
        return None if self.budget_bytes is None else self.budget_bytes + self.resident_before_bytes


def plan_joint_graph(
    joint: fx.GraphModule, num_fwd_outputs: int, static_lifetime_input_indices: list[int] | None, cfg: RematConfig,
    lower_by: int = 0, name: str = "graph0", offline: bool = False, plain_peak: int | None = None,
    kernel_groups: KernelGroups | None = None, resident: int = 0,
) -> tuple[GraphReport, Any]:
    """Capture the Problem of a joint graph, find its repeated layers, solve it and check the plan
    with the simulator (``lower_by``: bytes to plan below the usual target, after Inductor found
    the last plan over; ``offline``: planned by ``remat.analyze``, on fake tensors; ``plain_peak``:
    plain torch.compile's peak on this graph, read from its compiled code, when the backend has it;
    ``kernel_groups``: the kernels Inductor generated for this graph under the last plan;
    ``resident``: bytes that earlier graphs of the step keep, taken off a byte cap)."""
    t0 = time.perf_counter()
    joint, info = _prepare_joint(joint, num_fwd_outputs, static_lifetime_input_indices)
    _refuse_meta(joint, name)
    on_cuda = _on_cuda(joint)
    costs = graph_costs(cfg, joint, on_cuda, offline)
    stats_before = replace(costs.stats) if costs is not None else None
    captured = capture(
        joint,
        forward_nodes=forward_nodes(joint, info),
        num_fwd_outputs=num_fwd_outputs,
        spec=device_spec(cfg.device),
        host_bandwidth=host_bandwidth(cfg, on_cuda, costs),
        name=name,
        costs=costs,
        kernel_groups=kernel_groups,
    )
    captured.problem = problem = with_layers(with_kernels(captured.problem, kernel_groups))
    sizes = captured.symbolic
    box, corner = planning_sizes(cfg, problem, sizes, name)
    if box is not None:  # plan at the range's worst corner; the compiled reference was read at the hint
        captured.problem = problem = sizes.problem_at(problem, corner)
        plain_peak = None
    baseline = store_all_peak(problem)
    reference, source = reference_peak(cfg, joint, captured, num_fwd_outputs, static_lifetime_input_indices, plain_peak)
    resident = resident if _is_byte_cap(cfg) else 0
    make_plan = functools.partial(cap_and_plan, cfg, captured, box, reference or baseline, lower_by, resident,
                                  cfg.inductor_check and not offline)
    budget, plan, timeline = make_plan() if offline else agree_across_ranks(problem, make_plan)
    report = GraphReport(captured, plan, timeline, baseline, budget, time.perf_counter() - t0,
                         cost_model=cost_model_note(costs, stats_before), reference_peak_bytes=reference,
                         reference=source, resident_before_bytes=resident)
    if sizes is not None and budget is not None:
        report.dynamic = dynamic_plan(problem, sizes, plan, budget, box, corner)
    return report, (joint, info)


def planning_sizes(cfg: RematConfig, problem: Any, sizes: SymbolicSizes | None, name: str) -> tuple[Box | None, dict]:
    """The range that a dynamic-shape graph is planned over (``remat.symbolic.range_box``; None:
    no range known) and the sizes to plan at: the range's worst corner, else the sizes traced.
    (None, {}) for a static graph."""
    if sizes is None:
        return None, {}
    box = range_box(sizes, cfg.dynamic_range, name)
    return box, worst_corner(problem, sizes, box) if box is not None else dict(sizes.hints)


def cap_and_plan(cfg: RematConfig, captured: Captured, box: Box | None, reference: int, lower_by: int,
                 resident: int, checked_later: bool) -> tuple[int | None, Plan, MemoryTimeline]:
    """The cap, a plan under it (over the range ``box`` under dynamic shapes) and its simulated
    timeline: what rank 0 makes for every rank under torch.distributed (``remat.ranks``)."""
    problem = captured.problem
    budget, target = cap_and_target(cfg, problem, reference, lower_by, resident)
    if box is not None:
        plan, target = solve_over_range(cfg, captured, box, budget, target, resident)
    else:
        plan, target = solve_within(cfg, problem, budget, target, checked_later=checked_later, resident=resident)
    return budget, plan, check(problem, plan, target)


def solve_over_range(cfg: RematConfig, captured: Captured, box: Box, budget: int | None, target: int | None,
                     resident: int = 0) -> tuple[Plan, int | None]:
    """Plan a dynamic-shape graph at its range's worst corner (``captured.problem`` holds the
    bytes there) and prove the plan's peak <= the cap over the whole range (``box``); where no
    plan meets the cap at that corner, or the plan does not hold over the range, raise
    InfeasibleBudgetError naming the largest size that fits (``on_infeasible="min"``: plan at the
    corner's floor, with a warning)."""
    problem, sizes = captured.problem, captured.symbolic
    try:
        plan, target = solve_within(cfg, problem, budget, target, resident=resident)
    except InfeasibleBudgetError as e:
        floor_plan = _solver(cfg)(problem, e.min_peak_bytes, time_limit=cfg.time_limit, gap=cfg.gap)
        proof = prove_peak(live_bytes(problem, sizes, floor_plan), budget, box)
        raise _infeasible_over_range(problem.name, budget, e.min_peak_bytes, proof, sizes, resident) from None
    proof = prove_peak(live_bytes(problem, sizes, plan), budget, box) if budget is not None else None
    if proof is not None and not proof.holds and cfg.on_infeasible != "min":
        raise _infeasible_over_range(problem.name, budget, proof.peak_bytes, proof, sizes, resident)
    return plan, target


def _infeasible_over_range(graph: str, budget: int, floor: int, proof: PeakProof, sizes: SymbolicSizes,
                           resident: int) -> InfeasibleBudgetError:
    """The error for a cap that no plan meets over a range of sizes: names the largest size that fits."""
    ranges = {str(s): r for s, r in proof.box.items()}
    worst = ", ".join(f"{s}={v}" for s, v in proof.worst.items())
    fit = (f"the largest {proof.symbol} that fits is {proof.largest_fit}" if proof.largest_fit is not None
           else f"not even {proof.symbol}={proof.box[proof.symbol][0]} fits")
    step = f" (the step's cap less {fmt_bytes(resident)} kept by earlier graphs)" if resident else ""
    return InfeasibleBudgetError(budget + resident, floor + resident, largest_fit=proof.largest_fit, detail=(
        f"graph {graph} over {describe_sizes(ranges, {str(s): v for s, v in sizes.sources.items()})}: the peak is "
        f"highest at {worst}{step}; {fit}: narrow the range (dynamic_range, or mark_dynamic's max) to that, "
        f"raise memory_budget to at least {fmt_bytes(floor + resident)}, or pass on_infeasible='min'"))


def reference_peak(cfg: RematConfig, joint: fx.GraphModule, captured: Captured, num_fwd_outputs: int,
                   static: list[int] | None, plain_peak: int | None) -> tuple[int | None, str]:
    """The peak that a ratio budget is a fraction of: plain torch.compile's on this graph. Read
    from plain Inductor's compiled code when the backend compiled it (``plain_peak``), else the
    model's figure for torch's default min-cut partition (``remat.baseline``). Only ratio budgets
    need it: (None, "") otherwise."""
    budget = cfg.memory_budget
    if budget is None or budget.ratio is None:
        return None, ""
    if plain_peak is not None:
        return plain_peak, "plain torch.compile (its compiled code)"
    from .baseline import plain_compile_peak

    return plain_compile_peak(joint, captured, num_fwd_outputs, static), "plain torch.compile (modelled min-cut partition)"


_COSTS: dict[tuple[str, int, str], MeasuredCosts] = {}  # (device, threads, cost model) -> costs


def graph_costs(cfg: RematConfig, joint: fx.GraphModule, on_cuda: bool, offline: bool) -> MeasuredCosts | None:
    """The measured costs that price this graph's ops, or None for the roofline: measured on the
    graph's device, or read from a saved profile; one object per process per device, thread
    count and cost model, so that its timings and disk cache serve every graph."""
    from .profile import MeasuredCosts

    model = cfg.resolved_cost_model(on_cuda, offline)
    if model == "roofline":
        return None
    device = _graph_device(joint)
    key = (str(device), torch.get_num_threads(), model)
    if key not in _COSTS:
        _COSTS[key] = MeasuredCosts.measure(device) if model == "measured" else MeasuredCosts.load(model)
    return _COSTS[key]


def host_bandwidth(cfg: RematConfig, on_cuda: bool, costs: MeasuredCosts | None) -> float:
    """The Problem's host link: 0 with offload off; the ``host_bandwidth`` option when set; the
    measured link (its slower direction, as is) under measured costs; else the device spec's."""
    bandwidth = cfg.offload_bandwidth(on_cuda)
    if bandwidth > 0 and cfg.host_bandwidth is None and costs is not None and costs.link is not None:
        return min(costs.link.to_host, costs.link.to_device)
    return bandwidth


def cost_model_note(costs: MeasuredCosts | None, before: ProfileStats | None) -> str:
    """What priced one graph, for its report: "roofline", or the source of the measured costs
    with the op lookups this graph made (measured now, from the cache, left to the roofline)."""
    if costs is None or before is None:
        return "roofline"
    s = costs.stats
    measured, cached, fallbacks = s.measured - before.measured, s.cache_hits - before.cache_hits, s.fallbacks - before.fallbacks
    if costs.source == "measured":
        return f"measured ({measured} ops measured, {cached} cached, {fallbacks} roofline)"
    return f"{costs.source} ({cached} ops from the profile, {fallbacks} roofline)"


def _prepare_joint(joint: fx.GraphModule, num_fwd_outputs: int, static: list[int] | None) -> tuple[fx.GraphModule, Any]:
    """torch's own clean-up of a joint graph before partitioning, and its node classification."""
    from torch._functorch import partitioners as P

    joint.graph.eliminate_dead_code()
    joint.recompile()
    if P.has_recomputable_ops(joint):
        joint = P.cleanup_recompute_tags(joint, is_default_partition=False)
    P.force_save_collectives(joint)
    P.force_save_effectful_ops(joint)
    P.force_save_bw_mutation_src(joint)
    return joint, P.classify_nodes(joint, static or [], num_fwd_outputs)


def _refuse_meta(joint: fx.GraphModule, name: str) -> None:
    """A step on the meta device allocates nothing that remat could plan: say so."""
    from .errors import ConfigError

    if any(isinstance(v := n.meta.get("val"), torch.Tensor) and v.device.type == "meta"
           for n in joint.graph.find_nodes(op="placeholder")):
        raise ConfigError(
            f"graph {name}: the model or its inputs are on the meta device, where a step allocates no "
            "memory to plan; trace on a real device, or on fake tensors (torch._subclasses.FakeTensorMode)")


def _is_byte_cap(cfg: RematConfig) -> bool:
    """A cap in bytes: the only budget that the graphs of a step share (a ratio is per graph)."""
    return cfg.memory_budget is not None and cfg.memory_budget.bytes is not None


def cap_and_target(cfg: RematConfig, problem: Any, baseline: int, lower_by: int,
                   resident: int = 0) -> tuple[int | None, int | None]:
    """The cap in bytes (None: no cap) and the peak that plans aim for (the cap less the reserve,
    less ``lower_by``). ``memory_budget="min"`` caps at the smallest peak that any plan reaches.
    A byte cap is the step's: this graph gets it less ``resident``, what earlier graphs keep."""
    budget = cfg.memory_budget
    if budget is None:
        return None, None
    if budget.minimum:
        from .solvers import min_peak

        floor = min_peak(problem, time_limit=cfg.time_limit)
        return floor, floor - lower_by
    cap = budget.resolve(baseline) - (resident if budget.bytes is not None else 0)
    return cap, cfg.planning_target(cap) - lower_by


def _solver(cfg: RematConfig) -> Any:
    """The solver the options name, with the ILP's ``layers`` mode."""
    options = {"layers": cfg.layers} if cfg.solver == "ilp" else {}
    return functools.partial(get_solver(cfg.solver), **options)


def solve_within(cfg: RematConfig, problem: Any, budget: int | None, target: int | None,
                 checked_later: bool = False, resident: int = 0) -> tuple[Plan, int | None]:
    """Plan at ``target``; when only the reserve does not fit, plan at the floor under the cap;
    when the cap does not fit, raise (or, with ``on_infeasible="min"``, plan at the floor).
    ``checked_later``: Inductor's code will be read after this plan compiles, so a cap under the
    model's floor is not refused yet: the floor plan is made (``plan.info["model_floor"]``) and the
    backend refuses the cap only if the compiled code is over it too (the model over-predicts).
    ``resident``: what earlier graphs of the step keep (``budget`` is this graph's share), for the error."""
    solve = _solver(cfg)
    try:
        return solve(problem, target, time_limit=cfg.time_limit, gap=cfg.gap), target
    except InfeasibleBudgetError as e:
        floor = e.min_peak_bytes
        over_cap = budget is None or floor > budget
        if over_cap and not checked_later and cfg.on_infeasible != "min":
            raise _infeasible(problem.name, budget if budget is not None else target, floor, resident) from None
        if over_cap and not checked_later:
            log.warning("remat[%s]: memory_budget %s cannot be met; planning at the smallest peak, %s "
                        "(on_infeasible='min')", problem.name, fmt_bytes(budget), fmt_bytes(floor))
        plan = solve(problem, floor, time_limit=cfg.time_limit, gap=cfg.gap)
        if over_cap:
            plan.info["model_floor"] = floor
        return plan, floor


def _infeasible(graph: str, budget: int, floor: int, resident: int = 0) -> InfeasibleBudgetError:
    """The error for a cap below the floor: names the graph, the option and what to do. With
    ``resident`` (what earlier graphs keep; ``budget`` is this graph's share) it names the step's
    cap and the smallest cap for the whole step."""
    what_to_do = "or pass memory_budget='min' (plan at the smallest peak) or on_infeasible='min'"
    if not resident:
        return InfeasibleBudgetError(budget, floor, detail=(
            f"graph {graph}; raise memory_budget to at least {fmt_bytes(floor)}, {what_to_do}"))
    step_floor = resident + floor
    return InfeasibleBudgetError(budget + resident, step_floor, detail=(
        f"{graph} needs {fmt_bytes(floor)}; earlier graphs keep {fmt_bytes(resident)}; the smallest cap for "
        f"the whole step is {fmt_bytes(resident)} + {fmt_bytes(floor)} = {fmt_bytes(step_floor)}: raise "
        f"memory_budget to at least that, {what_to_do}"))


def _on_cuda(joint: fx.GraphModule) -> bool:
    return _graph_device(joint).type == "cuda"


def _graph_device(joint: fx.GraphModule) -> torch.device:
    """The CUDA device of the graph's inputs, if any is on one, else the CPU."""
    for n in joint.graph.find_nodes(op="placeholder"):
        v = n.meta.get("val")
        if isinstance(v, torch.Tensor) and v.device.type == "cuda":
            return v.device
    return torch.device("cpu")


def forward_nodes(joint: fx.GraphModule, info: Any) -> set:
    """Ops that run in the forward graph: those the forward outputs need, and every output of a
    forward tuple op (a dropout mask that only backward reads is still made in forward)."""
    import operator

    fwd = set(info.required_fw_nodes)
    return fwd | {n for n in joint.graph.nodes if n.target is operator.getitem and n.args[0] in fwd}


def summary_line(r: GraphReport) -> str:
    from .errors import fmt_bytes

    p = r.plan
    counts = ", ".join(f"{len(p.names(d))} {d.value}" for d in Decision)
    cap = fmt_bytes(r.budget_bytes) if r.budget_bytes is not None else "none"
    if r.resident_before_bytes and r.budget_bytes is not None:
        cap += f" (step cap {fmt_bytes(r.step_cap_bytes)} less {fmt_bytes(r.resident_before_bytes)} kept by earlier graphs)"
    return (
        f"remat[{r.problem.name}]: baseline {fmt_bytes(r.baseline_peak_bytes)}, cap {cap}, "
        f"predicted {fmt_bytes(r.timeline.peak_bytes)}; {counts}; +{r.plan.objective * 1e3:.2f} ms, "
        f"{p.solver}: {status_words(p, 0.01)} in {p.solve_time_s:.2f} s, plan {p.digest()}; costs {r.cost_model}{offload_note(r)}{_inductor_note(r)}"
        f"{dynamic_note(r)}"
    )


def graph_label(r: GraphReport) -> str:
    """The graph's name, and for a dynamic-shape graph the sizes its figures are at, for messages."""
    d = r.dynamic
    if d is None:
        return r.problem.name
    planned = ", ".join(f"{s}={v}" for s, v in d.planned_at.items())
    return f"{r.problem.name} at {planned} (of {describe_sizes(d.ranges, d.sources)})"


def dynamic_note(r: GraphReport) -> str:
    """The sizes a dynamic-shape graph's plan holds over and its symbolic peak (empty when static)."""
    d = r.dynamic
    if d is None:
        return ""
    planned = ", ".join(f"{s}={v}" for s, v in d.planned_at.items())
    up_to = f"; meets the cap up to {d.proof.symbol}={d.fits_up_to}" if d.fits_up_to is not None else ""
    return (f"; dynamic: {describe_sizes(d.ranges, d.sources)}, planned at {planned}, peak {d.peak_formula} bytes "
            f"<= {fmt_bytes(d.proof.peak_bytes)} over the range{up_to}")


def _inductor_note(r: GraphReport) -> str:
    if r.compiled_with != "remat plan":
        return f"; no plan's code met the cap: {r.compiled_with} runs, at {fmt_bytes(r.inductor_peak_bytes)}"
    if r.inductor_peak_bytes is None:
        return ""
    again = f", after {r.plans_made} plans" if r.plans_made > 1 else ""
    return f"; Inductor estimates {fmt_bytes(r.inductor_peak_bytes)}{again}"


def offload_note(r: GraphReport) -> str:
    """Why a plan with offload on moves nothing to host (empty when it does, or offload is off)."""
    prob = r.problem
    if prob.host_bandwidth <= 0 or r.plan.names(Decision.OFFLOAD):
        return ""
    able = sum(1 for a in prob.activations if a.offloadable and a.backward_uses)
    if not able:
        return "; offload on, but nothing can be offloaded (no contiguous activation that backward reads)"
    return f"; offload on, none of {able} offloadable activations chosen (storing or recomputing costs less)"
