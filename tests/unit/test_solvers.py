"""The solvers against brute force and the simulator (the independent checker).

Brute force enumerates every decision of the relevant activations, keeps the needed ones, and
asks ``remat.simulate`` for the peak and the added time; the ILP (at gap 0) must match its
optimum under each cap and its smallest peak, and every plan of every solver must pass ``check``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import random
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from remat.errors import ConfigError, InfeasibleBudgetError
from remat.plan import Decision, Plan
from remat.problem import BACKWARD, FORWARD, Activation, Problem, Slot
from remat.simulate import check, simulate, store_all_peak
from remat.solvers import SOLVERS, get_solver, min_peak, solve
from remat.solvers.ilp import Model, Rows
from remat.solvers._core import Structure

from .test_solver_fuzz import _assert_profiles_are_the_simulators, solver_failures, with_random_kernels
from .synthetic import (
    Graph,
    fuzz_problem,
    all_small_problems,
    chain_problem,
    diamond_problem,
    random_problem,
    residual_problem,
    transformer_problem,
    with_random_handovers,
    with_random_takers,
)

S, R, O = Decision.STORE, Decision.RECOMPUTE, Decision.OFFLOAD


# ---- brute force ---------------------------------------------------------------------------


def brute_force(p: Problem) -> list[tuple[int, float, dict]]:
    """(peak, added time, decisions) of every distinct valid plan, from the simulator alone.

    Enumerates every allowed decision of every activation that the decisions so far need (in
    reverse creation order, so a consumer is decided before its inputs), i.e. every complete plan
    over its needed set, and keeps those that ``simulate`` accepts: the OFFLOAD rule is enforced
    by the simulator (an OFFLOAD needed before its first backward use), not here.
    """
    order = sorted(p.activations, key=lambda a: a.created, reverse=True)
    opts = {}
    for a in order:
        o = [S]
        if a.recomputable:
            o.append(R)
        if a.offloadable and p.host_bandwidth > 0 and a.backward_uses:
            o.append(O)
        opts[a.name] = o
    out = []

    def walk(k: int, needed: frozenset, dec: dict) -> None:
        while k < len(order) and order[k].name not in needed:
            k += 1
        if k == len(order):
            tl = simulate(p, dec)
            if tl.ok:
                out.append((tl.peak_bytes, tl.added_time, dict(dec)))
            else:  # an OFFLOAD needed before its prefetch (the only way a complete plan fails)
                assert all("OFFLOAD" in e or "not live" in e for e in tl.errors), tl.errors
            return
        a = order[k]
        for d in opts[a.name]:
            dec[a.name] = d
            walk(k + 1, needed | set(a.inputs) if d is R else needed, dec)
        del dec[a.name]

    walk(0, frozenset(a.name for a in p.activations if a.backward_uses), {})
    return out


def bf_best(plans, cap):
    times = [t for pk, t, _ in plans if pk <= cap]
    return min(times) if times else None


def n_plans(p: Problem) -> int:
    n = 1
    for name in p.relevant:
        a = p.activation(name)
        n *= 1 + a.recomputable + (a.offloadable and p.host_bandwidth > 0 and bool(a.backward_uses))
    return n


def caps_for(p: Problem, min_pk: int, rng: random.Random, k: int = 3) -> list[int]:
    sp = store_all_peak(p)
    caps = {min_pk, sp, (min_pk + sp) // 2, min_pk + 1}
    caps |= {rng.randint(min_pk, sp) for _ in range(k)}
    return sorted(c for c in caps if c <= sp)


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(b))


def assert_valid(p: Problem, plan: Plan, cap: int | None):
    """The plan passes the simulator, decides exactly the needed set and reports its own time."""
    tl = check(p, plan, cap)
    assert set(plan.decisions) == set(tl.needed)
    assert close(plan.objective, tl.added_time)
    assert plan.budget_bytes == cap
    return tl


BF_PROBLEMS = [
    chain_problem(),
    chain_problem(layers=2, host_bandwidth=200.0),
    diamond_problem(),
    diamond_problem(host_bandwidth=100.0),
    residual_problem(blocks=2),
    residual_problem(blocks=1, host_bandwidth=150.0),
    chain_problem(layers=3, save_matmul=True),
    residual_problem(blocks=2, save_residual=True),
]


def _random_small(seed: int, max_plans: int = 3000) -> Problem:
    rng = random.Random(seed)
    while True:
        p = random_problem(rng, n_acts=rng.randint(2, 8))
        if 4 <= n_plans(p) <= max_plans:
            return p


RANDOM_BF = [_random_small(s) for s in range(24)]


# ---- registry ------------------------------------------------------------------------------


def test_registry_and_errors():
    assert {"ilp", "greedy", "store_all", "recompute_all"} <= set(SOLVERS)
    for name in SOLVERS:
        assert get_solver(name) is SOLVERS[name]
    with pytest.raises(ConfigError, match="ilp.*greedy.*store_all.*recompute_all"):
        get_solver("nope")
    with pytest.raises(ConfigError, match="backend"):
        solve(diamond_problem(), 500, backend="gurobi")


@pytest.mark.parametrize("name", ["ilp", "greedy", "store_all", "recompute_all"])
def test_every_solver_signature_and_no_cap(name):
    p = diamond_problem()
    plan = get_solver(name)(p, None, time_limit=5.0, gap=0.01)
    tl = assert_valid(p, plan, None)
    assert plan.solver == name
    if name in ("ilp", "greedy", "store_all"):
        assert plan.objective == 0.0
        assert set(plan.names(S)) == set(plan.decisions)
        assert tl.peak_bytes == store_all_peak(p)


def test_solvers_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; import remat.solvers, remat.solvers.ilp, remat.solvers.greedy, "
        "remat.solvers.baselines; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")


# ---- brute force: ILP objective and min peak -------------------------------------------------


@pytest.mark.parametrize("p", BF_PROBLEMS + RANDOM_BF[:12], ids=lambda p: f"{p.name}-{len(p.activations)}-{p.host_bandwidth:g}")
def test_ilp_matches_brute_force(p):
    plans = brute_force(p)
    true_min = min(pk for pk, _, _ in plans)
    assert min_peak(p) == true_min
    rng = random.Random(len(plans))
    for cap in caps_for(p, true_min, rng):
        plan = solve(p, cap, gap=0.0)
        assert_valid(p, plan, cap)
        best = bf_best(plans, cap)
        assert close(plan.objective, best), (cap, plan.objective, best, plan.info)
        assert plan.status == "optimal"
        if plan.bound is not None:
            assert plan.bound <= plan.objective + 1e-9


# ---- other runs of the graph per step (Problem.other_runs) -----------------------------------


def test_other_runs_turn_a_cap_that_stores_everything_into_one_that_recomputes():
    once = chain_problem()
    four = dataclasses.replace(once, other_runs=3, run_held_bytes=10)
    cap = (min_peak(four) + store_all_peak(four)) // 2
    assert store_all_peak(once) <= cap < store_all_peak(four)
    for name in ("ilp", "greedy"):
        assert solve(once, cap, solver=name).objective == 0.0
        plan = solve(four, cap, solver=name, gap=0.0)
        tl = assert_valid(four, plan, cap)
        assert plan.names(R) and plan.objective > 0
        assert tl.other_runs_bytes == 3 * (10 + sum(four.activation(n).bytes for n in plan.names(S)))
        assert plan.info["peak_bytes"] == tl.peak_bytes


# without offload: the ILP leaves out OFFLOAD candidates that the link cannot move within a pass
# (``_core.Structure``), which under other runs can lower the floor (brute force 117 B, ILP 121 B)
RUNS_BF = [chain_problem(), diamond_problem(), residual_problem(blocks=2)]
RUNS_BF += [p for p in RANDOM_BF if not p.host_bandwidth][:2]


@pytest.mark.parametrize("p", RUNS_BF, ids=lambda p: f"{p.name}-{len(p.activations)}")
def test_ilp_matches_brute_force_under_other_runs(p):
    for runs, held in ((1, 0), (3, 7)):
        q = dataclasses.replace(p, other_runs=runs, run_held_bytes=held)
        plans = brute_force(q)
        true_min = min(pk for pk, _, _ in plans)
        assert min_peak(q) == true_min
        for cap in caps_for(q, true_min, random.Random(runs)):
            plan = solve(q, cap, gap=0.0)
            assert_valid(q, plan, cap)
            assert close(plan.objective, bf_best(plans, cap)), (runs, cap, plan.objective, plan.info)
            greedy_plan = _greedy_or_none(q, cap)
            if greedy_plan is not None:
                assert_valid(q, greedy_plan, cap)


def _greedy_or_none(p: Problem, cap: int) -> Plan | None:
    try:
        return solve(p, cap, solver="greedy")
    except InfeasibleBudgetError:
        return None


@pytest.mark.parametrize("p", RANDOM_BF[12:], ids=lambda p: f"random-{len(p.activations)}-{p.host_bandwidth:g}")
def test_ilp_matches_brute_force_random(p):
    plans = brute_force(p)
    true_min = min(pk for pk, _, _ in plans)
    rng = random.Random(7)
    for cap in caps_for(p, true_min, rng):
        plan = solve(p, cap, gap=0.0)
        assert_valid(p, plan, cap)
        assert close(plan.objective, bf_best(plans, cap))


@pytest.mark.parametrize("p", BF_PROBLEMS[:4] + RANDOM_BF[:8], ids=lambda p: f"{p.name}-{len(p.activations)}-{p.host_bandwidth:g}")
def test_infeasible_cap_reports_the_true_min_peak(p):
    plans = brute_force(p)
    true_min = min(pk for pk, _, _ in plans)
    with pytest.raises(InfeasibleBudgetError) as ei:
        solve(p, true_min - 1)
    assert ei.value.min_peak_bytes == true_min
    assert ei.value.budget_bytes == true_min - 1
    assert str(true_min) in str(ei.value)
    plan = solve(p, true_min)  # a plan exists at exactly that cap
    assert_valid(p, plan, true_min)
    assert close(plan.objective, bf_best(plans, true_min))


def test_cap_below_fixed_bytes():
    p = residual_problem()
    cap = max(s.fixed_bytes for s in p.slots) - 1
    with pytest.raises(InfeasibleBudgetError) as ei:
        solve(p, cap)
    assert ei.value.min_peak_bytes == min_peak(p) > cap
    with pytest.raises(InfeasibleBudgetError):
        solve(p, cap, solver="greedy")


def test_cbc_backend_matches_highs():
    for p in (diamond_problem(), chain_problem(layers=2, host_bandwidth=200.0)):
        plans = brute_force(p)
        mp = min(pk for pk, _, _ in plans)
        assert min_peak(p, backend="cbc") == mp
        for cap in caps_for(p, mp, random.Random(1), k=1):
            a = solve(p, cap, gap=0.0, backend="cbc")
            b = solve(p, cap, gap=0.0, backend="highs")
            assert_valid(p, a, cap)
            assert a.info.get("backend", "cbc") == "cbc"
            assert close(a.objective, b.objective) and close(a.objective, bf_best(plans, cap))


def test_highs_mip_start_regression():
    """HiGHS 1.16 stopped at a wrongly costed MIP start here; the ILP must still find the optimum
    (0.898 with local recompute slots; it was 1.098 when a1's slot was pulled forward to 11)."""
    fw = [162, 174, 139, 154, 142, 171, 191, 183, 188, 199, 95]
    bw = [32, 16, 9, 1, 0]
    ft = [1.78, 1.493, 0.926, 0.725, 0.667, 1.638, 1.672, 0.11, 0.702, 1.212, 0.991]
    bt = [1.768, 1.449, 0.761, 1.982, 1.697]
    slots = [Slot(f"f{i}", FORWARD, t, b) for i, (t, b) in enumerate(zip(ft, fw))]
    slots += [Slot(f"b{i}", BACKWARD, t, b) for i, (t, b) in enumerate(zip(bt, bw))]
    A = Activation
    acts = [
        A("a0", "op0", 63, 4.118, 0, 9, (11, 13), ()),
        A("a1", "op1", 28, 0.098, 0, 8, (12, 14), ()),
        A("a2", "op2", 41, 4.977, 0, 6, (13, 14), (), offloadable=False),
        A("a3", "op3", 4, 3.848, 1, 9, (13, 15), ("a2", "a1"), offloadable=False),
        A("a4", "op4", 32, 3.959, 6, 6, (11,), ("a1", "a0")),
        A("a5", "op5", 8, 1.509, 7, 10, (14,), ()),
        A("a6", "op6", 4, 4.793, 7, 9, (12, 14), ("a1",), offloadable=False),
        A("a7", "op7", 57, 0.298, 7, 9, (14,), ("a1",), recomputable=False),
        A("a8", "op8", 53, 2.713, 9, 10, (), ("a3", "a5"), recomputable=False),
    ]
    p = Problem(tuple(slots), tuple(acts), host_bandwidth=40.0)
    plan = solve(p, 265, gap=0.0)
    assert_valid(p, plan, 265)
    assert close(plan.objective, bf_best(brute_force(p), 265))
    assert close(plan.objective, 0.898)


# ---- every solver on the synthetic problems ---------------------------------------------------


@pytest.mark.parametrize("p", all_small_problems(), ids=lambda p: f"{p.name}-{p.host_bandwidth:g}")
def test_all_solvers_valid_and_ilp_beats_greedy(p):
    sp = store_all_peak(p)
    mp = min_peak(p)
    assert mp <= sp
    for frac in (1.0, 0.9, 0.75, 0.6, 0.45):
        cap = max(mp, int(sp * frac))
        ilp = solve(p, cap)
        assert_valid(p, ilp, cap)
        assert ilp.status in ("optimal", "feasible")
        assert ilp.objective >= 0 and ilp.solve_time_s >= 0
        try:
            gr = solve(p, cap, solver="greedy")
        except InfeasibleBudgetError as e:
            assert e.min_peak_bytes >= mp
        else:
            assert_valid(p, gr, cap)
            assert gr.status == "heuristic"
            assert ilp.objective <= gr.objective + 1e-12
        for name in ("store_all", "recompute_all"):
            b = solve(p, cap, solver=name)
            tl = check(p, b)  # valid, whatever its peak
            assert set(b.decisions) == set(tl.needed) and close(b.objective, tl.added_time)
            assert b.info["over_budget"] == (tl.peak_bytes > cap)
            assert b.budget_bytes == cap


def test_model_row_families():
    # one method per family of rows; each family only for the candidates it concerns
    p = chain_problem(layers=2, host_bandwidth=120.0)
    st = Structure(p)
    model = Model(st, Rows(st), store_all_peak(p) - 1)
    names = [c.name for c in model.prob.constraints()]
    assert model.num_cons == len(names)
    family = collections.Counter(re.match(r"[a-zA-Z]+", n).group() for n in names)
    assert set(family) == {"one", "need", "needub", "mono", "sub", "lb", "y", "U", "W", "eout", "ein", "m"}
    case_b = {c.idx for c in st.cands if c.d < 0 and c.rcons and st.reach[c.idx]}
    assert case_b and {int(re.match(r"needub(\d+)", n).group(1)) for n in names if n.startswith("needub")} == case_b
    rec = {c.idx for c in st.cands if c.rec_ok}
    assert {int(re.match(r"mono(\d+)_", n).group(1)) for n in names if n.startswith("mono")} <= rec
    segs = sum(len(c.segs) for c in st.cands)
    assert segs and sum(1 for key in model.V if key[0] == "y") == segs
    assert family["m"] == model.num_rows == len(Rows(st).reps)
    peak_model = Model(st, Rows(st), None)  # the smallest-peak model: every memory row holds its peak
    rows = [c for c in peak_model.prob.constraints() if re.fullmatch(r"m\d+", c.name)]
    assert rows and all(dict(c.items()).get(peak_model.M) == -1.0 for c in rows)


def test_ilp_info_fields():
    p = transformer_problem(layers=2, seq=32, hidden=32, heads=2)
    cap = max(min_peak(p), int(store_all_peak(p) * 0.6))
    plan = solve(p, cap)
    assert_valid(p, plan, cap)
    for key in ("backend", "num_vars", "num_constraints", "constraint_slots_kept", "slots_total", "source"):
        assert key in plan.info
    assert plan.info["constraint_slots_kept"] <= plan.info["segments"] <= plan.info["slots_total"]
    assert plan.gap is None or 0 <= plan.gap <= 0.01 + 1e-9
    assert plan.bound is None or plan.bound <= plan.objective + 1e-12


def _recompute_all_expected(p: Problem, plan: Plan):
    for n, d in plan.decisions.items():
        a = p.activation(n)
        assert d is (R if a.recomputable else S), n


def test_recompute_all_pulls_inputs_in_as_store():
    g = Graph(base=10)
    x = g.op("x", 50, 1.0, recomputable=False)  # saved by nobody: needed only to recompute y
    y = g.op("y", 40, 1.0, inputs=(x,), save_out=True, bwd_slots=2)
    g.op("z", 30, 1.0, inputs=(y,), saved=(y,))
    p = g.problem()
    plan = solve(p, None, solver="recompute_all")
    tl = assert_valid(p, plan, None)
    _recompute_all_expected(p, plan)
    assert plan.decisions == {"x": S, "y": R}
    assert tl.needed == ("x", "y")


@pytest.mark.parametrize("p", [chain_problem(), chain_problem(save_matmul=True), residual_problem(),
                               transformer_problem(layers=1, seq=16, hidden=16, heads=2, decompose=True)],
                         ids=lambda p: p.name)
def test_recompute_all_is_valid(p):
    plan = solve(p, None, solver="recompute_all")
    tl = assert_valid(p, plan, None)
    _recompute_all_expected(p, plan)
    if p.name == "chain":  # sq3 is recomputed at its use; relu3 just in time for it
        assert plan.decisions["sq3"] is R and plan.decisions["relu3"] is R
        assert tl.starts["relu3"] == tl.starts["sq3"] < p.first_uses["relu3"]
    if p.name.startswith("transformer"):  # the GELU's inner terms are pulled in and recomputed
        pulled = [n for n in tl.needed if not p.activation(n).backward_uses]
        assert "l0_add1" in pulled and plan.decisions["l0_add1"] is R


def test_row_pruning_keeps_the_optimum():
    for p in (transformer_problem(layers=2, seq=64, hidden=32, heads=2, decompose=True),
              transformer_problem(layers=2, seq=64, hidden=32, heads=2, host_bandwidth=5e10)):
        sp, mp = store_all_peak(p), min_peak(p)
        for frac in (0.8, 0.5):
            cap = max(mp, int(sp * frac))
            a = solve(p, cap, gap=0.0)
            b = solve(p, cap, gap=0.0, prune=False)
            assert_valid(p, a, cap)
            assert close(a.objective, b.objective)
            assert a.info["constraint_slots_kept"] <= b.info["constraint_slots_kept"]


# ---- values taken by their recomputed readers (Activation.taken_by) ------------------------------


def _taken_chain(taken_by: str = "y") -> Problem:
    """x (f0) read only by y (f1), which backward reads at b2 (slot 4); recomputing both frees
    b0..b1 and, with y written into x's buffer, adds only y's 8 B at b2."""
    sl = tuple(Slot(n, FORWARD if i < 2 else BACKWARD, 1.0, b)
               for i, (n, b) in enumerate(zip(["f0", "f1", "b0", "b1", "b2"], [10, 20, 100, 100, 90])))
    acts = (Activation("x", "addmm", 8, 1.0, 0, 1, taken_by=taken_by),
            Activation("y", "tanh", 8, 1.0, 1, 1, (4,), ("x",)))
    return Problem(sl, acts, name="taken")


def test_ilp_and_greedy_plan_a_value_taken_by_its_recomputed_reader():
    p, plain = _taken_chain(), _taken_chain("")
    assert (min_peak(plain), min_peak(p)) == (106, 100)
    for name in ("ilp", "greedy"):
        plan = solve(p, 100, solver=name, gap=0.0)
        assert_valid(p, plan, 100)
        assert plan.decisions == {"x": R, "y": R}
    with pytest.raises(InfeasibleBudgetError):
        solve(plain, 100)


def _with_takers(count: int) -> list[Problem]:
    """``count`` small random problems with takers, each with a plan whose peak they lower."""
    rng, out = random.Random(8), []
    while len(out) < count:
        p = with_random_takers(random_problem(rng, n_acts=rng.randint(3, 8)), rng, share=1.0)
        if not any(a.taken_by for a in p.activations) or not 4 <= n_plans(p) <= 3000:
            continue
        untaken = dataclasses.replace(p, activations=tuple(dataclasses.replace(a, taken_by="") for a in p.activations))
        if any(simulate(p, dec).peak_bytes < simulate(untaken, dec).peak_bytes for _, _, dec in brute_force(p)):
            out.append(p)
    return out


@pytest.mark.parametrize("p", _with_takers(8), ids=lambda p: f"taken-{len(p.activations)}")
def test_ilp_matches_brute_force_with_takers(p):
    _assert_ilp_is_brute_force(p, random.Random(3))


def _assert_ilp_is_brute_force(p, rng, unpruned_too: bool = False):
    """The ILP's floor and its optimum at random caps equal brute force's (and without row pruning)."""
    plans = brute_force(p)
    true_min = min(pk for pk, _, _ in plans)
    assert min_peak(p) == true_min
    for cap in caps_for(p, true_min, rng):
        plan = solve(p, cap, gap=0.0)
        assert_valid(p, plan, cap)
        assert close(plan.objective, bf_best(plans, cap)), (cap, plan.objective, plan.info)
        if unpruned_too:
            assert close(solve(p, cap, gap=0.0, prune=False).objective, plan.objective)


def test_row_pruning_keeps_the_optimum_with_takers():
    p = with_random_takers(transformer_problem(layers=1, seq=32, hidden=32, heads=2, decompose=True),
                           random.Random(0), share=0.5)
    assert any(a.taken_by for a in p.activations)
    assert len(Rows(Structure(p)).reps) < len(Rows(Structure(p), prune=False).reps)
    sp, mp = store_all_peak(p), min_peak(p)
    for frac in (0.8, 0.5):
        cap = max(mp, int(sp * frac))
        a, b = solve(p, cap, gap=0.0), solve(p, cap, gap=0.0, prune=False)
        assert_valid(p, a, cap)
        assert close(a.objective, b.objective)


# ---- handovers that a recomputed consumer breaks (remat.simulate) --------------------------------


def test_ilp_and_greedy_keep_a_handover_that_recomputing_a_consumer_would_break():
    """Recomputing ``c`` would free b1 if ``a``'s buffer were still handed over there; it is not
    (``c`` reads ``a`` again), so storing both is the floor and a lower cap is infeasible."""
    from .test_simulate import handover_problem

    p = handover_problem()
    st = Structure(p)
    for plan in ({"a": S, "c": S}, {"a": S, "c": R}):
        assert tuple(int(x) for x in st.profile(plan)) == simulate(p, plan).device_bytes
    assert min_peak(p) == 2100
    for name in ("ilp", "greedy"):
        assert solve(p, 2100, solver=name, gap=0.0).decisions == {"a": S, "c": S}
        with pytest.raises(InfeasibleBudgetError):
            solve(p, 2050, solver=name)


def test_solvers_count_a_handover_through_a_consumer_recomputed_in_the_taking_kernel():
    """``v`` handed over through ``c``, recomputed inside the taking kernel (``remat.simulate``):
    the solvers' exact evaluation is the simulator's on every plan, and both solvers' plans are
    valid under the floor; the ILP counts ``v`` whole (at or above), so its floor may be higher."""
    from .test_simulate import through_problem

    for d_use in (3, 4):
        p = through_problem(d_use)
        st = Structure(p)
        for c in (S, R):
            for d in (S, R):
                plan = st.normalize({"v": S, "c": c, "d": d})
                assert tuple(int(x) for x in st.profile(plan)) == simulate(p, plan).device_bytes
        floor = min_peak(p)
        for name in ("ilp", "greedy"):
            plan = solve(p, floor + 1000, solver=name, gap=0.0)
            assert simulate(p, plan).ok and simulate(p, plan).peak_bytes <= floor + 1000


def _unbroken_peak(p: Problem, dec: dict) -> int:
    """The peak of ``dec`` if a recomputed consumer broke no handover (each handed-over value that
    nothing needs after its last backward use ending before its kernel, as before session 9)."""
    tl = simulate(p, dec)
    device = list(tl.device_bytes)
    for name, h in p.metadata["handovers"].items():
        a = p.activation(name)
        if name in tl.last_needs and tl.last_needs[name] == a.backward_uses[-1] and dec[name] is not O:
            for t in range(max(h, a.last_forward_use + 1), a.backward_uses[-1] + 1):
                device[t] -= a.bytes if (dec[name] is S or tl.starts[name] <= t) else 0
    return max(device)


def _with_handovers(count: int) -> list[Problem]:
    """``count`` small random problems with handovers whose floor is higher than it would be if a
    recomputed consumer broke no handover (about one in ten)."""
    rng, out = random.Random(9), []
    while len(out) < count:
        p = with_random_handovers(random_problem(rng, n_acts=rng.randint(3, 8)), rng, share=1.0)
        if not p.metadata["handovers"] or not 4 <= n_plans(p) <= 3000:
            continue
        plans = brute_force(p)
        if min(_unbroken_peak(p, dec) for _, _, dec in plans) < min(pk for pk, _, _ in plans):
            out.append(p)
    return out


@pytest.mark.parametrize("p", _with_handovers(8), ids=lambda p: f"handed-{len(p.activations)}")
def test_ilp_matches_brute_force_with_handovers(p):
    _assert_ilp_is_brute_force(p, random.Random(4), unpruned_too=True)


# ---- just-in-time recompute (what the old conflict rule forbade) --------------------------------


def _jit_problem(bw: float = 0.0) -> Problem:
    """b (read at slot 4) is recomputed from a, which backward first reads at slot 6.

    Store-all peaks at 350. Recomputing both is a plan now: a is recomputed just in time for b,
    at slot 4, and lives until 6 (peak 300 at slot 4); offloading a is no plan together with
    recomputing b (a would be needed at 4, before its prefetch completes). The smallest peak, 250,
    keeps b stored and moves a away."""
    fixed = [100, 200, 100, 150, 100, 150, 100]
    sl = tuple(Slot(f"s{i}", FORWARD if i < 3 else BACKWARD, 1.0, b) for i, b in enumerate(fixed))
    acts = (Activation("a", "op", 100, 1.0, 0, 1, (6,), ()), Activation("b", "op", 100, 1.0, 1, 2, (4,), ("a",)))
    return Problem(sl, acts, host_bandwidth=bw, name="jit")


@pytest.mark.parametrize("bw", [0.0, 100.0])
def test_recompute_input_and_consumer_together(bw):
    p = _jit_problem(bw)
    assert p.earliest_slots == {"a": 4, "b": 4}
    tl = simulate(p, {"a": R, "b": R})
    assert tl.ok and tl.starts == {"a": 4, "b": 4} and tl.peak_bytes == 300
    plans = brute_force(p)
    assert any(d["a"] is R and d["b"] is R for _, _, d in plans)
    assert all(not (d["a"] is O and d["b"] is R) for _, _, d in plans)
    assert min(pk for pk, _, _ in plans) == 250 == min_peak(p)
    with pytest.raises(InfeasibleBudgetError) as ei:
        solve(p, 249)
    assert ei.value.min_peak_bytes == 250
    g = solve(p, 300, solver="greedy")  # (a heuristic: it may stop at 300 here)
    assert_valid(p, g, 300)
    plan = solve(p, 250, gap=0.0)
    assert close(plan.objective, bf_best(plans, 250))
    b = solve(p, None, solver="recompute_all")
    assert_valid(p, b, None)
    assert b.decisions == {"a": R, "b": R}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hst.integers(0, 2**32 - 1), frac=hst.floats(0.0, 1.0))
