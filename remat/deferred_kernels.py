"""Inductor compiles whose kernels are built when the compiled code first runs, not when it compiles.

The check loop (``remat.backend._compile_checked_plans``) compiles up to ``MAX_PLANS`` plans of a
graph to read each one's peak from Inductor's generated wrapper code; one of them runs. Most of a
compile's time on the CPU is building the kernels (C++ compiles: 55 % of plain torch.compile's
compile of the quick Evoformer), which reading the code does not need. Inside
``deferred_kernel_builds()``, a graph's wrapper code is generated, written and handed to
``GraphLowering.save_output_code`` (``remat.wrapper_memory.collect_wrapper_code`` reads it there)
as usual, but the module is not loaded: compile_fx gets a ``DeferredModule`` that loads it (and so
builds its kernels) at its first call. A plan that never runs never builds its kernels; the plan
kept builds them at the first step, as a plain compile would have at compile time (kernels that
an earlier plan shared are in Inductor's kernel cache by then). A kernel that fails to build fails
at that first call instead of at compile time. ``REMAT_DEFER_KERNEL_BUILDS=0`` in the environment
turns the deferral off: every plan's kernels are built at compile time, as Inductor does.

Inductor internals this relies on (torch 2.13):

- ``GraphLowering._compile_to_module_lines(wrapper_code)`` writes the code (``PyCodeCache.write``),
  calls ``save_output_code``, then loads it with ``PyCodeCache.load_by_key_path(key, path,
  linemap=, attrs=)``; running the module's top level builds its kernels
  (``async_compile.cpp_pybinding`` / ``async_compile.triton``, then ``async_compile.wait``).
  Only that one load is deferred: other loads inside a compile (autotuning benchmarks) run as usual.
- compile_fx then reads ``module.__file__``, ``module.call`` and ``getattr(module, "runner", None)``
  (graph partitions: ``runner.call``, ``runner.recursively_apply_fns``), and ``CompiledFxGraph``
  reads the source from the file written (``graph.cache_path``), not from the module. Any other
  attribute asked of a ``DeferredModule`` loads the module.
- The C++ wrapper (``cpp_wrapper``) and AOT compilation do not go through
  ``_compile_to_module_lines`` with a Python module to defer; they are left as they are.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Callable, Iterator

_local = threading.local()
_install_lock = threading.Lock()


class DeferredModule:
    """Stands for the module of Inductor's wrapper code at ``path`` until something calls it:
    ``call`` and ``runner`` load it (``load``) on their first use; ``loaded`` says whether it was."""

    def __init__(self, load: Callable[[], Any], path: str, partitioned: bool) -> None:
        self.__file__ = path
        self._load, self._module, self._lock = load, None, threading.Lock()
        self.runner = _DeferredRunner(self) if partitioned else None

    @property
    def loaded(self) -> bool:
        return self._module is not None

    def load(self) -> Any:
        """The real module, loaded (its kernels built) on the first call."""
        with self._lock:
            if self._module is None:
                self._module = self._load()
        return self._module

    def call(self, args: list) -> Any:
        return self.load().call(args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.load(), name)


class _DeferredRunner:
    """The graph-partition ``runner`` of a DeferredModule: its methods load the module."""

    def __init__(self, module: DeferredModule) -> None:
        self._module = module

    def call(self, args: list) -> Any:
        return self._module.load().runner.call(args)

    def recursively_apply_fns(self, fns: Any) -> Any:
        return self._module.load().runner.recursively_apply_fns(fns)

    @property
    def partitions(self) -> Any:
        return self._module.load().runner.partitions

    @partitions.deleter
    def partitions(self) -> None:
        """``CompiledFxGraph.__del__`` drops the loaded runner's partitions; unloaded, there are none."""
        if self._module.loaded:
            del self._module.load().runner.partitions


@contextlib.contextmanager
def deferred_kernel_builds() -> Iterator[list[DeferredModule]]:
    """``with deferred_kernel_builds() as modules:``: every graph that Inductor compiles on this
    thread inside the block gets a ``DeferredModule`` (listed in ``modules``, in order) instead of
    its loaded wrapper module. Blocks nest; the modules stay deferred after the block. With
    ``REMAT_DEFER_KERNEL_BUILDS=0`` in the environment nothing is deferred (``modules`` stays empty)."""
    modules: list[DeferredModule] = []
    if os.environ.get("REMAT_DEFER_KERNEL_BUILDS", "1") == "0":
        yield modules
        return
    _install()
    outer = getattr(_local, "sinks", ())
    _local.sinks = (*outer, modules)
    try:
        yield modules
    finally:
        _local.sinks = outer


def _install() -> None:
    """Wrap ``GraphLowering._compile_to_module_lines`` and ``PyCodeCache.load_by_key_path`` once per
    process; outside ``deferred_kernel_builds`` both behave as Inductor's own."""
    from torch._inductor.codecache import PyCodeCache
    from torch._inductor.graph import GraphLowering

    with _install_lock:
        if not getattr(GraphLowering, "_remat_deferred", False):
            _wrap(GraphLowering, PyCodeCache)
            GraphLowering._remat_deferred = True


def _wrap(GraphLowering, PyCodeCache) -> None:
    """Replace the two methods: the load that ``_compile_to_module_lines`` makes inside
    ``deferred_kernel_builds`` (this thread) returns a DeferredModule; any other load is Inductor's."""
    compile_lines, load = GraphLowering._compile_to_module_lines, PyCodeCache.load_by_key_path.__func__

    def _compile_to_module_lines(self, wrapper_code):
        _local.defer_load = bool(getattr(_local, "sinks", ())) and not self.cpp_wrapper
        try:
            return compile_lines(self, wrapper_code)
        finally:
            _local.defer_load = False

    def load_by_key_path(cls, key, path, linemap=None, attrs=None, **kwargs):
        real = lambda: load(cls, key, path, linemap, attrs, **kwargs)  # noqa: E731
        if not getattr(_local, "defer_load", False):
            return real()
        _local.defer_load = False  # the wrapper module's own load, not one it starts
        module = DeferredModule(real, path, partitioned=_defines_runner(path))
        for sink in _local.sinks:
            sink.append(module)
        return module

    GraphLowering._compile_to_module_lines = _compile_to_module_lines
    PyCodeCache.load_by_key_path = classmethod(load_by_key_path)


def _defines_runner(path: str) -> bool:
    """Whether the wrapper code at ``path`` defines a graph-partition ``runner`` (Inductor's
    ``config.graph_partition``: ``runner = Runner(partitions=[...])``)."""
    with open(path) as f:
        return any(line.startswith("runner = Runner(") for line in f)
