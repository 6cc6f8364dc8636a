"""The torch.compile backend: options -> Inductor with remat's partitioner.

``torch.compile(model, backend="remat", options={"memory_budget": "300MiB"})`` reaches
``remat_backend`` through the ``torch_dynamo_backends`` entry point. Without a budget it is plain
Inductor. With one, Inductor runs as usual but partitions the joint graph with
``RematPartitioner``: capture -> solve -> simulate (check) -> rewrite. After fusion, Inductor's
own estimate of each graph's peak (``remat.inductor_check``) is compared with the cap; when it is
over, the graph is planned again, lower by the excess.

Planning one joint graph (capture, layers, cap, solve, check) is ``remat.planning``; this module
compiles: the partitioner hook, the check loop after fusion, plain torch.compile as the reference
of a ratio budget (not over a range of sizes, where the reference is the model's) and as the
fallback when no plan's code meets the cap, and remat's errors
surfaced to the user's call as themselves. Under dynamic shapes the partitioner plans without
guards (``remat.symbolic.no_guards``), then guards the sizes where its plan fits
(``remat.symbolic.guard_fit``); code is read at the sizes planned for; and the last compile that
Dynamo's recompile limit allows warns (``warn_at_recompile_limit``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch._inductor.custom_graph_pass import CustomPartitionerFn

from ._version import __version__
from .compilation import NO_RUNS, Compilation, Runs, compilation_for
from .config import RematConfig, parse_budget
from .cost import hint
from .deferred_kernels import deferred_kernel_builds
from .errors import InfeasibleBudgetError, RematError, fmt_bytes
from .inductor_check import InductorPeaks, installed
from .kernel_groups import KernelGroups
from .passes.apply_plan import apply_plan
from .profile import machine_spec
from .ranks import decided_by_rank0
from .planning import GraphReport, _infeasible, forward_nodes, graph_label, plan_joint_graph, summary_line
from .symbolic import guard_fit, has_range, no_guards
from .wrapper_memory import collect_wrapper_code

log = logging.getLogger("remat")
_SOURCE_HASH = hashlib.sha256(
    b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.rglob("*.py")))
).hexdigest()[:16]


class _Stop(Exception):
    """Raised by an analysis-only partitioner to stop compilation after planning."""

    def __init__(self, report: GraphReport) -> None:
        super().__init__("remat analysis done")
        self.report = report


class RematPartitioner(CustomPartitionerFn):
    """Inductor's partitioner hook: plan with remat, then build forward and backward graphs.

    Each joint graph it partitions leaves its GraphReport in ``reports``; ``graph_name`` names it."""

    def __init__(self, cfg: RematConfig, analyze_only: bool = False, lower_by: int = 0, graph_name: str = "graph0",
                 plain_peak: int | None = None, kernel_groups: KernelGroups | None = None,
                 resident: int = 0, peaks: InductorPeaks | None = None, runs: Runs = NO_RUNS,
                 loss_room: int = 0) -> None:
        self.cfg = cfg
        self.loss_room = loss_room  # bytes a loss computed outside allocates after the forward (``loss_room``)
        self.runs = runs  # the graph's other runs per step (``Compilation.runs``), planned for
        self.peaks = peaks  # the check after fusion: reads a dynamic graph's code at the sizes planned for
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
        with no_guards(gm):  # planning reads sizes; a plan's rewrite holds for every size
            report, (joint, info) = plan_joint_graph(
                gm, num_fwd_outputs, static, self.cfg, self.lower_by, self.graph_name, offline=self.analyze_only,
                plain_peak=self.plain_peak, kernel_groups=self.kernel_groups, resident=self.resident,
                other_runs=(self.runs.others, self.runs.held_inputs), loss_room=self.loss_room)
        if self.analyze_only:
            raise _Stop(report)
        self.reports.append(report)
        if report.dynamic is not None:
            guard_fit(gm, report.dynamic)  # no range known: sizes past the plan's fit compile again
            if self.peaks is not None:
                self.peaks.sizes = report.dynamic.planned_at
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
        key = f"remat {__version__} {_SOURCE_HASH} {self.cfg.key()} {self.analyze_only} {self.lower_by} {self.plain_peak} {groups} {self.resident} {self.runs} {self.loss_room} {machine_spec(self.cfg.device)}"
        return hashlib.sha256(key.encode()).hexdigest()


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
        compiled = comp.counted(_compile_planned(gm, example_inputs, cfg, comp))
        warn_at_recompile_limit(comp)
        return compiled
    except Exception as e:
        err = _caused_by(e, RematError)
        if err is None:
            raise
        raise surfaced(err) from None


def warn_at_recompile_limit(comp: Compilation) -> bool:
    """Warn (logger ``remat``) when this compile is the last that Dynamo's recompile limit allows
    for its frame: a later guard failure (a new size) would run the frame eagerly, with no plan
    and over the cap. Returns whether it warned."""
    from torch._guards import CompileContext

    compile_id = CompileContext.current_compile_id()
    compiles = getattr(compile_id, "frame_compile_id", None)
    limit = torch._dynamo.config.recompile_limit
    if compiles is None or compiles + 1 < limit:
        return False
    log.warning(
        "remat: compile %d of this frame reaches torch._dynamo.config.recompile_limit (%d): a new size after "
        "this one runs eagerly, with no plan and over the memory_budget. Raise torch._dynamo.config.recompile_limit, "
        "or give the sizes a range (option dynamic_range, or torch._dynamo.mark_dynamic(x, dim, min=, max=)) so "
        "that one plan covers them; this compiled object holds %d plans (remat.reports)",
        compiles + 1, limit, len(comp.reports))
    return True


def _needs_backward(example_inputs: Sequence[Any]) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs)


def _compile_planned(gm: fx.GraphModule, example_inputs: Sequence[Any], cfg: RematConfig, comp: Compilation):
    """Compile one graph under a plan (``_compile_checked_plans``); when no plan's code meets the
    cap but plain torch.compile's does, plain torch.compile is what runs (remat never refuses a
    cap that plain Inductor meets), and the report says so. A cap is the step's: this graph is
    planned under it less what is held outside it while it runs (``_taken_off_cap``); a ratio is
    of plain torch.compile's step as far as this graph (``Compilation.plain_step_peak``)."""
    from torch._inductor.compile_fx import compile_fx

    name, key = comp.next_graph_name(), comp.graph_key()
    room = loss_room(gm, cfg.loss_outside)
    comp.graph_io(key, grad_output_bytes(gm), made_input_bytes(example_inputs))
    record = functools.partial(_record, comp, verbose=cfg.verbose, key=key,
                               unplanned_loss=outside_loss_bytes(_grad_outputs(gm)) - room)
    resident_before = comp.resident_before(key)
    plain = plain_compile(gm, example_inputs, room=room) if _wants_plain_peak(cfg, example_inputs) else None
    plain_peak = comp.plain_step_peak(key, *plain[1:]) if plain is not None else None
    resident = _taken_off_cap(cfg, resident_before, comp.outside(key).nbytes, step_reference=plain_peak is not None)
    runs = _plan_for_runs(cfg, comp, key)
    if not cfg.inductor_check:
        partitioner = RematPartitioner(cfg, graph_name=name, plain_peak=plain_peak, resident=resident, runs=runs,
                                       loss_room=room)
        compiled = compile_fx(gm, example_inputs, config_patches=_patches(partitioner))
        record(partitioner.reports)
        return compiled
    compiled, report, estimate = _compile_checked_plans(gm, example_inputs, cfg, name, plain_peak, resident, runs)
    if report is None or report.budget_bytes is None or estimate is None:
        record([report] if report is not None else [])
        return compiled
    if estimate > report.budget_bytes:
        sizes = report.dynamic.planned_at if report.dynamic is not None else None
        if sizes is None and plain is None:  # compiled once for the fallback, "min"'s comparison and the last check
            plain = plain_compile(gm, example_inputs, room=room)
        # a dynamic graph's plain code is read again at the sizes planned for (``plain`` was read at the hints)
        fallback = _plain_within(gm, example_inputs, plain if sizes is None else None, report.budget_bytes, sizes, runs,
                                 room)
        if fallback is not None:
            return _runs_plain(report, fallback, record)
        if sizes is None:
            compiled, report, estimate = _lower_of_min(gm, example_inputs, cfg, (compiled, report, estimate),
                                                       name, plain_peak, resident, runs, plain)
        if estimate > report.budget_bytes:
            _refuse_over_cap(cfg, report, estimate)
    faster = _plain_if_it_fits(gm, example_inputs, cfg, plain, report, runs)
    if faster is not None:
        return _runs_plain(report, faster, record)
    record([report])
    return compiled



