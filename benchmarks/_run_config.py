"""Run one benchmark configuration of one example model and print one JSON line (the last line).

    python benchmarks/_run_config.py --model gpt --config remat_50 [--quick] [--steps 5]

Used by ``benchmarks/compare.py``, which starts a fresh process per configuration so that no
configuration inherits another's caches, compiled code or allocator state. Configurations:

eager          the model as written
checkpoint     eager with ``torch.utils.checkpoint`` (non-reentrant) around every block
compile        plain ``torch.compile`` (Inductor's default partitioner)
amb_0.5 ...    ``torch._functorch.config.activation_memory_budget`` = 0.5 / 0.2 / 0
remat_100      remat's store-all plan (``solver="store_all"`` under a cap no model here reaches): remat
               recomputes nothing; its step is the baseline of remat's predicted added time
remat_75 ...   ``torch.compile(backend="remat")`` with a cap of 75 / 50 / 35 % of plain torch.compile's peak
remat_300MiB   remat at an absolute cap (any size with a unit)
remat_min      remat at memory_budget="min": the smallest peak it reaches, as Inductor's code allocates it
remat_50@measured   any remat configuration with ``cost_model="measured"`` (the record says whether
               the profile cache in ``$REMAT_CACHE_DIR`` was cold or warm)

Models: the examples and the transformers models of ``benchmarks/hf_models.py`` (hf_gpt2, ...);
``checkpoint`` wraps every block: ``model.blocks``, else the longest ``nn.ModuleList`` of one class.

The step is model + loss compiled as one function, then ``.backward()``. One warm-up step
(compilation) comes first; grads are set to None before every step; the measured peak is one
profiled step (``remat.measure.measure_step``); the step time is the median of several unprofiled
steps (at least ``--steps``, more while they fit in ``--min-time`` seconds). The gradient error is the largest absolute difference from an eager step over all
parameters, with the same seed (dropout included) and ``torch._inductor.config.fallback_random``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ("gpt", "evoformer", "cnn", "mlp")
HF_MODELS = ("hf_gpt2", "hf_llama", "hf_bert", "hf_t5", "hf_vit", "hf_mixtral",  # benchmarks/hf_models.py
             "hf_qwen2", "hf_neox", "hf_convnext", "hf_whisper")
CONFIGS = (
    "eager", "checkpoint", "compile", "amb_0.5", "amb_0.2", "amb_0",
    "remat_100", "remat_75", "remat_50", "remat_35", "remat_min",
)
# factory keyword arguments: default sizes (a CPU step takes well under a second to a few
# seconds) and --quick sizes (compilation dominates; everything is smaller)
SIZES = {
    "gpt": ({}, {"batch": 4, "layers": 2, "seq": 64}),
    "evoformer": ({"residues": 48, "sequences": 16}, {"blocks": 1, "residues": 32, "sequences": 8}),
    "cnn": ({}, {"batch": 16, "stages": 2}),
    "mlp": ({}, {"batch": 2048, "d": 256, "hidden": 1024}),  # the core issue's MLP (batch 4096, d 1024, hidden 4096) by default; quick: activations over weights
}
SEED = 1234
STORE_ALL_CAP = "1TiB"  # remat_100's cap: above any store-all peak of these models, so no plan is lowered


def valid_config(name: str) -> bool:
    """A listed configuration, or remat_ with an absolute cap such as remat_300MiB; a remat one
    may end in ``@measured``."""
    if name.startswith("remat_") and name.endswith("@measured"):
        name = name.removesuffix("@measured")
    if name in CONFIGS:
        return True
    if not name.startswith("remat_"):
        return False
    from remat.config import parse_budget
    from remat.errors import ConfigError

    try:
        return parse_budget(name[6:]).bytes is not None
    except ConfigError:
        return False


def remat_options(level: str) -> dict:
    """remat's memory options for a configuration named ``remat_<level>``: "100" (the store-all
    plan), "min", a percentage of plain torch.compile's peak, or a cap with a unit."""
    if level == "100":
        return {"memory_budget": STORE_ALL_CAP, "solver": "store_all"}
    if level == "min":
        return {"memory_budget": "min"}  # remat plans at its floor, as Inductor's code allocates it
    if level.isdigit():
        return {"memory_budget": f"{int(level)}%"}
    return {"memory_budget": level}  # an absolute cap such as remat_300MiB


