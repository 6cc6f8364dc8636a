"""Random ops that a plan may run again: replayed from what the forward drew, never drawn afresh.

A value computed from random numbers (a dropout mask) can be recomputed in the backward only if
the backward draws the very numbers that the forward drew. Random numbers reach a joint graph in
two ways on torch 2.13:

* Inductor's default (``torch._inductor.config.fallback_random = False``): its joint pass
  ``replace_random`` turns ``rand``/``randn``/``randint`` (dropout included, after Inductor's
  decompositions) into ``prims.inductor_random(size, seed, mode)``, its seed
  ``prims.inductor_lookup_seed(seeds, i)`` of one ``prims.inductor_seeds(count, device)`` drawn in
  the forward from the default generator. Inductor's code computes ``inductor_random`` as a pure
  function of the seed and the element's index (Philox on CUDA, ``normalized_rand_cpu`` on the
  CPU), so run again from the saved seeds it gives the same numbers bit for bit. Only
  ``inductor_seeds`` draws (8 bytes per random op, always stored); the rest replays.
* ``fallback_random = True`` (the streams of eager): ``aten.native_dropout`` draws from the
  default generator. ``replay_dropouts`` rewrites each one (with ``train=True``) into
  ``state = remat.rng_state(x)`` (the default generator's state of ``x``'s device, as
  ``torch.utils.checkpoint`` saves it: 5,056 bytes on the CPU, 16 on CUDA) and
  ``remat.replay_dropout(state, x, p, advance)``, which sets that state and runs
  ``native_dropout``: in the forward (``advance=True``) the generator moves on exactly as in eager;
  in the backward (``quiet_backward``: ``advance=False``) the generator is put back afterwards, so
  a recomputed mask leaves the stream of the next step untouched. Other random ATen ops
  (``rand_like``, ``bernoulli``, ...) stay what they were: drawn once, never recomputed.

``draws`` tells the ops that draw fresh numbers (never recomputed: their result is stored) from
those that ``replays`` (deterministic given a saved seed or state: recomputable).
``check_backward`` refuses a backward graph that would draw fresh numbers.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..errors import PlanError

_SEEDED = {"prims.inductor_lookup_seed.default", "prims.inductor_random.default", "prims.inductor_randint.default"}


def _generator(device: torch.device) -> torch.Generator:
    """The default generator of ``device`` (the one that eager's random ops draw from)."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


@torch.library.custom_op("remat::rng_state", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def rng_state(x: torch.Tensor) -> torch.Tensor:
    """A copy of the state of the default generator of ``x``'s device (a CPU byte tensor)."""
    return _generator(x.device).get_state()


@rng_state.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(_state_numel(x.device), dtype=torch.uint8, device="cpu")


def _state_numel(device: torch.device) -> int:
    return 16 if device.type == "cuda" else torch.default_generator.get_state().numel()


# Tagged as seeded, like the op it replaces: torch's own passes keep it where it is (never dropped,
# duplicated or timed on made-up inputs); ``replays`` is what tells remat that it may run again.
@torch.library.custom_op("remat::replay_dropout", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def replay_dropout(state: torch.Tensor, x: torch.Tensor, p: float, advance: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``aten.native_dropout(x, p, True)`` drawn from generator state ``state``; ``advance``: leave
    the generator where the draw left it (the forward's draw), else as it was (a replay)."""
    gen = _generator(x.device)
    before = None if advance else gen.get_state()
    gen.set_state(state)
    try:
        return torch.ops.aten.native_dropout.default(x, p, True)
    finally:
        if before is not None:
            gen.set_state(before)


@replay_dropout.register_fake
def _(state: torch.Tensor, x: torch.Tensor, p: float, advance: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.aten.native_dropout.default(x, p, True)


RNG_STATE = torch.ops.remat.rng_state.default
REPLAY_DROPOUT = torch.ops.remat.replay_dropout.default


def draws(n: fx.Node) -> bool:
    """Whether ``n`` draws fresh random numbers (run again, it would draw different ones)."""
    tags = getattr(n.target, "tags", ()) or ()
    return n.op == "call_function" and torch.Tag.nondeterministic_seeded in tags and not replays(n)


def replays(n: fx.Node) -> bool:
    """Whether ``n`` computes random numbers as a pure function of a seed or generator state that
    the forward drew (so running it again gives the forward's numbers)."""
    return n.op == "call_function" and (n.target is REPLAY_DROPOUT or str(n.target) in _SEEDED)


def fusible(n: fx.Node) -> bool:
    """Whether ``n`` is one of Inductor's seeded random prims, which it lowers to pointwise code
    and fuses into their readers like any pointwise op."""
    return n.op == "call_function" and str(n.target) in _SEEDED


def replay_dropouts(joint: fx.GraphModule, forward: set[fx.Node]) -> set[fx.Node]:
    """Rewrite each training ``native_dropout`` of the forward into a replay from the generator
    state saved just before it (in place: the node keeps its name and users); returns the new
    state nodes (forward ops). Graphs without one are left as they are."""
    states = set()
    for n in list(joint.graph.nodes):
        if n in forward and n.target is torch.ops.aten.native_dropout.default and _training(n):
            x, p = n.args[0], n.args[1]
            with joint.graph.inserting_before(n):
                state = joint.graph.call_function(RNG_STATE, (x,), name=f"{n.name}_rng_state")
            state.meta["val"] = _cpu_bytes_like(x, _state_numel(x.meta["val"].device))
            n.target, n.args, n.kwargs = REPLAY_DROPOUT, (state, x, p, True), {}
            states.add(state)
    if states:
        joint.recompile()
    return states


def _training(n: fx.Node) -> bool:
    train = n.args[2] if len(n.args) > 2 else n.kwargs.get("train")
    return train is True


def _cpu_bytes_like(x: fx.Node, numel: int) -> torch.Tensor:
    """A CPU byte tensor of ``numel`` elements, fake when ``x``'s value is."""
    from contextlib import nullcontext

    from torch._guards import detect_fake_mode

    with detect_fake_mode([x.meta["val"]]) or nullcontext():
        return torch.empty(numel, dtype=torch.uint8, device="cpu")


def state_nodes(joint: fx.GraphModule) -> set[fx.Node]:
    """The ``remat.rng_state`` nodes of a joint graph (forward ops that ``replay_dropouts`` added)."""
    return set(joint.graph.find_nodes(op="call_function", target=RNG_STATE))


def quiet_backward(bw: fx.GraphModule) -> None:
    """A replayed dropout in the backward puts the generator back after its draw."""
    for n in bw.graph.find_nodes(op="call_function", target=REPLAY_DROPOUT):
        n.args = (*n.args[:3], False)
    bw.recompile()


def check_backward(bw: fx.GraphModule) -> None:
    """Refuse a backward graph that draws fresh random numbers (a recomputed mask would differ
    from the forward's)."""
    fresh = [n.name for n in bw.graph.nodes if draws(n)]
    if fresh:
        raise PlanError(f"the backward graph would draw fresh random numbers in {fresh}; random ops must be "
                        "stored or replayed from a saved seed")
