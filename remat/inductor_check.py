"""Inductor's own estimate of a compiled graph's peak: the check of the plan after fusion.

The plan is made on the joint graph, before Inductor decides which ops share a kernel, which
buffers a kernel writes in place and where it runs the recomputations that a fused kernel needs.
After fusion Inductor knows all of that; its memory planner (``torch._inductor.memory``) walks the
final kernel order and sums the live buffers, graph inputs included until their last use.
``InductorPeaks`` is installed as Inductor's post-fusion pass: it records that estimate for every
graph compiled under it (forward, then backward). Like the plan's prediction it leaves out the
resident inputs (parameters and batch, ``primals_*``), which Inductor never frees. The backend compares the largest
with the cap and plans again, lower, when it is over (``remat.backend.remat_backend``).
"""

from __future__ import annotations

import logging

log = logging.getLogger("remat")


class InductorPeaks:
    """``torch._inductor.config._post_fusion_custom_pass`` that records each graph's estimated
    peak bytes in ``peaks``; it leaves the kernel order unchanged."""

    def __init__(self) -> None:
        self.peaks: list[int] = []

    def __call__(self, nodes: list) -> list:
        try:
            self.peaks.append(_estimate(nodes))
        except Exception as e:  # an estimate we cannot make is no reason to fail the compile
            log.debug("remat: no Inductor memory estimate (%s: %s)", type(e).__name__, e)
        return nodes

    @property
    def peak_bytes(self) -> int | None:
        return max(self.peaks) if self.peaks else None


def _estimate(nodes: list) -> int:
    from torch._inductor import memory
    from torch._inductor.virtualized import V
    from torch.utils._ordered_set import OrderedSet

    graph = V.graph
    sched = graph.scheduler
    peak, _ = memory.prepare_planning_info(
        nodes,
        sched.name_to_buf,
        sched.name_to_fused_node,
        OrderedSet(graph.graph_inputs.keys()),
        OrderedSet(graph.get_output_names()),
    )
    return int(peak)