def load_example(name: str, quick: bool):
    """(model, inputs, loss_fn, sizes) of an example (at its quick sizes) or a transformers model."""
    from remat.cli import load_module

    if name in HF_MODELS:
        import hf_models

        model, inputs, loss_fn = hf_models.factory(name)
        return model, tuple(inputs), loss_fn, {"hidden": hf_models.HIDDEN, "layers": hf_models.LAYERS}
    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS + HF_MODELS)}")
    module = load_module(str(ROOT / "examples" / f"{name}.py"))
    kwargs = SIZES[name][1 if quick else 0]
    model, inputs, loss_fn = module.factory(**kwargs)
    return model, tuple(inputs), loss_fn, kwargs


def blocks_of(model):
    """The repeated blocks to checkpoint: ``model.blocks``, else the longest ``nn.ModuleList`` whose
    modules are all of one class (a transformers model's layers)."""
    import torch.nn as nn

    if hasattr(model, "blocks"):
        return list(model.blocks)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len({type(c) for c in m}) == 1]
    if not lists:
        raise SystemExit("checkpoint: the model has no blocks")
    return list(max(lists, key=len))


def _checkpointed(forward):
    from torch.utils.checkpoint import checkpoint

    return lambda *a, **kw: checkpoint(forward, *a, use_reentrant=False, **kw)


def _profile_cache_state() -> str:
    """"cold" when the profile cache directory holds no profile yet, else "warm"."""
    from remat.profile import cache_dir

    return "warm" if any(cache_dir().glob("*.json")) else "cold"


def _remat_error(e: BaseException):
    """The remat error (InfeasibleBudgetError...) inside Dynamo's wrapping, or None."""
    from remat.errors import RematError

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, RematError):
            return e
        e = getattr(e, "inner_exception", None) or e.__cause__ or e.__context__
    return None


def _grads(model):
    return {n: (p.grad.detach().clone() if p.grad is not None else None) for n, p in model.named_parameters()}


def _zero(model):
    for p in model.parameters():
        p.grad = None


def run(model_name: str, config: str, quick: bool, steps: int, time_limit: float, min_time: float = 2.0,
        threads: int = 2) -> dict:
    """One configuration's record: compile (the first step), plan figures (remat) or the code's
    peak (plain torch.compile, activation_memory_budget), measured peak, step times and the
    gradient error from eager; or the remat error that refused the cap."""
    import torch
    import torch._functorch.config as fconfig
    import torch._inductor.config as iconfig

    from remat.measure import measure_step

    torch.set_num_threads(threads)
    # every configuration compiles from scratch (the Inductor kernel cache on disk is shared):
    # no FX-graph or AOTAutograd cache, so remat's partitioner always runs and reports
    fconfig.enable_autograd_cache = False
    iconfig.fx_graph_cache = False
    iconfig.fallback_random = True

    out: dict = {"model": model_name, "config": config, "quick": quick}
    model, inputs, loss_fn, sizes = load_example(model_name, quick)
    out["sizes"] = sizes
    out["parameters"] = sum(p.numel() for p in model.parameters())
    ref = eager_grads(model, inputs, loss_fn)
    fn = configured(config, model, loss_fn, time_limit, out)
    step = lambda: fn(*inputs).backward()  # noqa: E731

    _zero(model)
    t0 = time.perf_counter()
    if not (warmed_up(step, out) if config.startswith("remat") or config in ("eager", "checkpoint")
            else warmed_up_reading_code(step, out)):
        return out
    first = time.perf_counter() - t0
    if config.startswith("remat"):
        from remat import reports

        out.update(plan_figures(reports(getattr(fn, "compiled", fn))))
    _zero(model)
    m = measure_step(step)  # the measured peak: one profiled step
    out["measured_peak_bytes"] = int(m.peak_bytes)
    out["profiled_step_s"] = m.seconds
    out.update(step_times(step, model, steps, min_time))
    out["compile_time_s"] = max(0.0, first - out["step_time_s"]) if config not in ("eager", "checkpoint") else 0.0
    _zero(model)
    torch.manual_seed(SEED)
    step()
    out["grad_max_abs_err"] = grad_error(ref, _grads(model))
    return out


