"""The peak of device memory that Inductor's generated wrapper code allocates, read from the code.

Inductor's Python wrapper (``def call(self, args)``) is the exact sequence of what a compiled graph
allocates and frees: ``bufN = empty_strided_*(shape, stride, dtype)``, results of extern ops (their
sizes in the ``assert_size_stride`` that follows), aliases (``reinterpret_tensor``, ``bufN = bufM``,
tuple elements) and ``del``. Walking it gives the graph's peak as the machine sees it, except
the scratch memory inside extern kernels, which the caller may give (``workspaces``: measured per
kernel by ``remat.inductor_check``) and the walk then adds at each kernel's call. This catches what a model of
fusion misses: a fused kernel allocates all of its outputs before it runs and frees its inputs
only after it, however its ops would be ordered one by one (measured on a Llama MLP backward: five
2 MiB buffers live at once where both remat's model and Inductor's scheduler estimate had three).

An extern op's results exist from its call on, while its inputs live, though the code sizes them
later (tuple elements, a custom op's result asserted under an alias): the walk allocates them at
the call. Conventions, as in remat's model: inputs named ``primals_*`` are resident and not counted,
except the copies that the forward saves under such a name (``saved_copies``); every
other input (a saved activation, an incoming gradient) counts from the start until its ``del``;
host copies made by ``torch.ops.remat.to_host`` are not device memory and ``torch.ops.remat.free_``
frees its argument's device storage. On CUDA (a wrapper that allocates with ``empty_strided_cuda``
or runs under ``torch.cuda._DeviceGuard``) each storage counts as the caching allocator counts it in
``torch.cuda.max_memory_allocated``: rounded up to a multiple of ``CUDA_BLOCK_BYTES``.
"""

from __future__ import annotations

import ast
import itertools
import operator
import threading
from dataclasses import dataclass, field, replace
from typing import Iterable

__all__ = ["WrapperPeak", "wrapper_peak", "wrapper_peaks", "saved_copies", "saved_layout", "SavedLayout",
           "gradient_layout_copy_bytes", "collect_wrapper_code"]

_ALLOCATORS = {"empty_strided_cpu", "empty_strided_cuda", "empty_strided_xpu", "empty_strided_mps", "empty_strided"}
_HOST_RESULT = ("remat.to_host",)
_FREES_ARGUMENT = ("remat.free_",)
CUDA_BLOCK_BYTES = 512  # the CUDA caching allocator's smallest block: every allocation is a multiple of it


@dataclass
class WrapperPeak:
    """Peak bytes of one wrapper's ``call`` and what the walk could not size."""

    peak_bytes: int
    start_bytes: int  # inputs counted from the start (saved activations, gradients coming in)
    # results with no size assert and allocations of a size the walk cannot read (counted as 0)
    unsized: list[str] = field(default_factory=list)
    end_bytes: int = 0  # live when the call returns (its results)


