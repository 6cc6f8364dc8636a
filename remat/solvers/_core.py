"""Shared structure of the solvers: candidate activations, their live pieces, exact evaluation.

Nothing here imports torch. Everything follows the memory semantics of ``remat.problem``:

* an activation is *possibly needed* when it has backward uses, or when one of its consumers is
  recomputable and possibly needed; only those ever take a decision;
* ``last_need(a) = max(backward_uses(a), recompute_slot(c) for needed RECOMPUTE consumers c)``;
* extra device bytes: STORE ``lfu+1..last_need``; RECOMPUTE ``rs..last_need``; OFFLOAD
  ``lfu+1..out_end`` and ``back_start..last_need``;
* ``Problem.conflicts``: when a consumer ``c`` is RECOMPUTE and ``recompute_slot(c)`` comes before
  ``recompute_slot(a)`` of its input ``a``, then ``a`` must be STORE (a RECOMPUTE or OFFLOAD input
  is back on the device only at its own, later, recompute slot). ``Structure.conflicts`` keeps the
  pairs in which both decisions are options for a solver; every solver must respect them.

``Structure`` precomputes, per candidate, the slot pieces on which its contribution to the memory
at a slot is a fixed linear form of its own decision variables (the ILP rows are sums of these
forms) and the same contribution for every concrete *state* (decision x last need) that a plan can
put it in (the row-dominance test of the ILP uses those).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping

import numpy as np

from remat.plan import Decision, Plan
from remat.problem import Problem

STORE, REC, OFF, NONE = 0, 1, 2, -1
_DEC = {STORE: Decision.STORE, REC: Decision.RECOMPUTE, OFF: Decision.OFFLOAD}
_CODE = {Decision.STORE: STORE, Decision.RECOMPUTE: REC, Decision.OFFLOAD: OFF}


class Cand:
    """One possibly-needed activation, with everything the solvers read about it."""

    __slots__ = (
        "idx", "name", "bytes", "time", "lfu", "rs", "D", "rec_ok", "off_ok", "out_end",
        "back_start", "exposed", "inputs", "rcons", "rcons_all", "ext", "pieces", "bps", "masks",
        "full", "nstates", "cf_inputs", "cf_cons",
    )

    def __init__(self) -> None:
        self.inputs: list[int] = []  # candidate indices of inputs (filled when recomputable)
        self.rcons: list[int] = []  # consumers whose RECOMPUTE the ILP considers (rec_ok)
        self.rcons_all: list[int] = []  # every recomputable candidate consumer
        self.cf_inputs: list[int] = []  # inputs that must be STORE when this one is RECOMPUTE
        self.cf_cons: list[int] = []  # consumers whose RECOMPUTE forces this one to be STORE


class Structure:
    """Per-problem precomputation shared by every solver (cheap: O(slots + activations))."""

    def __init__(self, problem: Problem) -> None:
        self.problem = p = problem
        self.n = n = len(p.slots)
        self.nf = nf = p.num_forward
        self.fixed = np.array([s.fixed_bytes for s in p.slots], dtype=np.int64)
        rs = p.recompute_slots
        cons = p.consumers
        order = sorted(p.activations, key=lambda a: a.created, reverse=True)
        possible: dict[str, bool] = {}
        for a in order:  # consumers are created strictly later: they are already decided
            possible[a.name] = bool(a.backward_uses) or any(
                possible[c] and p.activation(c).recomputable for c in cons[a.name]
            )
        acts = [a for a in p.activations if possible[a.name]]
        acts.sort(key=lambda a: a.created)
        self.cands: list[Cand] = []
        self.index: dict[str, int] = {}
        bw = p.host_bandwidth
        for i, a in enumerate(acts):
            c = Cand()
            c.idx, c.name, c.bytes, c.time = i, a.name, int(a.bytes), float(a.compute_time)
            c.lfu, c.rs = a.last_forward_use, rs[a.name]
            c.D = max(a.backward_uses) if a.backward_uses else -1
            # RECOMPUTE only helps when it frees slots (lfu+1..rs-1 non-empty)
            c.rec_ok = bool(a.recomputable) and c.rs > c.lfu + 1
            c.off_ok = False
            c.out_end, c.back_start, c.exposed = nf - 1, nf, 0.0
            if a.offloadable and bw > 0:
                oe, bs, ex = p.offload_window(a.name)
                c.out_end, c.back_start, c.exposed = oe, bs, float(ex)
                c.off_ok = bs - 1 >= oe + 1  # frees at least one slot
            self.cands.append(c)
            self.index[a.name] = i
        for c in self.cands:
            a = p.activation(c.name)
            if a.recomputable:
                c.inputs = [self.index[x] for x in a.inputs]
            for x in cons[c.name]:
                if x in self.index and p.activation(x).recomputable:
                    c.rcons_all.append(self.index[x])
        # rec_ok (RECOMPUTE frees a slot) is what the optimising solvers consider; a useless
        # RECOMPUTE has the STORE lifetime, costs time and needs its inputs: never better.
        # Only candidates reachable through rec_ok consumers can then be needed.
        reach = [c.D >= 0 for c in self.cands]
        for c in reversed(self.cands):
            if reach[c.idx] and c.rec_ok:
                for k in c.inputs:
                    reach[k] = True
        for c in self.cands:
            if not reach[c.idx]:
                c.rec_ok = c.off_ok = False
            c.rcons = [k for k in c.rcons_all if self.cands[k].rec_ok and reach[k]]
            pts = sorted({self.cands[k].rs for k in c.rcons})
            c.ext = [b for b in pts if b > c.D] if c.D >= 0 else pts
        self.reach = reach
        # conflicts between options the solvers consider: (input, consumer) candidate indices
        self.conflicts: list[tuple[int, int]] = []
        for i_name, c_name in dict.fromkeys(p.conflicts):  # an input may be listed twice
            i, c = self.index.get(i_name), self.index.get(c_name)
            if i is None or c is None:
                continue
            self.cands[i].cf_cons.append(c)
            self.cands[c].cf_inputs.append(i)
            if self.cands[c].rec_ok and (self.cands[i].rec_ok or self.cands[i].off_ok):
                self.conflicts.append((i, c))
        for c in self.cands:
            self._pieces(c)
        self.by_name = {c.name: c for c in self.cands}

    # ---- pieces: the ILP's linear form of each candidate's contribution, by slot range ------
    def _pieces(self, c: Cand) -> None:
        """``c.pieces``: list of (lo, hi, const, {var: coef}) in units of c.bytes (coef +-1).

        Variables are named ("rec", k), ("off", k), ("keep", k), ("z", k, j) with k = c.idx.
        Case A (backward uses, need = 1, keep = 1 - rec - off): on lfu+1..D the form is
        1 - rec*[t < rs] - off*[out_end < t < back_start]; on (b_{j-1}, b_j] it is z_j.
        Case B (needed only through recomputed consumers; need = keep + rec + off):
        on lfu+1..b_1 it is keep + rec*[t >= rs] + off*[t <= out_end or t >= back_start];
        on (b_{j-1}, b_j], j >= 2, it is z_j.
        """
        k = c.idx
        ev: dict[int, dict] = {}  # slot -> {var: delta}, const under key None

        def add(lo: int, hi: int, var, coef: int) -> None:
            if lo > hi:
                return
            ev.setdefault(lo, {})
            ev[lo][var] = ev[lo].get(var, 0) + coef
            ev.setdefault(hi + 1, {})
            ev[hi + 1][var] = ev[hi + 1].get(var, 0) - coef

        lo0 = c.lfu + 1
        if c.D >= 0:
            add(lo0, c.D, None, 1)
            if c.rec_ok:
                add(lo0, c.rs - 1, ("rec", k), -1)
            if c.off_ok:
                add(c.out_end + 1, c.back_start - 1, ("off", k), -1)
            prev = c.D
            for j, b in enumerate(c.ext):
                add(prev + 1, b, ("z", k, j), 1)
                prev = b
        elif c.ext:
            b1 = c.ext[0]
            add(lo0, b1, ("keep", k), 1)
            if c.rec_ok:
                add(c.rs, b1, ("rec", k), 1)
            if c.off_ok:
                add(lo0, c.out_end, ("off", k), 1)
                add(c.back_start, b1, ("off", k), 1)
            prev = b1
            for j, b in enumerate(c.ext[1:], start=1):
                add(prev + 1, b, ("z", k, j), 1)
                prev = b
        pieces = []
        cur: dict = {}
        pts = sorted(ev)
        for s, e in zip(pts, pts[1:] + [None]):
            for var, d in ev[s].items():
                v = cur.get(var, 0) + d
                if v:
                    cur[var] = v
                else:
                    cur.pop(var, None)
            if e is not None and cur:
                pieces.append((s, e - 1, cur.get(None, 0), {v: cf for v, cf in cur.items() if v is not None}))
        c.pieces = pieces
        # concrete states: (decision, number of extension points reached) -> live bitmask per piece
        states = []
        decs = [STORE] + ([REC] if c.rec_ok else []) + ([OFF] if c.off_ok else [])
        if c.D >= 0:
            for d in decs:
                for j in range(len(c.ext) + 1):
                    states.append((d, j))
        else:
            states.append((NONE, 0))
            for d in decs:
                for j in range(1, len(c.ext) + 1):
                    states.append((d, j))
        c.nstates = len(states)
        c.full = (1 << len(states)) - 1
        bps, masks = [], []
        for lo, hi, const, terms in pieces:
            m = 0
            for si, (d, j) in enumerate(states):
                val = const
                if d != NONE:
                    val += self._state_value(c, terms, d, j)
                if val:
                    m |= 1 << si
            bps.append(lo)
            masks.append(m)
            bps.append(hi + 1)
            masks.append(0)
        # compress consecutive duplicates; masks[i] holds on [bps[i], bps[i+1])
        cb, cm = [], []
        for b, m in zip(bps, masks):
            if cb and cb[-1] == b:
                cm[-1] = m
            elif cm and cm[-1] == m:
                continue
            else:
                cb.append(b)
                cm.append(m)
        c.bps, c.masks = cb, cm

    @staticmethod
    def _state_value(c: Cand, terms: dict, d: int, j: int) -> int:
        k = c.idx
        val = 0
        for var, coef in terms.items():
            kind = var[0]
            if kind == "rec":
                x = d == REC
            elif kind == "off":
                x = d == OFF
            elif kind == "keep":
                x = d == STORE
            else:  # ("z", k, jj): reached when the last need extends past point jj
                x = var[2] < j
            if x:
                val += coef
        return val

    def mask_at(self, c: Cand, t: int) -> int:
        i = bisect_right(c.bps, t) - 1
        return c.masks[i] if i >= 0 else 0

    # ---- plans -------------------------------------------------------------------------------
    def normalize(self, dec: Mapping[str, object]) -> dict[str, Decision]:
        """Decisions restricted to exactly the needed set (missing needed ones become STORE)."""
        p = self.problem
        codes = {}
        for name, d in dec.items():
            if isinstance(d, int) and not isinstance(d, Decision):
                codes[name] = d
            else:
                codes[name] = _CODE[Decision(d)]
        needed = {c.name for c in self.cands if c.D >= 0}
        for c in reversed(self.cands):
            if c.name in needed and codes.get(c.name, STORE) == REC:
                needed.update(p.activation(c.name).inputs)
        out = {}
        for c in self.cands:
            if c.name in needed:
                out[c.name] = _DEC[codes.get(c.name, STORE)]
        return out

    def profile(self, dec: Mapping[str, Decision]) -> np.ndarray:
        """Device bytes at every slot for normalized decisions (exact, int64)."""
        diff = np.zeros(self.n + 1, dtype=np.int64)
        for lo, hi, b in self.intervals(dec):
            diff[lo] += b
            diff[hi + 1] -= b
        return self.fixed + np.cumsum(diff[:-1])

    def intervals(self, dec: Mapping[str, Decision]):
        cands = self.cands
        idx = self.index
        for name, d in dec.items():
            c = cands[idx[name]]
            ln = c.D
            for k in c.rcons_all:
                x = cands[k]
                if dec.get(x.name) is Decision.RECOMPUTE and x.rs > ln:
                    ln = x.rs
            if d is Decision.RECOMPUTE:
                lo = c.rs
            elif d is Decision.OFFLOAD:
                if c.lfu + 1 <= c.out_end:
                    yield c.lfu + 1, c.out_end, c.bytes
                lo = c.back_start
            else:
                lo = c.lfu + 1
            if lo <= ln:
                yield lo, ln, c.bytes

    def violations(self, dec: Mapping[str, Decision]) -> list[tuple[str, str]]:
        """Conflict pairs (input, consumer) that normalized decisions break."""
        out = []
        for i_name, c_name in dict.fromkeys(self.problem.conflicts):
            if dec.get(c_name) is Decision.RECOMPUTE and dec.get(i_name) in (Decision.RECOMPUTE, Decision.OFFLOAD):
                out.append((i_name, c_name))
        return out

    def cost(self, dec: Mapping[str, Decision]) -> float:
        t = 0.0
        for name, d in dec.items():
            c = self.cands[self.index[name]]
            if d is Decision.RECOMPUTE:
                t += c.time
            elif d is Decision.OFFLOAD:
                t += c.exposed
        return t

    def peak(self, dec: Mapping[str, Decision]) -> int:
        return int(self.profile(dec).max()) if self.n else 0

    def store_all(self) -> dict[str, Decision]:
        return {c.name: Decision.STORE for c in self.cands if c.D >= 0}

    def lower_bound_peak(self) -> int:
        """max over slots of fixed bytes plus the bytes that every plan keeps live there."""
        diff = np.zeros(self.n + 1, dtype=np.int64)
        for c in self.cands:
            if c.D < 0:
                continue
            for i, m in enumerate(c.masks):
                if m == c.full and m:
                    lo = c.bps[i]
                    hi = c.bps[i + 1] - 1 if i + 1 < len(c.bps) else self.n - 1
                    diff[lo] += c.bytes
                    diff[hi + 1] -= c.bytes
        return int((self.fixed + np.cumsum(diff[:-1])).max()) if self.n else 0


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
    if bad:  # every solver respects Problem.conflicts; a plan that does not is a solver bug
        raise RuntimeError(f"{solver}: plan recomputes {bad[0][1]!r} but does not store its input {bad[0][0]!r} (bug)")
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
