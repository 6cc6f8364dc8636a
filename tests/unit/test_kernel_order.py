"""Where Inductor runs a kernel's ops and the ops around it, on the smallest graph that shows it:
``(((x * s1) @ w + x) * s2).sum()`` (x 256x64, w 64x64), traced as AOTAutograd's default
partition saves it. Backward slots: mul_2 5 (the gradient times the saved sum), mul_3 6 (the
gradient times s2: what both matmuls read), sum_2 7 (s2's gradient, a column sum), mm_1 8 (w's
gradient), mm_2 9 (the gradient of x * s1), mul_4 10, sum_3 11 (s1's gradient, a column sum).

1. Plain torch.compile with remat's Inductor settings fuses the two column sums (they share the
   gradient and x) and emits the kernel where its first op was, after what it reads (mm_2), and
   mm_1, which it does not read, after it (torch 2.13 ``Scheduler.topological_sort_schedule``).
2. Under remat's store-all plan the sums share nothing (the sum ``add`` is saved): s2's sum and
   mul_3 are two scheduler nodes, which the C++ backend writes into one kernel function (no
   extern kernel between them): the function allocates mul_3's buffer before it reads ``add``.
"""

import pytest
import torch

import remat
import remat.inductor_check as inductor_check
import remat.planning as planning
from remat.capture import capture, effective_readers, fused_values, storage_lifetimes
from remat.cost import tensor_bytes
from remat.joint_graph import build_schedule, graph_facts, kernel_spans, slot_readers
from remat.kernel_groups import KernelGroups, scheduler_groups, with_kernels
from remat.simulate import simulate
from remat.wrapper_memory import collect_wrapper_code, wrapper_peak

from .test_capture import trace_joint


def scaled_sums(x, w, s1, s2):
    return (((x * s1) @ w + x) * s2).sum()


def _inputs():
    torch.manual_seed(0)
    return [torch.randn(256, 64), torch.randn(64, 64, requires_grad=True), torch.randn(64, requires_grad=True),
            torch.randn(64, requires_grad=True)]


INDUCTOR_AS_UNDER_REMAT = {"allow_buffer_reuse": False, "reorder_for_peak_memory": False, "fx_graph_cache": False}


def _backward_calls(code: str) -> list[str]:
    """The kernel and extern calls of a wrapper's ``call``, in order."""
    body = code[code.index("def call"):].splitlines()
    return [line.strip() for line in body if line.strip().startswith(("cpp_fused", "extern_kernels"))]


def test_inductor_runs_the_fused_sums_before_the_weight_gradient_it_does_not_read():
    recorded = []
    record = lambda nodes: recorded.append(scheduler_groups(nodes)) or nodes  # noqa: E731
    with torch._inductor.config.patch({**INDUCTOR_AS_UNDER_REMAT, "_post_fusion_custom_pass": record}):
        with collect_wrapper_code() as codes:
            torch.compile(scaled_sums)(*_inputs()).backward()
    assert {"sum_2", "sum_3"} <= next(g for g in recorded[-1] if "sum_3" in g)
    calls = _backward_calls(codes[-1])
    fused = next(k for k, c in enumerate(calls) if c.startswith("cpp_fused") and "sum" in c)
    weight_grad = next(k for k, c in enumerate(calls) if "reinterpret_tensor(primals_1" in c or "(permute," in c)
    assert weight_grad > fused  # mm_1, before mm_2 in the graph, runs after the kernel


@pytest.fixture(scope="module")
def facts():
    joint, fwd, n = trace_joint(scaled_sums, *_inputs())
    g = graph_facts(joint, fwd, n)
    sched = build_schedule(g)
    fused = fused_values(g)
    return g, sched, fused, effective_readers(g, slot_readers(g), fused)


def test_an_op_between_a_kernels_ops_that_it_does_not_read_runs_after_it(facts):
    g, sched, fused, readers = facts
    assert [u.name for u in sched.order[sched.num_forward:]] == [
        "mul_2", "mul_3", "sum_2", "mm_1", "mm_2", "mul_4", "sum_3"]
    spans = kernel_spans(sched, KernelGroups(backward=(frozenset({"mul_2", "sum_2", "mul_4", "sum_3"}),)), g.owner)
    # mm_2 makes what the kernel reads: it runs first, at its slot; mm_1 after the kernel (slot 11,
    # the last); session 14 kept it at its slot (8)
    assert {u.name: t for u, t in spans.after.items()} == {"mm_1": 11}
    life = storage_lifetimes(g, sched, readers, fused, spans)
    by = {n.name: n for n in g.nodes}
    ends = {id(v): (a, b) for a, b, v in life.intervals}
    assert ends[id(by["mul_3"].meta["val"])] == (6, 11)  # mm_1 reads it there (was: until mm_2, 9)


def test_consecutive_cpu_kernels_are_one_kernel_and_the_told_model_peaks_as_the_code(monkeypatch):
    recorded, joints = [], []
    monkeypatch.setattr(inductor_check, "scheduler_groups", lambda nodes: recorded.append(scheduler_groups(nodes)) or recorded[-1])
    monkeypatch.setattr(planning, "capture", lambda joint, **kw: joints.append((joint, kw)) or capture(joint, **kw))
    step = torch.compile(scaled_sums, backend="remat", options={"solver": "store_all", "memory_budget": "1GiB"})
    with collect_wrapper_code() as codes:
        step(*_inputs()).backward()
    (report,) = remat.reports(step)
    kernels = KernelGroups(recorded[-2], recorded[-1])
    # s2's column sum and mul_3: two scheduler nodes, one C++ function (one call writes both)
    assert {"sum_2", "mul_3"} <= next(g for g in kernels.backward if "sum_2" in g)
    assert sum(c.startswith("cpp_fused") for c in _backward_calls(codes[-1])) == 2
    joint, kw = next(j for j in joints if "kernel_groups" in j[1])
    told = with_kernels(capture(joint, **{**kw, "kernel_groups": kernels}).problem, kernels)
    mb = tensor_bytes(torch.empty(256, 64))
    code_peak = wrapper_peak(codes[-1]).peak_bytes
    assert code_peak >= 3 * mb  # add, mul (w's gradient reads it) and mul_3's buffer at once
    # the model also counts the loss that the forward returns (4 B), which the backward's code does not hold
    assert simulate(told, report.plan).peak_bytes == code_peak + 4
