"""Inductor runs a fused kernel's ops out of the FX graph's order; the told model does not yet.

``two_blocks`` is two residual blocks, ``x1 = x + (tanh(x) @ w1) * s1`` and ``x2 = x1 + (x1² @ w2 +
s2)``, with the loss ``(x2 * c).sum()`` (x 256x64: 64 KiB a value). In the FX graph the backward
runs s2's gradient (a column sum of the incoming gradient g), w2's gradient (``mm_2``, the last
reader of the saved ``x1²``), x1's gradient through the matmul (``mm_3``), then s1's gradient
(a column sum that reads g and ``mm_3``). Inductor fuses the two column sums (they share g); the
fused kernel sorts at its first op and runs what it reads first (torch 2.13
``Scheduler.topological_sort_schedule``): its code runs ``mm_3``, the sums, and only then
``mm_2``, so ``x1²`` lives across ``mm_3``'s result. The told model runs the FX graph's order and
predicts 48 KiB under the code (issue 8; transformers ConvNeXt's "min" plan held its weight
gradients' inputs across a depthwise convolution's backward the same way: 0.921 of its code).
Session 17 ran the told backward in the order the last compile's code ran it (and in the order
Inductor's scheduler would give the told kernels): both exact here, both raised transformers
Llama's "min" floor (the last plan's order is not the next plan's: it waited on recomputations
the next plan does not make).
"""

from __future__ import annotations

import pytest
import torch

import remat
import remat.backend as backend
import remat.inductor_check as inductor_check
import remat.planning as planning
from remat.joint_graph import build_schedule, graph_facts
from remat.kernel_groups import with_kernels
from remat.simulate import simulate


def two_blocks(x, w1, s1, w2, s2, c):
    x1 = x + (torch.tanh(x) @ w1) * s1
    x2 = x1 + (x1.square() @ w2 + s2)
    return (x2 * c).sum()


def _inputs():
    torch.manual_seed(0)
    n, d = 256, 64
    return (torch.randn(n, d), torch.randn(d, d, requires_grad=True), torch.randn(d, requires_grad=True),
            torch.randn(d, d, requires_grad=True), torch.randn(d, requires_grad=True), torch.randn(n, d))


@pytest.fixture(scope="module")
def compiled():
    """(the report of a store-all plan of ``two_blocks``, the kernels of its compile, the joint
    graph and the capture's arguments, its backward's wrapper code)."""
    made, captured = [], []

    class Recorded(inductor_check.InductorPeaks):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    capture = planning.capture
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend, "InductorPeaks", Recorded)
        mp.setattr(planning, "capture", lambda joint, **kw: captured.append((joint, kw)) or capture(joint, **kw))
        torch._dynamo.reset()
        step = torch.compile(two_blocks, backend="remat", options={"solver": "store_all", "memory_budget": "1GiB"})
        step(*_inputs()).backward()
    (report,) = remat.reports(step)
    assert report.plans_made == 1
    return report, made[0].kernel_groups, captured[0], made[0].codes[1]


def _backward_calls(code: str) -> list[str]:
    """The generated kernels' and the extern kernels' calls of a wrapper's ``call``, in order."""
    body = code[code.index("def call"):].splitlines()
    return [line.strip() for line in body if line.strip().startswith(("cpp_fused", "extern_kernels"))]


def test_inductor_runs_the_fused_sums_after_the_matmul_they_read_and_before_the_one_they_do_not(compiled):
    _, groups, (joint, kw), code = compiled
    assert {"sum_2", "sum_3"} <= next(k for k in groups.backward if "sum_3" in k)  # one kernel
    calls = _backward_calls(code)
    sums = next(k for k, c in enumerate(calls) if c.startswith("cpp_fused") and "sum" in c)
    w2_grad = next(k for k, c in enumerate(calls) if c.startswith("extern_kernels.mm") and "pow_1" in c)  # mm_2
    x1_grad = next(k for k, c in enumerate(calls) if c.startswith("extern_kernels.mm") and "primals_4" in c)  # mm_3
    assert x1_grad < sums < w2_grad
    order = [u.name for u in build_schedule(graph_facts(joint, kw["forward_nodes"], kw["num_fwd_outputs"])).backward]
    assert order.index("sum_2") < order.index("mm_2") < order.index("mm_3") < order.index("sum_3")  # the FX graph's


@pytest.mark.xfail(strict=True, reason="issue 8: the told model runs the backward in the FX graph's order (344,580 B "
                                       "vs the code's 393,736 B, torch 2.13)")
def test_told_the_kernels_the_model_peaks_where_the_code_does(compiled):
    report, groups, (joint, kw), _ = compiled
    told = simulate(with_kernels(planning.capture(joint, **{**kw, "kernel_groups": groups}).problem, groups), report.plan)
    # the code's step peak counts the loss and its seed gradient (8 B) that the caller holds
    assert abs(told.peak_bytes - report.inductor_peak_bytes) <= 8
