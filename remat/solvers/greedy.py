"""Greedy: from store-all, switch the best bytes-per-second activation at the peak until under cap.

Each step looks at the slot where memory peaks, and among the STORE activations live there picks
the one whose switch to RECOMPUTE (bytes freed at that slot minus the bytes its newly needed or
extended inputs add there, per second of recompute) or to OFFLOAD (bytes per exposed second) is
best. A last pass puts back to STORE, most expensive first, every switch the cap no longer needs.
Memory is kept as a numpy profile and updated by slices, so a step costs O(slots + inputs).

Conflicts (``Problem.conflicts``): no move recomputes a consumer whose conflicting input is not
STORE, or moves an input off STORE while such a consumer is recomputed. When only a blocked move
would lower the peak, a swap move puts the blockers back to STORE and takes it.
"""

from __future__ import annotations

import math
import time

import numpy as np

from remat.errors import InfeasibleBudgetError
from remat.plan import Decision, Plan
from remat.problem import Problem

from ._core import NONE, OFF, REC, STORE, Structure, make_plan

_DEC = {STORE: Decision.STORE, REC: Decision.RECOMPUTE, OFF: Decision.OFFLOAD}


class _State:
    """Decisions, last needs and the device profile of a greedy plan, updated incrementally."""

    def __init__(self, st: Structure) -> None:
        self.st = st
        cs = st.cands
        n = len(cs)
        self.dec = np.full(n, NONE, dtype=np.int64)
        self.ln = np.full(n, -1, dtype=np.int64)
        self.mem = st.fixed.copy()
        self.lfu = np.array([c.lfu for c in cs], dtype=np.int64)
        self.rs = np.array([c.rs for c in cs], dtype=np.int64)
        self.bytes = np.array([c.bytes for c in cs], dtype=np.int64)
        self.time = np.array([c.time for c in cs], dtype=np.float64)
        self.exposed = np.array([c.exposed for c in cs], dtype=np.float64)
        self.out_end = np.array([c.out_end for c in cs], dtype=np.int64)
        self.back_start = np.array([c.back_start for c in cs], dtype=np.int64)
        self.rec_ok = np.array([c.rec_ok for c in cs], dtype=bool)
        self.off_ok = np.array([c.off_ok for c in cs], dtype=bool)
        src, dst = [], []
        for c in cs:
            if c.rec_ok:
                for k in set(c.inputs):
                    src.append(c.idx)
                    dst.append(k)
        self.src = np.array(src, dtype=np.int64)
        self.dst = np.array(dst, dtype=np.int64)
        # conflict pairs (input, consumer): a RECOMPUTE consumer pins its input to STORE
        cf = [(i, c.idx) for c in cs for i in dict.fromkeys(c.cf_inputs)]
        self.cf_in = np.array([i for i, _ in cf], dtype=np.int64)
        self.cf_con = np.array([x for _, x in cf], dtype=np.int64)
        for c in cs:
            if c.D >= 0:
                self.dec[c.idx] = STORE
                self.ln[c.idx] = c.D
                self._add(c.lfu + 1, c.D, c.bytes)

    # ---- profile updates ------------------------------------------------------------------
    def _add(self, lo: int, hi: int, b: int) -> None:
        if lo <= hi:
            self.mem[lo : hi + 1] += b

    def _live(self, k: int, d: int, ln: int):
        c = self.st.cands[k]
        if d == NONE:
            return []
        if d == REC:
            return [(c.rs, ln)]
        if d == OFF:
            return [(c.lfu + 1, c.out_end), (c.back_start, ln)]
        return [(c.lfu + 1, ln)]

    def _set(self, k: int, d: int, ln: int) -> None:
        b = self.st.cands[k].bytes
        for lo, hi in self._live(k, int(self.dec[k]), int(self.ln[k])):
            self._add(lo, hi, -b)
        for lo, hi in self._live(k, d, ln):
            self._add(lo, hi, b)
        self.dec[k] = d
        self.ln[k] = ln

    def _last_need(self, k: int) -> int:
        c = self.st.cands[k]
        ln = c.D
        for x in c.rcons_all:
            if self.dec[x] == REC and self.st.cands[x].rs > ln:
                ln = self.st.cands[x].rs
        return ln

    def switch(self, k: int, d: int) -> None:
        """Set candidate k (needed) to decision d, updating inputs' needs and lifetimes."""
        old = int(self.dec[k])
        self._set(k, d, int(self.ln[k]))
        if d == REC and old != REC:
            r = self.st.cands[k].rs
            for i in set(self.st.cands[k].inputs):
                if self.dec[i] == NONE:
                    self._set(i, STORE, r)
                elif self.ln[i] < r:
                    self._set(i, int(self.dec[i]), r)
        elif old == REC and d != REC:
            self._release_inputs(k)

    def _release_inputs(self, k: int) -> None:
        for i in set(self.st.cands[k].inputs):
            ln = self._last_need(i)
            if ln == self.ln[i]:
                continue
            was = int(self.dec[i])
            if ln < 0:
                self._set(i, NONE, -1)
                if was == REC:
                    self._release_inputs(i)
            else:
                self._set(i, was, ln)

    def decisions(self) -> dict[str, Decision]:
        return {c.name: _DEC[int(self.dec[c.idx])] for c in self.st.cands if self.dec[c.idx] != NONE}

    # ---- conflicts ------------------------------------------------------------------------
    def blocked(self):
        """(pinned, no_rec): candidates that must stay STORE (a conflicting consumer is
        RECOMPUTE) and candidates that cannot become RECOMPUTE (a conflicting input is not STORE)."""
        n = len(self.dec)
        if not len(self.cf_in):
            z = np.zeros(n, dtype=bool)
            return z, z
        dec = self.dec
        pinned = np.bincount(self.cf_in, weights=dec[self.cf_con] == REC, minlength=n) > 0
        din = dec[self.cf_in]
        no_rec = np.bincount(self.cf_con, weights=(din == REC) | (din == OFF), minlength=n) > 0
        return pinned, no_rec

    # ---- the greedy step -----------------------------------------------------------------
    def best_move(self, t: int):
        """(candidate, decision) with the best freed-bytes-at-t per added second, or None.

        Moves: STORE -> RECOMPUTE, OFFLOAD -> RECOMPUTE, STORE -> OFFLOAD; none that breaks a
        conflict (see ``blocked``).
        """
        dec = self.dec
        best, best_key = None, None
        storing = dec == STORE
        offl = dec == OFF
        pinned, no_rec = self.blocked()
        live_rec = (storing & (self.lfu < t) & (t < self.rs)) | (
            offl & (((self.lfu < t) & (t <= self.out_end)) | ((self.back_start <= t) & (t < self.rs)))
        )
        m_rec = self.rec_ok & live_rec & ~pinned & ~no_rec
        if m_rec.any():
            ben = self.bytes.astype(np.float64)
            if len(self.src):
                s, d = self.src, self.dst
                rsrc = self.rs[s]
                dd = dec[d]
                add = ((dd == NONE) & (self.lfu[d] < t) & (t <= rsrc)) | (
                    (dd != NONE) & (self.ln[d] < t) & (t <= rsrc)
                )
                pen = np.bincount(s, weights=self.bytes[d] * add, minlength=len(dec))
                ben = ben - pen
            ok = m_rec & (ben > 0)
            if ok.any():
                ids = np.flatnonzero(ok)
                cost = self.time[ids] - np.where(offl[ids], self.exposed[ids], 0.0)
                ratio = ben[ids] / np.maximum(cost, 1e-30)
                j = int(np.lexsort((ben[ids], ratio))[-1])
                best, best_key = (int(ids[j]), REC), (ratio[j], ben[ids][j])
        m_off = storing & self.off_ok & ~pinned & (self.out_end < t) & (t < self.back_start)
        if m_off.any():
            ids = np.flatnonzero(m_off)
            ben = self.bytes[ids].astype(np.float64)
            ratio = ben / np.maximum(self.exposed[ids], 1e-30)
            j = int(np.lexsort((ben, ratio))[-1])
            key = (ratio[j], ben[j])
            if best_key is None or key > best_key:
                best = (int(ids[j]), OFF)
        return best

    def closure_move(self, t: int, limit: int = 24):
        """Best RECOMPUTE of an activation together with the inputs it would otherwise pin at t.

        Recomputing ``a`` alone can free nothing at ``t`` when an input of the same size must then
        stay live there (a chain of pointwise ops); recomputing the input too (when its own
        recompute slot is after ``t``) moves the cost down the chain until it reaches values that
        are live anyway. Returns (members, ratio) or None.
        """
        cs = self.st.cands
        dec, ln = self.dec, self.ln
        best = None
        pinned, no_rec = self.blocked()
        live_rec = self.rec_ok & ~pinned & ~no_rec & (
            ((dec == STORE) & (self.lfu < t) & (t < self.rs))
            | ((dec == OFF) & (((self.lfu < t) & (t <= self.out_end)) | ((self.back_start <= t) & (t < self.rs))))
        )
        for a in np.flatnonzero(live_rec):
            a = int(a)
            members = [a]
            inset = {a}
            ben = cs[a].bytes
            cost = self.time[a] - (self.exposed[a] if dec[a] == OFF else 0.0)
            pen = 0
            stack = [a]
            while stack:
                m = stack.pop()
                r = cs[m].rs
                for i in set(cs[m].inputs):
                    if i in inset:
                        continue
                    if dec[i] != NONE and self._live_at(i, t):
                        continue  # live at t anyway
                    adds = (dec[i] == NONE and self.lfu[i] < t <= r) or (dec[i] != NONE and ln[i] < t <= r)
                    if not adds:
                        continue
                    if (cs[i].rec_ok and cs[i].rs > t and dec[i] in (NONE, STORE) and len(members) < limit
                            and cs[i].rs <= r and not pinned[i] and not no_rec[i]):
                        # (rs(i) <= rs(m): recomputing i is allowed alongside m, no conflict)
                        members.append(i)
                        inset.add(i)
                        cost += self.time[i]
                        stack.append(i)
                    else:
                        pen += cs[i].bytes
                        inset.add(i)
            if len(members) < 2:
                continue
            mset = set(members)
            if any(x in mset for m in members for x in cs[m].cf_inputs):
                continue  # a member would need another member stored: not a valid group
            net = ben - pen
            if net <= 0:
                continue
            ratio = net / max(cost, 1e-30)
            if best is None or (ratio, net) > best[1]:
                best = (members, (ratio, net))
        return best

    def swap_move(self, t: int, limit: int = 64):
        """Best RECOMPUTE of an activation live at ``t`` that a conflict blocks, with its blockers
        (RECOMPUTE consumers that pin it, RECOMPUTE/OFFLOAD inputs it pins) put back to STORE.

        The heuristic's order can recompute the wrong member of a conflict pair first (the
        consumer, when only the input frees the peak slot); this undoes that. Each trial is applied
        and rolled back, so it runs only when no other move helps. Returns the members to set
        (blockers to STORE, then the activation to RECOMPUTE) or None.
        """
        cs = self.st.cands
        dec = self.dec
        pinned, no_rec = self.blocked()
        live_rec = self.rec_ok & (pinned | no_rec) & (
            ((dec == STORE) & (self.lfu < t) & (t < self.rs))
            | ((dec == OFF) & (((self.lfu < t) & (t <= self.out_end)) | ((self.back_start <= t) & (t < self.rs))))
        )
        ids = np.flatnonzero(live_rec)
        if not len(ids):
            return None
        ids = ids[np.argsort(-self.bytes[ids], kind="stable")][:limit]
        peak, base = int(self.mem.max()), int(self.mem[t])
        t0 = float(self.cost())
        best = None
        for k in ids:
            k = int(k)
            blockers = [c for c in dict.fromkeys(cs[k].cf_cons) if dec[c] == REC]
            blockers += [i for i in dict.fromkeys(cs[k].cf_inputs) if dec[i] in (REC, OFF)]
            snap = (self.dec.copy(), self.ln.copy(), self.mem.copy())
            for b in blockers:
                if self.dec[b] in (REC, OFF):
                    self.switch(b, STORE)
            pin_k, norec_k = self.blocked()
            if self.dec[k] != NONE and not pin_k[k] and not norec_k[k]:
                self.switch(k, REC)
                freed = base - int(self.mem[t])
                if freed > 0 and int(self.mem.max()) <= peak:
                    dt = float(self.cost()) - t0
                    key = (freed / dt if dt > 0 else math.inf, freed)
                    if best is None or key > best[1]:
                        best = (blockers, k), key
            self.dec, self.ln, self.mem = snap
        return None if best is None else best[0]

    def cost(self) -> float:
        return float(self.time[self.dec == REC].sum() + self.exposed[self.dec == OFF].sum())

    def _live_at(self, k: int, t: int) -> bool:
        c = self.st.cands[k]
        d, ln = int(self.dec[k]), int(self.ln[k])
        if d == NONE or t > ln:
            return False
        if d == REC:
            return c.rs <= t
        if d == OFF:
            return c.lfu < t <= c.out_end or c.back_start <= t
        return c.lfu < t

    def cleanup(self, cap: int) -> None:
        """Put switches back to STORE, most expensive first, while the cap still holds."""
        cs = self.st.cands
        ids = [int(k) for k in np.flatnonzero((self.dec == REC) | (self.dec == OFF))]
        cost = {k: (self.time[k] if self.dec[k] == REC else self.exposed[k]) for k in ids}
        ids.sort(key=lambda k: -cost[k])
        for k in ids:
            d = int(self.dec[k])
            if d not in (REC, OFF):
                continue
            c = cs[k]
            lo, hi = (c.lfu + 1, c.rs - 1) if d == REC else (c.out_end + 1, c.back_start - 1)
            hi = min(hi, int(self.ln[k]))
            if lo > hi or int(self.mem[lo : hi + 1].max()) + c.bytes <= cap:
                self.switch(k, STORE)
                if int(self.mem.max()) > cap:  # cannot happen (freeing inputs only lowers it)
                    self.switch(k, d)


