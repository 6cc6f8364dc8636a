"""The torch.compile backend: options -> Inductor with remat's partitioner.

``torch.compile(model, backend="remat", options={"memory_budget": "300MiB"})`` reaches
``remat_backend`` through the ``torch_dynamo_backends`` entry point. Without a budget it is plain
Inductor. With one, Inductor runs as usual but partitions the joint graph with
``RematPartitioner``: capture -> solve -> simulate (check) -> rewrite. After fusion, Inductor's
own estimate of each graph's peak (``remat.inductor_check``) is compared with the cap; when it is
over, the graph is planned again, lower by the excess.

Op times come from the ``cost_model`` option: the roofline, or measured costs (``remat.profile``),
built once per process per device, thread count and cost model (``graph_costs``). The captured
Problem gets its repeated layers (``remat.structure``) before the solver sees it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.fx as fx
from torch._inductor.custom_graph_pass import CustomPartitionerFn

from ._version import __version__
from .capture import Captured, capture
from .config import RematConfig
from .cost import device_spec
from .compilation import Compilation, compilation_for
from .errors import InfeasibleBudgetError, RematError, fmt_bytes
from .inductor_check import InductorPeaks
from .kernel_groups import KernelGroups
from .wrapper_memory import collect_wrapper_code, wrapper_peak
from .passes.apply_plan import apply_plan
from .plan import Decision, Plan
from .simulate import MemoryTimeline, check, store_all_peak
from .solvers import get_solver
from .structure import with_layers

if TYPE_CHECKING:
    from .profile import MeasuredCosts, ProfileStats

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

    @property
    def problem(self):
        return self.captured.problem

    @property
    def step_cap_bytes(self) -> int | None:
        """The cap on the whole step that this graph's share was taken from."""
        return None if self.budget_bytes is None else self.budget_bytes + self.resident_before_bytes


class _Stop(Exception):
    """Raised by an analysis-only partitioner to stop compilation after planning."""

    def __init__(self, report: GraphReport) -> None:
        super().__init__("remat analysis done")
        self.report = report


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
    captured.problem = problem = with_layers(captured.problem)
    baseline = store_all_peak(problem)
    reference, source = reference_peak(cfg, joint, captured, num_fwd_outputs, static_lifetime_input_indices, plain_peak)
    resident = resident if _is_byte_cap(cfg) else 0
    budget, target = cap_and_target(cfg, problem, reference or baseline, lower_by, resident)
    plan, target = solve_within(cfg, problem, budget, target, checked_later=cfg.inductor_check and not offline,
                                resident=resident)
    timeline = check(problem, plan, target)
    report = GraphReport(captured, plan, timeline, baseline, budget, time.perf_counter() - t0,
                         cost_model=cost_model_note(costs, stats_before), reference_peak_bytes=reference,
                         reference=source, resident_before_bytes=resident)
    return report, (joint, info)


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


def solve_within(cfg: RematConfig, problem: Any, budget: int | None, target: int | None,
                 checked_later: bool = False, resident: int = 0) -> tuple[Plan, int | None]:
    """Plan at ``target``; when only the reserve does not fit, plan at the floor under the cap;
    when the cap does not fit, raise (or, with ``on_infeasible="min"``, plan at the floor).
    ``checked_later``: Inductor's code will be read after this plan compiles, so a cap under the
    model's floor is not refused yet: the floor plan is made (``plan.info["model_floor"]``) and the
    backend refuses the cap only if the compiled code is over it too (the model over-predicts).
    ``resident``: what earlier graphs of the step keep (``budget`` is this graph's share), for the error."""
    options = {"layers": cfg.layers} if cfg.solver == "ilp" else {}
    solve = functools.partial(get_solver(cfg.solver), **options)
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


