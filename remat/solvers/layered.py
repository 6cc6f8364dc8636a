"""Two-level plans of repeated layers: a menu of layer plans per class, one choice per layer.

Inner level: the plans of one layer of a class (``Problem.layers``) are read off whole plans of
the step (``ilp`` passes tied plans at a few caps, each one decision per position, and the
greedy plan when it found fewer than two), plus the layer that stores everything. Each distinct
vector of decisions over a class's positions is one *item* of its menu.

Outer level: the ILP (``ilp.Model`` with ``menus``) gives every layer one binary per item that
the layer can take and chooses exactly one; the binaries of the layer's activations become sums
of those choices. Every memory row of the step stays, so a chosen mix is valid at every slot, and
the outer problem holds the first source plan whole (each layer takes its own item), so its
answer is never worse than that plan.

*Closed* activations (``closed_candidates``: every recomputation that an item or a free
decision could make and that reads them, directly or through other recomputed ones, lies in
their own layer) start and live as their layer's item
says, whatever the other layers take: their start and live indicators are read off the item
(``setters`` of ``("st", k, b)``, ``("y", k, j)`` and, for a handover that a recomputed consumer
breaks, ``("h", k, j)``), so the outer model needs no variable and no row of their own, and a memory row holds one term per (layer, item) for them. An item that
would give a closed activation a start the ILP does not model (not a kept slot, or an OFFLOAD
needed before its prefetch in that layer) is not offered to that layer. Layers are free to differ: under a cap a stack mixes a
storing item and a recomputing one (GPT-2-small, 12 layers at 50 %: nine and three), which one
tied decision per position cannot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from remat.plan import Decision

from ._core import NONE, OFF, REC, STORE, Structure

_KIND = {REC: "rec", OFF: "off"}


@dataclass(frozen=True)
class Menus:
    """What ``ilp.Model`` reads: per layer the items it may take (``choices``), per (binary kind,
    candidate index) the (layer, item) choices that set that binary (``setters``), and the
    candidates whose binaries the choices control (``controlled``)."""

    choices: tuple[tuple[int, ...], ...]
    setters: Mapping[tuple, tuple[tuple[int, int], ...]]  # also ("st", k, b), ("y", k, j), ("h", k, j) keys
    controlled: frozenset[int]
    items: tuple[int, ...]  # menu size per class
    closed: frozenset[int] = frozenset()  # candidates whose st / y / h the items set (see the docstring)


def layer_candidates(st: Structure, layers) -> list[tuple[int, list[int | None]]]:
    """(class index, candidate index per position or None) for every layer of every class; only
    reachable candidates (the others take no decision)."""
    out = []
    for ci, cls in enumerate(layers):
        for names in cls:
            ks = [st.index.get(n) for n in names]
            out.append((ci, [k if k is not None and st.reach[k] else None for k in ks]))
    return out


def build_menus(st: Structure, layers, plans: Sequence[Mapping[str, Decision]], max_items: int = 8) -> Menus:
    """Menus read off ``plans`` (the first one's items always kept, then in order up to
    ``max_items`` per class) plus the store-everything item; each layer may take the items that
    its candidates allow (RECOMPUTE only where recomputable, OFFLOAD only where offloadable)."""
    table = layer_candidates(st, layers)
    menus: list[list[tuple[int, ...]]] = [[] for _ in layers]
    for rank, plan in enumerate(plans):
        codes = st.codes(st.normalize(plan))
        for ci, ks in table:
            item = tuple(int(codes[k]) if k is not None else NONE for k in ks)
            if item not in menus[ci] and (rank == 0 or len(menus[ci]) < max_items):
                menus[ci].append(item)
    for ci, ks in table:
        store = tuple(STORE if k is not None and st.cands[k].d >= 0 else NONE for k in ks)
        if store not in menus[ci]:
            menus[ci].append(store)
    closed = closed_candidates(st, table, menus)
    base = st.codes(st.store_all())
    choices, setters = [], {}
    for layer, (ci, ks) in enumerate(table):
        allowed = []
        for m, item in enumerate(menus[ci]):
            ones = _closed_indicators(st, ks, item, closed, base) if _allowed(st, ks, item) else None
            if ones is None:
                continue
            allowed.append(m)
            for k, code in zip(ks, item):
                kind = _binary_kind(st, k, code)
                if kind is not None:
                    setters.setdefault((kind, k), []).append((layer, m))
            for key in ones:
                setters.setdefault(key, []).append((layer, m))
        choices.append(tuple(allowed))
    controlled = frozenset(k for _, ks in table for k in ks if k is not None)
    return Menus(tuple(choices), {key: tuple(v) for key, v in setters.items()}, controlled,
                 tuple(len(m) for m in menus), frozenset(closed))


def closed_candidates(st: Structure, table, menus) -> set[int]:
    """Candidates of a layer whose consumers that may be recomputed (a menu item of their class
    recomputes them; any recomputable one outside the layers) are all closed candidates of the
    same layer: settled in reverse creation order, consumers first. None under recompute
    kernels, which make a start depend on a kernel's span (a handover only ends a buffer early)."""
    if st.kernels:
        return set()
    layer_of, may_rec = {}, set()
    for layer, (ci, ks) in enumerate(table):
        for pos, k in enumerate(ks):
            if k is not None:
                layer_of[k] = layer
                if any(item[pos] == REC for item in menus[ci]):
                    may_rec.add(k)
    closed: set[int] = set()
    for k in sorted(layer_of, reverse=True):
        readers = (x for x in st.cands[k].rcons_all
                   if (x in may_rec if x in layer_of else st.cands[x].rec_ok and st.reach[x]))
        if all(layer_of.get(x) == layer_of[k] and x in closed for x in readers):
            closed.add(k)
    return closed


