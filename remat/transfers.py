"""Where the host copies of OFFLOAD activations run: one copy engine per direction, in order.

The forward copies each offloaded value to host right after its last forward use; the copies
queue on one device-to-host engine and run one after another at ``host_bandwidth`` beside the
compute. The device copy is freed after the first forward slot by whose end its copy is done
(``free_after``); copies still running when the forward ends make the forward wait
(``exposed_out``).

The backward copies them back on the host-to-device engine, as late as possible: going back from
the end, each prefetch must end before its first direct backward use ``d(v)`` and before the
next prefetch (by ``d``) starts, so prefetches run back to back when the link is busy. The device
copy is allocated when its prefetch is issued, at the start of the slot in which the copy starts
(``prefetch_at``); what cannot start within the backward makes the backward wait at its start
(``exposed_in``).

Times are the slots' compute times (``Problem.cumulative_time``); a transfer never slows compute.
This is the model that the simulator checks, the rewrite follows (where it puts the copies and
the waits) and the solvers price; nothing here imports torch.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Iterable

from .problem import Activation, Problem


@dataclass(frozen=True)
class Transfers:
    """The copy schedule of a set of OFFLOAD activations."""

    free_after: dict[str, int]  # last forward slot in which the device copy still lives
    prefetch_at: dict[str, int]  # first backward slot in which the device copy lives again
    out_done: dict[str, float]  # seconds from the step's start when the copy to host ends
    in_start: dict[str, float]  # seconds from the step's start when the prefetch starts
    exposed_out: float  # seconds the forward waits at its end for copies to host
    exposed_in: float  # seconds the backward waits at its start for prefetches

    @property
    def exposed(self) -> float:
        """Transfer time that no compute hides: what offloading adds to the step."""
        return self.exposed_out + self.exposed_in


def schedule_transfers(problem: Problem, names: Iterable[str]) -> Transfers:
    """The copy schedule of ``names`` (each offloadable, with a direct backward use)."""
    acts = [problem.activation(n) for n in dict.fromkeys(names)]
    if acts and problem.host_bandwidth <= 0:
        raise ValueError("offload needs host_bandwidth > 0")
    for a in acts:
        if problem.first_uses[a.name] is None:
            raise ValueError(f"activation {a.name!r} is never read by backward: nothing to prefetch")
    free_after, out_done, exposed_out = _copies_to_host(problem, acts)
    prefetch_at, in_start, exposed_in = _prefetches(problem, acts)
    return Transfers(free_after, prefetch_at, out_done, in_start, exposed_out, exposed_in)


def _copies_to_host(p: Problem, acts: list[Activation]) -> tuple[dict[str, int], dict[str, float], float]:
    """(free_after, out_done, exposed_out): copies queue in order of last forward use, each
    starting when its value is last read and the engine is free."""
    cum, nf, bw = p.cumulative_time, p.num_forward, p.host_bandwidth
    fwd_end = cum[nf]
    free_after: dict[str, int] = {}
    out_done: dict[str, float] = {}
    engine, exposed_out = 0.0, 0.0
    for a in sorted(acts, key=lambda a: (a.last_forward_use, a.created, a.name)):
        done = max(cum[a.last_forward_use + 1], engine) + a.bytes / bw
        engine = out_done[a.name] = done
        # first slot t > last_forward_use with cum[t + 1] >= done
        t = max(a.last_forward_use + 1, bisect_left(cum, done, 0, nf + 1) - 1)
        if t >= nf:
            t = nf - 1
            exposed_out = max(exposed_out, done - fwd_end)
        free_after[a.name] = t
    return free_after, out_done, exposed_out


def _prefetches(p: Problem, acts: list[Activation]) -> tuple[dict[str, int], dict[str, float], float]:
    """(prefetch_at, in_start, exposed_in): going back from the end, each prefetch ends by its
    first backward use and before the next prefetch starts."""
    cum, nf, bw, first = p.cumulative_time, p.num_forward, p.host_bandwidth, p.first_uses
    fwd_end, n = cum[nf], len(p.slots)
    prefetch_at: dict[str, int] = {}
    in_start: dict[str, float] = {}
    engine, exposed_in = float("inf"), 0.0
    for a in sorted(acts, key=lambda a: (first[a.name], a.created, a.name), reverse=True):
        d = first[a.name]
        start = min(cum[d], engine) - a.bytes / bw
        engine = in_start[a.name] = start
        # last slot t in [nf, d) with cum[t] <= start (the slot in which the copy starts)
        t = bisect_right(cum, start, nf, n + 1) - 1
        if start < fwd_end:
            t = nf
            exposed_in = max(exposed_in, fwd_end - start)
        prefetch_at[a.name] = min(t, max(d - 1, nf))
    return prefetch_at, in_start, exposed_in


def offload_window(problem: Problem, name: str) -> tuple[int, int, float]:
    """(last forward slot the device copy lives in, first backward slot it lives again, exposed
    seconds) of ``name`` when it is the only OFFLOAD: ``schedule_transfers`` with one transfer.
    With several, the copies queue on the link and the windows widen."""
    if problem.first_uses[name] is None or problem.host_bandwidth <= 0:
        raise ValueError(f"activation {name!r} cannot be offloaded in this problem")
    s = schedule_transfers(problem, [name])
    return s.free_after[name], s.prefetch_at[name], s.exposed