class RematPartitioner(CustomPartitionerFn):
    """Inductor's partitioner hook: plan with remat, then build forward and backward graphs.

    Each joint graph it partitions leaves its GraphReport in ``reports``; ``graph_name`` names it."""

    def __init__(self, cfg: RematConfig, analyze_only: bool = False, lower_by: int = 0, graph_name: str = "graph0",
                 plain_peak: int | None = None, kernel_groups: KernelGroups | None = None,
                 resident: int = 0) -> None:
        self.cfg = cfg
        self.resident = resident  # bytes earlier graphs of the step keep (taken off a byte cap)
        self.analyze_only = analyze_only
        self.lower_by = lower_by
        self.graph_name = graph_name
        self.plain_peak = plain_peak
        self.kernel_groups = kernel_groups
        self.reports: list[GraphReport] = []

    def __call__(self, gm: fx.GraphModule, joint_inputs: Sequence[object], **kwargs: Any):
        num_fwd_outputs = kwargs["num_fwd_outputs"]
        static = kwargs.get("static_lifetime_input_indices")
        report, (joint, info) = plan_joint_graph(
            gm, num_fwd_outputs, static, self.cfg, self.lower_by, self.graph_name, offline=self.analyze_only,
            plain_peak=self.plain_peak, kernel_groups=self.kernel_groups, resident=self.resident)
        if self.analyze_only:
            raise _Stop(report)
        self.reports.append(report)
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
        groups = self.kernel_groups.key() if self.kernel_groups is not None else None
        key = f"remat {__version__} {_SOURCE_HASH} {self.cfg.key()} {self.analyze_only} {self.lower_by} {self.plain_peak} {groups} {self.resident}"
        return hashlib.sha256(key.encode()).hexdigest()


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
        f"{p.solver} {p.status} in {p.solve_time_s:.2f} s, plan {p.digest()}; costs {r.cost_model}{_offload_note(r)}{_inductor_note(r)}"
    )


def _inductor_note(r: GraphReport) -> str:
    if r.compiled_with != "remat plan":
        return f"; no plan's code met the cap: {r.compiled_with} runs, at {fmt_bytes(r.inductor_peak_bytes)}"
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
    """torch.compile backend "remat": Inductor with a peak-memory-capped partitioner.

    remat's own errors leave torch.compile as themselves (``except remat.InfeasibleBudgetError``
    works at the call that compiles), not wrapped in Dynamo's BackendCompilerFailed."""
    from torch._inductor.compile_fx import compile_fx

    if kw:
        raise TypeError(f"remat backend: unexpected keyword(s) {sorted(kw)}; pass settings as options={{...}}")
    try:
        cfg = RematConfig.from_options(options)
        if cfg.memory_budget is None:
            return compile_fx(gm, example_inputs)
        comp = compilation_for(options)
        if not _needs_backward(example_inputs):
            log.warning("remat[%s]: this graph runs without autograd (no input or parameter requires grad, "
                        "or grad mode is off): there is no backward to plan, memory_budget has no effect",
                        comp.next_graph_name())
            return compile_fx(gm, example_inputs)
        return _compile_planned(gm, example_inputs, cfg, comp)
    except Exception as e:
        err = _caused_by(e, RematError)
        if err is None:
            raise
        raise surfaced(err) from None


def _needs_backward(example_inputs: Sequence[Any]) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs)


def _compile_planned(gm: fx.GraphModule, example_inputs: Sequence[Any], cfg: RematConfig, comp: Compilation):
    """Compile one graph under a plan (``_compile_checked_plans``); when no plan's code meets the
    cap but plain torch.compile's does, plain torch.compile is what runs (remat never refuses a
    cap that plain Inductor meets), and the report says so. A byte cap is the step's: this graph
    is planned under it less what the graphs compiled before it keep (``Compilation.resident_before``)."""
    from torch._inductor.compile_fx import compile_fx

    name, key = comp.next_graph_name(), comp.graph_key()
    resident = comp.resident_before(key)
    plain = plain_compile(gm, example_inputs) if _wants_plain_peak(cfg) else None
    plain_peak = plain[1] if plain is not None else None
    if not cfg.inductor_check:
        partitioner = RematPartitioner(cfg, graph_name=name, plain_peak=plain_peak, resident=resident)
        compiled = compile_fx(gm, example_inputs, config_patches=_patches(partitioner))
        _record(comp, partitioner.reports, cfg.verbose, key)
        return compiled
    compiled, report, estimate = _compile_checked_plans(gm, example_inputs, cfg, name, plain_peak, resident)
    if report is None or report.budget_bytes is None or estimate is None:
        _record(comp, [report] if report is not None else [], cfg.verbose, key)
        return compiled
    if estimate > report.budget_bytes:
        fallback = _plain_within(gm, example_inputs, plain, report.budget_bytes)
        if fallback is not None:
            report.compiled_with, report.inductor_peak_bytes, report.kept_bytes = "plain torch.compile", *fallback[1:]
            _record(comp, [report], cfg.verbose, key)
            return fallback[0]
        _refuse_if_over_floor(cfg, report, estimate)
        log.warning("remat[%s]: Inductor estimates a peak of %s, over the cap %s, after %d plans",
                    report.problem.name, fmt_bytes(estimate), fmt_bytes(report.budget_bytes), report.plans_made)
    _record(comp, [report], cfg.verbose, key)
    return compiled


