"""The exact planner: a PuLP MIP that minimises added step time under a cap on the *peak*.

Variables (per candidate ``a``, see ``_core.Structure``):

* case A (``a`` has backward uses, so it is always needed): binaries ``rec_a`` (recomputable and
  useful) and ``off_a`` (offloadable, host_bandwidth > 0); STORE is ``1 - rec_a - off_a``;
* case B (needed only when a consumer is recomputed): binaries ``keep_a``, ``rec_a``, ``off_a``
  with ``keep + rec + off = need_a <= 1`` and ``need_a >= rec_c`` for each consumer ``c``;
* last-need extensions: for each distinct recompute slot ``b_j`` of ``a``'s recomputable consumers
  beyond its last direct use, a continuous ``z_aj >= rec_c`` for the consumers with
  ``recompute_slot(c) == b_j``, chained ``z_aj >= z_a(j+1)``: ``a`` is live on ``(b_{j-1}, b_j]``
  exactly when ``z_aj`` is 1 (minimising never sets it higher than needed, and a plan's real
  memory is never above what the rows count).

Conflicts (``Problem.conflicts``): for an input ``i`` that a RECOMPUTE consumer ``c`` reads before
``recompute_slot(i)``, ``rec_c <= keep_i`` (case A: ``rec_c + rec_i + off_i <= 1``). The memory
forms need nothing else: a STORE input covers ``lfu+1..D >= recompute_slot(c)`` already, so such
a consumer never extends its last need.

Memory rows: on each slot range where every candidate's contribution is one fixed linear form,
only the slot with the largest ``fixed_bytes`` can peak; then rows that another row dominates
for every plan (``row_i(plan) <= row_j(plan)`` via a per-activation bound over its possible
states) are dropped. The rest become ``fixed + sum(form) <= budget``.

The answer is normalised to the needed set, its peak and time recomputed exactly, and compared
with the greedy plan (used as warm start and fallback): the better plan under the cap wins.
"""

from __future__ import annotations

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

from ._core import Structure, make_plan
from .greedy import run_greedy

try:  # pragma: no cover - import guard
    import highspy  # noqa: F401

    HAVE_HIGHS = True
