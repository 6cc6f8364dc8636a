"""One object per ``torch.compile`` call: the reports of the graphs that its compilations planned.

``torch.compile(model, backend="remat", options=opts)`` makes one torch wrapper that holds the
``opts`` dict and passes that very dict to the backend for every graph it compiles (graph breaks,
recompiles). remat keys its ``Compilation`` by that dict's identity, so two compiled models (or two
threads) never mix their reports, and the compiled function finds its own through the same dict:

    compiled = torch.compile(model, backend="remat", options={"memory_budget": "50%"})
    loss_fn(compiled(x)).backward()
    for r in remat.reports(compiled): print(remat.planning.summary_line(r))

A compilation lives as long as torch's wrapper (the compiled function) does.

It also holds what a step-level cap needs across graph breaks. The graphs of one step run in
order (forward of graph0, forward of graph1, ..., backward of graph1, backward of graph0): while a
graph runs, every graph before it keeps what its backward will read (saved activations, and its
outputs, whose gradients come back). ``keep(key, nbytes)`` records that figure per graph, keyed
by its Dynamo frame and its place among the graphs compiled for that frame (DDP's optimizer splits
one frame's graph into several, ``graph_key``), in the order they were first compiled; a recompile
of a frame replaces its figures (never counted twice); ``resident_before(key)`` sums the figures
of the graphs first compiled before it, and adds what the step allocates outside the graphs while
this one runs (``outside(key)``: the option ``outside_bytes``, else found from the module being
compiled, ``remat.outside_memory``: FSDP2's buffers). A graph known to run n times per step
(FSDP2's blocks of one class and shapes) keeps its saved bytes n times: ``runs(key)`` says what
its n - 1 other runs hold while the last one runs (``Runs``), which the backend puts in the graph's
``Problem`` (the planner trades them against recomputation) and adds to its code's peak, and
records the figure of the plan kept (``plan_repeats``). A ratio budget is of plain torch.compile's
step: ``plain_step_peak(key, ...)`` records what plain's partition of each graph keeps and gives
the plain step's peak as far as graph ``key`` (its code's peak on top of what plain holds outside it).

A graph can run several times per step (one compiled block called for every layer, a loop over a
graph break): each call keeps its saved bytes until its backward, while a plan made without
knowing the runs counted them once. ``counted(compiled)`` wraps what Inductor made for a graph so that every call is watched at
run time: when a backward starts, the calls whose backward has not started yet keep more than the
plan of that graph counted (what earlier graphs keep, and itself once), a warning (logger ``remat``)
names the figures and the byte cap that keeps the step under the cap given. A call whose backward
never runs stops counting when autograd frees its graph.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from .errors import fmt_bytes
from .outside_memory import NOTHING, OutsideMemory, outside_memory

__all__ = ["Compilation", "Runs", "compilation_for", "reports"]

log = logging.getLogger("remat")
Key = tuple[int, int]


@dataclass(frozen=True)
class Runs:
    """What a graph's other runs per step hold while its last run runs: each keeps what its
    backward reads until that backward starts. ``others``: runs besides the one planned;
    ``held_inputs``: bytes of the graph's inputs made earlier in the step (its backward reads
    them; no decision changes them); ``grad_outputs``: bytes of its outputs' gradients, which its
    compiled backward receives but which exist only once that backward starts."""

    others: int = 0
    held_inputs: int = 0
    grad_outputs: int = 0

    def held_bytes(self, kept: int) -> int:
        """What the other runs hold when the compiled backward receives ``kept`` bytes."""
        return self.others * _held(kept, self.grad_outputs, self.held_inputs)


NO_RUNS = Runs()


def _held(kept: int, grad_outputs: int, made_inputs: int) -> int:
    """What one run of a graph holds until its backward starts, when its compiled backward receives
    ``kept`` bytes: those less its outputs' gradients, plus its inputs made earlier in the step."""
    return max(0, int(kept) - grad_outputs) + made_inputs


