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

A forward op's name in a backward kernel says that the last plan recomputed that value inside the
kernel. ``with_recompute_kernels`` writes those kernels into a Problem, as plain data
(``Problem.metadata["recompute_kernels"]``: activation name -> the backward slots of its kernel's
ops), and ``recompute_kernels`` reads them back; ``remat.simulate`` applies them to a RECOMPUTE
decision: the value lives across its kernel, or, read only inside it, is never allocated.

A kernel may also write a result into the buffer of an input that dies there (in the backward's
wrapper code: ``buf3 = div_1; del div_1  # reuse``, ``reused_inputs``). ``with_handovers``
records, for each activation whose buffer the last compile handed over so, the first slot of the
kernel that took it (``Problem.metadata["handovers"]``, read back by ``handovers``); the result's
bytes count from there, so the activation's own end there when that kernel is its last reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

__all__ = [
    "KernelGroups", "RecomputeKernel", "handovers", "recompute_kernels", "reused_inputs", "scheduler_groups",
    "with_handovers", "with_recompute_kernels",
]

RECOMPUTE_KERNELS, HANDOVERS = "recompute_kernels", "handovers"  # the Problem.metadata keys
_REUSE = re.compile(r"^\s*\w+ = (\w+); del \1\s*# reuse$", re.MULTILINE)


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


@dataclass(frozen=True)
class RecomputeKernel:
    """A generated backward kernel that recomputes a forward value: the backward slots of the
    model's schedule that its own ops take (ascending, at least one)."""

    slots: tuple[int, ...]

    @property
    def first(self) -> int:
        return self.slots[0]

    @property
    def last(self) -> int:
        return self.slots[-1]


def with_recompute_kernels(problem, groups: KernelGroups | None):
    """``problem`` with the backward kernels that recomputed its activations under the last plan
    (``groups``: that compile's kernels) in its metadata; unchanged without any. A kernel counts by
    the backward slot ops it holds; a kernel of recomputed ops alone holds none and is left out."""
    if groups is None:
        return problem
    nf = problem.num_forward
    slot_of = {s.name: t for t, s in enumerate(problem.slots) if t >= nf}
    names = {a.name for a in problem.activations}
    found: dict[str, list[int]] = {}
    for group in groups.backward:
        slots = sorted(slot_of[n] for n in group if n in slot_of)
        for name in sorted(group & names) if slots else ():
            found.setdefault(name, slots)
    if not found:
        return problem
    return replace(problem, metadata={**problem.metadata, RECOMPUTE_KERNELS: found})


def recompute_kernels(problem) -> dict[str, RecomputeKernel]:
    """The backward kernels that recompute ``problem``'s activations (``with_recompute_kernels``)."""
    found = problem.metadata.get(RECOMPUTE_KERNELS, {})
    return {name: RecomputeKernel(tuple(slots)) for name, slots in found.items()}


def reused_inputs(code: str) -> set[str]:
    """Names whose buffer Inductor's wrapper ``code`` hands to a later result as it dies
    (``buf3 = div_1; del div_1  # reuse``): the graph inputs among them are saved activations
    that a backward kernel overwrites in place."""
    return set(_REUSE.findall(code))


def with_handovers(problem, groups: KernelGroups | None, reused: set[str]):
    """``problem`` with the activations in ``reused`` (``reused_inputs`` of its backward code)
    mapped to the slot where the kernel of their last backward read starts (``groups``' backward
    kernels; the read's own slot when no kernel of several ops holds it); unchanged without any."""
    nf = problem.num_forward
    first: dict[str, int] = {}
    for group in groups.backward if groups is not None else ():
        slots = [t for t, s in enumerate(problem.slots) if t >= nf and s.name in group]
        for t in slots:
            first[problem.slots[t].name] = min(slots)
    found = {}
    for a in problem.activations:
        if a.name in reused and a.backward_uses:
            last = a.backward_uses[-1]
            found[a.name] = first.get(problem.slots[last].name, last)
    if not found:
        return problem
    return replace(problem, metadata={**problem.metadata, HANDOVERS: found})


def handovers(problem) -> dict[str, int]:
    """Activation name -> the slot from which a kernel's result holds its buffer (``with_handovers``)."""
    return dict(problem.metadata.get(HANDOVERS, {}))
