"""Greedy: from store-all, switch the best bytes-per-second activation at the peak until under cap.

Each step looks at the slot ``t`` where memory peaks, and among the STORE (or OFFLOAD)
activations live there whose start ``S(v)`` comes after ``t`` picks the one whose switch to
RECOMPUTE (bytes freed at ``t`` minus the bytes of inputs it newly keeps live there, per second of
recompute) or to OFFLOAD (bytes per exposed second) is best, unless a chain move frees more per
second: it recomputes an activation together with the inputs that it would otherwise keep live
at ``t`` (a chain of pointwise ops, each one's input as large as itself, frees nothing one by one;
taken only when no single switch freed anything, the greedy recomputed Llama-7B's matmuls instead
of its cheap pointwise chains, at 12x the ILP's added time). Every move is
applied and evaluated exactly (just-in-time starts and last needs, ``Structure.evaluate``'s
figures, kept up to date move by move by ``_evaluation.Evaluation``); an
OFFLOAD input that a move would need before its prefetch goes back to STORE. A last pass puts back
to STORE, most expensive first, every switch the cap no longer needs.

A plan that moves backward readers after a kernel (``_core.Structure.movers``) takes its profile
from ``Structure.evaluate``, which counts the moves (the incremental evaluation does not); the
starts and last needs that choose the moves stay the incremental ones.

Other runs (``Problem.other_runs``): every slot also carries ``other_runs`` x the bytes a plan
STOREs, so a switch away from STORE frees ``other_runs`` x its bytes at ``t`` wherever it lives,
and an input that a recomputation newly needs (stored) adds as much.
"""

from __future__ import annotations

import time

import numpy as np

from remat.errors import InfeasibleBudgetError
from remat.plan import Plan
from remat.problem import Problem

from ._core import NONE, OFF, REC, STORE, Structure, make_plan
from ._evaluation import Evaluation


