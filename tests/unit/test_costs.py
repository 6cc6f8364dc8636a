"""Measured costs in the capture stage and the backend: the ILP follows them, what they do not
price keeps the roofline, fused groups cost their traffic, and the backend's wiring.

Nothing here times anything: measured costs come from a stub or from a saved profile."""

from __future__ import annotations

import json

import pytest
import torch

import remat
from remat import planning
from remat.capture import capture, fused_values
from remat.joint_graph import fake_value, graph_facts, kernel_reads
from remat.config import RematConfig
from remat.cost import DeviceSpec, ElementRates, ElementWork, fused_time, tensor_bytes
from remat.plan import Decision
from remat.profile import ELEMENTWISE_KEY, FORMAT, LinkRates, MeasuredCosts, ProfileStats, signature_of
from remat.simulate import store_all_peak
from remat.solvers import get_solver

from .test_capture import BYTES_SPEC, mlp, scaled_exp, trace_joint

# FLOPs are slow and bytes are free: the roofline prices a matmul far above a pointwise op
SLOW_FLOPS = DeviceSpec("slow-flops", peak_flops=1e6, bandwidth=1e12, host_bandwidth=0.0, launch_overhead=0.0)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("REMAT_CACHE_DIR", str(tmp_path / "cache"))


class StubCosts:
    """Measured op times by op name ('mm', 'exp'); no bandwidth, so fused groups keep the roofline."""

    bandwidth, element_rates = None, ElementRates()

    def __init__(self, times: dict[str, float]) -> None:
        self.times = times

    def op_time(self, node) -> float | None:
        return self.times.get(getattr(node.target, "__name__", "").split(".")[0])

    def fused_time(self, nbytes: float, work: ElementWork = ElementWork()) -> float | None:
        return None


def two_candidates(x, y, w, w2):
    """Two activations of equal size that backward reads (mm's and exp's results), both live at
    the forward's end, where a large temporary (the repeat) makes the peak."""
    return (x @ w).sin().sum() + (y.exp() @ w2).sum() + x.repeat(8, 1).sum()


@pytest.fixture(scope="module")
def two_joint():
    torch.manual_seed(0)
    w, w2 = torch.randn(32, 32, requires_grad=True), torch.randn(32, 32, requires_grad=True)
    return trace_joint(two_candidates, torch.randn(256, 32), torch.randn(256, 32), w, w2)


def plan_below_store_all(joint_fwd_n, costs):
    joint, fwd, n = joint_fwd_n
    problem = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=SLOW_FLOPS, costs=costs).problem
    return problem, get_solver("ilp")(problem, store_all_peak(problem) - 1, time_limit=30)


def test_ilp_recomputes_what_measurement_says_is_cheaper(two_joint):
    problem, plan = plan_below_store_all(two_joint, None)
    assert problem.activation("mm").bytes == problem.activation("exp").bytes
    assert problem.activation("mm").compute_time > problem.activation("exp").compute_time
    assert (plan.decisions["mm"], plan.decisions["exp"]) == (Decision.STORE, Decision.RECOMPUTE)

    measured, plan = plan_below_store_all(two_joint, StubCosts({"mm": 1e-6, "exp": 10.0}))
    assert measured.activation("mm").compute_time == 1e-6 and measured.activation("exp").compute_time == 10.0
    assert (plan.decisions["mm"], plan.decisions["exp"]) == (Decision.RECOMPUTE, Decision.STORE)


def saved_costs(tmp_path, entries: dict) -> MeasuredCosts:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"format": FORMAT, "device": "test", "entries": entries}))
    return MeasuredCosts.load(path)


@pytest.fixture(scope="module")
def mlp_joint():
    torch.manual_seed(0)
    return trace_joint(mlp, torch.randn(8, 4), torch.randn(4, 16, requires_grad=True),
                       torch.randn(16, 4, requires_grad=True))


def by_name(joint):
    return {n.name: n for n in joint.graph.nodes}


def test_ops_without_a_measurement_keep_the_roofline(tmp_path, mlp_joint):
    joint, fwd, n = mlp_joint
    nodes = by_name(joint)
    costs = saved_costs(tmp_path, {"op " + signature_of(nodes["mm"]).key(): 0.25})
    roof = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=BYTES_SPEC).problem
    got = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=BYTES_SPEC, costs=costs).problem
    times = {s.name: s.compute_time for s in got.slots}
    assert times["mm"] == 0.25
    assert signature_of(nodes["native_dropout"]) is None  # random: never measured
    assert {k: v for k, v in times.items() if k != "mm"} == {s.name: s.compute_time for s in roof.slots if s.name != "mm"}
    assert got.activation("mm").compute_time == 0.25
    assert costs.stats.fallbacks > 0 and costs.stats.measured == 0


def test_a_fused_group_costs_its_traffic_at_the_measured_bandwidth(tmp_path, mlp_joint):
    joint, fwd, n = mlp_joint
    costs = saved_costs(tmp_path, {"bandwidth": 4.0})
    got = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=BYTES_SPEC, costs=costs).problem
    roof = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=BYTES_SPEC).problem
    g = graph_facts(joint, fwd, n)
    fused = fused_values(g)
    group = by_name(joint)["threshold_backward"]  # inlines native_dropout_backward
    assert any(g.owner.get(i) in fused for i in group.all_input_nodes)
    moved = sum(tensor_bytes(fake_value(i)) for i in kernel_reads(group, g.owner, fused)) + tensor_bytes(group.meta["val"])
    assert roof.slots[slot_index(roof, group.name)].compute_time == moved  # 1 B/s, no launch
    assert got.slots[slot_index(got, group.name)].compute_time == pytest.approx(moved / 4.0)


