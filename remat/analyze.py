"""remat.analyze: the planning half of the backend, run offline on a model's example inputs.

Dynamo and AOTAutograd trace the training step on fake tensors; the partitioner plans the joint
graph and stops the compilation there, so no forward or backward step runs and no activation
memory is allocated.

    report = remat.analyze(model, example_inputs, memory_budget="60%", loss_fn=loss_fn)
    print(report.summary())

The ``Report`` (explanation, timeline plot, JSON) lives in ``remat.report``, the sweep of caps in
``remat.pareto``; ``Report``, ``load`` and ``load_plan`` are importable from here too.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
from typing import Any, Callable

import torch

from .backend import RematPartitioner, _Stop
from .planning import GraphReport
from .config import RematConfig
from .errors import RematError
from .measure import default_loss
from .report import Report, load, load_plan

__all__ = ["Report", "analyze", "capture_step", "default_loss", "load", "load_plan"]


def capture_step(model: Callable, example_inputs: Any, loss_fn: Callable | None, partitioner: RematPartitioner) -> GraphReport:
    """Trace model+loss with Dynamo/AOTAutograd/Inductor's joint passes and plan it."""
    from torch._inductor.compile_fx import compile_fx

    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    loss_of = loss_fn or default_loss

    def step(*inputs):
        return loss_of(model(*inputs))

    def backend(gm, inputs):
        return compile_fx(gm, inputs, config_patches={"custom_partitioner_fn": partitioner})

    torch._dynamo.reset()
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    try:
        with torch._inductor.config.patch(force_disable_caches=True):
            compiled(*example_inputs)
    except Exception as e:  # Dynamo wraps backend errors; find our result or the real error
        err: BaseException | None = e
        while err is not None:
            if isinstance(err, _Stop):
                return err.report
            if not isinstance(err, torch._dynamo.exc.BackendCompilerFailed) and err is not e and isinstance(err, RematError):
                raise err from None
            err = getattr(err, "inner_exception", None) or err.__cause__
        raise
    finally:
        torch._dynamo.reset()
    raise RuntimeError("the model's step has no backward graph: do its parameters or inputs require grad?")


def analyze(model, example_inputs, memory_budget=None, loss_fn=None, **options) -> Report:
    """Plan a model's training step offline (fake tensors, no step runs); returns a Report.

    ``dynamic_range={"x.0": (lo, hi)}`` plans over a range of sizes: dimension 0 of the model's
    argument ``x`` (a name of its forward's parameters, or the position of an example input:
    ``"0.0"``) is traced as a size symbol over lo..hi, as ``mark_dynamic(x, 0, min=lo, max=hi)``
    would; the report then gives the peak as a formula and at the range's ends (``Report.dynamic``)."""
    cfg = RematConfig.from_options({"memory_budget": memory_budget, **options})
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    marked = mark_ranges(model, tuple(example_inputs), cfg.dynamic_range)
    planning = dataclasses.replace(cfg, dynamic_range=None)  # the trace carries the ranges (mark_dynamic)
    report = capture_step(model, marked, loss_fn, RematPartitioner(planning, analyze_only=True))
    return Report(report, cfg)


def mark_ranges(model: Callable, example_inputs: tuple, dynamic_range: tuple | None) -> tuple:
    """``example_inputs`` with each dimension that ``dynamic_range`` names (``"x.0"``: parameter
    ``x`` of the model's forward, or ``"0.0"``: the first input) marked dynamic over its range,
    on a detached alias of the input (the caller's tensor keeps no mark). ConfigError for a bare
    pair (offline, remat must be told which dimension changes), a name that is no input, or an
    example size outside its range."""
    from .config import ALL_SIZES
    from .errors import ConfigError

    inputs, copies = list(example_inputs), {}
    names = _input_names(model, len(inputs))
    for key, (lo, hi) in dynamic_range or ():
        name, _, dim = key.rpartition(".")
        index = int(name) if name.isdigit() else names.index(name) if name in names else None
        if key == ALL_SIZES or index is None or index >= len(inputs) or not dim.isdigit():
            raise ConfigError(f"dynamic_range key {key!r}: offline, name an input dimension as 'x.0' (x among "
                              f"{names}) or '0.0' (the first input), e.g. {{'{names[0] if names else 0}.0': (1, 64)}}")
        x, d = inputs[index], int(dim)
        if not isinstance(x, torch.Tensor) or d >= x.dim() or not lo <= x.shape[d] <= hi:
            size = x.shape[d] if isinstance(x, torch.Tensor) and d < x.dim() else "no such dimension"
            raise ConfigError(f"dynamic_range {key!r}: ({lo}, {hi}) must hold the example input's size ({size})")
        if index not in copies:
            copies[index] = inputs[index] = x.detach().requires_grad_(x.requires_grad)
        torch._dynamo.mark_dynamic(inputs[index], d, min=lo, max=hi)
    return tuple(inputs)


def _input_names(model: Callable, count: int) -> list[str]:
    """The names of the model's first ``count`` positional parameters (its forward's, for a module)."""
    fn = model.forward if isinstance(model, torch.nn.Module) else model
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:count]


# ``remat.analyze`` is both this module and (in ``remat/__init__``) the function: importing the
# module replaces the package attribute, so make the module callable as the function too.
class _CallableModule(types.ModuleType):
    def __call__(self, model, example_inputs, memory_budget=None, loss_fn=None, **options) -> Report:
        return analyze(model, example_inputs, memory_budget=memory_budget, loss_fn=loss_fn, **options)


sys.modules[__name__].__class__ = _CallableModule
