"""Measured costs: op times and scratch bytes, memory bandwidth and the host link, measured on this
machine and cached.

An op call is described by an ``OpSignature`` (the OpOverload, its tensor inputs' shapes, strides,
dtypes and devices, its other arguments); ``signature_of`` builds one from a graph node whose
``meta["val"]`` are (fake) tensors, or gives None for what cannot or should not be timed alone.
``measure_op`` times a signature on real random inputs with ``torch.utils.benchmark``'s clock: one
warm-up call, then the median of blocks of timings (``remat.measure.block_seconds``);
``measure_workspace`` measures the scratch memory that a call allocates beyond its results (conv
columns, attention backward buffers), which compiled code does not show (``remat.inductor_check``
adds it at each extern kernel's call). ``Profiler`` adds a per-op and a total time budget and the
disk cache; ``MeasuredCosts`` is what the capture stage asks: a node's measured time (not measured
for an op under ``NEGLIGIBLE_SHARE`` of its graph's roofline time), the measured copy bandwidth and
host link, and ``fused_time``, the price of a
pointwise recomputation that Inductor fuses into its reader: the longer of its memory traffic at the
measured bandwidth and its per-element work (``element_rates``): its transcendental element ops at
the measured elementwise rate, its replayed random draws and the bool tensors it reads at the measured
rates of Inductor's CPU idioms (``measure_cpu_rate``; ``remat.cost.fused_time``; it runs inside
another kernel, so it has no launch of its own).
Every answer may be None: the caller prices that op with the roofline of ``remat.cost``.

``profiled_spec`` gives the roofline of ``remat.cost`` the rates that ``remat profile`` cached for
this machine (matmul FLOP/s, bandwidth, elementwise rate, the rates of Inductor's CPU idioms) and
its table of small matmuls' times (``measure_matmul_table``).

Cache: one JSON file per device, thread count and torch version (``ProfileCache``) in ``$REMAT_CACHE_DIR``, else
``$XDG_CACHE_HOME/remat``, else ``~/.cache/remat``; ``REMAT_CACHE=0`` turns it off. A write takes
a lock, merges with what is on disk and replaces the file atomically, so compiles that run at
once all keep what they measured. Such a file is also a saved profile (``MeasuredCosts.load``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import platform
import re
import tempfile
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import fx

from .cost import DeviceSpec, ElementRates, ElementWork, MatmulTable, device_spec, fused_time, node_time
from .errors import ConfigError
from .measure import fastest_seconds, measure_step, median_statement_seconds

log = logging.getLogger("remat")

FORMAT = "remat.profile/1"
# the elementwise rate is of transcendental ops (``remat.pricing.transcendental_ops``); caches before
# session 14 hold "elementwise_rate", a mean with mul and add, that nothing reads now
BANDWIDTH_KEY, LINK_KEY, ELEMENTWISE_KEY = "bandwidth", "link", "transcendental_rate"
# rates of Inductor's CPU idioms (``measure_cpu_rate``), elements/s; each key is the name of the
# ``DeviceSpec`` field that holds the rate (``_idiom_rates``)
RANDOM_KEY, BOOL_LOAD_KEY, BOOL_STORE_KEY = "random_rate", "bool_load_rate", "bool_store_rate"
_CONSTANTS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)
_COLLECTIVE_NAMESPACES = {"_c10d_functional", "c10d_functional", "_c10d_functional_autograd", "c10d", "_dtensor"}
_RANDOM_PRIMS = {"inductor_seeds", "inductor_lookup_seed", "inductor_random", "inductor_randint"}
_REJECTED_TAGS = {torch.Tag.nondeterministic_seeded, torch.Tag.data_dependent_output}
# random-number state that the forward left (attention backward's dropout): random values do not
# stand for it (the CUDA efficient-attention backward crashed the process on them, on an H200)
_RNG_STATE_ARGS = {"philox_seed", "philox_offset", "rng_state", "seed", "offset"}
NEGLIGIBLE_SHARE = 5e-4  # an op under this share of its graph's roofline time is not timed (``MeasuredCosts.negligible``)


# ---- signatures ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorMeta:
    """What a real input must match of a graph's (fake) tensor."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: str

    def storage_numel(self) -> int:
        """Elements of the smallest storage that holds the tensor at offset 0."""
        if 0 in self.shape:
            return 0
        return 1 + sum((size - 1) * stride for size, stride in zip(self.shape, self.stride))


@dataclass(frozen=True)
class OpSignature:
    """One op call, plain and hashable: equal signatures cost the same time. Tensors in ``args``
    and ``kwargs`` are TensorMeta; lists are tuples; ``kwargs`` is sorted (name, value) pairs."""

    op: str  # the OpOverload as str(): 'aten.mm.default'
    args: tuple
    kwargs: tuple = ()

    @property
    def inputs(self) -> tuple[TensorMeta, ...]:
        leaves = torch.utils._pytree.tree_leaves((self.args, self.kwargs))
        return tuple(x for x in leaves if isinstance(x, TensorMeta))

    def key(self) -> str:
        """A stable string of the whole signature (the disk cache's key)."""
        return repr((self.op, self.args, self.kwargs))


class _Unsupported(Exception):
    """An argument that a signature cannot describe or a measurement cannot rebuild."""