def test_every_solver_returns_valid_plans(seed, frac):
    rng = random.Random(seed)
    p = random_problem(rng, n_acts=rng.randint(2, 12))
    sp, mp = store_all_peak(p), min_peak(p)
    cap = mp + int(frac * (sp - mp))
    for name in SOLVERS:
        try:
            plan = solve(p, cap, solver=name)
        except InfeasibleBudgetError:
            assert name == "greedy"
            continue
        tl = check(p, plan)
        assert tl.ok and set(plan.decisions) == set(tl.needed)


# ---- offload ---------------------------------------------------------------------------------


def _offload_problem(bandwidth: float) -> Problem:
    """One big activation, expensive to recompute, with plenty of compute to hide its copy."""
    slots = [Slot(f"f{i}", FORWARD, 1.0, 10) for i in range(6)]
    slots += [Slot(f"b{i}", BACKWARD, 1.0, 10) for i in range(6)]
    acts = [
        Activation("big", "mm", 100, 50.0, 0, 0, (11,), ()),
        Activation("small", "relu", 10, 0.5, 1, 1, (8,), ()),
    ]
    return Problem(tuple(slots), tuple(acts), host_bandwidth=bandwidth, name="offload")


def test_ilp_picks_offload_when_cheaper():
    # store-all: 120 bytes on slots 2..8; at slot 8 only moving "big" away helps
    p = _offload_problem(1000.0)  # 0.1 s per copy, hidden behind 1 s slots
    assert store_all_peak(p) == 120
    plan = solve(p, 115, gap=0.0)
    assert_valid(p, plan, 115)
    assert plan.decisions["big"] is O
    assert plan.objective == 0.0
    q = _offload_problem(0.0)
    plan = solve(q, 115, gap=0.0)
    assert_valid(q, plan, 115)
    assert plan.decisions["big"] is R and plan.objective == 50.0
    slow = _offload_problem(1.0)  # 100 s per copy: mostly exposed, recompute is cheaper
    plan = solve(slow, 115, gap=0.0)
    assert_valid(slow, plan, 115)
    assert plan.decisions["big"] is R


