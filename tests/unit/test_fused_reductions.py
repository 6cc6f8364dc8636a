"""Two backward reductions that a plan's recomputation makes Inductor fuse, on the smallest graph.

``residual``: ``r = x @ wa; o = r + (r * c0) @ wd``, loss ``(o * c1 * we[0]).sum() +
o.sum(-1).square().sum()``. The gradients of ``c1`` (a column sum that reads the residual add
``o``) and of ``c0`` (a column sum that reads ``r``) share nothing when ``o`` is stored; when a plan
recomputes ``o``, both load ``r`` and Inductor computes ``o`` and both sums in one kernel, where
the later sum runs (transformers Llama's RMSNorm weight gradients of two layers: its first plan at
"min" was 0.784 of its code's peak).
"""

import pytest
import torch
from torch._functorch import partitioners as P
from torch._functorch.aot_autograd import aot_function
from torch._inductor.decomposition import select_decomp_table

import remat.planning as planning
import remat.solvers as solvers
from remat.capture import capture, fused_values
from remat.joint_graph import build_schedule, graph_facts
from remat.kernel_groups import KernelGroups, with_kernels
from remat.plan import Decision
from remat.predicted_kernels import reductions_fused_by_plan
from remat.solvers._core import Structure
from remat.simulate import simulate
from remat.solvers.baselines import _finish

from .compile_hooks import record_compiles


def residual(x, wa, wd, c0, c1, we):
    r = x @ wa
    o = r + (r * c0) @ wd
    return (o * c1 * we[0]).sum() + o.sum(-1).square().sum()


def _inputs():
    torch.manual_seed(0)
    shapes = ((32, 32), (32, 32), (32,), (32,), (32, 32))
    return [torch.randn(256, 32)] + [torch.randn(*s, requires_grad=True) for s in shapes]


def _graph():
    """(graph facts, schedule, fused values) of ``residual``'s joint graph, Inductor's decompositions."""
    seen = {}

    def partition(joint, joint_inputs, *, num_fwd_outputs, **kw):
        seen["joint"], seen["n"] = joint, num_fwd_outputs
        return P.default_partition(joint, joint_inputs, num_fwd_outputs=num_fwd_outputs, **kw)

    aot_function(residual, fw_compiler=lambda gm, _: gm, partition_fn=partition, decompositions=select_decomp_table())(*_inputs())
    joint, n = seen["joint"], seen["n"]
    g = graph_facts(joint, set(P.classify_nodes(joint, [], n).required_fw_nodes), n)
    return g, build_schedule(g), fused_values(g)


def test_two_column_sums_fuse_only_when_the_residual_add_is_recomputed():
    g, sched, fused = _graph()
    add = next(n for n in sched.forward if n.name == "add")
    assert reductions_fused_by_plan(g, sched, fused, set()) == {}
    # the recomputed residual add is computed in the kernel of c0's gradient sum (sum_6), not c1's (sum_5)
    joins = reductions_fused_by_plan(g, sched, fused, {add})
    assert set(joins) == {add} and "sum_6" in joins[add] and "sum_5" not in joins[add]


def _recompute_only(names: set[str]):
    """A solver whose plan recomputes the activations ``names`` and stores every other one."""

    def solve(problem, budget_bytes, **kw):
        st = Structure(problem)
        dec = {a.name: Decision.RECOMPUTE if a.name in names else Decision.STORE for a in problem.activations}
        return _finish(st, dec, "recompute_only", budget_bytes, 0.0)

    return solve


def test_a_first_plan_that_recomputes_the_residual_add_counts_the_fused_kernel():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(solvers.SOLVERS, "recompute_all", _recompute_only({"add"}))
        recorded, compiled = record_compiles(mp)
        torch._dynamo.reset()
        step = torch.compile(residual, backend="remat", options={"solver": "recompute_all", "memory_budget": "1GiB"})
        step(*_inputs()).backward()
    first, code = compiled[0]
    assert first.plan.decisions["add"] is Decision.RECOMPUTE
    # Inductor fuses both sums with the recomputed add (the prediction above)
    assert any({"add", "sum_5", "sum_6"} <= k for k in recorded[1])
    # c1's gradient sum runs with c0's, after the mm that c0's reads, and its inputs live until
    # then: the plan's code peaks there (without the fused kernel the model said 164,868 B, its
    # code 169,100)
    assert code <= first.timeline.peak_bytes <= 1.03 * code


def test_told_its_kernels_the_model_runs_the_fused_sums_where_inductor_does():
    # the fused kernel also names a pointwise value that the kernel before it computes (``mul_6``):
    # taken as its own op, it made the kernel read itself through the matmuls between: nothing
    # moved, and the model ran both matmuls before ``sum_6`` (164,872 B, the code 169,100 B)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(solvers.SOLVERS, "recompute_all", _recompute_only({"add"}))
        recorded, compiled = record_compiles(mp)
        captures = []
        mp.setattr(planning, "capture", lambda joint, **kw: captures.append((joint, kw)) or capture(joint, **kw))
        torch._dynamo.reset()
        step = torch.compile(residual, backend="remat", options={"solver": "recompute_all", "memory_budget": "1GiB"})
        step(*_inputs()).backward()
    ((first, code), *_), ((joint, kw), *_) = compiled, captures
    groups = KernelGroups(recorded[0], recorded[1])
    fused = next(k for k in groups.backward if {"sum_5", "sum_6"} <= k)
    assert any(fused & k for k in groups.backward if k is not fused)
    told = capture(joint, **{**kw, "kernel_groups": groups})
    order = told.backward_order
    # Inductor's code: mm_3 (which sum_6 reads), the fused kernel, then mm_2 (which it does not)
    assert order.index("mm_3") < order.index("sum_5") < order.index("sum_6") < order.index("mm_2")
    # within 1 %: the kernels of one C++ function allocate their buffers together (900 B here)
    timeline = simulate(with_kernels(told.problem, groups), first.plan)
    assert timeline.ok and abs(timeline.peak_bytes - code) <= 0.01 * code