class Compilation:
    """The graphs one ``torch.compile`` call planned, in the order they were compiled (``options``:
    the dict that call passed to the backend)."""

    def __init__(self, options: dict | None = None) -> None:
        from .config import parse_budget, parse_outside_bytes

        options = options or {}
        self._outside_option = parse_outside_bytes(options.get("outside_bytes"))
        budget = parse_budget(options.get("memory_budget"))
        self._byte_cap = budget.bytes if budget is not None else None
        self._lock = threading.Lock()
        self._reports: list = []
        self._kept: dict[Key, int] = {}  # graph key -> bytes it keeps, in first-compile order
        self._plain_kept: dict[Key, int] = {}  # graph key -> bytes plain torch.compile's partition keeps
        self._repeated: dict[Key | None, int] = {}  # graph key -> bytes its plan counts for its other runs per step
        self._grad_outputs: dict[Key | None, int] = {}  # graph key -> bytes of its outputs that need a gradient
        self._made_inputs: dict[Key | None, int] = {}  # graph key -> bytes of its inputs made earlier in the step
        self._graphs_of: dict[Key, int] = {}  # (frame id, frame compile id) -> graphs so far
        self._outside: dict[Key | None, OutsideMemory] = {}
        self._compiling = threading.local()  # .key: the graph this thread compiles now
        self._pending: dict[int, tuple[Key | None, int]] = {}  # id(call) -> (its graph, bytes it keeps)
        self._warned = 0  # the largest excess warned of so far
        self._names: dict[Key | None, str] = {}  # graph key -> its report's name ("graph1")

    def add(self, report: Any) -> None:
        with self._lock:
            self._reports.append(report)

    def next_graph_name(self) -> str:
        """``graph<N>``: N is how many graphs this compilation has planned so far."""
        with self._lock:
            return f"graph{len(self._reports)}"

    @property
    def reports(self) -> list:
        with self._lock:
            return list(self._reports)

    def graph_key(self) -> tuple[int, int] | None:
        """(Dynamo frame id, how many graphs this compile of the frame made before this one) for
        the graph being compiled now; None outside Dynamo. Call once per graph."""
        from torch._guards import CompileContext

        compile_id = CompileContext.current_compile_id()
        frame = getattr(compile_id, "frame_id", None)
        self._compiling.key = None
        if frame is None:
            return None
        with self._lock:
            this_compile = (frame, compile_id.frame_compile_id)
            index = self._graphs_of.get(this_compile, 0)
            self._graphs_of[this_compile] = index + 1
        self._compiling.key = (frame, index)
        return frame, index

    def graph_io(self, key: Key | None, grad_outputs: int, made_inputs: int) -> None:
        """Graph ``key``'s outputs that need a gradient take ``grad_outputs`` bytes; its inputs made
        earlier in the step (activations: they need a gradient and are no leaf) ``made_inputs``
        bytes. Call before ``resident_before`` and ``keep``."""
        with self._lock:
            self._grad_outputs[key], self._made_inputs[key] = int(grad_outputs), int(made_inputs)

    def made_inputs(self, key: Key | None) -> int:
        """Bytes of graph ``key``'s inputs made earlier in the step (``graph_io``): no graph's code
        counts them (its own reads them as resident inputs), and it may save them for its backward."""
        with self._lock:
            return self._made_inputs.get(key, 0)

    def held_until_backward(self, key: Key | None, kept: int) -> int:
        """What graph ``key`` holds from its forward until its backward starts, when its compiled
        backward receives ``kept`` bytes: those less the gradients of its outputs, which exist only
        once its backward starts (the caller's loss, or the graph after it, makes them), and its
        inputs made earlier in the step, which the code does not count (counted as saved)."""
        with self._lock:
            return _held(kept, self._grad_outputs.get(key, 0), self._made_inputs.get(key, 0))

    def keep(self, key: tuple[int, int] | None, nbytes: int) -> None:
        """The graph ``key``'s compiled backward receives ``nbytes``: it holds ``held_until_backward``
        of them while later graphs run (replaces the figure of an earlier compile of its frame;
        nothing is recorded outside Dynamo, ``key=None``)."""
        if key is None:
            return
        held = self.held_until_backward(key, nbytes)
        with self._lock:
            self._kept[key] = held
            self._names[key] = f"graph{len(self._reports) - 1}"  # the report added last (``add``)

    def keep_plain(self, key: Key | None, nbytes: int | None) -> None:
        """Plain torch.compile's partition of graph ``key`` keeps ``nbytes`` until its backward runs
        (read from its compiled backward; None: not read, nothing recorded)."""
        if key is not None and nbytes is not None:
            held = self.held_until_backward(key, nbytes)
            with self._lock:
                self._plain_kept[key] = held

    def plain_step_peak(self, key: Key | None, peak: int | None, kept: int | None) -> int | None:
        """The peak that a ratio budget on graph ``key`` is a fraction of: plain torch.compile's
        step as far as this graph, from plain's code of it (``peak``: its code's peak P, None when
        not read; ``kept``: what plain's partition of it keeps until its backward, recorded for the
        graphs after it): P plus what plain would hold outside it (``plain_resident_before``).
        Each graph g is then capped at ratio x (P_g + Rplain_g) - R_g, R_g what remat holds outside
        it (``resident_before``), so the step's peak, the largest R_g + peak_g, is at most ratio x
        the largest P_g + Rplain_g: ratio x plain torch.compile's step peak."""
        self.keep_plain(key, kept)
        if peak is None:
            return None
        return peak + self.plain_resident_before(key) + self.more_runs_bytes(key, kept or 0)

    def runs(self, key: Key | None) -> Runs:
        """Graph ``key``'s other runs per step (``Runs``), with the runs per step found outside
        the graphs (``OutsideMemory.runs``: FSDP2's blocks of one class and shapes; call after
        ``resident_before`` and ``graph_io``)."""
        with self._lock:
            made, grads = self._made_inputs.get(key, 0), self._grad_outputs.get(key, 0)
        return Runs(self.outside(key).runs - 1, made, grads)

    def more_runs_bytes(self, key: Key | None, kept: int) -> int:
        """What the other runs of graph ``key`` in one step hold while one of them runs, when its
        compiled backward receives ``kept`` bytes: (runs - 1) x ``held_until_backward``."""
        return self.runs(key).held_bytes(kept)

    def plan_repeats(self, key: Key | None, nbytes: int) -> None:
        """Graph ``key``'s plan kept counts ``nbytes`` held by its other runs per step
        (``more_runs_bytes``; the watch, ``counted``, then expects them)."""
        with self._lock:
            self._repeated[key] = int(nbytes)

    def repeated(self, key: Key | None) -> int:
        """Bytes graph ``key``'s plan counts for its other runs per step (``plan_repeats``; 0: none)."""
        with self._lock:
            return self._repeated.get(key, 0)

    def plain_resident_before(self, key: Key | None) -> int:
        """What plain torch.compile would hold outside graph ``key``'s code while it runs: its
        partitions of the graphs first compiled before it keep (a graph whose plain partition was
        not read counts with remat's figure), the buffers outside the graphs (``outside(key)``)
        and the graph's inputs made earlier in the step."""
        earlier = self._earlier(key)
        with self._lock:
            kept = sum(self._plain_kept.get(k, self._kept[k]) for k in earlier)
        return kept + self.outside(key).nbytes + self.made_inputs(key)

    def resident_before(self, key: tuple[int, int] | None) -> int:
        """Bytes resident outside graph ``key``'s code while it runs: what the graphs first compiled
        before it keep (``kept_before``), what the step allocates outside the graphs (``outside``,
        found now: call it while the graph compiles) and its inputs made earlier in the step."""
        given = self._outside_option
        found = outside_memory() if given is None else OutsideMemory((("given", given),), "outside_bytes option")
        with self._lock:
            self._outside[key] = found
        return self.kept_before(key) + found.nbytes + self.made_inputs(key)

    def kept_before(self, key: tuple[int, int] | None) -> int:
        """Bytes that the graphs first compiled before ``key`` keep while it runs (all recorded
        graphs for one not compiled yet; 0 outside Dynamo)."""
        earlier = self._earlier(key)
        with self._lock:
            return sum(self._kept[k] for k in earlier)

    def _earlier(self, key: Key | None) -> list[Key]:
        """The recorded graphs first compiled before ``key`` (none outside Dynamo, ``key=None``)."""
        if key is None:
            return []
        with self._lock:
            keys = list(self._kept)
        return keys[:keys.index(key)] if key in keys else keys

    def outside(self, key: tuple[int, int] | None) -> OutsideMemory:
        """What ``resident_before(key)`` found outside the graphs (nothing before it was called)."""
        with self._lock:
            return self._outside.get(key, NOTHING)

    def counted(self, compiled: Any, key: Key | None = None) -> Any:
        """``compiled`` (what Inductor made for graph ``key``; default: the graph this thread
        compiled last, ``graph_key``) wrapped so that each call is watched until its backward
        starts (see the module docstring). Inductor's calling convention (``_boxed_call``) is kept."""
        key = key if key is not None else getattr(self._compiling, "key", None)
        kept = self._kept.get(key, 0) if key is not None else 0
        planned = self.kept_before(key) + kept + self.repeated(key)

        @functools.wraps(compiled)
        def run(*args: Any) -> Any:
            outputs = compiled(*args)
            self._watch(key, kept, planned, outputs)
            return outputs

        return run

    def _watch(self, key: Key | None, kept: int, planned: int, outputs: Any) -> None:
        """Count this call of graph ``key`` as keeping ``kept`` bytes until its backward starts
        (or autograd frees its graph); at that start, compare what all pending calls keep with
        ``planned``."""
        node = next((t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None), None)
        if node is None or not kept:
            return
        hook = _BackwardStart(self, key, planned)
        with self._lock:
            self._pending[id(hook)] = (key, kept)
        node.register_prehook(hook)
        weakref.finalize(hook, self._done, id(hook))  # the node holds the hook until autograd frees it

    def _done(self, call: int) -> None:
        with self._lock:
            self._pending.pop(call, None)

    def _backward_starts(self, call: int, key: Key | None, planned: int) -> None:
        with self._lock:
            if call not in self._pending:
                return
            pending = list(self._pending.values())
            del self._pending[call]
            excess = sum(n for _, n in pending) - planned
            if excess <= self._warned:
                return
            self._warned = excess
        self._warn_excess(key, pending, planned, excess)

    def _warn_excess(self, key: Key | None, pending: list, planned: int, excess: int) -> None:
        runs = sum(1 for k, _ in pending if k == key)
        fits = self._byte_cap is not None and self._byte_cap > excess
        fix = f" (memory_budget={self._byte_cap - excess} instead of {self._byte_cap})" if fits else ""
        log.warning(
            "remat[%s]: when its backward started, %d calls of this compilation's graphs kept %s until their backward "
            "(this graph ran %d times), where one run of it and of each graph compiled before it keeps %s: the step "
            "can peak %s over the cap. A graph that runs several times per step is planned for its runs only where "
            "remat finds them when it compiles (FSDP2's blocks); else (one compiled block for every layer without "
            "FSDP2, a loop over a graph break) as if it ran once: lower the cap by %s%s",
            self._names.get(key, key), len(pending), fmt_bytes(sum(n for _, n in pending)), runs, fmt_bytes(planned),
            fmt_bytes(excess), fmt_bytes(excess), fix)

    @property
    def excess_bytes(self) -> int:
        """The most that calls pending their backward kept over what their plans counted (0: never)."""
        with self._lock:
            return self._warned

    @property
    def kept_bytes(self) -> dict[tuple[int, int], int]:
        """Bytes each graph holds until its backward (``keep``), by ``graph_key``, in first-compile order."""
        with self._lock:
            return dict(self._kept)


