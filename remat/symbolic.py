"""Sizes that change: bytes as sympy expressions of the size symbols, and proofs over a range.

Under dynamic shapes (``torch.compile(..., dynamic=True)``, ``torch._dynamo.mark_dynamic``) the
joint graph's sizes are SymInts whose ``.node.expr`` is a sympy expression of the ShapeEnv's size
symbols (``s77``). remat plans on ints (the solvers never see sympy or torch.fx): the ``Problem``
holds the bytes at one size (the hint, or the corner of the range that the plan is made for), and
``SymbolicSizes`` keeps, next to it, the bytes of every activation and the fixed bytes of every
slot as polynomials in the symbols.

Reading a size must not specialise it: ``int()`` of a SymInt adds a guard (``s77 == 512``),
after which Dynamo refuses a ``mark_dynamic`` dimension. ``no_guards`` suppresses the guards of a
graph's ShapeEnv while remat reads hints; ``size_hint`` reads one without a guard.

A fixed plan's live bytes at each slot (``live_bytes``) are its fixed bytes plus the bytes of the
activations the simulator (``remat.simulate.live_intervals``, the single memory model) keeps live
there. ``prove_peak`` shows that every slot's polynomial stays <= a cap over a box of positive
integer sizes: the largest value of a polynomial over a box is at a corner, at a critical point
inside the box or inside one of its faces (found exactly with sympy, not by sampling); when the
cap does not hold it names the largest size of the first symbol that fits.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.fx as fx


def size_hint(x: Any) -> int:
    """A concrete int for an int or SymInt, its hint under dynamic shapes, without a guard."""
    from torch.fx.experimental.symbolic_shapes import optimization_hint

    return optimization_hint(x) if isinstance(x, torch.SymInt) else int(x)


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