class _State:
    """Decision codes of a greedy plan and its exact evaluation."""

    def __init__(self, st: Structure, codes: np.ndarray | None = None) -> None:
        self.st = st
        cs = st.cands
        if codes is None:
            codes = np.array([STORE if c.d >= 0 else NONE for c in cs], dtype=np.int64)
        self.lfu = np.array([c.lfu for c in cs], dtype=np.int64)
        self.d = np.array([c.d for c in cs], dtype=np.int64)
        self.bytes = np.array([c.bytes for c in cs], dtype=np.int64)
        self.time = np.array([c.time for c in cs], dtype=np.float64)
        self.exposed = np.array([c.exposed for c in cs], dtype=np.float64)
        self.out_end = np.array([c.out_end for c in cs], dtype=np.int64)
        self.back_start = np.array([c.back_start for c in cs], dtype=np.int64)
        self.rec_ok = np.array([c.rec_ok for c in cs], dtype=bool)
        self.off_ok = np.array([c.off_ok for c in cs], dtype=bool)
        self.kmin = np.array([c.kept[0] if c.rec_ok else 1 << 60 for c in cs], dtype=np.int64)
        self.taken = np.array([c.idx in st.taker for c in cs], dtype=bool)
        self.runs = st.problem.other_runs
        src, dst = [], []
        for c in cs:
            if c.rec_ok:
                for k in c.inputs:
                    src.append(c.idx)
                    dst.append(k)
        self.src = np.array(src, dtype=np.int64)
        self.dst = np.array(dst, dtype=np.int64)
        self.ev = Evaluation(st, codes)
        self.apply({})

    codes = property(lambda self: self.ev.codes)
    need = property(lambda self: self.ev.need)
    S = property(lambda self: self.ev.S)
    ln = property(lambda self: self.ev.ln)

    def apply(self, changes: dict[int, int]) -> None:
        """Set the codes of ``changes``, then send back to STORE the activations that would start
        outside their kept slots (the ILP's model) or before an OFFLOAD's prefetch (``S`` does not
        depend on their own decision); unneeded ones take no code, needed ones at least STORE."""
        ev = self.ev
        while True:
            ev.set(changes)
            codes = ev.codes
            codes[~ev.need] = NONE  # neither changes what any activation needs nor the profile
            codes[ev.need & (codes == NONE)] = STORE
            bad = ((codes == OFF) & (ev.S < self.d)) | ((codes == REC) & (ev.S < self.kmin))
            if not bad.any():
                break
            changes = {int(k): STORE for k in np.flatnonzero(bad)}
        self.mem = ev.profile() if not self.st.moved(ev.codes) else self.st.evaluate(ev.codes)[0]

    def live_at(self, t: int) -> np.ndarray:
        c, S, ln, lfu = self.codes, self.S, self.ln, self.lfu
        stored = (c == STORE) & (lfu < t) & (t <= ln)
        rec = (c == REC) & (S <= t) & (t <= ln) & ~self.taken  # a taken one: its taker's buffer
        off = (c == OFF) & (((lfu < t) & (t <= self.out_end)) | ((self.back_start <= t) & (t <= ln)))
        return stored | rec | off

    def cost(self) -> float:
        return float(self.time[self.codes == REC].sum() + self.exposed[self.codes == OFF].sum())

    def best_move(self, t: int, live: np.ndarray):
        """((candidate, decision), (ratio, bytes)) of the best freed-bytes-at-t per added second,
        or (None, None); ``live``: ``live_at(t)``."""
        codes = self.codes
        best, best_key = None, None
        stored = self.runs * self.bytes * (codes == STORE)  # what other runs stop holding
        # RECOMPUTE: frees t when S(v) > t; S(v) is the same whatever v's own decision
        frees = live & (self.S > t)
        m_rec = self.rec_ok & (frees | (stored > 0)) & (codes != REC) & (self.kmin <= self.S)
        if m_rec.any():
            ben = (self.bytes * frees + stored).astype(np.float64)
            if len(self.src):
                s, d = self.src, self.dst
                # an input not live at t becomes live there when its last need extends over t
                adds = ~live[d] & (self.lfu[d] < t) & (t <= self.S[s]) & ((codes[d] == NONE) | (codes[d] == STORE))
                held = self.runs * (codes[d] == NONE)  # newly needed: stored, so other runs hold it
                pen = np.bincount(s, weights=self.bytes[d] * (adds + held), minlength=len(codes))
                ben = ben - pen
            ok = m_rec & (ben > 0)
            if ok.any():
                ids = np.flatnonzero(ok)
                cost = self.time[ids] - np.where(codes[ids] == OFF, self.exposed[ids], 0.0)
                ratio = ben[ids] / np.maximum(cost, 1e-30)
                j = int(np.lexsort((ben[ids], ratio))[-1])
                best, best_key = (int(ids[j]), REC), (ratio[j], ben[ids][j])
        away = live & (self.out_end < t) & (t < self.back_start)  # off the device at t
        m_off = (codes == STORE) & (away | (stored > 0)) & self.off_ok & (self.S >= self.d)
        if m_off.any():
            ids = np.flatnonzero(m_off)
            ben = (self.bytes * away + stored)[ids].astype(np.float64)
            ratio = ben / np.maximum(self.exposed[ids], 1e-30)
            j = int(np.lexsort((ben, ratio))[-1])
            key = (ratio[j], ben[j])
            if best_key is None or key > best_key:
                best, best_key = (int(ids[j]), OFF), key
        return best, best_key

    def chain_move(self, t: int, live: np.ndarray, beat: float = 0.0, limit: int = 32):
        """Best RECOMPUTE of a live-at-t activation (under other runs, or a stored one) together
        with the inputs that it would keep live at ``t`` (or newly stored) and that can be
        recomputed after ``t`` too, when its ratio (bytes freed per second) is above ``beat``:
        (members, ratio) or (None, None). Activations are tried by the ratio that their chain's
        direct inputs allow (``_chain_bounds``), those above ``beat`` only, and the search stops
        where that falls below the best chain's ratio. ``live``: ``live_at(t)``."""
        stored = (self.codes == STORE) & (self.runs > 0)
        m = self.rec_ok & ((live & (self.S > t)) | stored) & (self.codes != REC) & (self.kmin <= self.S)
        ids = np.flatnonzero(m)
        bound = self._chain_bounds(ids, t, live, limit)
        ids, bound = ids[bound > beat], bound[bound > beat]
        if not len(ids):
            return None, None
        view = _ChainView(self, t, live)
        best = None
        for j in np.lexsort((ids, -bound)).tolist():
            if best is not None and bound[j] < best[1][0]:
                break
            a = int(ids[j])
            members, net, cost = view.chain(a, limit)
            if len(members) < 2 or net <= 0:
                continue
            key = (net / max(cost, 1e-30), net, -a)
            if key[0] > beat and (best is None or key > best[1]):
                best = (members, key)
        return (None, None) if best is None else (best[0], best[1][0])

    def _chain_bounds(self, ids: np.ndarray, t: int, live: np.ndarray, limit: int) -> np.ndarray:
        """Per activation of ``ids``: the ratio (bytes freed per second) of its chain at ``t``
        over its direct inputs (``_ChainView.chain`` takes them first, by the same rule): those
        that join add their time (and, stored, the bytes the other runs stop holding), the
        others take off what keeping them costs; 0 when no input joins (no chain)."""
        s, d, S, m = self.src, self.dst, self.S, len(self.codes)
        start = np.where(S[d] >= 0, np.minimum(S[d], S[s]), S[s])
        codes, b = self.codes, self.bytes[d]
        open_ = ~live[d] & (codes[d] != REC)  # neither live at t nor recomputed
        keep = open_ * (b * ((self.lfu[d] < t) & (t <= S[s])) + self.runs * b * (codes[d] == NONE))
        rejoin = b * ((start <= t) & (t <= S[s])) - self.runs * b * (codes[d] == STORE)
        joins = (keep > 0) & self.rec_ok[d] & (self.kmin[d] <= start) & (rejoin < keep)
        count = np.bincount(s[joins], minlength=m)[ids]
        added = np.bincount(s[joins], weights=self.time[d][joins], minlength=m)[ids]
        pen = np.bincount(s, weights=np.where(joins, rejoin, keep), minlength=m)[ids]
        own = self.time[ids] - np.where(codes[ids] == OFF, self.exposed[ids], 0.0)
        cost = own + np.where(count < limit, added, 0.0)
        frees = self.bytes[ids] * (live[ids] & (S[ids] > t))
        net = frees + self.runs * self.bytes[ids] * (codes[ids] == STORE) - pen
        bound = net / np.maximum(cost, 1e-30) * (1 + 1e-9)  # rounding of the sums
        return np.where((count > 0) & (net > 0), bound, 0.0)

    def cleanup(self, cap: int, deadline: float | None = None) -> None:
        """Put switches back to STORE, most expensive first, while the cap still holds (until
        ``deadline``)."""
        ids = [int(k) for k in np.flatnonzero((self.codes == REC) | (self.codes == OFF))]
        cost = {k: (self.time[k] if self.codes[k] == REC else self.exposed[k]) for k in ids}
        ids.sort(key=lambda k: -cost[k])
        for k in ids:
            d = int(self.codes[k])
            if _past(deadline):
                return
            if d not in (REC, OFF):
                continue
            snap = (self.ev.snapshot(), self.mem)
            self.apply({k: STORE})
            if int(self.mem.max()) > cap:  # undo: the state before, as it was evaluated
                self.ev.restore(snap[0])
                self.mem = snap[1]


