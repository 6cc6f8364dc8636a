"""The exact planner: a PuLP MIP that minimises added step time under a cap on the *peak*.

Just-in-time semantics (``remat.problem``); per candidate ``v`` (see ``_core.Structure``):

* case A (``v`` has backward uses, so it is always needed): binaries ``rec_v`` (recomputable)
  and ``off_v`` (offloadable, host_bandwidth > 0); STORE is ``keep_v = 1 - rec_v - off_v``;
* case B (needed only when a consumer is recomputed): binaries ``keep_v``, ``rec_v`` with
  ``need_v = keep_v + rec_v <= 1``, ``need_v >= rec_c`` for each recomputable consumer ``c`` and
  ``need_v <= sum_c rec_c`` (so a recomputed ``v`` is really needed);
* starts: for each kept start slot ``b < top(v)`` (``Cand.sv``) a continuous ``st[v,b]`` = "v is
  RECOMPUTE and S(v) <= b"; ``st[v, top] = rec_v``. Rows: monotone in ``b``; ``st[v,b] <= sum_c
  st[c,b]`` (started early only through a consumer); ``st[c,b] <= keep_v + st[v,b]`` for every
  recomputable consumer ``c`` and each slot ``b < top(v)`` where ``st[c, .]`` steps up (a
  consumer started by ``b`` needs ``v`` kept or started by ``b``; with no kept start of ``v`` at
  ``b`` that forces STORE, and it forbids OFFLOAD needed before ``d(v)``). Given integral
  decisions these rows force every ``st`` to 0/1 (by induction in reverse creation order), so the
  model is exact for every plan whose starts are kept slots, and only such plans come out;
* live indicators: on ``lfu+1..D`` (case A) the device bytes of ``v`` are a linear form
  (``1 - rec*[t < d] + st(t) - off*[out_end < t < back_start]``); past ``D`` (and for case B in
  backward) a continuous ``y[v,j]`` per segment on which the form is constant, with
  ``y >= started(t) + rec_c - st[c, t-1] - 1`` for each consumer ``c`` (``v`` is live while
  started and some recomputed consumer still has to start); a value with many consumers and
  segments (dropout seeds read by every layer) gets the same bound through a non-increasing
  ``pending[v,j]`` with rows only where a consumer's term changes (``Model._pending_rows``); a
  taken ``v`` (``Activation.taken_by``) is "started" only when kept: recomputed, its recomputed
  taker writes into its buffer, so it holds no bytes of its own;
* conditional handovers (``_core.Structure.holds``): a value whose buffer a kernel takes over
  ends before that kernel unless a consumer is recomputed; ``brk[v] >= rec_c`` for each
  recomputable consumer ``c`` (continuous), and on each piece ``j`` of ``h..D`` a continuous
  ``h[v,j] >= brk[v] + holds(v, s_j) - 1``, which the memory rows count.

Repeated layers (``Problem.layers``): a tied model shares the binaries and, where they
correspond, the continuous variables of corresponding activations and writes each row once; the
two-level "mix" model writes a layer's binaries (and the indicators of its closed activations)
as sums of per-layer menu choices (``remat.solvers.layered``). Models are handed to HiGHS by
``remat.solvers._highs``.

Other runs (``Problem.other_runs``): one continuous ``held`` (in row units) equals the bytes the
plan STOREs, ``sum(bytes_v x keep_v)``, and every memory row adds ``other_runs x held`` and
``other_runs x run_held_bytes``: the same at every slot, so it cancels in the dominance test.

Memory rows: on each slot range where every candidate's contribution is one fixed linear form,
only the slot with the largest ``fixed_bytes`` can peak; then rows that another row dominates
for every plan (``row_i(plan) <= row_j(plan)`` via a per-activation bound over its possible
states) are dropped. The rest become ``fixed + sum(form) <= budget``; a backward op that a
recomputation moves after its kernel adds terms in that candidate's ``rec`` to the forms
(``_core.Structure.move_terms``: at or above the simulator's count).

The answer is normalised to the needed set, its peak and time recomputed exactly, and compared
with the greedy plan (made first; warm start and fallback): the better plan under the cap wins.

Work, not seconds, ends each search, so that a busy machine makes the same plan: a capped solve
stops at its MIP gap or after ``CAPPED_NODES`` branch-and-bound nodes, the min-peak search after
``MIN_PEAK_NODES`` nodes and its descents' evaluations, the greedy after its moves. The clocks
are caps: the greedy's and the min-peak search's at ``SAFETY_CAP`` times the time limit, the
capped models' (their building and solves, and "auto"'s choice to skip "mix": ``_mix_skip``) at
the time limit itself, the user's bound on planning time: HiGHS's root work (presolve, cuts) is
not counted in nodes, and on a deep stack (an 8-block Evoformer, 5,640 slots) the tied model's
root alone outlasts 60 s, so there the clock ends the solve, as it did before the budget.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import warnings
from bisect import bisect_right
from collections import defaultdict

import numpy as np
import pulp

from remat.errors import ConfigError, InfeasibleBudgetError
from remat.plan import Decision, Plan
from remat.problem import Problem

from ._core import OFF, REC, STORE, Cand, Structure, make_plan
from ._highs import HAVE_HIGHS, HiGHS, LpProblem, skip_banner
from .greedy import run_greedy
from .layered import build_menus, layer_groups

LE, GE = pulp.LpConstraintLE, pulp.LpConstraintGE  # row senses
_DOMINANCE_SPAN = 400  # breakpoints one dominance comparison may cross (keeps pruning near linear)


# ---- rows ---------------------------------------------------------------------------------------


class Rows:
    """Candidate memory rows: representative slot, constant bytes and the linear form per row."""

    def __init__(self, st: Structure, prune: bool = True) -> None:
        self.st = st
        n = st.n
        const = np.zeros(n + 1, dtype=np.int64)
        ev: dict[int, list] = defaultdict(list)
        bounds = {0}
        for c in st.cands:
            if not c.bytes:
                continue
            for lo, hi, k, terms in c.pieces:
                bounds.add(lo)
                bounds.add(hi + 1)
                if k:
                    const[lo] += k * c.bytes
                    const[hi + 1] -= k * c.bytes
                for v, cf in terms.items():
                    ev[lo].append((v, cf * c.bytes))
                    ev[hi + 1].append((v, -cf * c.bytes))
        for lo, hi, nbytes, v in st.move_terms:  # moved readers (``_core.Structure.move_terms``)
            bounds.update((lo, hi + 1))
            ev[lo].append((v, nbytes))
            ev[hi + 1].append((v, -nbytes))
        self.base = st.fixed + np.cumsum(const)[:n] if n else st.fixed
        bl = sorted(b for b in bounds if 0 <= b < n)
        reps = []
        for s, e in zip(bl, bl[1:] + [n]):
            if s < e:
                reps.append(s + int(np.argmax(st.fixed[s:e])))
        self.total_slots = n
        self.segments = len(reps)
        self.ev = ev
        self.bounds = bl
        self.reps = self._prune(reps) if prune and not st.kernels else reps  # masks miss kernel windows

    # ---- dominance ----------------------------------------------------------------------
    def _prune(self, reps: list[int]) -> list[int]:
        """Drop the rows that a neighbouring kept row dominates for every plan, sweeping forward
        and backward until nothing changes (at most four rounds)."""
        pts = sorted((b, c.idx) for c in self.st.cands for b in c.bps)
        self._bp_slot = [p for p, _ in pts]
        self._bp_act = [k for _, k in pts]
        rows = reps
        for _ in range(4):
            before = len(rows)
            rows = self._sweep(rows)
            rows = self._sweep(rows[::-1])[::-1]
            if len(rows) == before:
                break
        return rows

    def _differences(self, i: int, j: int) -> tuple[int, int] | None:
        """(bound of row_i - row_j over plans, bound of row_j - row_i); None if too far apart."""
        st = self.st
        lo, hi = (i, j) if i < j else (j, i)
        a = bisect_right(self._bp_slot, lo)
        b = bisect_right(self._bp_slot, hi)
        if b - a > _DOMINANCE_SPAN:
            return None
        gij = int(st.fixed[i]) - int(st.fixed[j])
        gji = -gij
        cands = st.cands
        for k in dict.fromkeys(self._bp_act[a:b]):
            c = cands[k]
            bps, masks = c.bps, c.masks
            x, y = bisect_right(bps, i) - 1, bisect_right(bps, j) - 1  # Structure.mask_at, inlined
            mi, mj = (masks[x] if x >= 0 else 0), (masks[y] if y >= 0 else 0)
            gij += c.bytes * _gmax(mi, mj, c.full)
            gji += c.bytes * _gmax(mj, mi, c.full)
        return gij, gji

    def _sweep(self, rows: list[int]) -> list[int]:
        """One pass: each row drops the kept rows it dominates and is dropped when dominated."""
        kept: list[int] = []
        for r in rows:
            dominated = False
            while kept:
                d = self._differences(kept[-1], r)
                if d is None:
                    break
                if d[0] <= 0:  # kept[-1] never exceeds r
                    kept.pop()
                    continue
                if d[1] <= 0:
                    dominated = True
                break
            if not dominated:
                kept.append(r)
        return kept

    # ---- linear forms ----------------------------------------------------------------------
    def forms(self, resolve=None):
        """(slot, const bytes, {var: coef bytes}) for every kept row, in slot order. ``resolve``
        maps a variable key to (target, integer coef) pairs (a model's variables, tied or sums
        of menu choices); the forms are then over the targets, summed exactly as they change."""
        resolve = resolve or (lambda key: ((key, 1),))
        targets: dict = {}
        reps = self.reps
        out = []
        cur: dict = {}
        ri = 0
        bl = self.bounds
        ev = self.ev
        for bi, s in enumerate(bl):
            for key, d in ev.get(s, ()):
                if key not in targets:
                    targets[key] = tuple(resolve(key))
                for v, cf in targets[key]:
                    x = cur.get(v, 0) + d * cf
                    if x:
                        cur[v] = x
                    else:
                        cur.pop(v, None)
            e = bl[bi + 1] if bi + 1 < len(bl) else self.total_slots
            while ri < len(reps) and reps[ri] < e:
                out.append((reps[ri], int(self.base[reps[ri]]), dict(cur)))
                ri += 1
        return out


def _gmax(mi: int, mj: int, full: int) -> int:
    """max over states s of live_i(s) - live_j(s), from the live bitmasks at two slots."""
    if mi & ~mj:
        return 1
    if (mi & mj) or (~mi & ~mj & full):
        return 0
    return -1


# ---- the model ------------------------------------------------------------------------------


class Model:
    """The PuLP problem for a cap (``budget`` in bytes) or for the smallest peak (``budget=None``).

    Built family by family (see the module docstring): decision variables, choice rows, start
    rows, consumer-start rows and live-segment rows per candidate, the transfer-time chains, the
    objective, then the memory rows. ``V`` maps keys such as ``("rec", idx)`` to variables.

    ``ties`` (candidate index -> its representative, see ``tie_map``) makes tied candidates share
    their ``rec``/``off``/``keep`` binaries, and their continuous ``st``/``y`` variables where
    their kept starts and segments correspond (``continuous_ties``): the model then spans exactly
    the tied plans. Every row is still written per candidate, over the shared variables, so every
    feasible point satisfies the untied model's rows and the peak is still bounded at every kept
    slot; a row that another candidate already wrote, identical after sharing, is added once (so
    a tied stack's model holds one layer's rows, not one per layer).
    ``menus`` (``remat.solvers.layered.Menus``) gives each layer one binary ``z`` per layer plan
    it may take (exactly one is chosen) and writes the binaries of the layer's activations as
    sums of those ``z``: the model spans the plans that mix menu items across layers.
    """

    def __init__(self, st: Structure, rows: Rows, budget: int | None, ties: dict[int, int] | None = None,
                 menus=None) -> None:
        t0 = time.perf_counter()
        self.st = st
        self.rows = rows
        self.ties = ties or {}
        self.menus = menus
        self.cties = continuous_ties(st, self.ties) if ties else {}
        self._shared: dict = {}
        self._written: set | None = set() if ties else None  # rows written so far, when shared
        self.unit, self.tscale = _scales(st)
        self.prob = LpProblem("remat", pulp.LpMinimize)
        self._var = _var_factory(self.prob)
        self.num_other_rows = 0
        self.Z = self._menu_choices()
        self.V = self._decision_variables()
        closed = menus.closed if menus is not None else frozenset()
        for c in st.cands:
            if st.reach[c.idx] and c.idx not in closed:  # a closed one's rows hold for every item
                self._choice_rows(c)
                if c.rec_ok:
                    self._start_rows(c)
                self._consumer_start_rows(c)
                self._live_segment_rows(c)
                self._handover_rows(c)
                self._kernel_offload_rows(c)
        obj = [(self.V[("rec", c.idx)], c.time * self.tscale) for c in st.cands
               if c.time and ("rec", c.idx) in self.V]
        obj += self._transfer_rows()
        self._held_row()
        self.M = self._objective(budget, obj)
        self._memory_rows(budget)
        self.num_cons = self.num_other_rows + self.num_rows
        self.num_binaries = len(self._shared) + len(self.Z)
        self.num_vars = len({id(v) for v in self.V.values() if isinstance(v, pulp.LpVariable)}) + len(self.Z)
        self.build_s = time.perf_counter() - t0

    # ---- variables and row helpers -------------------------------------------------------------
    def _decision_variables(self) -> dict:
        """Per reachable candidate: ``rec``/``off`` binaries (case A; ``keep`` too in case B),
        continuous start indicators ``st`` per kept slot below ``top``, and ``y`` per live segment."""
        V: dict = {}
        var, C = self._var, pulp.LpContinuous
        for c in self.st.cands:
            if not self.st.reach[c.idx]:
                continue
            k = c.idx
            wanted = [("rec", c.rec_ok), ("off", c.off_ok), ("keep", c.d < 0 and bool(c.rcons))]
            for kind in (kind for kind, ok in wanted if ok):
                v = self._binary(kind, k)
                if v is not None:
                    V[(kind, k)] = v
            if self.menus is not None and k in self.menus.closed:
                V.update(self._item_indicators(c))
                continue
            r = self.cties.get(k)
            for i, b in enumerate(c.sv if c.rec_ok else ()):
                V[("st", k, b)] = V[("st", r, self.st.cands[r].sv[i])] if r is not None else var(f"s{k}_{b}", 0, 1, C)
            for j in range(len(c.segs)):
                V[("y", k, j)] = V[("y", r, j)] if r is not None else var(f"y{k}_{j}", 0, 1, C)
            if c.tail:
                V[("brk", k)] = var(f"brk{k}", 0, 1, C)
                V.update({("h", k, j): var(f"h{k}_{j}", 0, 1, C) for j in range(len(c.tail))})
        return V

    def _item_indicators(self, c: Cand) -> dict:
        """A closed candidate's ``st``, ``y`` and ``h`` as sums of the ``z`` whose item sets them to one
        (``layered.Menus.closed``); none set: the key is left out (0)."""
        keys = [("st", c.idx, b) for b in (c.sv if c.rec_ok else ())] + [("y", c.idx, j) for j in range(len(c.segs))]
        keys += [("h", c.idx, j) for j in range(len(c.tail))]
        setters = self.menus.setters
        return {key: _affine((self.Z[lm], 1) for lm in setters[key]) for key in keys if key in setters}

    def _menu_choices(self) -> dict:
        """``z[(layer, item)]`` binaries of ``menus`` with one row per layer: exactly one item."""
        if self.menus is None:
            return {}
        Z = {}
        for layer, items in enumerate(self.menus.choices):
            for m in items:
                Z[(layer, m)] = self._var(f"z{layer}_{m}", 0, 1, pulp.LpBinary)
            one = _affine((Z[(layer, m)], 1) for m in items)
            self.prob.addConstraint(pulp.LpConstraint(one, pulp.LpConstraintEQ, f"choose{layer}", 1))
            self.num_other_rows += 1
        return Z

    def _binary(self, kind: str, k: int):
        """The binary ``kind`` ("rec", "off", "keep") of candidate ``k``: its tie representative's
        when one was made; under ``menus``, for a candidate of a layer, the sum of the ``z`` whose
        item sets it (None when none does: the binary is 0)."""
        if self.menus is not None and k in self.menus.controlled:
            terms = [(self.Z[lm], 1) for lm in self.menus.setters.get((kind, k), ())]
            return _affine(terms) if terms else None
        key = (kind, self.ties.get(k, k))
        if key not in self._shared:
            self._shared[key] = self._var(f"{kind[0]}{k}", 0, 1, pulp.LpBinary)
        return self._shared[key]

    def _row(self, terms, sense, rhs, name: str) -> None:
        """Add ``sum(coef * V[key]) sense rhs``; keys missing from V are dropped (they are 0).
        Under ties, a row already written (same terms over the shared variables, same sense and
        right-hand side) or one without terms that holds is left out."""
        V = self.V
        if self._written is not None:  # the same row in the same order (a tied copy): cheap test
            raw = (tuple((id(V[key]), cf) for key, cf in terms if key in V), sense, rhs)
            if raw in self._written:
                return
            self._written.add(raw)
        coefs = _coefficients((V[key], cf) for key, cf in terms if key in V)
        if self._written is not None:
            key = (frozenset((id(v), cf) for v, cf in coefs.items()), sense, rhs)
            if key in self._written or (not coefs and _holds(sense, rhs)):
                return
            self._written.add(key)
        self.prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression(coefs), sense, name, rhs))
        self.num_other_rows += 1

    def _started(self, c: Cand, b: int) -> list:
        """Terms of "c is RECOMPUTE and S(c) <= b" (``Structure.st``), coefficient 1."""
        return [(key, 1) for key in self.st.st(c, b)]

    # ---- per-candidate rows --------------------------------------------------------------------
    def _choice_rows(self, c: Cand) -> None:
        """One decision at most; in case B, ``need = keep + rec`` is at least each recomputed
        consumer's ``rec`` and at most their sum (a recomputed ``v`` is really needed)."""
        k = c.idx
        if c.d >= 0:
            if c.rec_ok and c.off_ok:
                self._row([(("rec", k), 1), (("off", k), 1)], LE, 1, f"one{k}")
        elif c.rcons:
            need = [(("keep", k), 1), (("rec", k), 1)]
            self._row(need, LE, 1, f"one{k}")
            for x in c.rcons:
                self._row(need + [(("rec", x), -1)], GE, 0, f"need{k}_{x}")
            self._row(need + [(("rec", x), -1) for x in c.rcons], LE, 0, f"needub{k}")

    def _start_rows(self, c: Cand) -> None:
        """``st`` is monotone in the slot and below ``rec``; ``v`` starts before ``top`` only
        through a consumer started by then: ``st[v,b] <= sum_c st[c,b]``."""
        k = c.idx
        chain = [("st", k, b) for b in c.sv] + [("rec", k)]
        for i in range(len(chain) - 1):
            self._row([(chain[i], 1), (chain[i + 1], -1)], LE, 0, f"mono{k}_{i}")
        for b in c.sv:
            terms = [(("st", k, b), 1)]
            for x in c.rcons:
                terms += [(key, -cf) for key, cf in self._started(self.st.cands[x], b)]
            self._row(terms, LE, 0, f"sub{k}_{b}")

    def _consumer_start_rows(self, c: Cand) -> None:
        """A consumer started by ``b < top(v)`` needs ``v`` kept or started by ``b`` (S(v) <=
        S(c)); with no kept start at ``b``, ``v`` must be STORE. An OFFLOAD ``v`` is never needed
        before ``d(v)``."""
        top = c.top if c.rec_ok else (c.d if c.d >= 0 else None)
        if top is None and c.d < 0:
            return  # case B without recompute: need >= rec_x covers it
        kt, kc = _keep_terms(c)
        for x in c.rcons:
            xc = self.st.cands[x]
            for b in xc.sv + [xc.top]:
                if top is not None and b >= top:
                    continue
                terms = self._started(xc, b) + [(key, -cf) for key, cf in kt]
                terms += [(key, -cf) for key, cf in self._started(c, b)] if c.rec_ok else []
                self._row(terms, LE, kc, f"lb{c.idx}_{x}_{b}")

    def _kernel_offload_rows(self, c: Cand) -> None:
        """A consumer recomputed inside a kernel that starts before ``d(v)`` reads ``v`` there, so
        ``v`` cannot be OFFLOAD then (it is back on the device only from ``d(v)``)."""
        if not c.off_ok:
            return
        for x in c.rcons:
            kernel = self.st.kernels.get(x)
            if kernel is not None and kernel.first < c.d:
                self._row([(("rec", x), 1), (("off", c.idx), 1)], LE, 1, f"koff{c.idx}_{x}")

    def _live_segment_rows(self, c: Cand) -> None:
        """Past the certain part, ``y[v,j] >= started(s) + rec_x - st[x, s-1] - 1`` per consumer
        ``x``: ``v`` is live on segment ``j`` while started and some recomputed consumer has yet
        to start. Written through ``pending`` variables when that takes fewer rows."""
        if len(c.segs) * len(c.rcons) > PENDING_ROWS:
            self._pending_rows(c)
            return
        k = c.idx
        for j, (s, e) in enumerate(c.segs):
            started, sc = self._started_on_segment(c, s)
            for x in c.rcons:
                xc = self.st.cands[x]
                if s - 1 >= xc.top:
                    continue
                terms = [(("y", k, j), 1)] + [(key, -cf) for key, cf in started]
                terms += [(("rec", x), -1)] + self._started(xc, s - 1)
                self._row(terms, GE, sc - 1, f"y{k}_{j}_{x}")

    def _handover_rows(self, c: Cand) -> None:
        """A recomputed consumer breaks ``c``'s handover (``brk >= rec_x``); then ``c`` counts on
        each piece of its tail where it holds its own buffer (``h_j >= brk + holds(s_j) - 1``)."""
        k = c.idx
        if not c.tail:
            return
        for x in c.rcons:
            self._row([(("brk", k), 1), (("rec", x), -1)], GE, 0, f"brk{k}_{x}")
        for j, (s, _) in enumerate(c.tail):
            terms, const = self.st.holds(c, s)
            self._row([(("h", k, j), 1), (("brk", k), -1)] + [(key, -cf) for key, cf in terms], GE,
                      const - 1, f"h{k}_{j}")

    def _started_on_segment(self, c: Cand, s: int) -> tuple[list, int]:
        """(terms, const) of "``c`` holds its value at slot ``s``": 1 when backward reads it, else
        kept or recomputed by ``s``; a taken one only kept (recomputed, its taker takes it)."""
        if c.d >= 0:
            return [], 1
        own = c.rec_ok and c.idx not in self.st.taker
        return [(("keep", c.idx), 1)] + (self._started(c, s) if own else []), 0

    def _pending_rows(self, c: Cand) -> None:
        """The live-segment rows through ``pending[v,j]`` ("a recomputed consumer has yet to start
        at segment ``j``"): ``y[v,j] >= started(s_j) + pending[v,j] - 1``, ``pending`` does not
        grow from one segment to the next (it does not in any plan), and ``pending[v,j] >= rec_x -
        st[x, s_j-1]`` only at the last segment before ``x``'s term changes: the others follow
        through the chain. Exact like the per-consumer rows, with rows per consumer start instead
        of per consumer and segment (the dropout seeds that every layer reads: 250 k rows at 96
        GPT-2 layers)."""
        k, segs, r = c.idx, c.segs, self.cties.get(c.idx)
        for j in range(len(segs)):
            shared = self.V.get(("p", r, j)) if r is not None else None
            self.V[("p", k, j)] = shared if shared is not None else self._var(f"p{k}_{j}", 0, 1, pulp.LpContinuous)
        starts = [s for s, _ in segs]
        for j, s in enumerate(starts):
            started, sc = self._started_on_segment(c, s)
            self._row([(("y", k, j), 1), (("p", k, j), -1)] + [(key, -cf) for key, cf in started], GE, sc - 1, f"y{k}_{j}")
            if j + 1 < len(segs):
                self._row([(("p", k, j), 1), (("p", k, j + 1), -1)], GE, 0, f"pc{k}_{j}")
        for x in c.rcons:
            xc = self.st.cands[x]
            for j in _term_changes(starts, xc):
                here = self.st.st(xc, starts[j] - 1)
                self._row([(("p", k, j), 1), (("rec", x), -1)] + [(key, 1) for key in here], GE, 0, f"p{k}_{j}_{x}")

    # ---- transfer time, objective, memory ------------------------------------------------------
    def _transfer_rows(self) -> list:
        """Objective terms of the unhidden transfer time (``remat.transfers``, exact for the
        chosen set): copies to host queue in order of last forward use, so the forward waits
        ``max over a of (copy time released at or after slot a) - (compute after slot a)``;
        prefetches mirror it from the backward's start. ``U[a]`` / ``W[t]`` are those sums."""
        st = self.st
        offs = [c for c in st.cands if c.off_ok and st.reach[c.idx] and c.bytes]
        if not offs:
            return []
        cum, nf = st.problem.cumulative_time, st.nf
        for key in ("eout", "ein"):
            self.V[(key,)] = self._var(key, 0, None, pulp.LpContinuous)
        by_rel: dict[int, list] = defaultdict(list)
        by_use: dict[int, list] = defaultdict(list)
        for c in offs:
            by_rel[c.lfu].append(c)
            by_use[c.d].append(c)
        # copies released at or after a must fit in the compute after a; prefetches due by t in
        # the backward's compute before t
        self._transfer_chain("U", "eout", by_rel, sorted(by_rel, reverse=True), lambda a: cum[nf] - cum[a + 1])
        self._transfer_chain("W", "ein", by_use, sorted(by_use), lambda t: cum[t] - cum[nf])
        return [(self.V[("eout",)], 1.0), (self.V[("ein",)], 1.0)]

    def _transfer_chain(self, kind: str, wait: str, groups: dict, order: list, slack) -> None:
        """kind[s] = copy time queued from the first slot of ``order`` through s;
        wait >= kind[s] - slack(s) (compute that can hide it)."""
        V, ts, bw = self.V, self.tscale, self.st.problem.host_bandwidth
        prev = None
        for s in order:
            V[(kind, s)] = self._var(f"{kind}{s}", 0, None, pulp.LpContinuous)
            terms = [((kind, s), 1)] + [(("off", c.idx), -c.bytes / bw * ts) for c in groups[s]]
            if prev is not None:
                terms.append(((kind, prev), -1))
            self._row(terms, pulp.LpConstraintEQ, 0, f"{kind}{s}")
            self._row([((kind, s), 1), ((wait,), -1)], LE, slack(s) * ts, f"{wait}{s}")
            prev = s

    def _held_row(self) -> None:
        """Under other runs, ``held`` (row units) = the bytes the plan STOREs: ``keep_v`` of every
        reachable candidate (``_keep_terms``) times its bytes."""
        if not self.st.problem.other_runs:
            return
        self.V[("held",)] = self._var("held", 0, None, pulp.LpContinuous)
        terms, const = [(("held",), 1.0)], 0.0
        for c in self.st.cands:
            if self.st.reach[c.idx] and c.bytes:
                kt, kc = _keep_terms(c)
                terms += [(key, -cf * c.bytes / self.unit) for key, cf in kt]
                const += kc * c.bytes / self.unit
        self._row(terms, pulp.LpConstraintEQ, const, "held")

    def _objective(self, budget: int | None, obj: list):
        """Minimise the added time under a cap; without one, a variable ``peak`` (returned)."""
        if budget is not None:
            self.prob += _affine(obj)
            return None
        peak = self._var("peak", 0, None, pulp.LpContinuous)
        self.prob += pulp.LpAffineExpression([(peak, 1.0)])
        return peak

    def _memory_rows(self, budget: int | None) -> None:
        """One row per kept slot of ``rows``: fixed bytes plus the live form stay under the cap
        (or under ``peak``), in units of ``unit`` bytes. A row with no variable over the cap sets
        ``infeasible_row``."""
        u = self.unit
        self.infeasible_row = None
        self.num_rows = self.nnz = 0
        self._capped: list = []  # (row, its constant bytes) of each row under the cap
        runs = self.st.problem.other_runs
        held = [(self.V[("held",)], float(runs))] if ("held",) in self.V else []
        for t, const, terms in self.rows.forms(self._targets):
            expr = [(v, cf / u) for v, cf in terms.items()] + held
            const += self.st.problem.other_runs_bytes(0)
            if budget is None:
                expr.append((self.M, -1.0))
                rhs = -const / u
            else:
                rhs = (budget - const) / u
                if not expr:
                    if const > budget:
                        self.infeasible_row = t
                    continue
            form = _affine(expr)
            row = pulp.LpConstraint(form, LE, f"m{t}", rhs)
            self.prob.addConstraint(row)
            self._capped += [(row, const)] if budget is not None else []
            self.num_rows += 1
            self.nnz += len(form)

    def _targets(self, key) -> list:
        """The variables (and integer coefs) that the key ``key`` of a memory row stands for."""
        v = self.V.get(key)
        if v is None:
            return []
        return list(v.items()) if isinstance(v, pulp.LpAffineExpression) else [(v, 1)]

    def set_budget(self, budget: int) -> None:
        """Move the memory rows to the cap ``budget`` (their forms do not depend on it). A row
        without variables was left out under the first cap: under a lower one it is not checked,
        so a plan of the moved model may peak over the new cap there."""
        for row, const in self._capped:
            row.constant = (const - budget) / self.unit

    def warm(self, dec: dict[str, Decision]) -> None:
        """Initial values from normalized decisions."""
        st = self.st
        cs = st.cands
        V = self.V
        codes = st.codes(dec)
        need, S, ln = st.jit(codes)
        for v in V.values():
            if isinstance(v, pulp.LpVariable):
                v.setInitialValue(0)
        for key, v in V.items():
            if key[0] == "held":
                v.setInitialValue(st.stored_bytes(codes, need) / self.unit)
            if key[0] in ("U", "W", "eout", "ein", "held") or not isinstance(v, pulp.LpVariable):
                continue  # continuous transfer sums (implied by the decisions) and menu sums
            kind, k = key[0], key[1]
            c = cs[k]
            on = need[k]
            if kind == "rec":
                val = on and codes[k] == REC
            elif kind == "off":
                val = on and codes[k] == OFF
            elif kind == "keep":
                val = on and codes[k] == STORE
            elif kind == "st":
                val = on and codes[k] == REC and S[k] <= key[2]
            elif kind == "brk":
                val = st.consumer_recomputed(k, codes, need)
            elif kind == "h":  # a broken handover, c holding its own buffer on tail piece j
                s = c.tail[key[2]][0]
                val = on and st.consumer_recomputed(k, codes, need) and st.holds_under(k, codes[k], S, s)
            elif kind == "p":  # a recomputed consumer starts after segment j begins
                s = c.segs[key[2]][0]
                val = any(need[x] and codes[x] == REC and S[x] > s - 1 for x in c.rcons)
            else:  # y: live on segment j
                s = c.segs[key[2]][0]
                started = codes[k] != REC or (S[k] <= s and k not in st.taker)
                val = on and started and ln[k] >= s
            v.setInitialValue(1 if val else 0)
        if self.M is not None:
            self.M.setInitialValue(self.st.peak(dec) / self.unit)

    def decisions(self) -> dict[str, Decision]:
        out = {}
        V = self.V
        for c in self.st.cands:
            k = c.idx
            r, o, kp = V.get(("rec", k)), V.get(("off", k)), V.get(("keep", k))
            if r is not None and (pulp.value(r) or 0) > 0.5:
                out[c.name] = Decision.RECOMPUTE
            elif o is not None and (pulp.value(o) or 0) > 0.5:
                out[c.name] = Decision.OFFLOAD
            elif c.d >= 0 or (kp is not None and (pulp.value(kp) or 0) > 0.5):
                out[c.name] = Decision.STORE
        return self.st.normalize(out)


