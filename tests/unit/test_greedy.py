"""The greedy's incremental evaluation (``remat.solvers._evaluation``) against the full one."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from remat.plan import Decision
from remat.simulate import check, store_all_peak
from remat.solvers import get_solver
from remat.solvers._core import NONE, OFF, REC, STORE, Structure
from remat.solvers._evaluation import Evaluation

from .synthetic import Graph, fuzz_problem, with_random_takers
from .test_solver_fuzz import with_random_kernels


def _random_changes(rng, st: Structure) -> dict[int, int]:
    """A few candidates given a code that they may take."""
    out = {}
    for c in rng.sample(st.cands, min(len(st.cands), rng.randint(1, 3))):
        codes = [STORE, NONE] + [REC] * c.rec_ok + [OFF] * c.off_ok
        out[c.idx] = rng.choice(codes)
    return out


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rng=hst.randoms(use_true_random=False), kernels=hst.booleans(), runs=hst.sampled_from([0, 0, 2]),
       takers=hst.booleans())
def test_incremental_evaluation_matches_the_full_one(rng, kernels, runs, takers):
    """After every change of a few codes (any order, undone too), ``need``, ``S``, ``last_need``
    and the profile equal ``Structure.evaluate``'s for the same codes (with other runs of the
    graph holding what the codes store, ``runs``; with values taken by their readers, ``takers``)."""
    p = replace(fuzz_problem(rng), other_runs=runs, run_held_bytes=7 * runs)
    p = with_random_takers(p, rng) if takers else p
    st = Structure(with_random_kernels(p, rng) if kernels else p)
    if not st.cands:
        return
    ev = Evaluation(st, np.array([STORE if c.d >= 0 else NONE for c in st.cands], dtype=np.int64))
    for step in range(12):
        snap = ev.snapshot() if step % 4 == 3 else None
        ev.set(_random_changes(rng, st))
        if snap is not None:
            ev.restore(snap)
        mem, need, S, ln = st.evaluate(ev.codes)
        assert ev.need.tolist() == list(need)
        assert ev.S[ev.need].tolist() == np.array(S)[ev.need].tolist()
        assert ev.ln[ev.need].tolist() == np.array(ln)[ev.need].tolist()
        assert ev.profile().tolist() == mem.tolist()


def test_greedy_takes_a_cheap_chain_over_an_expensive_single_switch():
    """At the peak, recomputing ``m`` alone frees 100 bytes for 100 s; ``a2`` alone frees nothing
    (``a1`` would stay live), but ``a0 -> a1 -> a2`` together free 100 bytes for 3 s. The greedy
    takes the chain (it took ``m`` when chains were only a last resort)."""
    g = Graph(base=20)
    m = g.op("m", 100, 100.0)
    a0 = g.op("a0", 100, 1.0)
    a1 = g.op("a1", 100, 1.0, inputs=(a0,))
    a2 = g.op("a2", 100, 1.0, inputs=(a1,))
    c = g.op("c", 10, 1.0, inputs=(a2, m), saved=(a2, m), recomputable=False)
    d = g.op("d", 300, 5.0, inputs=(c,), saved=(c,))
    g.op("loss", 4, 0.1, inputs=(d,), saved=(d,))
    p = g.problem("chain_or_matmul")
    cap = store_all_peak(p) - 10
    plan = get_solver("greedy")(p, cap)
    check(p, plan, cap)
    assert sorted(plan.names(Decision.RECOMPUTE)) == ["a0", "a1", "a2"]
    assert plan.objective == get_solver("ilp")(p, cap).objective == 3.0


def test_greedy_stops_at_its_time_limit():
    from remat.errors import InfeasibleBudgetError
    from remat.solvers import min_peak

    from .synthetic import transformer_problem

    p = transformer_problem(layers=2, seq=32, hidden=32, heads=2)
    cap = min_peak(p) + (store_all_peak(p) - min_peak(p)) // 4
    get_solver("greedy")(p, cap)  # meets the cap with time
    try:
        get_solver("greedy")(p, cap, time_limit=0.0)
    except InfeasibleBudgetError as e:
        assert "time limit" in str(e)
    else:
        raise AssertionError("a greedy with no time made a plan under a cap below store-all")
