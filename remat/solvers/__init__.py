"""Solvers: turn a ``Problem`` and a cap on the peak into a ``Plan``.

Every solver has the signature ``fn(problem, budget_bytes, *, time_limit=60.0, **kw) -> Plan``
and returns decisions for exactly the needed activations. ``budget_bytes=None`` means no cap: the
cheapest plan (store-all, objective 0). None of them imports torch.

* ``ilp``: exact MIP (PuLP; HiGHS, or CBC without highspy); options ``gap``, ``backend``,
  ``starts`` (kept recompute start slots per activation), ``layers`` (repeated layers of
  ``Problem.layers``: "auto", "mix" (two levels over menus of layer plans, ``layered``), "tie",
  "free").
* ``greedy``: fast heuristic; raises ``InfeasibleBudgetError`` when it cannot meet the cap.
* ``store_all`` / ``recompute_all``: baselines that ignore the cap (``info["over_budget"]``).
"""

from __future__ import annotations

from typing import Callable

from remat.errors import ConfigError, InfeasibleBudgetError
from remat.plan import Plan
from remat.problem import Problem

from . import baselines, greedy, ilp  # the modules stay reachable as remat.solvers.<name>
from ._core import Structure
from .ilp import min_peak

SOLVERS: dict[str, Callable[..., Plan]] = {
    "ilp": ilp.ilp,
    "greedy": greedy.greedy,
    "store_all": baselines.store_all,
    "recompute_all": baselines.recompute_all,
}


def get_solver(name: str) -> Callable[..., Plan]:
    """The solver registered as ``name``; ConfigError listing the valid names otherwise."""
    try:
        return SOLVERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown solver {name!r}; valid solvers: {', '.join(SOLVERS)}") from None


def solve(problem: Problem, budget_bytes: int | None, solver: str = "ilp", **kw) -> Plan:
    """Plan ``problem`` under ``budget_bytes`` with the named solver."""
    return get_solver(solver)(problem, budget_bytes, **kw)


__all__ = ["SOLVERS", "InfeasibleBudgetError", "Structure", "get_solver", "min_peak", "solve"]