def _runs_plain(report: GraphReport, plain: tuple, record):
    """Plain torch.compile's code (``plain``: compiled, its code's peak, the bytes its backward
    receives) is what runs for this graph: the report says so and is recorded."""
    report.compiled_with, report.inductor_peak_bytes, report.kept_bytes = "plain torch.compile", *plain[1:]
    record([report])
    return plain[0]


def _lower_of_min(gm, example_inputs, cfg: RematConfig, checked: tuple, name: str, plain_peak: int | None,
                  resident: int, runs: Runs, plain: tuple | None = None) -> tuple:
    """Of ``checked`` (compiled, report, code peak: a capped loop's plan over its cap) and what
    "min" compiles on this graph (its plans from the model's floor, each told the last compile's
    kernels), the one whose code peaks lower, reported under the cap asked. A capped loop plans
    from its target and the kernels of plans over it, which can leave the plan that "min" reaches,
    and reports as its cap, untried: transformers Llama (quick) measured 14.76 MiB under "min",
    and its reported cap, 14.90 MiB, given as a byte cap was refused at 16.96 MiB. ``plain``: plain
    torch.compile's (compiled, code peak, bytes its backward receives), when compiled already."""
    floor_cfg = replace(cfg, memory_budget=parse_budget("min"))
    compiled, report, estimate = _compile_checked_plans(gm, example_inputs, floor_cfg, name, plain_peak, resident, runs,
                                                        plain=plain)
    if report is None or estimate is None or estimate >= checked[2]:
        return checked
    report.budget_bytes, report.plans_made = checked[1].budget_bytes, checked[1].plans_made + report.plans_made
    return compiled, report, estimate


