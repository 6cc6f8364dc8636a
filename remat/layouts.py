"""Inductor's memory layouts where they cost bytes that the joint graph's fake tensors do not show.

torch 2.13 lays a graph's 2-D convolutions out channels-last when its layout optimisation is on
(``GraphLowering.decide_layout_opt``; on the CPU with mkldnn: whenever the graph holds an
``aten.convolution``). The convolution's lowering (``torch/_inductor/kernel/conv.py``) then
requires its input and its weight channels-last (``ExternKernel.require_channels_last``), so a
resident input laid out otherwise (the batch, each weight) is copied. The forward's code makes those
copies in its first kernel (``cpp_fused_0``), and the backward, which reads them for
``convolution_backward``, receives the copies in the inputs' place (``buf2`` returned where the
backward takes ``primals_8``): each copy lives from the step's start to the last read of its input.

The storages that Inductor lays out channels-last (``channels_last_storages``: the forward's that it
prefers so, ``find_nodes_prefer_channels_last``; in the backward, what ``convolution_backward``
makes from them and the loop kernels whose loads are mostly such storages) cannot always be viewed
as the graph's contiguous fake tensors are: an extern kernel that reads such a view reads a copy
(the max-pool backward's ``scatter_add`` reads ``view(indices, (512, 256))``: ``buf15 =
empty_strided_cpu((512, 256), (1, 512), torch.int64)``; ``view_copies``).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.fx as fx

from .joint_graph import GraphFacts, Schedule, compute_node, is_fusible_consumer, is_view, kernel_loads

aten = torch.ops.aten

# ops without the pointwise tag that Inductor lowers to a pointwise loop (``Pointwise.create``), by
# name: Inductor registers its prims when it is imported
_LOWERED_POINTWISE = frozenset({"prims._low_memory_max_pool_offsets_to_indices.default"})


def layout_optimized(g: GraphFacts) -> bool:
    """Whether Inductor lays the forward graph of ``g`` out channels-last: its own decision
    (``decide_layout_opt``) on the forward's placeholders and ops, as the forward graph it compiles
    holds them."""
    return laid_out_channels_last([n for n in g.nodes if n.op == "placeholder" or n in g.forward])


def laid_out_channels_last(nodes: list[fx.Node]) -> bool:
    """Inductor's own decision (``decide_layout_opt``) whether a graph of ``nodes`` is laid out
    channels-last."""
    from torch._inductor.graph import GraphLowering

    return GraphLowering.decide_layout_opt(SimpleNamespace(graph=SimpleNamespace(nodes=nodes)), is_inference=False)


def channels_last_copies(g: GraphFacts, sched: Schedule, readers: dict[fx.Node, list[fx.Node]]) -> list[tuple]:
    """Intervals (first slot, last slot, tensor) of the channels-last copies of the resident
    inputs that the forward's 2-D convolutions read (``copied_inputs``): from the step's first
    slot to the last slot op that reads the input (``readers``: storage -> its slot ops); none
    when the forward is not laid out channels-last (``layout_optimized``)."""
    if not layout_optimized(g):
        return []
    out = []
    for x in copied_inputs(g):
        last = max((sched.slot_of[u] for u in readers.get(x, ()) if u in sched.slot_of), default=0)
        out.append((0, last, x.meta["val"]))
    return out


def copied_inputs(g: GraphFacts) -> list[fx.Node]:
    """The resident inputs (the batch, weights) that a forward 2-D convolution reads as its input
    or weight and that are not laid out channels-last already, each once, in graph order."""
    found: list[fx.Node] = []
    for n in g.nodes:
        if n not in g.forward or n.target is not aten.convolution.default or n.args[1].meta["val"].dim() != 4:
            continue
        for x in n.args[:2]:
            if x in g.resident and x not in found and not _channels_last(x.meta["val"]):
                found.append(x)
    return found


def _channels_last(v: torch.Tensor) -> bool:
    return v.is_contiguous(memory_format=torch.channels_last)


def channels_last_storages(g: GraphFacts) -> set[fx.Node]:
    """The 4-D storages that Inductor's code lays out channels-last when the forward is
    (``layout_optimized``): the forward's that Inductor prefers so
    (``GraphLowering.find_nodes_prefer_channels_last`` on the forward's nodes), then, in graph
    order, each backward result of ``convolution_backward`` whose input is one of them and each
    backward loop-kernel result whose loads of its shape are mostly such storages."""
    from torch._inductor.graph import GraphLowering

    if not layout_optimized(g):
        return set()
    nodes = [n for n in g.nodes if n.op == "placeholder" or n in g.forward]
    lowering = SimpleNamespace(module=SimpleNamespace(graph=SimpleNamespace(nodes=nodes)))
    found = {n for n in GraphLowering.find_nodes_prefer_channels_last(lowering) if n in g.forward and _dense_4d(n)}
    for n in g.nodes:
        if n in g.backward and g.owner.get(n) is n and _dense_4d(n) and _made_channels_last(n, g, found):
            found.add(n)
    return found


def _dense_4d(n: fx.Node) -> bool:
    v = n.meta.get("val")
    return isinstance(v, torch.Tensor) and v.dim() == 4 and v.is_contiguous()


def _made_channels_last(n: fx.Node, g: GraphFacts, found: set[fx.Node]) -> bool:
    """Whether backward result ``n`` comes out channels-last from channels-last storages."""
    c = compute_node(n)
    if c.target is aten.convolution_backward.default:
        return g.owner.get(c.args[1]) in found
    if not (is_fusible_consumer(c) or str(c.target) in _LOWERED_POINTWISE):
        return False
    shape = n.meta["val"].shape
    loads = [g.owner.get(i) for i in kernel_loads(c, set()) if i.meta["val"].shape == shape]
    return sum(o in found for o in loads) * 2 > len(loads)


def view_copies(g: GraphFacts, sched: Schedule, laid_out: set[fx.Node]) -> list[tuple]:
    """One-slot intervals of the copies that extern kernels read in place of views of the
    channels-last storages ``laid_out`` (``channels_last_storages``) that no strides express."""
    out = []
    for t, n in enumerate(sched.order):
        if is_fusible_consumer(n):
            continue
        for i in n.all_input_nodes:
            if is_view(i) and g.owner.get(i) in laid_out and not _viewable(i, g.owner[i]):
                out.append((t, t, i.meta["val"]))
    return out


def _viewable(v: fx.Node, base: fx.Node) -> bool:
    """Whether the chain of views from channels-last ``base`` to ``v`` has strides (replayed on
    a meta tensor of ``base``'s shape laid out so)."""
    chain = []
    while v is not base:
        if not isinstance(v.target, torch._ops.OpOverload) or not isinstance(v.args[0], fx.Node):
            return True
        chain.append(v)
        v = v.args[0]
    t = torch.empty(base.meta["val"].shape, device="meta").to(memory_format=torch.channels_last)
    try:
        for u in reversed(chain):
            t = u.target(t, *u.args[1:], **u.kwargs)
    except (RuntimeError, ValueError):  # torch's refs raise ValueError: "Cannot view a tensor ..."
        return False
    return True
