"""Handing a PuLP model to HiGHS: in bulk, once, and again with moved row bounds only.

PuLP stays the modelling layer (variables, linear forms, rows). Its HiGHS interface adds one
column and one row per Python call, and collects the variables by walking every row's terms
three times per solve; at 48 GPT-2 layers that handover took longer than HiGHS. Here:

* ``LpProblem`` collects its variable list once per change of its rows or objective;
* ``HiGHS`` passes the columns and rows as arrays (``addCols``/``addRows``), hands the variables'
  initial values to HiGHS as a start when ``warm``, and solves a model that it already holds
  again after only its right-hand sides moved (``ilp.Model.set_budget``): the rows' bounds are
  updated in place (``changeRowsBounds``) instead of rebuilding HiGHS's model.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pulp

try:  # pragma: no cover - import guard
    import highspy

    HAVE_HIGHS = True
except Exception:  # pragma: no cover
    HAVE_HIGHS = False


class LpProblem(pulp.LpProblem):
    """``pulp.LpProblem`` whose ``variables()`` walks the rows once per change of the model."""

    _variables_seen: tuple | None = None

    def variables(self) -> list:
        key = (len(self._constraints), id(self.objective))
        if self._variables_seen is None or self._variables_seen[0] != key:
            self._variables_seen = (key, super().variables())
        return self._variables_seen[1]


class HiGHS(pulp.HiGHS if HAVE_HIGHS else object):  # type: ignore[misc]
    """``pulp.HiGHS`` with a bulk handover, warm starts, and re-solves under moved bounds."""

    def __init__(self, *args, warm: bool = False, **kw) -> None:
        super().__init__(*args, **kw)
        self.warm = warm

    def actualSolve(self, lp):  # noqa: N802 - pulp's name
        """Build HiGHS's model once per set of rows; later solves move the rows' bounds."""
        shape = (len(lp._constraints), len(lp.variables()))
        if getattr(lp, "_highs_shape", None) == shape and getattr(lp, "solverModel", None) is not None:
            self._configure(lp.solverModel)
            lower, upper = _row_bounds(lp)
            lp.solverModel.changeRowsBounds(len(lower), np.arange(len(lower), dtype=np.int32), lower, upper)
        else:
            self.createAndConfigureSolver(lp)
            self.buildSolverModel(lp)
            lp._highs_shape = shape
        self.callSolver(lp)
        status, sol_status = self.findSolutionValues(lp)
        lp.assignStatus(status, sol_status)
        return status

    def _configure(self, h) -> None:
        """The options of this solve on a model that HiGHS already holds."""
        h.setOptionValue("time_limit", float(self.timeLimit) if self.timeLimit is not None else highspy.kHighsInf)
        if self.gapRel is not None:
            h.setOptionValue("mip_rel_gap", self.gapRel)
        for key, value in self.optionsDict.items():
            h.setOptionValue(key, value)

    def buildSolverModel(self, lp) -> None:  # noqa: N802 - pulp's name
        """Columns and rows of ``lp`` handed to HiGHS as arrays."""
        h, inf = lp.solverModel, highspy.kHighsInf
        cols = lp.variables()
        for i, v in enumerate(cols):
            v.index = i
        obj = lp.objective or {}
        sign = -1.0 if lp.sense == pulp.LpMaximize else 1.0
        cost = np.array([sign * obj.get(v, 0.0) for v in cols], dtype=np.float64)
        lo = np.array([-inf if v.lowBound is None else v.lowBound for v in cols], dtype=np.float64)
        hi = np.array([inf if v.upBound is None else v.upBound for v in cols], dtype=np.float64)
        none = np.zeros(0, dtype=np.int32)
        h.addCols(len(cols), cost, lo, hi, 0, none, none, np.zeros(0))
        ints = np.array([i for i, v in enumerate(cols) if v.cat == pulp.LpInteger], dtype=np.int32)
        if len(ints) and self.mip:
            h.changeColsIntegrality(len(ints), ints, np.array([highspy.HighsVarType.kInteger] * len(ints)))
        starts, index, value = [], [], []
        for i, row in enumerate(lp._constraints.values()):
            row.index = i
            starts.append(len(index))
            for v, cf in row.items():
                if cf:
                    index.append(v.index)
                    value.append(cf)
        lower, upper = _row_bounds(lp)
        h.addRows(len(starts), lower, upper, len(index), np.array(starts, dtype=np.int32),
                  np.array(index, dtype=np.int32), np.array(value, dtype=np.float64))

    def callSolver(self, lp):  # noqa: N802 - pulp's name
        if self.warm:
            vs = lp.variables()
            idx = np.array([v.index for v in vs], dtype=np.int32)
            val = np.array([float(v.varValue or 0.0) for v in vs], dtype=np.float64)
            lp.solverModel.setSolution(len(idx), idx, val)
        lp.solverModel.run()


def _row_bounds(lp) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) of every row of ``lp`` (PuLP keeps a row's constant on its left side)."""
    inf = highspy.kHighsInf
    rows = list(lp._constraints.values())
    rhs = np.array([-r.constant for r in rows], dtype=np.float64)
    sense = np.array([r.sense for r in rows], dtype=np.int64)
    lower = np.where(sense == pulp.LpConstraintLE, -inf, rhs)
    upper = np.where(sense == pulp.LpConstraintGE, inf, rhs)
    return lower, upper


_banner_done = False


def skip_banner() -> None:
    """HiGHS prints a copyright banner on stdout when the first solver of a process is made,
    whatever its options: make that first one with stdout (the file descriptor) sent nowhere."""
    global _banner_done
    if _banner_done:
        return
    _banner_done = True
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real stdout: nothing to protect
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
