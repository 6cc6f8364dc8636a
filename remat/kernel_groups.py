"""Inductor's kernels as groups of joint-graph ops: what the model learns from the last compile.

A kernel that Inductor generates for several ops (a fused kernel) allocates every buffer that its
ops produce before it runs and frees the buffers that they read only after it, however the same
ops would run one by one. Inductor decides that after the plan; the check of the plan
(``remat.inductor_check.InductorPeaks``) records each graph's kernels, as the names of the FX
nodes that each kernel computes, and the next plan's capture (``remat.capture``) places each group
of ops at once: its buffers from the group's first slot, what it reads until its last.

The names are the joint graph's: the forward and backward graphs that remat hands to Inductor keep
the joint nodes' names, recomputed ops included. Names that Inductor's own passes made (an
``addmm`` from an ``mm`` and an ``add``) match no joint node and are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KernelGroups", "scheduler_groups"]


@dataclass(frozen=True)
class KernelGroups:
    """The ops of each generated (non-extern) kernel of one compiled joint graph, per phase."""

    forward: tuple[frozenset[str], ...] = ()
    backward: tuple[frozenset[str], ...] = ()

    def key(self) -> str:
        """A stable text of the groups, for cache keys."""
        phases = (self.forward, self.backward)
        return "|".join(";".join(sorted(",".join(sorted(g)) for g in groups)) for groups in phases)


def scheduler_groups(nodes: list) -> tuple[frozenset[str], ...]:
    """The FX node names of each kernel that Inductor generates, from its scheduler ``nodes``
    after fusion: fused and single kernels, not extern kernels (whose origins also name the
    pointwise ops inlined into their inputs). A kernel's names include the ops inlined into it."""
    from torch._inductor.scheduler import ExternKernelSchedulerNode, NopKernelSchedulerNode

    groups = []
    for snode in nodes:
        if isinstance(snode, (ExternKernelSchedulerNode, NopKernelSchedulerNode)):
            continue
        names = {o.name for n in snode.get_nodes() if n.node is not None for o in n.node.get_origins()}
        if len(names) > 1:
            groups.append(frozenset(names))
    return tuple(groups)
