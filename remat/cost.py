"""Device specs and roofline estimates of an op's time and a tensor's bytes.

time(op) = max(flops / peak_flops, bytes_moved / bandwidth) + launch overhead. FLOPs come from
torch's flop-counter formulas evaluated on the node's fake-tensor metadata; the CPU attention op,
which has no formula in torch, gets the standard attention count so attention never looks free.
``node_time`` prices a graph node alone (``remat.profile.MeasuredCosts`` skips timing the ops
whose share of their graph's time it says is negligible). A pointwise chain fused into another
kernel is priced by ``fused_time``: the longer of its memory
traffic at the device's bandwidth and its transcendental element ops (exp, sigmoid, tanh, ...:
one op per element of each such result, ``remat.pricing.transcendental_ops``) at the device's
elementwise rate, with no launch of its own; its arithmetic runs at the speed of its traffic.
``ElementWork`` is the per-element work that bytes do not price, at ``ElementRates``: transcendental
element ops; random draws that Inductor's code replays from a seed (a dropout mask recomputed in
the backward, ``remat.pricing.random_elements``: on a CPU one Philox engine per element, 10 ns at
one thread, 6x an exp); and a bool tensor's elements read (Inductor's CPU code loads and stores a
bool through ``VecMask`` with a count: ~4 ns an element loaded, ~12 written, 20-70x a float's
traffic). ``ElementRates.bool_store`` prices the forward's write of a bool that a plan saves
(``remat.pricing.forward_write_time``).
``remat.profile.parse_cost_model`` validates the option that chooses between this roofline and
the measured costs of ``remat.profile``.

A small fp32 matmul runs far below the FLOP rate of large ones: on one thread of this CPU (AMD
EPYC, MKL, 2026) (1024, 16) @ (16, 8) takes 24 us, the roofline's 4.7, and twice its FLOPs,
(1024, 16) @ (16, 16), 10 us. ``MatmulTable`` holds the times that ``remat profile`` measured on a
grid of shapes (``remat.profile.measure_matmul_table``) and interpolates them; ``remat.pricing``
prices a matmul inside it by the table. Its error here, against the same calls timed alone: at
sizes that are multiples of 8, median 3.5 % (mm) and 1.3 % (bmm), worst -19 %; at other sizes
the table reads low (median -21 % / -31 %, worst -54 %: odd sizes run slower than the powers of two
around them; rounding them up to a multiple of 8 halves that bias but not the worst case).

The CPU's constants are an order of magnitude, never calibrated. Where ``remat profile`` has
cached this machine's rates (for this process's thread count), planning with ``device="auto"`` on
the CPU uses a spec with them instead (``remat.profile.machine_spec``): its fp32 matmul FLOP/s, copy
bandwidth, elementwise rate, random rate and bool load / store rates; ``DeviceSpec.rates`` says which were used. Named devices keep their figures.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    peak_flops: float  # FLOP/s of dense matmul at the working dtype
    bandwidth: float  # device memory bytes/s
    host_bandwidth: float  # device<->host bytes/s per direction (0: no offload target)
    launch_overhead: float = 5e-6  # seconds per kernel
    elementwise_rate: float = 0.0  # element ops/s of transcendental pointwise work in cache; 0: unknown
    random_rate: float = 0.0  # elements/s of Inductor's seeded random draws (``random_elements``); 0: unknown
    bool_load_rate: float = 0.0  # elements/s of a bool tensor read by Inductor's code; 0: its bytes at the bandwidth
    bool_store_rate: float = 0.0  # elements/s of a bool tensor written by Inductor's code; 0: its bytes at the bandwidth
    rates: str = "constants"  # where the rates come from: "constants", or "profile <its file>"
    matmul_table: MatmulTable | None = None  # measured times of small fp32 matmuls; None: the roofline prices all

    def rates_note(self) -> str:
        """The rates and where they come from, for reports: 'constants', or the profiled rates."""
        if self.rates == "constants":
            return "constants"
        return (f"{self.rates}: matmul {self.peak_flops / 1e9:.1f} GFLOP/s, {self.bandwidth / 1e9:.2f} GB/s, "
                f"elementwise {self.elementwise_rate / 1e9:.2f} G op/s, random {self.random_rate / 1e6:.0f} M el/s, "
                f"bool load / store {self.bool_load_rate / 1e6:.0f} / {self.bool_store_rate / 1e6:.0f} M el/s"
                + (f", {self.matmul_table!r}" if self.matmul_table is not None else ""))

    def element_rates(self) -> "ElementRates":
        """The spec's rates of per-element work (``ElementWork``)."""
        return ElementRates(self.elementwise_rate, self.random_rate, self.bool_load_rate, self.bool_store_rate)