class _Storages:
    """Device storages alive during the walk, each with the names that reference it (a tuple of
    extern results references the storage of every element)."""

    def __init__(self, block_bytes: int = 1) -> None:
        self.block_bytes = block_bytes  # every storage is a multiple of it (``CUDA_BLOCK_BYTES`` on CUDA)
        self.refs: dict[int, set[str]] = {}
        self.size: dict[int, int] = {}
        self.of_name: dict[str, set[int]] = {}
        self.live = 0
        self.peak = 0
        self._next = 0

    def new(self, name: str, nbytes: int) -> int:
        self.drop(name)
        nbytes = -(-nbytes // self.block_bytes) * self.block_bytes
        sid, self._next = self._next, self._next + 1
        self.refs[sid], self.size[sid] = set(), nbytes
        self.ref(name, sid)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        return sid

    def scratch(self, nbytes: int) -> None:
        """``nbytes`` allocated and freed again at this statement (an extern kernel's workspace)."""
        self.peak = max(self.peak, self.live + nbytes)

    def ref(self, name: str, sid: int) -> None:
        self.refs[sid].add(name)
        self.of_name.setdefault(name, set()).add(sid)

    def alias(self, name: str, source: str) -> None:
        sids = set(self.of_name.get(source, ()))
        if not sids or name == source:
            return
        self.drop(name)
        for sid in sids:
            self.ref(name, sid)

    def drop(self, name: str) -> None:
        for sid in self.of_name.pop(name, set()):
            self.refs[sid].discard(name)
            if not self.refs[sid]:
                self.live -= self.size.pop(sid)
                del self.refs[sid]

    def release(self, name: str) -> None:
        """The storages of ``name`` hold no device bytes any more (``remat.free_``)."""
        for sid in self.of_name.get(name, ()):
            self.live -= self.size[sid]
            self.size[sid] = 0


def storage_bytes(shape: Iterable[int], stride: Iterable[int], itemsize: int) -> int:
    """Bytes of a strided tensor's storage: 0 when a dimension is 0."""
    shape, stride = list(shape), list(stride)
    if any(d == 0 for d in shape):
        return 0
    return (1 + sum((d - 1) * s for d, s in zip(shape, stride))) * itemsize


_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
               ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


def _literal(node: ast.AST, sizes: dict[str, int] | None = None):
    """The value of an int, a tuple of ints or an integer expression of the size symbols in
    ``sizes`` (``(s77, 64)``, ``64*s77``; dynamic shapes); None for anything else."""
    sizes = sizes or {}
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name):
        return sizes.get(node.id)
    if isinstance(node, ast.Tuple):
        items = [_literal(e, sizes) for e in node.elts]
        return None if any(i is None for i in items) else tuple(items)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _literal(node.operand, sizes)
        return None if v is None else -v
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        a, b = _literal(node.left, sizes), _literal(node.right, sizes)
        if a is None or b is None or (b == 0 and isinstance(node.op, (ast.FloorDiv, ast.Mod))):
            return None
        return _ARITHMETIC[type(node.op)](a, b)
    return None


def _itemsize(node: ast.AST) -> int | None:
    import torch

    name = ast.unparse(node)
    dtype = getattr(torch, name.removeprefix("torch."), None)
    return dtype.itemsize if isinstance(dtype, torch.dtype) else None


def _call_name(call: ast.Call) -> str:
    return ast.unparse(call.func)


