"""The benchmarks' scoring on synthetic rows (no compiles): per-round ratios and their medians,
the price of remat's plan against torch's row, ranks, "plan not run" marking
(``benchmarks/time_fidelity.py``), compare.py's ratios and notes, and a step's figures from the
reports of several graphs (``benchmarks/_run_config.plan_figures``)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import _run_config  # noqa: E402
import compare  # noqa: E402
import time_fidelity as tf  # noqa: E402

from remat.plan import Decision  # noqa: E402


def rounds(*steps: float) -> list[list[float]]:
    """One step per round."""
    return [[s] for s in steps]


def test_ratio_figures_leave_the_warm_up_round_out():
    mine = [[9.0], [2.0, 2.0], [3.0], [4.0]]
    ref = rounds(1.0, 1.0, 2.0, 2.0)
    f = tf.ratio_figures(mine, [ref])
    assert f["rounds"] == 3 and f["steps"] == 4
    assert f["ratio_median"] == pytest.approx(2.0)  # per round: 2/1, 3/2, 4/2
    assert f["ratio_q1"] <= 1.5 + 1e-9 and f["ratio_q3"] >= 2.0 - 1e-9
    assert f["ratio_min_based"] == pytest.approx(2.0)  # fastest 2.0 over fastest 1.0, not 9.0 or 1.0 of round 0
    assert f["step_median_s"] == pytest.approx(2.5) and f["compile_step_median_s"] == pytest.approx(2.0)


def test_ratio_figures_average_the_references_of_each_round():
    f = tf.ratio_figures(rounds(0, 3.0, 3.0), [rounds(0, 1.0, 1.0), rounds(0, 2.0, 2.0)])
    assert f["ratio_median"] == pytest.approx(2.0)  # 3 over the mean of 1 and 2


def row(config: str, cost_model: str, step: float, n: int = 4, **figures) -> dict:
    return {"model": "m", "config": config, "cost_model": cost_model, "step_times_s": rounds(*[step] * n), **figures}


def scored_rows() -> dict[str, dict]:
    rows = [row("compile", "-", 1.0, measured_peak_bytes=100 * 2**20),
            row("compile", "control", 1.2),
            row(tf.STORE_ALL, "store all", 1.1, predicted_added_s=0.0),
            row("remat_75", "measured", 2.2, predicted_added_s=0.11, compiled_with=["remat plan"]),
            row("amb_0.5", tf.TORCH, 1.65, measured_peak_bytes=80 * 2**20),
            row("remat_83886080B", tf.DEFAULT, 3.3, predicted_added_s=0.2, equal_peak_of="amb_0.5",
                measured_peak_bytes=70 * 2**20, compiled_with=["remat plan"])]
    return {r["config"] + r["cost_model"]: r for r in tf.scored(rows)}


def test_scored_ratios_control_store_all_and_price():
    by = scored_rows()
    assert by["compilecontrol"]["ratio_median"] == pytest.approx(1.2)  # to the first plain compile alone
    assert by["compilecontrol"]["predicted_added_s"] == 0.0
    plan = by["remat_75measured"]
    assert plan["ratio_median"] == pytest.approx(2.0)  # over the mean of both plain compiles, 1.1
    assert plan["sa_ratio_median"] == pytest.approx(2.0)  # over the store-all step
    amb, price = by["amb_0.5" + tf.TORCH], by["remat_83886080B" + tf.DEFAULT]
    assert amb["ratio_median"] == pytest.approx(1.5) and "sa_ratio_median" not in amb  # torch's row: no store-all figure
    assert price["price_ratio_median"] == pytest.approx(2.0)  # 3.3 over amb's 1.65, round by round
    assert "sa_ratio_median" not in by[tf.STORE_ALL + "store all"]


def price_rows() -> list[dict]:
    """Plain compile, the control, store-all, torch's amb_0.5 row and remat at amb_0.5's peak."""
    return [row("compile", "-", 1.0), row("compile", "control", 1.2), row(tf.STORE_ALL, "store all", 1.1),
            row("amb_0.5", tf.TORCH, 1.65),
            row("remat_83886080B", tf.DEFAULT, 3.3, equal_peak_of="amb_0.5", compiled_with=["remat plan"])]


def with_cpu(rows: list[dict]) -> list[dict]:
    """``rows`` with CPU times: half their wall times, but 0.66 s for the last (0.8x amb's 0.825 s)."""
    out = [dict(r, step_cpu_s=rounds(*[r["step_times_s"][1][0] / 2] * 4)) for r in rows]
    out[-1]["step_cpu_s"] = rounds(*[0.66] * 4)
    return out


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["config"] + r["cost_model"]: r for r in tf.scored(rows)}


def test_rows_with_cpu_times_get_the_same_ratios_prefixed_cpu():
    price = by_name(with_cpu(price_rows()))["remat_83886080B" + tf.DEFAULT]
    assert price["price_ratio_median"] == pytest.approx(2.0)  # wall time, as without CPU times
    assert price["cpu_price_ratio_median"] == pytest.approx(0.8)
    assert price["cpu_ratio_median"] == pytest.approx(0.66 / 0.55)  # over the mean of both plain compiles' CPU
    assert price["cpu_sa_ratio_median"] == pytest.approx(0.66 / 0.55)  # over store-all's 0.55 s


def test_rows_without_cpu_times_score_as_before():
    wall, both = by_name(price_rows()), by_name(with_cpu(price_rows()))
    assert not any(k.startswith("cpu_") for r in wall.values() for k in r)
    for name, r in both.items():  # CPU times change no wall figure
        assert {k: v for k, v in r.items() if not k.startswith("cpu_") and k != "step_cpu_s"} == wall[name]


