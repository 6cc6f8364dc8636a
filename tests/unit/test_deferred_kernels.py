"""Compiles whose kernels are built at their first call (``remat.deferred_kernels``): the check
reads the same code from them as from a full compile, and they run as Inductor's own."""

from __future__ import annotations

import contextlib

import torch
from torch._functorch import config as functorch_config
from torch._inductor import config as inductor_config
from torch._inductor.compile_fx import compile_fx

from remat.deferred_kernels import deferred_kernel_builds
from remat.inductor_check import InductorPeaks
from remat.wrapper_memory import collect_wrapper_code


def _mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    return model, torch.randn(16, 8)


def _compiled(model, deferred: bool):
    """The model + loss compiled with both graphs compiled now, their code read by an InductorPeaks,
    and the deferred modules of the compile (empty unless ``deferred``)."""
    peaks, modules = InductorPeaks(), []

    def backend(gm, example_inputs):
        with functorch_config.patch(force_non_lazy_backward_lowering=True), collect_wrapper_code() as peaks.codes, \
                (deferred_kernel_builds() if deferred else contextlib.nullcontext([])) as found:
            compiled = compile_fx(gm, example_inputs, config_patches={"_post_fusion_custom_pass": peaks})
        modules.extend(found)
        return compiled

    return torch.compile(lambda x: model(x).sum(), backend=backend), peaks, modules


def _without_aot_id(code: str) -> str:
    """The code but for its first line, '# AOT ID: ['0_forward']', which counts the compiles."""
    assert code.startswith("# AOT ID:")
    return code.split("\n", 1)[1]


def test_a_deferred_compile_reads_the_same_code_and_builds_its_kernels_at_its_first_call():
    model, x = _mlp()
    expected = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        full, full_peaks, _ = _compiled(model, deferred=False)
        full(x)
        deferred, peaks, modules = _compiled(model, deferred=True)
        loss = deferred(x)  # compiles both graphs; runs the forward: its module is loaded now
    assert len(modules) == 2 and modules[0].loaded and not modules[1].loaded
    assert [_without_aot_id(c) for c in peaks.codes] == [_without_aot_id(c) for c in full_peaks.codes]
    assert peaks.code_peaks == full_peaks.code_peaks and peaks.code_peaks
    assert peaks.kernel_groups.key() == full_peaks.kernel_groups.key()
    got = torch.autograd.grad(loss, list(model.parameters()))
    assert modules[1].loaded
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_the_environment_turns_the_deferral_off(monkeypatch):
    monkeypatch.setenv("REMAT_DEFER_KERNEL_BUILDS", "0")
    model, x = _mlp()
    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        compiled, peaks, modules = _compiled(model, deferred=True)
        compiled(x).backward()
    assert modules == [] and len(peaks.codes) == 2
