"""The optimisation problem as plain data: a fixed schedule of slots and the activations to decide.

A training step is a fixed sequence of *slots*: the forward ops in order, then the backward ops in
the order that the backward graph runs them. Slot ``t`` has a compute time and ``fixed_bytes``: the
device bytes live while slot ``t`` runs that no decision changes (temporaries, gradients, tangents,
forward outputs, and every activation during its own forward lifetime ``[created, last_forward_use]``).

An :class:`Activation` is a forward-computed storage that the backward pass may read. Its decision
(``remat.plan.Decision``) only changes where it lives *after* its last forward use. Recomputation
is *just in time*, as AOTAutograd's lazy reordering places it: each recomputed op runs just before
the first backward op that needs it, directly or through other recomputed ops.

An activation is *needed* when a backward slot reads it (``backward_uses``) or when a needed
RECOMPUTE activation lists it in ``inputs``. Unneeded activations take no decision, no memory and
no time. For a needed ``v`` of a plan:

* ``d(v)`` (``first_uses``): its first direct backward use (None if backward never reads it);
* ``S(v)``, its *start*: ``min(d(v), S(c) for every needed RECOMPUTE consumer c)``. It depends on
  the plan (computed in reverse creation order); ``remat.simulate.recompute_starts`` gives it;
* ``last_need(v) = max(backward_uses(v), S(c) for every needed RECOMPUTE consumer c)``.

STORE
    live from ``created`` through the end of the forward and into the backward until its last need.
RECOMPUTE
    freed after its last forward use; recomputed in backward slot ``S(v)`` (just before that
    slot's op runs) and live from there until its last need. Costs ``compute_time`` once.
OFFLOAD
    copied to host after its last forward use: live on the device until the copy ends, then
    again from the prefetch start until its last need. Copies share one link per direction
    (``remat.transfers`` schedules them; ``transfers.offload_window`` is the window of a lone
    copy). The prefetch completes by ``d(v)``; so OFFLOAD is only valid when ``S(v) == d(v)`` (no
    recomputed consumer needs it earlier, and backward reads it directly).

Every plan of allowed decisions over its needed set is valid except for that OFFLOAD rule.
``earliest_slots`` (``L(v)``: the minimum of ``d`` over ``v`` and its recomputable descendants) is
the earliest start any plan can give ``v``; it does not depend on the plan and bounds ``S(v)``.
Everything not listed in ``inputs`` (parameters, inputs, forward outputs) is resident and always
available.

Other runs. A graph that runs several times per step (FSDP2's blocks of one class share one
compiled graph) is planned for its last run, while its ``other_runs`` earlier runs hold what they
keep until their backward: the activations their plan STOREs (the same plan: every run runs the
same code) and ``run_held_bytes`` that no decision changes (the graph's inputs made earlier in the
step, which its backward reads). So every slot carries ``other_runs x (run_held_bytes + bytes of
the needed STORE activations)`` on top of its own bytes (``other_runs_bytes``); OFFLOAD ones are
on the host by then and RECOMPUTE ones are not kept.

Taken buffers. An activation whose only reader, forward and backward, is one pointwise consumer
of the same bytes names it in ``taken_by``: Inductor writes the consumer's result into its buffer
(``buf9 = buf8; del buf8  # reuse``). When both are RECOMPUTE, the taken value leaves the device
the slot before its taker's result is counted (the taker's start; the value is then never counted
when both start at the same slot, as they do without the last compile's kernels); it stays readable
by its taker. A STORE value keeps its own interval.

Bytes are per storage: views are folded into the storage they alias and never appear here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

FORWARD = "forward"
BACKWARD = "backward"


@dataclass(frozen=True)
class Slot:
    """One position of the schedule: an op of the forward or backward graph."""

    name: str
    phase: str  # FORWARD or BACKWARD
    compute_time: float  # seconds that the op at this slot takes
    fixed_bytes: int  # device bytes live here whatever the plan


@dataclass(frozen=True)
class Activation:
    """A forward storage that backward may read; the unit that a plan decides."""

    name: str
    op: str
    bytes: int
    compute_time: float  # seconds to recompute it from ``inputs`` (and resident values)
    created: int  # forward slot that computes it
    last_forward_use: int  # last forward slot that reads it (``created`` if none)
    backward_uses: tuple[int, ...] = ()  # backward slots that read it directly, ascending
    inputs: tuple[str, ...] = ()  # activations that recomputing it reads
    recomputable: bool = True  # False for random and impure ops
    offloadable: bool = True
    shape: tuple[int, ...] = ()
    dtype: str = ""
    module: str = ""  # module path of the op that computes it (``nn_module_stack``), "" if unknown
    taken_by: str = ""  # its only reader, which writes its result into this buffer ("" if none; see Problem)


@dataclass(frozen=True)
class Problem:
    """A schedule of slots and the activations to decide; what every solver takes."""

    slots: tuple[Slot, ...]
    activations: tuple[Activation, ...]
    host_bandwidth: float = 0.0  # bytes/s of the device<->host link; 0 disables offload
    name: str = "problem"
    metadata: dict = field(default_factory=dict, compare=False)
    # repeated layers (``remat.structure.find_layers``): classes of layers, each layer the ordered
    # names of its activations; activation k of one layer corresponds to activation k of another
    layers: tuple[tuple[tuple[str, ...], ...], ...] = ()
    # runs of this graph per step besides the one planned, each holding its kept bytes meanwhile
    other_runs: int = 0
    run_held_bytes: int = 0  # bytes each run holds until its backward whatever the plan

    def __post_init__(self) -> None:
        object.__setattr__(self, "slots", tuple(self.slots))
        object.__setattr__(self, "activations", tuple(self.activations))
        n = len(self.slots)
        phases = [s.phase for s in self.slots]
        if any(p not in (FORWARD, BACKWARD) for p in phases) or phases != sorted(phases, key=(FORWARD, BACKWARD).index):
            raise ValueError("slots must be forward slots followed by backward slots")
        names = set()
        for a in self.activations:
            if a.name in names:
                raise ValueError(f"duplicate activation name {a.name!r}")
            names.add(a.name)
            if not (0 <= a.created <= a.last_forward_use < self.num_forward):
                raise ValueError(f"activation {a.name!r}: forward lifetime outside the forward slots")
            if any(not (self.num_forward <= u < n) for u in a.backward_uses):
                raise ValueError(f"activation {a.name!r}: a backward use is not a backward slot")
            if list(a.backward_uses) != sorted(set(a.backward_uses)):
                raise ValueError(f"activation {a.name!r}: backward_uses must be ascending and unique")
            if a.bytes < 0 or a.compute_time < 0:
                raise ValueError(f"activation {a.name!r}: negative bytes or time")
        for a in self.activations:
            for i in a.inputs:
                if i not in names:
                    raise ValueError(f"activation {a.name!r} reads unknown activation {i!r}")
                if self.activation(i).created >= a.created:
                    raise ValueError(f"activation {a.name!r} reads {i!r}, which is created later")
        self._check_takers()
        if self.host_bandwidth < 0:
            raise ValueError("host_bandwidth must be >= 0")
        if self.other_runs < 0 or self.run_held_bytes < 0:
            raise ValueError("other_runs and run_held_bytes must be >= 0")
        object.__setattr__(self, "layers", tuple(tuple(tuple(lay) for lay in cls) for cls in self.layers))
        self._check_layers(names)

    def _check_takers(self) -> None:
        """A taken activation has no backward use, its taker is its only consumer, of equal bytes."""
        for a in self.activations:
            if not a.taken_by:
                continue
            if a.backward_uses or set(self.consumers[a.name]) != {a.taken_by}:
                raise ValueError(f"activation {a.name!r}: taken by {a.taken_by!r}, which must be its only reader")
            if self.activation(a.taken_by).bytes != a.bytes:
                raise ValueError(f"activation {a.name!r}: taken by {a.taken_by!r} of other bytes")

    def _check_layers(self, names: set[str]) -> None:
        """Each class holds at least two layers of one length; each name is known and in one layer."""
        seen: set[str] = set()
        for cls in self.layers:
            if len(cls) < 2 or len({len(lay) for lay in cls}) != 1 or not cls[0]:
                raise ValueError("a layer class needs at least two non-empty layers of one length")
            for name in (n for lay in cls for n in lay):
                if name not in names or name in seen:
                    raise ValueError(f"layer activation {name!r} is unknown or in two layers")
                seen.add(name)

    # ---- derived structure -------------------------------------------------------------
    @cached_property
    def num_forward(self) -> int:
        return sum(1 for s in self.slots if s.phase == FORWARD)

    @cached_property
    def _by_name(self) -> dict[str, Activation]:
        return {a.name: a for a in self.activations}

    def activation(self, name: str) -> Activation:
        return self._by_name[name]

    @cached_property
    def consumers(self) -> dict[str, tuple[str, ...]]:
        """Activations whose recomputation reads each activation."""
        out: dict[str, list[str]] = {a.name: [] for a in self.activations}
        for a in self.activations:
            for i in a.inputs:
                out[i].append(a.name)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def first_uses(self) -> dict[str, int | None]:
        """``d(v)``: first backward slot that reads each activation directly (None: none does)."""
        return {a.name: (a.backward_uses[0] if a.backward_uses else None) for a in self.activations}

    @cached_property
    def earliest_slots(self) -> dict[str, int | None]:
        """``L(v)``: the earliest backward slot where any plan can need each activation (None:
        no plan needs it): the minimum of ``d`` over ``v`` and its recomputable descendants."""
        slot: dict[str, int | None] = {}
        for a in sorted(self.activations, key=lambda a: a.created, reverse=True):
            cands = [a.backward_uses[0]] if a.backward_uses else []
            cands += [slot[c] for c in self.consumers[a.name]
                      if slot[c] is not None and self._by_name[c].recomputable]
            slot[a.name] = min(cands) if cands else None
        return slot

    @cached_property
    def relevant(self) -> tuple[str, ...]:
        """Activations that some plan could need (those with an earliest slot)."""
        return tuple(a.name for a in self.activations if self.earliest_slots[a.name] is not None)

    @cached_property
    def cumulative_time(self) -> tuple[float, ...]:
        """``cumulative_time[t]``: compute time of slots ``0..t-1``."""
        acc, out = 0.0, [0.0]
        for s in self.slots:
            acc += s.compute_time
            out.append(acc)
        return tuple(out)

    def other_runs_bytes(self, stored_bytes: int) -> int:
        """What the other runs hold while the planned one runs, when a plan STOREs ``stored_bytes``
        of needed activations (see the module docstring): on top of every slot's own bytes."""
        return self.other_runs * (self.run_held_bytes + stored_bytes)

    # ---- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "host_bandwidth": self.host_bandwidth,
            "metadata": self.metadata,
            "slots": [asdict(s) for s in self.slots],
            "activations": [asdict(a) for a in self.activations],
            "layers": [[list(lay) for lay in cls] for cls in self.layers],
            "other_runs": self.other_runs,
            "run_held_bytes": self.run_held_bytes,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Problem":
        acts = []
        for a in d["activations"]:
            a = dict(a)
            for k in ("backward_uses", "inputs", "shape"):
                a[k] = tuple(a.get(k, ()))
            acts.append(Activation(**a))
        return cls(
            slots=tuple(Slot(**s) for s in d["slots"]),
            activations=tuple(acts),
            host_bandwidth=float(d.get("host_bandwidth", 0.0)),
            name=d.get("name", "problem"),
            metadata=dict(d.get("metadata", {})),
            layers=d.get("layers", ()),
            other_runs=int(d.get("other_runs", 0)),
            run_held_bytes=int(d.get("run_held_bytes", 0)),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "Problem":
        return cls.from_dict(json.loads(Path(path).read_text()))