def _affine(pairs) -> pulp.LpAffineExpression:
    """A linear form from (variable or constant-free linear form, coef) pairs (``_coefficients``)."""
    return pulp.LpAffineExpression(_coefficients(pairs))


def _coefficients(pairs) -> dict:
    """{variable: coef} from (variable or constant-free linear form, coef) pairs, summing the
    coefs of a variable that repeats (tied variables, menu sums; ``LpAffineExpression`` would
    keep only the last), zeros left out. Variables are keys by identity (PuLP hashes by ``id``)."""
    acc: dict = {}
    for v, cf in pairs:
        if isinstance(v, pulp.LpAffineExpression):
            for var, c2 in v.items():
                acc[var] = acc.get(var, 0) + cf * c2
        else:
            acc[v] = acc.get(v, 0) + cf
    return {v: cf for v, cf in acc.items() if cf}


def _term_changes(starts: list[int], xc: Cand) -> list[int]:
    """The segments ``j`` (starting at ``starts``) where consumer ``xc``'s term ``rec_x -
    st[x, s_j-1]`` is non-zero and differs from the next segment's: those whose slots
    ``s_j..s_{j+1}-1`` hold one of its kept starts or its ``top`` (where ``st`` changes), and the
    last one while ``x`` may start after it."""
    out = {bisect_right(starts, q) - 1 for q in set(xc.kept) | {xc.top} if q >= starts[0]}
    if starts[-1] - 1 < xc.top:
        out.add(len(starts) - 1)
    return sorted(j for j in out if starts[j] - 1 < xc.top)