PLAIN_BAND = 1.5  # under a byte cap, plain torch.compile is tried when the model's store-all peak is within this factor of the cap


def _plain_if_it_fits(gm, example_inputs, cfg: RematConfig, plain: tuple | None, report: GraphReport,
                      runs: Runs = NO_RUNS):
    """Plain torch.compile (compiled, its code's peak, the bytes its backward receives) when remat's
    plan adds time and plain's code leaves the reserve free under this graph's cap: it adds none.
    The model can over-predict plain's peak (+37 % on hf_llama, where remat recomputed 11-13
    activations under caps that plain met), so under a byte cap plain is compiled to see, when the
    model's store-all peak is within ``PLAIN_BAND`` of the cap; not over a range of sizes."""
    if report.timeline.added_time <= 0 or report.dynamic is not None or cfg.memory_budget.minimum:
        return None  # "min" compared plain torch.compile already (``_lowest_of_min``)
    if plain is None and report.baseline_peak_bytes > PLAIN_BAND * report.budget_bytes:
        return None
    return _plain_within(gm, example_inputs, plain, cfg.planning_target(report.budget_bytes), runs=runs,
                         room=loss_room(gm, cfg.loss_outside))


def _plan_for_runs(cfg: RematConfig, comp: Compilation, key) -> Runs:
    """The other runs per step that graph ``key`` is planned for (``Compilation.runs``: FSDP2's
    blocks of one class and shapes run one graph). While its last run runs, the others hold what
    they keep until their backward: the planner counts that in every slot (``Problem.other_runs``)
    and trades it against recomputation, and the check loop adds it to the code's peak, by the
    compiled backward's inputs (``_compile_checked``), so a plan whose code is over with them is
    planned again lower like any other. None under "min" (each graph's floor is its own)."""
    return NO_RUNS if cfg.memory_budget.minimum else comp.runs(key)


def _taken_off_cap(cfg: RematConfig, resident: int, outside: int, step_reference: bool = False) -> int:
    """The bytes this graph's cap gives up to memory held while it runs: under a byte cap (the
    step's) all of ``resident`` (earlier graphs' kept bytes and ``outside``: buffers the step
    allocates outside the graphs, e.g. FSDP2's); under a ratio of plain torch.compile's step
    (``step_reference``, ``Compilation.plain_step_peak``) all of it too; under a ratio of this graph's own
    modelled plain peak (over a range of sizes, or ``inductor_check=False``) only ``outside``;
    under "min" nothing (each graph's floor is its own)."""
    budget = cfg.memory_budget
    if budget.minimum:
        return 0
    return resident if budget.bytes is not None or step_reference else outside


def _plain_within(gm, example_inputs, plain: tuple[Any, int | None, int | None] | None,
                  cap: int, sizes: dict[str, int] | None = None, runs: Runs = NO_RUNS,
                  room: int = 0) -> tuple[Any, int, int | None] | None:
    """Plain torch.compile (compiled now unless ``plain`` holds it) when its code's peak, with what
    its other runs per step hold (``runs``), is under ``cap``: (compiled, that peak, the bytes its
    backward receives). ``sizes``: the values of a dynamic graph's size symbols at which its code
    is read (default: their hints); ``room``: what a loss computed outside allocates (``loss_room``)."""
    if plain is None:
        plain = plain_compile(gm, example_inputs, sizes, room)
    if plain[1] is None:
        return None
    peak = plain[1] + runs.held_bytes(plain[2] or 0)
    return (plain[0], peak, plain[2]) if peak <= cap else None