def run_greedy(st: Structure, cap: int):
    """(decisions, peak, best peak seen); decisions meet ``cap`` iff peak <= cap."""
    s = _State(st)
    best_peak = int(s.mem.max()) if st.n else 0
    guard = 3 * len(st.cands) + 8  # a plain move is STORE->OFF->REC at most; closure and swap
    # moves switch several at once (a swap puts its blockers back to STORE): the guard only bounds
    # pathological cases
    while st.n and guard > 0:
        guard -= 1
        t = int(np.argmax(s.mem))
        peak = int(s.mem[t])
        best_peak = min(best_peak, peak)
        if peak <= cap:
            break
        mv = s.best_move(t)
        if mv is not None:
            s.switch(*mv)
            continue
        cm = s.closure_move(t)
        if cm is not None:
            for k in cm[0]:
                s.switch(k, REC)
            continue
        sm = s.swap_move(t)
        if sm is None:
            break
        blockers, k = sm
        for b in blockers:
            if s.dec[b] in (REC, OFF):
                s.switch(b, STORE)
        s.switch(k, REC)
    peak = int(s.mem.max()) if st.n else 0
    best_peak = min(best_peak, peak)
    if peak <= cap:
        s.cleanup(cap)
        peak = int(s.mem.max()) if st.n else 0
    return s.decisions(), peak, best_peak