MatmulPoint = tuple[str, str, int, int, int]  # (kind "mm" / "bmm", layout "NN" / "NT", m, k, n)


@dataclass(frozen=True, repr=False)
class MatmulTable:
    """Seconds of one float32 matmul call measured at the points of a grid: ``points`` pairs
    (kind, layout, m, k, n) with seconds. Kind "mm" is (m, k) @ (k, n); "bmm" a batch of
    ``bmm_batch`` of them. Layout "NN": both operands row-major; "NT": the second one transposed
    (a Linear's weight). Plain, hashable data (a ``DeviceSpec`` field)."""

    points: tuple[tuple[MatmulPoint, float], ...]
    bmm_batch: int = 32

    def seconds(self, kind: str, layout: str, m: int, k: int, n: int) -> float | None:
        """The time of (m, k) @ (k, n) interpolated log-log (trilinear in log2 of m, k, n, on log
        time) between the grid points around it; a size under the grid's smallest counts as the
        smallest (a smaller call costs no more). None above the grid, or where a point around it
        was not measured (the grid leaves out matmuls large enough for the roofline)."""
        grid = self._grid.get((kind, layout))
        if grid is None:
            return None
        brackets = [_bracket(axis, size) for axis, size in zip(grid[0], (m, k, n))]
        if any(b is None for b in brackets):
            return None
        log_t = 0.0
        for corner in range(8):
            weight, at = 1.0, []
            for dim, (lo, hi, w) in enumerate(brackets):
                upper = corner >> dim & 1
                weight *= w if upper else 1.0 - w
                at.append(hi if upper else lo)
            if weight == 0.0:
                continue
            t = grid[1].get(tuple(at))
            if t is None:
                return None
            log_t += weight * math.log(t)
        return math.exp(log_t)

    @functools.cached_property
    def _grid(self) -> dict[tuple[str, str], tuple[tuple[tuple[int, ...], ...], dict[tuple[int, int, int], float]]]:
        """Per (kind, layout): the sorted sizes of each axis, and the seconds by (m, k, n)."""
        out: dict = {}
        for (kind, layout, *mkn), t in self.points:
            out.setdefault((kind, layout), {})[tuple(mkn)] = t
        return {key: (tuple(tuple(sorted({p[d] for p in pts})) for d in range(3)), pts) for key, pts in out.items()}

    def __repr__(self) -> str:
        digest = hashlib.sha1(repr((self.points, self.bmm_batch)).encode()).hexdigest()[:10]
        return f"MatmulTable({len(self.points)} points, bmm batch {self.bmm_batch}, {digest})"


def _bracket(axis: tuple[int, ...], size: int) -> tuple[int, int, float] | None:
    """The grid sizes around ``size`` on ``axis`` and ``size``'s place between them in log2 (0: at
    the lower one); the smallest twice for a size under it; None above the largest."""
    if size <= axis[0]:
        return axis[0], axis[0], 0.0
    if size > axis[-1]:
        return None
    hi = next(i for i, a in enumerate(axis) if a >= size)
    lo, up = axis[hi - 1], axis[hi]
    return lo, up, math.log(size / lo) / math.log(up / lo)


@dataclass(frozen=True)
class ElementRates:
    """Elements per second of the work that a kernel's bytes do not price; 0: unknown, not priced."""

    elementwise: float = 0.0  # transcendental element ops (exp, tanh, ...) on data in cache
    random: float = 0.0  # draws that Inductor's code replays from a seed (a dropout mask's)
    bool_load: float = 0.0  # a bool tensor's elements read (Inductor's CPU code: ``VecMask::from``)
    bool_store: float = 0.0  # a bool tensor's elements written (``VecMask::store``)


