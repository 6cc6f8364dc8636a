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

import sys
import types
from typing import Any, Callable

import torch

from .backend import RematPartitioner, _Stop
from .planning import GraphReport
from .config import RematConfig
from .errors import RematError
from .report import Report, load, load_plan

__all__ = ["Report", "analyze", "capture_step", "default_loss", "load", "load_plan"]


def default_loss(outputs: Any) -> torch.Tensor:
    """Sum of every floating-point tensor in the model's outputs."""
    leaves = [t for t in torch.utils._pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not leaves:
        raise TypeError("the model returned no floating-point tensor; pass loss_fn=")
    return sum(t.sum() for t in leaves)


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
    """Plan a model's training step offline (fake tensors, no step runs); returns a Report."""
    cfg = RematConfig.from_options({"memory_budget": memory_budget, **options})
    report = capture_step(model, example_inputs, loss_fn, RematPartitioner(cfg, analyze_only=True))
    return Report(report, cfg)


# ``remat.analyze`` is both this module and (in ``remat/__init__``) the function: importing the
# module replaces the package attribute, so make the module callable as the function too.
class _CallableModule(types.ModuleType):
    def __call__(self, model, example_inputs, memory_budget=None, loss_fn=None, **options) -> Report:
        return analyze(model, example_inputs, memory_budget=memory_budget, loss_fn=loss_fn, **options)


sys.modules[__name__].__class__ = _CallableModule