def signature_of(node: fx.Node, seeded: bool = False) -> OpSignature | None:
    """The signature of a graph node's op call; None for what is not timed alone: placeholders,
    getitem and other non-ATen calls, views, in-place and mutating ops, random ops (unless
    ``seeded``: what a random op allocates does not depend on its draws), collectives,
    data-dependent ops, symbolic sizes, and arguments that are not tensors or plain constants."""
    op = node.target
    if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload) or not _timed_alone(op, seeded):
        return None
    try:
        _check_static(node.meta.get("val"))
        args = _freeze(node.args)
        kwargs = tuple(sorted((k, _freeze(v)) for k, v in node.kwargs.items()))
    except _Unsupported:
        return None
    return OpSignature(str(op), args, kwargs)


def with_inputs(sig: OpSignature, inputs: list[TensorMeta]) -> OpSignature | None:
    """``sig`` with its tensor arguments, in order, laid out as ``inputs`` (the layouts that compiled
    code passes, such as a conv's channels-last copies); None unless the count and shapes agree."""
    old = sig.inputs
    if len(old) != len(inputs) or any(a.shape != b.shape for a, b in zip(old, inputs)):
        return None
    replacements = iter(inputs)

    def swap(x: Any) -> Any:
        if isinstance(x, TensorMeta):
            return next(replacements)
        return tuple(swap(e) for e in x) if isinstance(x, tuple) else x

    args = swap(sig.args)
    kwargs = tuple((k, swap(v)) for k, v in sig.kwargs)
    return OpSignature(sig.op, args, kwargs)


def _timed_alone(op: torch._ops.OpOverload, seeded: bool = False) -> bool:
    schema = op._schema
    rejected = _REJECTED_TAGS - {torch.Tag.nondeterministic_seeded} if seeded else _REJECTED_TAGS
    if op.namespace in _COLLECTIVE_NAMESPACES or schema.is_mutable or rejected & set(op.tags):
        return False
    if any(r.alias_info is not None for r in schema.returns):  # a view of an input
        return False
    if any(a.name in _RNG_STATE_ARGS for a in schema.arguments):
        return False
    return op.overloadpacket.__name__ not in _RANDOM_PRIMS


def _check_static(val: Any) -> None:
    """Raise _Unsupported when an output has symbolic sizes (dynamic shapes, data-dependent ops)."""
    for leaf in torch.utils._pytree.tree_leaves(val):
        if isinstance(leaf, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            raise _Unsupported(leaf)
        if isinstance(leaf, torch.Tensor):
            _tensor_meta(leaf)


def _freeze(x: Any) -> Any:
    """An argument as plain hashable data: tensors (and nodes holding one) as TensorMeta."""
    if isinstance(x, fx.Node):
        val = x.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise _Unsupported(x)
        return _tensor_meta(val)
    if isinstance(x, torch.Tensor):
        return _tensor_meta(x)
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(e) for e in x)
    if isinstance(x, _CONSTANTS):
        return x
    raise _Unsupported(x)  # SymInt, slices, opaque objects


def _tensor_meta(t: torch.Tensor) -> TensorMeta:
    if t.device.type == "meta" or t.layout != torch.strided:
        raise _Unsupported(t)
    shape, stride = tuple(t.shape), tuple(t.stride())
    if not all(type(s) is int for s in shape + stride):
        raise _Unsupported(t)
    return TensorMeta(shape, stride, t.dtype, str(t.device))


# ---- measuring one op ----------------------------------------------------------------------------


def measure_op(sig: OpSignature, device: torch.device | str = "cpu", min_run_time: float = 0.05) -> float | None:
    """Median seconds of one call of ``sig`` on real random inputs on ``device`` (inputs that the
    graph keeps on another kind of device, such as CPU scalars of a CUDA graph, stay there); None
    when the inputs cannot be made or the op fails on them. ``min_run_time`` bounds the timing
    of a fast op; a slow one runs three times (warm-up, block-size estimate, one block)."""
    try:
        with _real_tensors(device):
            op, args, kwargs = _real_call(sig, torch.device(device))
            op(*args, **kwargs)  # warm-up: lazy initialisation, library caches
            return median_statement_seconds("op(*args, **kwargs)", {"op": op, "args": args, "kwargs": kwargs}, min_run_time)
    except Exception:  # any failure (no such device, bad random input, op error): price by roofline
        return None


def measure_workspace(sig: OpSignature, device: torch.device | str = "cpu") -> int | None:
    """Scratch bytes of one call of ``sig`` on real random inputs on ``device``: the peak that the
    call allocates (``remat.measure.measure_step``: the CPU profiler's allocation events, CUDA's
    peak allocated) less its results' storages, measured on the call after a warm-up (what a
    library allocates once and keeps is not scratch). None when the call fails, or when a profiler
    is already running (it cannot nest)."""

    if torch.autograd._profiler_enabled():
        return None
    target = torch.device(device)
    try:
        with _real_tensors(target):
            op, args, kwargs = _real_call(sig, target)
            op(*args, **kwargs)
            results: list = []
            peak = measure_step(lambda: results.append(op(*args, **kwargs)), str(target)).peak_bytes
            return max(0, peak - _storages_bytes(results))
    except Exception:
        return None