def eager_grads(model, inputs, loss_fn) -> dict:
    """The gradients of one eager step of a copy of ``model``, with the run's seed."""
    import torch

    ref_model = copy.deepcopy(model)
    torch.manual_seed(SEED)
    loss_fn(ref_model(*inputs)).backward()
    return _grads(ref_model)


def configured(config: str, model, loss_fn, time_limit: float, out: dict):
    """The function ``config`` runs: model + loss, eager, checkpointed or compiled. A remat
    configuration with measured costs records whether the profile cache was cold or warm in ``out``."""
    import torch._functorch.config as fconfig

    plain = lambda *xs: loss_fn(model(*xs))  # noqa: E731
    if config == "eager":
        return plain
    if config == "checkpoint":
        for block in blocks_of(model):
            block.forward = _checkpointed(block.forward)
        return plain
    if config == "compile":
        return _compiled(model, loss_fn)
    if config.startswith("amb_"):
        fconfig.activation_memory_budget = float(config[4:])
        return _compiled(model, loss_fn)
    if config.startswith("remat_"):
        level, _, costs = config[6:].partition("@")
        options = {"time_limit": time_limit, **remat_options(level)}
        if costs:
            options["cost_model"] = costs
            out["profile_cache"] = _profile_cache_state()
        return _compiled(model, loss_fn, backend="remat", options=options)
    raise SystemExit(f"unknown config {config!r}; choose from {', '.join(CONFIGS)}")


# ``REMAT_BENCH_LOSS_OUTSIDE=1``: torch.compile the model alone and compute the loss after it, uncompiled,
# the outputs held through the backward (as a training loop that takes the model's outputs does); by
# default model + loss compile together
LOSS_OUTSIDE = os.environ.get("REMAT_BENCH_LOSS_OUTSIDE") == "1"


def _compiled(model, loss_fn, **compile_kwargs):
    """The step function of a compiled configuration: torch.compile of model + loss, or of the model
    alone followed by the loss (``LOSS_OUTSIDE``); what torch.compile returned is its ``compiled``."""
    import torch

    if not LOSS_OUTSIDE:
        return torch.compile(lambda *xs: loss_fn(model(*xs)), **compile_kwargs)
    compiled = torch.compile(model, **compile_kwargs)

    def step(*xs):
        outputs = compiled(*xs)
        loss = loss_fn(outputs)
        loss.held_outputs = outputs  # until the backward ends, as a training loop's variable holds them
        return loss

    step.compiled = compiled
    return step


