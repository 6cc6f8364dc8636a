"""The Inductor check's plumbing: it never breaks a compile, re-planning finds its cause, and the
walk of the code counts what extern kernels allocate while they run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._functorch import config as functorch_config
from torch._inductor import config as inductor_config
from torch._inductor.compile_fx import compile_fx

from remat.backend import _caused_by
from remat.errors import InfeasibleBudgetError
from remat.inductor_check import InductorPeaks
from remat.measure import measure_step
from remat.wrapper_memory import collect_wrapper_code, wrapper_peaks


def test_no_estimate_outside_inductor_leaves_nodes_alone():
    peaks = InductorPeaks()
    nodes = ["a", "b"]
    assert peaks(nodes) is nodes  # no graph being compiled here: nothing recorded, nothing raised
    assert peaks.peaks == [] and peaks.peak_bytes is None


def test_caused_by_walks_the_chain():
    inner = InfeasibleBudgetError(100, 200)
    try:
        try:
            raise inner
        except InfeasibleBudgetError as e:
            raise RuntimeError("wrapped by the compiler") from e
    except RuntimeError as outer:
        assert _caused_by(outer, InfeasibleBudgetError) is inner
        assert _caused_by(outer, KeyError) is None


CALLER_BYTES = 8  # the loss summed outside the compiled call and the gradient seeding its backward


def conv_case():
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    return conv, (torch.randn(1, 3, 4, 4),)


def sdpa_case():
    torch.manual_seed(0)
    return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            tuple(torch.randn(2, 2, 8, 8, requires_grad=True) for _ in range(3)))


@pytest.mark.parametrize("case", [conv_case, sdpa_case], ids=["conv", "sdpa"])
def test_extern_workspaces_bring_the_code_walk_to_the_measured_peak(case, tmp_path, monkeypatch):
    """The smallest graphs whose extern kernel allocates scratch memory (the CPU conv's columns,
    the CPU attention backward's buffers): the code alone is under the measured peak, the code
    with the measured workspaces equals it (but for the caller's loss and seed)."""
    monkeypatch.setenv("REMAT_CACHE_DIR", str(tmp_path))
    fn, inputs = case()
    peaks = InductorPeaks()

    def backend(gm, example_inputs):
        with functorch_config.patch(force_non_lazy_backward_lowering=True), \
                collect_wrapper_code() as peaks.codes:
            return compile_fx(gm, example_inputs, config_patches={"_post_fusion_custom_pass": peaks})

    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        compiled = torch.compile(fn, backend=backend)
        compiled(*inputs).sum().backward()
    measured = measure_step(lambda: compiled(*inputs).sum().backward()).peak_bytes
    assert peaks.workspaces[1], "the backward's extern kernel allocates scratch"
    code_alone = wrapper_peaks(peaks.codes, peaks.itemsizes, peaks.size_hints)
    assert max(w.peak_bytes for w in code_alone) + CALLER_BYTES < measured
    assert max(peaks.code_peaks) + CALLER_BYTES == measured


def test_plain_compiles_code_walk_is_its_measured_peak_though_its_estimate_is_not():
    """Plain torch.compile reorders its kernels for peak memory after the post-fusion pass (remat's
    plans turn that off) and reuses freed buffers (``bufN = bufM; del bufM  # reuse``): on an MLP
    the estimate made in the pass, of the order before the reorder, is over the measured backward
    peak, and the walk of the generated code, reordered, equals it (but for the caller's loss)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
                                  for _ in range(2)))
    x = torch.randn(64, 8)
    peaks = InductorPeaks()
    with inductor_config.patch(fx_graph_cache=False, _post_fusion_custom_pass=peaks), \
            functorch_config.patch(enable_autograd_cache=False), collect_wrapper_code() as peaks.codes:
        step = torch.compile(lambda x: model(x).sum())
        step(x).backward()
    assert any("# reuse" in code for code in peaks.codes)
    measured = measure_step(lambda: step(x).backward()).peak_bytes
    assert max(peaks.code_peaks) + CALLER_BYTES == measured
    assert max(peaks.peaks) > measured


def test_extern_scratch_reaches_the_next_plans_slots(tmp_path, monkeypatch):
    """The conv's measured scratch is kept by the name of the graph op its kernel runs
    (``KernelGroups.scratch``), and ``with_kernels`` adds it to the fixed bytes of that op's slot:
    the store-all peak at a slot rises by exactly its scratch; a name of no slot changes nothing."""
    from remat.kernel_groups import KernelGroups, with_kernels
    from remat.simulate import simulate, store_all_plan

    from .synthetic import chain_problem

    monkeypatch.setenv("REMAT_CACHE_DIR", str(tmp_path))
    fn, inputs = conv_case()
    peaks = InductorPeaks()
    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        compiled = torch.compile(fn, backend=lambda gm, ex: compile_fx(
            gm, ex, config_patches={"_post_fusion_custom_pass": peaks}))
        compiled(*inputs).sum().backward()
    scratch = dict(peaks.kernel_groups.scratch)
    assert set(scratch) == {"convolution_backward"} | ({"convolution"} & set(scratch))
    assert sorted(scratch.values()) == sorted(v for w in peaks.workspaces for v in w.values())

    p = chain_problem()
    at = simulate(p, store_all_plan(p)).device_bytes
    slot = p.slots[len(p.slots) - 2]
    q = with_kernels(p, KernelGroups(scratch=((slot.name, 12345), ("no such op", 999))))
    assert [b - a for a, b in zip(at, simulate(q, store_all_plan(q)).device_bytes)] == \
        [12345 if s.name == slot.name else 0 for s in p.slots]
    assert with_kernels(p, KernelGroups(scratch=(("no such op", 999),))) is p
