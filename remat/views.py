"""Which FX ops alias their input's memory. A module of its own because both the joint graph's
facts (``remat.joint_graph``) and the kernels read from Inductor's scheduler
(``remat.kernel_groups``, which ``joint_graph`` imports) need it."""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

aten = torch.ops.aten

# ops that Inductor treats as views though their schema does not say so
EXTRA_VIEWS = {aten._unsafe_view.default, aten.copy_.default}


def is_view(n: fx.Node) -> bool:
    """Whether ``n`` aliases its input's memory (a view op, or an element of a view's tuple)."""
    t = n.target
    if n.op != "call_function":
        return False
    if t is operator.getitem:
        return is_view(n.args[0]) if isinstance(n.args[0], fx.Node) else False
    return isinstance(t, torch._ops.OpOverload) and (t.is_view or t in EXTRA_VIEWS)