def _plain_within(gm, example_inputs, plain: tuple[Any, int | None, int | None] | None,
                  cap: int) -> tuple[Any, int, int | None] | None:
    """Plain torch.compile (compiled now unless ``plain`` holds it) when its code's peak is under
    ``cap``: (compiled, its peak, the bytes its backward receives)."""
    if plain is None:
        plain = plain_compile(gm, example_inputs)
    return plain if plain[1] is not None and plain[1] <= cap else None


def _compile_checked_plans(gm, example_inputs, cfg: RematConfig, name: str, plain_peak: int | None,
                           resident: int = 0):
    """Plan and compile; plan again (at most MAX_PLANS times) while Inductor's code leaves less than
    the reserve free: first with the kernels that Inductor generated (the model then places each
    kernel's ops as one), then, if the model still falls short, lower by the excess. Returns the
    compiled graph, its report and its code's peak, for the plan with the lowest peak.
    ``resident``: what earlier graphs of the step keep (``plan_joint_graph``)."""
    lower_by, groups, best = 0, None, None  # best: (estimate, compiled, report)
    for attempt in range(1, MAX_PLANS + 1):
        try:
            compiled, report, estimate, kernels = _compile_checked(
                gm, example_inputs, cfg, name, lower_by, plain_peak, groups, resident)
        except Exception as e:
            if best is not None and _caused_by(e, InfeasibleBudgetError):
                break  # cannot plan lower: keep the best plan so far
            raise
        if report is None or estimate is None or report.budget_bytes is None:
            return compiled, report, estimate
        report.inductor_peak_bytes, report.plans_made = estimate, attempt
        improved = best is None or estimate < best[0]
        if best is None or estimate <= best[0]:  # on a tie, the later plan: its model saw the kernels
            best = (estimate, compiled, report)
        # Inductor does not see op workspaces either: its estimate must leave the reserve free too
        over = estimate - cfg.planning_target(report.budget_bytes)
        if over <= 0 or not improved:
            break
        if groups is not None or kernels is None:  # the model saw the kernels and still fell short
            lower_by += over + report.budget_bytes // 100  # the estimate moves less than the plan
        groups = kernels if kernels is not None else groups
    estimate, compiled, report = best
    if cfg.memory_budget.minimum:  # "min": the cap is the smallest peak reached, as Inductor compiled it
        report.budget_bytes = max(report.budget_bytes, estimate)
    return compiled, report, estimate


def _refuse_if_over_floor(cfg: RematConfig, report: GraphReport, estimate: int) -> None:
    """A cap under the model's floor was planned at that floor to read Inductor's code: when the
    code is over the cap too, the cap cannot be met (unless ``on_infeasible="min"``), and the
    floor named is the code's."""
    floor = report.plan.info.get("model_floor")
    if floor is None:
        return
    if cfg.on_infeasible != "min":
        raise _infeasible(report.problem.name, report.budget_bytes, estimate, report.resident_before_bytes)
    log.warning("remat[%s]: memory_budget %s cannot be met; planned at the smallest peak, %s as Inductor's code "
                "allocates it (on_infeasible='min')", report.problem.name, fmt_bytes(report.budget_bytes),
                fmt_bytes(estimate))