class _BackwardStart:
    """The pre-hook on a call's backward node: tells its compilation that the backward starts.
    The node holds it (and nothing else does) until autograd frees the node."""

    def __init__(self, comp: Compilation, key: Key | None, planned: int) -> None:
        self.comp, self.key, self.planned = comp, key, planned

    def __call__(self, grad_outputs: Any) -> None:
        self.comp._backward_starts(id(self), self.key, self.planned)


def _tensors(outputs: Any) -> list:
    import torch

    items = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [t for t in items if isinstance(t, torch.Tensor)]


_LOCK = threading.Lock()
_BY_OPTIONS: dict[int, tuple[dict, Compilation]] = {}  # id(options dict) -> (the dict, its compilation)


def compilation_for(options: dict) -> Compilation:
    """The Compilation of the ``torch.compile`` call whose options dict is ``options``."""
    key = id(options)
    with _LOCK:
        entry = _BY_OPTIONS.get(key)
        if entry is not None and entry[0] is options:
            return entry[1]
        comp = Compilation(options)
        _BY_OPTIONS[key] = (options, comp)  # holding the dict keeps its id from being reused
    wrapper = _calling_wrapper(options)
    if wrapper is not None:  # forget the compilation with the compiled function
        weakref.finalize(wrapper, _forget, key, comp)
    return comp