def test_no_offload_without_bandwidth():
    for p in all_small_problems() + RANDOM_BF:
        if p.host_bandwidth > 0:
            continue
        sp, mp = store_all_peak(p), min_peak(p)
        for cap in (mp, (mp + sp) // 2):
            for name in ("ilp", "greedy"):
                try:
                    plan = solve(p, cap, solver=name)
                except InfeasibleBudgetError:
                    assert name == "greedy"
                    continue
                assert not plan.names(O)


def test_offload_three_choices_brute_force():
    p = chain_problem(layers=2, host_bandwidth=120.0)
    plans = brute_force(p)
    mp = min(pk for pk, _, _ in plans)
    used = False
    for cap in range(mp, store_all_peak(p) + 1, 37):
        plan = solve(p, cap, gap=0.0)
        assert_valid(p, plan, cap)
        assert close(plan.objective, bf_best(plans, cap))
        used |= bool(plan.names(O))
    assert used


# ---- properties on random problems --------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hst.integers(0, 2**32 - 1), frac=hst.floats(0.0, 1.0))
def test_random_problems_ilp_valid_and_no_worse_than_greedy(seed, frac):
    rng = random.Random(seed)
    p = random_problem(rng, n_acts=rng.randint(1, 12))
    sp, mp = store_all_peak(p), min_peak(p)
    assert mp <= sp
    cap = mp + int(frac * (sp - mp))
    plan = solve(p, cap)
    assert_valid(p, plan, cap)
    try:
        g = solve(p, cap, solver="greedy")
    except InfeasibleBudgetError as e:
        assert e.min_peak_bytes > cap >= mp
    else:
        assert_valid(p, g, cap)
        assert plan.objective <= g.objective + 1e-12
    with pytest.raises(InfeasibleBudgetError) as ei:
        solve(p, mp - 1)
    assert ei.value.min_peak_bytes == mp


# ---- scale (smoke; timings are printed, not asserted) ------------------------------------


def test_transformer_4_layers_smoke(capsys):
    p = transformer_problem(layers=4, batch=8, seq=1024, hidden=768, heads=12, decompose=True)
    sp = store_all_peak(p)
    t = time.perf_counter()
    mp = min_peak(p, time_limit=20.0)
    lines = [f"{p.name}: {len(p.slots)} slots, {len(p.activations)} activations",
             f"  min peak {mp / sp:.3f} of store-all ({time.perf_counter() - t:.2f} s)"]
    # Just-in-time recompute lowers the backward peak well below the old static rule's ~0.6.
    assert mp < 0.5 * sp
    for frac in (0.8, 0.6):
        cap = max(mp, int(sp * frac))
        t = time.perf_counter()
        plan = solve(p, cap, time_limit=20.0)
        dt = time.perf_counter() - t
        assert_valid(p, plan, cap)
        if frac == 0.6:
            g = solve(p, cap, solver="greedy")
            assert_valid(p, g, cap)
            assert plan.objective <= g.objective + 1e-12
        lines.append(
            f"  cap {cap / sp:.1%}: {dt:.2f} s, {plan.status}, gap {plan.gap}, "
            f"rows {plan.info['constraint_slots_kept']}/{plan.info['slots_total']}"
        )
    rows = Rows(Structure(p))
    assert len(rows.reps) < rows.segments <= len(p.slots)
    with capsys.disabled():
        print("\n" + "\n".join(lines))


# ---- captured problems ------------------------------------------------------------------------
# tests/unit/data/*.json: the Problems that remat.analyze captured for the e2e test models
# (tests/e2e/models.py: mlp, block, cnn) with torch 2.13 on CPU. No torch needed to read them.

DATA = Path(__file__).parent / "data"
CAPTURED = ("mlp", "block", "cnn")


def captured(name: str, host_bandwidth: float | None = None) -> Problem:
    p = Problem.load(DATA / f"{name}.json")
    if host_bandwidth is not None:
        p = dataclasses.replace(p, host_bandwidth=host_bandwidth, name=f"{p.name}-offload")
    return p


@functools.lru_cache(maxsize=None)
def _captured_mlp_plans():
    return brute_force(captured("mlp"))  # ~47k needed-set plans, ~3k of them valid: a few seconds


def test_captured_mlp_matches_brute_force():
    p = captured("mlp")
    plans = _captured_mlp_plans()
    true_min = min(pk for pk, _, _ in plans)
    sp = store_all_peak(p)
    assert min_peak(p) == true_min < 0.7 * sp
    # the smallest peak recomputes some input just in time for a recomputed consumer
    d = solve(p, true_min, gap=0.0).decisions
    tl = simulate(p, d)
    assert any(d[n] is R and p.first_uses[n] is not None and tl.starts[n] < p.first_uses[n] for n in d)
    for cap in sorted({true_min, int(0.7 * sp), int(0.8 * sp), int(0.9 * sp)}):
        cap = max(cap, true_min)
        plan = solve(p, cap, gap=0.0)
        assert_valid(p, plan, cap)
        assert close(plan.objective, bf_best(plans, cap)), (cap, plan.objective, bf_best(plans, cap))
    with pytest.raises(InfeasibleBudgetError) as ei:
        solve(p, true_min - 1)
    assert ei.value.min_peak_bytes == true_min


@pytest.mark.parametrize("name", CAPTURED)
@pytest.mark.parametrize("bw", [None, 1e10], ids=["no-offload", "offload"])
def test_captured_problems_ilp_valid_and_no_worse_than_greedy(name, bw):
    """Brute force is out of reach here (block: ~250k valid plans, cnn: ~29M); the ILP must still
    pass the simulator, beat or match the greedy, and agree with itself without row pruning."""
    assert (DATA / f"{name}.json").stat().st_size < 200_000
    p = captured(name, bw)
    sp, mp = store_all_peak(p), min_peak(p)
    assert mp < 0.8 * sp
    for frac in (0.9, 0.75, 0.0):
        cap = max(mp, int(sp * frac))
        plan = solve(p, cap, gap=0.0)
        assert_valid(p, plan, cap)
        assert plan.status == "optimal"
        assert close(plan.objective, solve(p, cap, gap=0.0, prune=False).objective)
        try:
            g = solve(p, cap, solver="greedy")
        except InfeasibleBudgetError as e:
            assert e.min_peak_bytes > cap
        else:
            assert_valid(p, g, cap)
            assert plan.objective <= g.objective + 1e-12
        for base in ("store_all", "recompute_all"):
            check(p, solve(p, cap, solver=base))
    with pytest.raises(InfeasibleBudgetError) as ei:
        solve(p, mp - 1)
    assert ei.value.min_peak_bytes == mp


def test_greedy_recomputes_a_chain_through_unneeded_inputs():
    """a0 -> a1 -> a2 (read by backward): recomputing a2 pays only with a1 and a0, which no plan
    needs until a2 is recomputed; the chain move must carry a2's start down to a0."""
    g = Graph(base=20)
    a0 = g.op("a0", 100, 1.0)
    a1 = g.op("a1", 100, 1.0, inputs=(a0,))
    a2 = g.op("a2", 100, 1.0, inputs=(a1,))
    c = g.op("c", 10, 1.0, inputs=(a2,), saved=(a2,), recomputable=False)
    d = g.op("d", 300, 5.0, inputs=(c,), saved=(c,))
    g.op("loss", 4, 0.1, inputs=(d,), saved=(d,))
    p = g.problem("chain3")
    floor = min_peak(p)
    assert floor < store_all_peak(p)
    plan = get_solver("greedy")(p, floor)
    check(p, plan, floor)
    assert sorted(plan.names(R)) == ["a0", "a1", "a2"]


def test_ilp_recomputes_a_value_to_move_its_reader_after_the_kernel():
    """Recomputing v inside the kernel of b2, b3 moves its reader b1 (and b1's 400-byte result)
    after that kernel, under b2's 300-byte temporary: the floor falls from 710 to 610. The
    solvers' exact evaluation is the simulator's, and the ILP (moved readers in its rows) finds
    the floor that brute force finds."""
    from .test_simulate import moved_problem

    p = moved_problem(fixed_bwd=(10, 410, 710, 410, 410), buffers={"b1": [400, 6, []]})
    p = dataclasses.replace(p, activations=tuple(
        dataclasses.replace(a, recomputable=a.name == "v", offloadable=False, bytes=100) for a in p.activations))
    st = Structure(p)
    for dec in ({"u": S, "v": S, "w": S}, {"u": S, "v": R, "w": S}):
        assert tuple(int(x) for x in st.profile(dec)) == simulate(p, dec).device_bytes
    assert simulate(p, {"u": S, "v": S, "w": S}).peak_bytes == 710
    assert min(pk for pk, _, _ in brute_force(p)) == min_peak(p) == 610
    plan = solve(p, 610, solver="ilp")
    assert plan.decisions["v"] is R and check(p, plan, 610).peak_bytes == 610


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rng=hst.randoms(use_true_random=False), frac=hst.floats(-0.2, 1.0))
def test_solvers_on_random_problems_with_moved_readers(rng, frac):
    """Random kernel facts and random ``SLOT_BUFFERS`` (what backward ops allocate and read): the
    solvers' exact evaluation is the simulator's, every solver's plan is valid under the cap,
    and the ILP meets every cap from its floor up."""
    from remat.simulate import SLOT_BUFFERS

    p = with_random_kernels(fuzz_problem(rng), rng)
    n, nf = len(p.slots), p.num_forward
    described = {}
    for u in (t for t in range(nf, n) if rng.random() < 0.5):
        reads = [[f"g{rng.randrange(4)}", rng.randint(1, 50), rng.randint(u, n - 1)] for _ in range(rng.randint(0, 2))]
        described[p.slots[u].name] = [rng.choice((0, rng.randint(1, 60))), rng.randint(u, n - 1), reads]
    p = dataclasses.replace(p, metadata={**p.metadata, SLOT_BUFFERS: described})
    _assert_profiles_are_the_simulators(p, rng, plans=3)
    assert solver_failures(p, frac, exact_ilp=False) == []


