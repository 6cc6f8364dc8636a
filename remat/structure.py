"""Repeated layers of a ``Problem``, found on a networkx view of its activations.

The view (``activation_graph``) has one node per activation, labelled with its *signature* (op,
shape, dtype, bytes, whether it can be recomputed or offloaded, whether backward reads it), and an edge
from each input to the activation that recomputing reads it. Layers are found in three steps:

1. *propose* boundaries: from module paths (``Activation.module``, ``layers.3.`` style indices)
   when capture filled them, else from the signature sequence in creation order: the tandem
   repeat (a run of one period repeated back to back) that covers the most activations, cut
   where the fewest local edges cross, then again in what is left;
2. *group* the proposed layers by the Weisfeiler-Lehman hash of their subgraphs;
3. *verify* each layer against the first of its class by isomorphism of the labelled subgraphs:
   the order-preserving map when the labels come in one order, else a ``DiGraphMatcher`` map,
   which reorders the layer. Inputs from outside the layer may differ (the first layer reads
   the embedding, the others the previous layer): tying is a restriction of the plans, valid
   whatever it ties, and the solver keeps every row per activation.

``find_layers`` returns plain data (``Problem.layers``); ``with_layers`` attaches it.
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from dataclasses import replace

import networkx as nx
import numpy as np
from networkx.algorithms.isomorphism import DiGraphMatcher

from remat.problem import Activation, Problem

MIN_LAYER = 4  # activations a proposed layer holds at least (shorter repeats are op patterns)
_INDEXED = re.compile(r"^(.*?\.\d+)(?:\.|$)")  # "model.layers.3.attn" -> "model.layers.3"

Layers = tuple[tuple[tuple[str, ...], ...], ...]


def signature(a: Activation) -> str:
    """The label that corresponding activations of identical layers share."""
    shape = "x".join(map(str, a.shape))
    marks = (("r", a.recomputable), ("o", a.offloadable), ("b", a.backward_uses), ("t", bool(a.taken_by)))
    flags = "".join(m if on else "-" for m, on in marks)
    return f"{a.op}|{shape}|{a.dtype}|{a.bytes}|{flags}"


def activation_graph(problem: Problem) -> nx.DiGraph:
    """Activations as nodes (``label``: signature, ``pos``: rank in creation order), an edge from
    each input to each activation whose recomputation reads it."""
    g = nx.DiGraph()
    for pos, a in enumerate(_creation_order(problem)):
        g.add_node(a.name, label=signature(a), pos=pos)
    for a in problem.activations:
        g.add_edges_from((i, a.name) for i in a.inputs)
    return g


def find_layers(problem: Problem, min_layer: int = MIN_LAYER) -> Layers:
    """Classes of isomorphic layers (each class >= 2 layers, each layer the activation names in
    corresponding order); () when nothing repeats."""
    g = activation_graph(problem)
    order = [a.name for a in _creation_order(problem)]
    if any(a.module for a in problem.activations):
        proposals = _module_layers(problem, order)
    else:
        proposals = _repeat_layers(g, order, min_layer)
    classes = []
    for layers in proposals:
        classes += _verified_classes(g, layers)
    return tuple(classes)


def with_layers(problem: Problem, min_layer: int = MIN_LAYER) -> Problem:
    """``problem`` with ``layers`` filled by ``find_layers``."""
    return replace(problem, layers=find_layers(problem, min_layer))


def _creation_order(problem: Problem) -> list[Activation]:
    return sorted(problem.activations, key=lambda a: a.created)  # stable: list order breaks ties


# ---- proposals ------------------------------------------------------------------------------------


def _module_layers(problem: Problem, order: list[str]) -> list[list[list[str]]]:
    """Layers from indexed module paths: activations under ``<parent>.<i>`` form layer ``i`` of
    the candidate class ``<parent>``, in creation order."""
    by_key: dict[str, list[str]] = defaultdict(list)
    for name in order:
        m = _INDEXED.match(problem.activation(name).module)
        if m:
            by_key[m.group(1)].append(name)
    by_parent: dict[str, list[list[str]]] = defaultdict(list)
    for key, names in by_key.items():
        by_parent[key.rsplit(".", 1)[0]].append(names)
    return [layers for layers in by_parent.values() if len(layers) >= 2]


def _repeat_layers(g: nx.DiGraph, order: list[str], min_layer: int) -> list[list[list[str]]]:
    """Layers from tandem repeats of the signature sequence, the largest first, then in the
    uncovered stretches before and after it."""
    ids: dict[str, int] = {}
    seq = np.array([ids.setdefault(g.nodes[n]["label"], len(ids)) for n in order], dtype=np.int64)
    edges = np.array([(g.nodes[u]["pos"], g.nodes[v]["pos"]) for u, v in g.edges], dtype=np.int64).reshape(-1, 2)
    out, todo = [], [(0, len(order))]
    while todo:
        lo, hi = todo.pop()
        found = _best_repeat(seq, lo, hi, min_layer)
        if found is None:
            continue
        start, period, count = _cut(found, edges)
        out.append([order[start + i * period:start + (i + 1) * period] for i in range(count)])
        todo += [(lo, start), (start + count * period, hi)]
    return out


def _best_repeat(seq: np.ndarray, lo: int, hi: int, min_layer: int):
    """(start, end, period) of the tandem repeat in ``seq[lo:hi]`` covering the most elements
    with at least two copies of a period >= ``min_layer`` (shorter period on ties); None if none."""
    best, best_cover = None, 0
    for p in range(min_layer, (hi - lo) // 2 + 1):
        eq = np.concatenate(([False], seq[lo:hi - p] == seq[lo + p:hi], [False]))
        edges = np.flatnonzero(eq[1:] != eq[:-1])
        if not len(edges):
            continue
        starts, ends = edges[0::2], edges[1::2]
        cover = (ends - starts + p) // p * p
        i = int(np.argmax(cover))
        if cover[i] >= 2 * p and cover[i] > best_cover:
            best_cover = int(cover[i])
            best = (lo + int(starts[i]), lo + int(ends[i]) + p, p)
    return best


def _cut(found: tuple[int, int, int], edges: np.ndarray) -> tuple[int, int, int]:
    """(start, period, count): the phase of the layer boundaries inside a repeat where the fewest
    local edges (shorter than a period) cross, keeping as many whole layers as possible."""
    s, e, p = found
    local = edges[(edges[:, 0] >= s) & (edges[:, 1] < e) & (edges[:, 1] - edges[:, 0] < p)]
    best = None
    for r in range(p):
        count = (e - s - r) // p
        if count < 2:
            break
        b = s + r + p
        crossing = int(((local[:, 0] < b) & (local[:, 1] >= b)).sum())
        key = (-count, crossing)
        if best is None or key < best[0]:
            best = (key, (s + r, p, count))
    return best[1]


# ---- verification ---------------------------------------------------------------------------------


def _verified_classes(g: nx.DiGraph, layers: list[list[str]]) -> list[tuple[tuple[str, ...], ...]]:
    """Group proposed layers by WL hash, then split each group into classes whose layers
    correspond to the class's first layer; classes of at least two layers."""
    groups: dict[str, list[list[str]]] = defaultdict(list)
    hashes: dict[tuple, str] = {}  # a layer with another's labels and inner edges, in order, has its hash
    for layer in layers:
        key = (tuple(g.nodes[n]["label"] for n in layer), frozenset(_inner_edges(g, layer)))
        if key not in hashes:
            hashes[key] = _wl_hash(g.subgraph(layer))
        groups[hashes[key]].append(layer)
    classes: list[list[list[str]]] = []
    for group in groups.values():
        mine: list[list[list[str]]] = []
        for layer in group:
            for cls in mine:
                mapped = _corresponding(g, cls[0], layer)
                if mapped is not None:
                    cls.append(mapped)
                    break
            else:
                mine.append([list(layer)])
        classes += mine
    return [tuple(tuple(lay) for lay in cls) for cls in classes if len(cls) >= 2]


