"""Plain torch.compile's backward order predicted before any compile (remat.plain_order): the
candidate that Inductor's peak-memory pass keeps, and its estimates, against the pass itself."""

import pytest
import torch
import torch._inductor.memory as inductor_memory
from torch._functorch.partitioners import min_cut_rematerialization_partition
from torch._inductor.custom_graph_pass import CustomPartitionerFn

from remat.baseline import copy_graph
from remat.config import RematConfig
from remat.planning import plain_compile_report

_NAMES = {"baseline": "graph", "topological_sort_lpmf": "lpmf", "topological_sort_bfs": "bfs",
          "topological_sort_dfs": "dfs"}


class _Recorder(CustomPartitionerFn):
    """Predicts plain compile's order on a copy of the joint graph, then partitions the original
    with the real min-cut partitioner (plain compile's)."""

    def __init__(self) -> None:
        self.reports = []

    def __call__(self, gm, joint_inputs, **kwargs):
        cfg = RematConfig.from_options({"solver": "store_all"})
        self.reports.append(plain_compile_report(copy_graph(gm), kwargs["num_fwd_outputs"],
                                                 kwargs.get("static_lifetime_input_indices"), cfg))
        return min_cut_rematerialization_partition(gm, joint_inputs, **kwargs)

    def uuid(self):
        return None


def _inductor_estimates(monkeypatch, bias: bool):
    """(the backward's predicted order and estimates, Inductor's pass's estimates of its backward
    graph by candidate and the candidate it kept) on plain torch.compile of Linear-GELU-Linear."""
    seen = []
    original = inductor_memory.reorder_for_peak_memory

    def recording(nodes, name_to_buf, name_to_fused_node, graph_inputs, graph_outputs, *a, **k):
        kept = original(nodes, name_to_buf, name_to_fused_node, graph_inputs, graph_outputs, *a, **k)
        free = inductor_memory.get_freeable_input_buf(nodes, graph_inputs)
        orders = {"graph": nodes, "lpmf": inductor_memory.topological_sort_lpmf(nodes, free, name_to_buf, graph_outputs),
                  "bfs": inductor_memory.topological_sort_bfs(nodes), "dfs": inductor_memory.topological_sort_dfs(nodes)}
        estimates = {k: inductor_memory.estimate_peak_memory(o, free, graph_outputs)[0] for k, o in orders.items()}
        seen.append((estimates, next(k for k, o in orders.items() if o == kept)))
        return kept

    monkeypatch.setattr(inductor_memory, "reorder_for_peak_memory", recording)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 256, bias=bias), torch.nn.GELU(), torch.nn.Linear(256, 64, bias=bias))
    rec = _Recorder()
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True, custom_partitioner_fn=rec):
        torch.compile(lambda x: mlp(x).sum())(torch.randn(512, 64)).backward()
    torch._dynamo.reset()
    (report,) = rec.reports
    return report, seen[-1]


@pytest.mark.parametrize("bias, kept", [(True, "lpmf"), (False, "graph")])
def test_the_predicted_order_is_the_one_inductors_peak_memory_pass_keeps(monkeypatch, bias, kept):
    """With a bias, LPMF runs the bias gradient's sum and both copies of the expanded seed before
    the matmuls, and its estimate beats the graph's own order: Inductor keeps it. Without, every
    candidate ties and the pass keeps the graph's order. The prediction makes the same choice from
    the same estimates (the copies are nodes of their own, as the pass sees them)."""
    report, (estimates, inductor_kept) = _inductor_estimates(monkeypatch, bias)
    assert inductor_kept == kept
    assert report.problem.metadata["backward_order"] == kept
    assert report.plan.info["order_estimates"] == estimates