def _call_body(tree: ast.Module) -> list[ast.stmt] | None:
    """Statements of the wrapper's ``call`` (a method of ``Runner`` or a top-level function)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "call":
            return node.body
    return None


def _statements(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    """Statements in execution order, with ``with`` blocks (device guards, streams) opened."""
    for s in body:
        if isinstance(s, ast.With):
            yield from _statements(s.body)
        else:
            yield s


def _asserted_sizes(stmts: list[ast.stmt], sizes: dict[str, int]) -> dict[str, tuple]:
    """(shape, stride) of every name that an ``assert_size_stride(name, shape, stride, ...)``
    sizes, symbols taken from ``sizes``. The dtype is not in the assert: ``wrapper_peak`` takes it
    from ``itemsizes`` (4 bytes when unknown)."""
    out: dict[str, tuple] = {}
    for s in stmts:
        call = s.value if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) else None
        if call is None or _call_name(call) != "assert_size_stride" or len(call.args) < 3:
            continue
        name, shape, stride = ast.unparse(call.args[0]), _literal(call.args[1], sizes), _literal(call.args[2], sizes)
        if isinstance(shape, tuple) and isinstance(stride, tuple):
            out.setdefault(name, (shape, stride))
    return out


@dataclass
class _Sizing:
    """What sizes the storages of one wrapper: the asserted (shape, stride) of names, element
    sizes, the values of the size symbols, and the results that nothing sized."""

    shapes: dict[str, tuple]
    itemsizes: dict[str, int]
    sizes: dict[str, int]
    elements: dict[str, list[str]] = field(default_factory=dict)  # tuple name -> names of its ``x = tup[i]``
    workspaces: dict[str, int] = field(default_factory=dict)  # extern kernel's result name -> its scratch bytes
    unsized: list[str] = field(default_factory=list)

    def bytes_of(self, name: str) -> int:
        return storage_bytes(*self.shapes[name], self.itemsizes.get(name, 4))


def wrapper_peak(code: str, itemsizes: dict[str, int] | None = None, sizes: dict[str, int] | None = None,
                 counted: Iterable[str] = (), workspaces: dict[str, int] | None = None,
                 saved: SavedLayout | None = None) -> WrapperPeak | None:
    """Walk the ``call`` of Inductor's Python wrapper ``code``; None when there is none.

    ``itemsizes`` maps input and extern-result names to their element size where the code does
    not say it (the dtype of an input is not in its assert); 4 bytes otherwise. ``sizes`` gives
    the size symbols of a dynamic-shape graph their values (``{"s77": 512}``); the sizes that the
    code computes from them (``ps0 = 64*s77``) follow. ``counted`` names inputs called
    ``primals_*`` that are not resident but copies (``saved_copies``): they count from the start.
    ``workspaces`` maps an extern kernel's result name (``buf5 = op(...)``, ``op(..., out=buf5)``)
    to the scratch bytes it allocates while it runs, on top of what lives at its call. ``saved``
    says which inputs are views of one forward buffer or of a resident input (``saved_layout``)."""
    try:
        body = _call_body(ast.parse(code))
    except SyntaxError:
        return None
    if body is None:
        return None
    stmts = list(_statements(body))
    sizes = _derived_sizes(stmts, dict(sizes or {}))
    sizing = _Sizing(_asserted_sizes(stmts, sizes), dict(itemsizes or {}), sizes, _tuple_elements(stmts),
                     dict(workspaces or {}))
    _size_through_aliases(stmts, sizing)
    st = _Storages(CUDA_BLOCK_BYTES if _on_cuda(body) else 1)
    _start_inputs(stmts, sizing, st, set(counted), saved or SavedLayout())
    start = st.live
    for s in stmts:
        _step(s, st, sizing)
    tuples = {ast.unparse(n.value) for s in stmts for n in ast.walk(s) if isinstance(n, ast.Subscript)}
    return WrapperPeak(st.peak, start, end_bytes=st.live, unsized=[n for n in sizing.unsized if n not in tuples])


def _on_cuda(body: list[ast.stmt]) -> bool:
    """Whether a wrapper's ``call`` runs on CUDA: it allocates with ``empty_strided_cuda`` or
    guards a CUDA device."""
    names = {n.id for s in body for n in ast.walk(s) if isinstance(n, ast.Name)}
    names |= {n.attr for s in body for n in ast.walk(s) if isinstance(n, ast.Attribute)}
    return bool(names & {"empty_strided_cuda", "_DeviceGuard"})


def _start_inputs(stmts: list[ast.stmt], sizing: _Sizing, st: _Storages, counted: set[str],
                  saved: SavedLayout) -> None:
    """Allocate the inputs that count from the start: not the resident ones (``primals_*`` unless
    ``counted``, views of a resident input); inputs that view one forward buffer share a storage
    that reaches the end of the furthest view."""
    shared: dict[str, int] = {}  # forward buffer -> the storage of the inputs that view it
    for name in _input_names(stmts):
        if name not in sizing.shapes or name in saved.resident or (name.startswith("primals_") and name not in counted):
            continue
        buffer = saved.shared.get(name, (None, 0))[0]
        if buffer in shared:
            st.ref(name, shared[buffer])
        elif buffer is not None:
            views = [(n, end) for n, (b, end) in saved.shared.items() if b == buffer]
            shared[buffer] = st.new(name, max(end * sizing.itemsizes.get(n, 4) for n, end in views))
        else:
            st.new(name, sizing.bytes_of(name))


def _size_through_aliases(stmts: list[ast.stmt], sizing: _Sizing) -> None:
    """An extern result that the code sizes only under an alias (``buf39 = buf38``, then
    ``assert_size_stride(buf39, ...)``: a custom op's result) takes that alias's size and dtype."""
    for s in stmts:
        if (isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)
                and isinstance(s.value, ast.Name)):
            alias, source = s.targets[0].id, s.value.id
            if alias in sizing.shapes and source not in sizing.shapes:
                sizing.shapes[source] = sizing.shapes[alias]
                if alias in sizing.itemsizes:
                    sizing.itemsizes.setdefault(source, sizing.itemsizes[alias])


def _tuple_elements(stmts: list[ast.stmt]) -> dict[str, list[str]]:
    """The names that each tuple name's elements are bound to (``buf19 = buf18[0]``), in order."""
    out: dict[str, list[str]] = {}
    for s in stmts:
        if (isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)
                and isinstance(s.value, ast.Subscript) and isinstance(s.value.value, ast.Name)):
            out.setdefault(s.value.value.id, []).append(s.targets[0].id)
    return out


