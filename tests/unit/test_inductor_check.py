"""The Inductor check's plumbing: it never breaks a compile, and re-planning finds its cause."""

from __future__ import annotations

from remat.backend import _caused_by
from remat.errors import InfeasibleBudgetError
from remat.inductor_check import InductorPeaks


def test_no_estimate_outside_inductor_leaves_nodes_alone():
    peaks = InductorPeaks()
    nodes = ["a", "b"]
    assert peaks(nodes) is nodes  # no graph being compiled here: nothing recorded, nothing raised
    assert peaks.peaks == [] and peaks.peak_bytes is None


def test_caused_by_walks_the_chain():
    inner = InfeasibleBudgetError(100, 200)
    try:
        try:
            raise inner
        except InfeasibleBudgetError as e:
            raise RuntimeError("wrapped by the compiler") from e
    except RuntimeError as outer:
        assert _caused_by(outer, InfeasibleBudgetError) is inner
        assert _caused_by(outer, KeyError) is None