def _compile_checked_plans(gm, example_inputs, cfg: RematConfig, name: str, plain_peak: int | None,
                           resident: int = 0, runs: Runs = NO_RUNS, *, plain: tuple | None = None):
    """Plan and compile, then plan again (``MAX_PLANS`` compiles in all) as the code's peak says:
    while Inductor's code leaves less than the reserve free under the cap, first with the kernels
    that Inductor generated (the model then places each kernel's ops as one), then lower by the
    excess; while it leaves more than ``RAISE_AT`` reserves free, higher by that slack (fewer
    recomputations), between the plans tried. The plan kept is the one with the least predicted
    added time among those whose code leaves the reserve free, else the one whose code peaks
    lowest. Under "min", plan again with the kernels of the last compile while that lowers the
    code's peak (the model's floor depends on them), keep the lowest, and run plain torch.compile
    instead when its code peaks lower still (``_lowest_of_min``). Each code's peak counts what a
    loss computed outside the graph allocates after its forward (``loss_room``, ``_compile_checked``).
    Returns the compiled graph, its report and its code's peak. ``resident``: what earlier graphs
    of the step keep (``plan_joint_graph``); ``runs``: the graph's other runs per step, planned
    for, and counted in each code's peak (``_compile_checked``); ``plain``: plain torch.compile's
    result when compiled already ("min" compares it)."""
    tried: list[_Compiled] = []
    room = loss_room(gm, cfg.loss_outside)
    lower_by, groups = 0, None
    while len(tried) < MAX_PLANS:
        try:
            compiled, report, estimate, kernels = _compile_checked(
                gm, example_inputs, cfg, name, lower_by, plain_peak, groups, resident, runs, room)
        except Exception as e:
            if tried and _caused_by(e, InfeasibleBudgetError):
                break  # cannot plan lower: keep the best plan so far
            raise
        # every rank goes on as rank 0's code says: one count of plans, one plan kept (remat.ranks)
        estimate, kernels = decided_by_rank0(name, lambda: (estimate, kernels), cfg.ranks,
                                             asked=f"the code's peak of plan {len(tried) + 1}")
        if report is None or estimate is None or report.budget_bytes is None:
            if not tried:
                return compiled, report, estimate
            break
        report.inductor_peak_bytes, report.plans_made = estimate, len(tried) + 1
        tried.append(_Compiled(compiled, report, estimate, kernels, lower_by, groups))
        step = _next_plan(cfg, tried)
        if step is None:
            break
        lower_by, groups = step
    kept = _kept(cfg, tried)
    if cfg.memory_budget.minimum:
        return _lowest_of_min(gm, example_inputs, cfg, kept, plain, room)
    return kept.compiled, kept.report, kept.estimate


@dataclass
class _Compiled:
    """One plan compiled by the check loop: the compiled graph, its report, its code's peak, the
    kernels Inductor generated, and what it was planned with (``lower_by``, the kernels ``groups``)."""

    compiled: Any
    report: GraphReport
    estimate: int
    kernels: KernelGroups | None
    lower_by: int
    groups: KernelGroups | None


def _next_plan(cfg: RematConfig, tried: list[_Compiled]) -> tuple[int, KernelGroups | None] | None:
    """What to plan next (``lower_by``, the kernels to plan with) after the plans ``tried``, or None
    to stop: a plan already tried, a code peak that stopped improving, a move under 1 % of the cap."""
    last = tried[-1]
    groups = last.kernels if last.kernels is not None else last.groups
    if cfg.memory_budget.minimum:
        improved = all(last.estimate < t.estimate for t in tried[:-1])
        step = (0, groups) if improved and last.kernels is not None else None
    else:
        step = _next_under_cap(cfg, tried, groups)
    if step is None or any(step[0] == t.lower_by and _same(step[1], t.groups) for t in tried):
        return None
    return step