@dataclass(frozen=True)
class ElementWork:
    """A kernel's per-element work that its bytes do not price (counts of elements)."""

    transcendental: float = 0.0  # transcendental element ops (``remat.pricing.transcendental_ops``)
    draws: float = 0.0  # replayed random draws (``remat.pricing.random_elements``)
    bool_loads: float = 0.0  # elements of the bool tensors it reads from memory

    def seconds(self, rates: ElementRates) -> float:
        """Seconds of this work at ``rates``, one kind after another (a rate 0: not priced)."""
        return (_per(self.transcendental, rates.elementwise) + _per(self.draws, rates.random)
                + _per(self.bool_loads, rates.bool_load))


def _per(count: float, rate: float) -> float:
    """Seconds of ``count`` elements at ``rate`` per second; 0 where the rate is unknown (0)."""
    return count / rate if rate > 0 else 0.0


DEVICES = {
    # 2 cores, AVX2-class: measured order of magnitude for fp32 matmul and streaming copies; Inductor's
    # CPU random draw (normalized_rand_cpu: one Philox4x32-10 engine per element) 10 ns an element at
    # one thread (AMD EPYC, 2026: ``remat profile``'s fastest window; medians 16-18 ns at load 4), 6x an exp;
    # a bool through VecMask with a count (AVX2, 1M elements): 3.9 ns an element loaded, 12.4 stored.
    "cpu": DeviceSpec("cpu", peak_flops=1.0e11, bandwidth=1.0e10, host_bandwidth=1.0e10, launch_overhead=2e-6,
                      random_rate=1.0e8, bool_load_rate=2.5e8, bool_store_rate=8.0e7),
    # host_bandwidth: about half the pinned copy rate over PCIe (53.6 GB/s measured on an H200):
    # copies are placed by roofline op times, which run faster than modelled in places, and a
    # prefetch placed at the full rate stalled the backward (benchmarks/gpu_diag.py).
    "a100": DeviceSpec("a100", peak_flops=156e12, bandwidth=1.555e12, host_bandwidth=12e9),
    "h100": DeviceSpec("h100", peak_flops=495e12, bandwidth=3.35e12, host_bandwidth=25e9),
    "h200": DeviceSpec("h200", peak_flops=495e12, bandwidth=4.8e12, host_bandwidth=25e9),
}
DEVICE_HELP = (
    "device must be 'auto', one of " + ", ".join(repr(k) for k in DEVICES)
    + ", or a dict with numeric 'peak_flops' and 'bandwidth' (and optional 'host_bandwidth')"
)


def device_spec(device: Any = "auto") -> DeviceSpec:
    """Resolve the ``device`` option to a DeviceSpec (ConfigError lists what is valid)."""
    if isinstance(device, DeviceSpec):
        return device
    if isinstance(device, tuple):  # RematConfig stores dicts as sorted item tuples
        device = dict(device)
    if isinstance(device, dict):
        extra = set(device) - {"peak_flops", "bandwidth", "host_bandwidth", "name"}
        try:
            spec = DeviceSpec(
                name=str(device.get("name", "custom")),
                peak_flops=float(device["peak_flops"]),
                bandwidth=float(device["bandwidth"]),
                host_bandwidth=float(device.get("host_bandwidth", 0.0)),
            )
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{DEVICE_HELP}; got {device!r}") from None
        if extra or spec.peak_flops <= 0 or spec.bandwidth <= 0 or spec.host_bandwidth < 0:
            raise ConfigError(f"{DEVICE_HELP}; got {device!r}")
        return spec
    if not isinstance(device, str):
        raise ConfigError(f"{DEVICE_HELP}; got {device!r}")
    key = device.lower()
    if key == "auto":
        return _detect()
    if key not in DEVICES:
        raise ConfigError(f"{DEVICE_HELP}; got {device!r}")
    return DEVICES[key]