def _compile_checked(gm, example_inputs, cfg: RematConfig, name: str, lower_by: int, plain: int | None,
                     groups: KernelGroups | None = None, resident: int = 0):
    """One compile with both graphs compiled now, planned with the kernels ``groups`` of the last
    compile: (compiled, its report or None, Inductor's estimate, the kernels Inductor generated).
    The report's ``kept_bytes`` is read from the compiled backward."""
    from torch._inductor.compile_fx import compile_fx

    peaks = InductorPeaks()
    partitioner = RematPartitioner(cfg, lower_by=lower_by, graph_name=name, plain_peak=plain, kernel_groups=groups,
                                   resident=resident)
    with _backward_compiled_now(), collect_wrapper_code() as peaks.codes:
        compiled = compile_fx(gm, example_inputs, config_patches=_patches(partitioner, _post_fusion_custom_pass=peaks))
    report = partitioner.reports[-1] if partitioner.reports else None  # none on a cache hit
    if report is not None:
        report.kept_bytes = backward_start_bytes(peaks)
    return compiled, report, peaks.peak_bytes, peaks.kernel_groups


def backward_start_bytes(peaks: InductorPeaks) -> int | None:
    """Bytes the compiled backward receives (saved activations, gradients of the forward's
    outputs): what its graph keeps from the end of its forward until its backward runs. None
    unless the code of exactly a forward and a backward was read."""
    if len(peaks.codes) != 2 or len(peaks.itemsizes) != 2:
        return None
    walk = wrapper_peak(peaks.codes[1], peaks.itemsizes[1])
    return walk.start_bytes if walk is not None else None


def _wants_plain_peak(cfg: RematConfig) -> bool:
    """A ratio budget refers to plain torch.compile's peak, which the backend compiles to read."""
    return cfg.memory_budget is not None and cfg.memory_budget.ratio is not None and cfg.inductor_check


def plain_compile(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> tuple[Any, int | None, int | None]:
    """Plain torch.compile of this graph (Inductor's default partitioner, both graphs compiled
    now), its peak read from the generated code and the bytes its backward receives (None if
    they cannot be read)."""
    from torch._inductor.compile_fx import compile_fx

    peaks = InductorPeaks()
    with _backward_compiled_now(), collect_wrapper_code() as peaks.codes:
        compiled = compile_fx(gm, example_inputs, config_patches={"_post_fusion_custom_pass": peaks})
    return compiled, (peaks.peak_bytes if peaks.code_peaks else None), backward_start_bytes(peaks)


def _patches(partitioner: RematPartitioner, **extra: Any) -> dict:
    """Inductor settings under a plan. Buffer reuse keeps a freed buffer allocated until a later
    same-sized allocation takes it, which can hold memory across the step's peak; the plan frees
    at last use. Peak-memory reordering counts host and device bytes alike (it pulls every
    prefetch to the start of the backward); the plan already fixes the order."""
    return {"custom_partitioner_fn": partitioner, "allow_buffer_reuse": False, "reorder_for_peak_memory": False, **extra}


def _record(comp: Compilation, reports: list[GraphReport], verbose: bool, key: tuple[int, int] | None = None) -> None:
    """Keep a graph's final report in its compilation, with the bytes it keeps under its graph
    ``key`` (``kept_bytes``, ``Compilation.graph_key``), and log its summary line."""
    for r in reports:
        if r.kept_bytes is None:  # no code read: the plan's live bytes at the end of its forward
            r.kept_bytes = r.timeline.device_bytes[r.problem.num_forward - 1] if r.problem.num_forward else 0
        comp.add(r)
        comp.keep(key, r.kept_bytes)
        log.info("%s", summary_line(r))
        if verbose:
            print(summary_line(r))


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


def surfaced(err: RematError) -> RematError:
    """``err`` as an exception that Dynamo passes through to the user's call unchanged.

    Dynamo wraps whatever a backend raises in BackendCompilerFailed, except its own
    ShortenTraceback family, which it re-raises as is (``torch/_dynamo/output_graph.py``). The
    returned error is both ``type(err)`` (so ``except remat.InfeasibleBudgetError`` catches it)
    and a ShortenTraceback, with the same message and attributes."""
    from torch._dynamo.exc import ShortenTraceback

    if isinstance(err, ShortenTraceback):
        return err
    cls = _SURFACED.get(type(err))
    if cls is None:
        cls = type(type(err).__name__, (type(err), ShortenTraceback), {"__module__": type(err).__module__})
        _SURFACED[type(err)] = cls
    out = cls.__new__(cls)
    out.__dict__.update(err.__dict__)
    out.args = err.args
    out.first_useful_frame = None
    return out


_SURFACED: dict[type, type] = {}