def _next_under_cap(cfg: RematConfig, tried: list[_Compiled], groups: KernelGroups | None):
    """The next plan under a cap: over the target (the cap less the reserve), the same target with
    Inductor's kernels, then lower by the excess (and 1 % of the cap), while the code's peak
    improves on the plans made higher or some plan tried met the target (transformers GPT-2 at 75 %
    with this machine's profiled rates: both first plans' code 9 % over the model, and the loop
    went from the told plan straight to the floor's, 53 recomputations, where lowering by the
    excess was next); when it stops improving, once at the model's
    floor with the last kernels (where "min" plans: its code can be far lower). Under the target
    by more than ``RAISE_AT`` reserves, higher by the part of that slack that the model
    over-predicted (its predicted peak less the code's), while the plan recomputes something (not over a range of sizes: a
    plan there is proven at the model's cap). Slack that the model's own prediction left free is
    not raised into: the plans it knows between its prediction and its target are over the
    target (MLP quick at 75 %: the next plan is 8 MiB up; raising there compiled 3 more plans to
    keep the first). A move never passes a plan tried on the other side of the target: it goes
    halfway to it; a move under 1 % of the cap is not made. A plan made at the model's floor (over
    the target asked) is raised from that floor, and is not lowered with the same kernels (the
    model's floor, hence the plan, would be the same)."""
    last = tried[-1]
    cap = last.report.budget_bytes
    target = cfg.planning_target(cap)
    over = last.estimate - target
    at_floor = _at_model_floor(cfg, last)
    if over > 0:
        if last.groups is None and last.kernels is not None:
            return last.lower_by, groups
        met = any(t.estimate <= target for t in tried)
        higher = [t for t in tried[:-1] if t.lower_by < last.lower_by]  # told at the same target: no lowering
        if not met and any(t.estimate <= last.estimate for t in higher):
            # not improving: the model's floor once, with the last kernels ("min"'s plan), then stop
            return None if any(_at_model_floor(cfg, t) for t in tried) else (target, groups)
        if at_floor and _same(groups, last.groups):  # the same model's floor again: the same plan
            return None
        lower_by = _toward(tried, last.lower_by + over + cap // 100, cfg)
    else:
        slack = cap - last.estimate > RAISE_AT * cfg.reserve * cap
        if not slack or last.report.dynamic is not None or last.report.timeline.added_time <= 0:
            return None
        # higher than the target the plan was made at (the model's floor, when that was over the
        # target asked) by what the model over-predicted, at most the code's slack under the target
        raise_by = min(-over, last.report.timeline.peak_bytes - last.estimate)
        if raise_by < cap // 100:
            return None
        lower_by = _toward(tried, target - last.report.plan.budget_bytes - raise_by, cfg)
    return (lower_by, groups) if abs(lower_by - last.lower_by) >= cap // 100 else None


def _at_model_floor(cfg: RematConfig, t: _Compiled) -> bool:
    """Whether ``t`` was planned at the model's floor: its plan's target is over the one asked."""
    return t.report.plan.budget_bytes > cfg.planning_target(t.report.budget_bytes) - t.lower_by


def _same(a: KernelGroups | None, b: KernelGroups | None) -> bool:
    return (a.key() if a is not None else None) == (b.key() if b is not None else None)


def _toward(tried: list[_Compiled], lower_by: int, cfg: RematConfig) -> int:
    """``lower_by``, or halfway from the last plan's to the nearest plan tried beyond it on the
    other side of the target (code over it when raising, under it when lowering)."""
    last = tried[-1]
    target = cfg.planning_target(last.report.budget_bytes)
    raising = lower_by < last.lower_by
    beyond = [t.lower_by for t in tried if (t.estimate > target) == raising
              and (lower_by <= t.lower_by < last.lower_by if raising else last.lower_by < t.lower_by <= lower_by)]
    if not beyond:
        return lower_by
    nearest = max(beyond) if raising else min(beyond)
    return (last.lower_by + nearest) // 2


def _kept(cfg: RematConfig, tried: list[_Compiled]) -> _Compiled:
    """The plan to run: under a cap, the least predicted added time among the plans whose code
    leaves the reserve free, else the lowest code peak; under "min" the lowest code peak, and of
    plans whose code peaks equally the least predicted added time (the CNN's "min": a told plan
    recomputing 22 values tied the first plan's 18 and measured 8 % slower). On a tie, the later
    plan: its model saw more of Inductor's kernels."""
    if cfg.memory_budget.minimum:
        return min(reversed(tried), key=lambda t: (t.estimate, t.report.timeline.added_time))
    lowest = min(reversed(tried), key=lambda t: t.estimate)
    meets = [t for t in reversed(tried) if t.estimate <= cfg.planning_target(t.report.budget_bytes)]
    return min(meets, key=lambda t: (t.report.timeline.added_time, t.estimate)) if meets else lowest


def _lowest_of_min(gm, example_inputs, cfg: RematConfig, kept: _Compiled, plain: tuple | None = None,
                   room: int = 0):
    """"min"'s result: ``kept``, or plain torch.compile (compiled now unless ``plain`` holds it) where
    its code peaks lower (remat's floor is never above what plain Inductor allocates); the report's
    cap is that peak with the reserve (``min_cap``). ``room``: what a loss computed outside
    allocates (``loss_room``). Returns (compiled, report, its code's peak)."""
    report, compiled, estimate = kept.report, kept.compiled, kept.estimate
    sizes = report.dynamic.planned_at if report.dynamic is not None else None
    plain, plain_peak, plain_kept = plain if plain is not None else plain_compile(gm, example_inputs, sizes, room)
    if plain_peak is not None and plain_peak < estimate:
        compiled, estimate = plain, plain_peak
        report.compiled_with, report.inductor_peak_bytes, report.kept_bytes = "plain torch.compile", plain_peak, plain_kept
    report.budget_bytes = min_cap(cfg, estimate)
    return compiled, report, estimate


def min_cap(cfg: RematConfig, code_peak: int) -> int:
    """The cap that "min" reports: the smallest peak reached, as Inductor's code allocates it, with
    the reserve on top (default 1 %): the smallest cap whose target (``planning_target``) the
    code's peak meets, so that this cap given as a byte cap is met by the same plan. The code's
    peak counts what the caller holds across the backward (``step_peak``) but not scratch that
    could not be measured, so it alone is no guarantee."""
    cap = math.ceil(code_peak / (1 - cfg.reserve))
    while cfg.planning_target(cap) < code_peak:  # float rounding in the target
        cap += 1
    return cap


def _refuse_over_cap(cfg: RematConfig, report: GraphReport, estimate: int) -> None:
    """No plan's code (nor plain torch.compile's) meets the cap: the cap cannot be met, and the
    smallest peak named is the code's (``on_infeasible="min"``: run the lowest plan, with a warning)."""
    if cfg.on_infeasible != "min":
        raise _infeasible(graph_label(report), report.budget_bytes, estimate, report.resident_before_bytes,
                          report.problem.other_runs)
    log.warning("remat[%s]: memory_budget %s cannot be met; planned at the smallest peak, %s as Inductor's code "
                "allocates it, after %d plans (on_infeasible='min')", graph_label(report),
                fmt_bytes(report.budget_bytes), fmt_bytes(estimate), report.plans_made)


def _compile_checked(gm, example_inputs, cfg: RematConfig, name: str, lower_by: int, plain: int | None,
                     groups: KernelGroups | None = None, resident: int = 0, runs: Runs = NO_RUNS, room: int = 0):
    """One compile with both graphs compiled now, planned with the kernels ``groups`` of the last
    compile: (compiled, its report or None, Inductor's estimate, the kernels Inductor generated).
    Its kernels are built when it first runs (``remat.deferred_kernels``): the check reads the
    code alone, and the plans that the loop does not keep never build theirs.
    The report's ``kept_bytes`` is read from the compiled backward; the estimate is the code's
    peak, or what it keeps with ``room`` (a loss computed outside, ``loss_room``) and the outputs
    the caller holds, when higher (``step_peak``), with what the graph's other runs per step hold
    by it (``runs``, the report's ``other_runs_bytes``)."""
    from torch._inductor.compile_fx import compile_fx

    peaks = InductorPeaks()
    partitioner = RematPartitioner(cfg, lower_by=lower_by, graph_name=name, plain_peak=plain, kernel_groups=groups,
                                   resident=resident, peaks=peaks, runs=runs, loss_room=room)
    with _backward_compiled_now(), collect_wrapper_code() as peaks.codes, deferred_kernel_builds():
        compiled = compile_fx(gm, example_inputs, config_patches=_patches(partitioner, **installed(peaks)))
    report = partitioner.reports[-1] if partitioner.reports else None  # none on a cache hit
    kept = backward_start_bytes(peaks)
    estimate = step_peak(peaks, room, held_output_bytes(gm, room))
    if report is not None:
        report.kept_bytes = kept
        _warn_unsized(graph_label(report), peaks.walks)
        if runs.others and report.kept_bytes is not None and estimate is not None:
            report.other_runs_bytes = runs.held_bytes(report.kept_bytes)
            estimate += report.other_runs_bytes
    return compiled, report, estimate, peaks.kernel_groups


def _warn_unsized(label: str, walks: list | None) -> None:
    """Say when Inductor's code allocates results whose size it does not show (a data-dependent
    size): the check counts them as 0, so the peak it reads can be too low."""
    unsized = [n for w in walks or () for n in w.unsized]
    if unsized:
        log.warning("remat[%s]: Inductor's code allocates %d result(s) of a size it does not show (%s); the check "
                    "counts them as 0, so the measured peak can be over the cap", label, len(unsized),
                    ", ".join(unsized[:5]))


def backward_start_bytes(peaks: InductorPeaks) -> int | None:
    """Bytes the compiled backward receives (saved activations, gradients of the forward's
    outputs): what its graph keeps from the end of its forward until its backward runs. None
    unless the code of exactly a forward and a backward was read."""
    walks = peaks.walks
    return walks[1].start_bytes if walks is not None and len(walks) == 2 else None


def _wants_plain_peak(cfg: RematConfig, example_inputs: Sequence[Any]) -> bool:
    """A ratio budget refers to plain torch.compile's peak, which the backend compiles to read;
    not over a range of sizes, where the reference is the model's at the range's worst corner
    (plain torch.compile's code is compiled only if the fallback needs it, read at that corner)."""
    ratio = cfg.memory_budget is not None and cfg.memory_budget.ratio is not None and cfg.inductor_check
    return ratio and not has_range(example_inputs, cfg.dynamic_range)


def plain_compile(gm: fx.GraphModule, example_inputs: Sequence[Any], sizes: dict[str, int] | None = None,
                  room: int = 0) -> tuple[Any, int | None, int | None]:
    """Plain torch.compile of this graph (Inductor's default partitioner, both graphs compiled
    now), its peak read from the generated code, with ``room`` after its forward and its outputs
    held through its backward (a loss computed outside, ``step_peak``), and the bytes its backward
    receives (None if they cannot be read); a dynamic graph's code read at ``sizes`` (default: the
    hints). Its kernels are built at its first call (``deferred_kernel_builds``): only when it is
    the one run."""
    from torch._inductor.compile_fx import compile_fx

    peaks = InductorPeaks(sizes)
    with _backward_compiled_now(), collect_wrapper_code() as peaks.codes, deferred_kernel_builds():
        compiled = compile_fx(gm, example_inputs, config_patches=installed(peaks))
    peak = step_peak(peaks, room, held_output_bytes(gm, room)) if peaks.code_peaks else None
    return compiled, peak, backward_start_bytes(peaks)


def step_peak(peaks: InductorPeaks, room: int, held: int = 0) -> int | None:
    """A graph's peak in the step, read from its code (``peaks``): its code's peak, or, when higher,
    what it keeps from its forward to its backward (the bytes its compiled backward receives) with
    ``room``, what a loss computed outside allocates in between (``loss_room``), and with ``held``,
    what the caller holds until the backward ends (``held_output_bytes``: the loss, its seed
    gradient, the outputs a loss outside reads), there and beside the backward's own peak. None
    when the code was not read."""
    code_peak, kept = peaks.peak_bytes, backward_start_bytes(peaks)
    if code_peak is None or kept is None:
        return code_peak
    return max(code_peak, kept + room + held, peaks.walks[1].peak_bytes + held)


def _patches(partitioner: RematPartitioner, **extra: Any) -> dict:
    """Inductor settings under a plan. Buffer reuse keeps a freed buffer allocated until a later
    same-sized allocation takes it, which can hold memory across the step's peak; the plan frees
    at last use. Peak-memory reordering counts host and device bytes alike (it pulls every
    prefetch to the start of the backward), and the model would not know the order it picks:
    remat orders the backward for peak memory itself, before capture
    (``remat.passes.order_backward``), and Inductor keeps that order."""
    return {"custom_partitioner_fn": partitioner, "allow_buffer_reuse": False, "reorder_for_peak_memory": False, **extra}


def _record(comp: Compilation, reports: list[GraphReport], verbose: bool, key: tuple[int, int] | None = None,
            unplanned_loss: int = 0) -> None:
    """Keep a graph's final report in its compilation, with the bytes it keeps under its graph
    ``key`` (``kept_bytes``, ``Compilation.graph_key``), what its cap gave up outside it (buffers,
    its other runs per step), and log its summary line; warn when a loss computed outside from
    its outputs can exceed the cap by what was not planned for (``unplanned_loss``)."""
    for r in reports:
        if r.kept_bytes is None:  # no code read: the plan's live bytes at the end of its forward
            nf = r.problem.num_forward
            r.kept_bytes = r.timeline.device_bytes[nf - 1] - r.timeline.other_runs_bytes if nf else 0
        if r.problem.other_runs:  # by the bytes its backward receives (the plain fallback's too)
            r.other_runs_bytes = comp.more_runs_bytes(key, r.kept_bytes)
        outside, made = comp.outside(key), comp.made_inputs(key)
        inputs = f"{fmt_bytes(made)} of its inputs made earlier in the step" if made else ""
        r.outside_bytes = outside.nbytes + made
        r.outside = ", ".join(filter(None, (outside.describe(), inputs)))
        comp.plan_repeats(key, r.other_runs_bytes)
        comp.add(r)
        comp.keep(key, r.kept_bytes)
        log.info("%s", summary_line(r))
        if verbose:
            print(summary_line(r))
        _warn_loss_outside(r, unplanned_loss)


def _warn_loss_outside(r: GraphReport, unplanned: int) -> None:
    """Warn when a loss computed outside the graph from its outputs can take the step over the cap.
    Such a loss runs its forward and backward between this graph's forward and backward, while
    everything the graph keeps is live (``kept_bytes``), and allocates about two output-sized
    buffers there (``outside_loss_bytes``), of which ``unplanned`` were not planned for
    (``loss_room``: none when the graph returns a scalar that needs a gradient, or the option
    ``loss_outside`` given lower). Returns nothing; the figure is in the warning."""
    cap = r.step_cap_bytes
    if cap is None or unplanned <= 0:
        return
    excess = r.resident_before_bytes + r.other_runs_bytes + r.kept_bytes + unplanned - cap
    if excess > 0:
        log.warning("remat[%s]: if a loss is computed outside the compiled graph from its outputs, it allocates about "
                    "%s more than planned for (an output-sized intermediate and its gradient) while this graph keeps "
                    "%s and %s is held outside it: up to %s over the cap of %s. Compute the loss inside the compiled "
                    "function, or pass loss_outside=%d", graph_label(r), fmt_bytes(unplanned),
                    fmt_bytes(r.kept_bytes), fmt_bytes(r.resident_before_bytes + r.other_runs_bytes), fmt_bytes(excess),
                    fmt_bytes(cap), unplanned + r.loss_room_bytes)


def made_input_bytes(example_inputs: Sequence[Any]) -> int:
    """Bytes of a graph's inputs made earlier in the step: tensors that need a gradient and are
    no leaf (an earlier graph's or block's output; parameters and data are leaves)."""
    return sum(t.numel() * t.element_size() for t in example_inputs
               if isinstance(t, torch.Tensor) and t.requires_grad and not t.is_leaf)


def loss_room(gm: fx.GraphModule, option: str | int) -> int:
    """Bytes a loss computed outside the graph allocates between its forward and its backward,
    planned for (``option``: the config's ``loss_outside``): given, or for "auto" the
    ``outside_loss_bytes`` of its outputs that need a gradient, unless one of them is a scalar (a
    loss computed inside the graph: then none)."""
    if option != "auto":
        return option
    outputs = _grad_outputs(gm)
    return 0 if any(v.dim() == 0 for v in outputs) else outside_loss_bytes(outputs)


def held_output_bytes(gm: fx.GraphModule, room: int) -> int:
    """Bytes the caller holds through the graph's backward that its code does not show: the loss
    (``loss = f(x); loss.backward()``) and the seed gradient autograd makes for it, twice a scalar
    output's bytes (8 B for an fp32 loss: measured steps were 8 B over the code's peak without
    them); with a loss computed outside from the outputs (``room`` > 0), that loss at their widest
    element and its seed, and the non-scalar outputs that need a gradient (``out = model(x);
    loss_fn(out).backward()``), as the model keeps a graph's outputs to the step's end."""
    outputs = _grad_outputs(gm)
    held = 2 * sum(v.element_size() for v in outputs if v.dim() == 0)
    if room:
        held += 2 * max((v.element_size() for v in outputs), default=0) + _non_scalar_bytes(outputs)
    return held


def outside_loss_bytes(outputs: Sequence[torch.Tensor]) -> int:
    """What a loss computed outside from ``outputs`` allocates while the graph's saved bytes are
    live: two buffers the size of each non-scalar one (cross-entropy's log-softmax and its
    gradient), at the traced sizes under dynamic shapes."""
    return 2 * _non_scalar_bytes(outputs)


def _non_scalar_bytes(outputs: Sequence[torch.Tensor]) -> int:
    """Bytes of the non-scalar ``outputs``, at the traced sizes under dynamic shapes."""
    return sum(hint(v.numel()) * v.element_size() for v in outputs if v.dim() > 0)


def _grad_outputs(gm: fx.GraphModule) -> list[torch.Tensor]:
    """A Dynamo graph's outputs that need a gradient (what a caller's loss reads), as fake tensors."""
    outputs = gm.graph.output_node().args[0]
    values = [n.meta.get("example_value") for n in outputs if isinstance(n, fx.Node)]
    return [v for v in values if isinstance(v, torch.Tensor) and v.requires_grad]


def grad_output_bytes(gm: fx.GraphModule) -> int:
    """Bytes of a Dynamo graph's outputs that need a gradient."""
    return sum(v.numel() * v.element_size() for v in _grad_outputs(gm))


MAX_PLANS = 4  # compiles per graph in the check loop (``_compile_checked_plans``), plain torch.compile aside
RAISE_AT = 2  # plan again higher when the code's peak leaves more than this many reserves of the cap free


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
