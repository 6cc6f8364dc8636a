"""One plan on every rank: rank 0 plans a graph, every other rank receives its plan.

Under ``torch.distributed`` each rank compiles its own copy of the model. If two ranks planned on
their own they could decide differently (measured op times differ, a time-limited solve stops at a
different incumbent on a busier rank), compile different graphs, and hang in a collective that
only one of them runs. ``agree_across_ranks(problem, make_plan)`` is what the planner calls instead
of planning directly: every rank first shares a digest of the ``Problem`` it captured
(``problem_digest``: its memory structure, not its op times, which are measured per rank), and a
rank whose Problem differs from rank 0's makes every rank raise a ``RematError`` naming the graph
and both digests. Then rank 0 alone runs ``make_plan()`` and broadcasts what it returned, or the
error it raised, which every rank raises in turn: a failure is an error on every rank, never a hang.
``decided_by_rank0`` does the same for any other decision that must be one for all ranks: the
floors that choose the backward's order (``planning.order_for_peak``) and the code's peak and
kernels of each plan, which decide how often the check loop plans again and which plan it keeps
(``backend._compile_checked_plans``).

Every such agreement is a ``Turn``: its number among this process's agreements, the graph, what
is asked (a plan at which offset below the cap, a floor...) and the digest. The ranks share their
turns before rank 0 decides: ranks that are out of step (one asks for a plan that another does
not, or for another graph) raise a ``RematError`` on every rank naming each rank's turn, instead
of pairing one rank's question with another's answer; a rank whose wait fails (the process group's
timeout, a rank that left) raises a ``RematError`` naming its turn. With the ``remat`` logger at
DEBUG, each rank logs every turn it enters and the answer it got.

Ranks that compile different graphs (pipeline stages) pass ``mode="local"`` (the ``ranks`` option):
each plans its own graphs, as without distributed.

Without ``torch.distributed`` (or with one process, or under the fake backend of
``torch.testing._internal.distributed.fake_pg``, which traces one process as one rank of many) it
just runs ``make_plan()``. The objects go through the default process group when it is gloo, else
through a gloo group made once for it (NCCL would need a device per rank for host data). Cost per
decision: one all-gather of the turns (a few dozen bytes) and one broadcast of what rank 0 decided
(a plan and its timeline: KiB for small graphs, more for graphs of many thousand ops), whatever the
number of ranks.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable, TypeVar

from .errors import RematError
from .problem import Problem

__all__ = ["Turn", "agree_across_ranks", "decided_by_rank0", "problem_digest"]

log = logging.getLogger("remat")
T = TypeVar("T")
_TIMES = ("compute_time",)  # measured per rank: not part of what ranks must agree on
_GLOO_GROUPS: dict[int, Any] = {}  # id(default group) -> a gloo group over the same ranks
_TURNS = itertools.count(1)  # this process's agreements under several ranks, numbered from 1


@dataclass(frozen=True)
class Turn:
    """One rank's side of one agreement: its ``number`` among the agreements this process entered,
    the ``graph``, what is ``asked`` of rank 0 and the ``digest`` of the Problem it is about."""

    number: int
    graph: str
    asked: str
    digest: str = ""

    def describe(self) -> str:
        return f"agreement {self.number}, graph {self.graph}: {self.asked}"

    def in_step(self, other: Turn) -> bool:
        """Whether ``other`` is the same agreement seen from another rank (the digest aside)."""
        return (self.number, self.graph, self.asked) == (other.number, other.graph, other.asked)


def problem_digest(problem: Problem) -> str:
    """16 hex digits of the Problem's memory structure: slots, activations (bytes, where they
    are made and read, what recomputing reads), layers, whether offload is on, the other runs
    of the graph in the step and what each holds. Op times are left
    out: ranks measure them apart, and rank 0's plan is valid for any rank with the same structure."""
    slots = [_without_times(asdict(s)) for s in problem.slots]
    acts = [_without_times(asdict(a)) for a in problem.activations]
    layers = [[list(layer) for layer in cls] for cls in problem.layers]
    runs = [problem.other_runs, problem.run_held_bytes]
    text = json.dumps([problem.name, problem.host_bandwidth > 0, slots, acts, layers, runs], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _without_times(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if k not in _TIMES}


def agree_across_ranks(problem: Problem, make_plan: Callable[[], T], mode: str = "agree", asked: str = "a plan") -> T:
    """What rank 0's ``make_plan()`` returned, on every rank (rank 0 alone calls it). Raises a
    RematError on every rank when a rank's Problem differs from rank 0's or the ranks are out of
    step (``asked``: what ``make_plan`` makes from the Problem, e.g. the offset below the cap;
    ranks must ask alike), and rank 0's error on every rank when its ``make_plan()`` raised.
    Without distributed (``_several_ranks``), or with ``mode="local"`` (each rank plans its own
    graphs): ``make_plan()``."""
    return decided_by_rank0(problem.name, make_plan, mode, asked, digest=problem_digest(problem))


def decided_by_rank0(graph: str, decide: Callable[[], T], mode: str = "agree", asked: str = "a decision",
                     digest: str = "") -> T:
    """What rank 0's ``decide()`` returned, on every rank (rank 0 alone calls it), for a decision
    that every rank must take alike; ``graph``, ``asked`` and ``digest`` make this rank's ``Turn``.
    Raises a RematError on every rank when the ranks are out of step or their digests differ, and
    rank 0's error on every rank when ``decide()`` raised; a RematError on this rank when one of
    its waits fails. Without several ranks, or with ``mode="local"``: ``decide()``."""
    import torch.distributed as dist

    if mode == "local" or not _several_ranks():
        return decide()
    rank = dist.get_rank()
    turn = Turn(next(_TURNS), graph, asked, digest)
    log.debug("remat[%s]: rank %d enters %s (digest %s)", graph, rank, turn.describe(), digest or "none")
    turns = _gathered(turn)
    _refuse_out_of_step(turns)
    _refuse_mismatch(graph, [t.digest for t in turns])
    result, error = None, None
    if rank == 0:
        try:
            result = decide()
        except Exception as e:  # every rank must reach the broadcast, then raise it
            error = e
    payload = _from_rank0(turn, _portable(result, error))
    log.debug("remat[%s]: rank %d has rank 0's answer to agreement %d (%s)", graph, rank, turn.number, payload[0])
    if error is not None:
        raise error
    return _unpacked(payload, turn)


def _gathered(turn: Turn) -> list:
    """Every rank's turn, by rank."""
    import torch.distributed as dist

    turns: list = [None] * dist.get_world_size()
    with _collective(turn):
        dist.all_gather_object(turns, turn, group=_object_group())
    return turns


def _from_rank0(turn: Turn, payload: Any) -> Any:
    """Rank 0's ``payload`` on every rank."""
    import torch.distributed as dist

    box = [payload]
    with _collective(turn):
        dist.broadcast_object_list(box, src=0, group=_object_group())
    return box[0]


@contextlib.contextmanager
def _collective(turn: Turn):
    """Run one collective of ``turn`` outside every dispatch mode (the planner runs inside
    Inductor's fake tensor mode: the collectives' own tensors must be real); a wait that fails
    (the group's timeout, a rank that left) raises a RematError naming this rank's turn."""
    from torch.utils._python_dispatch import _disable_current_modes

    try:
        with _disable_current_modes():
            yield
    except RuntimeError as e:
        raise _not_joined(turn, e) from e


def _not_joined(turn: Turn, error: RuntimeError) -> RematError:
    import torch.distributed as dist

    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return RematError(
        f"{turn.graph}: rank {dist.get_rank()} waited at its {turn.describe()} and not every rank joined it "
        f"({reason}): a rank failed, compiled other graphs (a recompile or a graph break on some ranks only), or "
        "took longer than the process group's timeout (rank 0 plans while the others wait); the remat logger at "
        "DEBUG logs each rank's agreements")


def _several_ranks() -> bool:
    """Whether several processes plan together: torch.distributed is initialised with more than
    one rank and is not the fake backend (tracing one process as if it were one of many)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and dist.get_backend() != "fake"


def _object_group() -> Any:
    """The default group when it is gloo (None), else a gloo group over the same ranks, made once."""
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        return None
    world = dist.group.WORLD
    if id(world) not in _GLOO_GROUPS:
        _GLOO_GROUPS[id(world)] = dist.new_group(backend="gloo")
    return _GLOO_GROUPS[id(world)]


def _refuse_out_of_step(turns: list) -> None:
    """Raise on every rank when some rank's turn is not rank 0's (``turns[0]``): the ranks asked
    for different decisions, so one rank's answer would be another's question."""
    others = [(rank, t) for rank, t in enumerate(turns) if not t.in_step(turns[0])]
    if not others:
        return
    named = _first_ranks(others, lambda rank, t: f"rank {rank} is at its {t.describe()}", "; ")
    raise RematError(
        f"{turns[0].graph}: the ranks are out of step (rank 0 is at its {turns[0].describe()}; {named}): "
        "they compiled different graphs, or asked for different plans of one; every rank must compile the "
        "same model, inputs' shapes and options (the remat logger at DEBUG logs each rank's agreements; ranks that "
        "compile different graphs, such as pipeline stages, plan each their own with the option ranks='local')")


def _refuse_mismatch(graph: str, digests: list) -> None:
    """Raise on every rank when some rank's Problem digest differs from rank 0's."""
    others = [(rank, d) for rank, d in enumerate(digests) if d != digests[0]]
    if not others:
        return
    named = _first_ranks(others, lambda rank, d: f"rank {rank} has {d}", ", ")
    raise RematError(
        f"{graph}: the ranks captured different problems (rank 0's digest {digests[0]}; {named}), so "
        "they cannot share one plan; every rank must compile the same model, inputs' shapes and options "
        "(ranks that compile different graphs, such as pipeline stages, plan each their own with the option "
        "ranks='local')")


def _first_ranks(others: list, name: Callable[[int, Any], str], sep: str) -> str:
    """The first four of ``others`` ((rank, what differs from rank 0)), each as ``name`` says, and
    how many more."""
    named = sep.join(name(rank, x) for rank, x in others[:4])
    return named + (f" and {len(others) - 4} more ranks" if len(others) > 4 else "")


def _portable(result: Any, error: Exception | None) -> tuple:
    """What rank 0 broadcasts: ("ok", result), or an error as its class and state (remat's
    errors take arguments that pickling an exception would lose)."""
    if error is None:
        return ("ok", result)
    if isinstance(error, RematError):
        return ("remat error", type(error), str(error), dict(vars(error)))
    return ("other error", None, f"{type(error).__name__}: {error}", {})


def _unpacked(payload: tuple, turn: Turn) -> Any:
    """Rank 0's result, or its error raised here."""
    if payload[0] == "ok":
        return payload[1]
    kind, cls, message, state = payload
    if kind == "remat error":
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        error.__dict__.update(state)
        raise error
    raise RematError(f"{turn.graph}: rank 0 failed at its {turn.describe()} ({message}); see rank 0's log")