def test_ilp_plans_with_the_last_compiles_kernels():
    """Kernel facts (``remat.kernel_groups.with_kernels``) change the floor as the simulator counts
    it, and the ILP finds the plans they make possible: a value that its kernel recomputes and
    alone reads takes no bytes; a stored value whose buffer a kernel takes over leaves early."""
    from remat.kernel_groups import KernelGroups, with_kernels

    from .test_simulate import act, kernel_problem, slots

    bare, inlined = kernel_problem((3, 4)), kernel_problem((3, 4), [{"b1", "b2", "b3", "v"}])
    assert (min_peak(bare), min_peak(inlined)) == (1110, 1010)
    plan = solve(inlined, 1010, solver="ilp")
    assert plan.decisions == {"u": Decision.STORE, "v": Decision.RECOMPUTE}
    assert check(inlined, plan, 1010).peak_bytes == 1010
    u = act("u", 0, 1, 1000, uses=(5,), recomputable=False, offloadable=False)
    base = Problem(slots=slots([10] * 2, [10, 10, 500, 10, 10]), activations=(u,))
    handed = with_kernels(base, KernelGroups(backward=(frozenset({"b2", "b3"}),), reused=frozenset({"u"})))
    assert (min_peak(base), min_peak(handed)) == (1500, 1010)  # u leaves before the kernel (slot 4) starts
    assert check(handed, solve(handed, 1010, solver="ilp"), 1010).ok


@pytest.mark.parametrize("seed", range(6))
def test_pair_descent_lowers_a_stored_plans_peak_and_keeps_it_valid(seed):
    """From store-all, the min-peak search's descent recomputes pairs of stored candidates while
    the peak drops: its plan is valid, the simulator's peak is the one it reports, and on these
    problems (where recomputing lowers the floor) it is under store-all's."""
    from remat.simulate import store_all_plan
    from remat.solvers.ilp import _pair_descent

    p = random_problem(random.Random(seed), n_acts=8) if seed else chain_problem()
    st = Structure(p)
    start = st.normalize(store_all_plan(p))
    end = _pair_descent(st, start, st.peak(start), st.lower_bound_peak(), 10**9, time.perf_counter() + 30)
    dec, peak = end.decisions, end.peak
    tl = simulate(p, dec)
    assert tl.ok and tl.peak_bytes == peak <= st.peak(start)
    if min_peak(p) < st.peak(start):
        assert peak < st.peak(start)