def _holds(sense: int, rhs: float) -> bool:
    """Whether ``0 sense rhs`` holds (a row whose terms all cancelled)."""
    return rhs >= 0 if sense == LE else (rhs <= 0 if sense == GE else rhs == 0)


def tie_map(st: Structure, layers) -> dict[int, int]:
    """Candidate index -> representative (the first layer's candidate at the same position of
    the same layer class) for the candidates of ``Problem.layers`` that the model can tie: both
    reachable and of the same case (read by backward or not)."""
    ties: dict[int, int] = {}
    for cls in layers:
        for names in zip(*cls):
            idxs = [st.index[n] for n in names if n in st.index and st.reach[st.index[n]]]
            for case in (True, False):
                group = [k for k in idxs if (st.cands[k].d >= 0) is case]
                for k in group[1:]:
                    ties[k] = group[0]
    return ties


def continuous_ties(st: Structure, ties: dict[int, int]) -> dict[int, int]:
    """Tied candidate -> representative whose ``st`` and ``y`` variables it shares: the same
    number of kept starts below ``top`` and of live segments, and recomputable consumers tied to
    the representative's. Sharing restricts the model (each row stays, over the shared
    variables): corresponding activations of identical layers then take corresponding starts and
    lifetimes, which they do under tied decisions unless a chain of recomputations crosses a
    whole layer. The last layer's output (read by what follows the stack) keeps its own."""
    out: dict[int, int] = {}
    cs = st.cands
    for k, r in ties.items():
        c, rc = cs[k], cs[r]
        if r >= k or len(c.sv) != len(rc.sv) or len(c.segs) != len(rc.segs) or c.rec_ok != rc.rec_ok:
            continue
        if sorted(ties.get(x, x) for x in c.rcons) == sorted(ties.get(x, x) for x in rc.rcons):
            out[k] = r
    return out