def _real_call(sig: OpSignature, target: torch.device) -> tuple[torch._ops.OpOverload, list, dict]:
    """The op of ``sig`` and real arguments for it on ``target``."""
    op = _resolve(sig.op)
    ranges = _int_ranges(sig)
    args = [_build(a, (i,), target, ranges) for i, a in enumerate(sig.args)]
    kwargs = {k: _build(v, (k,), target, ranges) for k, v in sig.kwargs}
    return op, args, kwargs


def _storages_bytes(values: Any) -> int:
    """Bytes of the distinct storages of the tensors in ``values``."""
    storages = {}
    for t in torch.utils._pytree.tree_leaves(values):
        if isinstance(t, torch.Tensor):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


@contextlib.contextmanager
def _real_tensors(device: torch.device | str = "cpu") -> Iterator[None]:
    """Real tensors and no autograd, even when called under a tracing (fake) dispatch mode; the
    random number generators of the CPU and of ``device`` are left as they were (measuring inside
    a compile must not change the user's random stream: dropout masks would differ)."""
    from torch.utils._python_dispatch import _disable_current_modes

    device = torch.device(device)
    on_cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with _disable_current_modes(), torch.no_grad(), torch.random.fork_rng(devices=on_cuda):
        yield


def _resolve(name: str) -> torch._ops.OpOverload:
    namespace, packet, overload = name.split(".")
    return getattr(getattr(getattr(torch.ops, namespace), packet), overload)


def _build(x: Any, path: tuple, target: torch.device, ranges: dict) -> Any:
    """A signature argument as a real one: random tensors, lists, devices moved to ``target``."""
    if isinstance(x, TensorMeta):
        return _random_tensor(x, target, ranges.get(path))
    if isinstance(x, tuple):
        return [_build(e, path + (j,), target, ranges) for j, e in enumerate(x)]
    if isinstance(x, torch.device):
        return _place(x, target)
    return x


def _place(device: torch.device | str, target: torch.device) -> torch.device:
    """``target`` for a device of its type (the graph's cuda:0 measured on cuda:1), else unchanged."""
    device = torch.device(device)
    return target if device.type == target.type else device


def _random_tensor(meta: TensorMeta, target: torch.device, int_range: tuple[int, int] | None) -> torch.Tensor:
    """Random values in a storage laid out as ``meta`` (stride-0 and transposed inputs included)."""
    n, device = meta.storage_numel(), _place(meta.device, target)
    if meta.dtype == torch.bool:
        base = torch.rand(n, device=device) < 0.5
    elif meta.dtype.is_floating_point or meta.dtype.is_complex:
        base = torch.randn(n, device=device).to(meta.dtype)
    elif int_range is None:
        raise _Unsupported(meta)
    else:
        base = torch.randint(*int_range, (n,), device=device).to(meta.dtype)
    return base.as_strided(meta.shape, meta.stride)


# ---- integer inputs: indices must stay in range (on CUDA a bad one is a device-side assert) -----


def _index_list(position: int) -> Callable[[tuple], dict[tuple, int]]:
    """index.Tensor & co: the list of indices at ``position``; its j-th ranges over dim j."""
    def highs(a: tuple) -> dict[tuple, int]:
        if any(isinstance(e, TensorMeta) and e.dtype == torch.bool for e in a[position]):
            raise _Unsupported("boolean mask index")
        return {(position, j): a[0].shape[j] for j in range(len(a[position]))}

    return highs


_INDEX_ARGS: dict[str, Callable[[tuple], dict[tuple, int]]] = {
    "embedding": lambda a: {(1,): a[0].shape[0]},
    "embedding_dense_backward": lambda a: {(1,): a[2]},
    **{name: lambda a: {(2,): a[0].shape[a[1]]} for name in (  # (self, dim, index, ...)
        "gather", "scatter", "scatter_add", "scatter_reduce", "index_select", "index_add", "index_copy",
        "index_fill")},
    "nll_loss_forward": lambda a: {(1,): a[0].shape[-1]},
    "nll_loss_backward": lambda a: {(2,): a[1].shape[-1]},
    "nll_loss2d_forward": lambda a: {(1,): a[0].shape[1]},
    "nll_loss2d_backward": lambda a: {(2,): a[1].shape[1]},
    **{name: _index_list(1) for name in ("index", "_unsafe_index", "index_put", "_unsafe_index_put")},
    **{name: _index_list(2) for name in ("_unsafe_masked_index", "_unsafe_masked_index_put_accumulate")},
}
_INDEX_LIKE = re.compile(
    r"index|gather|scatter|embedding|take|put|nll|bincount|one_hot|histc|segment|search|bucket|unique")
_SAFE_INT_RANGE = (1, 3)  # values of integer inputs that index nothing: no zero to divide by


def _int_ranges(sig: OpSignature) -> dict[tuple, tuple[int, int]]:
    """[low, high) of every integer tensor argument, by its path in the arguments: the size of
    the indexed dim for known index ops; raises _Unsupported for other index-like ops."""
    packet = sig.op.split(".")[1]
    paths = [p for p, meta in _tensor_paths(sig) if not _random_anywhere(meta.dtype)]
    if not paths:
        return {}
    if packet in _INDEX_ARGS:
        try:
            highs = _INDEX_ARGS[packet](sig.args)
        except (IndexError, TypeError) as e:
            raise _Unsupported(sig) from e
        if all(p in highs and highs[p] > 0 for p in paths):
            return {p: (0, highs[p]) for p in paths}
        raise _Unsupported(sig)
    if _INDEX_LIKE.search(packet):
        raise _Unsupported(sig)
    return {p: _SAFE_INT_RANGE for p in paths}


