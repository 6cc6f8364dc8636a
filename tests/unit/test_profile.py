"""remat.profile: op signatures, measured op times, the disk cache and the cost_model option.

Tensors stay tiny (2 busy cores) and nothing asserts a duration beyond "positive"."""

from __future__ import annotations

import functools
import json
import multiprocessing
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx

from remat.cost import ElementWork
from remat.errors import ConfigError
from remat.profile import (
    BOOL_LOAD_KEY, BOOL_STORE_KEY, ELEMENTWISE_KEY, FORMAT, RANDOM_KEY, MeasuredCosts, OpSignature, ProfileCache,
    Profiler, TensorMeta, machine_spec, measure_bandwidth, measure_cpu_rate, measure_elementwise_rate, measure_link,
    measure_op, measure_workspace, parse_cost_model, signature_of, with_inputs,
)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Every test caches in its own directory, never in the user's cache."""
    monkeypatch.setenv("REMAT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("REMAT_CACHE", raising=False)


def op_nodes(fn, *inputs, mode="fake") -> dict[str, fx.Node]:
    """The call nodes of fn traced with make_fx, by op name ('aten.mm.default')."""
    gm = make_fx(fn, tracing_mode=mode)(*inputs)
    return {str(n.target): n for n in gm.graph.nodes if n.op == "call_function"}


def mm_signature(a: torch.Tensor, b: torch.Tensor) -> OpSignature:
    return signature_of(op_nodes(torch.mm, a, b)["aten.mm.default"])


def mm(n: int) -> OpSignature:
    return mm_signature(torch.randn(n, n), torch.randn(n, n))


def cache_files(tmp_path) -> list:
    return sorted((tmp_path / "cache").glob("*.json"))


# ---- signatures ----------------------------------------------------------------------------------


def test_signature_equal_for_equal_calls_and_hashable():
    a, b = mm_signature(torch.randn(4, 8), torch.randn(8, 2)), mm_signature(torch.randn(4, 8), torch.randn(8, 2))
    assert a == b and hash(a) == hash(b) and a.key() == b.key()
    f32 = torch.float32
    assert a.inputs == (TensorMeta((4, 8), (8, 1), f32, "cpu"), TensorMeta((8, 2), (2, 1), f32, "cpu"))


@pytest.mark.parametrize("other", [
    (torch.randn(4, 8), torch.randn(8, 3)),  # shape
    (torch.randn(4, 8, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)),  # dtype
    (torch.randn(4, 8), torch.randn(2, 8).t()),  # strides
])
def test_signature_differs_by_shape_dtype_and_strides(other):
    assert mm_signature(*other) != mm_signature(torch.randn(4, 8), torch.randn(8, 2))


def test_signature_keeps_non_tensor_arguments():
    x = torch.randn(4, 6)
    a = signature_of(op_nodes(lambda t: t.sum(0), x)["aten.sum.dim_IntList"])
    b = signature_of(op_nodes(lambda t: t.sum(1), x)["aten.sum.dim_IntList"])
    assert a != b and a.args[1:] == ((0,),)


def test_no_signature_for_placeholders_getitem_views_random_inplace():
    def fn(x):
        y = x.t().relu()
        y.add_(1)
        return torch.rand_like(y) * y, torch.max(x, 0)

    gm = make_fx(fn, tracing_mode="fake")(torch.randn(4, 4))
    by_target = {n.target: n for n in gm.graph.nodes}
    aten = torch.ops.aten
    nodes = [n for n in gm.graph.nodes if n.op == "placeholder"] + [by_target[operator.getitem]] + [
        by_target[t] for t in (aten.t.default, aten.add_.Tensor, aten.rand_like.default)]
    assert [signature_of(n) for n in nodes] == [None] * len(nodes)
    assert signature_of(by_target[torch.ops.aten.relu.default]) is not None


def test_no_signature_under_symbolic_sizes():
    nodes = op_nodes(torch.mm, torch.randn(4, 8), torch.randn(8, 2), mode="symbolic")
    assert signature_of(nodes["aten.mm.default"]) is None


def test_no_signature_for_meta_tensors_or_collectives():
    g = fx.Graph()
    x = g.placeholder("x")
    x.meta["val"] = torch.empty(4, 4, device="meta")
    y = g.call_function(torch.ops.aten.relu.default, (x,))
    assert signature_of(y) is None
    x.meta["val"] = torch.empty(4, 4)
    collective = g.call_function(torch.ops._c10d_functional.all_reduce.default, (x, "sum", "0"))
    assert signature_of(y) is not None and signature_of(collective) is None


# ---- measuring -----------------------------------------------------------------------------------


def test_measured_matmul_times_are_positive():
    small, big = measure_op(mm(8), "cpu", min_run_time=0.01), measure_op(mm(128), "cpu", min_run_time=0.01)
    assert small is not None and small > 0
    assert big is not None and big > 0  # a bigger matmul is not measured as free


@pytest.mark.parametrize("fn, op", [
    (lambda w, i: F.embedding(i, w), "aten.embedding.default"),
    (lambda w, i: torch.gather(w, 1, i), "aten.gather.default"),
    (lambda w, i: w[i], "aten.index.Tensor"),
    (lambda w, i: F.cross_entropy(w, i[:, 0]), "aten.nll_loss_forward.default"),
    (lambda w, i: torch.ops.aten._unsafe_masked_index(w, (i > 0)[..., None], [i], 0.0),
     "aten._unsafe_masked_index.default"),
])
def test_index_inputs_stay_in_range(fn, op):
    """On the CPU an index out of range raises, so a measured time means valid indices."""
    w, i = torch.randn(3, 5), torch.zeros(3, 2, dtype=torch.long)
    sig = signature_of(op_nodes(fn, w, i)[op])
    assert measure_op(sig, "cpu", min_run_time=0.001) is not None


def test_unknown_index_like_op_and_missing_device_give_none():
    nodes = op_nodes(torch.take, torch.randn(3, 3), torch.zeros(2, dtype=torch.long))
    take = signature_of(nodes["aten.take.default"])
    assert measure_op(take, "cpu") is None
    if not torch.cuda.is_available():
        on_cuda = TensorMeta((4, 4), (4, 1), torch.float32, "cuda:0")
        assert measure_op(OpSignature("aten.mm.default", (on_cuda, on_cuda)), "cuda", min_run_time=0.001) is None


def conv_backward_signature(memory_format=torch.contiguous_format) -> OpSignature:
    x = torch.randn(1, 3, 4, 4).to(memory_format=memory_format)
    w = torch.randn(8, 3, 3, 3).to(memory_format=memory_format)
    g = torch.randn(1, 8, 2, 2).to(memory_format=memory_format)
    fn = functools.partial(torch.ops.aten.convolution_backward.default, bias_sizes=[8], stride=[1, 1],
                           padding=[0, 0], dilation=[1, 1], transposed=False, output_padding=[0, 0], groups=1,
                           output_mask=[True, True, True])
    return signature_of(op_nodes(fn, g, x, w)["aten.convolution_backward.default"])


def test_workspace_is_what_a_call_allocates_beyond_its_results():
    # the CPU's slow conv2d backward builds an im2col columns buffer: 3*3*3 x 2*2 floats here
    assert measure_workspace(conv_backward_signature()) == 27 * 4 * 4
    assert measure_workspace(mm(16)) == 0  # a matmul writes its result and nothing else


def test_workspace_is_measured_once_then_cached(tmp_path):
    sig = conv_backward_signature()
    first = Profiler()
    assert first.workspace(sig) > 0 and first.stats.measured == 1
    again = Profiler()
    assert again.workspace(sig) == first.workspace(sig) and again.stats.cache_hits == 1
    assert again.stats.measured == 0 and again.op_time(sig) != first.workspace(sig)  # kinds are apart


def test_inputs_take_the_layout_the_code_passes():
    plain, channels_last = conv_backward_signature(), conv_backward_signature(torch.channels_last)
    assert plain != channels_last
    assert with_inputs(plain, list(channels_last.inputs)) == channels_last
    assert with_inputs(plain, list(channels_last.inputs[:2])) is None  # a tensor missing
    wrong = TensorMeta((2, 3, 4, 4), (48, 16, 4, 1), torch.float32, "cpu")
    assert with_inputs(plain, [plain.inputs[0], wrong, plain.inputs[2]]) is None  # another shape


def test_budget_spent_falls_back_but_cache_still_answers():
    sig = mm(4)
    warm = Profiler(per_op_budget_s=0.001)
    assert warm.op_time(sig) is not None
    broke = Profiler(total_budget_s=0.0)
    assert broke.op_time(sig) is not None and broke.op_time(mm(5)) is None
    assert (broke.stats.cache_hits, broke.stats.fallbacks, broke.stats.measured) == (1, 1, 0)


# ---- the disk cache ------------------------------------------------------------------------------


def test_cache_round_trip(tmp_path):
    sig = mm(4)
    first = Profiler(per_op_budget_s=0.001)
    t = first.op_time(sig)
    assert first.stats.measured == 1 and len(cache_files(tmp_path)) == 1
    doc = json.loads(cache_files(tmp_path)[0].read_text())
    assert doc["format"] == FORMAT and doc["torch"] == torch.__version__ and "op " + sig.key() in doc["entries"]
    again = Profiler()
    assert again.op_time(sig) == t and (again.stats.cache_hits, again.stats.measured) == (1, 0)


@pytest.mark.parametrize("disable", ["env", "argument"])
def test_cache_can_be_disabled(tmp_path, monkeypatch, disable):
    if disable == "env":
        monkeypatch.setenv("REMAT_CACHE", "0")
    profiler = Profiler(per_op_budget_s=0.001, cache=False if disable == "argument" else None)
    assert profiler.op_time(mm(4)) is not None
    assert cache_files(tmp_path) == [] and profiler.cache.path is None


def _write_entries(writer: int, count: int) -> None:
    cache = ProfileCache.for_device("cpu")
    for i in range(count):
        cache.put(f"writer{writer}-{i}", i)


def test_concurrent_writers_keep_every_entry(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_entries, args=(w, 30)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    entries = ProfileCache.for_device("cpu").entries
    assert set(entries) == {f"writer{w}-{i}" for w in range(2) for i in range(30)}
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_unreadable_cache_file_is_replaced(tmp_path):
    cache = ProfileCache.for_device("cpu")
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text("{not json")
    ProfileCache.for_device("cpu").put("k", 1.0)
    assert ProfileCache.for_device("cpu").get("k") == 1.0


# ---- bandwidth, link, measured costs and the option -------------------------------------------


def test_bandwidth_measured_once_then_cached():
    cache = ProfileCache.for_device("cpu")
    rate = measure_bandwidth("cpu", cache, nbytes=1 << 20)
    assert rate > 0 and ProfileCache.for_device("cpu").get("bandwidth") == rate
    assert measure_bandwidth("cpu") == rate


def test_elementwise_rate_measured_once_then_cached():
    cache = ProfileCache.for_device("cpu")
    rate = measure_elementwise_rate("cpu", cache, numel=1 << 10)
    assert rate > 0 and ProfileCache.for_device("cpu").get(ELEMENTWISE_KEY) == rate
    assert measure_elementwise_rate("cpu") == rate


def test_block_seconds_times_the_blocks_asked_each_of_whole_runs():
    from remat.measure import block_seconds

    env = {"x": torch.zeros(4)}
    times = block_seconds("x.add_(1)", env, min_run_time=0.0, block_s=1e-4, min_blocks=5)
    assert len(times) == 5 and all(t > 0 for t in times)
    assert env["x"][0] >= 6  # the sizing run and five blocks of at least one run each


@pytest.mark.parametrize("key", [RANDOM_KEY, BOOL_STORE_KEY, BOOL_LOAD_KEY])
def test_a_rate_of_inductors_cpu_idioms_is_measured_once_then_cached(key):
    cache = ProfileCache.for_device("cpu")
    rate = measure_cpu_rate(key, "cpu", cache, numel=1 << 10)
    assert rate > 0 and ProfileCache.for_device("cpu").get(key) == rate
    assert measure_cpu_rate(key, "cpu") == rate
    assert measure_cpu_rate(key, "cuda:0", cache) is None  # a GPU does them at the speed of its traffic


def test_rates_are_kept_per_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ProfileCache.for_device("cpu").put("bandwidth", 5e9)
        torch.set_num_threads(1)
        one = ProfileCache.for_device("cpu")
        assert "x1 threads" in one.device and one.get("bandwidth") is None  # a 2-thread rate misprices 1 thread
    finally:
        torch.set_num_threads(before)


def test_a_fused_chain_costs_its_traffic_or_its_elementwise_ops_whichever_is_longer(tmp_path):
    costs = MeasuredCosts.load(saved_profile(tmp_path, {"bandwidth": 1e10, ELEMENTWISE_KEY: 1e9}))
    assert costs.fused_time(1e9) == pytest.approx(0.1)  # no ops given: traffic alone
    assert costs.fused_time(1e9, ElementWork(transcendental=1e8)) == pytest.approx(0.1)  # memory-bound
    assert costs.fused_time(1e9, ElementWork(transcendental=1e9)) == pytest.approx(1.0)  # compute-bound
    no_rate = MeasuredCosts.load(saved_profile(tmp_path, {"bandwidth": 1e10}))
    assert no_rate.fused_time(1e9, ElementWork(transcendental=1e9)) == pytest.approx(0.1)


def test_a_fused_chain_adds_its_draws_and_bool_loads_at_the_measured_rates_or_the_machines(tmp_path):
    costs = MeasuredCosts.load(saved_profile(tmp_path, {"bandwidth": 1e10, ELEMENTWISE_KEY: 1e9, RANDOM_KEY: 1e8,
                                                        BOOL_LOAD_KEY: 2e8}))
    work = ElementWork(transcendental=1e8, draws=1e8, bool_loads=2e8)
    assert costs.fused_time(1e3, work) == pytest.approx(0.1 + 1.0 + 1.0)
    unmeasured = MeasuredCosts.load(saved_profile(tmp_path, {"bandwidth": 1e10}))  # the machine's spec's rates
    spec = machine_spec("auto")
    assert unmeasured.fused_time(0, ElementWork(draws=1e8, bool_loads=1e8)) == pytest.approx(
        1e8 / spec.random_rate + 1e8 / spec.bool_load_rate)


def test_link_is_none_off_cuda():
    assert measure_link("cpu") is None


def saved_profile(tmp_path, entries: dict):
    path = tmp_path / "saved.json"
    path.write_text(json.dumps({"format": FORMAT, "device": "elsewhere", "entries": entries}))
    return path


def test_saved_profile_answers_without_measuring(tmp_path):
    sig = mm(4)
    path = saved_profile(tmp_path, {"op " + sig.key(): 0.5, "bandwidth": 1e10, "link": [2e9, 3e9]})
    costs = MeasuredCosts.load(path)
    node = op_nodes(torch.mm, torch.randn(4, 4), torch.randn(4, 4))["aten.mm.default"]
    other = op_nodes(torch.mm, torch.randn(4, 6), torch.randn(6, 4))["aten.mm.default"]
    assert costs.op_time(node) == 0.5 and costs.op_time(other) is None
    assert costs.fused_time(1e9) == pytest.approx(0.1)
    assert (costs.link.to_host, costs.link.to_device) == (2e9, 3e9)
    assert (costs.stats.measured, costs.stats.cache_hits, costs.stats.fallbacks) == (0, 1, 1)
    assert costs.source == str(path) and cache_files(tmp_path) == []


def test_measured_costs_of_graph_nodes(tmp_path):
    costs = MeasuredCosts.measure("cpu", per_op_budget_s=0.001)
    nodes = op_nodes(lambda a, b: (a @ b.t()).relu(), torch.randn(4, 4), torch.randn(4, 4))
    assert costs.op_time(nodes["aten.mm.default"]) > 0 and costs.op_time(nodes["aten.t.default"]) is None
    assert (costs.stats.measured, costs.stats.fallbacks) == (1, 1)


def test_an_op_negligible_in_its_graph_is_not_timed_but_a_cached_time_answers(tmp_path):
    """A 2-element add beside a 1024^3 matmul is under NEGLIGIBLE_SHARE of the graph's roofline
    time: not measured (the roofline prices it); the matmul is measured; a time already in the
    cache still answers for the add."""
    nodes = op_nodes(lambda a, b, c: (a @ b, c + 1), torch.randn(1024, 1024), torch.randn(1024, 1024), torch.randn(2))
    mm_node, add = nodes["aten.mm.default"], nodes["aten.add.Tensor"]
    costs = MeasuredCosts.measure("cpu", per_op_budget_s=0.001, cache=ProfileCache(None, "cpu"))
    assert costs.negligible(add) and not costs.negligible(mm_node)
    assert costs.op_time(add) is None and costs.op_time(mm_node) > 0
    assert (costs.stats.measured, costs.stats.fallbacks, costs.stats.negligible) == (1, 1, 1)
    costs.profiler.cache.put("op " + signature_of(add).key(), 1e-6)
    assert costs.op_time(add) == 1e-6


@pytest.mark.parametrize("value, expected", [("measured", "measured"), ("ROOFLINE", "roofline"), ("auto", "auto")])
def test_cost_model_names(value, expected):
    assert parse_cost_model(value) == expected


def test_cost_model_saved_profile_path(tmp_path):
    assert parse_cost_model(saved_profile(tmp_path, {})) == str((tmp_path / "saved.json").resolve())


@pytest.mark.parametrize("bad", ["fast", 3, None, "{missing}"])
def test_cost_model_rejects_others(tmp_path, bad):
    if bad == "{missing}":
        bad = str(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="cost_model"):
        parse_cost_model(bad)


def test_cost_model_rejects_a_file_that_is_not_a_profile(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ConfigError, match="not a remat profile"):
        parse_cost_model(path)


def test_measuring_leaves_the_random_stream_alone():
    x = torch.randn(64, 64)
    sig = signature_of(op_nodes(lambda t: torch.ops.aten.native_dropout.default(t, 0.5, True), x)
                       ["aten.native_dropout.default"], seeded=True)
    assert signature_of(op_nodes(lambda t: torch.ops.aten.native_dropout.default(t, 0.5, True), x)
                        ["aten.native_dropout.default"]) is None  # not timed alone
    small_mm = mm(8)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    assert measure_workspace(sig) > 0  # the float mask it draws before the bool one
    assert measure_op(small_mm) is not None
    torch.testing.assert_close(torch.rand(4), expected)