def _wl_hash(sub: nx.DiGraph) -> str:
    with warnings.catch_warnings():  # networkx 3.5+ notes that directed hashes changed
        warnings.simplefilter("ignore", UserWarning)
        return nx.weisfeiler_lehman_graph_hash(sub, node_attr="label", iterations=3)


def _corresponding(g: nx.DiGraph, ref: list[str], layer: list[str]) -> list[str] | None:
    """``layer`` reordered so that its k-th activation corresponds to ``ref``'s k-th (an
    isomorphism of the labelled subgraphs); None if there is none. The order-preserving map is
    tried first; a labelled ``DiGraphMatcher`` search only when the labels come in another order."""
    if len(ref) != len(layer):
        return None
    if all(g.nodes[a]["label"] == g.nodes[b]["label"] for a, b in zip(ref, layer)):
        return list(layer) if _inner_edges(g, ref) == _inner_edges(g, layer) else None
    matcher = DiGraphMatcher(g.subgraph(ref), g.subgraph(layer), node_match=lambda x, y: x["label"] == y["label"])
    if not matcher.is_isomorphic():
        return None
    return [matcher.mapping[n] for n in ref]


def _inner_edges(g: nx.DiGraph, layer: list[str]) -> set[tuple[int, int]]:
    pos = {n: k for k, n in enumerate(layer)}
    return {(pos[u], pos[v]) for u, v in g.subgraph(layer).edges}
