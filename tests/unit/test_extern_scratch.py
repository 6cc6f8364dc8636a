"""Extern kernels' scratch before the first compile (``remat.extern_scratch``)."""

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from remat.extern_scratch import extern_ops, predicted_scratch


def conv_then_mm(x, w, m):
    y = torch.ops.aten.convolution.default(x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    return torch.ops.aten.mm.default(y.flatten(1), m)


def test_a_cpu_convolution_allocates_scratch_that_a_matrix_product_does_not():
    x, w = torch.randn(3, 3, 16, 16), torch.randn(8, 3, 3, 3)
    graph = make_fx(conv_then_mm)(x, w, torch.randn(8 * 16 * 16, 4))
    scratch = predicted_scratch(graph, "cpu")
    (conv,) = [n.name for n in graph.graph.nodes if n.target == torch.ops.aten.convolution.default]
    assert scratch.get(conv, 0) > 0, scratch  # its columns, beyond the result
    assert set(scratch) == {conv}  # the mm, views and placeholders allocate none


def test_the_extern_ops_include_attention_backward_and_convolution():
    ops = extern_ops()
    assert torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default in ops
    assert torch.ops.aten.convolution_backward.default in ops
    assert torch.ops.aten.convolution.default in ops and torch.ops.aten.mm.default not in ops


def test_a_graph_inductor_lays_out_channels_last_measures_its_convolutions_so():
    from remat.profile import measure_workspace, signature_of

    x, w = torch.randn(8, 16, 32, 32), torch.randn(16, 16, 3, 3)
    graph = make_fx(conv_then_mm)(x, w, torch.randn(16 * 32 * 32, 4))
    (conv,) = [n for n in graph.graph.nodes if n.target == torch.ops.aten.convolution.default]
    contiguous = measure_workspace(signature_of(conv))
    laid_out = torch.randn(8, 32, 32, 16).permute(0, 3, 1, 2), torch.randn(16, 3, 3, 16).permute(0, 3, 1, 2)
    columns = [n for n in make_fx(conv_then_mm)(*laid_out, torch.randn(16 * 32 * 32, 4)).graph.nodes
               if n.target == torch.ops.aten.convolution.default]
    channels_last = measure_workspace(signature_of(columns[0]))
    assert channels_last != contiguous  # the layouts allocate differently (mkldnn: far less channels-last)
    assert predicted_scratch(graph, "cpu")[conv.name] == channels_last  # the CPU's layout decision
