"""``remat.analyze.measure_peaks`` on a step of several graphs (a graph break): the step's figures
combine the graphs with what is held outside each, and match the measured peaks."""

import pytest
import torch

from remat.analyze import measure_peaks

from .test_graph_breaks import Broken, batch

CALLER_BYTES = 64  # the loss the compiled step returns and the gradient that seeds its backward


def loss(y):
    return y.pow(2).mean()


@pytest.mark.slow
@pytest.mark.parametrize("budget", ["7MiB", "100%"])
def test_a_steps_code_peak_over_several_graphs_is_its_measured_peak(budget):
    peaks = measure_peaks(Broken(), (batch(),), loss, memory_budget=budget, repeats=0)
    assert len(peaks.graphs) > 1 and all(r.measured_bytes is None for r in peaks.graphs)
    assert abs(peaks.remat.code_bytes - peaks.remat.measured_bytes) <= CALLER_BYTES
    assert peaks.remat.measured_bytes <= peaks.cap_bytes == max(g.step_cap_bytes for g in peaks.reports)
    if budget.endswith("%"):  # the ratio's reference, read by the backend from plain's code of each graph
        assert abs(peaks.plain.code_bytes - peaks.plain.measured_bytes) <= CALLER_BYTES


@pytest.mark.slow
def test_min_gives_a_step_of_several_graphs_no_cap():
    peaks = measure_peaks(Broken(), (batch(),), loss, memory_budget="min", repeats=0)
    assert len(peaks.graphs) > 1 and peaks.cap_bytes is None
    assert peaks.remat.predicted_bytes is None and peaks.remat.code_bytes is None
    assert peaks.remat.measured_bytes <= peaks.plain.measured_bytes