def wrapper_peaks(codes: list[str], itemsizes: list[dict[str, int]], sizes: list[dict[str, int]],
                  workspaces: list[dict[str, int]] | None = None) -> list:
    """``wrapper_peak`` of each graph's code (with its element sizes, size values and extern
    kernels' workspaces); of a forward and a backward (two codes), the backward's saved inputs
    lie as the forward returned them (``saved_layout``), and its peak is at least what it returns
    with autograd's copy of a gradient in other strides (``gradient_layout_copy_bytes``)."""
    layout = saved_layout(*codes, sizes[0]) if len(codes) == 2 else SavedLayout()
    workspaces = workspaces if workspaces is not None and len(workspaces) == len(codes) else [{}] * len(codes)
    walks = [wrapper_peak(c, items, hints, layout.copies if i == 1 else (), scratch, layout if i == 1 else None)
             for i, (c, items, hints, scratch) in enumerate(zip(codes, itemsizes, sizes, workspaces))]
    if len(codes) == 2 and walks[1] is not None:
        copy = gradient_layout_copy_bytes(*codes, sizes[0], itemsizes[1])
        walks[1] = replace(walks[1], peak_bytes=max(walks[1].peak_bytes, walks[1].end_bytes + copy))
    return walks


def gradient_layout_copy_bytes(forward_code: str, backward_code: str, sizes: dict[str, int] | None = None,
                               itemsizes: dict[str, int] | None = None) -> int:
    """Bytes autograd allocates right after a compiled backward returns: a gradient returned in
    other strides than its input's (a channels-last convolution weight's gradient) is copied into
    the input's strides by AccumulateGrad (``new_empty_strided``) while the returned one lives; the
    copies run one at a time, so the largest such gradient. The backward returns one gradient per
    forward input, in the forward's order (0 when the counts differ); strides are read from
    ``assert_size_stride`` lines."""
    forward, backward = _body_or_empty(forward_code), _body_or_empty(backward_code)
    sizes = dict(sizes or {})
    inputs = _input_names(forward)
    input_strides = _asserted_sizes(forward, sizes)
    result_strides = _asserted_sizes(backward, _derived_sizes(backward, dict(sizes)))  # it adds to what it is given
    returned = _returned(backward)
    if len(returned) != len(inputs):  # not one gradient per forward input: no pairing to trust
        return 0
    copies = [0]
    for name, grad in zip(inputs, returned):
        got, wanted = result_strides.get(grad), input_strides.get(name)
        if got and wanted and got[0] == wanted[0] and got[1] != wanted[1]:  # same shape, other strides
            copies.append(storage_bytes(*got, (itemsizes or {}).get(grad, 4)))
    return max(copies)


@dataclass(frozen=True)
class SavedLayout:
    """Where a backward's saved inputs lie among the storages that its forward returned."""

    copies: frozenset[str] = frozenset()  # named primals_* but a forward buffer: they count (``saved_copies``)
    resident: frozenset[str] = frozenset()  # views of a forward input (a parameter, the batch): they do not
    # inputs that view one forward buffer (q, k and v split from one projection): name -> (that
    # buffer, elements from its start to the end of the view)
    shared: dict[str, tuple[str, int]] = field(default_factory=dict)


def saved_layout(forward_code: str, backward_code: str, sizes: dict[str, int] | None = None) -> SavedLayout:
    """How the backward's saved inputs lie in what the forward returned (``_saved_pairs``): copies
    under a parameter's name, views of resident inputs, and views that share a buffer, which the
    forward returns as ``reinterpret_tensor(buf0, shape, stride, offset)``; ``sizes``: the values
    of the forward's size symbols. Empty when the codes do not pair."""
    forward = _body_or_empty(forward_code)
    pairs = _saved_pairs(forward, _body_or_empty(backward_code))
    inputs = set(_input_names(forward))
    sizes = _derived_sizes(forward, dict(sizes or {}))
    bases = {a: _view_of(r, sizes) for r, a in pairs}
    copies = {a for r, a in pairs if a.startswith("primals_") and r != a and bases[a][0] not in inputs}
    resident = {a for a, (base, _) in bases.items() if base in inputs and not a.startswith("primals_")}
    groups = [a for a, (base, end) in bases.items() if base not in inputs and end is not None]
    shared = {a: bases[a] for a in groups if sum(bases[b][0] == bases[a][0] for b in groups) > 1}
    return SavedLayout(frozenset(copies), frozenset(resident), shared)