def _var_factory(prob: pulp.LpProblem):
    """prob.add_variable where PuLP has it (LpVariable(...) is deprecated there), else LpVariable."""
    if hasattr(prob, "add_variable"):
        return lambda name, lo, hi, cat: prob.add_variable(name, lo, hi, cat=cat)
    return lambda name, lo, hi, cat: pulp.LpVariable(name, lowBound=lo, upBound=hi, cat=cat)


def _scales(st: Structure) -> tuple[float, float]:
    """(unit, tscale): bytes per unit of a memory row (a power of two near the largest
    activation / 1e4) and 1 / the largest per-decision time, so that coefficients stay near 1."""
    cs = st.cands
    maxb = max([c.bytes for c in cs] + [1])
    unit = float(2 ** max(0, math.floor(math.log2(max(1.0, maxb / 1e4)))))
    bw = st.problem.host_bandwidth
    times = [c.time for c in cs if c.rec_ok] + [c.bytes / bw for c in cs if c.off_ok]
    tmax = max([t for t in times if t > 0] + [0.0])
    return unit, (1.0 / tmax if tmax > 0 else 1.0)


def _keep_terms(c: Cand) -> tuple[list, int]:
    """keep_c as (terms, const): ``1 - rec - off`` in case A, the ``keep`` binary in case B."""
    if c.d >= 0:
        return [(("rec", c.idx), -1), (("off", c.idx), -1)], 1
    return [(("keep", c.idx), 1)], 0