def _forget(key: int, comp: Compilation) -> None:
    with _LOCK:
        if key in _BY_OPTIONS and _BY_OPTIONS[key][1] is comp:
            del _BY_OPTIONS[key]


def _calling_wrapper(options: dict) -> Any:
    """torch's ``_TorchCompileWrapper`` that is calling the backend with ``options``, if on the stack."""
    import torch

    frame = sys._getframe(1)
    for _ in range(64):
        if frame is None:
            return None
        me = frame.f_locals.get("self")
        if isinstance(me, torch._TorchCompileWrapper) and me.kwargs.get("options") is options:
            return me
        frame = frame.f_back
    return None


def reports(compiled: Any) -> list:
    """The GraphReports that remat made for a function or module returned by ``torch.compile``.

    Empty when nothing was planned yet (no call so far, no ``memory_budget``, or every graph came
    from torch's compile caches). Raises TypeError for an object that ``torch.compile`` did not make.
    """
    options = _options_of(compiled)
    with _LOCK:
        entry = _BY_OPTIONS.get(id(options)) if options is not None else None
    return entry[1].reports if entry is not None and entry[0] is options else []


def _options_of(compiled: Any) -> dict | None:
    """The options dict that torch.compile stored for ``compiled`` (None when it got none)."""
    import torch

    ctx = getattr(compiled, "dynamo_ctx", None)  # an OptimizedModule
    if ctx is None:  # a compiled function: its closure holds the same context
        cells = getattr(compiled, "__closure__", None) or ()
        ctx = next((c.cell_contents for c in cells if hasattr(c.cell_contents, "callback")), None)
    fn = getattr(ctx, "callback", None)
    if fn is None:
        raise TypeError(f"remat.reports expects what torch.compile returned; got {type(compiled).__name__}")
    for _ in range(16):
        if isinstance(fn, torch._TorchCompileWrapper):
            return fn.kwargs.get("options")
        fn = getattr(fn, "_torchdynamo_orig_backend", None)
        if fn is None:
            return None
    return None
