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
  ``torch.utils.checkpoint`` saves it: 5,056 bytes on the CPU, 16 on CUDA),
  ``remat.replay_dropout(state, x, p, stride)`` (``native_dropout`` from that state on ``x`` in
  eager's layout: eager's output, and the generator moves on as in eager; it runs once, in the
  forward) and its mask into
  ``remat.dropout_mask(state, ...)``, which draws the same mask from the state without reading
  ``x`` and puts the generator back: a recomputed mask needs only the state, and leaves the
  stream of the next step untouched. The dropout's output is not recomputed (that would need its
  input and allocate a second mask). Other random ATen ops (``rand_like``, ``bernoulli``, ...)
  stay as they are: drawn once, never recomputed.

A mask that the forward keeps is the one its replay drew (``share_forward_masks``, on the
forward graph of a plan). ``draws`` tells the ops that draw fresh numbers (never recomputed: their result is stored) from
those that ``replays`` (deterministic given a saved seed or state: recomputable).
``check_backward`` refuses a backward graph that would draw fresh numbers.
"""

from __future__ import annotations

import operator

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
# duplicated or timed on made-up inputs). It moves the generator, so it runs once, in the forward.
@torch.library.custom_op("remat::replay_dropout", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def replay_dropout(state: torch.Tensor, x: torch.Tensor, p: float, stride: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``aten.native_dropout(x, p, True)`` drawn from generator state ``state`` (the state just
    read by ``rng_state``: the draw and the generator after it are eager's) for ``x`` laid out as
    eager had it (``stride``): the mask is drawn in memory order, and Inductor may hand ``x`` over
    in another layout (a transposed value made contiguous). On the CPU the mask is drawn as
    native_dropout draws it, in that layout, with no copy of ``x``."""
    _generator(x.device).set_state(state)
    if x.device.type != "cuda":
        mask = torch.empty_strided(x.shape, stride, dtype=torch.bool, device=x.device).bernoulli_(1 - p)
        scale = 0.0 if p == 1 else 1.0 / (1 - p)
        # as native_dropout's x * mask * scale, with the mask converted in place of the result
        # (x.mul(mask) would convert it in a temporary the size of x)
        return torch.empty_like(x).copy_(mask).mul_(x).mul_(scale), mask
    if list(x.stride()) == list(stride):
        return torch.ops.aten.native_dropout.default(x, p, True)
    eager_x = torch.empty_strided(x.shape, stride, dtype=x.dtype, device=x.device).copy_(x)
    out, mask = torch.ops.aten.native_dropout.default(eager_x, p, True)
    return torch.empty_like(x).copy_(out), torch.empty_like(x, dtype=torch.bool).copy_(mask)


@replay_dropout.register_fake
def _(state: torch.Tensor, x: torch.Tensor, p: float, stride: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    if x.device.type != "cuda":
        return torch.empty_like(x), torch.empty_strided(x.shape, stride, dtype=torch.bool, device=x.device)
    return torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)


_lib = torch.library.Library("remat", "FRAGMENT")
_lib.define("dropout_mask(Tensor state, SymInt[] size, SymInt[] stride, ScalarType dtype, Device device, float p) -> Tensor",
            tags=(torch.Tag.nondeterministic_seeded,))


def _dropout_mask(state, size, stride, dtype, device, p):
    """The mask of ``native_dropout(x, p, True)`` for an ``x`` laid out as (size, stride, dtype,
    device) drawn from generator state ``state``, without ``x``; the default generator is left as
    it was. The CPU's dropout draws its mask as ``bernoulli_(1 - p)`` of a bool tensor like ``x``
    (here from a private generator: no copy of the default one's state is allocated); CUDA's
    fused kernel draws from the default generator and is run on an uninitialised ``x`` (its mask
    does not read the values)."""
    if device.type != "cuda":
        gen = torch.Generator(device)
        gen.set_state(state)
        return torch.empty_strided(size, stride, dtype=torch.bool, device=device).bernoulli_(1 - p, generator=gen)
    gen = _generator(device)
    before = gen.get_state()
    gen.set_state(state)
    try:
        return torch.ops.aten.native_dropout.default(torch.empty_strided(size, stride, dtype=dtype, device=device), p, True)[1]
    finally:
        gen.set_state(before)


def _dropout_mask_fake(state, size, stride, dtype, device, p):
    return torch.empty_strided(size, stride, dtype=torch.bool, device=device)


torch.library.impl("remat::dropout_mask", "CompositeExplicitAutograd", lib=_lib)(_dropout_mask)
torch.library.register_fake("remat::dropout_mask", lib=_lib)(_dropout_mask_fake)

RNG_STATE = torch.ops.remat.rng_state.default
REPLAY_DROPOUT = torch.ops.remat.replay_dropout.default
DROPOUT_MASK = torch.ops.remat.dropout_mask.default


def draws(n: fx.Node) -> bool:
    """Whether ``n`` draws fresh random numbers (run again, it would draw different ones). An op
    with a dropout probability of 0 (attention without dropout) draws none."""
    tags = getattr(n.target, "tags", ()) or ()
    random = n.op == "call_function" and torch.Tag.nondeterministic_seeded in tags
    return random and not replays(n) and not _no_dropout(n)


def _argument_names(n: fx.Node) -> list[str]:
    schema = getattr(n.target, "_schema", None)
    return [a.name for a in schema.arguments] if schema is not None else []