def _view_of(expr: str, sizes: dict[str, int]) -> tuple[str, int | None]:
    """(the storage's name, elements from its start to the view's end; None when unknown) of a
    returned expression: a name, or ``reinterpret_tensor(name, shape, stride, offset)``."""
    node = ast.parse(expr, mode="eval").body
    if not (isinstance(node, ast.Call) and _call_name(node) == "reinterpret_tensor" and len(node.args) == 4):
        return expr, None
    shape, stride, offset = (_literal(a, sizes) for a in node.args[1:])
    if not isinstance(shape, tuple) or not isinstance(stride, tuple) or not isinstance(offset, int):
        return ast.unparse(node.args[0]), None
    return ast.unparse(node.args[0]), offset + storage_bytes(shape, stride, 1)


def saved_copies(forward_code: str, backward_code: str) -> set[str]:
    """Backward inputs named ``primals_*`` that the forward returned not as that input but as a
    buffer of its own: Inductor's layout optimisation saves channels-last copies of a conv's weight
    and input under the parameter's name. Pairs the forward's ``return`` with the backward's
    ``args`` as AOTAutograd orders them (forward: outputs, saved tensors, saved sizes; backward:
    saved sizes, saved tensors, gradients); empty when the codes do not pair that way."""
    return set(saved_layout(forward_code, backward_code).copies)


def _saved_pairs(forward: list[ast.stmt], backward: list[ast.stmt]) -> list[tuple[str, str]]:
    """(what the forward returned, as code; the backward's name for it) of each saved tensor, as
    AOTAutograd orders them (forward: outputs, saved tensors, saved sizes; backward: saved sizes,
    saved tensors, gradients); empty when the codes do not pair that way (a forward input
    returned where the backward reads another name)."""
    returned, args = _returned(forward), _input_names(backward)
    before_grads = list(itertools.takewhile(lambda a: not a.startswith("tangents_"), args))
    tensors = _asserted_names(backward)
    n_sizes = next((i for i, a in enumerate(before_grads) if a in tensors), len(before_grads))
    saved = before_grads[n_sizes:]
    if not saved or len(returned) < n_sizes + len(saved):
        return []
    pairs = list(zip(returned[len(returned) - n_sizes - len(saved):len(returned) - n_sizes], saved))
    forward_inputs = set(_input_names(forward))
    return [] if any(r in forward_inputs and r != a for r, a in pairs) else pairs


def _body_or_empty(code: str) -> list[ast.stmt]:
    try:
        body = _call_body(ast.parse(code))
    except SyntaxError:
        return []
    return list(_statements(body or []))


def _returned(stmts: list[ast.stmt]) -> list[str]:
    """The expressions of the ``call``'s ``return (...)``, as code."""
    for s in stmts:
        if isinstance(s, ast.Return) and s.value is not None:
            elts = s.value.elts if isinstance(s.value, (ast.Tuple, ast.List)) else [s.value]
            return [ast.unparse(e) for e in elts]
    return []


def _asserted_names(stmts: list[ast.stmt]) -> set[str]:
    """Names that an ``assert_size_stride`` checks: the tensors among the inputs."""
    return {ast.unparse(s.value.args[0]) for s in stmts
            if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and s.value.args
            and _call_name(s.value) == "assert_size_stride"}


def _derived_sizes(stmts: list[ast.stmt], sizes: dict[str, int]) -> dict[str, int]:
    """``sizes`` and every name that the code assigns an integer expression of them."""
    for s in stmts:
        if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name):
            value = _literal(s.value, sizes)
            if isinstance(value, int) and not isinstance(s.value, ast.Constant):
                sizes[s.targets[0].id] = value
    return sizes


def _input_names(stmts: list[ast.stmt]) -> list[str]:
    """Names unpacked from ``args`` (``a, b, c = args``)."""
    for s in stmts:
        if isinstance(s, ast.Assign) and ast.unparse(s.value) == "args":
            target = s.targets[0]
            elts = target.elts if isinstance(target, ast.Tuple) else [target]
            return [ast.unparse(e) for e in elts]
    return []