class _ChainView:
    """What ``_State.chain_move`` reads at slot ``t``, as Python lists (read one by one)."""

    def __init__(self, s: _State, t: int, live: np.ndarray) -> None:
        self.t, self.cands = t, s.st.cands
        self.live, self.codes, self.S, self.lfu = live.tolist(), s.codes.tolist(), s.S.tolist(), s.lfu.tolist()
        self.rec_ok, self.kmin = s.rec_ok.tolist(), s.kmin.tolist()
        self.time, self.bytes = s.time.tolist(), s.bytes.tolist()
        self.exposed, self.runs = s.exposed, s.runs

    def chain(self, a: int, limit: int):
        """(members, bytes freed at ``t``, added seconds) of recomputing ``a`` with the inputs
        that keeping would cost bytes at ``t`` (dead there, then live again) or, under other
        runs, newly stored: each such input joins when it can be recomputed where its member
        consumer starts (or earlier, where it is needed anyway), after ``t`` when it is dead
        there; the others count against the bytes freed. A stored member frees its bytes once
        per other run (``Problem.other_runs``)."""
        t, codes, S, runs = self.t, self.codes, self.S, self.runs
        members, start = [a], {a: S[a]}
        cost = self.time[a] - (float(self.exposed[a]) if codes[a] == OFF else 0.0)
        net = (self.bytes[a] if self.live[a] and S[a] > t else 0) + (runs * self.bytes[a] if codes[a] == STORE else 0)
        stack = [a]
        while stack:
            x = stack.pop()
            for i in self.cands[x].inputs:
                if i in start:
                    continue
                start[i] = si = min(S[i], start[x]) if S[i] >= 0 else start[x]
                if self.live[i] or codes[i] == REC:
                    continue  # live at t anyway, or recomputed already
                b, needed_until = self.bytes[i], start[x]
                keep = b * (self.lfu[i] < t <= needed_until) + (runs * b if codes[i] == NONE else 0)
                rejoin = b * (si <= t <= needed_until) - (runs * b if codes[i] == STORE else 0)
                if not keep:
                    continue  # kept at no cost: not live at t, stored already
                if self.rec_ok[i] and self.kmin[i] <= si and len(members) < limit and rejoin < keep:
                    members.append(i)
                    cost += self.time[i]
                    net -= rejoin
                    stack.append(i)
                else:
                    net -= keep
        return members, net, cost


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() >= deadline