def _no_dropout(n: fx.Node) -> bool:
    names = _argument_names(n)
    if "dropout_p" not in names:
        return False
    i = names.index("dropout_p")
    p = n.kwargs["dropout_p"] if "dropout_p" in n.kwargs else (n.args[i] if i < len(n.args) else None)
    return p == 0


def replays(n: fx.Node) -> bool:
    """Whether ``n`` computes random numbers as a pure function of a seed or generator state that
    the forward drew (so running it again gives the forward's numbers): remat's and Inductor's
    seeded ops, and ops that take the forward's philox seed and offset (CUDA attention backward)."""
    seeded = n.target is DROPOUT_MASK or str(n.target) in _SEEDED
    return n.op == "call_function" and (seeded or "philox_seed" in _argument_names(n))


def fusible(n: fx.Node) -> bool:
    """Whether ``n`` is one of Inductor's seeded random prims, which it lowers to pointwise code
    and fuses into their readers like any pointwise op."""
    return n.op == "call_function" and str(n.target) in _SEEDED


def replay_dropouts(joint: fx.GraphModule, forward: set[fx.Node]) -> set[fx.Node]:
    """Rewrite each training ``native_dropout`` of the forward into a replay from the generator
    state saved just before it, and its mask into ``dropout_mask`` of that state (which does not
    read the dropout's input: recomputing a mask needs only the state). In place: the nodes keep
    their names and users. Returns the new state nodes (forward ops). Dropouts of a symbolic
    size are left as they are."""
    states = set()
    for n in list(joint.graph.nodes):
        if n in forward and n.target is torch.ops.aten.native_dropout.default and _training(n) and _static(n.args[0]):
            x, p = n.args[0], n.args[1]
            with joint.graph.inserting_before(n):
                state = joint.graph.call_function(RNG_STATE, (x,), name=f"{n.name}_rng_state")
            state.meta["val"] = _cpu_bytes_like(x, _state_numel(x.meta["val"].device))
            n.target, n.args, n.kwargs = REPLAY_DROPOUT, (state, x, p, list(x.meta["val"].stride())), {}
            for mask in [u for u in n.users if u.target is operator.getitem and u.args[1] == 1]:
                v = x.meta["val"]
                mask.target, mask.args = DROPOUT_MASK, (state, list(v.shape), list(v.stride()), v.dtype, v.device, p)
            states.add(state)
    if states:
        joint.recompile()
    return states


def replay_in_joint(joint: fx.GraphModule) -> None:
    """``replay_dropouts`` on the forward of a joint graph: the ops that no incoming gradient
    reaches."""
    backward = set()
    for n in joint.graph.nodes:
        if (n.op == "placeholder" and "tangents" in str(n.target)) or any(i in backward for i in n.all_input_nodes):
            backward.add(n)
    replay_dropouts(joint, set(joint.graph.nodes) - backward)


def _static(x: fx.Node) -> bool:
    """Whether ``x``'s layout is plain ints (a mask's layout is an argument of ``dropout_mask``;
    under dynamic shapes the dropout stays as it is and its mask is stored)."""
    v = x.meta["val"]
    return all(type(d) is int for d in (*v.shape, *v.stride()))


def _training(n: fx.Node) -> bool:
    train = n.args[2] if len(n.args) > 2 else n.kwargs.get("train")
    return train is True


def _cpu_bytes_like(x: fx.Node, numel: int) -> torch.Tensor:
    """A CPU byte tensor of ``numel`` elements, fake when ``x``'s value is."""
    from contextlib import nullcontext

    from torch._guards import detect_fake_mode

    with detect_fake_mode([x.meta["val"]]) or nullcontext():
        return torch.empty(numel, dtype=torch.uint8, device="cpu")


def forward_ops(joint: fx.GraphModule) -> set[fx.Node]:
    """The forward ops that ``replay_dropouts`` made in a joint graph: generator states and masks
    (a mask that only the backward reads is still a forward value, as the getitem it replaced)."""
    return {n for op in (RNG_STATE, DROPOUT_MASK) for n in joint.graph.find_nodes(op="call_function", target=op)}


def share_forward_masks(fw: fx.GraphModule) -> None:
    """In a forward graph, each mask that the forward keeps (a plan that stores it) takes the mask
    that its ``replay_dropout`` drew, the same bits from the same state, instead of drawing it
    again with ``dropout_mask`` (a second pass over the mask and a second mask allocated)."""
    shared = False
    for mask in list(fw.graph.find_nodes(op="call_function", target=DROPOUT_MASK)):
        replay = next((u for u in mask.args[0].users if u.target is REPLAY_DROPOUT), None)
        if replay is None or not _same_layout(replay.meta["val"][1], mask.meta["val"]):
            continue
        with fw.graph.inserting_after(replay):
            drawn = fw.graph.call_function(operator.getitem, (replay, 1))
        drawn.meta["val"] = replay.meta["val"][1]
        mask.replace_all_uses_with(drawn)
        fw.graph.erase_node(mask)
        shared = True
    if shared:
        fw.recompile()


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype and a.device == b.device


def check_backward(bw: fx.GraphModule) -> None:
    """Refuse a backward graph that draws fresh random numbers (a recomputed mask would differ
    from the forward's)."""
    fresh = [n.name for n in bw.graph.nodes if draws(n)]
    if fresh:
        raise PlanError(f"the backward graph would draw fresh random numbers in {fresh}; random ops must be "
                        "stored or replayed from a saved seed")
