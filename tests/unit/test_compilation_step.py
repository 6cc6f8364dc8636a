"""A step's accounting across its graphs (``remat.compilation.Compilation``), without compiling:
what earlier graphs keep, and the plain-compile step that a ratio budget refers to."""

import pytest

from remat.backend import _taken_off_cap
from remat.compilation import Compilation
from remat.config import RematConfig

FIRST, SECOND, THIRD = (7, 0), (8, 0), (9, 0)


def planned(comp: Compilation, key, kept: int) -> None:
    """What the backend's ``_record`` does for a planned graph."""
    comp.add("a report")
    comp.keep(key, kept)


def test_a_ratio_refers_to_plain_compiles_step_as_far_as_each_graph():
    comp = Compilation({"memory_budget": "50%"})
    assert comp.plain_step_peak(FIRST, peak=5000, kept=1500) == 5000  # nothing before the first graph
    planned(comp, FIRST, 700)  # remat's plan of it keeps less than plain's partition
    assert comp.plain_step_peak(SECOND, peak=4000, kept=None) == 4000 + 1500
    assert comp.resident_before(SECOND) == 700
    planned(comp, SECOND, 900)  # plain's figure not read: remat's counts for it
    assert comp.plain_step_peak(THIRD, peak=3000, kept=100) == 3000 + 1500 + 900
    assert comp.plain_step_peak(THIRD, peak=None, kept=100) is None  # no code read: no reference


def test_a_recompile_replaces_plain_figures_too():
    comp = Compilation({"memory_budget": "50%"})
    comp.plain_step_peak(FIRST, peak=5000, kept=1500)
    planned(comp, FIRST, 700)
    comp.plain_step_peak(FIRST, peak=4000, kept=1200)  # the frame compiles again (guards failed)
    planned(comp, FIRST, 600)
    assert comp.plain_step_peak(SECOND, peak=100, kept=None) == 100 + 1200
    assert comp.kept_before(SECOND) == 600


@pytest.mark.parametrize("budget, step_reference, expected", [
    ("6MiB", False, 1300),  # the step's byte cap: earlier graphs' kept bytes and the outside buffers
    ("50%", True, 1300),    # a ratio of plain compile's step: the same
    ("50%", False, 300),    # a ratio of the graph's own modelled plain peak: only the outside buffers
    ("min", True, 0),       # each graph's floor is its own
])
def test_what_a_graphs_cap_gives_up(budget, step_reference, expected):
    cfg = RematConfig.from_options({"memory_budget": budget})
    assert _taken_off_cap(cfg, resident=1000 + 300, outside=300, step_reference=step_reference) == expected