def slot_index(problem, name: str) -> int:
    return [s.name for s in problem.slots].index(name)


def test_a_recomputation_with_folded_values_is_one_fused_kernel(tmp_path):
    torch.manual_seed(0)
    joint, fwd, n = trace_joint(scaled_exp, torch.randn(8, 4), torch.randn(4, 16, requires_grad=True),
                                torch.randn(16, 4, requires_grad=True))
    costs = saved_costs(tmp_path, {"bandwidth": 2.0})
    roof = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=BYTES_SPEC)
    got = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=BYTES_SPEC, costs=costs)
    assert roof.folded == ["mul"]
    exp_bytes = 8 * 16 * 4
    # one kernel (reads mm, writes exp), on the roofline (1 B/s) and at the measured bandwidth (2 B/s);
    # a kernel per op (mul reads mm and writes mul, exp reads mul and writes exp) would move 4 exp_bytes
    assert roof.problem.activation("exp").compute_time == 2 * exp_bytes
    assert got.problem.activation("exp").compute_time == pytest.approx(2 * exp_bytes / 2.0)


def test_a_fused_recomputation_costs_its_elementwise_ops_at_the_measured_rate(tmp_path):
    torch.manual_seed(0)
    joint, fwd, n = trace_joint(scaled_exp, torch.randn(8, 4), torch.randn(4, 16, requires_grad=True),
                                torch.randn(16, 4, requires_grad=True))
    costs = saved_costs(tmp_path, {"bandwidth": 1e30, ELEMENTWISE_KEY: 1.0})  # traffic free, ops slow
    got = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=BYTES_SPEC, costs=costs)
    assert got.folded == ["mul"]
    assert got.problem.activation("exp").compute_time == pytest.approx(8 * 16)  # exp's elements (mul: arithmetic)


# ---- backend wiring ------------------------------------------------------------------------------


def test_auto_is_roofline_on_the_cpu_and_offline():
    cfg = RematConfig(memory_budget="50%")
    assert planning.graph_costs(cfg, joint=None, on_cuda=False, offline=False) is None
    assert planning.graph_costs(cfg, joint=None, on_cuda=True, offline=True) is None


def test_costs_built_once_per_device_and_cost_model(tmp_path, mlp_joint, monkeypatch):
    monkeypatch.setattr(planning, "_COSTS", {})
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"format": FORMAT, "device": "test", "entries": {}}))
    cfg = RematConfig(memory_budget="50%", cost_model=str(path))
    first = planning.graph_costs(cfg, mlp_joint[0], on_cuda=False, offline=True)
    assert first is planning.graph_costs(cfg, mlp_joint[0], on_cuda=False, offline=False)
    assert first.source == str(path.resolve())
    measured = planning.graph_costs(RematConfig(memory_budget="50%", cost_model="measured"), mlp_joint[0], False, False)
    assert measured is not first and measured.source == "measured"


def test_cost_model_note_counts_this_graphs_lookups(tmp_path):
    costs = saved_costs(tmp_path, {})
    before = ProfileStats(measured=1, cache_hits=2, fallbacks=3)
    costs.profiler.stats = ProfileStats(measured=1, cache_hits=7, fallbacks=4)
    assert planning.cost_model_note(None, None) == "roofline"
    assert planning.cost_model_note(costs, before).endswith("(5 ops from the profile, 1 roofline)")
    costs.source = "measured"
    assert planning.cost_model_note(costs, before) == "measured (0 ops measured, 5 cached, 1 roofline)"


class LinkCosts:
    link = LinkRates(to_host=30e9, to_device=40e9)


def test_host_link_measured_unless_given_or_offload_off():
    gpu = RematConfig(memory_budget="50%", device="h100")
    assert planning.host_bandwidth(gpu, on_cuda=True, costs=LinkCosts()) == 30e9
    assert planning.host_bandwidth(gpu, on_cuda=True, costs=None) == 25e9
    given = RematConfig(memory_budget="50%", device="h100", host_bandwidth=5e9)
    assert planning.host_bandwidth(given, on_cuda=True, costs=LinkCosts()) == 5e9
    assert planning.host_bandwidth(gpu, on_cuda=False, costs=LinkCosts()) == 0.0


def test_analyze_reports_the_cost_model(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    x = torch.randn(16, 8)
    assert remat.analyze(model, (x,), memory_budget="90%").graph.cost_model == "roofline"
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"format": FORMAT, "device": "test", "entries": {"bandwidth": 1e10}}))
    report = remat.analyze(model, (x,), memory_budget="90%", cost_model=str(path))
    assert report.graph.cost_model.startswith(str(path.resolve()))
    assert f"costs {report.graph.cost_model}" in planning.summary_line(report.graph)


def test_fused_time_is_the_longer_of_traffic_and_elementwise_ops():
    rates = ElementRates(elementwise=1e9)
    assert fused_time(4e9, ElementWork(transcendental=1e6), 2e9, rates) == pytest.approx(2.0)
    assert fused_time(4e9, ElementWork(transcendental=1e10), 2e9, rates) == pytest.approx(10.0)
    assert fused_time(4e9, ElementWork(transcendental=1e10), 2e9, ElementRates()) == pytest.approx(2.0)  # rate unknown
