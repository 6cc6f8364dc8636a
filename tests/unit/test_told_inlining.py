"""The told model counts only the buffers that Inductor's code allocates for recomputed values.

``rms_mm`` is ``(x * rsqrt(mean(x^2) + eps) * w @ p).sum()``, an RMSNorm feeding a matmul (x 64x32:
8 KiB). With every recomputable value recomputed, Inductor's backward computes the normalised
input ``mul = x * rsqrt`` inside two C++ functions: the one that writes ``h = mul * w`` (8 KiB,
read by the matmul that makes p's gradient) and the norm's backward (two or three scheduler
nodes), and the one that sums w's gradient. None writes it: its only buffers are ``h`` and the
mean (a reduction, 256 B). Told those kernels (the names of the FX nodes each computes), the
model must hold ``h`` and the mean, and neither ``mul`` nor ``rsqrt``: a pointwise value that
several kernels name is computed inside each (a kernel that wrote it would be the only one naming
it); the model of session 15 held ``mul`` as an 8 KiB buffer from its first kernel to its last.
"""

import torch

import remat
import remat.inductor_check as inductor_check
import remat.planning as planning
from remat.kernel_groups import KernelGroups, recompute_kernel_ids, reused_inputs, with_kernels
from remat.plan import Decision
from remat.simulate import live_intervals
from remat.wrapper_memory import collect_wrapper_code


def rms_mm(x, w, p):
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    return (h @ p).sum()


def _told():
    """(the plan's report, its problem told the kernels of its own compile)."""
    torch.manual_seed(0)
    args = (torch.randn(64, 32, requires_grad=True), torch.randn(32, requires_grad=True),
            torch.randn(32, 32, requires_grad=True))
    recorded, captures = [], []
    record, capture = inductor_check.scheduler_groups, planning.capture
    inductor_check.scheduler_groups = lambda nodes: recorded.append(record(nodes)) or recorded[-1]
    planning.capture = lambda joint, **kw: captures.append((joint, kw)) or capture(joint, **kw)
    try:
        torch._dynamo.reset()
        step = torch.compile(rms_mm, backend="remat", options={"solver": "recompute_all", "memory_budget": "1GiB"})
        with collect_wrapper_code() as codes:
            step(*args).backward()
    finally:
        inductor_check.scheduler_groups, planning.capture = record, capture
    (report,) = remat.reports(step)
    groups = KernelGroups(recorded[0], recorded[1], frozenset(reused_inputs(codes[1])))  # the plan's compile
    joint, kw = captures[0]
    return report, with_kernels(capture(joint, **{**kw, "kernel_groups": groups}).problem, groups)


def test_a_recomputed_pointwise_value_that_two_kernels_inline_is_no_buffer():
    report, told = _told()
    plan = report.plan
    assert all(plan.decisions[n] is Decision.RECOMPUTE for n in ("mean", "rsqrt", "mul", "mul_1"))
    assert len(recompute_kernel_ids(told)["mul"]) >= 2  # named by several kernels
    live = live_intervals(told, plan)
    assert live["mul"] == [] and live["rsqrt"] == []
    assert live["mul_1"] and live["mean"]  # h, read by the matmul, and the mean: the code's two buffers
