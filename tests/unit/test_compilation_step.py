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


def test_a_graph_holds_its_saved_bytes_and_inputs_made_earlier_not_its_outputs_gradients():
    comp = Compilation({"memory_budget": "6MiB"})
    comp.graph_io(FIRST, grad_outputs=400, made_inputs=0)
    planned(comp, FIRST, 1000)  # its backward receives 600 saved bytes and 400 of gradients
    comp.graph_io(SECOND, grad_outputs=0, made_inputs=300)  # it reads 300 bytes that the first one made
    assert comp.resident_before(SECOND) == 600 + 300
    assert comp.plain_step_peak(SECOND, peak=100, kept=None) == 100 + 600 + 300
    planned(comp, SECOND, 50)  # its code does not count the input it saves: held until its backward
    assert comp.kept_bytes == {FIRST: 600, SECOND: 50 + 300}


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


def graph_report(kept: int, resident: int, budget: int):
    """The figures of a GraphReport that the check of a caller's loss reads."""
    from types import SimpleNamespace

    return SimpleNamespace(kept_bytes=kept, resident_before_bytes=resident, step_cap_bytes=budget + resident,
                           dynamic=None, problem=SimpleNamespace(name="graph0"))


def test_a_loss_outside_the_graph_that_can_exceed_the_cap_is_warned_of(caplog):
    from remat.backend import _warn_loss_outside

    with caplog.at_level("WARNING", logger="remat"):
        _warn_loss_outside(graph_report(kept=1000, resident=200, budget=1400), grad_outputs=300)
    assert "remat[graph0]" in caplog.text and "outside_bytes=600" in caplog.text
    assert "up to 200 B over the cap of 1.56 KiB" in caplog.text  # 200 + 1000 + 2 x 300 - (1400 + 200)
    caplog.clear()
    with caplog.at_level("WARNING", logger="remat"):
        _warn_loss_outside(graph_report(kept=1000, resident=200, budget=2200), grad_outputs=300)
        _warn_loss_outside(graph_report(kept=1000, resident=200, budget=1000), grad_outputs=0)  # the loss is inside
    assert not caplog.text


def test_the_outputs_a_loss_reads_are_those_that_need_a_gradient():
    import torch

    from remat.backend import grad_output_bytes

    graphs = []

    def keep_graph(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    weight = torch.nn.Parameter(torch.randn(16, 8))
    compiled = torch.compile(lambda x: (x @ weight, x.sum(), (x @ weight).detach()), backend=keep_graph)
    compiled(torch.randn(4, 16))
    assert grad_output_bytes(graphs[0]) == 4 * 8 * 4  # the product only: the sum needs no gradient, nor the copy


def compile_result(kept: int, estimate: int, budget: int):
    """What ``backend._compile_checked_plans`` returns: (compiled, report, its code's peak)."""
    from types import SimpleNamespace

    report = SimpleNamespace(kept_bytes=kept, budget_bytes=budget, resident_before_bytes=0,
                             problem=SimpleNamespace(name="graph0"))
    return f"compiled keeping {kept}", report, estimate


def four_runs_per_step(monkeypatch, replans):
    """A compilation whose graph FIRST runs 4 times per step, and a backend whose compiles return
    ``replans`` in turn (recording the bytes taken off each)."""
    from remat import backend
    from remat.outside_memory import OutsideMemory

    comp = Compilation({"memory_budget": "4MiB"})
    comp._outside[FIRST] = OutsideMemory((("gathered parameters", 320),), "FSDP2", runs=4)
    calls = []

    def compile_checked(gm, inputs, cfg, name, plain_peak, resident):
        calls.append(resident)
        return replans[len(calls) - 1]

    monkeypatch.setattr(backend, "_compile_checked_plans", compile_checked)
    return comp, calls


def test_a_graph_run_four_times_per_step_is_planned_again_with_three_runs_kept_off_its_cap(monkeypatch):
    from remat.backend import _plan_for_runs

    # the first plan stores all (keeps 1000); planned without 3 x 1000 it recomputes and keeps 500
    comp, calls = four_runs_per_step(monkeypatch, [compile_result(kept=500, estimate=1000, budget=680)])
    first = compile_result(kept=1000, estimate=1000, budget=3680)
    compiled, report, estimate = _plan_for_runs(None, None, None, comp, FIRST, None, 320, first)
    assert calls == [320 + 3000]
    assert compiled == "compiled keeping 500" and estimate + 3 * 500 <= 3680
    assert report.budget_bytes == 3680 - 1500 and report.resident_before_bytes == 320 + 1500
    assert comp.repeated(FIRST) == 1500


def test_a_graph_whose_runs_fit_no_plan_keeps_the_closest_with_its_cap_below_its_peak(monkeypatch):
    from remat.backend import _plan_for_runs

    comp, calls = four_runs_per_step(monkeypatch, [compile_result(kept=1000, estimate=1000, budget=680)])
    first = compile_result(kept=1000, estimate=1000, budget=3680)
    compiled, report, estimate = _plan_for_runs(None, None, None, comp, FIRST, None, 320, first)
    assert calls == [320 + 3000]  # the same kept bytes again: no third plan
    assert report.budget_bytes == 680 < estimate  # the backend then refuses it, naming the step's floor