def run_greedy(st: Structure, cap: int, deadline: float | None = None):
    """(decisions, peak, best peak seen); decisions meet ``cap`` iff peak <= cap. Past
    ``deadline`` (``time.perf_counter()``) no more moves are made and the cleanup stops."""
    s = _State(st)
    best_peak = int(s.mem.max()) if st.n else 0
    best_codes = s.codes.copy()
    guard = 3 * len(st.cands) + 8
    while st.n and guard > 0 and not _past(deadline):
        guard -= 1
        t = int(np.argmax(s.mem))
        peak = int(s.mem[t])
        if peak < best_peak:
            best_peak, best_codes = peak, s.codes.copy()
        if peak <= cap:
            break
        live = s.live_at(t)
        mv, key = s.best_move(t, live)
        cm, _ = s.chain_move(t, live, beat=key[0] if key is not None else 0.0)
        if cm is not None:  # a chain frees more per second than any single switch
            s.apply({k: REC for k in cm})
        elif mv is not None:
            s.apply({mv[0]: mv[1]})
        else:
            break
    if st.n and int(s.mem.max()) > best_peak:  # the last moves did not help: keep the best plan
        s = _State(st, best_codes)
    peak = int(s.mem.max()) if st.n else 0
    best_peak = min(best_peak, peak)
    if peak <= cap:
        s.cleanup(cap, deadline)
        peak = int(s.mem.max()) if st.n else 0
    dec = st.normalize({c.name: int(s.codes[c.idx]) for c in st.cands if s.codes[c.idx] != NONE})
    return dec, peak, best_peak


def greedy(
    problem: Problem, budget_bytes: int | None, *, time_limit: float = 60.0, **kw
) -> Plan:
    """Greedy plan under ``budget_bytes``, made within ``time_limit`` seconds (its moves and its
    cleanup stop there); raises InfeasibleBudgetError when it cannot get there.

    The error's ``min_peak_bytes`` is the smallest peak the greedy reached (an upper bound on the
    true minimum; the ILP computes the exact one).
    """
    t0 = time.perf_counter()
    st = kw.get("_structure") or Structure(problem)
    if budget_bytes is None:
        return make_plan(st, st.store_all(), "greedy", None, status="heuristic",
                         solve_time_s=time.perf_counter() - t0)
    deadline = t0 + time_limit
    dec, peak, best = run_greedy(st, int(budget_bytes), deadline)
    if peak > budget_bytes:
        stopped = f"; it stopped at the time limit ({time_limit:g} s)" if _past(deadline) else ""
        raise InfeasibleBudgetError(
            int(budget_bytes), best,
            "greedy heuristic: smallest peak it reached; the true minimum may be lower (use the ilp solver)"
            + stopped,
        )
    real = st.peak(dec)
    if real != peak:  # the evaluation must match the exact one
        raise RuntimeError(f"greedy: peak {peak} != evaluated peak {real} (bug)")
    return make_plan(st, dec, "greedy", int(budget_bytes), status="heuristic",
                     solve_time_s=time.perf_counter() - t0, info={"peak_bytes": real})
