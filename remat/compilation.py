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
of the graphs first compiled before it.
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any

__all__ = ["Compilation", "compilation_for", "reports"]


class Compilation:
    """The graphs one ``torch.compile`` call planned, in the order they were compiled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reports: list = []
        self._kept: dict[tuple[int, int], int] = {}  # graph key -> bytes it keeps, in first-compile order
        self._graphs_of: dict[tuple[int, int], int] = {}  # (frame id, frame compile id) -> graphs so far

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
        if frame is None:
            return None
        with self._lock:
            this_compile = (frame, compile_id.frame_compile_id)
            index = self._graphs_of.get(this_compile, 0)
            self._graphs_of[this_compile] = index + 1
            return frame, index

    def keep(self, key: tuple[int, int] | None, nbytes: int) -> None:
        """The graph ``key`` keeps ``nbytes`` until its backward runs (replaces the figure of an
        earlier compile of its frame; nothing is recorded outside Dynamo, ``key=None``)."""
        if key is None:
            return
        with self._lock:
            self._kept[key] = int(nbytes)

    def resident_before(self, key: tuple[int, int] | None) -> int:
        """Bytes that the graphs first compiled before ``key`` keep while it runs (all recorded
        graphs for one not compiled yet; 0 outside Dynamo)."""
        if key is None:
            return 0
        with self._lock:
            total = 0
            for other, nbytes in self._kept.items():
                if other == key:
                    break
                total += nbytes
            return total

    @property
    def kept_bytes(self) -> dict[tuple[int, int], int]:
        """Bytes each graph keeps, by ``graph_key``, in first-compile order."""
        with self._lock:
            return dict(self._kept)


_LOCK = threading.Lock()
_BY_OPTIONS: dict[int, tuple[dict, Compilation]] = {}  # id(options dict) -> (the dict, its compilation)


def compilation_for(options: dict) -> Compilation:
    """The Compilation of the ``torch.compile`` call whose options dict is ``options``."""
    key = id(options)
    with _LOCK:
        entry = _BY_OPTIONS.get(key)
        if entry is not None and entry[0] is options:
            return entry[1]
        comp = Compilation()
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