def _step(s: ast.stmt, st: _Storages, sizing: _Sizing) -> None:
    """Apply one statement of the wrapper to the live storages."""
    if isinstance(s, ast.Delete):
        for t in s.targets:
            st.drop(ast.unparse(t))
    elif isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name):
        _assign(s.targets[0].id, s.value, st, sizing)
    elif isinstance(s, ast.Expr) and isinstance(s.value, ast.Call):
        name = _call_name(s.value)
        if any(f in name for f in _FREES_ARGUMENT) and s.value.args:
            st.release(ast.unparse(s.value.args[0]))
        out = next((ast.unparse(k.value) for k in s.value.keywords if k.arg == "out"), None)
        if out is not None:  # an extern kernel writing into a buffer allocated before: its workspace
            st.scratch(sizing.workspaces.get(out, 0))


def _assign(name: str, value: ast.AST, st: _Storages, sizing: _Sizing) -> None:
    """``name = value``: a new storage, an alias of one, or a tuple of extern results."""
    if isinstance(value, ast.Name):
        st.alias(name, value.id)
    elif isinstance(value, ast.Subscript) and isinstance(value.value, ast.Name):
        if name not in st.of_name:  # an element that its tuple's call did not already allocate
            _new_sized(name, st, sizing, tied_to=value.value.id)
    elif isinstance(value, ast.Call):
        fn = _call_name(value)
        if fn in _ALLOCATORS and len(value.args) >= 3:
            shape, stride = _literal(value.args[0], sizing.sizes), _literal(value.args[1], sizing.sizes)
            size = _itemsize(value.args[2])
            known = shape is not None and stride is not None and size is not None
            st.new(name, storage_bytes(shape, stride, size) if known else 0)
            if not known:  # a size symbol with no value (a data-dependent size): counted as 0
                sizing.unsized.append(name)
        elif fn == "reinterpret_tensor" and value.args:
            st.alias(name, ast.unparse(value.args[0]))
        elif any(h in fn for h in _HOST_RESULT):
            st.drop(name)
        elif fn.startswith(("torch.ops.", "extern_kernels.", "aten.")) or fn.endswith(".default"):
            _new_extern_result(name, st, sizing)
            st.scratch(sizing.workspaces.get(name, 0))


def _new_extern_result(name: str, st: _Storages, sizing: _Sizing) -> None:
    """An extern op's result. A tuple's elements exist when the op returns, while its inputs still
    live, though the code binds and sizes them only after the ``del`` of those inputs: each
    element that the code binds (``x = tup[i]``) and sizes is allocated here, held by the tuple."""
    elements = sizing.elements.get(name)
    if not elements:
        _new_sized(name, st, sizing)
        return
    st.drop(name)
    for element in elements:
        if element in sizing.shapes:
            _new_sized(element, st, sizing, tied_to=name)


def _new_sized(name: str, st: _Storages, sizing: _Sizing, tied_to: str | None = None) -> None:
    """An extern op's result (or one element of its tuple, kept alive by the tuple too)."""
    if name not in sizing.shapes:
        st.drop(name)  # a tuple (its elements are sized one by one), or a result never sized
        sizing.unsized.append(name)
        return
    sid = st.new(name, sizing.bytes_of(name))
    if tied_to is not None:
        st.ref(tied_to, sid)


class _CodeCollector:
    """Collects the wrapper code that Inductor generates on this thread while active."""

    _local = threading.local()
    _installed = False
    _lock = threading.Lock()

    @classmethod
    def install(cls) -> None:
        from torch._inductor.graph import GraphLowering

        with cls._lock:
            if cls._installed:
                return
            previous = GraphLowering.save_output_code

            def save_output_code(code: str) -> None:
                for sink in getattr(cls._local, "sinks", ()):
                    sink.append(code)
                if previous is not None:
                    previous(code)

            GraphLowering.save_output_code = save_output_code
            cls._installed = True


class collect_wrapper_code:
    """``with collect_wrapper_code() as codes:``: the wrapper code of every graph that Inductor
    compiles (or loads from its cache) on this thread inside the block, in order. Blocks nest:
    an outer block sees the code of the inner ones too."""

    def __enter__(self) -> list[str]:
        _CodeCollector.install()
        self.codes: list[str] = []
        self._sinks = getattr(_CodeCollector._local, "sinks", ())
        _CodeCollector._local.sinks = (*self._sinks, self.codes)
        return self.codes

    def __exit__(self, *exc) -> None:
        _CodeCollector._local.sinks = self._sinks
