"""Shared structure of the solvers: candidate activations, their live pieces, exact evaluation.

Nothing here imports torch. Everything follows the just-in-time semantics of ``remat.problem``:

* an activation is *possibly needed* when it has backward uses, or when one of its consumers is
  recomputable and possibly needed; only those ever take a decision;
* ``S(v) = min(d(v), S(c) for needed RECOMPUTE consumers c)`` (``d``: first direct backward use);
  ``last_need(v) = max(backward_uses(v), S(c) for needed RECOMPUTE consumers c)``;
* extra device bytes: STORE ``lfu+1..last_need``; RECOMPUTE ``S..last_need``; OFFLOAD
  ``lfu+1..out_end`` and ``back_start..last_need``, valid only when ``S(v) == d(v)``.

Offload windows. Copies share the link (``remat.transfers``), so a copy's window depends on the
other copies. The solvers take as offload candidates the activations that cost the most to
recompute per byte, as many as the link can move within the forward (and within the backward),
and give each the window it has when *all* candidates are copied. A copy only ends earlier, and
a prefetch only starts later, when fewer copies share the link, so every plan over these
windows holds under its own joint schedule, which ``evaluate`` and ``cost`` use (as the simulator
does).

Other runs (``Problem.other_runs``). Every slot also carries what the graph's other runs per step
hold: ``Problem.other_runs_bytes`` of the needed STORE candidates (``other_runs_bytes``), the
same at every slot. A RECOMPUTE that frees no slot of this run still lowers it, so recompute is
kept for such candidates then (``_kept_starts``).

Kernel facts. When the Problem carries the last compile's kernels (``remat.kernel_groups``:
values recomputed inside a backward kernel, buffers a kernel took over), ``jit`` and ``evaluate``
apply the simulator's rules exactly (a RECOMPUTE consumer reads its inputs over its kernel's
``window``; a value lives across its kernel, or takes no bytes when only that kernel reads it; a
handed-over buffer ends before that kernel). The ILP's pieces stay at or above that count
(``_kernel_windows``, ``_handover_end``, ``_always_inlined``).

Moved readers (``remat.simulate``, "Moved"). A RECOMPUTE candidate whose kernel holds back some
of its backward uses (``movers``: outside the kernel and not after it) moves them, and what their
ops allocate and read, to the slot after the kernel: ``jit`` and ``evaluate`` count that exactly
(``moved``, ``remat.simulate.moved_bytes``). The ILP stays at or above that count
(``move_terms``, linear in the mover's ``rec``): its own kernel window reaches the moved slot,
each value and buffer a moved op reads lives until there (summed over movers), and a moved op's
result leaves its slots only where one candidate alone can move it; it still counts the mover
from its start before the kernel.

Conditional handovers. A handover holds only while the plan recomputes none of the value's
consumers, but one that hands the value over itself, recomputed inside the taking kernel alone
(``remat.simulate``; ``handover_holds``, exact, for ``jit`` and ``evaluate``). The ILP takes any
recomputed consumer as breaking it (``consumer_recomputed``), which counts at or above that.
For a candidate with recomputable consumers, the slots from
the kernel's start to ``D`` (``Cand.tail``, split where its start indicators change) hold one
continuous ``("h", idx, j)`` per piece, which the ILP bounds below by "a consumer is recomputed
and the value holds its own buffer there" (``holds``); a copied OFFLOAD keeps its buffer
whatever the consumers do. A value that backward reads only through a consumer that hands it over
(no backward use of its own) keeps its whole form in the ILP.

Taken buffers (``Activation.taken_by``). A taken candidate is needed only when its taker is
RECOMPUTE; RECOMPUTE, it ends the slot before its taker's start (``remat.simulate``), which
without kernel facts is its own start: it takes no bytes; unless its taker takes none either
(inlined by the kernels that recompute it). ``jit`` and ``evaluate`` count it so (``taken_by``);
the ILP's live indicators count only a kept one (``taker``: the takers without recompute
kernels, which are never inlined), and so do its states (``_masks``).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from functools import cached_property

import numpy as np

from remat.kernel_groups import (
    RecomputeKernel, handovers, reads_inside, recompute_kernel_ids, recompute_kernels, through,
)
from remat.plan import Decision, Plan
from remat.problem import Activation, Problem
from remat.simulate import SLOT_BUFFERS, held_back, moved_bytes
from remat.transfers import offload_window, schedule_transfers

STORE, REC, OFF, NONE = 0, 1, 2, -1
_DEC = {STORE: Decision.STORE, REC: Decision.RECOMPUTE, OFF: Decision.OFFLOAD}
_CODE = {Decision.STORE: STORE, Decision.RECOMPUTE: REC, Decision.OFFLOAD: OFF}

DEFAULT_K = 3  # kept start slots per activation (see the module docstring; chosen by measurement)
# ... under other runs, where recomputing a whole block from its input can pay (synthetic chains and
# residual blocks reached the exhaustive floor from 6 kept starts, at 3 they peaked up to 47 % higher)
DEFAULT_K_RUNS = 8


class Cand:
    """One possibly-needed activation, with everything the solvers read about it."""

    __slots__ = (
        "idx", "name", "bytes", "time", "lfu", "d", "D", "L", "rec_ok", "off_ok", "out_end",
        "back_start", "lone_gap", "exposed", "inputs", "all_inputs", "rcons", "rcons_all", "kept", "sv",
        "top", "lns", "E", "segs", "tail", "pieces", "bps", "masks", "full", "nstates",
    )

    def __init__(self) -> None:
        self.inputs: list[int] = []  # candidate indices of inputs (filled when recomputable)
        self.rcons: list[int] = []  # consumers whose RECOMPUTE the optimising solvers consider
        self.rcons_all: list[int] = []  # every recomputable candidate consumer
        self.kept: list[int] = []  # kept start slots (ascending), when rec_ok
        self.sv: list[int] = []  # kept slots below ``top``: the ILP's start variables
        self.top = -1  # a RECOMPUTE v has started by top (d(v), or its latest kept slot)
        self.lns: list[int] = []  # possible last needs (ascending)
        self.E = -1  # latest possible last need
        self.segs: list[tuple[int, int]] = []  # the ILP's "live" segments past the certain part
        self.tail: list[tuple[int, int]] = []  # pieces of a conditional handover (see the module docstring)


class Structure:
    """Per-problem precomputation shared by every solver."""

    def __init__(self, problem: Problem, k: int | None = None) -> None:
        self.problem = p = problem
        self.k = (DEFAULT_K_RUNS if p.other_runs else DEFAULT_K) if k is None else max(1, int(k))
        self.n = len(p.slots)
        self.nf = p.num_forward
        self.fixed = np.array([s.fixed_bytes for s in p.slots], dtype=np.int64)
        self.cands: list[Cand] = []
        self.index: dict[str, int] = {}
        for a in sorted((a for a in p.activations if p.earliest_slots[a.name] is not None),
                        key=lambda a: a.created):
            self._add_candidate(a)
        self.kernels: dict[int, RecomputeKernel] = {
            self.index[n]: k for n, k in recompute_kernels(p).items() if n in self.index}
        self.kernel_ids: dict[int, frozenset[int]] = {
            self.index[n]: ids for n, ids in recompute_kernel_ids(p).items() if n in self.index}
        self.handover: dict[int, int] = {self.index[n]: h for n, h in handovers(p).items() if n in self.index}
        self.through: dict[int, set[int]] = {  # handed-over candidate -> consumers that hand it over
            self.index[n]: {self.index[x] for x in xs if x in self.index} for n, xs in through(p).items() if n in self.index}
        self.movers = self._movers()
        self.taken_by: dict[int, int] = {  # taken candidate -> its taker (``Activation.taken_by``)
            c.idx: self.index[a.taken_by] for c in self.cands
            if (a := p.activation(c.name)).taken_by and a.taken_by in self.index}
        # the ILP's takers: those that a kernel never inlines (an inlined taker takes nothing)
        self.taker = {c: t for c, t in self.taken_by.items() if t not in self.kernels}
        self.offload_candidates = 0
        self._offload_candidates()
        self._link_candidates()
        self._kept_starts()
        self.reach = self._reachable()
        for c in self.cands:
            self._last_needs(c)
            if self.reach[c.idx]:
                self._segments(c)
                self._tail(c)
        for c in self.cands:
            if self.reach[c.idx]:
                self._pieces(c)
                self._masks(c)
            else:
                c.pieces, c.bps, c.masks, c.full, c.nstates = [], [], [], 0, 0
        self.by_name = {c.name: c for c in self.cands}

    # ---- candidates ----------------------------------------------------------------------------
    def _add_candidate(self, a: Activation) -> None:
        """A ``Cand`` for ``a`` (created after every earlier one) with its lone-copy window."""
        p = self.problem
        c = Cand()
        c.idx, c.name, c.bytes, c.time = len(self.cands), a.name, int(a.bytes), float(a.compute_time)
        c.lfu, c.L = a.last_forward_use, p.earliest_slots[a.name]
        c.d = a.backward_uses[0] if a.backward_uses else -1
        c.D = a.backward_uses[-1] if a.backward_uses else -1
        # RECOMPUTE only helps when it can free a slot (lfu+1..S-1 non-empty for some start)
        c.rec_ok = bool(a.recomputable)
        c.off_ok = False
        c.out_end, c.back_start, c.exposed = self.nf - 1, self.nf, 0.0
        c.lone_gap = (self.nf, self.nf - 1)  # empty
        if a.offloadable and p.host_bandwidth > 0 and c.d >= 0:
            oe, bs, ex = offload_window(p, a.name)
            c.out_end, c.back_start, c.exposed = oe, bs, float(ex)
            c.lone_gap = (oe + 1, bs - 1)  # off the device when copied alone: the widest gap
            c.off_ok = self._frees(oe, bs)
        self.cands.append(c)
        self.index[a.name] = c.idx

    def _frees(self, out_end: int, back_start: int) -> bool:
        """Whether an OFFLOAD copied out by ``out_end`` and back from ``back_start`` frees memory: a
        slot between them, or, under other runs, their bytes (on the host until their backward)."""
        return back_start - out_end >= (1 if self.problem.other_runs else 2)

    def _link_candidates(self) -> None:
        """Each candidate's candidate inputs (``inputs`` only when recomputable) and its
        recomputable candidate consumers (``rcons_all``)."""
        p = self.problem
        for c in self.cands:
            a = p.activation(c.name)
            c.all_inputs = [self.index[x] for x in dict.fromkeys(a.inputs) if x in self.index]
            if a.recomputable:
                c.inputs = list(c.all_inputs)
            for x in dict.fromkeys(p.consumers[c.name]):
                if x in self.index and p.activation(x).recomputable:
                    c.rcons_all.append(self.index[x])

    def _movers(self) -> dict[int, tuple[int, tuple[int, ...]]]:
        """Candidate -> (the slot after its kernel, the backward uses its kernel holds back) for
        each candidate whose kernel holds some back (``remat.simulate.held_back``, those that
        ``SLOT_BUFFERS`` describes): recomputed, it moves them there."""
        out = {}
        described = self.problem.metadata.get(SLOT_BUFFERS, {})
        for j, k in self.kernels.items():
            back = [u for u in held_back(self.problem.activation(self.cands[j].name).backward_uses, k)
                    if self.problem.slots[u].name in described]
            if back:
                out[j] = (min(k.last + 1, self.n - 1), tuple(back))
        return out

    @cached_property
    def _slot_readers(self) -> dict[int, list[int]]:
        """Each backward slot that a mover may move -> the candidates that it reads directly."""
        slots = {u for _, back in self.movers.values() for u in back}
        out: dict[int, list[int]] = {u: [] for u in slots}
        for c in self.cands:
            for u in self.problem.activation(c.name).backward_uses:
                if u in out:
                    out[u].append(c.idx)
        return out

    def _kept_starts(self) -> None:
        """Kept start slots, consumers first: ``d`` and the consumers' kept slots up to ``d``, the
        latest ``k``; a useless RECOMPUTE (no kept start after lfu+1) is turned off."""
        cs = self.cands
        for c in reversed(cs):
            if not c.rec_ok:
                continue
            pts = {c.d} if c.d >= 0 else set()
            for x in c.rcons_all:
                if cs[x].rec_ok:
                    pts.update(cs[x].kept)
            if c.d >= 0:
                pts = {b for b in pts if b <= c.d}
            kept = sorted(pts)[-self.k:]
            if not kept or (kept[-1] <= c.lfu + 1 and not self.problem.other_runs):
                c.rec_ok = False  # frees nothing (unless other runs hold it: ``Problem.other_runs``)
            else:
                c.kept = kept
                c.top = c.d if c.d >= 0 else kept[-1]
                c.sv = [b for b in kept if b < c.top]

    def _reachable(self) -> list[bool]:
        """Per candidate: can some plan need it (read by backward, or an input of a reachable
        RECOMPUTE one)? Decisions of the others are turned off."""
        cs = self.cands
        reach = [c.d >= 0 for c in cs]
        for c in reversed(cs):
            if reach[c.idx] and c.rec_ok:
                for x in c.inputs:
                    reach[x] = True
        for c in cs:
            if not reach[c.idx]:
                c.rec_ok = c.off_ok = False
                c.kept, c.sv, c.top = [], [], -1
        return reach

    def _last_needs(self, c: Cand) -> None:
        """``rcons`` (the consumers the solvers may recompute), ``lns`` (possible last needs:
        ``D`` and the consumers' kept starts after it) and ``E``, the latest of them."""
        c.rcons = [x for x in c.rcons_all if self.cands[x].rec_ok and self.reach[x]]
        lns = {c.D} if c.D >= 0 else set()
        for x in c.rcons:
            lns.update(b for b in self.cands[x].kept if b > c.D)
        c.lns = sorted(lns)
        c.E = c.lns[-1] if c.lns else -1

    # ---- the ILP's linear forms ----------------------------------------------------------------
    def _offload_candidates(self) -> None:
        """Keep OFFLOAD for the candidates most costly to recompute per byte that the link can move
        within the forward and within the backward; give them their windows when all are copied."""
        p = self.problem
        offs = [c for c in self.cands if c.off_ok]
        if not offs:
            return
        cum, nf = p.cumulative_time, self.nf
        room = min(cum[nf], cum[-1] - cum[nf]) * p.host_bandwidth  # bytes each link moves meanwhile
        offs.sort(key=lambda c: (-(c.time / max(c.bytes, 1)), -c.bytes, c.idx))
        keep, moved = [], 0
        for c in offs:
            if moved + c.bytes <= room:
                keep.append(c)
                moved += c.bytes
        sched = schedule_transfers(p, [c.name for c in keep])
        chosen = {c.idx for c in keep}
        for c in offs:
            if c.idx in chosen:
                c.out_end, c.back_start = sched.free_after[c.name], sched.prefetch_at[c.name]
                c.off_ok = self._frees(c.out_end, c.back_start)
            else:
                c.off_ok = False
        self.offload_candidates = len(chosen)

    def st(self, c: Cand, b: int) -> list:
        """Variables (coef 1) of "c is RECOMPUTE and S(c) <= b": [] (never), [rec], or [st var]."""
        if not c.rec_ok or b < c.kept[0]:
            return []
        if b >= c.top:
            return [("rec", c.idx)]
        return [("st", c.idx, c.sv[bisect_right(c.sv, b) - 1])]

    def _segments(self, c: Cand) -> None:
        """Slot ranges past the part where ``c`` is certainly needed, on which its live indicator
        (started and still needed) is one ILP variable ``("y", idx, j)``."""
        if not c.rcons or c.E <= max(c.D, self.nf - 1):
            c.segs = []
            return
        lo = c.D + 1 if c.D >= 0 else self.nf
        starts = {lo}
        for x in c.rcons:
            for b in self.cands[x].kept:
                if lo < b + 1 <= c.E:
                    starts.add(b + 1)
        if c.D < 0 and c.rec_ok:
            for b in c.kept:
                if lo < b <= c.E:
                    starts.add(b)
        st = sorted(starts)
        c.segs = [(s, (st[i + 1] - 1) if i + 1 < len(st) else c.E) for i, s in enumerate(st)]

    def _tail(self, c: Cand) -> None:
        """``c.tail``: the slots ``h..D`` of a handover that a recomputed consumer can break, cut
        where ``st(c, .)`` changes (its kept starts below ``top``, and ``top``); [] otherwise."""
        end = self._handover_end(c)
        if not c.rcons or end >= c.D:
            c.tail = []
            return
        cuts = sorted({end + 1} | {b for b in c.sv + [c.top] if c.rec_ok and end + 1 < b <= c.D})
        c.tail = [(b, (cuts[i + 1] - 1) if i + 1 < len(cuts) else c.D) for i, b in enumerate(cuts)]

    def holds(self, c: Cand, s: int) -> tuple[list, int]:
        """(terms, const) of "``c`` holds its own buffer at backward slot ``s``" in the ILP's
        variables (coefficients +-1): stored, or recomputed and started by ``s`` (never when its
        kernel always inlines it); a copied OFFLOAD does not (its copy is never handed over)."""
        terms = [(("off", c.idx), -1)] if c.off_ok else []
        if c.rec_ok:
            terms.append((("rec", c.idx), -1))
            if not self._always_inlined(c):
                terms += [(key, 1) for key in self.st(c, s)]
        return terms, 1

    def holds_under(self, j: int, code: int, S, s: int) -> bool:
        """``holds`` for decision codes: STORE (or no code), or RECOMPUTE started by ``s``."""
        if code == OFF:
            return False
        return code != REC or (S[j] <= s and not self._always_inlined(self.cands[j]))

    def consumer_recomputed(self, j: int, codes, need) -> bool:
        """Whether decision codes recompute a consumer of candidate ``j`` (which may break a
        handover: the ILP's view, at or above ``handover_holds``)."""
        return any(need[x] and codes[x] == REC for x in self.cands[j].rcons_all)

    def handover_holds(self, j: int, codes, need, S) -> bool:
        """Whether the kernel that takes candidate ``j``'s buffer (``handover``) takes it under
        decision codes, as ``remat.simulate`` decides: it reads ``j`` (a backward use, or a consumer
        that hands ``j`` over, ``through``, recomputed inside its kernel alone) and no other needed
        consumer is RECOMPUTE."""
        passing, taken = self.through.get(j, ()), self.cands[j].d >= 0
        for x in self.cands[j].rcons_all:
            if not (need[x] and codes[x] == REC):
                continue
            if x not in passing or not self.inlined(x, codes, need, S):
                return False
            taken = True
        return taken

    def inlined(self, j: int, codes, need, S) -> bool:
        """Whether RECOMPUTE candidate ``j`` takes no bytes: its kernels hold every backward use and
        every needed RECOMPUTE consumer reads it inside them (``remat.simulate``)."""
        if codes[j] != REC or j not in self._uses_inside:
            return False
        k = self.kernels[j]
        readers = (x for x in self.cands[j].rcons_all if need[x] and codes[x] == REC)
        return all(reads_inside(k, x, self.kernels, self.kernel_ids, S[x]) for x in readers)

    @cached_property
    def _uses_inside(self) -> frozenset[int]:
        """The candidates whose recompute kernels hold every backward use of theirs."""
        return frozenset(j for j, k in self.kernels.items()
                         if set(self.problem.activation(self.cands[j].name).backward_uses) <= set(k.slots))

    def _pieces(self, c: Cand) -> None:
        """``c.pieces``: list of (lo, hi, const, {var: coef}) in units of c.bytes.

        Case A (backward reads it: always needed, keep = 1 - rec - off): on lfu+1..D the form is
        1 - rec*[t < d] + st(t) - off*[out_end < t < back_start]; past D it is y_j per segment.
        Case B (needed only through recomputed consumers): keep on lfu+1..nf-1, y_j per segment.
        A handed-over ``c`` ends at ``_handover_end``; past it, ``h_j`` per piece of ``c.tail``.
        """
        k = c.idx
        ev: dict[int, dict] = {}

        def add(lo: int, hi: int, var, coef: int) -> None:
            if lo > hi:
                return
            ev.setdefault(lo, {})
            ev[lo][var] = ev[lo].get(var, 0) + coef
            ev.setdefault(hi + 1, {})
            ev[hi + 1][var] = ev[hi + 1].get(var, 0) - coef

        lo0, end, inlined = c.lfu + 1, self._handover_end(c), self._always_inlined(c)
        if c.d >= 0:
            add(lo0, end, None, 1)
            if c.rec_ok:
                add(lo0, end if inlined else min(c.d - 1, end), ("rec", k), -1)
                for i, b in enumerate([] if inlined else c.sv):
                    nxt = c.sv[i + 1] if i + 1 < len(c.sv) else c.top
                    add(b, min(nxt - 1, end), ("st", k, b), 1)
            if c.off_ok:
                add(c.out_end + 1, min(c.back_start - 1, end), ("off", k), -1)
                add(max(lo0, end + 1), c.D, ("off", k), 1)  # a copied OFFLOAD keeps its buffer
        elif c.rcons:
            add(lo0, self.nf - 1, ("keep", k), 1)
        for j, (s, e) in enumerate(c.segs):
            add(s, e, ("y", k, j), 1)
        for j, (s, e) in enumerate(c.tail):
            add(s, e, ("h", k, j), 1)
        certain = (max(lo0, c.d), c.D if c.tail else end) if c.d >= 0 else (1, 0)
        for x, (lo, hi) in self._kernel_windows(c, inlined):
            for a, b in _outside(lo, hi, certain):
                add(a, b, ("rec", x), 1)
        c.pieces = _pieces_of(ev)

    def _handover_end(self, c: Cand) -> int:
        """The last slot of ``c``'s certain part in the ILP's form: ``D``, or the slot before the
        kernel that takes its buffer (``handover``); STORE and RECOMPUTE end there unless a
        recomputed consumer breaks the handover (``c.tail``)."""
        h = self.handover.get(c.idx)
        return c.D if h is None or c.d < 0 else min(c.D, h - 1)

    def _always_inlined(self, c: Cand) -> bool:
        """Whether a RECOMPUTE ``c`` never takes bytes: its kernels hold every backward use and
        every consumer that may be recomputed reads it inside them from any start (``remat.simulate``)."""
        k = self.kernels.get(c.idx)
        if k is None or not c.rec_ok:
            return False
        uses = self.problem.activation(c.name).backward_uses
        return set(uses) <= set(k.slots) and all(
            reads_inside(k, x, self.kernels, self.kernel_ids, float("inf")) for x in c.rcons_all)

    def _kernel_windows(self, c: Cand, inlined: bool) -> list[tuple[int, tuple[int, int]]]:
        """(candidate whose RECOMPUTE keeps ``c`` live, slot range) under the last compile's
        kernels: ``c`` itself across its kernel (to the slot after it when it moves readers there),
        and each consumer's kernel, which reads ``c`` from its first slot to its last. Counted on top of ``c``'s form (an over-count where that
        form already holds ``c``): the ILP's rows stay at or above the exact peak. An ``inlined``
        ``c`` takes no bytes of its own."""
        k = self.kernels.get(c.idx)
        last = self.movers[c.idx][0] if c.idx in self.movers else k.last if k is not None else -1
        own = [(c.idx, (k.first, last))] if k is not None and c.rec_ok and not inlined else []
        return own + [(x, (self.kernels[x].first, self.kernels[x].last)) for x in c.rcons if x in self.kernels]

    @cached_property
    def move_terms(self) -> list[tuple[int, int, int, tuple]]:
        """(lo, hi, bytes, ("rec", j)): what the ILP's memory rows add on slots ``lo..hi`` when
        mover ``j`` is RECOMPUTE (see the module docstring): each other candidate that a moved op
        reads, past its last backward use, and each buffer it reads (``SLOT_BUFFERS``), past its
        last slot, up to the slot after the kernel; a moved op's result leaves its slot until then
        when no other candidate can move it (several movers' terms would subtract it twice)."""
        movers_of: dict[int, list[int]] = {}
        for j, (_, back) in self.movers.items():
            for u in back if self.cands[j].rec_ok else ():
                movers_of.setdefault(u, []).append(j)
        facts = self.problem.metadata.get(SLOT_BUFFERS, {})
        out: dict[tuple, tuple[int, int, int, tuple]] = {}
        for u, js in movers_of.items():
            made, made_end, reads = facts.get(self.problem.slots[u].name, (0, -1, ()))
            for j in js:
                after, var = self.movers[j][0], ("rec", j)
                for x in (x for x in self._slot_readers[u] if x != j):  # j's own: ``_kernel_windows``
                    out[(j, "c", x)] = (self.cands[x].D + 1, after, self.cands[x].bytes, var)
                for buffer, nbytes, end in reads:
                    out[(j, "b", buffer)] = (end + 1, after, nbytes, var)
                if len(js) == 1:
                    out[(j, "r", u)] = (u, min(after - 1, made_end), -made, var)
        return [t for t in out.values() if t[0] <= t[1] and t[2]]

    def _masks(self, c: Cand) -> None:
        """Live bitmask over the concrete states (decision, start, last need, whether a recomputed
        consumer breaks its handover), by slot range, as the ILP's pieces count them (a handed-over
        buffer ends at ``_handover_end``, where a copied OFFLOAD one keeps its buffer; kernel
        windows are left out)."""
        ivs: list[list[tuple[int, int]]] = []  # per state: device intervals
        lo0, end = c.lfu + 1, self._handover_end(c)
        if c.d < 0:
            ivs.append([])  # not needed
        for ln in c.lns:
            ends = ([end, c.D] if c.tail else [end]) if ln == c.D else [ln]  # past D: a consumer is recomputed
            for hi in ends:
                ivs.append([(lo0, hi)])
                if c.rec_ok:
                    ivs += [[] if c.idx in self.taker else [(s, hi)] for s in c.kept if s <= ln]
            if c.off_ok:
                ivs.append([(lo0, c.out_end), (min(c.back_start, end + 1), ln)])
        c.nstates = len(ivs)
        c.full = (1 << len(ivs)) - 1
        pts = sorted({lo for iv in ivs for lo, hi in iv if lo <= hi} | {hi + 1 for iv in ivs for lo, hi in iv if lo <= hi})
        masks = [0] * len(pts)
        for si, iv in enumerate(ivs):
            bit = 1 << si
            for lo, hi in iv:
                if lo > hi:
                    continue
                a = bisect_left(pts, lo)
                b = bisect_left(pts, hi + 1)
                for q in range(a, b):
                    masks[q] |= bit
        cb, cm = [], []
        for b, m in zip(pts, masks):
            if cm and cm[-1] == m:
                continue
            cb.append(b)
            cm.append(m)
        c.bps, c.masks = cb, cm

    def mask_at(self, c: Cand, t: int) -> int:
        i = bisect_right(c.bps, t) - 1
        return c.masks[i] if i >= 0 else 0

    # ---- plans -------------------------------------------------------------------------------
    def codes(self, dec: Mapping[str, object]) -> np.ndarray:
        out = np.full(len(self.cands), NONE, dtype=np.int64)
        for name, d in dec.items():
            if isinstance(d, (int, np.integer)) and not isinstance(d, Decision):
                out[self.index[name]] = int(d)
            else:
                out[self.index[name]] = _CODE[Decision(d)]
        return out

    def normalize(self, dec: Mapping[str, object]) -> dict[str, Decision]:
        """Decisions restricted to exactly the needed set (missing needed ones become STORE)."""
        codes = self.codes({k: v for k, v in dec.items() if k in self.index})
        need = self.needed(codes)
        return {c.name: _DEC[int(codes[c.idx]) if codes[c.idx] != NONE else STORE]
                for c in self.cands if need[c.idx]}

    def needed(self, codes) -> list[bool]:
        cs = self.cands
        need = [c.d >= 0 for c in cs]
        for c in reversed(cs):
            if need[c.idx] and codes[c.idx] == REC:
                for x in c.all_inputs:
                    need[x] = True
        return need

    def jit(self, codes) -> tuple[list[bool], list[int], list[int]]:
        """(needed, S, last_need) per candidate index for decision codes (NONE where unneeded).
        Only RECOMPUTE candidates move anything: they are visited in reverse creation order (a
        consumer comes after its inputs)."""
        cs = self.cands
        need, S, ln = list(self._jit_start[0]), list(self._jit_start[1]), list(self._jit_start[2])
        moved = self.moved(codes)
        if moved:
            self._move_reads(codes, moved, S, ln)
        spans = self._spans
        for j in np.flatnonzero(np.asarray(codes) == REC)[::-1].tolist():
            if need[j]:
                span = spans.get(j)  # ``window``, inlined
                lo, hi = (S[j], S[j]) if span is None else (min(S[j], span[0]), span[1])
                for x in cs[j].all_inputs:
                    need[x] = True
                    if S[x] < 0 or lo < S[x]:
                        S[x] = lo
                    if hi > ln[x]:
                        ln[x] = hi
        return need, S, ln

    def moved(self, codes) -> dict[int, int]:
        """Backward slot -> the slot its op acts at, for decision codes (``remat.simulate.moved_readers``)."""
        out: dict[int, int] = {}
        if not self.movers:
            return out
        ids = self._mover_ids
        for j in ids[np.asarray(codes)[ids] == REC].tolist():
            after, back = self.movers[j]
            for u in back:
                out[u] = max(out.get(u, u), after)
        return out

    @cached_property
    def _mover_ids(self) -> np.ndarray:
        """The candidates that move readers when recomputed (``movers``' keys), as an index array."""
        return np.array(list(self.movers), dtype=np.int64)

    def _move_reads(self, codes, moved: dict[int, int], S: list[int], ln: list[int]) -> None:
        """The direct reads under ``moved``: a moved op reads what it reads where it acts; a
        RECOMPUTE mover starts at its kernel's last slot for the uses that kernel holds back."""
        for u, at in moved.items():
            for x in self._slot_readers.get(u, ()):
                ln[x] = max(ln[x], at)
        for j, (_, back) in self.movers.items():
            if codes[j] == REC:
                last = self.kernels[j].last
                S[j] = min(last if u in back else u for u in self.problem.activation(self.cands[j].name).backward_uses)

    def window(self, j: int, start: int) -> tuple[int, int]:
        """The slots over which candidate ``j``, recomputed from ``start``, reads its inputs: that
        slot, or the backward kernels that recompute it, from ``start`` if that comes first
        (``remat.simulate``)."""
        span = self._spans.get(j)
        return (start, start) if span is None else (min(start, span[0]), span[1])

    @cached_property
    def _spans(self) -> dict[int, tuple[int, int]]:
        """Candidate -> (first, last) slot of the kernels that recompute it."""
        return {j: (k.first, k.last) for j, k in self.kernels.items()}

    def _interval_under_facts(self, j: int, code: int, lo: int, hi: int, codes, need, S, ln) -> tuple[int, int]:
        """Device interval ``lo..hi`` of needed candidate ``j`` under the last compile's kernels
        and its taker, as the simulator counts it: a RECOMPUTE one across its kernel, or none when
        only that kernel reads it; a buffer handed to a kernel's result ends where that kernel
        starts when the plan lets it (``handover_holds``); a RECOMPUTE one ends before its
        RECOMPUTE taker's start."""
        span = self._spans.get(j)
        if code == REC and span is not None:
            lo, hi = min(lo, span[0]), max(hi, span[1])
            if self.inlined(j, codes, need, S):
                return lo, lo - 1
        h = self.handover.get(j)
        if h is not None and self.handover_holds(j, codes, need, S):
            hi = min(hi, h - 1)
        t = self.taken_by.get(j)
        if code == REC and t is not None and need[t] and codes[t] == REC and not self.inlined(t, codes, need, S):
            hi = min(hi, self.window(t, S[t])[0] - 1)
        return lo, hi

    def evaluate(self, codes) -> tuple[np.ndarray, list[bool], list[int], list[int]]:
        """(profile, needed, S, last_need) for decision codes; codes of unneeded ones are ignored
        and needed ones without a code count as STORE. Stored and recomputed candidates are
        counted as arrays; OFFLOAD ones and those under kernel facts or taken one by one."""
        need, S, ln = self.jit(codes)
        code = np.asarray(codes)
        live = np.array(need, dtype=bool) & (self._bytes > 0)
        by_one = live & ((code == OFF) | self._one_by_one)
        bulk = live & ~by_one
        lo = np.where(code == REC, np.array(S, dtype=np.int64), self._lfu + 1)[bulk]
        hi = np.array(ln, dtype=np.int64)[bulk]
        los, his, bs = [lo[lo <= hi]], [hi[lo <= hi]], [self._bytes[bulk][lo <= hi]]
        if by_one.any():
            one = self._intervals_one_by_one(np.flatnonzero(by_one).tolist(), code.tolist(), need, S, ln)
            los.append(np.array(one[0], dtype=np.int64))
            his.append(np.array(one[1], dtype=np.int64))
            bs.append(np.array(one[2], dtype=np.int64))
        lo_all, hi_all, b_all = np.concatenate(los), np.concatenate(his), np.concatenate(bs)
        diff = np.zeros(self.n + 1, dtype=np.int64)
        np.add.at(diff, lo_all, b_all)
        np.add.at(diff, hi_all + 1, -b_all)
        profile = self.fixed + np.cumsum(diff[:-1]) + self.other_runs_bytes(code, need)
        moved = self.moved(code) if self.movers else None
        if moved:
            profile = profile + np.array(moved_bytes(self.problem, moved), dtype=np.int64)
        return profile, need, S, ln

    def other_runs_bytes(self, codes, need) -> int:
        """What the other runs per step hold under decision codes (``Problem.other_runs_bytes``):
        the needed candidates kept on the device for the backward (STORE, no code, or an OFFLOAD
        that no copy takes), as ``remat.simulate`` counts them."""
        if not self.problem.other_runs:
            return 0
        return self.problem.other_runs_bytes(self.stored_bytes(codes, need))

    def stored_bytes(self, codes, need) -> int:
        """Bytes of the needed candidates that decision codes keep on the device for the backward."""
        code = np.asarray(codes)
        kept = np.asarray(need, dtype=bool) & ((code == STORE) | (code == NONE) | ((code == OFF) & ~self._off_ok))
        return int(self._bytes[kept].sum())

    def _intervals_one_by_one(self, ids: list[int], code, need, S, ln) -> tuple[list, list, list]:
        """(los, his, bytes) of the device intervals of needed candidates ``ids`` that are
        OFFLOAD (copied under the joint schedule, else kept), under kernel facts or taken."""
        cs = self.cands
        sched = self.transfers(code, need)
        los, his, bs = [], [], []
        for j in ids:
            c, d = cs[j], int(code[j])
            copied = d == OFF and c.name in sched.free_after
            if d == REC:
                lo = S[j]
            elif copied:
                out_end = sched.free_after[c.name]
                if c.lfu + 1 <= out_end:
                    los.append(c.lfu + 1)
                    his.append(out_end)
                    bs.append(c.bytes)
                lo = sched.prefetch_at[c.name]
            else:
                lo = c.lfu + 1
            hi = ln[j]
            if not copied and self._one_by_one[j]:
                lo, hi = self._interval_under_facts(j, d, lo, hi, code, need, S, ln)
            if lo <= hi:
                los.append(lo)
                his.append(hi)
                bs.append(c.bytes)
        return los, his, bs

    @cached_property
    def _jit_start(self) -> tuple[list[bool], list[int], list[int]]:
        """(needed, S, last_need) with nothing recomputed: backward's own reads."""
        return [c.d >= 0 for c in self.cands], [c.d for c in self.cands], [c.D for c in self.cands]

    @cached_property
    def _bytes(self) -> np.ndarray:
        return np.array([c.bytes for c in self.cands], dtype=np.int64)

    @cached_property
    def _lfu(self) -> np.ndarray:
        return np.array([c.lfu for c in self.cands], dtype=np.int64)

    @cached_property
    def _off_ok(self) -> np.ndarray:
        return np.array([c.off_ok for c in self.cands], dtype=bool)

    @cached_property
    def _one_by_one(self) -> np.ndarray:
        """Per candidate: whether its interval is counted one by one (``_interval_under_facts``):
        a recompute kernel or a handover of the last compile covers it, or it is taken."""
        facts = (self.kernels, self.handover, self.taken_by)
        return np.array([any(c.idx in f for f in facts) for c in self.cands], dtype=bool)

    def transfers(self, codes, need=None):
        """The joint copy schedule of the needed OFFLOAD candidates that can be offloaded."""
        if need is None:
            need = self.needed(codes)
        names = [self.cands[j].name for j in self._offloadable if need[j] and codes[j] == OFF]
        return schedule_transfers(self.problem, names)

    @cached_property
    def _offloadable(self) -> list[int]:
        return [c.idx for c in self.cands if c.off_ok]

    def profile(self, dec: Mapping[str, Decision]) -> np.ndarray:
        """Device bytes at every slot for normalized decisions (exact, int64)."""
        return self.evaluate(self.codes(dec))[0]

    def violations(self, dec: Mapping[str, Decision]) -> list[str]:
        """Why normalized decisions are not a valid plan (OFFLOAD needed before d(v))."""
        codes = self.codes(dec)
        need, S, _ = self.jit(codes)
        out = []
        for c in self.cands:
            if need[c.idx] and codes[c.idx] == OFF and (c.d < 0 or S[c.idx] < c.d or not c.off_ok):
                out.append(f"{c.name!r} is OFFLOAD but needed at slot {S[c.idx]}, before its prefetch")
            if need[c.idx] and codes[c.idx] == REC and not self.problem.activation(c.name).recomputable:
                out.append(f"{c.name!r} is RECOMPUTE but not recomputable")
        return out

    def cost(self, dec: Mapping[str, Decision]) -> float:
        """Added seconds of normalized decisions: recompute time plus unhidden transfer time."""
        t = sum(self.cands[self.index[n]].time for n, d in dec.items() if d is Decision.RECOMPUTE)
        if any(d is Decision.OFFLOAD for d in dec.values()):
            t += self.transfers(self.codes(dec)).exposed
        return t

    def peak(self, dec: Mapping[str, Decision]) -> int:
        return int(self.profile(dec).max()) if self.n else 0

    def store_all(self) -> dict[str, Decision]:
        return {c.name: Decision.STORE for c in self.cands if c.d >= 0}

    def lower_bound_peak(self) -> int:
        """max over slots of fixed bytes plus the bytes that every plan keeps live there.

        An OFFLOAD copied with fewer others is off the device longer than its window here (see
        the module docstring), so its lone-copy gap is taken out of what every plan keeps. A value
        that a kernel may inline or whose buffer a kernel takes over (``kernels``, ``handover``)
        may take fewer bytes than its states say: it counts for nothing here. The other runs per
        step hold at least what every plan stores (``always_stored_bytes``) everywhere. A moved op's
        result may leave its slot (``_most_moved_results``)."""
        if not self.n:
            return 0
        diff = np.zeros(self.n + 1, dtype=np.int64)
        for c in self.cands:
            if c.d < 0 or not c.bytes or c.idx in self.kernels or c.idx in self.handover:
                continue
            g0, g1 = c.lone_gap if c.off_ok else (self.n, self.n - 1)
            for i, m in enumerate(c.masks):
                if m == c.full and m:
                    lo = c.bps[i]
                    hi = c.bps[i + 1] - 1 if i + 1 < len(c.bps) else self.n - 1
                    for a, b in ((lo, min(hi, g0 - 1)), (max(lo, g1 + 1), hi)):
                        if a <= b:
                            diff[a] += c.bytes
                            diff[b + 1] -= c.bytes
        others = self.problem.other_runs_bytes(self.always_stored_bytes())
        return int((self.fixed + np.cumsum(diff[:-1]) + self._most_moved_results()).max()) + others

    def _most_moved_results(self) -> np.ndarray:
        """Per slot, at most what moved ops' results leave there (<= 0; ``move_terms``): every
        mover recomputed, the buffers they read not extended."""
        moved = self.moved([REC] * len(self.cands))
        return np.array(moved_bytes(self.problem, moved, reads=False) if moved else [0] * self.n, dtype=np.int64)

    def always_stored_bytes(self) -> int:
        """Bytes of the candidates that every plan STOREs: backward reads them, and they can be
        neither recomputed nor offloaded."""
        return sum(c.bytes for c in self.cands if c.d >= 0 and not c.rec_ok and not c.off_ok)


def _outside(lo: int, hi: int, certain: tuple[int, int]) -> list[tuple[int, int]]:
    """The parts of ``lo..hi`` outside the inclusive range ``certain`` (maybe empty ranges)."""
    a, b = certain
    if a > b:
        return [(lo, hi)]
    return [(lo, min(hi, a - 1)), (max(lo, b + 1), hi)]


def _pieces_of(ev: dict[int, dict]) -> list[tuple[int, int, int, dict]]:
    """Slot ranges on which the summed form is constant, from its change events
    ``{slot: {var: delta}}`` (``None`` is the constant): (lo, hi, const, {var: coef})."""
    pieces = []
    cur: dict = {}
    pts = sorted(ev)
    for s, e in zip(pts, pts[1:] + [None]):
        for var, dv in ev[s].items():
            v = cur.get(var, 0) + dv
            if v:
                cur[var] = v
            else:
                cur.pop(var, None)
        if e is not None and cur:
            pieces.append((s, e - 1, cur.get(None, 0), {v: cf for v, cf in cur.items() if v is not None}))
    return pieces


def make_plan(
    struct: Structure,
    dec: Mapping[str, Decision],
    solver: str,
    budget: int | None,
    status: str = "heuristic",
    bound: float | None = None,
    gap: float | None = None,
    solve_time_s: float = 0.0,
    info: dict | None = None,
) -> Plan:
    """A Plan over exactly the needed set with its exactly recomputed objective."""
    dec = struct.normalize(dec)
    bad = struct.violations(dec)
    if bad:  # every solver returns valid plans; one that does not is a solver bug
        raise RuntimeError(f"{solver}: invalid plan: {bad[0]} (bug)")
    info = dict(info or {})
    info.setdefault("peak_bytes", struct.peak(dec))
    return Plan(
        decisions=dec,
        solver=solver,
        status=status,
        objective=struct.cost(dec),
        bound=bound,
        gap=gap,
        solve_time_s=solve_time_s,
        budget_bytes=budget,
        info=info,
    )
