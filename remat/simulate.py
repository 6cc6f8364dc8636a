"""The independent checker of every plan: the single source of truth for peak memory.

``simulate`` replays a plan against the memory semantics of ``remat.problem`` (see its module
docstring: just-in-time recomputation) with nothing taken from any solver: it works out the needed
set, each needed activation's start ``S(v)`` and last need (both in one sweep in reverse creation
order), builds explicit live intervals, sums them over the slots with a difference array and checks
that every backward read (a backward use, or the recomputation of a consumer at its start) finds
its value live on the device. An OFFLOAD value counts as back only from ``d(v)``, where its
prefetch has completed; an OFFLOAD whose start ``S(v)`` comes before ``d(v)`` (a recomputed
consumer needs it earlier), or that backward never reads directly, is an error. Only the problem's
own definitions are used (``first_uses``, ``consumers``, ``num_forward``) and the copy schedule of
``remat.transfers`` (copies share the link, in order).

Intervals are inclusive slot ranges ``(lo, hi)``, counted on top of ``slot.fixed_bytes`` (which
already holds every activation during its forward lifetime ``[created, last_forward_use]``):

STORE      ``last_forward_use+1 .. last_need``
RECOMPUTE  ``S(v) .. last_need``; or, when the last compile recomputed ``v`` inside generated
           backward kernels K (``remat.kernel_groups.recompute_kernels``: their slots, first to
           last), which write their results before they run and read their inputs until they
           end: ``min(S(v), first(K)) .. max(last_need, last(K))``, and no bytes at all when every
           backward read of ``v`` is inside K (``v`` is never written to memory): its backward
           uses are slots of K, and each needed RECOMPUTE consumer is recomputed only in kernels
           of K, within ``last(K)`` (``remat.kernel_groups.reads_inside``). A consumer ``c``
           recomputed inside K reads its inputs there, ``min(S(c), first(K)) .. last(K)``, which
           widens their starts and last needs (K runs before ``S(c)`` when Inductor put ``c``'s
           recomputation in an earlier kernel: its inputs die there).
Taken      a RECOMPUTE value whose taker (``Activation.taken_by``) is RECOMPUTE too ends the slot
           before the taker's interval starts (``S(taker)``, or its kernel's first slot): no
           bytes when both start at the same slot. It stays readable by its taker. A taker that
           takes no bytes (only its kernels read it) takes nothing: the value keeps its buffer.
Handover   a STORE or RECOMPUTE value whose buffer the last compile handed to a kernel's result
           (``remat.kernel_groups.handovers``: the slot ``h`` where that kernel starts, whose
           result's bytes the slots already hold from ``h``) leaves the device at ``h - 1`` when
           that kernel's result reads it (a backward use, or a consumer that hands it over,
           ``remat.kernel_groups.through``, recomputed inside that kernel alone: hf_llama's
           log-softmax backward recomputes ``sub_1`` from ``mm_14`` and writes into ``mm_14``) and
           the plan recomputes none of its other consumers; it stays readable until its last need.
           Another recomputed consumer breaks the handover: Inductor may fuse its recomputation
           into that very kernel, beside the result that would take the buffer, and its
           ``decide_inplace_update`` takes a buffer only when its other readers have run or feed
           that result (hf_llama's ``mul_20 = div_1 * mm_12``, recomputed inside its SwiGLU
           backward kernel, though the model recomputes it two slots before that kernel).
Moved     a backward use ``u`` of RECOMPUTE ``v`` outside the kernel K that recomputes ``v`` and not
           after it (``u`` not one of K's slots, ``u <= last(K)``) runs after K, which computes what
           it reads (``moved_readers``: the MLP's weight gradient ``mm_9`` reads the GELU output that
           Inductor recomputes inside GELU's backward kernel): ``u`` acts at ``a = last(K) + 1``.
           ``v`` then counts from K (``u`` starts it at ``last(K)``) to ``a``; every other value
           ``u`` reads lives until ``a`` (its start unchanged); and, from the Problem's
           ``SLOT_BUFFERS`` (what ``u``'s op allocates and the buffers it reads, by slot name), its
           result's bytes leave ``u .. a-1`` and the buffers it reads live until ``a``
           (``moved_bytes``). Only ops that ``SLOT_BUFFERS`` describes move (a Problem without it
           keeps every op at its slot); readers of a moved op's result do not move.
OFFLOAD    ``last_forward_use+1 .. free_after`` and ``prefetch_at .. last_need`` on the device, and
           ``free_after+1 .. last_need`` on the host, from ``schedule_transfers`` of every valid
           OFFLOAD of the plan; its ``exposed`` seconds are the plan's transfer time.

Other runs (``Problem.other_runs``): every slot also carries what the graph's other runs per step
hold meanwhile, ``Problem.other_runs_bytes`` of the plan's needed STORE activations (an OFFLOAD that
cannot happen counts as STORE here too).

Cost is O(#slots + #activations + #backward uses + #inputs): intervals go into a difference array.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

from remat.errors import PlanError, fmt_bytes
from remat.kernel_groups import (
    RecomputeKernel, handovers, reads_inside, recompute_kernel_ids, recompute_kernels, through,
)
from remat.plan import Decision, Plan
from remat.problem import Activation, Problem
from remat.transfers import Transfers, schedule_transfers

__all__ = [
    "MemoryTimeline",
    "check",
    "SLOT_BUFFERS",
    "live_intervals",
    "moved_bytes",
    "moved_readers",
    "needed_activations",
    "recompute_starts",
    "simulate",
    "store_all_peak",
    "store_all_plan",
]

_MAX_READ_ERRORS = 50  # per timeline, so that a badly broken plan still gives a readable message
# Problem.metadata key: backward slot name -> [bytes its op's result holds from that slot, the
# result's last slot, [[buffer, bytes, last slot] of each fixed buffer the op reads]] (see "Moved")
SLOT_BUFFERS = "slot_buffers"


@dataclass(frozen=True)
class MemoryTimeline:
    """What a plan does to memory and time, slot by slot; ``errors`` is empty iff the plan is valid."""

    device_bytes: tuple[int, ...]  # live device bytes at each slot (fixed_bytes + decided activations)
    host_bytes: tuple[int, ...]  # bytes of offloaded activations resident on host at each slot
    peak_bytes: int  # max(device_bytes) (0 for an empty schedule)
    peak_slot: int  # first slot reaching the peak (-1 for an empty schedule)
    host_peak_bytes: int
    recompute_time: float  # sum of compute_time of needed RECOMPUTE activations
    transfer_time: float  # seconds of copies to and from host that compute does not hide
    added_time: float  # recompute_time + transfer_time
    needed: tuple[str, ...]  # activations the plan needs, in creation order
    errors: tuple[str, ...]  # human-readable problems; empty iff the plan is valid
    starts: Mapping[str, int] = field(default_factory=dict)  # S(v) of every needed activation
    last_needs: Mapping[str, int] = field(default_factory=dict)  # last need of every needed one

    transfers: Transfers | None = None  # the copy schedule of the plan's OFFLOAD activations
    other_runs_bytes: int = 0  # what the graph's other runs per step hold, in every slot's device bytes

    @property
    def ok(self) -> bool:
        return not self.errors


# ---- helpers ---------------------------------------------------------------------------------


def _decisions_of(plan: Plan | Mapping[str, Decision]) -> Mapping[str, Decision]:
    return plan.decisions if isinstance(plan, Plan) else plan


def _coerce(decisions: Mapping[str, object]) -> tuple[dict[str, Decision], list[str]]:
    """Decisions as ``Decision`` members (strings such as "store" are accepted) and the bad ones."""
    out: dict[str, Decision] = {}
    errors: list[str] = []
    for name, d in decisions.items():
        try:
            out[name] = d if isinstance(d, Decision) else Decision(d)
        except ValueError:
            errors.append(f"act {name!r}: unknown decision {d!r}")
    return out, errors


def _creation_order(problem: Problem) -> list[str]:
    """Activation names by ``created`` (stable: ties keep the problem's order)."""
    return [a.name for a in sorted(problem.activations, key=lambda a: a.created)]


def _needed_set(problem: Problem, decisions: Mapping[str, Decision]) -> set[str]:
    """Fixed point: backward-read activations, plus the inputs of every needed RECOMPUTE one.

    Inputs are created strictly earlier than their consumer, so one sweep in reverse creation
    order reaches the fixed point.
    """
    needed: set[str] = {a.name for a in problem.activations if a.backward_uses}
    for a in sorted(problem.activations, key=lambda a: a.created, reverse=True):
        if a.name in needed and decisions.get(a.name) is Decision.RECOMPUTE:
            needed.update(a.inputs)
    return needed


def needed_activations(problem: Problem, decisions: Mapping[str, Decision]) -> list[str]:
    """Activations that ``decisions`` needs (and so must decide), in creation order."""
    dec, _ = _coerce(_decisions_of(decisions))
    needed = _needed_set(problem, dec)
    return [n for n in _creation_order(problem) if n in needed]


def _window(start: int, kernel: RecomputeKernel | None) -> tuple[int, int]:
    """The slots over which a recomputation that starts at ``start`` reads its inputs: that slot,
    or the kernels that recompute it, from ``start`` if that comes first."""
    if kernel is None:
        return start, start
    return min(start, kernel.first), kernel.last


def held_back(uses: tuple[int, ...], kernel: RecomputeKernel) -> list[int]:
    """The backward ``uses`` of a value that ``kernel`` recomputes which run after it ("Moved"):
    outside it and not after it."""
    inside = set(kernel.slots)
    return [u for u in uses if u not in inside and u <= kernel.last]


def moved_readers(
    problem: Problem, decisions: Mapping[str, Decision], needed: set[str], kernels: Mapping[str, RecomputeKernel]
) -> dict[int, int]:
    """Backward slot -> the slot its op acts at instead ("Moved"): each use that a kernel
    recomputing a needed RECOMPUTE value holds back (``held_back``) and that ``SLOT_BUFFERS``
    describes acts the slot after that kernel's last (the latest such slot, when several kernels
    hold it back)."""
    last_slot = len(problem.slots) - 1
    described = problem.metadata.get(SLOT_BUFFERS, {})
    moved: dict[int, int] = {}
    for name in needed:
        kernel = kernels.get(name)
        if kernel is None or decisions.get(name) is not Decision.RECOMPUTE:
            continue
        after = min(kernel.last + 1, last_slot)
        for u in held_back(problem.activation(name).backward_uses, kernel):
            if problem.slots[u].name in described:
                moved[u] = max(moved.get(u, u), after)
    return moved


def moved_bytes(problem: Problem, moved: Mapping[int, int], reads: bool = True) -> list[int]:
    """Per slot, what the ops of ``moved`` (slot -> the slot it acts at, ``moved_readers``) change
    in the fixed bytes, from ``SLOT_BUFFERS``: an op's result leaves its slot up to the one before
    it acts (never past the result's last slot); with ``reads``, a buffer it reads lives until the
    latest slot that a moved reader of it acts at."""
    n = len(problem.slots)
    facts = problem.metadata.get(SLOT_BUFFERS, {})
    diff = [0] * (n + 1)
    ends: dict[str, tuple[int, int, int]] = {}  # buffer -> (bytes, its last slot, the last slot now)
    for u, at in moved.items():
        fact = facts.get(problem.slots[u].name)
        if fact is None:
            continue
        made, made_end, read = fact
        hi = min(at - 1, made_end)
        if made and u <= hi:
            diff[u] -= made
            diff[hi + 1] += made
        for buffer, nbytes, end in read if reads else ():
            ends[buffer] = (nbytes, end, max(at, ends.get(buffer, (0, 0, end))[2]))
    for nbytes, end, now in ends.values():
        if now > end:
            diff[end + 1] += nbytes
            diff[now + 1] -= nbytes
    return list(itertools.accumulate(diff[:n]))


def _direct_reads(a: Activation, kernel: RecomputeKernel | None, moved: Mapping[int, int]) -> tuple[int, int]:
    """(start, last slot) of ``a``'s own backward reads (it has some): a use that its ``kernel``
    (given when ``a`` is RECOMPUTE) holds back starts it at the kernel's last slot; a moved use
    reads it where it acts."""
    uses = a.backward_uses
    if not moved:
        return uses[0], uses[-1]
    back = {u for u in held_back(uses, kernel) if u in moved} if kernel is not None else set()
    return min(kernel.last if u in back else u for u in uses), max(moved.get(u, u) for u in uses)


def _starts_and_last_needs(
    problem: Problem, needed: set[str], dec: Mapping[str, Decision], kernels: Mapping[str, RecomputeKernel],
    moved: Mapping[int, int],
) -> tuple[dict[str, int], dict[str, int]]:
    """``S(v)`` and ``last_need(v)`` of every needed activation (one reverse-creation sweep): its
    direct reads (``_direct_reads``, with the ``moved`` uses), and each needed RECOMPUTE consumer,
    which reads ``v`` over its window (``_window``).

    A consumer is created strictly later than its inputs, so when ``v`` is reached every needed
    RECOMPUTE consumer already has its start.
    """
    start: dict[str, int] = {}
    last: dict[str, int] = {}
    cons = problem.consumers
    R = Decision.RECOMPUTE
    for a in sorted(problem.activations, key=lambda a: a.created, reverse=True):
        name = a.name
        if name not in needed:
            continue
        s = ln = None
        if a.backward_uses:
            s, ln = _direct_reads(a, kernels.get(name) if dec.get(name) is R else None, moved)
        for c in cons[name]:
            if c in needed and dec.get(c) is R and c in start:
                lo, hi = _window(start[c], kernels.get(c))
                s = lo if s is None else min(s, lo)
                ln = hi if ln is None else max(ln, hi)
        if s is not None:  # always, for a needed activation
            start[name] = s
            last[name] = ln
    return start, last


def recompute_starts(problem: Problem, plan: Plan | Mapping[str, Decision]) -> dict[str, int]:
    """``S(v)`` of every needed activation of ``plan``: where a RECOMPUTE one is recomputed (and
    by when an OFFLOAD one must be back)."""
    dec, _ = _coerce(_decisions_of(plan))
    needed, kernels = _needed_set(problem, dec), recompute_kernels(problem)
    moved = moved_readers(problem, dec, needed, kernels)
    return _starts_and_last_needs(problem, needed, dec, kernels, moved)[0]


class _Analysis:
    """Everything ``simulate`` derives from a plan before summing bytes.

    Steps: the decisions and the needed set (``_decide``), the copy schedule of the valid
    OFFLOAD activations (``_schedule``), each needed activation's intervals (``_intervals``),
    then the reads that find no value (``_read_errors``). ``errors`` collects every problem.
    """

    def __init__(self, problem: Problem, plan: Plan | Mapping[str, Decision]) -> None:
        self.problem = problem
        self._errors: list[str] = []
        self._decide(_decisions_of(plan))
        self.kernels, self.kernel_ids = recompute_kernels(problem), recompute_kernel_ids(problem)
        self.handovers, self.through = handovers(problem), through(problem)
        self.moved = moved_readers(problem, self.decisions, set(self.needed), self.kernels)
        self.starts, self.last_needs = _starts_and_last_needs(
            problem, set(self.needed), self.decisions, self.kernels, self.moved)
        self.transfers = self._schedule()
        self.device: dict[str, list[tuple[int, int]]] = {}
        self.host: dict[str, list[tuple[int, int]]] = {}
        self.readable: dict[str, list[tuple[int, int]]] = {}  # where a read finds it (default: device)
        self.recompute_time = 0.0
        for name in self.needed:
            self._intervals(name)
        self._errors += self._read_errors()
        self.stored_bytes = sum(problem.activation(n).bytes for n in self.needed if self._kept_on_device(n))
        self.transfer_time = self.transfers.exposed
        self.errors = tuple(self._errors)

    def _decide(self, raw: Mapping[str, object]) -> None:
        """``decisions``, the ``needed`` names in creation order, and the errors of decisions
        that cannot be read, name no activation, or decide an activation that is not needed."""
        p = self.problem
        dec, errors = _coerce(raw)
        for name in dec:
            if name not in p._by_name:
                errors.append(f"decision for unknown activation {name!r}")
        needed = _needed_set(p, dec)
        creation = _creation_order(p)
        for name in creation:
            if name in dec and name not in needed:
                errors.append(f"act {name!r} is not needed but has a decision ({dec[name]})")
        self._errors += errors
        self.decisions = dec
        self.needed = tuple(n for n in creation if n in needed)

    def _schedule(self) -> Transfers:
        """The joint copy schedule of the needed OFFLOAD activations that can be offloaded; an
        error for each that cannot."""
        p, dec = self.problem, self.decisions
        offloads: list[str] = []
        for name in self.needed:
            if dec.get(name) is not Decision.OFFLOAD:
                continue
            if not p.activation(name).offloadable:
                self._errors.append(f"act {name!r} is OFFLOAD but not offloadable")
            elif p.host_bandwidth <= 0:
                self._errors.append(f"act {name!r} is OFFLOAD but host_bandwidth is {p.host_bandwidth}")
            elif p.first_uses[name] is None:
                self._errors.append(f"act {name!r} is OFFLOAD but backward never reads it directly")
            else:
                offloads.append(name)
        return schedule_transfers(p, offloads)

    def _intervals(self, name: str) -> None:
        """The device (and host) intervals of needed ``name`` under its decision; an OFFLOAD that
        cannot happen counts as STORE so that the peak stays meaningful."""
        a = self.problem.activation(name)
        d = self.decisions.get(name)
        if d is None:
            self._errors.append(f"act {name!r} is needed but has no decision")
            return
        last = self.last_needs[name]
        if d is Decision.RECOMPUTE:
            if not a.recomputable:
                self._errors.append(f"act {name!r} is RECOMPUTE but not recomputable")
            self._recompute_interval(a, last)
            self._give_to_taker(a)
            self.recompute_time += a.compute_time
        elif d is Decision.OFFLOAD and name in self.transfers.free_after:
            self._offload_intervals(a, last)
            return
        else:
            self.device[name] = [(a.last_forward_use + 1, last)]
        self._hand_over(a)

    def _kept_on_device(self, name: str) -> bool:
        """Whether the forward keeps ``name`` on the device for the backward: STORE, or an OFFLOAD
        that cannot happen (counted as STORE)."""
        d = self.decisions.get(name)
        return d is Decision.STORE or (d is Decision.OFFLOAD and name not in self.transfers.free_after)

    def _hand_over(self, a: Activation) -> None:
        """End ``a`` on the device where a kernel's result takes its buffer (``handovers``), when
        the plan lets it (``_handover_holds``); it stays readable to its last need."""
        h = self.handovers.get(a.name)
        if h is None or not self.device[a.name] or not self._handover_holds(a):
            return
        (lo, hi), = self.device[a.name]
        self.readable.setdefault(a.name, [(lo, hi)])
        self.device[a.name] = [(lo, min(hi, h - 1))] if lo <= h - 1 else []

    def _handover_holds(self, a: Activation) -> bool:
        """Whether the kernel that takes ``a``'s buffer takes it under the plan: its result reads
        ``a`` (a backward use, or a consumer that hands ``a`` over, ``through``, recomputed inside
        its kernel alone: ``_inlined``) and the plan recomputes no other consumer of ``a``."""
        passing = self.through.get(a.name, ())
        taken = bool(a.backward_uses)
        for c in self.problem.consumers[a.name]:
            if c not in self.starts or self.decisions.get(c) is not Decision.RECOMPUTE:
                continue
            if c not in passing or not self._inlined(self.problem.activation(c)):
                return False
            taken = True
        return taken

    def _recompute_interval(self, a: Activation, last: int) -> None:
        """From ``S(v)`` to its last need, widened to the kernel that recomputes it; readable there
        but never on the device when only that kernel reads it (``_inlined``)."""
        lo, hi = _window(self.starts[a.name], self.kernels.get(a.name))
        interval = [(lo, max(last, hi))]
        if self._inlined(a):
            self.readable[a.name] = interval
            self.device[a.name] = []
        else:
            self.device[a.name] = interval

    def _give_to_taker(self, a: Activation) -> None:
        """End RECOMPUTE ``a`` the slot before its RECOMPUTE taker's result starts (the taker writes
        into ``a``'s buffer), unless the taker is never written (``_inlined``: the kernels that
        inline it read ``a``'s buffer); ``a`` stays readable until its last need."""
        taker = a.taken_by
        if not taker or self.decisions.get(taker) is not Decision.RECOMPUTE or not self.device[a.name]:
            return
        if self._inlined(self.problem.activation(taker)):
            return
        taker_start = _window(self.starts[taker], self.kernels.get(taker))[0]
        (lo, hi), = self.device[a.name]
        self.readable.setdefault(a.name, [(lo, hi)])
        self.device[a.name] = [(lo, min(hi, taker_start - 1))] if lo <= taker_start - 1 else []

    def _inlined(self, a: Activation) -> bool:
        """Whether RECOMPUTE ``a`` is computed and read only inside its kernels: every backward use
        is one of their slots and every needed RECOMPUTE consumer reads it inside them
        (``reads_inside``)."""
        kernel = self.kernels.get(a.name)
        if kernel is None:
            return False
        consumers = (c for c in self.problem.consumers[a.name]
                     if c in self.starts and self.decisions.get(c) is Decision.RECOMPUTE)
        return set(a.backward_uses) <= set(kernel.slots) and all(
            reads_inside(kernel, c, self.kernels, self.kernel_ids, self.starts[c]) for c in consumers)

    def _offload_intervals(self, a: Activation, last: int) -> None:
        """Device copy until ``free_after`` and again from ``prefetch_at``; readable again only
        from ``d(v)``, when the prefetch has completed; on the host in between."""
        name, sched = a.name, self.transfers
        out_end, back_start = sched.free_after[name], sched.prefetch_at[name]
        dn, start = self.problem.first_uses[name], self.starts[name]
        if start < dn:
            self._errors.append(
                f"act {name!r} is OFFLOAD but a recomputed consumer needs it at slot "
                f"{start}, before its first backward use {dn} (prefetch deadline)"
            )
        if back_start > dn:
            self._errors.append(
                f"act {name!r}: prefetch starts at slot {back_start}, after its first backward use {dn}"
            )
        if not (self.problem.num_forward <= back_start):
            self._errors.append(f"act {name!r}: prefetch starts at forward slot {back_start}")
        self.device[name] = [(a.last_forward_use + 1, out_end), (back_start, last)]
        self.readable[name] = [(a.last_forward_use + 1, out_end), (dn, last)]
        self.host[name] = [(out_end + 1, last)]

    def _live(self, name: str, t: int) -> bool:
        ivs = self.readable[name] if name in self.readable else self.device.get(name, ())
        return any(lo <= t <= hi for lo, hi in ivs)

    def _read_errors(self) -> list[str]:
        """Every backward read (a backward use, or an input read where a consumer is recomputed)
        that finds its value not live on the device; at most ``_MAX_READ_ERRORS`` of them."""
        out: list[str] = []
        dec = self.decisions
        for name in self.needed:
            if name not in self.device:
                continue  # already reported: no decision
            a = self.problem.activation(name)
            for u in a.backward_uses:
                at = self.moved.get(u, u)
                if not self._live(name, at):
                    out.append(f"act {name!r} read at slot {at} but not live")
            if dec.get(name) is Decision.RECOMPUTE:
                r = _window(self.starts[name], self.kernels.get(name))[0]
                for i in a.inputs:  # (an input without a decision is reported as needed-but-undecided)
                    if i in dec and not self._live(i, r):
                        out.append(f"act {i!r} read at slot {r} to recompute {name!r} but not live")
        if len(out) > _MAX_READ_ERRORS:
            extra = len(out) - _MAX_READ_ERRORS
            out = out[:_MAX_READ_ERRORS] + [f"... and {extra} more unavailable reads"]
        return out


def _sum_intervals(n: int, intervals: Mapping[str, list[tuple[int, int]]], problem: Problem) -> list[int]:
    diff = [0] * (n + 1)
    for name, ivs in intervals.items():
        b = problem.activation(name).bytes
        for lo, hi in ivs:
            lo, hi = max(lo, 0), min(hi, n - 1)
            if lo <= hi:
                diff[lo] += b
                diff[hi + 1] -= b
    return list(itertools.accumulate(diff[:n]))


# ---- public API ------------------------------------------------------------------------------


def live_intervals(
    problem: Problem, plan: Plan | Mapping[str, Decision]
) -> dict[str, list[tuple[int, int]]]:
    """Device intervals (inclusive, backward side of the forward lifetime) of each decided needed activation."""
    return {k: list(v) for k, v in _Analysis(problem, plan).device.items()}


def simulate(problem: Problem, plan: Plan | Mapping[str, Decision]) -> MemoryTimeline:
    """Replay ``plan`` on ``problem``: per-slot device and host bytes, added time and errors."""
    an = _Analysis(problem, plan)
    n = len(problem.slots)
    extra = _sum_intervals(n, an.device, problem)
    others = problem.other_runs_bytes(an.stored_bytes)
    shifted = moved_bytes(problem, an.moved) if an.moved else [0] * n
    device = tuple(s.fixed_bytes + e + m + others for s, e, m in zip(problem.slots, extra, shifted))
    host = tuple(_sum_intervals(n, an.host, problem))
    if device:
        peak = max(device)
        peak_slot = device.index(peak)
    else:
        peak, peak_slot = 0, -1
    return MemoryTimeline(
        device_bytes=device,
        host_bytes=host,
        peak_bytes=peak,
        peak_slot=peak_slot,
        host_peak_bytes=max(host, default=0),
        recompute_time=an.recompute_time,
        transfer_time=an.transfer_time,
        added_time=an.recompute_time + an.transfer_time,
        needed=an.needed,
        errors=an.errors,
        starts=an.starts,
        last_needs=an.last_needs,
        transfers=an.transfers,
        other_runs_bytes=others,
    )


def check(
    problem: Problem, plan: Plan | Mapping[str, Decision], budget_bytes: int | None = None
) -> MemoryTimeline:
    """``simulate``, raising ``PlanError`` when the plan is invalid or its peak exceeds the cap."""
    tl = simulate(problem, plan)
    over = budget_bytes is not None and tl.peak_bytes > budget_bytes
    if tl.errors or over:
        solver = f" from {plan.solver!r}" if isinstance(plan, Plan) else ""
        cap = "no cap" if budget_bytes is None else f"cap {fmt_bytes(budget_bytes)} ({budget_bytes} bytes)"
        lines = [
            f"plan{solver} rejected for {problem.name!r}: peak {fmt_bytes(tl.peak_bytes)} "
            f"({tl.peak_bytes} bytes) at slot {tl.peak_slot} vs {cap}"
        ]
        if over:
            lines.append(f"peak exceeds the cap by {tl.peak_bytes - budget_bytes} bytes")
        lines += [f"- {e}" for e in tl.errors]
        raise PlanError("\n".join(lines))
    return tl


def store_all_plan(problem: Problem) -> dict[str, Decision]:
    """The "no remat" decisions: STORE every activation that a backward slot reads."""
    return {a.name: Decision.STORE for a in problem.activations if a.backward_uses}


def store_all_peak(problem: Problem) -> int:
    """Peak device bytes of the "no remat" baseline plan."""
    return simulate(problem, store_all_plan(problem)).peak_bytes
