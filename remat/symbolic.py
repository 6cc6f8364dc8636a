"""Sizes that change: bytes as sympy expressions of the size symbols, and proofs over a range.

Under dynamic shapes (``torch.compile(..., dynamic=True)``, ``torch._dynamo.mark_dynamic``) the
joint graph's sizes are SymInts whose ``.node.expr`` is a sympy expression of the ShapeEnv's size
symbols (``s77``). remat plans on ints (the solvers never see sympy or torch.fx): the ``Problem``
holds the bytes at one size (the hint, or the corner of the range that the plan is made for), and
``SymbolicSizes`` keeps, next to it, the bytes of every activation and the fixed bytes of every
slot as polynomials in the symbols.

Reading a size must not specialise it: ``int()`` of a SymInt adds a guard (``s77 == 512``),
after which Dynamo refuses a ``mark_dynamic`` dimension. ``no_guards`` suppresses the guards of a
graph's ShapeEnv while remat plans (its ints are the hints). The guards remat does want are the
sizes where a plan is known to fit (``guard_fit``): a size outside compiles again.

A fixed plan's live bytes at each slot (``live_bytes``) are its fixed bytes plus the bytes of the
activations the simulator (``remat.simulate.live_intervals``, the single memory model) keeps live
there (the offload copy schedule is taken at the sizes planned for). ``prove_peak`` shows that
every slot's polynomial stays <= a cap over a box of positive integer sizes: the largest value
of a polynomial over a box is at a corner, at a critical point inside the box or inside one of its
faces (found exactly with sympy, not by sampling); when the
cap does not hold it names the largest size of the first symbol that fits. Where no plan fits the
top of a range, ``remat.planning`` splits it into ``Buckets`` with a plan each (``can_split``: not a
``mark_dynamic`` min/max range, which Dynamo compiles as one graph).
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Any, Iterator

import sympy
import torch
import torch.fx as fx

from .plan import Decision, Plan
from .problem import Problem
from .simulate import live_intervals


def shape_env_of(graph: fx.GraphModule) -> Any | None:
    """The ShapeEnv of a graph whose node values have symbolic sizes (None: every size static)."""
    for n in graph.graph.nodes:
        val = n.meta.get("val")
        vals = val if isinstance(val, (tuple, list)) else [val]
        for v in vals:
            sizes = v.shape if isinstance(v, torch.Tensor) else [v] if isinstance(v, torch.SymInt) else []
            for s in sizes:
                if isinstance(s, torch.SymInt):
                    return s.node.shape_env
    return None


@contextlib.contextmanager
def no_guards(graph: fx.GraphModule) -> Iterator[None]:
    """Inside, reading a size of ``graph`` (``int()``, a comparison) adds no guard to its ShapeEnv:
    remat only reads sizes to plan, and a plan's rewrite holds for every size."""
    env = shape_env_of(graph)
    with env.suppress_guards() if env is not None else contextlib.nullcontext():
        yield


def _expr(x: Any) -> sympy.Expr:
    """A size as a sympy expression: a SymInt's expression, an int as an Integer."""
    return x.node.expr if isinstance(x, torch.SymInt) else sympy.Integer(int(x))


def symbolic_bytes(t: Any) -> sympy.Expr:
    """Bytes of a (fake) tensor's own elements as a polynomial in the size symbols (0 for
    non-tensors): the expression that ``remat.cost.tensor_bytes`` evaluates at the hints."""
    if not isinstance(t, torch.Tensor):
        return sympy.Integer(0)
    numel = sympy.Integer(1)
    for s in t.shape:
        numel *= _expr(s)
    return sympy.expand(exact_divisions(numel * t.element_size()))