def _detect() -> DeviceSpec:
    """The spec of this process's device: a GPU's by its name, else the CPU's constants
    (``remat.profile.machine_spec`` adds the rates that ``remat profile`` cached)."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name().lower()
        for key in ("h200", "h100", "a100"):
            if key in name:
                return DEVICES[key]
        return DEVICES["a100"]
    return DEVICES["cpu"]


def hint(x: Any) -> int:
    """A concrete int for an int or SymInt: its hint under dynamic shapes, read without adding a
    guard (``int()`` of a SymInt would specialise the graph to that size)."""
    import torch
    from torch.fx.experimental import symbolic_shapes

    # torch 2.13's name; 2.11 (the GPU machines' image) has the same as ``size_hint``
    optimization_hint = getattr(symbolic_shapes, "optimization_hint", None) or symbolic_shapes.size_hint
    if isinstance(x, torch.SymInt):
        from torch._inductor.config import unbacked_symint_fallback  # as Inductor sizes unbacked symbols

        return int(optimization_hint(x, fallback=unbacked_symint_fallback))
    return int(x)


def tensor_bytes(t: Any) -> int:
    """Bytes of a (fake) tensor's own elements; 0 for non-tensors."""
    import torch

    if not isinstance(t, torch.Tensor):
        return 0
    numel = 1
    for s in t.shape:
        numel *= hint(s)
    return numel * t.element_size()


def _attention_flops(q: Any, k: Any, v: Any) -> int:
    """2*B*H*Sq*Sk*D for QK^T plus the same for PV."""
    b, h, sq, d = (hint(s) for s in q.shape)
    sk, dv = hint(k.shape[-2]), hint(v.shape[-1])
    return 2 * b * h * sq * sk * d + 2 * b * h * sq * sk * dv


def op_flops(target: Any, args: tuple, kwargs: dict, out: Any) -> int:
    """FLOPs of one ATen op from torch's flop formulas (0 for ops without one)."""
    import torch
    from torch.utils.flop_counter import flop_registry

    packet = getattr(target, "overloadpacket", None)
    name = str(packet) if packet is not None else ""
    if "scaled_dot_product" in name and "attention" in name and "for_cpu" in name:
        q, k, v = args[:3]
        fwd = _attention_flops(q, k, v)
        return int(fwd * 2.5) if "backward" in name else fwd
    if packet in flop_registry:
        try:
            return int(flop_registry[packet](*args, **kwargs, out_val=out))
        except Exception:
            return 0
    if isinstance(out, torch.Tensor):  # pointwise and reductions: about one FLOP an element
        return tensor_bytes(out) // max(out.element_size(), 1)
    return 0


def op_time(flops: float, bytes_moved: float, spec: DeviceSpec, work: ElementWork | None = None) -> float:
    """Roofline time in seconds of a kernel; with ``work`` (its per-element work: transcendental
    ops, replayed draws, bool loads), at least that work's time at the spec's rates."""
    compute = work.seconds(spec.element_rates()) if work is not None else 0.0
    return max(flops / spec.peak_flops, bytes_moved / spec.bandwidth, compute) + spec.launch_overhead


def node_time(node: Any, spec: DeviceSpec) -> float:
    """Roofline seconds of a graph node's op run alone (``op_time``): its FLOPs (``op_flops``), its
    tensor inputs read and its results written, from the nodes' ``meta["val"]``; 0 for what is not
    an op call or has no such metadata."""
    import torch

    if getattr(node, "op", None) != "call_function":
        return 0.0
    val = lambda x: x.meta.get("val") if hasattr(x, "meta") else x  # noqa: E731
    try:
        args, kwargs = torch.utils._pytree.tree_map(val, (node.args, node.kwargs))
        out = node.meta.get("val")
        moved = sum(tensor_bytes(val(i)) for i in node.all_input_nodes)
        moved += sum(tensor_bytes(o) for o in torch.utils._pytree.tree_leaves(out))
        return op_time(op_flops(node.target, args, kwargs, out), moved, spec)
    except Exception:  # metadata that the formulas cannot read
        return 0.0


def fused_time(bytes_moved: float, work: ElementWork, bandwidth: float, rates: ElementRates) -> float:
    """Seconds of pointwise work that runs inside another kernel (a fused recomputation): its
    memory traffic at ``bandwidth`` (bytes/s) or its per-element ``work`` at ``rates``, whichever
    takes longer, and no launch. On one CPU thread a chain of transcendental ops, random draws or
    bool loads is compute-bound (a large copy's bandwidth prices it far too low); on a GPU the
    traffic dominates."""
    return max(bytes_moved / bandwidth, work.seconds(rates))
