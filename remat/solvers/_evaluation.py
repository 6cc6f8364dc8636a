"""Exact evaluation of decision codes, kept up to date as a few codes change (the greedy's moves).

``Structure.evaluate`` walks every RECOMPUTE candidate and counts every needed one for each
plan: O(candidates) per move, which made the greedy O(moves x candidates). Here a change of some
codes re-derives ``need``, ``S`` and ``last_need`` only for the candidates whose inputs it can
reach: each is recomputed from its recomputable consumers (the same rules as ``Structure.jit``),
consumers first, and its inputs are visited only when what they read from it changed (whether it
is a needed RECOMPUTE, and its start). Stored and recomputed candidates keep one device interval
each in a difference array of the profile; OFFLOAD candidates, those under kernel facts and taken
ones, whose intervals depend on the other copies, on kernels or on a taker, are counted one by one
at each ``profile`` as ``Structure.evaluate`` does, and so is what the graph's other runs hold
(``Problem.other_runs``).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

import numpy as np

from ._core import OFF, REC, Structure


class Evaluation:
    """``need``, ``S``, ``ln`` (arrays) and ``profile()`` of ``codes``, as ``Structure.evaluate``
    gives them, updated by ``set``."""

    def __init__(self, st: Structure, codes: np.ndarray) -> None:
        self.st = st
        self.codes = np.array(codes, dtype=np.int64)
        need, S, ln = st.jit(self.codes)
        self.need = np.array(need, dtype=bool)
        self.S = np.array(S, dtype=np.int64)
        self.ln = np.array(ln, dtype=np.int64)
        self._bulk_ok = (st._bytes > 0) & ~st._one_by_one
        self._facts = bool(st.kernels or st.handover)
        m = len(st.cands)
        self.lo = np.zeros(m, dtype=np.int64)
        self.hi = np.full(m, -1, dtype=np.int64)
        self.diff = np.zeros(st.n + 1, dtype=np.int64)
        for j in range(m):
            self._place(j)

    def set(self, changes: Mapping[int, int]) -> None:
        """Give the candidates of ``changes`` their new codes and bring everything up to date."""
        was = {j: int(self.codes[j]) for j in changes}
        for j, code in changes.items():
            self.codes[j] = code
        heap = list({-j for j in changes})
        heapq.heapify(heap)
        seen: set[int] = set()
        while heap:
            x = -heapq.heappop(heap)
            if x in seen:
                continue
            seen.add(x)
            if self._update(x, was.get(x)):
                for i in self.st.cands[x].all_inputs:
                    heapq.heappush(heap, -i)

    def _update(self, x: int, old_code: int | None) -> bool:
        """Recompute candidate ``x`` from its consumers and place its interval; whether its inputs
        must be visited (it became or stopped being a needed RECOMPUTE, or one that moved)."""
        was_rec = bool(self.need[x]) and (self.codes[x] if old_code is None else old_code) == REC
        old_start = int(self.S[x])
        self._derive(x)
        now_rec = bool(self.need[x]) and self.codes[x] == REC
        self._place(x)
        return was_rec != now_rec or (now_rec and int(self.S[x]) != old_start)

    def _derive(self, x: int) -> None:
        """``need``, ``S``, ``ln`` of ``x`` from its needed RECOMPUTE consumers (``Structure.jit``)."""
        st = self.st
        c = st.cands[x]
        need, start, last = c.d >= 0, c.d, c.D
        for j in c.rcons_all:
            if self.need[j] and self.codes[j] == REC:
                lo, hi = st.window(j, int(self.S[j])) if self._facts else (int(self.S[j]),) * 2
                need = True
                if start < 0 or lo < start:
                    start = lo
                if hi > last:
                    last = hi
        self.need[x], self.S[x], self.ln[x] = need, start, last

    def _place(self, j: int) -> None:
        """Move ``j``'s interval in the difference array to where its state puts it (none when it is
        not needed, takes no bytes, is OFFLOAD, under kernel facts or taken)."""
        lo, hi = 0, -1
        code = self.codes[j]
        if self.need[j] and self._bulk_ok[j] and code != OFF:
            lo = int(self.S[j]) if code == REC else self.st.cands[j].lfu + 1
            hi = int(self.ln[j])
        if (lo, hi) == (self.lo[j], self.hi[j]) or (lo > hi and self.lo[j] > self.hi[j]):
            return
        b = self.st.cands[j].bytes
        if self.lo[j] <= self.hi[j]:
            self.diff[self.lo[j]] -= b
            self.diff[self.hi[j] + 1] += b
        if lo <= hi:
            self.diff[lo] += b
            self.diff[hi + 1] -= b
        self.lo[j], self.hi[j] = lo, hi

    def profile(self) -> np.ndarray:
        """Device bytes at every slot (``Structure.evaluate``'s profile)."""
        st = self.st
        mem = st.fixed + np.cumsum(self.diff[:-1])
        by_one = self.need & (st._bytes > 0) & ((self.codes == OFF) | st._one_by_one)
        if by_one.any():
            los, his, bs = st._intervals_one_by_one(np.flatnonzero(by_one).tolist(), self.codes,
                                                    self.need, self.S, self.ln)
            extra = np.zeros(st.n + 1, dtype=np.int64)
            np.add.at(extra, np.array(los, dtype=np.int64), np.array(bs, dtype=np.int64))
            np.add.at(extra, np.array(his, dtype=np.int64) + 1, -np.array(bs, dtype=np.int64))
            mem = mem + np.cumsum(extra[:-1])
        return mem + st.other_runs_bytes(self.codes, self.need)

    def snapshot(self) -> tuple:
        """The state, for ``restore`` (once)."""
        return tuple(a.copy() for a in (self.codes, self.need, self.S, self.ln, self.lo, self.hi, self.diff))

    def restore(self, snap: tuple) -> None:
        self.codes, self.need, self.S, self.ln, self.lo, self.hi, self.diff = snap