except Exception:  # pragma: no cover
    HAVE_HIGHS = False

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
        self.reps = self._prune(reps) if prune else reps

    # ---- dominance ----------------------------------------------------------------------
    def _prune(self, reps: list[int]) -> list[int]:
        st = self.st
        cs = st.cands
        pts = []
        for c in cs:
            for b in c.bps:
                pts.append((b, c.idx))
        pts.sort()
        bp_slot = [p for p, _ in pts]
        bp_act = [k for _, k in pts]
        fixed = st.fixed

        def g(i: int, j: int):
            """(bound of row_i - row_j over plans, bound of row_j - row_i); None if too far."""
            lo, hi = (i, j) if i < j else (j, i)
            a = bisect_right(bp_slot, lo)
            b = bisect_right(bp_slot, hi)
            if b - a > _DOMINANCE_SPAN:
                return None
            gij = int(fixed[i]) - int(fixed[j])
            gji = -gij
            seen = set()
            for k in bp_act[a:b]:
                if k in seen:
                    continue
                seen.add(k)
                c = cs[k]
                mi = st.mask_at(c, i)
                mj = st.mask_at(c, j)
                gij += c.bytes * _gmax(mi, mj, c.full)
                gji += c.bytes * _gmax(mj, mi, c.full)
            return gij, gji

        def sweep(rows: list[int]) -> list[int]:
            kept: list[int] = []
            for r in rows:
                dominated = False
                while kept:
                    d = g(kept[-1], r)
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

        rows = reps
        for _ in range(4):
            before = len(rows)
            rows = sweep(rows)
            rows = sweep(rows[::-1])[::-1]
            if len(rows) == before:
                break
        return rows

    # ---- linear forms ----------------------------------------------------------------------
    def forms(self):
        """(slot, const bytes, {var: coef bytes}) for every kept row, in slot order."""
        reps = self.reps
        out = []
        cur: dict = {}
        ri = 0
        bl = self.bounds
        ev = self.ev
        for bi, s in enumerate(bl):
            for v, d in ev.get(s, ()):
                x = cur.get(v, 0) + d
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
    """The PuLP problem for a cap (``budget`` in bytes) or for the smallest peak (``budget=None``)."""

    def __init__(self, st: Structure, rows: Rows, budget: int | None) -> None:
        t0 = time.perf_counter()
        self.st = st
        self.rows = rows
        cs = st.cands
        maxb = max([c.bytes for c in cs] + [1])
        self.unit = float(2 ** max(0, math.floor(math.log2(max(1.0, maxb / 1e4)))))
        times = [c.time for c in cs if c.rec_ok] + [c.exposed for c in cs if c.off_ok]
        tmax = max([t for t in times if t > 0] + [0.0])
        self.tscale = 1.0 / tmax if tmax > 0 else 1.0
        self.prob = prob = pulp.LpProblem("remat", pulp.LpMinimize)
        V: dict = {}
        var = _var_factory(prob)
        for c in cs:
            k = c.idx
            if c.rec_ok:
                V[("rec", k)] = var(f"r{k}", 0, 1, pulp.LpBinary)
            if c.off_ok:
                V[("off", k)] = var(f"o{k}", 0, 1, pulp.LpBinary)
            if c.D < 0 and c.ext:
                V[("keep", k)] = var(f"k{k}", 0, 1, pulp.LpBinary)
            first = 0 if c.D >= 0 else 1
            for j in range(first, len(c.ext)):
                V[("z", k, j)] = var(f"z{k}_{j}", 0, 1, pulp.LpContinuous)
        self.V = V
        ncons = 0
        # decision structure
        for c in cs:
            k = c.idx
            r, o = V.get(("rec", k)), V.get(("off", k))
            if c.D >= 0:
                if r is not None and o is not None:
                    prob += r + o <= 1, f"one{k}"
                    ncons += 1
                first = 0
            else:
                if not c.ext:
                    continue
                need = pulp.LpAffineExpression([(x, 1) for x in (V[("keep", k)], r, o) if x is not None])
                prob += need <= 1, f"one{k}"
                ncons += 1
                for x in c.rcons:
                    prob += need - V[("rec", x)] >= 0, f"need{k}_{x}"
                    ncons += 1
                first = 1
            for j in range(first, len(c.ext)):
                z = V[("z", k, j)]
                if j + 1 < len(c.ext):
                    prob += z - V[("z", k, j + 1)] >= 0, f"zz{k}_{j}"
                    ncons += 1
                for x in c.rcons:
                    if cs[x].rs == c.ext[j]:
                        prob += z - V[("rec", x)] >= 0, f"zr{k}_{x}"
                        ncons += 1
        # conflicts: a RECOMPUTE consumer recomputed before its input's recompute slot needs the
        # input STORE (rec_c <= keep_i; in case A keep_i = 1 - rec_i - off_i)
        for i, x in st.conflicts:
            rc = V[("rec", x)]
            if ("keep", i) in V:
                prob += rc - V[("keep", i)] <= 0, f"cf{i}_{x}"
            else:
                others = [v for v in (V.get(("rec", i)), V.get(("off", i))) if v is not None]
                prob += pulp.lpSum([rc] + others) <= 1, f"cf{i}_{x}"
            ncons += 1
        # objective
        obj = []
        for c in cs:
            if c.rec_ok and c.time:
                obj.append((V[("rec", c.idx)], c.time * self.tscale))
            if c.off_ok and c.exposed:
                obj.append((V[("off", c.idx)], c.exposed * self.tscale))
        self.M = None
        u = self.unit
        if budget is None:
            self.M = var("peak", 0, None, pulp.LpContinuous)
            prob += pulp.LpAffineExpression([(self.M, 1.0)])
        else:
            prob += pulp.LpAffineExpression(obj)
        # memory rows
        self.infeasible_row = None
        forms = rows.forms()
        self.num_rows = 0
        self.nnz = 0
        for t, const, terms in forms:
            expr = [(V[v], cf / u) for v, cf in terms.items()]
            if budget is None:
                expr.append((self.M, -1.0))
                rhs = -const / u
            else:
                rhs = (budget - const) / u
                if not terms:
                    if const > budget:
                        self.infeasible_row = t
                    continue
            prob += pulp.LpConstraint(pulp.LpAffineExpression(expr), pulp.LpConstraintLE, f"m{t}", rhs)
            self.num_rows += 1
            self.nnz += len(expr)
        self.num_cons = ncons + self.num_rows
        self.build_s = time.perf_counter() - t0

    def warm(self, dec: dict[str, Decision]) -> None:
        """Initial values from normalized decisions."""
        cs = self.st.cands
        V = self.V
        for v in V.values():
            v.setInitialValue(0)
        for name, d in dec.items():
            c = cs[self.st.index[name]]
            k = c.idx
            if d is Decision.RECOMPUTE and ("rec", k) in V:
                V[("rec", k)].setInitialValue(1)
            elif d is Decision.OFFLOAD and ("off", k) in V:
                V[("off", k)].setInitialValue(1)
            elif d is Decision.STORE and ("keep", k) in V:
                V[("keep", k)].setInitialValue(1)
        for c in cs:
            first = 0 if c.D >= 0 else 1
            for j in range(first, len(c.ext)):
                on = any(
                    dec.get(cs[x].name) is Decision.RECOMPUTE and cs[x].rs >= c.ext[j] for x in c.rcons
                )
                V[("z", c.idx, j)].setInitialValue(1 if on else 0)
        if self.M is not None:
            self.M.setInitialValue(self.st.peak(dec) / self.unit)

    def decisions(self) -> dict[str, Decision]:
        out = {}
        V = self.V
        for c in self.st.cands:
            k = c.idx
            r, o, kp = V.get(("rec", k)), V.get(("off", k)), V.get(("keep", k))
            if r is not None and (r.varValue or 0) > 0.5:
                out[c.name] = Decision.RECOMPUTE
            elif o is not None and (o.varValue or 0) > 0.5:
                out[c.name] = Decision.OFFLOAD
            elif c.D >= 0 or (kp is not None and (kp.varValue or 0) > 0.5):
                out[c.name] = Decision.STORE
        return self.st.normalize(out)