def _solve(model: Model, backend: str, time_limit: float, gap: float, warm: bool, threads: int | None,
           nodes: int | None = None):
    """Run the solver, for at most ``nodes`` branch-and-bound nodes when given (HiGHS: a callback
    that interrupts it, checked every few nodes; CBC: ``maxNodes``, one thread); returns
    (sol_status, bound, gap, seconds, nodes processed: None with CBC)."""
    t0 = time.perf_counter()
    limit = max(0.1, float(time_limit))
    if backend == "highs":
        skip_banner()
        kw = {} if nodes is None else _node_limit(nodes)
        if gap <= 0:
            kw["mip_abs_gap"] = 1e-9
        solver = HiGHS(msg=False, timeLimit=limit, gapRel=gap, threads=threads, warm=warm, **kw)
    else:
        with warnings.catch_warnings():  # PuLP 3.x flags PULP_CBC_CMD as deprecated for 4.0
            warnings.simplefilter("ignore", DeprecationWarning)
            solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=limit, gapRel=gap, warmStart=warm,
                                       threads=1 if nodes is not None else threads, maxNodes=nodes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model.prob.solve(solver)
    secs = time.perf_counter() - t0
    bound = mgap = count = None
    if backend == "highs":
        try:
            info = model.prob.solverModel.getInfo()
            bound = float(info.mip_dual_bound)
            mgap = float(info.mip_gap)
            count = int(info.mip_node_count)
        except Exception:  # pragma: no cover
            pass
    return model.prob.sol_status, bound, mgap, secs, count


def _node_limit(nodes: int) -> dict:
    """HiGHS options that interrupt its MIP once it has processed ``nodes`` nodes. (HiGHS's own
    ``mip_max_nodes`` ends in a status that PuLP 3.3 cannot read; an interrupt it reads as a time
    limit: the best plan found so far.)"""
    import highspy

    def interrupt(kind, message, out, data_in, user) -> None:
        if out.mip_node_count >= nodes:
            data_in.user_interrupt = True

    return dict(callbackTuple=(interrupt, None),
                callbacksToActivate=[highspy.cb.HighsCallbackType.kCallbackMipInterrupt])


def _backend(name: str | None) -> str:
    if name is None:
        return "highs" if HAVE_HIGHS else "cbc"
    name = str(name).lower()
    if name not in ("highs", "cbc"):
        raise ConfigError(f"ilp backend must be 'highs' or 'cbc'; got {name!r}")
    if name == "highs" and not HAVE_HIGHS:
        raise ConfigError("ilp backend 'highs' needs the highspy package; use backend='cbc'")
    return name


# ---- public entry points -------------------------------------------------------------------


def min_peak(problem: Problem, *, time_limit: float = 60.0, backend: str | None = None,
             starts: int | None = None, _structure: Structure | None = None) -> int:
    """The smallest peak that the min-peak search finds (``min_peak_search``)."""
    return min_peak_search(problem, time_limit=time_limit, backend=backend, starts=starts, _structure=_structure).peak


@dataclasses.dataclass(frozen=True)
class MinPeakSearch:
    """What the min-peak search (``_min_peak``) found: the smallest peak, the decisions that reach
    it, whether the MIP proved it minimal over the plans its rows hold, and whether the wall clock
    (``SAFETY_CAP`` x ``time_limit``) stopped the MIP or a descent before its work budget (``MIN_PEAK_NODES``,
    ``DESCENT_WORK``): only then can the same Problem end at another peak on a busier machine."""

    peak: int
    decisions: dict
    proven: bool
    timed_out: bool = False


def min_peak_search(problem: Problem, *, time_limit: float = 60.0, backend: str | None = None,
                    starts: int | None = None, _structure: Structure | None = None) -> MinPeakSearch:
    """The min-peak search (``_min_peak``) of ``problem``: the lower of the pair descents from an
    unpriced greedy plan and from the min-peak MIP's plan. Prices do not move it (but for which
    activations may offload, when some may), nor does the machine's load: its work is counted
    (MIP nodes, plans evaluated), and ``SAFETY_CAP`` x ``time_limit`` seconds is a safety cap
    (``MinPeakSearch.timed_out``).
    ``starts``: the recompute start slots the MIP keeps per activation (``_core.DEFAULT_K`` when
    None, see ``_core``); the descents evaluate plans exactly and are not bound to them."""
    st = _structure or Structure(problem, k=starts)
    return _min_peak(st, time_limit, _backend(backend))


MIN_PEAK_NODES = 2000  # branch-and-bound nodes of the min-peak MIP (quick models: <= 112; GPT-2 12 layers: 265)
DESCENT_WORK = 8_000_000  # plans the descents evaluate, times the Problem's slots (one evaluation's cost)
# the search's wall-clock cap, in time limits: far off, so that the work budget ends it on a busy machine too
# (GPT-2 12 layers: 19 s of CPU took the whole 60 s time limit at load 5.4, and the clock cut it)
SAFETY_CAP = 10
DESCENT_SHARE = 0.1  # of the cap, kept from the min-peak MIP for the descents (with what the MIP left)


