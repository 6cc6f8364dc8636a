"""Planning one joint graph: capture -> layers -> cap -> solve -> check, and its report.

``plan_joint_graph`` is what remat's partitioner runs on each joint graph (in the backend, and
offline in ``remat.analyze``): it orders the backward ops for a low peak when Inductor's code
will be checked and the sizes are static (``order_for_peak``, ``remat.passes.order_backward``: Inductor's own reordering
is off under a plan), captures the
``Problem`` (``remat.capture``) with op times from
the ``cost_model`` option (the roofline, or measured costs from ``remat.profile``, built once per
process per device, thread count and cost model: ``graph_costs``), finds the repeated layers
(``remat.structure``), resolves the cap (``cap_and_target``: bytes, a ratio of plain
torch.compile's peak (``reference_peak``), or "min"; less what earlier graphs of the step keep),
solves it (``solve_within``) and checks the plan with the simulator (``cap_and_plan``; under
torch.distributed rank 0 runs it and every rank gets its plan: ``remat.ranks``). Under dynamic shapes
(``remat.symbolic``) a graph with a range of sizes is planned at the range's worst corner and its
plan proven over the range (``solve_over_range``); where no plan meets the cap there, the range is
split into buckets with a plan each (``split_range``); ``GraphReport.dynamic`` records it. ``GraphReport``
is the plain record of one planned graph; ``summary_line`` prints it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from dataclasses import dataclass, replace
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from .capture import Captured, capture, fused_values
from .joint_graph import build_schedule, graph_facts, split_phases
from .config import RematConfig
from .cost import hint
from .errors import InfeasibleBudgetError, fmt_bytes
from .extern_scratch import predicted_scratch
from .kernel_groups import RECOMPUTE_KERNELS, KernelGroups, with_kernels, with_scratch
from .passes.order_backward import Ordered, order_backward
from .predicted_kernels import reductions_fused_by_plan
from .plan import Decision, Plan, status_words
from .profile import machine_spec
from .ranks import agree_across_ranks
from .simulate import MemoryTimeline, check, simulate, store_all_peak, store_all_plan
from .solvers import get_solver
from .structure import with_layers
from .symbolic import (
    Box, Buckets, DynamicPlan, PeakProof, SymbolicSizes, can_split, describe_sizes, dynamic_plan, largest_fit,
    live_bytes, prove_peak, range_box, shape_env_of, worst_corner,
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
    # the index of the plan kept among those the check loop compiled (lower when the code was over the
    # cap, higher when it left slack; at most remat.backend.MAX_PLANS)
    plans_made: int = 1
    # "remat plan", or "plain torch.compile": its partition met the cap where remat's plans did not
    compiled_with: str = "remat plan"
    # what priced the ops: "roofline", "measured (N ops measured, M cached, K roofline)", or a saved profile
    cost_model: str = "roofline"
    # the peak a ratio budget is a fraction of: plain torch.compile's step as far as this graph
    # (its code's peak with what plain's earlier graphs hold; see ``reference_peak``)
    reference_peak_bytes: int | None = None
    reference: str = ""  # where it comes from: "plain torch.compile (compiled)", "... (modelled)"
    # what is held outside this graph while it runs, taken off its cap (budget_bytes is this
    # graph's share of step_cap_bytes): what the graphs compiled before it hold, ``outside``, its
    # inputs made earlier in the step and its other runs per step; 0 under "min"
    resident_before_bytes: int = 0
    # buffers the step allocates outside the graphs (remat.outside_memory): bytes and description
    outside_bytes: int = 0
    outside: str = ""
    # what this graph keeps until its backward runs (saved activations, gradients of its outputs):
    # read from its compiled backward's inputs, else the plan's live bytes at the end of forward
    kept_bytes: int | None = None
    # dynamic shapes: the sizes the plan was made for and proven over, its symbolic peak
    # (``remat.symbolic.DynamicPlan``); None when every size is static
    dynamic: DynamicPlan | None = None
    # what this graph's other runs per step hold while its last run runs (``Problem.other_runs``),
    # in the predicted peak and in ``inductor_peak_bytes``: by its compiled backward's inputs once
    # read (the backend), else by the plan (``timeline.other_runs_bytes``)
    other_runs_bytes: int = 0
    # what a loss computed outside the graph allocates between its forward and its backward,
    # planned for at the forward's last slot (``with_loss_room``; ``remat.backend.loss_room``)
    loss_room_bytes: int = 0

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
    kernel_groups: KernelGroups | None = None, resident: int = 0, other_runs: tuple[int, int] = (0, 0),
    loss_room: int = 0,
) -> tuple[GraphReport, Any]:
    """Capture the Problem of a joint graph, find its repeated layers, solve it and check the plan
    with the simulator (``lower_by``: bytes to plan below the usual target, after Inductor found
    the last plan over; ``offline``: planned by ``remat.analyze``, on fake tensors; ``plain_peak``:
    plain torch.compile's peak on this graph, read from its compiled code, when the backend has it;
    ``kernel_groups``: the kernels Inductor generated for this graph under the last plan;
    ``resident``: bytes held outside this graph while it runs, taken off its cap: what earlier
    graphs of the step keep and buffers allocated outside the graphs, see ``backend._taken_off_cap``;
    ``other_runs``: (runs of this graph per step besides the one planned, bytes each holds whatever
    the plan), ``Problem.other_runs`` and ``run_held_bytes``); ``loss_room``: bytes a loss computed
    outside allocates between the forward and the backward (``with_loss_room``)."""
    t0 = time.perf_counter()
    joint, info = _prepare_joint(joint, num_fwd_outputs, static_lifetime_input_indices)
    _refuse_meta(joint, name)
    on_cuda = _on_cuda(joint)
    costs = graph_costs(cfg, joint, on_cuda, offline)
    stats_before = replace(costs.stats) if costs is not None else None
    spec = machine_spec(cfg.device)
    # a new order only where Inductor's code is read after the plan compiles and the sizes are
    # static: it can meet fusions that the model does not see before it knows the kernels (a
    # recomputation that a moved op reads, fused with a later reader of the same input, runs that
    # op later: the MLP of tests/e2e at 70 % measured 10.5 % over its first plan's prediction); the
    # check loop plans again with them, where a plan proven over a range of sizes rests on the model
    checked = cfg.inductor_check and not offline and shape_env_of(joint) is None
    forward = forward_nodes(joint, info)
    order = order_for_peak(joint, forward, num_fwd_outputs, spec, ranks=cfg.ranks).chosen if checked else "graph"
    captured = capture(
        joint,
        forward_nodes=forward,
        num_fwd_outputs=num_fwd_outputs,
        spec=spec,
        host_bandwidth=host_bandwidth(cfg, on_cuda, costs),
        name=name,
        costs=costs,
        kernel_groups=kernel_groups,
    )
    captured.problem = problem = _with_step_context(captured.problem, joint, forward, num_fwd_outputs, kernel_groups,
                                                    loss_room, other_runs)
    problem.metadata["backward_order"] = order
    if captured.symbolic is not None:  # the step context above, kept at every size (at its bytes at the hints)
        captured.symbolic = captured.symbolic.holding(problem)
    sizes = captured.symbolic
    box, corner = planning_sizes(cfg, problem, sizes, name)
    if box is not None:  # plan at the range's worst corner; the compiled reference was read at the hint
        captured.problem = problem = sizes.problem_at(problem, corner)
        plain_peak = None
    reference, source = reference_peak(cfg, joint, captured, num_fwd_outputs, static_lifetime_input_indices, plain_peak)
    make_plan = functools.partial(cap_and_plan, cfg, captured, box, corner, reference or store_all_peak(problem),
                                  lower_by, resident, cfg.inductor_check and not offline)
    asked = plan_request(lower_by, resident, reference, kernel_groups)
    budget, plan, timeline, ranged = make_plan() if offline else agree_across_ranks(problem, make_plan, cfg.ranks, asked)
    if kernel_groups is None and checked and box is None:
        def solve_again(joined: Any) -> tuple:
            captured.problem = joined  # ``make_plan`` solves ``captured``'s problem
            return agree_across_ranks(joined, make_plan, cfg.ranks, asked)

        problem, (budget, plan, timeline, ranged) = solved_with_fused_reductions(
            problem, joint, forward, num_fwd_outputs, (budget, plan, timeline, ranged), solve_again)
        captured.problem = problem
    if ranged is not None:  # the plan's bucket of the range: its report is at the bucket's top
        box, corner = ranged.box, ranged.corner
        captured.problem = problem = sizes.problem_at(problem, corner)
    report = GraphReport(captured, plan, timeline, store_all_peak(problem), budget, time.perf_counter() - t0,
                         cost_model=cost_model_note(costs, stats_before, spec), reference_peak_bytes=reference,
                         reference=source, resident_before_bytes=resident,
                         other_runs_bytes=timeline.other_runs_bytes, loss_room_bytes=loss_room)
    if sizes is not None and budget is not None:
        report.dynamic = dynamic_plan(problem, sizes, plan, budget, box, corner, ranged and ranged.buckets)
    return report, (joint, info)


FUSED_REDUCTION_ROUNDS = 2  # a first plan's solves again, each with the reductions the last one's plan fuses


def solved_with_fused_reductions(problem: Any, joint: fx.GraphModule, forward: set, num_fwd_outputs: int,
                                 solved: tuple, solve: Callable[[Any], tuple]) -> tuple[Any, tuple]:
    """A first plan's ``problem`` and ``solved`` (budget, plan, timeline, ranged), solved again
    (``solve(problem)``, at most ``FUSED_REDUCTION_ROUNDS`` times) while its recomputations make
    Inductor fuse reductions that the problem did not know of (``with_fused_reductions``) and that
    raise its simulated peak; a fusion that costs the plan nothing keeps it (solved again at an
    unchanged peak, the Evoformer's "min" plan's code rose 9 %)."""
    for _ in range(FUSED_REDUCTION_ROUNDS):
        budget, plan, timeline, ranged = solved
        joined = with_fused_reductions(problem, joint, forward, num_fwd_outputs, plan)
        if joined is problem:
            break
        problem = joined
        again = simulate(problem, plan)
        if again.ok and again.peak_bytes <= timeline.peak_bytes:
            solved = (budget, plan, again, ranged)
            break
        solved = solve(problem)
    return problem, solved


def with_fused_reductions(problem: Any, joint: fx.GraphModule, forward: set, num_fwd_outputs: int, plan: Plan) -> Any:
    """``problem`` (a first plan's, made on the predicted kernels) where ``plan``'s recomputations
    make Inductor fuse two backward reductions (``reductions_fused_by_plan``): each value computed
    in the later one recomputed in it (``RECOMPUTE_KERNELS``: the later kernel's slots), so that
    the earlier one's reads wait for it; ``problem`` itself when that adds nothing. Its own
    solve, not the predicted kernels: the fusion needs the plan to recompute the values between
    them too (plain compile's min-cut stores transformers Llama's residual adds, and Inductor
    fuses none of its RMSNorm weight gradients)."""
    g = graph_facts(joint, forward, num_fwd_outputs)
    by_name = {n.name: n for n in g.nodes}
    recomputed = {by_name[a] for a, d in plan.decisions.items() if d is Decision.RECOMPUTE and a in by_name}
    joins = reductions_fused_by_plan(g, build_schedule(g), fused_values(g), recomputed)
    slot_of = {s.name: t for t, s in enumerate(problem.slots) if t >= problem.num_forward}
    kernels = dict(problem.metadata.get(RECOMPUTE_KERNELS, {}))
    new = {v.name: sorted(slot_of[n] for n in names if n in slot_of) for v, names in joins.items()}
    new = {name: slots for name, slots in new.items() if slots and kernels.get(name) != slots}
    if not new:
        return problem
    return replace(problem, metadata={**problem.metadata, RECOMPUTE_KERNELS: {**kernels, **new}})


def plain_compile_report(joint: fx.GraphModule, num_fwd_outputs: int, static_lifetime_input_indices: list[int] | None,
                         cfg: RematConfig, name: str = "graph0", loss_room: int = 0,
                         other_runs: tuple[int, int] = (0, 0)) -> GraphReport:
    """The model's prediction of plain torch.compile on one joint graph, before any compile: its
    backward laid out in the order plain Inductor's peak-memory pass keeps
    (``remat.plain_order.plain_backward_order``; remat's own order, ``order_for_peak``, is for its
    plans, under which that pass is off), captured, and torch's min-cut partition simulated as a
    plan (``remat.baseline``) with the broadcast copies that Inductor writes in one function with
    the kernels before them (``copies_in_runs``). ``problem.metadata["backward_order"]`` names the order,
    ``plan.info["order_estimates"]`` holds the pass's estimate of each candidate as predicted."""
    from .baseline import plain_compile_plan, plain_compile_problem
    from .plain_order import plain_backward_order

    t0 = time.perf_counter()
    joint, info = _prepare_joint(joint, num_fwd_outputs, static_lifetime_input_indices)
    forward = forward_nodes(joint, info)
    order = plain_backward_order(joint, forward, num_fwd_outputs)
    on_cuda = _on_cuda(joint)
    captured = capture(joint, forward_nodes=forward, num_fwd_outputs=num_fwd_outputs, spec=machine_spec(cfg.device),
                       host_bandwidth=host_bandwidth(cfg, on_cuda, None), name=name)
    captured.problem = _with_step_context(captured.problem, joint, forward, num_fwd_outputs, None, loss_room, other_runs)
    captured.problem.metadata["backward_order"] = order.chosen
    plan = plain_compile_plan(joint, captured, num_fwd_outputs, static_lifetime_input_indices)
    plan.info["order_estimates"] = order.estimates
    timeline = simulate(plain_compile_problem(joint, captured.problem, plan, order.copies), plan)
    return GraphReport(captured, plan, timeline, store_all_peak(captured.problem), None, time.perf_counter() - t0)


def _with_step_context(problem, joint: fx.GraphModule, forward, num_fwd_outputs: int,
                       kernel_groups: KernelGroups | None, loss_room: int, other_runs: tuple[int, int]):
    """``problem`` with what the step around its ops holds: Inductor's kernels (told, or the first
    kernel's scratch when none are known yet), a loss computed outside, bytes the caller holds,
    autograd's layout copy at the backward's end, the repeated layers and the graph's other runs."""
    held = caller_held_bytes(joint, loss_room)
    problem = (with_kernels(problem, kernel_groups) if kernel_groups is not None
               else with_scratch(problem, first_scratch(joint)))
    problem = with_loss_room(problem, loss_peak_bytes(joint, loss_room, held))
    problem = with_backward_end(with_caller_held(problem, held), layout_copy_bytes(joint, forward, num_fwd_outputs))
    return with_runs(with_layers(problem), *other_runs)


def plan_request(lower_by: int, resident: int, reference: int | None, kernel_groups: KernelGroups | None) -> str:
    """What a rank asks rank 0 to plan, beyond its Problem (``remat.ranks``: ranks must ask alike):
    the offset below the target, the bytes held outside the graph, a ratio's reference peak (when
    the budget is a ratio) and the kernels of the last compile (a digest of them)."""
    kernels = hashlib.sha256(kernel_groups.key().encode()).hexdigest()[:8] if kernel_groups is not None else "none"
    ratio = f", reference {reference} B" if reference is not None else ""
    return f"a plan {lower_by} B below the target, {resident} B held outside{ratio}, kernels {kernels}"


FLOOR_TIME_LIMIT = 10.0  # seconds for each floor ``order_for_peak`` compares


def order_for_peak(joint: fx.GraphModule, forward: set, num_fwd_outputs: int, spec: Any,
                   floor_time_limit: float = FLOOR_TIME_LIMIT, ranks: str = "local") -> Ordered:
    """Reorder the joint graph's backward ops (in place) to the candidate order with the lowest
    simulated store-all peak whose floor (the min-peak search's, which ends at a work budget, or
    at 10x ``floor_time_limit`` seconds) is not above the graph's own order's
    (``remat.passes.order_backward``; scored by capture on the roofline), so that capture, the
    solvers and the rewrite all see that order.
    Under torch.distributed with ``ranks="agree"`` (the option) rank 0 solves each floor and every
    rank takes its figure (``remat.ranks``): a search stopped by the clock can end at another
    incumbent on a busier rank, which would choose another order."""
    from .solvers import min_peak

    _, backward = split_phases(list(joint.graph.nodes), forward)

    def problem():
        return capture(joint, forward_nodes=forward, num_fwd_outputs=num_fwd_outputs, spec=spec).problem

    def floor() -> int:
        candidate = problem()
        return agree_across_ranks(candidate, lambda: min_peak(candidate, time_limit=floor_time_limit), ranks,
                                  asked="the floor of a backward order")

    return order_backward(joint, backward, lambda: store_all_peak(problem()), floor)


def first_scratch(joint: fx.GraphModule) -> dict[str, int]:
    """Extern kernels' scratch by op name for a plan made before any compile (later plans take the
    scratch measured in the last compile's kernels, ``KernelGroups.scratch``); none where it
    cannot be measured (``remat.extern_scratch``)."""
    try:
        return predicted_scratch(joint, _graph_device(joint))
    except Exception as e:
        log.debug("remat: no extern scratch before the first compile (%s: %s)", type(e).__name__, e)
        return {}


def with_loss_room(problem: Any, room: int) -> Any:
    """``problem`` with ``room`` more bytes live at its forward's last slot: a loss computed outside
    the graph runs after the forward, while everything the plan keeps is live (the slot holds that
    and the last op's inputs; a little more than the graph keeps, the safe side)."""
    last = problem.num_forward - 1
    if not room or last < 0:
        return problem
    return with_scratch(problem, {problem.slots[last].name: room})


def loss_peak_bytes(joint: fx.GraphModule, loss_room: int, held: int) -> int:
    """What a loss computed outside the graph (``loss_room`` > 0) holds at its peak, between the
    graph's forward and backward: ``loss_room`` (its output-sized intermediate and that one's
    gradient), the gradients of the graph's outputs it has just made (the backward's non-scalar
    tangents) and the loss with its seed (``held``, ``caller_held_bytes``). The code's step peak
    counts the same (``remat.backend.step_peak``: the tangents are among the bytes the backward
    receives). 0 without a loss outside."""
    if not loss_room:
        return 0
    return loss_room + held + sum(hint(t.numel()) * t.element_size() for t in _tangents(joint) if t.dim() > 0)


def with_caller_held(problem: Any, held: int) -> Any:
    """``problem`` with ``held`` more bytes at every backward slot: what the caller holds through
    the backward beside the graph's own values (``caller_held_bytes``)."""
    return with_scratch(problem, {s.name: held for s in problem.slots[problem.num_forward:]} if held else {})


def caller_held_bytes(joint: fx.GraphModule, loss_room: int) -> int:
    """Bytes the caller holds through a joint graph's backward that the graph does not show:
    autograd's seed gradient of each scalar output (the loss; the compiled backward takes a copy of
    it as its tangent, which the graph shows) and, with a loss computed outside (``loss_room`` > 0),
    that loss and its seed, at the tangents' widest element. The step's peak read from the code
    counts them too (``remat.backend.held_output_bytes``)."""
    tangents = _tangents(joint)
    seeds = sum(t.element_size() for t in tangents if t.dim() == 0)
    outside = 2 * max((t.element_size() for t in tangents), default=0) if loss_room else 0
    return seeds + outside


def layout_copy_bytes(joint: fx.GraphModule, forward: set, num_fwd_outputs: int) -> int:
    """Bytes autograd allocates right after the backward returns: where Inductor lays the forward
    out channels-last (``remat.layouts.laid_out_channels_last``), the backward returns each 2-D
    convolution weight's gradient channels-last and AccumulateGrad copies it into the weight's
    strides while the returned one lives, one at a time: the largest such weight that gets a
    gradient. The code's reading counts the same copy
    (``remat.wrapper_memory.gradient_layout_copy_bytes``)."""
    from torch._functorch.partitioners import _is_primal

    from .layouts import laid_out_channels_last

    nodes = [n for n in joint.graph.nodes if n.op == "placeholder" or n in forward]
    if not laid_out_channels_last(nodes):
        return 0
    primals = [n for n in joint.graph.find_nodes(op="placeholder") if _is_primal(n)]
    grads = list(joint.graph.output_node().args[0])[num_fwd_outputs:]
    with_grad = {p for p, g in zip(primals, grads) if g is not None} if len(grads) == len(primals) else set()
    weights = {n.args[1] for n in forward if n.target is torch.ops.aten.convolution.default}
    return max((hint(w.meta["val"].numel()) * w.meta["val"].element_size() for w in weights & with_grad
                if w.meta["val"].dim() == 4 and not w.meta["val"].is_contiguous(memory_format=torch.channels_last)),
               default=0)


def with_backward_end(problem: Any, copy: int) -> Any:
    """``problem`` with ``copy`` more bytes at its last slot (``layout_copy_bytes``)."""
    return with_scratch(problem, {problem.slots[-1].name: copy}) if copy and problem.slots else problem


def _tangents(joint: fx.GraphModule) -> list[torch.Tensor]:
    """The joint graph's tangents (the gradients of its forward's outputs), as fake tensors."""
    from torch._functorch.partitioners import _is_tangent

    return [n.meta["val"] for n in joint.graph.find_nodes(op="placeholder")
            if _is_tangent(n) and isinstance(n.meta.get("val"), torch.Tensor)]


def with_runs(problem: Any, others: int, held: int) -> Any:
    """``problem`` with ``others`` other runs per step, each holding ``held`` bytes whatever the plan
    and what the plan stores (``Problem.other_runs``, ``run_held_bytes``)."""
    return replace(problem, other_runs=others, run_held_bytes=held) if others else problem


def planning_sizes(cfg: RematConfig, problem: Any, sizes: SymbolicSizes | None, name: str) -> tuple[Box | None, dict]:
    """The range that a dynamic-shape graph is planned over (``remat.symbolic.range_box``; None:
    no range known) and the sizes to plan at: the range's worst corner, else the sizes traced.
    (None, {}) for a static graph."""
    if sizes is None:
        return None, {}
    box = range_box(sizes, cfg.dynamic_range, name)
    return box, worst_corner(problem, sizes, box) if box is not None else dict(sizes.hints)


@dataclass(frozen=True)
class RangePlan:
    """Where a plan over a range of sizes holds: ``box``, the range or the plan's bucket of it;
    ``corner``, the sizes it was made at; ``buckets``, the split (None: one plan covers the range)."""

    box: Box
    corner: dict
    buckets: Buckets | None = None


def cap_and_plan(cfg: RematConfig, captured: Captured, box: Box | None, corner: dict, reference: int, lower_by: int,
                 resident: int, checked_later: bool) -> tuple[int | None, Plan, MemoryTimeline, RangePlan | None]:
    """The cap, a plan under it and its simulated timeline, and under dynamic shapes with a range
    (``box``, planned at ``corner``) where the plan holds: what rank 0 makes for every rank under
    torch.distributed (``remat.ranks``)."""
    problem = captured.problem
    budget, target = cap_and_target(cfg, problem, reference, lower_by, resident)
    if box is None:
        plan, target = solve_within(cfg, problem, budget, target, checked_later=checked_later, resident=resident)
        return budget, plan, check(problem, plan, target), None
    plan, target, ranged = solve_over_range(cfg, captured, box, corner, budget, target, resident)
    return budget, plan, check(captured.symbolic.problem_at(problem, ranged.corner), plan, target), ranged


def solve_over_range(cfg: RematConfig, captured: Captured, box: Box, corner: dict, budget: int | None,
                     target: int | None, resident: int = 0) -> tuple[Plan, int | None, RangePlan]:
    """Plan a dynamic-shape graph at its range's worst corner (``captured.problem`` holds the
    bytes there) and prove the plan's peak <= the cap over the whole range (``box``). Where no
    plan meets the cap at that corner, plan the bucket of the range that holds the size traced
    (``solve_in_bucket``). A plan that does not hold over its sizes raises InfeasibleBudgetError
    (``on_infeasible="min"``: plan at the corner's floor, with a warning)."""
    try:
        plan, target = solve_within(cfg, captured.problem, budget, target, resident=resident)
    except InfeasibleBudgetError as e:
        return solve_in_bucket(cfg, captured, box, corner, budget, target, resident, e.min_peak_bytes)
    _prove_or_raise(cfg, captured, plan, budget, box, resident)
    return plan, target, RangePlan(box, corner)


def _prove_or_raise(cfg: RematConfig, captured: Captured, plan: Plan, budget: int | None, box: Box,
                    resident: int) -> None:
    """Raise InfeasibleBudgetError when ``plan``'s peak is over the cap somewhere in ``box``."""
    if budget is None:
        return
    problem, sizes = captured.problem, captured.symbolic
    proof = prove_peak(live_bytes(problem, sizes, plan), budget, box, split_symbol(box))
    if not proof.holds and cfg.on_infeasible != "min":
        raise _infeasible_over_range(problem.name, budget, proof.peak_bytes, proof, sizes, resident)


def split_symbol(box: Box) -> Any:
    """The size symbol that a range is split along and errors name: the first ranged one by name."""
    ranged = [s for s, (lo, hi) in box.items() if lo < hi]
    return min(ranged or box, key=str)


def solve_in_bucket(cfg: RematConfig, captured: Captured, box: Box, corner: dict, budget: int, target: int | None,
                    resident: int, floor: int) -> tuple[Plan, int | None, RangePlan]:
    """No plan meets the cap at the range's worst corner (``floor``: the smallest peak there):
    split the range (``split_range``) and plan the bucket that holds the size traced, at the
    bucket's top. Raise InfeasibleBudgetError naming the largest size that fits when the size
    traced is above every bucket, or when Dynamo allows no split (a mark_dynamic min/max range)."""
    problem, sizes = captured.problem, captured.symbolic
    symbol = split_symbol(box)
    floor_plan = _solver(cfg)(problem, floor, time_limit=cfg.time_limit, gap=cfg.gap)
    proof = prove_peak(live_bytes(problem, sizes, floor_plan), budget, box, symbol)
    splits = proof.largest_fit is not None and can_split(sizes, symbol)
    buckets = split_range(cfg, captured, box, corner, symbol, budget, proof.largest_fit) if splits else None
    index = buckets.index_of(sizes.hints[symbol]) if buckets is not None else None
    if index is None:
        raise _infeasible_over_range(problem.name, budget, floor, proof, sizes, resident, buckets)
    log.warning("remat[%s]: memory_budget %s is met only up to %s=%d of %s: buckets %s (a larger size raises "
                "InfeasibleBudgetError when it compiles)", problem.name, fmt_bytes(budget), symbol, buckets.fits_up_to,
                describe_sizes({str(s): r for s, r in box.items()}, {}), buckets.describe())
    lo, hi = buckets.bounds[index]
    bucket, at = {**box, symbol: (lo, hi)}, {**corner, symbol: hi}
    bucket_captured = replace(captured, problem=sizes.problem_at(problem, at))
    plan, target = solve_within(cfg, bucket_captured.problem, budget, target, resident=resident)
    _prove_or_raise(cfg, bucket_captured, plan, budget, bucket, resident)
    return plan, target, RangePlan(bucket, at, buckets)


REFINE = 3  # solves that try to raise the largest fitting size of a split range past the floor plan's


def split_range(cfg: RematConfig, captured: Captured, box: Box, corner: dict, symbol: Any, budget: int,
                fits: int) -> Buckets:
    """The buckets of ``symbol``'s range where its top fits no plan: the sizes up to the largest
    that a plan fits (``fits``: where the floor plan of the top fits; raised while a plan made at
    the next size fits further, at most REFINE solves), split where storing every activation stops
    leaving the reserve free (the sizes below need no recomputation: their plan adds no time).
    The split depends on the range and the cap only, so every compile of the graph agrees."""
    problem, sizes = captured.problem, captured.symbolic
    lo, hi = box[symbol]
    exact = False
    for _ in range(REFINE):
        at = sizes.problem_at(problem, {**corner, symbol: fits + 1})
        try:
            plan, _ = solve_within(cfg, at, budget, cfg.planning_target(budget))
        except InfeasibleBudgetError as e:
            exact = getattr(e, "proven", True)
            break
        further = largest_fit(live_bytes(at, sizes, plan), budget, box, symbol)
        if further is None or further <= fits:
            break
        fits = further
    free = largest_fit(live_bytes(problem, sizes, store_all_plan(problem)), cfg.planning_target(budget),
                       {**box, symbol: (lo, fits)}, symbol)
    bounds = ((lo, free), (free + 1, fits)) if free is not None and free < fits else ((lo, fits),)
    return Buckets(symbol, bounds, hi, exact)


def _infeasible_over_range(graph: str, budget: int, floor: int, proof: PeakProof, sizes: SymbolicSizes,
                           resident: int, buckets: Buckets | None = None) -> InfeasibleBudgetError:
    """The error for a cap that no plan meets over a range of sizes: names the largest size that
    fits, and with ``buckets`` (the size traced is above them) the sizes that have plans."""
    ranges = {str(s): r for s, r in proof.box.items()}
    worst = ", ".join(f"{s}={v}" for s, v in proof.worst.items())
    largest = buckets.fits_up_to if buckets is not None else proof.largest_fit
    found = "" if buckets is None or buckets.exact else " remat found"  # K + 1 not proven infeasible
    fit = (f"the largest {proof.symbol}{found} that fits is {largest}" if largest is not None
           else f"not even {proof.symbol}={proof.box[proof.symbol][0]} fits")
    if buckets is not None:
        fit += (f"; {proof.symbol}={sizes.hints[proof.symbol]} was traced, and only the sizes up to {largest} "
                f"have plans (buckets {buckets.describe()})")
    elif largest is not None and not can_split(sizes, proof.symbol):
        fit += (" (a range with mark_dynamic's min/max, as remat.analyze traces too, is one graph to Dynamo, "
                "so remat cannot split it into buckets; under torch.compile the dynamic_range option, without "
                "mark_dynamic's bounds, lets remat split it)")
    step = f" (the step's cap less {fmt_bytes(resident)} held outside the graph while it runs)" if resident else ""
    return InfeasibleBudgetError(budget + resident, floor + resident, largest_fit=largest, detail=(
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


def cost_model_note(costs: MeasuredCosts | None, before: ProfileStats | None, spec: Any = None) -> str:
    """What priced one graph, for its report: "roofline" (with this machine's profiled rates when
    ``spec`` has them), or the source of the measured costs with the op lookups this graph made
    (measured now, from the cache, left to the roofline)."""
    if costs is None or before is None:
        profiled = spec is not None and spec.rates != "constants"
        return f"roofline ({spec.rates_note()})" if profiled else "roofline"
    s = costs.stats
    measured, cached, fallbacks = s.measured - before.measured, s.cache_hits - before.cache_hits, s.fallbacks - before.fallbacks
    if costs.source == "measured":
        return f"measured ({measured} ops measured, {cached} cached, {fallbacks} roofline)"
    return f"{costs.source} ({cached} ops from the profile, {fallbacks} roofline)"


def _prepare_joint(joint: fx.GraphModule, num_fwd_outputs: int, static: list[int] | None) -> tuple[fx.GraphModule, Any]:
    """torch's own clean-up of a joint graph before partitioning; each training dropout rewritten
    to replay the generator state saved before it (``rng_replay.replay_in_joint``, in place: the
    rewrite pass finds it in ``joint``); the node classification (the ops of that rewrite are
    forward ops there: tagged as seeded, the forward's extraction keeps them even when only
    backward reads them, as a mask)."""
    from torch._functorch import partitioners as P

    from .passes import rng_replay

    joint.graph.eliminate_dead_code()
    joint.recompile()
    if P.has_recomputable_ops(joint):
        joint = P.cleanup_recompute_tags(joint, is_default_partition=False)
    P.force_save_collectives(joint)
    P.force_save_effectful_ops(joint)
    P.force_save_bw_mutation_src(joint)
    rng_replay.replay_in_joint(joint)
    return joint, P.classify_nodes(joint, static or [], num_fwd_outputs)


def _refuse_meta(joint: fx.GraphModule, name: str) -> None:
    """A step on the meta device allocates nothing that remat could plan: say so."""
    from .errors import ConfigError

    if any(isinstance(v := n.meta.get("val"), torch.Tensor) and v.device.type == "meta"
           for n in joint.graph.find_nodes(op="placeholder")):
        raise ConfigError(
            f"graph {name}: the model or its inputs are on the meta device, where a step allocates no "
            "memory to plan; trace on a real device, or on fake tensors (torch._subclasses.FakeTensorMode)")


def cap_and_target(cfg: RematConfig, problem: Any, baseline: int, lower_by: int,
                   resident: int = 0) -> tuple[int | None, int | None]:
    """The cap in bytes (None: no cap) and the peak that plans aim for (the cap less the reserve,
    less ``lower_by``). ``memory_budget="min"`` caps at the smallest peak that any plan reaches.
    The cap is taken less ``resident``, what is held outside this graph while it runs."""
    budget = cfg.memory_budget
    if budget is None:
        return None, None
    if budget.minimum:
        from .solvers.ilp import SAFETY_CAP, min_peak_search

        search = min_peak_search(problem, time_limit=cfg.time_limit)
        if search.timed_out:
            log.warning("remat[%s]: the search for the smallest peak was stopped by the clock before its work "
                        "budget (at %dx time_limit=%s s); on a less busy machine it can reach a lower floor: "
                        "raise time_limit", problem.name, SAFETY_CAP, cfg.time_limit)
        return search.peak, search.peak - lower_by
    cap = budget.resolve(baseline) - resident
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
            cap = budget if budget is not None else target
            raise _infeasible(problem.name, cap, floor, resident, problem.other_runs) from None
        if over_cap and not checked_later:
            log.warning("remat[%s]: memory_budget %s cannot be met; planning at the smallest peak, %s "
                        "(on_infeasible='min')", problem.name, fmt_bytes(budget), fmt_bytes(floor))
        plan = solve(problem, floor, time_limit=cfg.time_limit, gap=cfg.gap)
        if over_cap:
            plan.info["model_floor"] = floor
        return plan, floor


def _infeasible(graph: str, budget: int, floor: int, resident: int = 0, other_runs: int = 0) -> InfeasibleBudgetError:
    """The error for a cap below the floor: names the graph, the option and what to do. With
    ``resident`` (what is held outside the graph while it runs: what earlier graphs of the step
    keep, buffers outside the graphs, its inputs made earlier; ``budget`` is this graph's share)
    it names the step's cap and the smallest cap for the whole step. ``other_runs``: the floor
    counts what that many other runs of the graph per step hold (``Problem.other_runs``)."""
    what_to_do = "or pass memory_budget='min' (plan at the smallest peak) or on_infeasible='min'"
    runs = f" with what its {other_runs} other runs per step hold until their backward" if other_runs else ""
    needs = f"{graph} needs {fmt_bytes(floor)}{runs}"
    if not resident:
        return InfeasibleBudgetError(budget, floor, detail=(
            f"graph {graph}{runs}; raise memory_budget to at least {fmt_bytes(floor)}, {what_to_do}"))
    step_floor = resident + floor
    return InfeasibleBudgetError(budget + resident, step_floor, detail=(
        f"{needs}; {fmt_bytes(resident)} is held outside it while it runs (what earlier "
        f"graphs of the step keep until their backward, buffers allocated outside the graphs, its inputs made "
        f"earlier in the step); the smallest cap for the whole step is "
        f"{fmt_bytes(resident)} + {fmt_bytes(floor)} = {fmt_bytes(step_floor)}: raise memory_budget to at least "
        f"that, {what_to_do}"))


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


def _held_outside(r: GraphReport) -> str:
    """What a graph's cap gave up: e.g. "1.50 MiB kept by earlier graphs, 0.32 MiB FSDP2 buffers (...)"."""
    from .errors import fmt_bytes

    kept = r.resident_before_bytes - r.outside_bytes
    parts = [f"{fmt_bytes(kept)} kept by earlier graphs"] if kept > 0 else []
    return ", ".join(parts + ([r.outside] if r.outside else []))


def summary_line(r: GraphReport) -> str:
    from .errors import fmt_bytes

    p = r.plan
    counts = ", ".join(f"{len(p.names(d))} {d.value}" for d in Decision)
    cap = fmt_bytes(r.budget_bytes) if r.budget_bytes is not None else "none"
    if r.resident_before_bytes and r.budget_bytes is not None:
        cap += f" (step cap {fmt_bytes(r.step_cap_bytes)} less {_held_outside(r)})"
    runs = r.problem.other_runs
    held = f" with {runs} more runs of this graph per step holding {fmt_bytes(r.other_runs_bytes)}" if runs else ""
    if r.loss_room_bytes:
        held += f" (with {fmt_bytes(r.loss_room_bytes)} after its forward for a loss computed outside)"
    return (
        f"remat[{r.problem.name}]: baseline {fmt_bytes(r.baseline_peak_bytes)}, cap {cap}, "
        f"predicted {fmt_bytes(r.timeline.peak_bytes)}{held}; {counts}; +{r.plan.objective * 1e3:.2f} ms, "
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
    bucket = ""
    if d.buckets is not None:
        index = d.buckets.index_of(d.planned_at[str(d.buckets.symbol)])
        bucket = f"; bucket {index + 1} of {len(d.buckets.bounds)} (buckets {d.buckets.describe()})"
    return (f"; dynamic: {describe_sizes(d.ranges, d.sources)}, planned at {planned}, peak {d.peak_formula} bytes "
            f"<= {fmt_bytes(d.proof.peak_bytes)} over the range{up_to}{bucket}")


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
