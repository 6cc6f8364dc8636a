"""time_fidelity's predicted added time over the store-all step's CPU time: on a busy machine the
wall time of every step grows while the prediction does not, so the prediction's share of the wall
step shrinks; over the CPU time it keeps its size. Synthetic rows, nothing timed."""

from __future__ import annotations

import pytest

from .test_benchmark_scoring import by_name, price_rows, tf, with_cpu


def test_the_prediction_is_also_given_over_the_store_all_steps_cpu_time():
    rows = with_cpu(price_rows())  # store-all: 1.1 s wall, 0.55 s CPU; the plan 0.66 s CPU
    rows[-1]["predicted_added_s"] = 0.055
    fid = {r["config"]: r for r in tf.fidelity_rows(list(by_name(rows).values()))}["remat_83886080B"]
    assert fid["predicted_sa_pct"] == pytest.approx(5.0)  # 0.055 s over the wall step
    assert fid["cpu_predicted_sa_pct"] == pytest.approx(10.0)  # 0.055 s over the CPU step
    assert fid["cpu_measured_sa_pct"] == pytest.approx(20.0)  # 0.66 / 0.55
    line = next(x for x in tf.table([fid]).splitlines() if "remat_83886080B" in x)
    assert "| 10.0 | +10.0 |" in line  # predicted over the CPU step, and measured less predicted


def test_rows_without_cpu_times_have_no_cpu_prediction():
    rows = price_rows()
    rows[-1]["predicted_added_s"] = 0.11
    fid = {r["config"]: r for r in tf.fidelity_rows(list(by_name(rows).values()))}["remat_83886080B"]
    assert "cpu_predicted_sa_pct" not in fid and fid["predicted_sa_pct"] == pytest.approx(10.0)


def test_the_price_table_gives_each_rows_forward_and_backward_cpu_time_apart():
    rows = with_cpu(price_rows())
    rows[3]["forward_cpu_s"] = [[9.0], [0.2], [0.3], [0.4]]  # amb_0.5: steps of 0.825 s CPU; the first round left out
    line = next(x for x in tf.price_table(tf.scored(rows)).splitlines() if "| amb_0.5 |" in x)
    assert "| 300.0 / 525.0 |" in line  # medians: forward 0.3 s, backward 0.825 - 0.3 s
    line = next(x for x in tf.price_table(tf.scored(rows)).splitlines() if "remat_83886080B" in x)
    assert "| - |" in line  # a row whose forwards were not timed