def _min_peak(st: Structure, time_limit: float, backend: str) -> MinPeakSearch:
    """The lower of the descents (``_pair_descent``) from the greedy's plan, made without prices
    (``_unpriced``), and from the min-peak MIP's (no upper bound from the greedy's peak): neither
    start depends on prices. The MIP's optimum is not the floor: its rows over-count a value
    recomputed inside a backward kernel whose backward reader moves after that kernel, and keep
    only ``st.k`` start slots: transformers GPT-2 (quick) in the graph's order, MIP optimal in its
    rows at 30.72 MB, descended from its plan 26.61. Proven: the MIP proved its rows' optimum and
    no descent went under it (a proof over the plans its rows hold).

    Work, not seconds, ends the search, so that a busy machine finds the same floor: the MIP stops
    after ``MIN_PEAK_NODES`` nodes, the descents after ``DESCENT_WORK`` / slots plans evaluated
    (the MIP's descent first, with half; the greedy's takes what is left). The wall clock is a
    safety cap only, ``SAFETY_CAP`` times ``time_limit``: the MIP has all but ``DESCENT_SHARE`` of
    it, the descents what is left."""
    if st.n == 0:
        return MinPeakSearch(0, {}, True)
    time_limit *= SAFETY_CAP
    started, lb = time.perf_counter(), st.lower_bound_peak()
    dec = st.normalize(run_greedy(_unpriced(st), lb)[0])
    peak = st.peak(dec)
    if peak <= lb:
        return MinPeakSearch(peak, dec, True)
    starts = [(peak, dec)]
    mip, proven, timed_out = _min_peak_mip(st, lb, dec, (1 - DESCENT_SHARE) * time_limit, backend)
    if mip is not None:
        starts.append(mip)
    deadline, evaluations, ends = started + time_limit, max(1, DESCENT_WORK // st.n), []
    for i, (p, d) in enumerate(reversed(starts)):  # the MIP's first: its descent is the quicker, most often the lower
        end = _pair_descent(st, d, p, lb, evaluations // (len(starts) - i), deadline)
        evaluations -= end.evaluations  # what one left unused, the next may take
        timed_out |= end.timed_out
        ends.append(end)
    best = min(ends, key=lambda e: e.peak)
    return MinPeakSearch(best.peak, best.decisions, proven and mip is not None and best.peak >= mip[0], timed_out)


def _unpriced(st: Structure) -> Structure:
    """``st`` with every recomputation priced alike (1 s), so that the greedy, which moves
    candidates by bytes freed per second, is steered by bytes alone; ``st`` itself where
    activations may offload (which ones may depends on prices: ``Structure._offload_candidates``)."""
    p = st.problem
    if p.host_bandwidth > 0:
        return st
    acts = tuple(dataclasses.replace(a, compute_time=1.0) for a in p.activations)
    return Structure(dataclasses.replace(p, activations=acts), k=st.k)


def _min_peak_mip(st: Structure, lb: int, greedy: dict, time_limit: float, backend: str):
    """((its peak, its decisions) or None, proven optimal, stopped by ``time_limit``): the MIP's
    plan of least peak in its rows, at least ``lb``, after at most ``MIN_PEAK_NODES`` nodes; None
    when it found no valid plan. CBC starts from the ``greedy`` plan."""
    model = Model(st, Rows(st), None)
    model.M.lowBound = lb / model.unit
    warm = backend == "cbc"  # HiGHS MIP starts are not safe (see _free)
    if warm:
        model.warm(greedy)
    status, _, _, secs, _ = _solve(model, backend, time_limit, 0.0, warm, None, nodes=MIN_PEAK_NODES)
    timed_out = _stopped_by(model, backend, status, secs, time_limit) == "time limit"
    if status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return None, False, timed_out
    dec = model.decisions()
    found = None if st.violations(dec) else (st.peak(dec), dec)
    return found, status == pulp.LpSolutionOptimal, timed_out


def _stopped_by(model: Model, backend: str, status: int, secs: float, time_limit: float) -> str:
    """What ended the solve of ``model`` before its gap: "time limit" (CBC: it took all of it),
    "node budget" (HiGHS: the node callback's interrupt; CBC: a plan not proven within its gap
    before the clock), or "" (it reached its gap, or proved the model infeasible)."""
    if backend == "highs":
        import highspy

        ended = model.prob.solverModel.getModelStatus()
        return {highspy.HighsModelStatus.kTimeLimit: "time limit",
                highspy.HighsModelStatus.kInterrupt: "node budget"}.get(ended, "")
    if secs >= time_limit:
        return "time limit"
    return "node budget" if status == pulp.LpSolutionIntegerFeasible else ""


@dataclasses.dataclass(frozen=True)
class _Descent:
    """Where a descent ended: its decisions and peak, the plans it evaluated, and whether the wall
    clock stopped it."""

    decisions: dict
    peak: int
    evaluations: int
    timed_out: bool


def _pair_descent(st: Structure, dec: dict, peak: int, lb: int, evaluations: int, deadline: float) -> _Descent:
    """From ``dec``, take the move of at most two decisions that lowers the peak most, while one
    does and the peak is over ``lb`` (``_descend``), evaluating at most ``evaluations`` plans and
    stopping at ``deadline``. The greedy moves one candidate (or one chain) at a time, so it stops
    where no single move lowers the peak, and the min-peak MIP's optimum is above plans its rows
    cannot hold (``_min_peak``): transformers GPT-2 (quick) recomputes bmm_1 with clone_5, then
    bmm_3 with clone_11, each pair lowering the peak where neither alone is valid; transformers
    Llama's told Problem with index vectors folded (tests/unit/data/hf_llama_min.json) ends at
    15.41 MB with pairs of recomputations alone, 14.89 with single flips either way and swaps."""
    end = _descend(st, _full_codes(st, dec), peak, lb, evaluations, deadline)
    return dataclasses.replace(end, decisions=_decisions(st, end.decisions))


def _descend(st: Structure, code: np.ndarray, peak: int, lb: int, evaluations: int, deadline: float) -> _Descent:
    """``_pair_descent`` on decision codes (one per candidate; ``_Descent.decisions`` is codes
    here). Each round tries the moves of ``_moves``, kind by kind, and takes the best of the first
    kind that lowers the peak (a round cut short by ``evaluations`` takes the best it saw)."""
    used = 0
    while peak > lb and used < evaluations:
        best = None
        for kind in _moves(st, code):
            for move in itertools.islice(kind, evaluations - used):
                if time.perf_counter() >= deadline:
                    return _Descent(code, peak, used, True)
                used += 1
                tried = code.copy()
                for j, to in move:
                    tried[j] = to
                p = int(st.evaluate(tried)[0].max())
                if p < peak and (best is None or p < best[0]) and not st.violations(_decisions(st, tried)):
                    best = (p, tried)
            if best is not None or used >= evaluations:
                break
        if best is None:
            break
        peak, code = best
    return _Descent(code, peak, used, False)


def _moves(st: Structure, code: np.ndarray):
    """The kinds of moves from needed decisions ``code``, each a lazy sequence of moves (lists of
    (candidate index, new code)), the largest candidates first: one decision flipped (a stored
    candidate recomputed, or a recomputed one stored), a pair of stored candidates recomputed
    (neither alone may lower the peak), and a swap (one recomputed candidate stored, one stored
    recomputed: the same bytes held elsewhere)."""
    need = st.needed(code)
    order = sorted((c for c in st.cands if need[c.idx]), key=lambda c: -c.bytes)
    stored = [c.idx for c in order if c.rec_ok and code[c.idx] == STORE]
    recomputed = [c.idx for c in order if code[c.idx] == REC]
    return (itertools.chain(([(j, REC)] for j in stored), ([(j, STORE)] for j in recomputed)),
            ([(a, REC), (b, REC)] for a, b in itertools.combinations(stored, 2)),
            ([(a, STORE), (b, REC)] for a in recomputed for b in stored))


def _full_codes(st: Structure, dec: dict) -> np.ndarray:
    """Decision codes of every candidate for decisions ``dec`` (STORE where it has none)."""
    code = st.codes(dec)
    code[code < 0] = STORE
    return code


def _decisions(st: Structure, code: np.ndarray) -> dict:
    """The needed decisions of codes ``code`` (``Structure.normalize``)."""
    return st.normalize({c.name: _DECISION[int(code[c.idx])] for c in st.cands})


_DECISION = {STORE: Decision.STORE, REC: Decision.RECOMPUTE, OFF: Decision.OFFLOAD}


# branch-and-bound nodes of each capped solve, at 1 % gap: quick models <= 7; GPT-2 12 layers 1 (tied), 90 ("mix"),
# 571 ("free"); the root node's work (presolve, cuts) is not counted (deterministic, but not bounded by it)
CAPPED_NODES = 2000
LAYER_MODES = ("auto", "mix", "tie", "free")
PENDING_ROWS = 64  # live-segment rows of one candidate above which they go through pending variables
AUTO_MIX_LAYERS = 8  # "auto" runs "mix" when a layer class has at least this many layers, else "free"
MENU_CAPS = (0.0, -0.5, -0.25, 0.25, 0.5)  # caps of the tied plans that make the first menus (see _menu_caps)
MENU_GAP = 0.05  # MIP gap of the tied solves at the other menu caps
CAP_SHARE = 0.3  # of the time left, for the tied solve at the cap itself (the fallback)
MIX_ROUNDS = 1  # rounds of "mix" mode: a two-level solve, then a tied solve regrouped by its answer
AUTO_MIX_SHARE = 0.5  # "auto" goes on from tied to mix when _mix_estimate fits in this share of the time left


def ilp(
    problem: Problem,
    budget_bytes: int | None,
    *,
    time_limit: float = 60.0,
    gap: float = 0.01,
    backend: str | None = None,
    warm_start: bool | str = True,
    prune: bool = True,
    threads: int | None = None,
    starts: int | None = None,
    layers: str = "auto",
    **kw,
) -> Plan:
    """Minimum added time under a peak of ``budget_bytes`` (``gap``: relative MIP gap to stop at;
    ``starts``: kept recompute start slots per activation, see ``min_peak``). ``layers`` says
    what to do with ``Problem.layers``: "mix" (two levels, ``remat.solvers.layered``: tied plans
    at a few caps make a menu of layer plans, then each layer picks one item), "tie" (one
    decision per position of identical layers), "free" (every activation on its own, with the
    tied plan as one more fallback), "auto" ("mix" when a class has ``AUTO_MIX_LAYERS`` layers or
    more, else "free": on short stacks the free model is small, exact and as fast; a "mix" of
    "auto" stops after the tied solve at the cap, keeping the tied and the greedy plans, when
    the greedy plan is as cheap as the tied one or that solve's build and solve times say that
    the rest would not fit in ``AUTO_MIX_SHARE`` of the time left: ``_mix_skip``). Work ends
    the planning (the greedy's moves, ``CAPPED_NODES`` per solve); the clock caps it: the greedy
    at ``SAFETY_CAP`` x ``time_limit``, model building and every solve at ``time_limit`` (the
    min-peak search, when no plan meets the cap, has its own: ``_min_peak_plan``).
    ``plan.info["ilp_stopped_by"]`` (``tied_``, ``mix_`` ... for the
    other models) says whether the node budget or the clock stopped a solve before its gap,
    ``plan.info["stopped_by"]`` the same of the solves ``info`` records (``_what_stopped``); a plan
    that the node budget stopped has status "feasible" with HiGHS's bound and gap.

    Steps: trivial caps (none, or store-all fits); the lower-bound test; the greedy plan (warm
    start and fallback); the models of the ``layers`` mode; the cheapest valid plan under the cap
    of all (or the min-peak plan when none meets the cap); its optimality status (a tied or mixed
    plan is "feasible": its model's bound only holds for the plans that model spans)."""
    t0 = time.perf_counter()
    backend = _backend(backend)
    if layers not in LAYER_MODES:
        raise ConfigError(f"layers must be one of {', '.join(map(repr, LAYER_MODES))}; got {layers!r}")
    st = kw.get("_structure") or Structure(problem, k=starts)
    trivial = _trivial_plan(st, budget_bytes, t0)
    if trivial is not None:
        return trivial
    budget = int(budget_bytes)
    if budget < st.lower_bound_peak():  # cheap: fixed bytes plus what every plan keeps live exceed it
        max_fixed = int(st.fixed.max())
        why = f"below the largest fixed bytes of a slot ({max_fixed})" if budget < max_fixed else ""
        _raise_infeasible(st, budget, time_limit, backend, why)
    greedy_plan, greedy_cost = _greedy_plan(st, budget, t0 + SAFETY_CAP * time_limit)
    ties = tie_map(st, problem.layers) if problem.layers else {}
    mode = _mode(layers, problem.layers) if ties else "free"
    warm = warm_start == "force" or (bool(warm_start) and backend == "cbc")  # see _free
    solve = dict(budget=budget, backend=backend, gap=gap, threads=threads, prune=prune, deadline=t0 + time_limit,
                 warm=warm)
    info: dict = {"greedy_objective": None if greedy_plan is None else greedy_cost, "layers": layers,
                  "layers_mode": mode, "tied_activations": len(ties)}
    found, (model, status, bound, mgap) = _MODES[mode](st, problem.layers, ties, greedy_plan, solve, info)
    found += [(greedy_plan, greedy_cost, "greedy")] if greedy_plan is not None else []
    best, best_cost, source = min(found, key=lambda f: f[1]) if found else (None, math.inf, None)
    if best is None:
        best, best_cost, source = _min_peak_plan(st, budget, time_limit, backend, status, info, mode == "free")
    info["source"] = source
    info["stopped_by"] = _what_stopped(info)
    tscale = model.tscale if model is not None else 1.0
    status_s, bnd, rgap = _optimality(status, bound, mgap, best_cost, source, backend, gap, tscale)
    info["planning_s"] = round(time.perf_counter() - t0, 4)
    return make_plan(st, best, "ilp", budget, status=status_s, bound=bnd, gap=rgap,
                     solve_time_s=time.perf_counter() - t0, info=info)


def _what_stopped(info: dict) -> str:
    """What stopped the solves that ``info`` records before their gap: "time limit" when the
    clock stopped any (the plan may then depend on the machine's load), else "node budget" when
    their work budget stopped any, else "" (each reached its gap)."""
    stops = {v for k, v in info.items() if k.endswith("ilp_stopped_by")}
    return next((s for s in ("time limit", "node budget") if s in stops), "")


def _mode(layers: str, classes) -> str:
    """The mode that ``layers`` means for these layer classes ("auto" resolved)."""
    if layers != "auto":
        return layers
    return "mix" if max(len(cls) for cls in classes) >= AUTO_MIX_LAYERS else "free"


def _free(st: Structure, layers, ties: dict, greedy_plan, solve: dict, info: dict):
    """The free model (after the tied one, with 30 % of the time, when there are layers), warm
    started from the greedy plan with CBC (HiGHS MIP starts are not safe) or when forced: (found
    plans, (free model, status, bound, mip gap))."""
    warm = greedy_plan if solve["warm"] else None
    found = []
    if ties:
        found += _answer(st, _solve_model(st, dict(ties=ties), 0.3, None, solve, info, "tied"), solve, "tied", info)
    solved = _solve_model(st, {}, 1.0, warm, solve, info, "free")
    return found + _answer(st, solved, solve, "ilp", info), solved


def _tie(st: Structure, layers, ties: dict, greedy_plan, solve: dict, info: dict):
    """The tied model alone; its bound holds for tied plans only, so none is reported."""
    solved = _solve_model(st, dict(ties=ties), 1.0, None, solve, info, "tied")
    return _answer(st, solved, solve, "tied", info), (solved[0], solved[1], None, None)


def _mix(st: Structure, layers, ties: dict, greedy_plan, solve: dict, info: dict):
    """Two levels: the tied model solved at each menu cap (at ``MENU_GAP`` but for the cap
    itself), then ``MIX_ROUNDS`` times the two-level model over the layer items of the plans so
    far (newest first; the greedy plan's items, one per layer, would crowd the menu and slow the
    solve, so they join only when fewer than two tied plans were found) and the tied model
    regrouped by its answer (``layered.layer_groups``: layers that took one item share decisions,
    each group its own). The tied solve at the cap gets ``CAP_SHARE`` of the time left, every
    other solve an even share; the bound of these models holds for the plans they span only, so
    none is reported."""
    solve = dict(solve, rows=Rows(st, prune=solve["prune"]))
    caps = _menu_caps(solve["budget"], st.lower_bound_peak(), st.peak(st.store_all()))
    steps = len(caps) + 2 * MIX_ROUNDS
    greedy_cost = st.cost(greedy_plan) if greedy_plan is not None else math.inf
    found, plans = _tied_at_caps(st, ties, caps, steps, solve, info, greedy_cost)
    if info.get("mix_skipped"):
        return found, (None, pulp.LpStatusNotSolved, None, None)
    if len(plans) < 2 and greedy_plan is not None:  # too few items: the greedy plan's too
        plans.append(greedy_plan)
    solved = (None, pulp.LpStatusNotSolved)
    for r in range(MIX_ROUNDS):
        if _spent(solve):
            break
        step = len(caps) + 2 * r
        menus = build_menus(st, layers, plans)
        info["menu_items"] = list(menus.items)
        solved = _solve_model(st, dict(menus=menus), 1 / (steps - step), None, solve, info, "mix")
        mixed = _answer(st, solved, solve, "mix", info)
        base = mixed[0][0] if mixed else (plans[0] if plans else None)
        if base is None or _spent(solve):
            found += mixed
            break
        regroup = dict(ties=tie_map(st, layer_groups(st, layers, base)))
        regrouped = _answer(st, _solve_model(st, regroup, 1 / (steps - step - 1), None, solve, {}, "regroup"),
                            solve, "regrouped", info)
        found += mixed + regrouped
        plans = [f[0] for f in regrouped + mixed] + plans
    return found, (solved[0], solved[1], None, None)


def _tied_at_caps(st: Structure, ties: dict, caps: list[int], steps: int, solve: dict, info: dict,
                  greedy_cost: float):
    """(found plans, menu plans): one tied model, moved to each cap in turn and solved (the
    first cap is the cap itself: its answer is a plan under it). Under "auto" it stops after
    that first solve when ``_mix_skip`` gives a reason: ``info["mix_skipped"]`` says it and
    ``info["layers_mode"]`` becomes "tie"."""
    t0 = time.perf_counter()
    tied = _build(st, dict(ties=ties), solve, info, "tied")
    build_s = time.perf_counter() - t0
    found, plans = [], []
    for i, cap in enumerate(caps):
        if i and _spent(solve):
            break
        if i == 1 and info["layers"] == "auto":
            why = _mix_skip(build_s, info.get("tied_ilp_s", 0.0), len(caps), solve, found, greedy_cost)
            if why:
                info["mix_skipped"], info["layers_mode"] = why, "tie"
                break
        tied.set_budget(cap)
        at = solve if i == 0 else dict(solve, gap=max(solve["gap"], MENU_GAP))  # menu items only
        share = CAP_SHARE if i == 0 else 1 / (steps - i)
        status = _run(tied, share, None, at, info if i == 0 else {}, "tied")[1]
        if status in _FOUND:
            plans.append(tied.decisions())
            found += _answer(st, (tied, status), solve, "tied", info) if i == 0 else []
    return found, plans


_MODES = {"free": _free, "tie": _tie, "mix": _mix}


def _mix_skip(build_s: float, solve_s: float, caps: int, solve: dict, found: list, greedy_cost: float) -> str:
    """Why "auto" keeps the tied plan and the greedy's instead of going on with "mix" ("": it goes
    on): the greedy plan is already as cheap as the tied plan at the cap (mix builds on tied
    plans; on GPT-2-small and Llama-7B shapes it never beat such a greedy plan), or the rest of
    mix (``_mix_estimate``) would not fit in ``AUTO_MIX_SHARE`` of the time left."""
    if found and greedy_cost <= found[0][1]:
        return "the greedy plan is as cheap as the tied plan"
    estimate = _mix_estimate(build_s, solve_s, caps)
    if estimate > AUTO_MIX_SHARE * (solve["deadline"] - time.perf_counter()):
        return f"the rest of mix would take about {estimate:.1f} s"
    return ""


def _mix_estimate(build_s: float, solve_s: float, caps: int) -> float:
    """Seconds that "mix" would take after the tied solve at the cap, from that solve's build and
    solve times: the tied solves at the other menu caps (on the model held), then per round a
    two-level and a regrouped model, each built and solved once."""
    return (caps - 1) * solve_s + 2 * MIX_ROUNDS * (build_s + solve_s)


def _spent(solve: dict) -> bool:
    """Whether the planning deadline has passed (a model built now would get no time to solve)."""
    return time.perf_counter() >= solve["deadline"]


def _menu_caps(budget: int, lo: int, hi: int) -> list[int]:
    """The cap, then caps a fraction of the way down to the lower bound (negative ``MENU_CAPS``)
    or up to the store-all peak (positive): the tied plans there store less or more per layer."""
    caps = [budget + int(f * ((budget - lo) if f < 0 else (hi - budget))) for f in MENU_CAPS]
    return list(dict.fromkeys(caps))


def _solve_model(st: Structure, shape: dict, share: float, warm_plan, solve: dict, info: dict, label: str):
    """``_build`` then ``_run``: (model, sol_status, bound, mip gap)."""
    return _run(_build(st, shape, solve, info, label), share, warm_plan, solve, info, label)


def _build(st: Structure, shape: dict, solve: dict, info: dict, label: str) -> Model:
    """The model (free, or shaped by ``ties`` / ``menus``) under ``solve["budget"]``, over
    ``solve["rows"]`` when given; records its sizes in ``info`` (keys prefixed ``tied_`` /
    ``mix_`` but for the free model)."""
    tb = time.perf_counter()
    rows = solve.get("rows") or Rows(st, prune=solve["prune"])
    model = Model(st, rows, solve["budget"], **shape)
    sizes = _model_info(st, rows, model, solve["backend"], time.perf_counter() - tb)
    info.update({_prefix(label) + k: v for k, v in sizes.items()})
    return model


def _run(model: Model, share: float, warm_plan, solve: dict, info: dict, label: str):
    """Solve ``model`` for at most ``CAPPED_NODES`` nodes, with ``share`` of the time left before
    ``time_limit`` (from ``warm_plan`` when given); records in ``info`` its time, status, gap, nodes and
    what stopped it before its gap (``_stopped_by``: "node budget", "time limit" or "").
    Returns (model, sol_status, bound, mip gap)."""
    status = pulp.LpStatusNotSolved
    bound = mgap = None
    pre = _prefix(label)
    if model.infeasible_row is not None:  # cannot happen after the lower-bound test
        info["ilp_fallback"] = f"a constant row (slot {model.infeasible_row}) exceeds the cap"
    else:
        if warm_plan is not None:
            model.warm(warm_plan)
        limit = max(0.1, (solve["deadline"] - time.perf_counter()) * share)
        status, bound, mgap, secs, count = _solve(model, solve["backend"], limit, solve["gap"],
                                                  warm_plan is not None, solve["threads"], nodes=CAPPED_NODES)
        info[pre + "ilp_s"] = round(secs, 4)
        info[pre + "sol_status"] = int(status)
        info[pre + "mip_gap"] = mgap
        info[pre + "ilp_nodes"] = count
        info[pre + "ilp_stopped_by"] = _stopped_by(model, solve["backend"], status, secs, limit)
    return model, status, bound, mgap


def _prefix(label: str) -> str:
    return "" if label == "free" else label + "_"


def _answer(st: Structure, solved, solve: dict, source: str, info: dict) -> list:
    """[(decisions, cost, source)] of a solved model when its answer is a valid plan under the
    cap ``solve["budget"]``, else [] (with the reason in ``info["ilp_fallback"]``)."""
    model, status = solved[0], solved[1]
    budget = solve["budget"]
    if status not in _FOUND:
        return []
    dec = model.decisions()
    bad = st.violations(dec)
    if bad:  # cannot happen: the start rows forbid it
        info["ilp_fallback"] = f"{source} solution is not a valid plan: {bad[0]} (bug)"
        return []
    if st.peak(dec) > budget:
        info["ilp_fallback"] = f"{source} solution peaks at {st.peak(dec)} bytes over the cap (numerics)"
        return []
    return [(dec, st.cost(dec), source)]


_FOUND = (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)


def _trivial_plan(st: Structure, budget_bytes: int | None, t0: float) -> Plan | None:
    """The store-all plan when there is no cap or it meets the cap (optimal: it adds nothing)."""
    if budget_bytes is None:
        budget, why = None, "no cap"
    else:
        budget, why = int(budget_bytes), "store-all fits"
        if st.n and st.peak(st.store_all()) > budget:
            return None
    return make_plan(st, st.store_all(), "ilp", budget, status="optimal", bound=0.0, gap=0.0,
                     solve_time_s=time.perf_counter() - t0, info={"trivial": why})


def _raise_infeasible(st: Structure, budget: int, time_limit: float, backend: str, why: str):
    """Raise ``InfeasibleBudgetError`` for a cap under the lower bound (proven: ``proven`` is
    True), naming the smallest peak that the min-peak search finds (``_min_peak``)."""
    search = _min_peak(st, time_limit, backend)
    err = InfeasibleBudgetError(budget, search.peak, _min_detail(search.proven, why))
    err.proven = True
    raise err


def _greedy_plan(st: Structure, budget: int, deadline: float) -> tuple[dict | None, float]:
    """The greedy plan (warm start and fallback) made by ``deadline``, and its cost; (None, inf)
    when it misses the cap by then."""
    gdec, gpeak, _ = run_greedy(st, budget, deadline)
    plan = st.normalize(gdec) if gpeak <= budget else None
    if plan is not None and (st.peak(plan) > budget or st.violations(plan)):
        plan = None  # (cannot happen: greedy's windows hold for every subset of copies)
    return plan, (st.cost(plan) if plan is not None else math.inf)


def _model_info(st: Structure, rows: Rows, model: Model, backend: str, build_s: float) -> dict:
    """The sizes of the model that ``Plan.info`` reports."""
    return {
        "backend": backend,
        "num_vars": model.num_vars,
        "num_constraints": model.num_cons,
        "memory_rows": model.num_rows,
        "constraint_slots_kept": len(rows.reps),
        "segments": rows.segments,
        "slots_total": rows.total_slots,
        "nonzeros_memory_rows": model.nnz,
        "num_binaries": model.num_binaries,
        "kept_starts": st.k,
        "offload_candidates": st.offload_candidates,
        "build_s": round(build_s, 4),
    }


def _min_peak_plan(st: Structure, budget: int, time_limit: float, backend: str, status, info: dict,
                   exact_model: bool):
    """When no solve and not greedy gave a plan: the min-peak plan if it meets the cap (the ILP
    ran out of time, or erred, or the cap is the floor of a plan its rows cannot hold), else
    ``InfeasibleBudgetError``, proven when the exact (untied) model was infeasible or the smallest
    peak is proven minimal. The search has a ``time_limit`` of its own, not what the models left
    of theirs: at a cap that ``min_peak`` gave, it must find that floor again however long the
    models took (``info["min_peak_timed_out"]``: its safety cap, not its work budget, stopped it)."""
    search = _min_peak(st, time_limit, backend)
    mp, mdec, proven = search.peak, search.decisions, search.proven
    if search.timed_out:
        info["min_peak_timed_out"] = True
    if mp > budget:
        proven_over = exact_model and status == pulp.LpSolutionInfeasible
        err = InfeasibleBudgetError(budget, mp, _min_detail(proven, "", proven_over or proven))
        err.proven = proven_over or proven
        raise err
    info["ilp_fallback"] = f"ILP found no plan (sol_status {status}); the min-peak plan is used"
    return mdec, st.cost(mdec), "min_peak"


def _optimality(status: int, bound, mgap, best_cost: float, source: str, backend: str, gap: float,
                tscale: float) -> tuple[str, float | None, float | None]:
    """(status "optimal" or "feasible", bound in seconds, relative gap) of the chosen plan."""
    if status not in _FOUND or (bound is not None and not math.isfinite(bound)):
        bound = None
    bnd = None if bound is None else min(bound / tscale, best_cost)
    proven_opt = status == pulp.LpSolutionOptimal and mgap is not None and mgap <= 1e-6
    if backend == "cbc" and status == pulp.LpSolutionOptimal and gap <= 0:
        proven_opt = True
    if best_cost <= 0:  # no plan adds less than nothing
        proven_opt, bnd = True, 0.0
    if source == "greedy" and bnd is not None and best_cost - bnd <= 1e-9 * max(1.0, best_cost):
        proven_opt = True
    rgap = None
    if bnd is not None:
        rgap = 0.0 if best_cost <= 0 else max(0.0, (best_cost - bnd) / best_cost)
    elif proven_opt:
        rgap = 0.0
    status_s = "optimal" if proven_opt or (rgap is not None and rgap <= 1e-9) else "feasible"
    return status_s, bnd, rgap


def _min_detail(proven: bool, extra: str, infeasible_proven: bool = True) -> str:
    parts = [extra] if extra else []
    if not proven:
        parts.append("not proven minimal within the time limit")
    if not infeasible_proven:
        parts.append("infeasibility NOT proven: greedy, the ILP and the min-peak search found no "
                     "plan under the cap within the time limit; a longer time_limit may find one")
    return "; ".join(parts)
