"""The check loop's decisions (``remat.backend._next_plan``, ``_kept``) on plans made up of their
figures: a cap of 1,000,000 B with a 5 % reserve (the target is 950,000 B; the default is 1 %,
tested on its own below), so a code peak under 900,000 B leaves more than two reserves free. No compiles; the loop itself, on real
graphs, is in ``tests/e2e/test_compile.py``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from remat.backend import MAX_PLANS, RAISE_AT, _Compiled, _kept, _next_plan
from remat.config import RematConfig
from remat.kernel_groups import KernelGroups

CAP = 1_000_000
KERNELS = KernelGroups(backward=(frozenset({"mm_1", "relu"}),))


def plan(estimate: int, added_ms: float, lower_by: int = 0, groups=KERNELS, cap: int | None = CAP,
         dynamic=None, floor: int = 0, reserve: float = 0.05, predicted: int | None = None) -> _Compiled:
    """A compiled plan as the loop sees it: its code's peak, its predicted added time and peak
    (default: the peak it was planned at); planned at the cap less the ``reserve`` less
    ``lower_by``, or at the model's ``floor`` when that is higher."""
    planned_at = max(floor, int((1 - reserve) * cap) - lower_by) if cap is not None else None
    timeline = SimpleNamespace(added_time=added_ms / 1e3, peak_bytes=planned_at if predicted is None else predicted)
    report = SimpleNamespace(budget_bytes=cap, dynamic=dynamic, timeline=timeline,
                             plan=SimpleNamespace(budget_bytes=planned_at))
    return _Compiled(compiled=f"plan at {estimate}", report=report, estimate=estimate, kernels=KERNELS,
                     lower_by=lower_by, groups=groups)


def capped(reserve: float = 0.05) -> RematConfig:
    return RematConfig(memory_budget=CAP, reserve=reserve)