def exact_divisions(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` with each floor division that divides exactly replaced by its quotient (a view's
    ``(s77**2)//s77`` when two sizes share a symbol): bytes stay polynomials in the symbols."""
    from torch.utils._sympy.functions import FloorDiv

    def quotient(e: sympy.Expr) -> sympy.Expr:
        q = sympy.cancel(e.args[0] / e.args[1])
        num, den = sympy.fraction(q)
        if den != 1:
            return e
        coeffs = sympy.Poly(num, *num.free_symbols).coeffs() if num.free_symbols else [num]
        return q if all(c.is_integer for c in coeffs) else e

    return expr.replace(lambda e: isinstance(e, FloorDiv), quotient)


Range = tuple[int, int | None]  # positive integer sizes lo..hi, hi None: unbounded


@dataclass(frozen=True)
class SymbolicSizes:
    """A Problem's bytes as polynomials in the size symbols, next to the Problem's ints.

    ``activation_bytes``: each activation's bytes; ``fixed_bytes``: each slot's fixed bytes;
    ``hints``: each symbol's hint (the size the graph was traced at); ``ranges``: the sizes each
    symbol may take, as its ShapeEnv knew them when remat first read them (``mark_dynamic(x, 0, min=, max=)``;
    ``_env_range``)."""

    activation_bytes: dict[str, sympy.Expr]
    fixed_bytes: tuple[sympy.Expr, ...]
    hints: dict[sympy.Symbol, int]
    ranges: dict[sympy.Symbol, Range] = field(default_factory=dict)
    sources: dict[sympy.Symbol, tuple[str, ...]] = field(default_factory=dict)  # "L['x'].size()[0]"

    @classmethod
    def of(cls, env: Any, activation_bytes: dict[str, sympy.Expr], fixed: list) -> "SymbolicSizes":
        """The symbolic sizes of a graph traced under ShapeEnv ``env``."""
        fixed = tuple(sympy.sympify(f) for f in fixed)
        symbols = set().union(*(e.free_symbols for e in (*activation_bytes.values(), *fixed)))
        return cls(activation_bytes, fixed, *_symbol_facts(env, symbols))

    @property
    def hinted(self) -> bool:
        """Whether every symbol of the bytes has a hint (not so for data-dependent sizes)."""
        exprs = (*self.activation_bytes.values(), *self.fixed_bytes)
        return set().union(*(e.free_symbols for e in exprs)) <= set(self.hints)

    @property
    def symbols(self) -> tuple[sympy.Symbol, ...]:
        """The size symbols that the bytes depend on, by name."""
        return tuple(sorted(self.hints, key=str))

    def holding(self, problem: Problem) -> "SymbolicSizes":
        """These sizes with what ``problem`` (at the hints) holds at each slot beyond the graph's
        own bytes, as constants: the step around the graph (a loss computed outside, what the
        caller holds, extern kernels' scratch: ``remat.planning._with_step_context``), which
        ``problem_at`` and ``live_bytes`` then keep at every size, at its bytes at the hints."""
        extra = [s.fixed_bytes - int(f.subs(self.hints)) for s, f in zip(problem.slots, self.fixed_bytes)]
        return replace(self, fixed_bytes=tuple(f + e for f, e in zip(self.fixed_bytes, extra)))

    def problem_at(self, problem: Problem, values: Mapping[sympy.Symbol, int]) -> Problem:
        """``problem`` with its bytes at sizes ``values`` (symbols not given: their hints)."""
        at = {**self.hints, **values}
        acts = [replace(a, bytes=int(self.activation_bytes[a.name].subs(at))) if a.name in self.activation_bytes
                else a for a in problem.activations]
        slots = [replace(s, fixed_bytes=int(f.subs(at))) for s, f in zip(problem.slots, self.fixed_bytes)]
        return replace(problem, slots=tuple(slots), activations=tuple(acts))


def _symbol_facts(env: Any, symbols: set) -> tuple[dict, dict, dict]:
    """Each backed symbol's hint, ShapeEnv range and Dynamo sources: its own, and those of the
    symbols that tracing found equal to it (``replacements``: the batch of a model's input and of
    the loss's targets, made one by the loss)."""
    hints = {s: int(env.backed_var_to_val[s]) for s in symbols if s in env.backed_var_to_val}
    equal = {s: [s, *(r for r, e in env.replacements.items() if e == s)] for s in hints}
    sources = {s: tuple(_source_name(src) for r in equal[s] for src in env.var_to_sources.get(r, ())) for s in hints}
    return hints, {s: _env_range(env, s) for s in hints}, sources


def input_sizes(example_inputs: Any) -> SymbolicSizes | None:
    """The size symbols of a graph's example inputs (Dynamo's fake tensors and SymInts) with their
    hints, ranges and sources, and no bytes; None when every size is static."""
    env, symbols = None, set()
    for v in example_inputs:
        for d in v.shape if isinstance(v, torch.Tensor) else [v] if isinstance(v, torch.SymInt) else []:
            if isinstance(d, torch.SymInt):
                env, symbols = d.node.shape_env, symbols | d.node.expr.free_symbols
    return None if env is None else SymbolicSizes({}, (), *_symbol_facts(env, symbols))


def has_range(example_inputs: Any, dynamic_range: tuple | None) -> bool:
    """Whether a graph with these example inputs is planned over a range of sizes (``range_box``):
    a ``dynamic_range`` or a ``mark_dynamic`` min/max range covers one of its sizes."""
    from .errors import ConfigError

    sizes = input_sizes(example_inputs)
    try:
        return sizes is not None and range_box(sizes, dynamic_range) is not None
    except ConfigError:  # a key that names no size of the inputs: the partitioner says so
        return False


def _source_name(source: Any) -> str:
    """A Dynamo source's name ("L['x'].size()[0]"), a property or a method by torch version."""
    name = source.name
    return name() if callable(name) else str(name)


_FIRST_RANGES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ShapeEnv -> {symbol: its range}


def _env_range(env: Any, s: sympy.Symbol) -> Range:
    """The sizes that ShapeEnv ``env`` allowed symbol ``s`` when remat first read it (at least 1,
    hi None when unbounded): what tracing and ``mark_dynamic``'s min/max left. A graph's compiles
    narrow the ShapeEnv's ranges by their own guards afterwards (Inductor's CPU code
    generation guards ``s0*s1 <= 4096``, remat guards the sizes a plan fits), which are no range
    of sizes to plan over: taken as one, a batch traced at 2 was planned at 4096."""
    try:
        first = _FIRST_RANGES.setdefault(env, {})
    except TypeError:  # no weak reference to it (a stand-in ShapeEnv): its range now
        return _current_range(env, s)
    if s not in first:
        first[s] = _current_range(env, s)
    return first[s]


def _current_range(env: Any, s: sympy.Symbol) -> Range:
    """The sizes that ShapeEnv ``env`` allows symbol ``s`` now: at least 1, hi None when unbounded."""
    vr = env.var_to_range.get(s)
    if vr is None:
        return (1, None)
    from torch.utils._sympy.numbers import int_oo

    finite = lambda v: v not in (int_oo, -int_oo, sympy.oo, -sympy.oo)  # noqa: E731
    lo, hi = vr.lower, vr.upper
    return (max(1, int(lo)) if finite(lo) else 1, int(hi) if finite(hi) else None)


def live_bytes(problem: Problem, sizes: SymbolicSizes, plan: Plan | Mapping[str, Decision]) -> list[sympy.Expr]:
    """Device bytes live at each slot under ``plan`` as polynomials in the size symbols: the slot's
    fixed bytes plus the activations that the simulator keeps live there (``live_intervals``)."""
    n = len(problem.slots)
    delta: list[sympy.Expr] = [sympy.Integer(0)] * (n + 1)
    for name, intervals in live_intervals(problem, plan).items():
        for lo, hi in intervals:
            lo, hi = max(lo, 0), min(hi, n - 1)
            if lo <= hi:
                delta[lo] += sizes.activation_bytes[name]
                delta[hi + 1] -= sizes.activation_bytes[name]
    out, acc = [], sympy.Integer(0)
    for t in range(n):
        acc += delta[t]
        out.append(sympy.expand(sizes.fixed_bytes[t] + acc))
    return out


Box = dict[sympy.Symbol, tuple[int, int]]  # each symbol's sizes lo..hi, both in


@dataclass(frozen=True)
class PeakProof:
    """Whether every slot's live bytes stay <= ``cap_bytes`` for all sizes in ``box``.

    ``peak_bytes`` is the largest live bytes over the box (at integer sizes; with two or more
    symbols, a real critical point may make it an upper bound), at sizes ``worst`` and slot
    ``slot``, whose bytes are ``formula``. When the cap does not hold, ``largest_fit`` is the largest
    size of ``symbol`` (from its lo up) for which it holds with the other symbols over their box,
    None when not even the smallest size fits."""

    holds: bool
    cap_bytes: int
    peak_bytes: int
    worst: dict[sympy.Symbol, int]
    slot: int
    formula: str
    box: Box
    symbol: sympy.Symbol | None = None
    largest_fit: int | None = None


def box_max(expr: sympy.Expr, box: Box) -> tuple[int, dict[sympy.Symbol, Any]]:
    """The largest value of polynomial ``expr`` over ``box`` and where it is reached: at a corner,
    or at a critical point inside the box or inside one of its faces (solved with sympy). A
    polynomial with no negative coefficient grows with every size: its upper corner."""
    syms, evaluate, grows = _compiled(expr)
    if not syms:
        return int(expr), {}
    if grows:
        top = {s: box[s][1] for s in syms}
        return int(evaluate(*top.values())), top
    best: tuple[int, dict] | None = None
    for point in _candidates(expr, syms, box):
        value = expr.subs(point)
        value = int(sympy.ceiling(value))
        if best is None or value > best[0]:
            best = (value, point)
    return best


def _candidates(expr: sympy.Expr, syms: list[sympy.Symbol], box: Box) -> list[dict]:
    """Corners of ``box`` and the critical points inside each of its faces (every symbol at its
    lo, its hi, or free); with one free symbol, the integers either side of each critical point."""
    points = []
    for pattern in product(*[(box[s][0], box[s][1], None) for s in syms]):
        fixed = {s: v for s, v in zip(syms, pattern) if v is not None}
        free = [s for s, v in zip(syms, pattern) if v is None and box[s][0] < box[s][1]]
        if len(free) < sum(v is None for v in pattern):
            continue  # a free symbol with a single size is a corner, visited as such
        face = expr.subs(fixed)
        if not free:
            points.append(fixed)
        elif len(free) == 1:
            x, (lo, hi) = free[0], box[free[0]]
            for r in _stationary(face, x):
                points += [{**fixed, x: v} for v in {math.floor(r), math.ceil(r)} if lo < v < hi]
        else:
            points += [{**fixed, **sol} for sol in _stationary_points(face, free, box)]
    return points


@functools.lru_cache(maxsize=16384)
def _compiled(expr: sympy.Expr) -> tuple[list[sympy.Symbol], Any, bool]:
    """``expr``'s symbols by name, a plain Python function of them (exact on ints) and whether no
    coefficient is negative (then it grows with every positive size)."""
    syms = sorted(expr.free_symbols, key=str)
    if not syms:
        return syms, None, True
    grows = all(c >= 0 for c in sympy.Poly(expr, *syms).coeffs())
    return syms, sympy.lambdify(syms, expr, modules=[]), grows


@functools.lru_cache(maxsize=4096)
def _stationary(poly: sympy.Expr, x: sympy.Symbol) -> tuple[float, ...]:
    """Real roots of the derivative of a polynomial in one symbol."""
    d = sympy.Poly(sympy.diff(poly, x), x)
    return tuple(float(r) for r in sympy.real_roots(d)) if d.degree() > 0 else ()


def _stationary_points(face: sympy.Expr, free: list[sympy.Symbol], box: Box) -> list[dict]:
    """Real points strictly inside ``box`` where every partial derivative of ``face`` is 0; a
    family of them (the face is constant along it) is represented by its point at the free
    symbols' lo."""
    out = []
    for sol in sympy.solve([sympy.diff(face, x) for x in free], free, dict=True):
        point = {x: sympy.sympify(sol.get(x, box[x][0])) for x in free}
        point = {x: v.subs(point) for x, v in point.items()}
        if all(v.is_real and box[x][0] <= v <= box[x][1] for x, v in point.items()):
            out.append(point)
    return out


def prove_peak(exprs: list[sympy.Expr], cap_bytes: int, box: Box, symbol: sympy.Symbol | None = None) -> PeakProof:
    """Prove that each polynomial of ``exprs`` (a plan's live bytes at each slot, ``live_bytes``)
    stays <= ``cap_bytes`` over ``box``; when it does not, find the largest size of ``symbol``
    (default: the first symbol by name) that fits (``largest_fit``)."""
    peak, worst, slot = _peak(exprs, box)
    holds = peak <= cap_bytes
    symbol = symbol if symbol is not None else (min(box, key=str) if box else None)
    fit = None if holds or symbol is None else largest_fit(exprs, cap_bytes, box, symbol)
    return PeakProof(holds, cap_bytes, peak, {s: int(v) for s, v in worst.items() if sympy.sympify(v).is_integer},
                     slot, str(exprs[slot]) if exprs else "0", dict(box), symbol, fit)


def _peak(exprs: list[sympy.Expr], box: Box) -> tuple[int, dict, int]:
    """The largest value of any of ``exprs`` over ``box``: (value, where, which expression)."""
    best = (0, {}, 0)
    seen: dict[sympy.Expr, tuple[int, dict]] = {}
    for i, e in enumerate(exprs):
        if e not in seen:
            seen[e] = box_max(e, box)
        value, where = seen[e]
        if i == 0 or value > best[0]:
            best = (value, where, i)
    return best


def peaks_at(exprs: list[sympy.Expr], points: list[Mapping[sympy.Symbol, int]]) -> list[int]:
    """The largest of ``exprs`` (a plan's live bytes per slot, ``live_bytes``) at each of
    ``points`` (a value for every symbol): the plan's peak at each of those sizes."""
    funcs = [(e, *_compiled(e)[:2]) for e in set(exprs)]
    return [max(int(f(*(p[x] for x in syms))) if syms else int(e) for e, syms, f in funcs) for p in points]


def peak_formula(exprs: list[sympy.Expr], point: Mapping[sympy.Symbol, int]) -> sympy.Expr:
    """The one of ``exprs`` that is largest at ``point``: the peak's formula around those sizes."""
    return max(set(exprs), key=lambda e: (int(e.subs(point)), str(e)))


def largest_fit(exprs: list[sympy.Expr], cap_bytes: int, box: Box, symbol: sympy.Symbol) -> int | None:
    """The largest size ``n`` of ``symbol`` such that every polynomial stays <= ``cap_bytes`` with
    ``symbol`` in [lo, n] and the others over ``box`` (None: not even lo fits). The peak over
    [lo, n] grows with n, so a binary search over n with the exact peak is exact."""
    lo, hi = box[symbol]
    fits = lambda n: _peak(exprs, {**box, symbol: (lo, n)})[0] <= cap_bytes  # noqa: E731
    if not fits(lo):
        return None
    good, bad = lo, hi + 1
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def _input_dimension(key: str) -> tuple[str, int] | None:
    """("x", 0) for a ``dynamic_range`` key "x.0"; None for a symbol name."""
    m = re.fullmatch(r"(.+)\.(\d+)", key)
    return (m.group(1), int(m.group(2))) if m else None


def _matches(key: str, symbol: sympy.Symbol, sources: tuple[str, ...]) -> bool:
    """Whether ``dynamic_range`` key ``key`` names ``symbol``: its name, or an input dimension
    that is one of its sources (``L['x'].size()[0]`` for "x.0")."""
    dim = _input_dimension(key)
    if dim is None:
        return key == str(symbol)
    name, d = dim
    return any(re.search(rf"\[['\"]{re.escape(name)}['\"]\]\.size\(\)\[{d}\]$", src) for src in sources)


def range_box(sizes: SymbolicSizes, dynamic_range: tuple | None, graph: str = "graph") -> Box | None:
    """The sizes a plan must fit over: each symbol's pair from ``dynamic_range`` (the option,
    parsed by ``remat.config.parse_dynamic_range``), else its bounded ShapeEnv range
    (``mark_dynamic(x, 0, min=, max=)``), else its hint alone; the hint alone too when the size
    traced lies outside the range given. None when no symbol has a range.
    A key that names no dynamic size of the graph is a ConfigError naming the sizes there are."""
    from .config import ALL_SIZES
    from .errors import ConfigError

    given = dict(dynamic_range or ())
    box: Box = {}
    for key in given:
        if key != ALL_SIZES and not any(_matches(key, s, sizes.sources.get(s, ())) for s in sizes.symbols):
            names = ", ".join(f"{s} ({' '.join(sizes.sources.get(s, ())) or 'no source'})" for s in sizes.symbols)
            raise ConfigError(f"dynamic_range names {key!r}, which is no dynamic size of {graph}; "
                              f"its dynamic sizes: {names}")
    for s in sizes.symbols:
        pair = next((p for k, p in given.items() if k != ALL_SIZES and _matches(k, s, sizes.sources.get(s, ()))),
                    given.get(ALL_SIZES))
        lo, hi = sizes.ranges.get(s, (1, None))
        box[s] = tuple(pair) if pair is not None else (lo, hi) if hi is not None else (sizes.hints[s], sizes.hints[s])
        if not box[s][0] <= sizes.hints[s] <= box[s][1]:  # a size past the range (compiled again): itself
            box[s] = (sizes.hints[s], sizes.hints[s])
    return box if any(lo < hi for lo, hi in box.values()) else None


def can_split(sizes: SymbolicSizes, symbol: sympy.Symbol) -> bool:
    """Whether a guard may narrow ``symbol``'s sizes (a bucket of its range): not when
    ``mark_dynamic`` gave it a min or a max, a range that Dynamo compiles as one graph and
    checks every guard against (ConstraintViolationError); its ShapeEnv range shows the bounds."""
    lo, hi = sizes.ranges.get(symbol, (1, None))
    return hi is None and lo <= 2


UNBOUNDED = 2**31 - 1  # the largest size searched when nothing bounds a symbol


@dataclass(frozen=True)
class Buckets:
    """A range of one size symbol split among plans, where no single plan meets the cap over it.

    ``bounds``: each bucket's sizes lo..hi of ``symbol``, in order from the range's lo; each gets a
    plan of its own, made at its hi and guarded on the bucket (the first size of a bucket that
    runs compiles it). Sizes above ``fits_up_to`` (the last bucket's hi) up to ``range_hi`` are
    refused at their compile. ``exact``: fits_up_to + 1 was shown to fit no plan (else fits_up_to
    is a size proven to fit, and a larger one may too)."""

    symbol: sympy.Symbol
    bounds: tuple[tuple[int, int], ...]
    range_hi: int
    exact: bool = True

    @property
    def fits_up_to(self) -> int:
        return self.bounds[-1][1]

    def index_of(self, size: int) -> int | None:
        """The bucket that holds ``size`` (None: above ``fits_up_to``, or below the range)."""
        return next((i for i, (lo, hi) in enumerate(self.bounds) if lo <= size <= hi), None)

    def describe(self) -> str:
        """"s77 in [128, 700], [701, 900], a plan each; above 900 refused" for messages and reports."""
        parts = ", ".join(f"[{lo}, {hi}]" for lo, hi in self.bounds)
        above = "" if self.fits_up_to >= self.range_hi else f"; above {self.fits_up_to} refused"
        return f"{self.symbol} in {parts}, a plan each{above}"


@dataclass
class DynamicPlan:
    """What a plan of a dynamic-shape graph holds over, for its ``GraphReport``.

    ``ranges``: each size symbol's sizes that the peak was proven over (lo == hi: only the size
    traced, no range known); ``planned_at``: the sizes the plan was made for (the range's worst
    corner); ``sources``: where each symbol comes from ("L['x'].size()[0]"); ``proof``: the peak
    over the ranges and its formula (the bytes at the slot that peaks at the worst sizes);
    ``fits_up_to``: the largest size of ``proof.symbol`` at which the plan still meets the cap
    (with no range known: searched from the size traced up); ``buckets``: how the range was split
    among plans when no single plan meets the cap over it (``ranges`` is then this plan's bucket)."""

    ranges: dict[str, tuple[int, int]]
    planned_at: dict[str, int]
    sources: dict[str, tuple[str, ...]]
    proof: PeakProof
    fits_up_to: int | None = None
    buckets: Buckets | None = None

    @property
    def peak_formula(self) -> str:
        return self.proof.formula


def worst_corner(problem: Problem, sizes: SymbolicSizes, box: Box) -> dict[sympy.Symbol, int]:
    """The corner of ``box`` where storing every activation peaks highest (each symbol at its hi
    when there are more than 4 symbols): where a plan for the whole range is made."""
    from .simulate import simulate, store_all_plan

    corners = [dict(zip(box, c)) for c in product(*[sorted({lo, hi}) for lo, hi in box.values()])]
    if len(box) > 4:
        return {s: hi for s, (lo, hi) in box.items()}
    plan = store_all_plan(problem)
    return max(corners, key=lambda c: simulate(sizes.problem_at(problem, c), plan).peak_bytes)


def dynamic_plan(problem: Problem, sizes: SymbolicSizes, plan: Plan, cap: int, box: Box | None,
                 planned_at: Mapping[sympy.Symbol, int], buckets: Buckets | None = None) -> DynamicPlan:
    """The proof that ``plan`` (made at ``planned_at``) keeps the peak <= ``cap`` over ``box`` (its
    bucket of ``buckets``, when the range was split); without a box, over the sizes traced, and
    how far up the first symbol it still holds."""
    live = live_bytes(problem, sizes, plan)
    box = box or {s: (h, h) for s, h in sizes.hints.items()}
    proof = prove_peak(live, cap, box)
    fits = proof.largest_fit
    if proof.holds and proof.symbol is not None:
        lo = box[proof.symbol][0]
        top = sizes.ranges.get(proof.symbol, (1, None))[1] or UNBOUNDED
        fits = largest_fit(live, cap, {**box, proof.symbol: (lo, max(top, lo))}, proof.symbol)
    return DynamicPlan({str(s): r for s, r in box.items()},
                       {str(s): int(v) for s, v in planned_at.items()},
                       {str(s): v for s, v in sizes.sources.items()}, proof, fits, buckets)


def describe_sizes(ranges: Mapping[str, tuple[int, int]], sources: Mapping[str, tuple[str, ...]]) -> str:
    """"s77 in [1, 64] (L['x'].size()[0])" for each symbol, for messages."""
    parts = []
    for s, (lo, hi) in ranges.items():
        where = f" ({', '.join(sources.get(s, ()))})" if sources.get(s) else ""
        parts.append(f"{s} in [{lo}, {hi}]{where}" if lo < hi else f"{s} = {lo}{where}")
    return "; ".join(parts)


def guard_fit(graph: fx.GraphModule, dynamic: DynamicPlan) -> list[str]:
    """Guard the graph on the sizes where its plan is known to meet the cap: each ranged symbol
    within its range or bucket (Dynamo already guards a ``mark_dynamic`` range; ``dynamic_range``
    alone it does not), or, with no range known, ``proof.symbol <= fits_up_to``. A size outside
    fails the guard and Dynamo compiles it again, with a plan of its own. Returns the guards given."""
    env, proof = shape_env_of(graph), dynamic.proof
    split = dynamic.buckets.symbol if dynamic.buckets is not None else None
    ranged = [(s, lo, hi) for s, (lo, hi) in proof.box.items() if lo < hi or s == split]
    if ranged:
        bounds = [b for s, lo, hi in ranged for b in (sympy.Ge(s, lo), sympy.Le(s, hi))]
    elif proof.symbol is not None and dynamic.fits_up_to is not None:
        bounds = [sympy.Le(proof.symbol, dynamic.fits_up_to)]
    else:
        bounds = []
    if env is None:
        return []
    for b in bounds:
        env.evaluate_expr(b)
    return [str(b) for b in bounds]
