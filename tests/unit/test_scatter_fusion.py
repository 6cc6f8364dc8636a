"""Inductor lowers ``slice_scatter`` and ``select_scatter`` to pointwise loops (torch 2.13
``lowering.slice_scatter``: ``Pointwise.create`` over the loaders of its inputs): the pointwise
results they read are inlined, not allocated (a rotary embedding's backward)."""
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from remat.capture import fused_values
from remat.joint_graph import graph_facts


def test_a_pointwise_result_read_by_a_slice_scatter_is_fused_into_it():
    def f(x, y):
        a = x * y  # read only by the slice_scatter: inlined into its loop
        z = torch.zeros(8, 16)
        return (torch.ops.aten.slice_scatter.default(z, a, 1, 0, 8).t() @ y,)

    gm = make_fx(f, tracing_mode="fake")(torch.randn(8, 8), torch.randn(8, 8))
    g = graph_facts(gm, set(gm.graph.nodes), 1)
    assert "mul" in {v.name for v in fused_values(g)}


def test_a_pointwise_result_read_by_a_select_scatter_is_fused_into_it():
    def f(x, y):
        a = x * y
        z = torch.zeros(2, 8, 8)
        return (torch.ops.aten.select_scatter.default(z, a, 0, 1).sum(0) @ y,)

    gm = make_fx(f, tracing_mode="fake")(torch.randn(8, 8), torch.randn(8, 8))
    g = graph_facts(gm, set(gm.graph.nodes), 1)
    assert "mul" in {v.name for v in fused_values(g)}