def test_a_cpu_figure_needs_cpu_times_in_both_rows():
    rows = with_cpu(price_rows())
    del rows[3]["step_cpu_s"]  # torch's row measured wall time alone
    price = by_name(rows)["remat_83886080B" + tf.DEFAULT]
    assert "cpu_price_ratio_median" not in price and price["cpu_ratio_median"] == pytest.approx(0.66 / 0.55)
    del rows[-1]["step_cpu_s"]
    assert not any(k.startswith("cpu_") for k in by_name(rows)["remat_83886080B" + tf.DEFAULT])


def test_fidelity_rows_give_predicted_and_measured_percentages():
    fid = {r["config"] + r["cost_model"]: r for r in tf.fidelity_rows(list(scored_rows().values()))}
    assert "compile-" not in fid and "amb_0.5" + tf.TORCH not in fid  # the reference and torch's rows
    plan = fid["remat_75measured"]
    assert plan["predicted_pct"] == pytest.approx(10.0) and plan["measured_pct"] == pytest.approx(100.0)
    assert plan["predicted_sa_pct"] == pytest.approx(10.0) and plan["measured_sa_pct"] == pytest.approx(100.0)


def test_rank_pairs_skip_close_predictions_and_plans_that_did_not_run():
    def r(predicted, ratio, plain=False):
        return {"measured_pct": 100 * (ratio - 1), "predicted_added_s": predicted, "ratio_median": ratio,
                "compiled_with": ["plain torch.compile"] if plain else ["remat plan"]}

    rows = [r(1.0, 1.1), r(2.0, 1.2), r(1.02, 0.9), r(3.0, 1.0), r(0.1, 5.0, plain=True)]
    # compared: (1, 2), (2, 1.02), (1, 3), (2, 3), (1.02, 3); (1, 1.02) within 5 %; the plain row left out
    assert tf.rank_pairs(rows) == (3, 5)


def test_a_plan_replaced_by_plain_compile_is_marked_not_run():
    by = scored_rows()
    by["remat_83886080B" + tf.DEFAULT]["compiled_with"] = ["plain torch.compile"]
    text = tf.price_table(list(by.values()))
    line = next(x for x in text.splitlines() if "remat_83886080B" in x)
    assert "cap = amb_0.5's peak" in line and "plain torch.compile ran" in line
    assert "| 0.700 |" in line  # its peak over plain compile's
    assert tf.ran_plain(by["remat_83886080B" + tf.DEFAULT]) and not tf.ran_plain(by["remat_75measured"])


def test_compare_ratios_and_notes():
    rows = [{"config": "compile", "step_time_s": 0.1, "measured_peak_bytes": 100, "inductor_peak_bytes": 100},
            {"config": "remat_100", "step_time_s": 0.11, "predicted_added_s": 0.0, "budget_bytes": 2**40,
             "measured_peak_bytes": 110},
            {"config": "remat_90B", "step_time_s": 0.132, "predicted_added_s": 0.011, "budget_bytes": 90,
             "measured_peak_bytes": 80, "predicted_peak_bytes": 88, "inductor_peak_bytes": 80,
             "decisions": {"recompute": 2, "store": 5}, "compiled_with": ["remat plan"], "cap_of": "remat_min"}]
    compare.add_ratios(rows)
    ref, store_all, plan = rows
    assert ref["inductor_over_measured"] == 1.0  # the compile row has its code column
    assert plan["step_time_ratio"] == pytest.approx(1.32) and plan["peak_ratio"] == pytest.approx(0.8)
    assert plan["over_store_all"] == pytest.approx(1.2) and plan["predicted_over_store_all"] == pytest.approx(1.1)
    assert plan["measured_over_cap"] == pytest.approx(80 / 90) and "measured_over_cap" not in store_all
    assert plan["predicted_over_measured"] == pytest.approx(1.1)
    assert compare._note(plan) == "cap = remat_min's cap; 2 recompute, 5 store"
    plan["compiled_with"] = ["plain torch.compile"]
    assert "plan not run" in compare._note(plan)


def report(peak: int, resident: int, code: int | None, share: int, recompute: int):
    plan = SimpleNamespace(solve_time_s=0.5, status="optimal", names=lambda d: ["x"] * (recompute if d is Decision.RECOMPUTE else 0))
    return SimpleNamespace(timeline=SimpleNamespace(peak_bytes=peak, added_time=0.01), baseline_peak_bytes=peak + 10,
                           budget_bytes=share, step_cap_bytes=share + resident, inductor_peak_bytes=code,
                           resident_before_bytes=resident, plans_made=1, reference_peak_bytes=None,
                           compiled_with="remat plan", cost_model="roofline", plan=plan, partition_time_s=1.0)


def test_plan_figures_of_a_step_are_the_largest_graph_with_what_it_holds_outside():
    graphs = [report(100, 0, 90, 120, 1), report(60, 50, 70, 70, 2)]
    f = _run_config.plan_figures(graphs)
    assert f["predicted_peak_bytes"] == 110 and f["inductor_peak_bytes"] == 120  # not sums (160, 160)
    assert f["baseline_peak_bytes"] == 120 and f["budget_bytes"] == 120
    assert f["decisions"]["recompute"] == 3 and f["graphs"] == 2
    assert f["predicted_added_s"] == pytest.approx(0.02) and f["solve_time_s"] == pytest.approx(1.0)
    graphs[1].inductor_peak_bytes = None
    assert _run_config.plan_figures(graphs)["inductor_peak_bytes"] is None
    assert _run_config.plan_figures([]) == {}
