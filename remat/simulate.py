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
RECOMPUTE  ``S(v) .. last_need``
OFFLOAD    ``last_forward_use+1 .. free_after`` and ``prefetch_at .. last_need`` on the device, and
           ``free_after+1 .. last_need`` on the host, from ``schedule_transfers`` of every valid
           OFFLOAD of the plan; its ``exposed`` seconds are the plan's transfer time.

Cost is O(#slots + #activations + #backward uses + #inputs): intervals go into a difference array.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from remat.errors import PlanError, fmt_bytes
from remat.plan import Decision, Plan
from remat.problem import Problem
from remat.transfers import Transfers, schedule_transfers

__all__ = [
    "MemoryTimeline",
    "check",
    "live_intervals",
    "needed_activations",
    "recompute_starts",
    "simulate",
    "store_all_peak",
    "store_all_plan",
]

_MAX_READ_ERRORS = 50  # per timeline, so that a badly broken plan still gives a readable message


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


def _starts_and_last_needs(
    problem: Problem, needed: set[str], dec: Mapping[str, Decision]
) -> tuple[dict[str, int], dict[str, int]]:
    """``S(v)`` and ``last_need(v)`` of every needed activation (one reverse-creation sweep).

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
        s = a.backward_uses[0] if a.backward_uses else None
        ln = a.backward_uses[-1] if a.backward_uses else None
        for c in cons[name]:
            if c in needed and dec.get(c) is R and c in start:
                sc = start[c]
                if s is None or sc < s:
                    s = sc
                if ln is None or sc > ln:
                    ln = sc
        if s is not None:  # always, for a needed activation
            start[name] = s
            last[name] = ln
    return start, last


def recompute_starts(problem: Problem, plan: Plan | Mapping[str, Decision]) -> dict[str, int]:
    """``S(v)`` of every needed activation of ``plan``: where a RECOMPUTE one is recomputed (and
    by when an OFFLOAD one must be back)."""
    dec, _ = _coerce(_decisions_of(plan))
    return _starts_and_last_needs(problem, _needed_set(problem, dec), dec)[0]


class _Analysis:
    """Everything ``simulate`` derives from a plan before summing bytes."""

    def __init__(self, problem: Problem, plan: Plan | Mapping[str, Decision]) -> None:
        p = problem
        nf = p.num_forward
        raw = _decisions_of(plan)
        dec, errors = _coerce(raw)
        by_name = p._by_name
        for name in dec:
            if name not in by_name:
                errors.append(f"decision for unknown activation {name!r}")
        needed = _needed_set(p, dec)
        creation = _creation_order(p)
        order = [n for n in creation if n in needed]

        for name in creation:
            if name in dec and name not in needed:
                errors.append(f"act {name!r} is not needed but has a decision ({dec[name]})")

        start, last_need = _starts_and_last_needs(p, needed, dec)
        first = p.first_uses
        device: dict[str, list[tuple[int, int]]] = {}
        host: dict[str, list[tuple[int, int]]] = {}
        readable: dict[str, list[tuple[int, int]]] = {}  # where a read finds the value (default: device)
        recompute_time = 0.0
        offloads: list[str] = []
        for name in order:
            a = by_name[name]
            if dec.get(name) is not Decision.OFFLOAD:
                continue
            if not a.offloadable:
                errors.append(f"act {name!r} is OFFLOAD but not offloadable")
            elif p.host_bandwidth <= 0:
                errors.append(f"act {name!r} is OFFLOAD but host_bandwidth is {p.host_bandwidth}")
            elif first[name] is None:
                errors.append(f"act {name!r} is OFFLOAD but backward never reads it directly")
            else:
                offloads.append(name)
        self.transfers = sched = schedule_transfers(p, offloads)
        for name in order:
            a = by_name[name]
            d = dec.get(name)
            if d is None:
                errors.append(f"act {name!r} is needed but has no decision")
                continue
            last = last_need[name]
            if d is Decision.RECOMPUTE:
                if not a.recomputable:
                    errors.append(f"act {name!r} is RECOMPUTE but not recomputable")
                device[name] = [(start[name], last)]
                recompute_time += a.compute_time
                continue
            if d is Decision.OFFLOAD and name in sched.free_after:
                out_end, back_start = sched.free_after[name], sched.prefetch_at[name]
                dn = first[name]
                if start[name] < dn:
                    errors.append(
                        f"act {name!r} is OFFLOAD but a recomputed consumer needs it at slot "
                        f"{start[name]}, before its first backward use {dn} (prefetch deadline)"
                    )
                if back_start > dn:
                    errors.append(
                        f"act {name!r}: prefetch starts at slot {back_start}, after its "
                        f"first backward use {dn}"
                    )
                if not (nf <= back_start):
                    errors.append(f"act {name!r}: prefetch starts at forward slot {back_start}")
                device[name] = [(a.last_forward_use + 1, out_end), (back_start, last)]
                # the prefetch into (back_start, ...) completes only by the first backward use
                readable[name] = [(a.last_forward_use + 1, out_end), (dn, last)]
                host[name] = [(out_end + 1, last)]
                continue
            # STORE, or an OFFLOAD that cannot happen (accounted as STORE so the peak stays meaningful)
            device[name] = [(a.last_forward_use + 1, last)]

        # availability: every backward read must find the value live on the device
        read_errors: list[str] = []

        def live(name: str, t: int) -> bool:
            ivs = readable[name] if name in readable else device.get(name, ())
            return any(lo <= t <= hi for lo, hi in ivs)

        for name in order:
            if name not in device:
                continue  # already reported: no decision
            a = by_name[name]
            for u in a.backward_uses:
                if not live(name, u):
                    read_errors.append(f"act {name!r} read at slot {u} but not live")
            if dec.get(name) is Decision.RECOMPUTE:
                r = start[name]
                for i in a.inputs:
                    if i in dec and not live(i, r):
                        # (an input without a decision is reported above as needed-but-undecided)
                        read_errors.append(
                            f"act {i!r} read at slot {r} to recompute {name!r} but not live"
                        )
        if len(read_errors) > _MAX_READ_ERRORS:
            extra = len(read_errors) - _MAX_READ_ERRORS
            read_errors = read_errors[:_MAX_READ_ERRORS] + [f"... and {extra} more unavailable reads"]
        errors += read_errors

        self.decisions = dec
        self.needed = tuple(order)
        self.device = device
        self.host = host
        self.starts = start
        self.last_needs = last_need
        self.recompute_time = recompute_time
        self.transfer_time = sched.exposed
        self.errors = tuple(errors)


def _sum_intervals(n: int, intervals: Mapping[str, list[tuple[int, int]]], problem: Problem) -> list[int]:
    diff = [0] * (n + 1)
    for name, ivs in intervals.items():
        b = problem.activation(name).bytes
        for lo, hi in ivs:
            lo, hi = max(lo, 0), min(hi, n - 1)
            if lo <= hi:
                diff[lo] += b
                diff[hi + 1] -= b
    out, acc = [], 0
    for t in range(n):
        acc += diff[t]
        out.append(acc)
    return out


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
    device = tuple(s.fixed_bytes + e for s, e in zip(problem.slots, extra))
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