def _closed_indicators(st: Structure, ks: list[int | None], item: tuple[int, ...], closed: set[int], base):
    """The ``("st", k, b)``, ``("y", k, j)`` and ``("h", k, j)`` keys that are one when this layer
    takes ``item``, for its closed candidates (``Model.warm``'s values); None when the item gives
    one of them a start outside its kept slots or an OFFLOAD needed before its prefetch."""
    mine = [k for k in ks if k is not None and k in closed]
    if not mine:
        return []
    codes = base.copy()
    for k, code in zip(ks, item):
        if k is not None:
            codes[k] = code
    need, S, ln = st.jit(codes)
    ones = []
    for k in mine:
        c, code = st.cands[k], int(codes[k])
        rec = need[k] and code == REC
        if (rec and S[k] not in c.kept) or (need[k] and code == OFF and S[k] != c.d):
            return None
        ones += [("st", k, b) for b in (c.sv if c.rec_ok else ()) if rec and S[k] <= b]
        ones += [("y", k, j) for j, (s, _) in enumerate(c.segs)
                 if need[k] and (code != REC or (S[k] <= s and k not in st.taker)) and ln[k] >= s]
        broken = need[k] and st.consumer_recomputed(k, codes, need)
        ones += [("h", k, j) for j, (s, _) in enumerate(c.tail) if broken and st.holds_under(k, code, S, s)]
    return ones


def _allowed(st: Structure, ks: list[int | None], item: tuple[int, ...]) -> bool:
    """Whether a layer with candidates ``ks`` can take ``item``."""
    for k, code in zip(ks, item):
        if k is None:
            continue
        c = st.cands[k]
        if (code == REC and not c.rec_ok) or (code == OFF and not c.off_ok):
            return False
    return True


def _binary_kind(st: Structure, k: int | None, code: int) -> str | None:
    """The model binary that ``code`` sets to one for candidate ``k`` (None: none; STORE of an
    activation that backward reads is ``1 - rec - off``, no binary)."""
    if k is None:
        return None
    if code == STORE:
        c = st.cands[k]
        return "keep" if c.d < 0 and c.rcons else None
    return _KIND.get(code)


def layer_groups(st: Structure, layers, plan: Mapping[str, Decision]):
    """``layers`` regrouped by ``plan``: within each class, the layers whose decisions agree at
    every position form one class (``Problem.layers`` form). The first and last layer of each
    class and the layers alone in their group are left out, so a model tied by these groups
    decides them freely (the ends of a stack differ: the last one stores more)."""
    codes = st.codes(st.normalize(plan))
    out = []
    for cls in layers:
        groups: dict[tuple[int, ...], list] = {}
        for names in cls[1:-1]:
            key = tuple(int(codes[st.index[n]]) if n in st.index else NONE for n in names)
            groups.setdefault(key, []).append(names)
        out += [tuple(g) for g in groups.values() if len(g) >= 2]
    return tuple(out)
