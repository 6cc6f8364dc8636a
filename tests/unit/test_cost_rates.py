"""The roofline's rates: the constants on an unprofiled machine, this machine's rates where
``remat profile`` cached them (for this thread count), and the elementwise rate in the prices.

Nothing here times anything except the small ``remat profile`` run of the last test."""

from __future__ import annotations

import pytest
import torch

from remat.capture import capture
from remat.cli import main
from remat.cost import DEVICES, DeviceSpec, ElementWork, device_spec, op_time
from remat.profile import (BANDWIDTH_KEY, BOOL_LOAD_KEY, BOOL_STORE_KEY, ELEMENTWISE_KEY, RANDOM_KEY, ProfileCache,
                           machine_spec, matmul_rates)

from .test_capture import scaled_exp, trace_joint


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("REMAT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("REMAT_CACHE", raising=False)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cache_rates(**entries) -> ProfileCache:
    """This process's CPU cache (this thread count) with ``entries`` written to its file."""
    cache = ProfileCache.for_device("cpu")
    for key, value in entries.items():
        cache.put(key, value)
    return cache


PROFILE = {"matmul_flops float32 n=512": 2e10, "matmul_flops float32 n=64": 5e9, "matmul_flops bfloat16 n=512": 3e11,
           BANDWIDTH_KEY: 3e9, ELEMENTWISE_KEY: 1e9}


def test_an_unprofiled_cpu_keeps_the_constants():
    spec = machine_spec("auto")
    assert spec == DEVICES["cpu"] and spec.rates_note() == "constants"


def test_a_cached_profile_supplies_the_cpu_rooflines_rates(one_thread):
    cache = cache_rates(**PROFILE)
    spec = machine_spec("auto")
    assert (spec.peak_flops, spec.bandwidth, spec.elementwise_rate) == (2e10, 3e9, 1e9)  # fp32: best of its sizes
    assert spec.name == "cpu" and spec.rates == f"profile {cache.path}"
    assert "20.0 GFLOP/s" in spec.rates_note() and "3.00 GB/s" in spec.rates_note()
    assert device_spec("cpu") == DEVICES["cpu"]  # a named device keeps its figures


def test_matmul_rates_by_dtype_are_the_best_of_the_sizes_measured():
    cache = cache_rates(**PROFILE)
    assert matmul_rates(cache) == {"float32": 2e10, "bfloat16": 3e11}


@pytest.mark.parametrize("missing", ["matmul_flops float32", BANDWIDTH_KEY])
def test_a_profile_without_fp32_matmul_or_bandwidth_keeps_the_constants(missing, one_thread):
    cache_rates(**{k: v for k, v in PROFILE.items() if not k.startswith(missing)})
    assert machine_spec("auto") == DEVICES["cpu"]


def test_a_profile_without_elementwise_rate_leaves_it_unknown(one_thread):
    cache_rates(**{k: v for k, v in PROFILE.items() if k != ELEMENTWISE_KEY})
    spec = machine_spec("auto")
    assert spec.bandwidth == 3e9 and spec.elementwise_rate == 0.0


def test_profiled_rates_of_inductors_cpu_idioms_replace_the_constants_and_unprofiled_ones_keep_them(one_thread):
    cache_rates(**PROFILE)
    cpu, spec = DEVICES["cpu"], machine_spec("auto")
    assert (spec.random_rate, spec.bool_load_rate, spec.bool_store_rate) == (
        cpu.random_rate, cpu.bool_load_rate, cpu.bool_store_rate)
    assert min(cpu.random_rate, cpu.bool_load_rate, cpu.bool_store_rate) > 0
    cache_rates(**{RANDOM_KEY: 5e7, BOOL_LOAD_KEY: 6e7, BOOL_STORE_KEY: 7e7})
    spec = machine_spec("auto")
    assert (spec.random_rate, spec.bool_load_rate, spec.bool_store_rate) == (5e7, 6e7, 7e7)


def test_the_cache_turned_off_keeps_the_constants(one_thread, monkeypatch):
    cache_rates(**PROFILE)
    monkeypatch.setenv("REMAT_CACHE", "0")
    assert machine_spec("auto") == DEVICES["cpu"]


def test_a_profile_of_another_thread_count_is_not_used():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cache_rates(**PROFILE)
        assert machine_spec("auto").rates != "constants"
        torch.set_num_threads(1)
        assert machine_spec("auto") == DEVICES["cpu"]
    finally:
        torch.set_num_threads(before)


def test_op_time_prices_elementwise_ops_only_at_a_known_rate():
    spec = DeviceSpec("t", peak_flops=1e12, bandwidth=1e9, host_bandwidth=0.0, launch_overhead=0.0)
    assert op_time(1e3, 1e3, spec, ElementWork(transcendental=1e9)) == pytest.approx(1e-6)  # rate unknown: not priced
    slow = DeviceSpec("t", peak_flops=1e12, bandwidth=1e9, host_bandwidth=0.0, launch_overhead=0.0, elementwise_rate=1e6)
    assert op_time(1e3, 1e3, slow, ElementWork(transcendental=1e3)) == pytest.approx(1e-3)
    assert op_time(1e3, 1e6, slow, ElementWork(transcendental=1e3)) == pytest.approx(1e-3)  # traffic: 1e-3 too
    assert op_time(1e3, 1e7, slow, ElementWork(transcendental=1e3)) == pytest.approx(1e-2)


def test_op_time_adds_replayed_draws_and_bool_loads_at_their_rates_to_the_element_work():
    spec = DeviceSpec("t", peak_flops=1e12, bandwidth=1e9, host_bandwidth=0.0, launch_overhead=0.0,
                      elementwise_rate=1e6, random_rate=1e5, bool_load_rate=1e4)
    work = ElementWork(transcendental=1e3, draws=1e2, bool_loads=10)
    assert op_time(0, 1e3, spec, work) == pytest.approx(1e-3 + 1e-3 + 1e-3)
    unknown = DeviceSpec("t", peak_flops=1e12, bandwidth=1e9, host_bandwidth=0.0, launch_overhead=0.0)
    assert op_time(0, 1e3, unknown, ElementWork(draws=1e9, bool_loads=1e9)) == pytest.approx(1e-6)  # not priced


def test_a_profiled_elementwise_rate_prices_a_recomputed_pointwise_chain():
    torch.manual_seed(0)
    joint, fwd, n = trace_joint(scaled_exp, torch.randn(8, 4), torch.randn(4, 16, requires_grad=True),
                                torch.randn(16, 4, requires_grad=True))
    bytes_only = DeviceSpec("b", peak_flops=1e30, bandwidth=1.0, host_bandwidth=0.0, launch_overhead=0.0)
    slow_elementwise = DeviceSpec("b", peak_flops=1e30, bandwidth=1.0, host_bandwidth=0.0, launch_overhead=0.0,
                                  elementwise_rate=1e-3)
    plain = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=bytes_only).problem.activation("exp")
    priced = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=slow_elementwise).problem.activation("exp")
    elements = 8 * 16
    assert plain.compute_time == 2 * 4 * elements  # one kernel: mm's result read, exp's written (4-byte elements)
    assert priced.compute_time == pytest.approx(elements / 1e-3)  # exp's elements at the rate; mul is arithmetic


