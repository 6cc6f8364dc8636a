"""A first plan (no told kernels) runs the backward's predicted kernels in the order Inductor's
scheduler emits them (``remat.predicted_kernels.predicted_backward_order``): a fused kernel at its
first op, after the kernels it reads; the graph Inductor compiles keeps its own order."""

import pytest
import torch

import remat
from remat import backend, inductor_check, planning
from remat.capture import inlined_codes
from remat.joint_graph import build_schedule, graph_facts
from remat.kernel_groups import emitted_positions, scheduler_order
from remat.predicted_kernels import predicted_backward_order

from .test_capture import trace_joint
from .test_kernel_order import _inputs, two_blocks


def _compiled(emitted: bool) -> tuple:
    """(the report of a store-all plan of ``two_blocks``, the order in which its backward's code
    ran its kernels), its first plan captured in the predicted emitted order or (``emitted``
    False) in the graph's."""
    made = []

    class Recorded(inductor_check.InductorPeaks):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend, "InductorPeaks", Recorded)
        mp.setattr(inductor_check, "_plain_order", scheduler_order)  # under a plan: the code's order
        if not emitted:
            mp.setattr(planning, "predicted_emitted_order", lambda *args: ())
        torch._dynamo.reset()
        step = torch.compile(two_blocks, backend="remat", options={"solver": "store_all", "memory_budget": "1GiB"})
        step(*_inputs()).backward()
    (report,) = remat.reports(step)
    assert report.plans_made == 1
    return report, made[0].orders[1]


@pytest.fixture(scope="module")
def compiled():
    return _compiled(emitted=True), _compiled(emitted=False)


def test_the_predicted_order_is_the_codes():
    """``two_blocks``: Inductor fuses the two column sums (they share the incoming gradient); in
    the FX graph the first sum precedes both matmuls and the second follows them, so the fused
    kernel runs where the first sum was, after ``mm_3`` (which the second sum reads) and before
    ``mm_2`` (the w2 gradient); predicted from the graph alone, the kernels come in that order."""
    joint, fwd, n = trace_joint(two_blocks, *_inputs())
    g = graph_facts(joint, fwd, n)
    sched = build_schedule(g)
    graph = [u.name for u in sched.backward]
    assert graph.index("sum_2") < graph.index("mm_2") < graph.index("mm_3") < graph.index("sum_3")
    at = emitted_positions(predicted_backward_order(g, sched, set(inlined_codes(g))))
    assert at["mm_3"] < at["sum_2"] == at["sum_3"] < at["mm_2"] < at["mm_4"]


def test_the_first_plan_peaks_where_its_code_does_and_compiles_the_same_graph(compiled):
    """Planned before any compile, the store-all plan of ``two_blocks`` runs its backward in the
    order its code does and peaks where the code does (within the 8 B of the loss's seed gradient
    that the caller holds); in the FX graph's order x1² died at ``mm_2`` before ``mm_3``'s result
    was made, 16 KiB under the code. The graph handed to Inductor is the same either way."""
    (report, code_order), (in_graph_order, _) = compiled
    assert abs(report.timeline.peak_bytes - report.inductor_peak_bytes) <= 8
    assert report.inductor_peak_bytes - in_graph_order.timeline.peak_bytes > 8 * 1024
    assert report.inductor_peak_bytes == in_graph_order.inductor_peak_bytes
    assert report.backward_code == in_graph_order.backward_code
    assert report.forward_code == in_graph_order.forward_code
    at = emitted_positions(code_order)
    assert at["mm_3"] < at["sum_2"] == at["sum_3"] < at["mm_2"]
