"""Where Inductor runs a kernel's ops and the ops around it, on the smallest graph that shows it:
``(((x * s1) @ w + x) * s2).sum()`` (x 256x64, w 64x64), traced as AOTAutograd's default
partition saves it. Backward slots: mul_2 5 (the gradient times the saved sum), mul_3 6 (the
gradient times s2: what both matmuls read), sum_2 7 (s2's gradient, a column sum), mm_1 8 (w's
gradient), mm_2 9 (the gradient of x * s1), mul_4 10, sum_3 11 (s1's gradient, a column sum).

Plain torch.compile with remat's Inductor settings fuses the two column sums (they share the
gradient and x) and emits the kernel where its first op was, after what it reads (mm_2), and
mm_1, which it does not read, after it (torch 2.13 ``Scheduler.topological_sort_schedule``).
"""

import pytest
import torch

from remat.capture import effective_readers, fused_values, storage_lifetimes
from remat.joint_graph import build_schedule, graph_facts, kernel_spans, slot_readers
from remat.kernel_groups import KernelGroups, scheduler_groups
from remat.wrapper_memory import collect_wrapper_code

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
