"""remat.analyze: the planning half of the backend, run offline on a model's example inputs.

Dynamo and AOTAutograd trace the training step on fake tensors; the partitioner plans the joint
graph and stops the compilation there, so no forward or backward step runs and no activation
memory is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .backend import GraphReport, RematPartitioner, _Stop
from .config import RematConfig
from .plan import Decision


def default_loss(outputs: Any) -> torch.Tensor:
    """Sum of every floating-point tensor in the model's outputs."""
    leaves = [t for t in torch.utils._pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not leaves:
        raise TypeError("the model returned no floating-point tensor; pass loss_fn=")
    return sum(t.sum() for t in leaves)


@dataclass
class Report:
    """What remat decides for a model's training step under a budget, and what it predicts."""

    graph: GraphReport
    config: RematConfig

    @property
    def problem(self):
        return self.graph.problem

    @property
    def plan(self):
        return self.graph.plan

    @property
    def memory(self):
        """The simulator's MemoryTimeline of the plan."""
        return self.graph.timeline

    @property
    def baseline_peak_bytes(self) -> int:
        return self.graph.baseline_peak_bytes

    @property
    def budget_bytes(self) -> int | None:
        return self.graph.budget_bytes

    @property
    def predicted_peak_bytes(self) -> int:
        return self.graph.timeline.peak_bytes

    @property
    def solve_time_s(self) -> float:
        return self.graph.plan.solve_time_s

    @property
    def solver_status(self) -> str:
        return self.graph.plan.status

    @property
    def added_time_s(self) -> float:
        return self.graph.timeline.added_time

    @property
    def decisions(self) -> dict[str, Decision]:
        return dict(self.graph.plan.decisions)

    def summary(self) -> str:
        from .backend import summary_line

        return summary_line(self.graph)


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
            if not isinstance(err, torch._dynamo.exc.BackendCompilerFailed) and err is not e and _is_remat_error(err):
                raise err from None
            err = getattr(err, "inner_exception", None) or err.__cause__
        raise
    finally:
        torch._dynamo.reset()
    raise RuntimeError("the model's step has no backward graph: do its parameters or inputs require grad?")


def _is_remat_error(err: BaseException) -> bool:
    from .errors import RematError

    return isinstance(err, RematError)


def analyze(model, example_inputs, memory_budget=None, loss_fn=None, **options) -> Report:
    cfg = RematConfig.from_options({"memory_budget": memory_budget, **options})
    report = capture_step(model, example_inputs, loss_fn, RematPartitioner(cfg, analyze_only=True))
    return Report(report, cfg)
