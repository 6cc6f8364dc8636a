"""Extern kernels' scratch memory, predicted before the first compile.

An extern kernel (a library call: the CPU convolution and its backward, the CPU flash attention
and its backward) allocates scratch while it runs, beyond its results: conv columns, attention
backward buffers. Neither the joint graph nor Inductor's code shows it. After a compile,
``remat.inductor_check`` measures it per extern kernel of the code and the next plan adds it at
that op's slot (``KernelGroups.scratch``). Before any compile (a graph's first plan,
``remat.analyze``) this module measures the same for the joint graph's ops that Inductor runs as
extern kernels (its fallbacks, and the convolution), on the layouts Inductor gives them: the
graph's, except that a graph Inductor lays out channels-last (``decide_layout_opt``, on the CPU
any graph with a convolution) passes its convolutions channels-last inputs (``remat.layouts``).
That matters: the quick CNN's convolutions allocate 14-127 KiB of scratch channels-last and about
1 MiB each on the contiguous layouts of the joint graph. Measured once per op signature and device,
cached on disk with the op times (``remat.profile.Profiler.workspace``).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
import torch.fx as fx

from .layouts import laid_out_channels_last
from .profile import OpSignature, Profiler, signature_of, with_inputs

log = logging.getLogger("remat")

__all__ = ["extern_ops", "predicted_scratch"]


def extern_ops() -> set:
    """The ATen ops that Inductor runs as extern kernels and that may allocate scratch: its
    fallbacks and the convolution (a template or extern call); matrix products allocate none."""
    from torch._inductor.lowering import fallbacks

    return {*fallbacks, torch.ops.aten.convolution.default}


def predicted_scratch(joint: fx.GraphModule, device: torch.device | str) -> dict[str, int]:
    """Scratch bytes of each op of ``joint`` that Inductor runs as an extern kernel and that
    allocates any, by the op's name (a slot of the Problem). Ops with symbolic sizes, or that
    cannot run on random inputs, count as 0."""
    ops = extern_ops()
    channels_last = laid_out_channels_last(list(joint.graph.nodes))
    profiler = Profiler(device)
    scratch = {}
    for node in joint.graph.nodes:
        if node.op != "call_function" or node.target not in ops:
            continue
        sig = signature_of(node, seeded=True)
        if sig is None:
            continue
        if channels_last and node.target in _CONVOLUTIONS:
            sig = _channels_last_inputs(sig)
        try:
            nbytes = profiler.workspace(sig)
        except Exception as e:  # not measurable: as before, 0
            log.debug("remat: no scratch for %s (%s: %s)", node.name, type(e).__name__, e)
            continue
        if nbytes:
            scratch[node.name] = nbytes
    return scratch


_CONVOLUTIONS = (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default)


def _channels_last_inputs(sig: OpSignature) -> OpSignature:
    """``sig`` with its 4-D tensors laid out channels-last (strides N: HWC, C: 1, H: WC, W: C)."""
    def laid_out(t):
        if len(t.shape) != 4:
            return t
        _, c, _, w = t.shape
        return replace(t, stride=(t.shape[1] * t.shape[2] * w, 1, w * c, c))

    return with_inputs(sig, [laid_out(t) for t in sig.inputs]) or sig