def test_the_default_reserve_leaves_one_percent_of_the_cap():
    default = RematConfig(memory_budget=CAP)
    assert default.reserve == 0.01 and default.planning_target(CAP) == 990_000
    # 3 % of the cap free: more than two default reserves, so the plan is raised by the slack
    assert _next_plan(default, [plan(970_000, 9.0, reserve=0.01)]) == (-20_000, KERNELS)
    assert _next_plan(capped(), [plan(970_000, 9.0)]) == (20_000 + CAP // 100, KERNELS)  # over 950,000: lowered
    # the fastest plan whose code leaves 1 % free
    kept = _kept(default, [plan(985_000, 9.0, reserve=0.01), plan(995_000, 2.0, lower_by=-10_000, reserve=0.01)])
    assert kept.estimate == 985_000


def test_min_reports_its_code_peak_with_the_reserve_on_top():
    from remat.backend import min_cap

    assert min_cap(RematConfig(memory_budget="min"), 990_000) == 1_000_000
    assert min_cap(RematConfig(memory_budget="min", reserve=0.05), 950_000) == 1_000_000
    assert min_cap(RematConfig(memory_budget="min", reserve=0.0), 950_000) == 950_000
    # 1,023 / 0.93 is 1,100 exactly, but int(1,100 * 0.93) is 1,022 in floating point: the cap must
    # be one whose target the code's peak meets, so that it is met when given as a byte cap
    cfg = RematConfig(memory_budget="min", reserve=0.07)
    assert cfg.planning_target(1_100) == 1_022 and min_cap(cfg, 1_023) == 1_101


def test_a_plan_over_the_target_is_planned_again_with_its_kernels_at_the_same_target():
    assert _next_plan(capped(), [plan(960_000, 5.0, groups=None)]) == (0, KERNELS)


def test_a_plan_over_the_target_with_kernels_is_planned_lower_by_the_excess_and_one_percent():
    assert _next_plan(capped(), [plan(970_000, 5.0)]) == (20_000 + CAP // 100, KERNELS)


def test_lowering_that_stops_improving_tries_the_models_floor_once_then_stops():
    tried = [plan(970_000, 5.0), plan(975_000, 7.0, lower_by=30_000)]
    # the model's floor with the last kernels, where "min" plans (evoformer quick: a 4.01 MiB cap
    # was refused naming 4.03 MiB while "min"'s code peaked at 2.59 MiB)
    assert _next_plan(capped(), tried) == (950_000, KERNELS)
    at_floor = plan(990_000, 9.0, lower_by=950_000, floor=700_000)
    assert _next_plan(capped(), tried + [at_floor]) is None


def test_a_told_plan_no_lower_than_the_first_is_followed_by_lowering_not_the_floor():
    # both plans at the target, the second told its kernels, its code no lower: lower by the excess
    tried = [plan(1_078_000, 5.0, groups=None), plan(1_081_000, 6.0)]
    assert _next_plan(capped(), tried) == (131_000 + CAP // 100, KERNELS)


def test_code_well_under_the_cap_is_planned_higher_by_the_slack():
    assert RAISE_AT == 2
    lower_by, groups = _next_plan(capped(), [plan(800_000, 9.0)])
    assert (lower_by, groups) == (-150_000, KERNELS)  # the target, 950,000 B, less the code's peak


def test_a_plan_is_raised_by_what_the_model_over_predicted_only():
    # the model predicted 900,000 B for a plan whose code peaks at 800,000 B: raised by 100,000 B
    assert _next_plan(capped(), [plan(800_000, 9.0, predicted=900_000)]) == (-100_000, KERNELS)
    # the model predicted the code (a coarse model: its next plan is over the target): no raise
    assert _next_plan(capped(), [plan(800_000, 9.0, predicted=805_000)]) is None
    assert _next_plan(capped(), [plan(800_000, 9.0, predicted=780_000)]) is None  # it under-predicted


def test_a_plan_at_the_models_floor_is_raised_from_that_floor():
    # planned at a model floor of 1,050,000 B (target 950,000 B); its code peaks at 800,000 B
    assert _next_plan(capped(), [plan(800_000, 9.0, floor=1_050_000)]) == (-250_000, KERNELS)


def test_a_plan_at_the_models_floor_is_not_lowered_with_the_same_kernels():
    tried = [plan(990_000, 5.0, groups=None), plan(980_000, 4.0, floor=1_050_000)]
    tried[-1].kernels = KERNELS  # Inductor generated the kernels the plan was made with
    assert _next_plan(capped(), tried) is None
    tried[-1].kernels = KernelGroups(backward=(frozenset({"mm_2"}),))
    assert _next_plan(capped(), tried) == (30_000 + CAP // 100, tried[-1].kernels)


def test_a_first_plan_without_kernels_is_raised_with_them():
    assert _next_plan(capped(), [plan(800_000, 9.0, groups=None)]) == (-150_000, KERNELS)


@pytest.mark.parametrize("estimate, added_ms, dynamic", [
    (910_000, 9.0, None),  # 9 % of the cap free: under two reserves
    (800_000, 0.0, None),  # recomputes nothing: nothing to gain
    (800_000, 9.0, "a range"),  # a plan over a range is proven at the model's cap
])
def test_no_raise(estimate, added_ms, dynamic):
    assert _next_plan(capped(), [plan(estimate, added_ms, dynamic=dynamic)]) is None


def test_a_raise_that_went_over_comes_back_by_the_excess():
    tried = [plan(800_000, 9.0), plan(990_000, 4.0, lower_by=-150_000)]
    assert _next_plan(capped(), tried) == (-150_000 + 40_000 + CAP // 100, KERNELS)


def test_coming_back_never_passes_a_plan_that_met_the_target_it_goes_halfway():
    tried = [plan(800_000, 9.0), plan(1_100_000, 4.0, lower_by=-150_000)]
    assert _next_plan(capped(), tried) == (-75_000, KERNELS)


def test_a_raise_never_passes_a_plan_that_was_over():
    tried = [plan(990_000, 4.0, lower_by=-100_000), plan(700_000, 9.0, lower_by=0)]
    assert _next_plan(capped(), tried) == (-50_000, KERNELS)


def test_a_plan_already_tried_is_not_made_again():
    tried = [plan(800_000, 9.0, lower_by=-150_000), plan(800_000, 9.0, lower_by=0)]
    assert _next_plan(capped(), tried) is None


def test_the_plan_kept_is_the_fastest_whose_code_leaves_the_reserve_free():
    tried = [plan(800_000, 9.0), plan(990_000, 2.0, lower_by=-150_000), plan(930_000, 5.0, lower_by=-75_000)]
    assert _kept(capped(), tried) is tried[2]


def test_with_no_plan_under_the_target_the_lowest_code_peak_is_kept():
    tried = [plan(990_000, 2.0), plan(970_000, 5.0, lower_by=30_000), plan(980_000, 6.0, lower_by=60_000)]
    assert _kept(capped(), tried) is tried[1]


def test_min_plans_again_with_the_last_kernels_while_the_code_peak_falls():
    cfg = RematConfig(memory_budget="min")
    first, lower, higher = plan(900, 5.0, groups=None), plan(800, 6.0), plan(850, 7.0)
    assert _next_plan(cfg, [first]) == (0, KERNELS)
    assert _next_plan(cfg, [first, lower]) is None  # the same kernels again: a plan already tried
    other = KernelGroups(backward=(frozenset({"mm_2"}),))
    lower.kernels = other
    assert _next_plan(cfg, [first, lower]) == (0, other)
    assert _next_plan(cfg, [first, lower, higher]) is None
    assert _kept(cfg, [first, lower, higher]) is lower


def test_min_keeps_the_fastest_of_the_plans_whose_code_peaks_lowest():
    cfg = RematConfig(memory_budget="min")
    first, told, tied = plan(800, 5.0, groups=None), plan(800, 6.0), plan(800, 5.0)
    assert _kept(cfg, [first, told]) is first  # the same code peak: the one that adds less time
    assert _kept(cfg, [first, told, tied]) is tied  # the same time too: the later plan
    assert _kept(cfg, [first, plan(799, 9.0)]).estimate == 799  # a lower peak first, whatever its time


def test_the_loop_is_bounded():
    assert 2 <= MAX_PLANS <= 4


@pytest.mark.parametrize("plain_peak, runs", [(700, "plain torch.compile"), (900, "remat plan")])
def test_min_runs_plain_compile_where_its_code_peaks_lower(monkeypatch, plain_peak, runs):
    import remat.backend as backend

    monkeypatch.setattr(backend, "plain_compile", lambda gm, inputs, sizes=None, room=0: ("plain", plain_peak, 300))
    kept = plan(800, 6.0)
    kept.report.compiled_with, kept.report.kept_bytes = "remat plan", 500
    cfg = RematConfig(memory_budget="min")
    compiled, report, peak = backend._lowest_of_min(None, (), cfg, kept)
    assert (report.compiled_with, peak) == (runs, min(plain_peak, 800))
    assert compiled == ("plain" if plain_peak < 800 else kept.compiled)
    assert report.kept_bytes == (300 if plain_peak < 800 else 500)
    assert report.budget_bytes == backend.min_cap(cfg, peak) > peak


@pytest.mark.parametrize("min_peak", [900_000, 1_100_000, 2_000_000])
def test_a_cap_no_plan_met_takes_what_min_compiles_when_its_code_peaks_lower(monkeypatch, min_peak):
    import remat.backend as backend

    asked = []

    def min_loop(gm, inputs, cfg, name, plain_peak, resident, runs, plain=None):
        asked.append(cfg.memory_budget.minimum)
        found = plan(min_peak, 9.0, cap=None)
        found.report.plans_made = 2
        return found.compiled, found.report, min_peak

    monkeypatch.setattr(backend, "_compile_checked_plans", min_loop)
    over = plan(1_500_000, 5.0)
    over.report.plans_made = 4
    compiled, report, peak = backend._lower_of_min(None, (), capped(), (over.compiled, over.report, 1_500_000),
                                                   "graph0", None, 0, backend.NO_RUNS)
    assert asked == [True]  # "min"'s loop, on the same graph
    if min_peak < 1_500_000:  # under the cap (then run) or only lower (then the peak refused names)
        assert (compiled, peak) == (f"plan at {min_peak}", min_peak)
        assert report.budget_bytes == CAP and report.plans_made == 6  # the cap asked; every compile counted
    else:
        assert (compiled, peak, report) == (over.compiled, 1_500_000, over.report)
