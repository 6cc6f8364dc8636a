"""remat.analyze: the planning half of the backend, run offline on a model's example inputs.

Dynamo and AOTAutograd trace the training step on fake tensors; the partitioner plans the joint
graph and stops the compilation there, so no forward or backward step runs and no activation
memory is allocated.

    report = remat.analyze(model, example_inputs, memory_budget="60%", loss_fn=loss_fn)
    print(report.summary())

The ``Report`` (explanation, timeline plot, JSON) lives in ``remat.report``, the sweep of caps in
``remat.pareto``; ``Report``, ``load`` and ``load_plan`` are importable from here too.

``measure_peaks`` then runs the step for real (``remat analyze --measure``): compiled with backend
remat and with plain torch.compile, each graph's peak as remat's model predicts it, as Inductor's
generated code allocates it (``remat.wrapper_memory``) and as measured, side by side.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .backend import RematPartitioner, _Stop
from .planning import GraphReport
from .config import RematConfig
from .errors import RematError
from .measure import default_loss
from .report import Report, load, load_plan

__all__ = ["MeasuredPeaks", "PeakRow", "Report", "analyze", "capture_step", "default_loss", "load", "load_plan",
           "measure_peaks"]


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


@dataclass(frozen=True)
class PeakRow:
    """One compiled graph's or step's peak, in bytes above what was resident before the step: as
    remat's model predicts it, as Inductor's generated code allocates it, as measured; None where
    there is no such figure (plain torch.compile's partition is modelled only for a ratio budget;
    its code's step is read for one graph, or for several under a ratio budget, whose reference
    the backend read from plain's code; a graph of several is measured only as part of its step)."""

    label: str
    predicted_bytes: int | None
    code_bytes: int | None
    measured_bytes: int | None = None

    def ratio(self, figure: int | None) -> float | None:
        """``figure`` over the measured peak (None when either is missing)."""
        return figure / self.measured_bytes if figure is not None and self.measured_bytes else None


@dataclass(frozen=True)
class MeasuredPeaks:
    """What ``measure_peaks`` ran: remat's graphs (each with what the step holds outside it while it
    runs), remat's step, plain torch.compile's step, the cap and both step times."""

    graphs: tuple[PeakRow, ...]
    remat: PeakRow
    plain: PeakRow
    cap_bytes: int | None
    reports: tuple[GraphReport, ...]
    remat_step_s: float | None
    plain_step_s: float | None


def measure_peaks(model, example_inputs, loss_fn=None, memory_budget=None, plain_predicted: int | None = None,
                  repeats: int = 3, **options) -> MeasuredPeaks:
    """Compile model+loss with backend remat (``memory_budget``, ``options``) and with plain
    torch.compile, measure one real step of each (``remat.measure``; ``repeats`` unprofiled steps
    time them) and read each compiled graph's peak from its generated code. ``plain_predicted``:
    remat's model of plain torch.compile's peak, when the caller has it (``remat.analyze`` under a
    ratio budget: ``Report.graph.reference_peak_bytes``). The step's cap is the largest graph's
    share with what is held outside it (under a ratio each graph's differs); "min" plans each of
    several graphs on its own, counting nothing held outside it: their step then has no
    predicted, code or cap figure."""
    from .compilation import reports
    from .config import parse_budget

    options = {**options, "memory_budget": memory_budget} if memory_budget is not None else options
    measured, compiled = _measured_compile(model, example_inputs, loss_fn, repeats, backend="remat", options=options)
    graphs = reports(compiled)
    rows = tuple(_graph_row(g) for g in graphs)
    on_its_own = len(graphs) > 1 and memory_budget is not None and parse_budget(memory_budget).minimum
    step = PeakRow("step", None if on_its_own else _largest(r.predicted_bytes for r in rows),
                   None if on_its_own else _largest(r.code_bytes for r in rows), measured.peak_bytes)
    plain, walked = _plain_measured(model, example_inputs, loss_fn, repeats)
    plain_code = walked if walked is not None else _plain_step_reference(graphs)
    cap = None if on_its_own else _largest(g.step_cap_bytes for g in graphs)
    return MeasuredPeaks(rows, step, PeakRow("plain torch.compile", plain_predicted, plain_code, plain.peak_bytes),
                         cap, tuple(graphs), measured.step_s, plain.step_s)


def _graph_row(g: GraphReport) -> PeakRow:
    """A remat graph's figures with what remat counted as held outside it while it runs
    (``resident_before_bytes``); under plain torch.compile's partition (``compiled_with``) remat
    predicted nothing that ran."""
    held = g.resident_before_bytes
    predicted = g.timeline.peak_bytes + held if g.compiled_with == "remat plan" else None
    code = g.inductor_peak_bytes + held if g.inductor_peak_bytes is not None else None
    return PeakRow(f"{g.problem.name} ({g.compiled_with})", predicted, code)


def _plain_step_reference(graphs: list[GraphReport]) -> int | None:
    """Plain torch.compile's step peak as the backend read it from plain's code of each graph under
    a ratio budget (``reference_peak_bytes``: its code's peak with what plain's earlier graphs
    hold); None when any graph's reference was not read from code."""
    read = [g.reference_peak_bytes if "compiled code" in g.reference else None for g in graphs]
    return _largest(read)


def _largest(figures) -> int | None:
    """The largest of ``figures``; None when any is missing."""
    figures = list(figures)
    return None if not figures or any(f is None for f in figures) else max(figures)


def _plain_measured(model, example_inputs, loss_fn, repeats: int):
    """Plain torch.compile's measured step (``_measured_compile``) and its peak read from the code
    it generated (None unless it compiled one forward and one backward)."""
    from .backend import _backward_compiled_now
    from .inductor_check import InductorPeaks, installed
    from .wrapper_memory import collect_wrapper_code

    peaks = InductorPeaks()
    with torch._inductor.config.patch(installed(peaks)), _backward_compiled_now(), \
            collect_wrapper_code() as peaks.codes:
        measured, _ = _measured_compile(model, example_inputs, loss_fn, repeats)
    code = peaks.code_peaks
    return measured, max(code) if code and len(code) == 2 else None


def _measured_compile(model, example_inputs, loss_fn, repeats: int, **compile_kw):
    """``remat.measure.measure_compiled_step`` without the FX-graph or AOTAutograd cache (the
    partitioner runs and reports). Returns (StepMeasurement, what torch.compile returned)."""
    from torch._functorch import config as functorch_config

    from .measure import measure_compiled_step

    with functorch_config.patch(enable_autograd_cache=False), torch._inductor.config.patch(fx_graph_cache=False):
        return measure_compiled_step(model, example_inputs, loss_fn, repeats, **compile_kw)


# ``remat.analyze`` is both this module and (in ``remat/__init__``) the function: importing the
# module replaces the package attribute, so make the module callable as the function too.
class _CallableModule(types.ModuleType):
    def __call__(self, model, example_inputs, memory_budget=None, loss_fn=None, **options) -> Report:
        return analyze(model, example_inputs, memory_budget=memory_budget, loss_fn=loss_fn, **options)


sys.modules[__name__].__class__ = _CallableModule
