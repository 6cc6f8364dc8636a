"""Measure the real peak memory of a training step.

CPU: torch.profiler's allocation events, summed in order; the peak of the running sum is the
step's peak of tensor memory above what was allocated before it (frees of older tensors count
as negative). CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the step.
``measure_compiled`` compiles model+loss with backend "remat" and measures one of its steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class StepMeasurement:
    peak_bytes: int  # peak above the memory allocated before the step
    seconds: float  # wall time of the step (profiled on CPU: slower than unprofiled)


def _allocation_events(prof) -> list[tuple[int, int]]:
    from torch._C._profiler import _EventType

    out = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation:
            f = e.extra_fields
            if f.device.type == "cpu":
                out.append((e.start_time_ns, f.alloc_size))
        stack.extend(e.children)
    out.sort()
    return out


def measure_step(step: Callable[[], object], device: str = "cpu") -> StepMeasurement:
    """Run ``step()`` once and return its peak memory above what was allocated before it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        return StepMeasurement(torch.cuda.max_memory_allocated() - base, time.perf_counter() - t0)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        t0 = time.perf_counter()
        step()
        seconds = time.perf_counter() - t0
    running = peak = 0
    for _, size in _allocation_events(prof):
        running += size
        peak = max(peak, running)
    return StepMeasurement(peak, seconds)


def measure_compiled(model, example_inputs, loss_fn=None, memory_budget=None, **options):
    """Compile model+loss with backend "remat", run one warm-up step, then measure one step.

    Returns ``(StepMeasurement, [GraphReport, ...])``: the measured peak above the memory
    allocated before the step, and what the backend planned for each graph.
    """
    from .analyze import default_loss
    from .compilation import reports as reports_of

    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    loss_of = loss_fn or default_loss
    opts = dict(options)
    if memory_budget is not None:
        opts["memory_budget"] = memory_budget
    params = [p for p in (model.parameters() if isinstance(model, torch.nn.Module) else [])]
    torch._dynamo.reset()
    step = torch.compile(lambda *xs: loss_of(model(*xs)), backend="remat", options=opts)
    import torch._functorch.config as fconfig

    # no AOTAutograd/FX-graph cache hit, so that the partitioner runs and reports (kernels may be cached)
    with fconfig.patch(enable_autograd_cache=False), torch._inductor.config.patch(fx_graph_cache=False):
        step(*example_inputs).backward()  # compiles: the backend plans and reports
        reports = reports_of(step)
        for p in params:
            p.grad = None
        m = measure_step(lambda: step(*example_inputs).backward())
    for p in params:
        p.grad = None
    torch._dynamo.reset()
    return m, reports
