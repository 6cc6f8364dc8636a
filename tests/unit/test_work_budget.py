"""The capped ILP (``remat.solvers.ilp.ilp``) ends at its work budget, not at the wall clock: a
busy machine makes the same plan as an idle one.

tests/unit/data/hf_gpt2_min.json: transformers GPT-2 (quick) as capture made it (see
test_min_peak.py); planned here exactly (gap 0) at a cap 40 % of the way from its lower bound to its
store-all peak, where its MIP needs more than one node to close the gap."""

from __future__ import annotations

from pathlib import Path

from remat.problem import Problem
from remat.solvers import Structure

from .test_min_peak import SlowClock

DATA = Path(__file__).parent / "data"


def _cap(p: Problem) -> int:
    st = Structure(p)
    lo, hi = st.lower_bound_peak(), st.peak(st.store_all())
    return lo + 2 * (hi - lo) // 5


def _plan_under(monkeypatch, p: Problem, cap: int, time_limit: float):
    """The ILP's plan of ``p`` under ``cap`` with the slow clock read by the planner and its greedy."""
    from remat.solvers import greedy, ilp

    clock = SlowClock()
    monkeypatch.setattr(ilp, "time", clock)
    monkeypatch.setattr(greedy, "time", clock)
    return ilp.ilp(p, cap, time_limit=time_limit, gap=0.0)


def test_a_capped_plan_ends_at_its_node_budget_under_any_clock_that_leaves_it_time(monkeypatch):
    from remat.solvers import ilp

    p = Problem.load(DATA / "hf_gpt2_min.json")
    cap = _cap(p)
    monkeypatch.setattr(ilp, "CAPPED_NODES", 1)  # fewer nodes than this solve needs to reach its gap (3)
    huge = _plan_under(monkeypatch, p, cap, 1e9)
    # 100 reads: more than the whole planning makes here (54), but a greedy held to a tenth of the
    # time limit (the clock-ended planner before the work budget) was cut after 10 of its moves' reads
    tight = _plan_under(monkeypatch, p, cap, 100.0)
    for plan in (huge, tight):
        assert plan.info["ilp_stopped_by"] == plan.info["stopped_by"] == "node budget"
    assert tight.decisions == huge.decisions and tight.objective == huge.objective