def _var_factory(prob: pulp.LpProblem):
    """prob.add_variable where PuLP has it (LpVariable(...) is deprecated there), else LpVariable."""
    if hasattr(prob, "add_variable"):
        return lambda name, lo, hi, cat: prob.add_variable(name, lo, hi, cat=cat)
    return lambda name, lo, hi, cat: pulp.LpVariable(name, lowBound=lo, upBound=hi, cat=cat)


class _HiGHS(pulp.HiGHS if HAVE_HIGHS else object):  # type: ignore[misc]
    """pulp.HiGHS that hands the variables' initial values to HiGHS as a starting solution."""

    def __init__(self, *args, warm: bool = False, **kw) -> None:
        super().__init__(*args, **kw)
        self.warm = warm

    def callSolver(self, lp):  # noqa: N802 - pulp's name
        if self.warm:
            vs = lp.variables()
            idx = np.array([v.index for v in vs], dtype=np.int32)
            val = np.array([float(v.varValue or 0.0) for v in vs], dtype=np.float64)
            lp.solverModel.setSolution(len(idx), idx, val)
        lp.solverModel.run()


def _solve(model: Model, backend: str, time_limit: float, gap: float, warm: bool, threads: int | None):
    """Run the solver; returns (sol_status, bound, gap, seconds)."""
    t0 = time.perf_counter()
    limit = max(0.1, float(time_limit))
    if backend == "highs":
        kw = {}
        if gap <= 0:
            kw["mip_abs_gap"] = 1e-9
        solver = _HiGHS(msg=False, timeLimit=limit, gapRel=gap, threads=threads, warm=warm, **kw)
    else:
        with warnings.catch_warnings():  # PuLP 3.x flags PULP_CBC_CMD as deprecated for 4.0
            warnings.simplefilter("ignore", DeprecationWarning)
            solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=limit, gapRel=gap, warmStart=warm,
                                       threads=threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model.prob.solve(solver)
    secs = time.perf_counter() - t0
    bound = mgap = None
    if backend == "highs":
        try:
            info = model.prob.solverModel.getInfo()
            bound = float(info.mip_dual_bound)
            mgap = float(info.mip_gap)
        except Exception:  # pragma: no cover
            pass
    return model.prob.sol_status, bound, mgap, secs


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
             _structure: Structure | None = None) -> int:
    """The smallest peak that any plan reaches (exact when the MIP is proven optimal in time)."""
    return _min_peak(_structure or Structure(problem), time_limit, _backend(backend))[0]


