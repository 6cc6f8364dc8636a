"""Baselines that ignore the cap: store everything, or recompute everything that can be.

Both return their plan whatever the cap; ``info["over_budget"]`` is True when its peak exceeds it.
"""

from __future__ import annotations

import time

from remat.plan import Decision, Plan
from remat.problem import Problem

from ._core import Structure, make_plan


def _finish(st: Structure, dec, name: str, budget_bytes: int | None, t0: float) -> Plan:
    dec = st.normalize(dec)
    peak = st.peak(dec)
    info = {"peak_bytes": peak}
    if budget_bytes is not None:
        info["over_budget"] = peak > budget_bytes
    return make_plan(st, dec, name, budget_bytes, status="heuristic",
                     solve_time_s=time.perf_counter() - t0, info=info)


def store_all(problem: Problem, budget_bytes: int | None, *, time_limit: float = 60.0, **kw) -> Plan:
    """Every needed activation STORE (the no-remat plan; objective 0)."""
    t0 = time.perf_counter()
    st = kw.get("_structure") or Structure(problem)
    return _finish(st, st.store_all(), "store_all", budget_bytes, t0)


def recompute_all(problem: Problem, budget_bytes: int | None, *, time_limit: float = 60.0, **kw) -> Plan:
    """Every recomputable needed activation RECOMPUTE; the rest (and the inputs they pull in) STORE.

    With just-in-time recomputation every such plan is valid (a recomputed input is recomputed
    just before its first recomputed consumer).
    """
    t0 = time.perf_counter()
    st = kw.get("_structure") or Structure(problem)
    needed = {a.name for a in problem.activations if a.backward_uses}
    dec: dict[str, Decision] = {}
    for a in sorted(problem.activations, key=lambda a: a.created, reverse=True):
        if a.name not in needed:
            continue
        dec[a.name] = Decision.RECOMPUTE if a.recomputable else Decision.STORE
        if a.recomputable:
            needed.update(a.inputs)
    return _finish(st, dec, "recompute_all", budget_bytes, t0)