def warmed_up(step, out: dict) -> bool:
    """Run the first step (it compiles). A remat error (an infeasible cap...) goes into ``out``
    and returns False; any other error propagates."""
    from remat.errors import InfeasibleBudgetError

    try:
        step()
    except Exception as e:
        err = _remat_error(e)
        if err is None:
            raise
        out["error"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
        if isinstance(err, InfeasibleBudgetError):
            out["budget_bytes"] = err.budget_bytes
            out["min_peak_bytes"] = err.min_peak_bytes
        return False
    return True


def warmed_up_reading_code(step, out: dict) -> bool:
    """``warmed_up``, reading the peak of the code that Inductor generates for the step (plain
    torch.compile, activation_memory_budget) into ``out["inductor_peak_bytes"]``, as remat's
    check reads it (backward compiled with the forward, extern kernels' scratch measured); not
    recorded unless the step compiled exactly one forward and one backward graph."""
    import torch

    from remat.backend import _backward_compiled_now
    from remat.inductor_check import InductorPeaks, installed
    from remat.wrapper_memory import collect_wrapper_code

    peaks = InductorPeaks()
    with torch._inductor.config.patch(installed(peaks)), _backward_compiled_now(), \
            collect_wrapper_code() as peaks.codes:
        ok = warmed_up(step, out)
    code = peaks.code_peaks
    if ok and code and len(code) == 2:
        out["inductor_peak_bytes"] = max(code)
    return ok


def step_peak(reports: list, figure) -> int | None:
    """The step's peak of a per-graph ``figure`` (a report's own peak): the largest over graphs of
    that peak with what is held outside the graph while it runs (``resident_before_bytes``: what
    earlier graphs keep, buffers outside the graphs); None when any graph lacks the figure."""
    peaks = [figure(r) for r in reports]
    if not peaks or None in peaks:
        return None
    return max(p + r.resident_before_bytes for p, r in zip(peaks, reports))


def plan_figures(reports: list) -> dict:
    """remat's figures of a step's graph reports: predicted, modelled store-all and Inductor's
    peaks and the cap as the step's (``step_peak``; the cap: the largest graph's share with what
    is held outside it), the reference peak (already the step's), decisions, predicted added
    time, solve and planning time summed; {} without reports."""
    from remat.plan import Decision

    if not reports:
        return {}
    caps = [r.step_cap_bytes for r in reports]
    references = [r.reference_peak_bytes for r in reports]
    return {
        "predicted_peak_bytes": step_peak(reports, lambda r: r.timeline.peak_bytes),
        "baseline_peak_bytes": step_peak(reports, lambda r: r.baseline_peak_bytes),
        "budget_bytes": max(caps) if None not in caps else None,
        "inductor_peak_bytes": step_peak(reports, lambda r: r.inductor_peak_bytes),
        "plans_made": max(r.plans_made for r in reports),
        "reference_peak_bytes": max(references) if None not in references else None,
        "compiled_with": sorted({r.compiled_with for r in reports}),
        "cost_notes": [r.cost_model for r in reports],
        "solve_time_s": sum(r.plan.solve_time_s for r in reports),
        "partition_time_s": sum(r.partition_time_s for r in reports),
        "solver_status": ",".join(r.plan.status for r in reports),
        "predicted_added_s": sum(r.timeline.added_time for r in reports),
        "decisions": {d.value: sum(len(r.plan.names(d)) for r in reports) for d in Decision},
        "graphs": len(reports),
    }


def step_times(step, model, steps: int, min_time: float) -> dict:
    """Unprofiled steps: at least ``steps``, more while they fit in ~``min_time`` seconds (at most
    50; on a shared machine many samples keep the median away from bursts of contention)."""
    times = []
    t_start = time.perf_counter()
    while len(times) < steps or (time.perf_counter() - t_start < min_time and len(times) < 50):
        _zero(model)
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"step_times_s": times, "step_time_s": statistics.median(times), "step_time_min_s": min(times)}


def grad_error(ref: dict, got: dict) -> float:
    """The largest absolute difference between two gradient dicts (inf where only one has a gradient)."""
    err = 0.0
    for n, g in ref.items():
        h = got.get(n)
        if g is None and h is None:
            continue
        if g is None or h is None:
            return float("inf")
        err = max(err, (h - g).abs().max().item())
    return err


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, choices=MODELS + HF_MODELS)
    ap.add_argument("--config", required=True, help=f"{', '.join(CONFIGS)} or remat_<cap with a unit>")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=5, help="unprofiled steps to time at least (median)")
    ap.add_argument("--min-time", type=float, default=2.0, help="keep timing steps for this long (at most 50)")
    ap.add_argument("--time-limit", type=float, default=60.0, help="remat solver time limit (s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    try:
        out = run(args.model, args.config, args.quick, args.steps, args.time_limit, args.min_time, args.threads)
    except Exception as e:  # one JSON line whatever happens; the traceback goes to stderr
        traceback.print_exc()
        msg = str(e).strip().splitlines()
        out = {"model": args.model, "config": args.config, "quick": args.quick,
               "error": f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]}
    out["wall_s"] = time.perf_counter() - t0
    out["pid"] = os.getpid()
    sys.stdout.flush()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