def _random_anywhere(dtype: torch.dtype) -> bool:
    """Floats and booleans: any value is a valid input."""
    return dtype.is_floating_point or dtype.is_complex or dtype == torch.bool


def _tensor_paths(sig: OpSignature) -> list[tuple[tuple, TensorMeta]]:
    """Each tensor argument with its path: (position,), (position, list index) or (kwarg name,)."""
    out = []
    for key, arg in [(i, a) for i, a in enumerate(sig.args)] + list(sig.kwargs):
        items = [((key,), arg)] if not isinstance(arg, tuple) else [((key, j), e) for j, e in enumerate(arg)]
        out.extend((p, e) for p, e in items if isinstance(e, TensorMeta))
    return out


# ---- the disk cache ------------------------------------------------------------------------------


def cache_enabled(enabled: bool | None = None) -> bool:
    """The argument when given, else False only when the environment sets REMAT_CACHE=0."""
    return enabled if enabled is not None else os.environ.get("REMAT_CACHE", "1") != "0"


def cache_dir() -> Path:
    """$REMAT_CACHE_DIR, else $XDG_CACHE_HOME/remat, else ~/.cache/remat."""
    if os.environ.get("REMAT_CACHE_DIR"):
        return Path(os.environ["REMAT_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "remat"


def device_name(device: torch.device | str = "cpu") -> str:
    """What makes timings comparable: the CUDA device's name, or the CPU model and thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    return f"{_cpu_model()} x{torch.get_num_threads()} threads"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


class ProfileCache:
    """Measured values of one device and torch version, by key: in memory, and in a JSON file
    when ``path`` is set. ``put`` merges with the file under a lock and replaces it atomically."""

    def __init__(self, path: Path | None, device: str, writable: bool = True) -> None:
        self.path, self.device, self.writable = path, device, writable
        self.entries: dict[str, Any] = _read_entries(path) if path is not None else {}

    @classmethod
    def for_device(cls, device: torch.device | str = "cpu", enabled: bool | None = None) -> ProfileCache:
        """The cache file of ``device`` and this torch version (memory only when disabled)."""
        name = device_name(device)
        if not cache_enabled(enabled):
            return cls(None, name)
        slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", f"{name}-torch{torch.__version__}")
        return cls(cache_dir() / f"{slug}.json", name)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProfileCache:
        """A saved profile, read only (ConfigError when it is missing or not a profile)."""
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the profile {str(path)!r}: {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("entries"), dict):
            raise ConfigError(f"{str(path)!r} is not a remat profile (format {FORMAT!r})")
        cache = cls(None, str(doc.get("device", "?")), writable=False)
        cache.entries = doc["entries"]
        return cache

    def get(self, key: str) -> Any:
        return self.entries.get(key)

    def put(self, key: str, value: Any) -> None:
        """Keep ``value``; with a file, merge it with the file's entries and write it back."""
        self.entries[key] = value
        if self.path is None or not self.writable:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(self.path.with_name(self.path.name + ".lock")):
                self.entries = {**_read_entries(self.path), **self.entries}
                doc = {"format": FORMAT, "device": self.device, "torch": torch.__version__, "entries": self.entries}
                _write_atomically(self.path, json.dumps(doc, indent=1, sort_keys=True))
        except OSError as e:  # a read-only or full disk: keep measuring, in memory only
            log.warning("remat: profile cache %s not written (%s); caching in memory only", self.path, e)
            self.path = None


def _read_entries(path: Path) -> dict[str, Any]:
    """The entries of a cache file; {} when it is missing, unreadable or of another format."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(doc, dict) and doc.get("format") == FORMAT and isinstance(doc.get("entries"), dict)
    return doc["entries"] if ok else {}


def _write_atomically(path: Path, text: str) -> None:
    """Write a temporary file next to ``path`` and rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive lock between processes (fcntl; where there is none, writes stay atomic but
    two processes writing at once may each keep only their own new entries)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---- bandwidth and link --------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkRates:
    """Host<->device copy rates with pinned host memory, bytes/s per direction."""

    to_host: float
    to_device: float


_COPY_BYTES = {"cuda": 1 << 28, "cpu": 1 << 26}  # larger than the device's caches


def measure_bandwidth(
    device: torch.device | str = "cpu", cache: ProfileCache | None = None, nbytes: int | None = None,
) -> float:
    """Device memory bytes/s of a large copy (bytes read plus bytes written; ``fastest_seconds``),
    measured once per device and kept in ``cache`` (default: the device's disk cache)."""
    cache = cache if cache is not None else ProfileCache.for_device(device)
    known = cache.get(BANDWIDTH_KEY)
    if known is not None:
        return float(known)
    device = torch.device(device)
    n = nbytes or _COPY_BYTES.get(device.type, _COPY_BYTES["cuda"])
    with _real_tensors():
        src = torch.ones(n, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        seconds = fastest_seconds("dst.copy_(src)", {"dst": dst, "src": src}, min_run_time=0.2)
    rate = 2 * n / seconds
    cache.put(BANDWIDTH_KEY, rate)
    return rate


# transcendental ops of a recomputed chain (on a CPU tensor small enough to stay in cache: compute-bound);
# arithmetic (mul, add: 5 G elements/s here, 8x exp's) runs at the speed of a fused kernel's traffic
_ELEMENTWISE_STMT = "torch.sigmoid(x, out=y); torch.exp(x, out=y); torch.tanh(x, out=y)"
_ELEMENTWISE_OPS = 3


def elementwise_numel(device: torch.device | str) -> int:
    """Elements per op of the elementwise-rate measurement: 64 K on the CPU (in cache); 16 M on a
    GPU, where each op is a kernel launch of microseconds: at 64 K elements an H200 measured
    5.6 G op/s, the launches' rate, and the roofline priced the GPT's pointwise ops 50x too high.
    16 M makes the launches negligible; the rate is then at most the memory-bound one, a lower
    bound of what a fused chain reaches."""
    return 1 << 16 if torch.device(device).type == "cpu" else 1 << 24


def measure_elementwise_rate(
    device: torch.device | str = "cpu", cache: ProfileCache | None = None, numel: int | None = None,
) -> float:
    """Element ops per second of transcendental pointwise work (sigmoid, exp, tanh on ``numel``
    fp32 elements, default ``elementwise_numel``, at this process's thread count;
    ``fastest_seconds``), measured once per device and kept in ``cache``: what the transcendental
    ops of a fused pointwise chain (``remat.pricing.transcendental_ops``) cost when it is not bound
    by memory traffic."""
    cache = cache if cache is not None else ProfileCache.for_device(device)
    known = cache.get(ELEMENTWISE_KEY)
    if known is not None:
        return float(known)
    numel = numel or elementwise_numel(device)
    with _real_tensors(device):
        x = torch.rand(numel, device=torch.device(device))
        env = {"torch": torch, "x": x, "y": torch.empty_like(x)}
        seconds = fastest_seconds(_ELEMENTWISE_STMT, env, min_run_time=0.1)
    rate = _ELEMENTWISE_OPS * numel / seconds
    cache.put(ELEMENTWISE_KEY, rate)
    return rate


# Inductor's CPU idioms whose cost per element a byte count misses, as its generated code writes them
# (torch/csrc/inductor/cpp_prefix.h): mode 0 draws ``prims.inductor_random`` from the seed and the
# element's index (one Philox engine per element); 1 stores a comparison as a bool through ``VecMask``
# with a count; 2 loads a bool the same way. Built once by Inductor's own C++ code cache (5 s of wall
# time the first time on this 2-core machine, then loaded from its disk cache).
_CPU_IDIOMS = r"""
#include <torch/csrc/inductor/cpp_prefix.h>
extern "C" void kernel(const int64_t* seed, float* x, bool* mask, const int64_t n, const int64_t mode)
{
    using V = at::vec::Vectorized<float>;
    constexpr int64_t w = V::size();
    if (mode == 0) {
        for (int64_t i = 0; i < n; ++i) x[i] = normalized_rand_cpu(seed[0], i);
    } else if (mode == 1) {
        for (int64_t i = 0; i < n; i += w)
            at::vec::VecMask<float, 1>(V::loadu(x + i, w) > V(0.5f)).store(mask + i, w);
    } else {
        for (int64_t i = 0; i < n; i += w)
            at::vec::VecMask<float, 1>::from(mask + i, w).to<float, 1>().store(x + i);
    }
}
"""
_IDIOM_MODES = {RANDOM_KEY: 0, BOOL_STORE_KEY: 1, BOOL_LOAD_KEY: 2}


def measure_cpu_rate(
    key: str, device: torch.device | str = "cpu", cache: ProfileCache | None = None, numel: int = 1 << 16,
) -> float | None:
    """Elements per second of one of Inductor's CPU idioms (``key``: ``RANDOM_KEY``, a random draw
    replayed from a seed, a recomputed dropout mask's; ``BOOL_STORE_KEY`` / ``BOOL_LOAD_KEY``, a bool
    tensor written / read), on ``numel`` elements in cache at this process's thread count
    (``fastest_seconds``), measured once per device and kept in ``cache``; None off the CPU (a GPU
    does them at the speed of its memory traffic)."""
    if torch.device(device).type != "cpu":
        return None
    cache = cache if cache is not None else ProfileCache.for_device(device)
    known = cache.get(key)
    if known is not None:
        return float(known)
    from torch._inductor.codecache import CppPythonBindingsCodeCache

    types = ["const int64_t*", "float*", "bool*", "const int64_t", "const int64_t"]
    kernel = CppPythonBindingsCodeCache.load_pybinding(types, _CPU_IDIOMS)
    with _real_tensors():
        env = {"kernel": kernel, "seed": torch.tensor([1], dtype=torch.int64), "x": torch.rand(numel),
               "mask": torch.rand(numel) > 0.5, "n": numel, "mode": _IDIOM_MODES[key]}
        seconds = fastest_seconds("kernel(seed, x, mask, n, mode)", env, min_run_time=0.1)
    rate = numel / seconds
    cache.put(key, rate)
    return rate


def measure_link(
    device: torch.device | str = "cpu", cache: ProfileCache | None = None, nbytes: int = 1 << 28,
) -> LinkRates | None:
    """Pinned host<->device copy rates of a CUDA device, measured once and cached; None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    cache = cache if cache is not None else ProfileCache.for_device(device)
    known = cache.get(LINK_KEY)
    if known is not None:
        return LinkRates(*known)
    with _real_tensors():
        host = torch.ones(nbytes, dtype=torch.uint8).pin_memory()
        dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
        env = {"host": host, "dev": dev}  # the Timer synchronises CUDA around each block
        to_host = nbytes / median_statement_seconds("host.copy_(dev, non_blocking=True)", env, min_run_time=0.2)
        to_device = nbytes / median_statement_seconds("dev.copy_(host, non_blocking=True)", env, min_run_time=0.2)
    rates = LinkRates(to_host, to_device)
    cache.put(LINK_KEY, [rates.to_host, rates.to_device])
    return rates


# ---- small matmuls ------------------------------------------------------------------------------

MATMUL_TABLE_KEY = "matmul_table float32 v1"
# the grid of ``measure_matmul_table``: m, k, n of a mm; of each matrix of a bmm of ``_BMM_BATCH``. On this
# CPU a matmul's time is near linear in m from m = 256 on (factor 4 between points) but jumps between
# neighbouring k and n (an output 8 wide runs at a third of one 16 wide): factor 2 there
_MM_GRID = ((16, 64, 256, 1024, 4096), (4, 8, 16, 32, 64, 128, 256, 512), (4, 8, 16, 32, 64, 128, 256, 512))
_BMM_GRID = ((8, 16, 32, 64, 128, 256),) * 3
_BMM_BATCH = 32
_MAX_TABLE_FLOPS = 1 << 26  # larger calls (over ~0.7 ms here) run near the roofline's rate: not timed


def matmul_points() -> list[tuple[str, str, int, int, int]]:
    """The (kind, layout, m, k, n) of the matmul table (``remat.cost.MatmulTable``): each
    grid point of ``_MM_GRID`` and ``_BMM_GRID`` under ``_MAX_TABLE_FLOPS``, both layouts."""
    points = []
    for kind, grid, batch in (("mm", _MM_GRID, 1), ("bmm", _BMM_GRID, _BMM_BATCH)):
        for m in grid[0]:
            for k in grid[1]:
                for n in grid[2]:
                    if 2 * batch * m * k * n <= _MAX_TABLE_FLOPS:
                        points += [(kind, layout, m, k, n) for layout in ("NN", "NT")]
    return points


def measure_matmul_table(cache: ProfileCache | None = None, min_run_time: float = 0.005,
                         passes: int = 2) -> MatmulTable:
    """Seconds of float32 matmuls on the CPU at ``matmul_points`` (``torch.mm`` / ``torch.bmm``
    with ``out=``, as Inductor's code calls them), at this process's thread count: the fastest of
    short blocks (``fastest_seconds``) over ``passes`` passes through the grid (a burst of
    contention on shared cores lasts longer than one point's timing). Measured once and kept in
    ``cache`` (default: the CPU's disk cache)."""
    cache = cache if cache is not None else ProfileCache.for_device("cpu")
    known = matmul_table(cache)
    if known is not None:
        return known
    points = matmul_points()
    best = [math.inf] * len(points)
    with _real_tensors():
        for _ in range(passes):
            for i, point in enumerate(points):
                best[i] = min(best[i], _matmul_seconds(*point, min_run_time))
    cache.put(MATMUL_TABLE_KEY, {"bmm_batch": _BMM_BATCH, "points": [[*p, t] for p, t in zip(points, best)]})
    return matmul_table(cache)


def _matmul_seconds(kind: str, layout: str, m: int, k: int, n: int, min_run_time: float) -> float:
    """Fastest seconds of one call of a table point (``measure_matmul_table``) on random inputs."""
    batch = (_BMM_BATCH,) if kind == "bmm" else ()
    a = torch.randn(*batch, m, k)
    b = torch.randn(*batch, k, n) if layout == "NN" else torch.randn(*batch, n, k).transpose(-1, -2)
    env = {"op": torch.bmm if kind == "bmm" else torch.mm, "a": a, "b": b, "out": torch.empty(*batch, m, n)}
    env["op"](a, b, out=env["out"])  # warm-up
    return fastest_seconds("op(a, b, out=out)", env, min_run_time)


def matmul_table(cache: ProfileCache) -> MatmulTable | None:
    """The matmul table that ``measure_matmul_table`` cached; None where there is none."""
    known = cache.get(MATMUL_TABLE_KEY)
    if not isinstance(known, dict):
        return None
    points = tuple(((kind, layout, int(m), int(k), int(n)), float(t)) for kind, layout, m, k, n, t in known["points"])
    return MatmulTable(points, int(known["bmm_batch"]))


# ---- this machine's roofline --------------------------------------------------------------------


def matmul_rates(cache: ProfileCache) -> dict[str, float]:
    """Matmul FLOP/s by dtype name that ``remat profile`` cached (``remat.measure.matmul_flops``'s
    'matmul_flops DTYPE n=SIZES' entries): the best over the size sets measured."""
    rates: dict[str, float] = {}
    for key, value in cache.entries.items():
        parts = key.split(" ")
        if len(parts) == 3 and parts[0] == "matmul_flops" and isinstance(value, (int, float)):
            rates[parts[1]] = max(rates.get(parts[1], 0.0), float(value))
    return rates


def machine_spec(device: Any = "auto") -> DeviceSpec:
    """The ``device`` option's spec (``remat.cost.device_spec``), with this machine's profiled rates
    (``profiled_spec``) where it is "auto" on the CPU: the roofline that planning uses."""
    spec = device_spec(device)
    auto = isinstance(device, str) and device.lower() == "auto"
    return profiled_spec(spec) if auto and spec.name == "cpu" else spec


def profiled_spec(spec: DeviceSpec, device: torch.device | str = "cpu") -> DeviceSpec:
    """``spec`` with the rates that ``remat profile`` cached for ``device`` at this process's
    thread count: its fp32 matmul FLOP/s, copy bandwidth, (when cached) elementwise rate, the
    rates of Inductor's CPU idioms (``measure_cpu_rate``, else ``spec``'s) and the table of small
    matmuls (``measure_matmul_table``, else none), and ``rates`` naming the file; ``spec`` itself
    when the cache is off or lacks either of the first two."""
    if not cache_enabled():
        return spec
    cache = ProfileCache.for_device(device)
    flops, bandwidth = matmul_rates(cache).get("float32"), cache.get(BANDWIDTH_KEY)
    if not flops or not bandwidth:
        return spec
    return replace(spec, peak_flops=flops, bandwidth=float(bandwidth), rates=f"profile {cache.path}",
                   elementwise_rate=float(cache.get(ELEMENTWISE_KEY) or 0.0), **_idiom_rates(cache.get, spec),
                   matmul_table=matmul_table(cache))


def _idiom_rates(rate_of: Callable[[str], Any], spec: DeviceSpec) -> dict[str, float]:
    """The ``DeviceSpec`` fields of the rates of Inductor's CPU idioms: ``rate_of(key)`` where it
    knows one, else ``spec``'s."""
    return {key: float(rate_of(key) or getattr(spec, key)) for key in (RANDOM_KEY, BOOL_LOAD_KEY, BOOL_STORE_KEY)}


# ---- budgets and the capture stage's view --------------------------------------------------------


@dataclass
class ProfileStats:
    """What the op-time lookups gave: each lookup is measured, cached or a fallback (roofline)."""

    measured: int = 0
    cache_hits: int = 0
    fallbacks: int = 0
    negligible: int = 0  # op lookups not measured: negligible in their graph (``MeasuredCosts.negligible``)
    seconds: float = 0.0  # spent measuring (ops, bandwidth, link)

    def summary(self) -> str:
        return (f"{self.measured} measured, {self.cache_hits} cached, {self.fallbacks} roofline "
                f"({self.negligible} of them negligible ops, not timed); {self.seconds:.1f} s measuring")


class Profiler:
    """Op times and scratch bytes of one device by signature: the cache first, then a measurement
    while the total budget lasts (``measure=False``: the cache only, as with a saved profile)."""

    def __init__(
        self, device: torch.device | str = "cpu", total_budget_s: float = 30.0, per_op_budget_s: float = 0.05,
        cache: ProfileCache | bool | None = None, measure: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.total_budget_s, self.per_op_budget_s, self.measure = total_budget_s, per_op_budget_s, measure
        self.cache = cache if isinstance(cache, ProfileCache) else ProfileCache.for_device(self.device, cache)
        self.stats = ProfileStats()
        self._failed: set[tuple[str, OpSignature]] = set()

    def op_time(self, sig: OpSignature | None, measure: bool = True) -> float | None:
        """Seconds of one call of ``sig``; None (a fallback) when unknown and not measurable
        (``measure=False``: the cache only)."""
        timing = (lambda: measure_op(sig, self.device, self.per_op_budget_s)) if measure else None
        seconds = self._lookup("op ", sig, timing)
        return None if seconds is None else float(seconds)

    def workspace(self, sig: OpSignature | None) -> int | None:
        """Scratch bytes of one call of ``sig`` (``measure_workspace``); None when unknown and not
        measurable."""
        nbytes = self._lookup("workspace ", sig, lambda: measure_workspace(sig, self.device))
        return None if nbytes is None else int(nbytes)

    def _lookup(self, kind: str, sig: OpSignature | None, measure: Callable[[], Any] | None) -> Any:
        """The cached value of ``kind`` + ``sig``'s key, else ``measure()``'s while the total budget
        lasts (kept in the cache); None when neither gives one (``measure`` None: not measured)."""
        known = self.cache.get(kind + sig.key()) if sig is not None else None
        if known is not None:
            self.stats.cache_hits += 1
            return known
        failed = (kind, sig) in self._failed
        if sig is None or failed or not self.measure or measure is None or self.stats.seconds >= self.total_budget_s:
            self.stats.fallbacks += 1
            return None
        with self._timed():
            value = measure()
        if value is None:
            self._failed.add((kind, sig))
            self.stats.fallbacks += 1
            return None
        self.cache.put(kind + sig.key(), value)
        self.stats.measured += 1
        return value

    def bandwidth(self) -> float | None:
        """Measured device memory bytes/s (from the cache alone when not measuring)."""
        if not self.measure:
            known = self.cache.get(BANDWIDTH_KEY)
            return None if known is None else float(known)
        with self._timed():
            return measure_bandwidth(self.device, self.cache)

    def elementwise_rate(self) -> float | None:
        """Measured element ops/s of cache-resident transcendental pointwise work (from the cache
        alone when not measuring)."""
        if not self.measure:
            known = self.cache.get(ELEMENTWISE_KEY)
            return None if known is None else float(known)
        with self._timed():
            return measure_elementwise_rate(self.device, self.cache)

    def cpu_rate(self, key: str) -> float | None:
        """Measured elements/s of one of Inductor's CPU idioms (``measure_cpu_rate``; from the cache
        alone when not measuring); None off the CPU."""
        if not self.measure:
            known = self.cache.get(key)
            return None if known is None else float(known)
        with self._timed():
            return measure_cpu_rate(key, self.device, self.cache)

    def link(self) -> LinkRates | None:
        """Measured host<->device rates; None off CUDA (or not in a saved profile)."""
        if not self.measure:
            known = self.cache.get(LINK_KEY)
            return None if known is None else LinkRates(*known)
        with self._timed():
            return measure_link(self.device, self.cache)

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stats.seconds += time.perf_counter() - t0


class MeasuredCosts:
    """Measured costs of a graph's nodes, for the capture stage; every None means: roofline.

    ``source`` is "measured" or the path of the saved profile, for the report."""

    def __init__(self, profiler: Profiler, source: str = "measured") -> None:
        self.profiler, self.source = profiler, source
        self._graph_seconds: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> its ops' roofline seconds

    @classmethod
    def measure(cls, device: torch.device | str = "cpu", **profiler_options: Any) -> MeasuredCosts:
        """Measure on ``device`` (options of ``Profiler``: budgets, cache)."""
        return cls(Profiler(device, **profiler_options))

    @classmethod
    def load(cls, path: str | os.PathLike) -> MeasuredCosts:
        """Costs from a saved profile (a cache file, possibly of another machine); measures nothing."""
        return cls(Profiler(cache=ProfileCache.load(path), measure=False), source=str(path))

    def op_time(self, node: fx.Node) -> float | None:
        """Measured seconds of the node's op run as a kernel of its own; None: use the roofline. An
        op whose time is negligible in its graph (``negligible``) is not timed; a saved or
        cached time still answers for it."""
        sig = signature_of(node)
        skip = sig is not None and self.profiler.measure and self.negligible(node)
        seconds = self.profiler.op_time(sig, measure=not skip)
        self.stats.negligible += skip and seconds is None
        return seconds

    def negligible(self, node: fx.Node) -> bool:
        """Whether the node's op alone takes under ``NEGLIGIBLE_SHARE`` of its graph's ops alone,
        both on the roofline (``remat.cost.node_time``, this machine's spec): a measurement costs
        far more compile time (tens of ms) than a misprice of such an op can cost the step."""
        total = self._graph_seconds.get(node.graph)
        if total is None:
            total = self._graph_seconds[node.graph] = sum(node_time(n, self._spec) for n in node.graph.nodes)
        return node_time(node, self._spec) < NEGLIGIBLE_SHARE * total

    @functools.cached_property
    def _spec(self) -> DeviceSpec:
        return machine_spec("auto")

    @functools.cached_property
    def bandwidth(self) -> float | None:
        return self.profiler.bandwidth()

    @functools.cached_property
    def link(self) -> LinkRates | None:
        return self.profiler.link()

    @functools.cached_property
    def elementwise_rate(self) -> float | None:
        return self.profiler.elementwise_rate()

    @functools.cached_property
    def element_rates(self) -> ElementRates:
        """The rates of per-element work (``remat.cost.ElementRates``): the measured elementwise
        rate (0, not priced, where unmeasured), the measured rates of Inductor's CPU idioms (the
        machine's spec's where unmeasured)."""
        measured = _idiom_rates(self.profiler.cpu_rate, self._spec)
        return replace(self._spec, elementwise_rate=self.elementwise_rate or 0.0, **measured).element_rates()

    def fused_time(self, bytes_moved: float, work: ElementWork = ElementWork()) -> float | None:
        """Seconds of a pointwise chain fused into its reader's kernel (``remat.cost.fused_time``):
        the longer of its memory traffic at the measured bandwidth and its per-element ``work`` at
        ``element_rates``, no launch of its own; None without a measured bandwidth."""
        bandwidth = self.bandwidth
        if bandwidth is None:
            return None
        return fused_time(bytes_moved, work, bandwidth, self.element_rates)

    @property
    def stats(self) -> ProfileStats:
        return self.profiler.stats


COST_MODELS = ("auto", "measured", "roofline")
COST_MODEL_HELP = (
    "cost_model must be 'auto' (measured for CUDA graphs; roofline on the CPU, where timings on shared "
    "cores are contention, and in remat.analyze, on fake tensors), 'measured', 'roofline', or the path "
    "of a saved profile (a remat.profile JSON file)"
)


def parse_cost_model(value: Any = "auto") -> str:
    """Validate the ``cost_model`` option: one of COST_MODELS, or the path of a saved profile,
    returned absolute (ConfigError lists what is valid, or says why the file is not a profile)."""
    if isinstance(value, str) and value.lower() in COST_MODELS:
        return value.lower()
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ConfigError(f"{COST_MODEL_HELP}; got {value!r}")
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{COST_MODEL_HELP}; got {value!r}, which is not a file")
    ProfileCache.load(path)
    return str(path)
