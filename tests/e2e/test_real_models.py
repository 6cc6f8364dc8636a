"""Real models under remat: two SGD steps equal eager (losses, gradients, buffers) and the
measured peak stays under the cap remat reports (the fuzzer's check, ``test_fuzz_models.judge``;
a peak over the cap by an extern kernel's workspace or in a ``KNOWN_GAPS`` op passes with a warning).

CI: the Llama-style block (RMSNorm, rotary, SwiGLU, causal SDPA) and the top-2 mixture of experts
of ``models.py`` at "min". Slow (``python -m pytest -m slow tests/e2e/test_real_models.py``,
needs transformers, which is not a CI dependency): the transformers models of
``benchmarks/hf_models.py`` built from configs (GPT-2, Llama, BERT, T5, ViT, Mixtral) at "75%"
of plain torch.compile's peak and at "min". A "75%" that remat refuses must name a real floor:
the error's floor is above the cap, and "min" reaches it.
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

import pytest
import torch

import remat

from .models import make
from .test_fuzz_models import judge, train

torch.set_num_threads(2)
BENCHMARKS = str(Path(__file__).resolve().parents[2] / "benchmarks")
HF_MODELS = ("hf_gpt2", "hf_llama", "hf_bert", "hf_t5", "hf_vit", "hf_mixtral")


@pytest.fixture(autouse=True)
def _reuse_compiled_kernels():
    """Graph caches off (the remat partitioner runs in every test), Inductor's C++ kernels reused."""
    with torch._inductor.config.patch(force_disable_caches=False, fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        yield


def remat_vs_eager(model, inputs, loss_fn, budget):
    """(outcome of ``judge``, the report) for two steps under remat at ``budget`` against eager;
    raises what compiling raises (InfeasibleBudgetError)."""
    eager_model, compiled_model = copy.deepcopy(model), copy.deepcopy(model)
    ref = train(eager_model, lambda *xs: loss_fn(eager_model(*xs)), inputs)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *xs: loss_fn(compiled_model(*xs)), backend="remat",
                             options={"memory_budget": budget})
    got = train(compiled_model, compiled, inputs, measure=True)
    reports = remat.reports(compiled)
    return judge(ref, got, reports), reports[-1]


def assert_passes(name, budget, outcome) -> None:
    assert outcome.status in ("ok", "scratch", "known"), (name, budget, outcome)
    if outcome.status != "ok":  # over the cap by a workspace, or in a known gap of the code walk
        warnings.warn(f"{name} at {budget}: {outcome.detail}")


@pytest.mark.parametrize("name", ["llama", "moe"])
def test_small_blocks_at_min_match_eager_under_the_cap(name):
    model, inputs, loss_fn = make(name)
    outcome, report = remat_vs_eager(model, inputs, loss_fn, "min")
    assert_passes(name, "min", outcome)
    assert report.plan.names(remat.Decision.RECOMPUTE), "'min' must recompute something"
    assert report.budget_bytes < report.baseline_peak_bytes, (report.budget_bytes, report.baseline_peak_bytes)


def hf_factory(name):
    pytest.importorskip("transformers")
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    import hf_models

    model, inputs, loss_fn = hf_models.factory(name)
    return model, tuple(inputs), loss_fn


def figures(name, budget, outcome, report) -> str:
    """One line of the suite's table (printed; ``pytest -s`` shows it)."""
    line = (f"{name} at {budget}: {outcome.status}, measured {outcome.measured} B, cap {outcome.cap} B, "
            f"plain torch.compile {report.reference_peak_bytes} B")
    print(line)
    return line


@pytest.mark.slow
@pytest.mark.parametrize("name", HF_MODELS)
def test_transformers_models_at_75_percent_and_min(name):
    model, inputs, loss_fn = hf_factory(name)
    at_min, floor_report = remat_vs_eager(model, inputs, loss_fn, "min")
    figures(name, "min", at_min, floor_report)
    try:
        at_75, report = remat_vs_eager(model, inputs, loss_fn, "75%")
    except remat.InfeasibleBudgetError as e:  # refused: the floor it names is real
        print(f"{name} at 75%: refused, floor {e.min_peak_bytes} B over the cap {e.budget_bytes} B")
        assert e.min_peak_bytes > e.budget_bytes, str(e)
        # "min" reports the floor with the reserve (default 5 %) on top (remat.backend.min_cap)
        assert floor_report.budget_bytes <= 1.01 * e.min_peak_bytes / 0.95, (floor_report.budget_bytes, str(e))
        at_75 = None
    else:
        figures(name, "75%", at_75, report)
        assert report.budget_bytes <= 0.75 * report.reference_peak_bytes + 1, report
    assert_passes(name, "min", at_min)
    if at_75 is not None:
        assert_passes(name, "75%", at_75)