def scaled_shift(x, w1, w2):
    return ((x @ w1) * 2.0 + 1.0) @ w2  # the product is fused into the sum; backward reads the sum


def test_a_recomputed_chain_of_arithmetic_is_priced_by_its_traffic_alone():
    torch.manual_seed(0)
    joint, fwd, n = trace_joint(scaled_shift, torch.randn(8, 4), torch.randn(4, 16, requires_grad=True),
                                torch.randn(16, 4, requires_grad=True))
    slow_elementwise = DeviceSpec("b", peak_flops=1e30, bandwidth=1.0, host_bandwidth=0.0, launch_overhead=0.0,
                                  elementwise_rate=1e-3)
    captured = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=slow_elementwise)
    assert captured.folded == ["mul"]
    # one kernel: mm's result read, the sum written; mul and add run at the speed of that traffic
    assert captured.problem.activation("add").compute_time == 2 * 4 * 8 * 16


def test_remat_profile_writes_the_rates_that_the_roofline_then_uses(one_thread, capsys, monkeypatch):
    import remat.profile

    monkeypatch.setattr(remat.profile, "_matmul_seconds", lambda kind, layout, m, k, n, t: m * k * n * 1e-9)  # no timing
    code = main(["profile", "--device", "cpu", "--threads", "1", "--sizes", "32,64", "--copy-bytes", "65536",
                 "--min-time", "0.01"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "elementwise" in out and "roofline of device='auto' at 1 threads: profile" in out
    spec = machine_spec("auto")
    cache = ProfileCache.for_device("cpu")
    assert spec.peak_flops == matmul_rates(cache)["float32"] and spec.bandwidth == cache.get(BANDWIDTH_KEY)
    assert spec.elementwise_rate == cache.get(ELEMENTWISE_KEY) > 0
    assert "random draws" in out and spec.random_rate == cache.get(RANDOM_KEY) > 0
    assert "bool store" in out and spec.bool_store_rate == cache.get(BOOL_STORE_KEY) > 0
    assert "bool load" in out and spec.bool_load_rate == cache.get(BOOL_LOAD_KEY) > 0
    assert "small matmuls" in out and spec.matmul_table.seconds("mm", "NT", 1024, 16, 8) == pytest.approx(1024 * 16 * 8e-9)


def test_the_elementwise_rate_is_measured_on_enough_elements_that_gpu_launches_do_not_decide_it():
    from remat.profile import elementwise_numel

    # 5 launches of ~10 us on 64 K elements measured 5.6 G op/s on an H200: the launches' rate
    assert elementwise_numel("cuda:0") >= 1 << 24
    assert elementwise_numel("cpu") == 1 << 16  # in cache, as the CPU rates were measured
