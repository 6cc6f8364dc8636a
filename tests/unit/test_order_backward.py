"""remat.passes.order_backward: the backward's order for a low peak, on the smallest graph it changes.

``linear_joint``: the joint graph of ``w @ (2 * x)`` summed. Its backward reads the saved ``2 * x``
(d x batch) only in the weight's gradient (``mm`` with it transposed). AOTAutograd's order makes the
input's gradient first (a new d x batch buffer) while ``2 * x`` is still live; the weight's gradient
first frees ``2 * x`` before that buffer is made: one d x batch buffer less at the peak.
"""

import torch

import remat
from remat.capture import capture
from remat.joint_graph import split_phases
from remat.passes.order_backward import backward_dag, bfs_order, dfs_order, lpmf_order, order_backward
from remat.planning import order_for_peak
from remat.simulate import store_all_peak

from .test_capture import BYTES_SPEC as SPEC
from .test_capture import trace_joint
BATCH, D, N = 256, 32, 4
ROW = BATCH * D * 4  # bytes of one d x batch fp32 buffer


def linear(x, w):
    return (w @ (2 * x)).sum()


def linear_joint():
    torch.manual_seed(0)
    return trace_joint(linear, torch.randn(D, BATCH, requires_grad=True), torch.randn(N, D, requires_grad=True))


def store_all(joint, fwd, n) -> int:
    return store_all_peak(capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=SPEC).problem)


def mm_order(joint, fwd) -> list[str]:
    """The backward's matmuls by what they read: "weight" (the saved 2 * x) or "input" (w)."""
    _, bwd = split_phases(list(joint.graph.nodes), fwd)
    mms = [n for n in joint.graph.nodes if n in bwd and n.target is torch.ops.aten.mm.default]
    return ["weight" if any(i.op != "placeholder" and i not in bwd for a in m.all_input_nodes
                            for i in [a, *a.all_input_nodes]) else "input" for m in mms]


def test_the_weight_gradient_first_frees_the_saved_input_before_the_input_gradient():
    joint, fwd, n = linear_joint()
    assert mm_order(joint, fwd) == ["input", "weight"]  # AOTAutograd's order
    before = store_all(joint, fwd, n)
    ordered = order_for_peak(joint, fwd, n, SPEC)
    assert ordered.chosen != "graph" and ordered.peaks["graph"] == before
    assert mm_order(joint, fwd) == ["weight", "input"]
    after = store_all(joint, fwd, n)
    assert after == ordered.peaks[ordered.chosen]
    assert before - after == ROW  # one d x batch buffer less at the peak


def test_the_reordered_joint_graph_computes_the_same_gradients():
    joint, fwd, n = linear_joint()
    primals, tangents = [torch.randn(D, BATCH), torch.randn(N, D)], [torch.ones(())]
    expected = joint(primals, tangents)
    assert order_for_peak(joint, fwd, n, SPEC).chosen != "graph"
    for got, want in zip(joint(primals, tangents), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_each_greedy_order_is_a_topological_order_of_every_backward_op():
    joint, fwd, _ = linear_joint()
    nodes = list(joint.graph.nodes)
    _, bwd = split_phases(nodes, fwd)
    dag = backward_dag(nodes, bwd)
    for order in (lpmf_order(dag), bfs_order(dag), dfs_order(dag)):
        assert sorted(order, key=dag.index.__getitem__) == dag.ops
        position = {op: k for k, op in enumerate(order)}
        assert all(position[p] < position[op] for op in order for p in dag.preds[op])


def test_lpmf_frees_the_saved_input_first():
    joint, fwd, _ = linear_joint()
    nodes = list(joint.graph.nodes)
    _, bwd = split_phases(nodes, fwd)
    mms = [n for n in lpmf_order(backward_dag(nodes, bwd)) if n.target is torch.ops.aten.mm.default]
    joint_order = [n for n in nodes if n in mms]
    assert mms == joint_order[::-1]


def test_an_order_that_saves_nothing_keeps_the_graph_as_it_is():
    joint, fwd, _ = linear_joint()
    _, bwd = split_phases(list(joint.graph.nodes), fwd)
    before = [n.name for n in joint.graph.nodes]
    ordered = order_backward(joint, bwd, lambda: 1000)  # every order scores the same
    assert ordered.chosen == "graph" and set(ordered.peaks) == {"graph", "lpmf", "bfs", "dfs"}
    assert [n.name for n in joint.graph.nodes] == before


def test_a_backward_with_side_effects_keeps_its_order():
    joint, fwd, _ = linear_joint()
    nodes = list(joint.graph.nodes)
    _, bwd = split_phases(nodes, fwd)
    grad = next(n for n in nodes if n in bwd and n.target is torch.ops.aten.mm.default)
    with joint.graph.inserting_after(grad):
        joint.graph.call_function(torch.ops.aten.copy_.default, (nodes[0], nodes[0]))
    _, bwd = split_phases(list(joint.graph.nodes), fwd)
    before = [n.name for n in joint.graph.nodes]
    scores = iter([100, 1, 1, 1])
    ordered = order_backward(joint, bwd, lambda: next(scores))
    assert ordered.chosen == "graph" and ordered.peaks == {"graph": 100}
    assert [n.name for n in joint.graph.nodes] == before


def test_inductor_keeps_the_order_the_plan_was_made_in():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(N, D))
    x = torch.randn(D, BATCH, requires_grad=True)
    step = torch.compile(lambda x: linear(x, w), backend="remat", options={"memory_budget": "1TiB"})
    step(x).backward()
    (report,) = remat.reports(step)
    assert report.problem.metadata["backward_order"] != "graph"
    # in AOTAutograd's order the saved 2 * x and the input's gradient are live at once: two buffers
    assert report.inductor_peak_bytes < 2 * ROW
    assert abs(report.inductor_peak_bytes - report.timeline.peak_bytes) <= 8  # the code's peak, as predicted


def test_an_order_that_raises_the_floor_is_not_kept():
    joint, fwd, n = linear_joint()
    _, bwd = split_phases(list(joint.graph.nodes), fwd)

    def floor_of():  # a floor that rises when the weight gradient runs first
        return 2 if mm_order(joint, fwd) == ["weight", "input"] else 1

    ordered = order_backward(joint, bwd, lambda: store_all(joint, fwd, n), floor_of)
    assert ordered.chosen == "graph" and ordered.floors["graph"] == 1 and max(ordered.floors.values()) == 2
    assert mm_order(joint, fwd) == ["input", "weight"]  # the graph's own order, put back
    assert order_for_peak(joint, fwd, n, SPEC).chosen != "graph"  # the real floors allow the order