def _min_peak(st: Structure, time_limit: float, backend: str):
    """(peak, decisions reaching it, proven)."""
    if st.n == 0:
        return 0, {}, True
    lb = st.lower_bound_peak()
    dec, peak, _ = run_greedy(st, lb)
    dec = st.normalize(dec)
    peak = st.peak(dec)
    if peak <= lb:
        return peak, dec, True
    rows = Rows(st)
    model = Model(st, rows, None)
    model.M.lowBound = lb / model.unit
    model.M.upBound = peak / model.unit
    warm = backend == "cbc"  # see ilp(): HiGHS MIP starts are not safe
    if warm:
        model.warm(dec)
    status, bound, mgap, _ = _solve(model, backend, time_limit, 0.0, warm, None)
    proven = status == pulp.LpSolutionOptimal
    if status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        d2 = model.decisions()
        p2 = st.peak(d2)
        if p2 < peak and not st.violations(d2):
            dec, peak = d2, p2
    return peak, dec, proven


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
    **kw,
) -> Plan:
    """Minimum added time under a peak of ``budget_bytes`` (``gap``: relative MIP gap to stop at)."""
    t0 = time.perf_counter()
    backend = _backend(backend)
    st = kw.get("_structure") or Structure(problem)
    if budget_bytes is None:
        return make_plan(st, st.store_all(), "ilp", None, status="optimal", bound=0.0, gap=0.0,
                         solve_time_s=time.perf_counter() - t0, info={"trivial": "no cap"})
    budget = int(budget_bytes)
    store = st.store_all()
    if st.n == 0 or st.peak(store) <= budget:
        return make_plan(st, store, "ilp", budget, status="optimal", bound=0.0, gap=0.0,
                         solve_time_s=time.perf_counter() - t0, info={"trivial": "store-all fits"})
    max_fixed = int(st.fixed.max())
    lb = st.lower_bound_peak()
    if budget < lb:  # cheap: fixed bytes plus what every plan keeps live already exceed the cap
        mp, _, proven = _min_peak(st, max(1.0, time_limit - (time.perf_counter() - t0)), backend)
        why = f"below the largest fixed bytes of a slot ({max_fixed})" if budget < max_fixed else ""
        raise InfeasibleBudgetError(budget, mp, _min_detail(proven, why))
    # greedy: warm start and fallback
    gdec, gpeak, _ = run_greedy(st, budget)
    greedy_plan = st.normalize(gdec) if gpeak <= budget else None
    greedy_cost = st.cost(greedy_plan) if greedy_plan is not None else math.inf
    tg = time.perf_counter()
    rows = Rows(st, prune=prune)
    model = Model(st, rows, budget)
    info = {
        "backend": backend,
        "num_vars": len(model.V),
        "num_constraints": model.num_cons,
        "memory_rows": model.num_rows,
        "constraint_slots_kept": len(rows.reps),
        "segments": rows.segments,
        "slots_total": rows.total_slots,
        "nonzeros_memory_rows": model.nnz,
        "greedy_objective": None if greedy_plan is None else greedy_cost,
        "build_s": round(time.perf_counter() - tg, 4),
    }
    if model.infeasible_row is not None:  # cannot happen after the lower-bound test above
        if greedy_plan is None:
            mp, _, proven = _min_peak(st, max(1.0, time_limit - (time.perf_counter() - t0)), backend)
            raise InfeasibleBudgetError(budget, mp, _min_detail(proven, ""))
        info["ilp_fallback"] = f"a constant row (slot {model.infeasible_row}) exceeds the cap; greedy used"
        return make_plan(st, greedy_plan, "ilp", budget, status="heuristic",
                         solve_time_s=time.perf_counter() - t0, info=info)
    # HiGHS 1.16 can mis-cost a MIP start after presolve ("feasible in the reduced space" with a
    # lower objective) and then stop at it as "optimal": the start is only given to CBC unless
    # warm_start="force". The greedy plan stays the fallback either way.
    warm = greedy_plan is not None and (
        warm_start == "force" or (warm_start and backend == "cbc")
    )
    if warm:
        model.warm(greedy_plan)
    remaining = max(0.5, time_limit - (time.perf_counter() - t0))
    status, bound, mgap, secs = _solve(model, backend, remaining, gap, warm, threads)
    info["ilp_s"] = round(secs, 4)
    info["sol_status"] = int(status)
    tscale = model.tscale
    best, best_cost, source = None, math.inf, None
    if status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        dec = model.decisions()
        peak = st.peak(dec)
        bad = st.violations(dec)
        if bad:  # cannot happen: the conflict rows forbid it
            info["ilp_fallback"] = f"ILP solution breaks the conflict rule at {bad[0]} (bug); greedy used"
        elif peak <= budget:
            best, best_cost, source = dec, st.cost(dec), "ilp"
        else:
            info["ilp_fallback"] = f"ILP solution peaks at {peak} bytes over the cap (numerics); greedy used"
    if greedy_plan is not None and greedy_cost < best_cost - 1e-15 * max(1.0, abs(greedy_cost)):
        best, best_cost, source = greedy_plan, greedy_cost, "greedy"
        if status == pulp.LpSolutionInfeasible:  # the model contradicts a verified plan
            info["ilp_fallback"] = "ILP reported infeasible but the greedy plan meets the cap; greedy used"
            bound = None
    if status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        bound = None
    if bound is not None and not math.isfinite(bound):
        bound = None
    if best is None:
        left = max(1.0, time_limit - (time.perf_counter() - t0))
        mp, mdec, proven = _min_peak(st, left, backend)
        if mp > budget:
            raise InfeasibleBudgetError(budget, mp, _min_detail(proven, ""))
        # a plan exists (the ILP ran out of time, or erred): the min-peak plan meets the cap
        info["ilp_fallback"] = f"ILP found no plan (sol_status {status}); the min-peak plan is used"
        best, best_cost, source = mdec, st.cost(mdec), "min_peak"
    info["source"] = source
    bnd = None if bound is None else bound / tscale
    if bnd is not None:
        bnd = min(bnd, best_cost)
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
    return make_plan(st, best, "ilp", budget, status=status_s, bound=bnd, gap=rgap,
                     solve_time_s=time.perf_counter() - t0, info=info)


def _min_detail(proven: bool, extra: str) -> str:
    parts = []
    if extra:
        parts.append(extra)
    if not proven:
        parts.append("not proven minimal within the time limit")
    return "; ".join(parts)
