"""The told model runs the backward in the order in which Inductor's code ran its kernels.

``two_blocks`` is two residual blocks, ``x1 = x + (tanh(x) @ w1) * s1`` and ``x2 = x1 + (x1² @ w2 +
s2)``, with the loss ``(x2 * c).sum()`` (x 256x64: 64 KiB a value). In the FX graph the backward
runs s2's gradient (a column sum of the incoming gradient g), w2's gradient (``mm_2``, the last
reader of the saved ``x1²``), x1's gradient through the matmul (``mm_3``), then s1's gradient
(a column sum that reads g and ``mm_3``). Inductor fuses the two column sums (they share g); the
fused kernel sorts at its first op and runs what it reads first (torch 2.13
``Scheduler.topological_sort_schedule``): its code runs ``mm_3``, the sums, and only then
``mm_2``, so ``x1²`` lives across ``mm_3``'s result.
Only plain torch.compile's kernels carry their order (``remat.inductor_check._plain_order``): a
plan's order is its own, and the next plan may recompute elsewhere (transformers Llama's "min").
Within a told order, a kernel that recomputed a forward value ran where that compile's
recomputations put it, and the ops that read what it wrote ran after it: those ops run where the
FX graph has them, and the simulator's "Moved" waits a reader per the plan.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import remat
import remat.backend as backend
import remat.capture as capture_module
import remat.inductor_check as inductor_check
import remat.planning as planning
from remat.capture import (
    capture, effective_readers, emitted_schedule, fused_values, placed_by_recomputation, recomputed_in_graph_order,
    storage_lifetimes,
)
from remat.joint_graph import build_schedule, graph_facts, slot_readers
from remat.cost import DeviceSpec
from remat.kernel_groups import KernelGroups, emitted_positions, recompute_kernels, scheduler_order, with_kernels
from remat.plan import Decision
from remat.simulate import moved_readers, simulate, store_all_plan

from .test_capture import trace_joint


def two_blocks(x, w1, s1, w2, s2, c):
    x1 = x + (torch.tanh(x) @ w1) * s1
    x2 = x1 + (x1.square() @ w2 + s2)
    return (x2 * c).sum()


def _inputs():
    torch.manual_seed(0)
    n, d = 256, 64
    return (torch.randn(n, d), torch.randn(d, d, requires_grad=True), torch.randn(d, requires_grad=True),
            torch.randn(d, d, requires_grad=True), torch.randn(d, requires_grad=True), torch.randn(n, d))


def _remat_compiled(plain_order) -> tuple:
    """(the report of a store-all plan of ``two_blocks``, the kernels its compile recorded, with
    ``plain_order`` as ``inductor_check._plain_order``, its backward's wrapper code, the capture's
    arguments)."""
    made, captured = [], []

    class Recorded(inductor_check.InductorPeaks):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend, "InductorPeaks", Recorded)
        mp.setattr(inductor_check, "_plain_order", plain_order)
        capture = planning.capture
        mp.setattr(planning, "capture", lambda joint, **kw: captured.append(kw) or capture(joint, **kw))
        torch._dynamo.reset()
        step = torch.compile(two_blocks, backend="remat", options={"solver": "store_all", "memory_budget": "1GiB"})
        step(*_inputs()).backward()
    (report,) = remat.reports(step)
    assert report.plans_made == 1
    return report, made[0].kernel_groups, made[0].codes[1], captured[0]


@pytest.fixture(scope="module")
def compiled():
    """(the report of a store-all plan of ``two_blocks``, the kernels of its compile with the
    order of its code (remat turns Inductor's reorder off: the scheduler's nodes come in the
    code's order), the FX graph as traced and the capture's arguments, its backward's wrapper
    code)."""
    report, groups, code, kw = _remat_compiled(scheduler_order)
    joint, fwd, n = trace_joint(two_blocks, *_inputs())  # the FX graph's order, as traced
    return report, groups, (joint, {**kw, "forward_nodes": fwd, "num_fwd_outputs": n}), code


def _backward_calls(code: str) -> list[str]:
    """The generated kernels' and the extern kernels' calls of a wrapper's ``call``, in order."""
    body = code[code.index("def call"):].splitlines()
    return [line.strip() for line in body if line.strip().startswith(("cpp_fused", "extern_kernels"))]


def told_peak(compiled, groups: KernelGroups) -> int:
    report, _, (joint, kw), _ = compiled
    told = simulate(with_kernels(capture(joint, **{**kw, "kernel_groups": groups}).problem, groups), report.plan)
    assert told.ok
    return told.peak_bytes


def test_inductor_runs_the_fused_sums_after_the_matmul_they_read_and_before_the_one_they_do_not(compiled):
    _, groups, (joint, kw), code = compiled
    calls = _backward_calls(code)
    sums = next(k for k, c in enumerate(calls) if c.startswith("cpp_fused") and "sum" in c)
    w2_grad = next(k for k, c in enumerate(calls) if c.startswith("extern_kernels.mm") and "pow_1" in c)  # mm_2
    x1_grad = next(k for k, c in enumerate(calls) if c.startswith("extern_kernels.mm") and "primals_4" in c)  # mm_3
    assert x1_grad < sums < w2_grad  # the code's order, and the one recorded
    at = emitted_positions(groups.backward_order)
    assert at["mm_3"] < at["sum_2"] == at["sum_3"] < at["mm_2"]
    order = [u.name for u in build_schedule(graph_facts(joint, kw["forward_nodes"], kw["num_fwd_outputs"])).backward]
    assert order.index("sum_2") < order.index("mm_2") < order.index("mm_3") < order.index("sum_3")  # the FX graph's


def test_told_the_order_the_model_peaks_where_the_code_does(compiled):
    report, groups, _, _ = compiled
    code = report.inductor_peak_bytes  # the code's step peak, with the loss and its seed gradient (8 B) the caller holds
    assert abs(told_peak(compiled, groups) - code) <= 8
    # told the kernels alone, the model runs them as Inductor's scheduler does (``fused_schedule``) and
    # peaks where the code does too; in the FX graph's order as traced it misses the code by 16,380 B (torch 2.13)
    unordered = dataclasses.replace(groups, backward_order=())
    assert abs(told_peak(compiled, unordered) - code) <= 8
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(capture_module, "fused_schedule", lambda sched, kernels: sched)
        assert abs(told_peak(compiled, unordered) - code) > 8 * 1024


def _hand_ordered():
    """(graph facts, the FX graph's schedule, that schedule in a hand-made order, the fused sums'
    ops): plain data, no compile. The order runs the fused sums' kernel first and mm_2 last;
    mm_3, which the kernel reads, and mm_4 (w1's gradient, read by no op) are named by no kernel
    (as an addmm that Inductor made of an mm and an add would be)."""
    joint, fwd, n = trace_joint(two_blocks, *_inputs())
    g = graph_facts(joint, fwd, n)
    sched = build_schedule(g)
    names = [u.name for u in sched.backward]
    sums = frozenset(x for x in names if x.startswith(("sum", "add", "pow")) or x in ("mul_3", "mul_4", "mul_5"))
    rest = [frozenset({x}) for x in names if x not in sums and x not in ("mm_2", "mm_3", "mm_4")]
    return g, sched, emitted_schedule(sched, (*rest[:1], sums, *rest[1:], frozenset({"mm_2"}))), sums


def test_an_op_that_no_kernel_names_runs_just_before_its_first_reader():
    _, sched, moved, sums = _hand_ordered()
    names, new = [u.name for u in sched.backward], [u.name for u in moved.backward]
    assert sorted(new) == sorted(names)  # the same ops, each once
    assert new.index("mm_3") + 1 == min(new.index(x) for x in sums)  # just before its reader
    assert names[-1] == "mm_4" and new[-2:] == ["mm_2", "mm_4"]  # where the graph has it: after every op that has a place
    assert all(moved.slot_of[u] == sched.num_forward + k for k, u in enumerate(moved.backward))
    assert all(moved.slot_of[i] < moved.slot_of[u] for u in moved.backward for i in u.all_input_nodes if i in moved.slot_of)


def test_a_value_is_read_from_where_the_graph_has_its_first_reader():
    # pow_1 (x1²) is read by mm_2 alone, which the order runs last; the rewrite would recompute it
    # just before mm_2 in the FX graph, where Inductor runs the recomputation: before mm_3 and the
    # sums, which the graph runs after mm_2. Its first backward use is the first of those slots
    g, sched, moved, _ = _hand_ordered()
    fused = fused_values(g)
    life = storage_lifetimes(g, moved, effective_readers(g, slot_readers(g), fused), fused)
    uses = {s.name: list(f.backward_uses) for s, f in life.activations.items()}
    by = {u.name: moved.slot_of[u] for u in moved.backward}
    assert uses["pow_1"] == [by["mm_2"]]
    recomputed_in_graph_order(life, sched.backward, moved, inlined={"pow_1"})  # a kernel recomputes it where it runs
    assert {s.name: list(f.backward_uses) for s, f in life.activations.items()} == uses
    recomputed_in_graph_order(life, sched.backward, moved, inlined=set())
    after = {s.name: list(f.backward_uses) for s, f in life.activations.items()}
    assert after["pow_1"] == [by["mm_3"], by["mm_2"]]
    assert {k: v for k, v in after.items() if k != "pow_1"} == {k: v for k, v in uses.items() if k != "pow_1"}


def test_no_order_keeps_the_schedule():
    joint, fwd, n = trace_joint(two_blocks, *_inputs())
    sched = build_schedule(graph_facts(joint, fwd, n))
    assert emitted_schedule(sched, ()) is sched


def test_the_order_is_part_of_the_kernels_key():
    a = KernelGroups(backward=(frozenset({"a", "b"}),), backward_order=(frozenset({"c"}), frozenset({"a", "b"})))
    assert a.key() != dataclasses.replace(a, backward_order=a.backward_order[::-1]).key()
    assert a.key() != dataclasses.replace(a, backward_order=()).key()


def _recomputing_order(sched, sums):
    """An order whose fused sums' kernel recomputes pow_1 (x1², a forward value: the kernel names
    it) and runs first, and runs mm_2, which reads pow_1, last (as if it waited on that kernel)."""
    names = [u.name for u in sched.backward]
    rest = [frozenset({x}) for x in names if x not in sums and x not in ("mm_2", "mm_3", "mm_4")]
    kernel = sums | {"pow_1"}
    return kernel, (*rest[:1], kernel, *rest[1:], frozenset({"mm_2"}))


def test_the_ops_that_a_recomputation_placed_run_where_the_graph_has_them():
    # the sums' kernel recomputed a forward value, and mm_2 read it after that kernel: the last
    # plan's recomputation placed them, so they keep the FX graph's order (mm_3, named by no
    # kernel, follows its readers, the sums)
    _, sched, _, sums = _hand_ordered()
    _, order = _recomputing_order(sched, sums)
    placed = placed_by_recomputation(sched, emitted_positions(order))
    assert "mm_2" in placed and "mm_3" not in placed and {"sum_2", "sum_3"} <= placed
    new = [u.name for u in emitted_schedule(sched, order).backward]
    assert new.index("sum_2") < new.index("mm_2") < new.index("mm_3") < new.index("sum_3")
    assert placed_by_recomputation(sched, emitted_positions((*order[:1], sums, *order[2:]))) == set()  # none recomputed


def test_the_next_plan_stores_what_the_last_one_recomputed_and_frees_it_before_that_kernel_ends():
    # told the order above, a plan that stores pow_1 reads it at mm_2, where the graph has it,
    # before s1's gradient; a plan that recomputes it inside the sums' kernel holds mm_2 back
    # until after that kernel ("Moved")
    joint, fwd, n = trace_joint(two_blocks, *_inputs())
    _, sched, _, sums = _hand_ordered()
    kernel, order = _recomputing_order(sched, sums)
    groups = KernelGroups(backward=(kernel,), backward_order=order)
    spec = DeviceSpec("t", peak_flops=1e12, bandwidth=1e11, host_bandwidth=0.0)
    problem = with_kernels(capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=spec, kernel_groups=groups).problem,
                           groups)
    slot = {s.name: i for i, s in enumerate(problem.slots)}
    recompute = {**store_all_plan(problem), "pow_1": Decision.RECOMPUTE}
    stored, recomputed = simulate(problem, store_all_plan(problem)), simulate(problem, recompute)
    assert stored.ok and recomputed.ok
    after = max(slot[x] for x in kernel if x in slot) + 1
    assert stored.last_needs["pow_1"] == slot["mm_2"] < slot["sum_3"]
    assert moved_readers(problem, recompute, set(recomputed.needed), recompute_kernels(problem)) == {slot["mm_2"]: after}
    assert recomputed.last_needs["pow_1"] == after


def test_plain_compile_records_its_order_and_a_plan_none():
    # a plan's order is its own recomputations' (the next plan does not share it): only plain
    # torch.compile's kernels carry theirs, in the order its peak-memory pass gives them
    peaks = inductor_check.InductorPeaks()
    torch._dynamo.reset()
    with torch._inductor.config.patch(inductor_check.installed(peaks)), backend._backward_compiled_now():
        torch.compile(two_blocks)(*_inputs()).backward()
    plain = peaks.kernel_groups
    assert plain.backward_order and set().union(*plain.backward) <= set().union(*plain.backward_order)
    _, planned, _, _ = _remat_compiled(inductor_check._plain_order)
    assert planned.backward and planned.backward_order == ()