def greedy(
    problem: Problem, budget_bytes: int | None, *, time_limit: float = 60.0, **kw
) -> Plan:
    """Greedy plan under ``budget_bytes``; raises InfeasibleBudgetError when it cannot get there.

    The error's ``min_peak_bytes`` is the smallest peak the greedy reached (an upper bound on the
    true minimum; the ILP computes the exact one).
    """
    t0 = time.perf_counter()
    st = kw.get("_structure") or Structure(problem)
    if budget_bytes is None:
        return make_plan(st, st.store_all(), "greedy", None, status="heuristic",
                         solve_time_s=time.perf_counter() - t0)
    dec, peak, best = run_greedy(st, int(budget_bytes))
    if peak > budget_bytes:
        raise InfeasibleBudgetError(
            int(budget_bytes), best,
            "greedy heuristic: smallest peak it reached; the true minimum may be lower (use the ilp solver)",
        )
    dec = st.normalize(dec)
    real = st.peak(dec)
    if real != peak:  # the incremental profile must match the exact one
        raise RuntimeError(f"greedy: incremental peak {peak} != evaluated peak {real} (bug)")
    return make_plan(st, dec, "greedy", int(budget_bytes), status="heuristic",
                     solve_time_s=time.perf_counter() - t0, info={"peak_bytes": real})
