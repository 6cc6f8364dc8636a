"""Synthetic ``Problem`` generators for the solver tests (no torch).

A small graph builder: forward ops create activations (one storage per op output) and read
earlier ones; each forward op gets backward slots, in reverse order, that read what its backward
needs (its saved tensors). ``fixed_bytes`` holds a resident base, every activation during its
forward lifetime, the op's temporaries and, in backward, the gradients being produced.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace

from remat.plan import Decision
from remat.problem import BACKWARD, FORWARD, Activation, Problem, Slot
from remat.simulate import needed_activations, recompute_starts


@dataclass
class _Op:
    name: str
    out: list[str]  # activations this op creates
    time: float
    temp: int
    saved: list[str]  # activations its backward reads
    bwd_slots: int
    grad_bytes: int
    views: int = 0  # extra forward slots (views, no activation)


@dataclass
class Graph:
    """Build a forward graph op by op, then ``problem()`` makes the schedule and the activations."""

    base: int = 0
    ops: list[_Op] = field(default_factory=list)
    acts: dict[str, dict] = field(default_factory=dict)

    def op(
        self,
        name: str,
        nbytes: int | list[int],
        time: float,
        inputs: tuple[str, ...] = (),
        saved: tuple[str, ...] = (),
        save_out: bool = False,
        recomputable: bool = True,
        offloadable: bool = True,
        outs: list[str] | None = None,
        temp: int = 0,
        bwd_slots: int = 1,
        views: int = 0,
    ) -> str:
        """Add a forward op creating activation(s) ``outs`` (default ``[name]``) from ``inputs``."""
        outs = outs or [name]
        sizes = nbytes if isinstance(nbytes, list) else [nbytes] * len(outs)
        for o, b in zip(outs, sizes):
            self.acts[o] = dict(
                bytes=int(b), time=float(time), inputs=tuple(inputs), recomputable=recomputable,
                offloadable=offloadable, op=len(self.ops), readers=[],
            )
        for i in inputs:
            self.acts[i]["readers"].append(len(self.ops))
        sv = list(saved) + (list(outs) if save_out else [])
        grad = sum(sizes)
        self.ops.append(_Op(name, list(outs), float(time), int(temp), sv, bwd_slots if sv or inputs else 1,
                            grad, views))
        return outs[0]

    def problem(self, name: str = "synthetic", host_bandwidth: float = 0.0,
                bwd_time_factor: float = 2.0) -> Problem:
        # forward slots
        slot_of_op: list[int] = []
        fwd: list[tuple[str, float, int]] = []  # (name, time, temp)
        for k, o in enumerate(self.ops):
            slot_of_op.append(len(fwd))
            fwd.append((o.name, o.time, o.temp))
            for v in range(o.views):
                fwd.append((f"{o.name}_view{v}", 0.0, 0))
        nf = len(fwd)
        # backward slots: ops in reverse; the saved tensors are read in the op's first backward slot
        bwd: list[tuple[str, float, int]] = []
        uses: dict[str, list[int]] = {a: [] for a in self.acts}
        for k in range(len(self.ops) - 1, -1, -1):
            o = self.ops[k]
            for j in range(o.bwd_slots):
                t = nf + len(bwd)
                if j == min(1, o.bwd_slots - 1):
                    for s in o.saved:
                        uses[s].append(t)
                bwd.append((f"{o.name}_bwd{j}", o.time * bwd_time_factor / o.bwd_slots, o.grad_bytes))
        acts = []
        life = [0] * nf
        for an, d in self.acts.items():
            created = slot_of_op[d["op"]]
            lfu = max([slot_of_op[r] for r in d["readers"]], default=created)
            for t in range(created, lfu + 1):
                life[t] += d["bytes"]
            acts.append(Activation(
                name=an, op=_kind(self.ops[d["op"]].name), bytes=d["bytes"], compute_time=d["time"],
                created=created, last_forward_use=lfu, backward_uses=tuple(sorted(set(uses[an]))),
                inputs=d["inputs"],
                recomputable=d["recomputable"], offloadable=d["offloadable"],
            ))
        slots = [Slot(n, FORWARD, t, self.base + tmp + life[i]) for i, (n, t, tmp) in enumerate(fwd)]
        slots += [Slot(n, BACKWARD, t, self.base + g) for n, t, g in bwd]
        return Problem(slots=tuple(slots), activations=tuple(acts), host_bandwidth=host_bandwidth, name=name)


# ---- small named graphs ----------------------------------------------------------------------


# Recomputation is just in time: an activation is recomputed just before the first backward op
# that needs it, directly or through other recomputed activations (``remat.problem``). The
# generators are fully recomputable by default (only random ops such as dropout masks are not);
# ``save_matmul=True`` / ``save_residual=True`` pin matmuls / residual adds as non-recomputable,
# as a framework that never recomputes them would.


def _kind(op_name: str) -> str:
    """The op kind that identical layers share: ``l3_qkv`` -> ``qkv``, ``fc2`` -> ``fc``."""
    return re.sub(r"^l\d+_|\d+$", "", op_name)


def chain_problem(layers: int = 4, width: int = 100, host_bandwidth: float = 0.0,
                  save_matmul: bool = False) -> Problem:
    """MLP: x -> (linear -> relu -> square) * layers -> loss.

    linear saves its input, relu its output, square its input: storing only the linear's output
    lets both pointwise outputs be recomputed (the classic "save matmuls" trade).
    """
    g = Graph(base=50)
    prev = None
    for i in range(layers):
        w = width * (1 + i % 3)
        h = g.op(f"lin{i}", w, 4.0 + i, inputs=(prev,) if prev else (), saved=(prev,) if prev else (),
                 recomputable=not save_matmul)
        u = g.op(f"relu{i}", w, 0.5 + 0.1 * i, inputs=(h,), save_out=True)
        prev = g.op(f"sq{i}", w, 0.7, inputs=(u,), saved=(u,))
    g.op("loss", 4, 0.1, inputs=(prev,), saved=(prev,))
    return g.problem("chain", host_bandwidth=host_bandwidth)


def diamond_problem(host_bandwidth: float = 0.0) -> Problem:
    """a -> (b, c) -> d: two branches that join; recomputing d needs both."""
    g = Graph(base=30)
    a = g.op("a", 120, 3.0, save_out=True)
    b = g.op("b", 80, 1.0, inputs=(a,))
    c = g.op("c", 60, 2.0, inputs=(a,), saved=(a,))
    d = g.op("d", 100, 0.5, inputs=(b, c), saved=(b, c))
    e = g.op("e", 40, 4.0, inputs=(d,), save_out=True, saved=(d,), recomputable=False, temp=150)
    g.op("loss", 4, 0.1, inputs=(e,), saved=(e,))
    return g.problem("diamond", host_bandwidth=host_bandwidth)


def residual_problem(blocks: int = 3, host_bandwidth: float = 0.0, save_residual: bool = False) -> Problem:
    """Residual stack: x_{i+1} = x_i + f(norm(x_i)); the skip keeps x_i alive across the block."""
    g = Graph(base=40)
    x = g.op("x0", 64, 1.0, save_out=True)
    for i in range(blocks):
        n = g.op(f"norm{i}", 64, 0.3, inputs=(x,), saved=(x,), outs=[f"norm{i}", f"rstd{i}"])
        f = g.op(f"fc{i}", 160, 3.0, inputs=(n,), saved=(n,))
        a = g.op(f"act{i}", 160, 0.4, inputs=(f,), saved=(f,))
        o = g.op(f"out{i}", 64, 3.0, inputs=(a,), saved=(a,))
        x = g.op(f"x{i + 1}", 64, 0.1, inputs=(x, o), recomputable=not save_residual)
    g.op("loss", 4, 0.1, inputs=(x,), saved=(x,))
    return g.problem("residual", host_bandwidth=host_bandwidth)


def _block(g: Graph, x: str, i: int, B: int, S: int, H: int, heads: int, esz: int, flops: float,
           bw: float, decompose: bool, save_residual: bool) -> str:
    """One GPT-2 style block; ``decompose`` splits layernorm/linear/gelu like aten graphs do."""
    act = B * S * H * esz
    sc = B * heads * S * S * esz
    small = B * S * 4

    def pw(nbytes):  # pointwise op time: read + write
        return 2 * nbytes / bw

    def mm(m, k, n):
        return 2 * m * k * n / flops

    def layernorm(x, tag):
        if decompose:
            g.op(f"{tag}_var_mean", [small, small], pw(act), inputs=(x,), outs=[f"{tag}_var", f"{tag}_mean"], views=1)
            r = g.op(f"{tag}_rstd", small, pw(small), inputs=(f"{tag}_var",), bwd_slots=1)
            s = g.op(f"{tag}_sub", act, pw(act), inputs=(x, f"{tag}_mean"))
            nrm = g.op(f"{tag}_norm", act, pw(act), inputs=(s, r), saved=(s, r), bwd_slots=2)
            w = g.op(f"{tag}_mulw", act, pw(act), inputs=(nrm,), saved=(nrm,), bwd_slots=3)
            return g.op(f"{tag}_out", act, pw(act), inputs=(w,), bwd_slots=2, views=1)
        return g.op(f"{tag}", [act, small, small], pw(act), inputs=(x,), outs=[tag, f"{tag}_mean", f"{tag}_rstd"],
                    saved=(x, f"{tag}_mean", f"{tag}_rstd"), bwd_slots=3)

    def linear(x, k, n, tag):
        m = B * S
        if decompose:
            mmo = g.op(f"{tag}_mm", m * n * esz, mm(m, k, n), inputs=(x,), saved=(x,), bwd_slots=4, views=2)
            return g.op(f"{tag}_bias", m * n * esz, pw(m * n * esz), inputs=(mmo,), bwd_slots=2, views=1)
        return g.op(tag, m * n * esz, mm(m, k, n), inputs=(x,), saved=(x,), bwd_slots=3)

    ln1 = layernorm(x, f"l{i}_ln1")
    qkv = linear(ln1, H, 3 * H, f"l{i}_qkv")
    q = g.op(f"l{i}_q", act, pw(act), inputs=(qkv,), views=2) if decompose else qkv
    k = g.op(f"l{i}_kt", act, pw(act), inputs=(qkv,), views=2) if decompose else qkv
    v = g.op(f"l{i}_v", act, pw(act), inputs=(qkv,), views=2) if decompose else qkv
    scores = g.op(f"l{i}_scores", sc, mm(B * heads * S, H // heads, S), inputs=(q, k), saved=(q, k), bwd_slots=3)
    scaled = g.op(f"l{i}_scale", sc, pw(sc), inputs=(scores,))
    masked = g.op(f"l{i}_mask", sc, pw(sc), inputs=(scaled,), bwd_slots=1)
    probs = g.op(f"l{i}_softmax", sc, 3 * pw(sc), inputs=(masked,), save_out=True, bwd_slots=2)
    dmask = g.op(f"l{i}_dmask", sc // esz, pw(sc), recomputable=False)
    pd = g.op(f"l{i}_pdrop", sc, pw(sc), inputs=(probs, dmask), saved=(dmask,))
    ctx = g.op(f"l{i}_ctx", act, mm(B * heads * S, S, H // heads), inputs=(pd, v), saved=(pd, v), bwd_slots=3)
    ctxc = g.op(f"l{i}_ctxc", act, pw(act), inputs=(ctx,), views=2) if decompose else ctx
    proj = linear(ctxc, H, H, f"l{i}_proj")
    dm2 = g.op(f"l{i}_dmask2", act // esz, pw(act), recomputable=False)
    pd2 = g.op(f"l{i}_pdrop2", act, pw(act), inputs=(proj, dm2), saved=(dm2,))
    r1 = g.op(f"l{i}_res1", act, pw(act), inputs=(x, pd2), recomputable=not save_residual)
    ln2 = layernorm(r1, f"l{i}_ln2")
    fc = linear(ln2, H, 4 * H, f"l{i}_fc")
    if decompose:  # NewGELU: 0.5*x*(1+tanh(c*(x+0.044715*x^3)))
        a4 = 4 * act
        p3 = g.op(f"l{i}_pow", a4, pw(a4), inputs=(fc,), saved=(fc,))
        m1 = g.op(f"l{i}_mul1", a4, pw(a4), inputs=(p3,))
        ad = g.op(f"l{i}_add1", a4, pw(a4), inputs=(fc, m1))
        m2 = g.op(f"l{i}_mul2", a4, pw(a4), inputs=(ad,))
        th = g.op(f"l{i}_tanh", a4, pw(a4), inputs=(m2,), save_out=True)
        a1 = g.op(f"l{i}_add2", a4, pw(a4), inputs=(th,))
        hx = g.op(f"l{i}_mulh", a4, pw(a4), inputs=(fc,), saved=(fc,))
        gl = g.op(f"l{i}_gelu", a4, pw(a4), inputs=(hx, a1), saved=(hx, a1), bwd_slots=2)
    else:
        gl = g.op(f"l{i}_gelu", 4 * act, pw(4 * act), inputs=(fc,), saved=(fc,))
    out = linear(gl, 4 * H, H, f"l{i}_out")
    dm3 = g.op(f"l{i}_dmask3", act // esz, pw(act), recomputable=False)
    pd3 = g.op(f"l{i}_pdrop3", act, pw(act), inputs=(out, dm3), saved=(dm3,))
    return g.op(f"l{i}_res2", act, pw(act), inputs=(r1, pd3), bwd_slots=2, recomputable=not save_residual)


def transformer_problem(
    layers: int = 2,
    batch: int = 2,
    seq: int = 64,
    hidden: int = 64,
    heads: int = 4,
    elem_size: int = 2,
    decompose: bool = False,
    host_bandwidth: float = 0.0,
    flops: float = 100e12,
    bandwidth: float = 2e12,
    save_residual: bool = False,
) -> Problem:
    """A stack of GPT-2 blocks; ``decompose=True`` gives ~250 slots and ~55 activations per layer."""
    g = Graph(base=12 * hidden * hidden * layers * 4 * 3)  # params + grads + optimizer state
    act = batch * seq * hidden * elem_size
    x = g.op("embed", act, 2 * act / bandwidth, save_out=False)
    for i in range(layers):
        x = _block(g, x, i, batch, seq, hidden, heads, elem_size, flops, bandwidth, decompose, save_residual)
    lnf = g.op("lnf", act, 2 * act / bandwidth, inputs=(x,), saved=(x,))
    g.op("head", batch * seq * 4, 2 * batch * seq * hidden * 4 / flops, inputs=(lnf,), saved=(lnf,))
    if decompose:  # aten graphs also have views, transposes and sums that save nothing
        for o in g.ops:
            o.views += 1
            o.bwd_slots += 1
    return g.problem(f"transformer{layers}", host_bandwidth=host_bandwidth)


# ---- random problems -------------------------------------------------------------------------


def random_problem(rng: random.Random, n_acts: int | None = None, host_bandwidth: float | None = None) -> Problem:
    """A random valid Problem: inputs only to earlier activations, uses in backward slots."""
    n_acts = n_acts if n_acts is not None else rng.randint(1, 7)
    nf = max(1, n_acts + rng.randint(0, 2))
    nb = rng.randint(1, n_acts + 2)
    created = sorted(rng.randrange(nf) for _ in range(n_acts))
    acts = []
    names = [f"a{i}" for i in range(n_acts)]
    inputs_of: list[tuple[str, ...]] = []
    for i in range(n_acts):
        earlier = [j for j in range(i) if created[j] < created[i]]
        k = rng.randint(0, min(2, len(earlier)))
        inputs_of.append(tuple(names[j] for j in rng.sample(earlier, k)))
    lfu = []
    for i in range(n_acts):
        lo = max([created[i]] + [created[j] for j in range(n_acts) if names[i] in inputs_of[j]])
        lfu.append(rng.randint(lo, nf - 1))
    for i in range(n_acts):
        uses = () if rng.random() < 0.3 else tuple(sorted(rng.sample(range(nf, nf + nb), rng.randint(1, min(2, nb)))))
        acts.append(Activation(
            name=names[i], op=f"op{i}", bytes=rng.choice([0, 1, 2, 4, 8, 16, 24, 32, 48]) if rng.random() < 0.1
            else rng.randint(1, 64), compute_time=round(rng.uniform(0.0, 5.0), 3), created=created[i],
            last_forward_use=lfu[i], backward_uses=uses, inputs=inputs_of[i],
            recomputable=rng.random() < 0.8, offloadable=rng.random() < 0.7,
        ))
    life = [0] * nf
    for a in acts:
        for t in range(a.created, a.last_forward_use + 1):
            life[t] += a.bytes
    slots = [Slot(f"f{t}", FORWARD, round(rng.uniform(0.1, 2.0), 3), rng.randint(0, 40) + life[t]) for t in range(nf)]
    slots += [Slot(f"b{t}", BACKWARD, round(rng.uniform(0.1, 2.0), 3), rng.randint(0, 40)) for t in range(nb)]
    if host_bandwidth is None:
        host_bandwidth = rng.choice([0.0, 0.0, 8.0, 40.0])
    return Problem(slots=tuple(slots), activations=tuple(acts), host_bandwidth=host_bandwidth, name="random")


def all_small_problems() -> list[Problem]:
    """Every named small generator, with and without offload."""
    out = [chain_problem(), chain_problem(layers=6), diamond_problem(), residual_problem(),
           transformer_problem(layers=1, seq=16, hidden=16, heads=2),
           chain_problem(save_matmul=True), residual_problem(save_residual=True),
           transformer_problem(layers=2, seq=16, hidden=16, heads=2, decompose=True)]
    out += [chain_problem(host_bandwidth=200.0), diamond_problem(host_bandwidth=100.0),
            residual_problem(blocks=2, host_bandwidth=150.0)]
    return out


def large_problem(seed: int = 0, forward: int = 10_000, backward: int = 10_000,
                  activations: int = 5_000) -> tuple[Problem, dict[str, Decision]]:
    """A large random Problem (1 s slots, two backward uses and up to two inputs per activation,
    1e6 B/s link) and a valid plan over its needed set that STOREs, RECOMPUTEs and OFFLOADs by
    turns (an OFFLOAD that a recomputed consumer needs before its prefetch becomes STORE)."""
    rng = random.Random(seed)
    nf, nb = forward, backward
    slots = [Slot(f"f{i}", FORWARD, 1.0, rng.randrange(1000)) for i in range(nf)]
    slots += [Slot(f"b{i}", BACKWARD, 1.0, rng.randrange(1000)) for i in range(nb)]
    acts: list[Activation] = []
    for i in range(activations):
        c = rng.randrange(nf - 1)
        inputs = tuple(f"x{j}" for j in rng.sample(range(i), min(i, 2)) if acts[j].created < c)
        uses = tuple(sorted(rng.sample(range(nf, nf + nb), 2)))
        lfu = c + rng.randrange(nf - c)
        acts.append(Activation(f"x{i}", f"op_x{i}", 1 + rng.randrange(1 << 20), 1.0, c, lfu, uses, inputs))
    p = Problem(slots=tuple(slots), activations=tuple(acts), host_bandwidth=1e6)
    S, R, O = Decision.STORE, Decision.RECOMPUTE, Decision.OFFLOAD
    plan = {a.name: (S, R, O)[i % 3] for i, a in enumerate(acts)}
    starts = recompute_starts(p, plan)
    for a in acts:
        if plan[a.name] is O and starts.get(a.name, a.backward_uses[0]) < a.backward_uses[0]:
            plan[a.name] = S
    return p, {n: plan[n] for n in needed_activations(p, plan)}


def fuzz_problem(rng: random.Random, max_acts: int = 16) -> Problem:
    """A random valid Problem for the solver fuzzer, wider than ``random_problem``: up to three
    inputs and three backward uses per activation, zero-byte and zero-time activations and slots,
    and a host link that is absent, slow (copies mostly exposed) or fast."""
    n = rng.randint(1, max_acts)
    nf = n + rng.randint(0, 3)
    nb = rng.randint(1, n + 3)
    created = sorted(rng.randrange(nf) for _ in range(n))
    acts: list[Activation] = []
    for i in range(n):
        earlier = [j for j in range(i) if created[j] < created[i]]
        inputs = tuple(f"a{j}" for j in rng.sample(earlier, rng.randint(0, min(3, len(earlier)))))
        k = 0 if rng.random() < 0.25 else rng.randint(1, min(3, nb))
        uses = tuple(sorted(rng.sample(range(nf, nf + nb), k)))
        acts.append(Activation(
            name=f"a{i}", op=f"op{i}", bytes=0 if rng.random() < 0.05 else rng.choice([1, 8, 64, 100, 1000]),
            compute_time=0.0 if rng.random() < 0.1 else round(rng.uniform(0.01, 5.0), 3),
            created=created[i], last_forward_use=created[i], backward_uses=uses, inputs=inputs,
            recomputable=rng.random() < 0.85, offloadable=rng.random() < 0.7,
        ))
    lfu = {a.name: a.created for a in acts}
    for a in acts:  # a value lives in the forward at least until its last reader, maybe longer
        for x in a.inputs:
            lfu[x] = max(lfu[x], a.created)
    acts = [replace(a, last_forward_use=rng.randint(lfu[a.name], nf - 1) if rng.random() < 0.3 else lfu[a.name])
            for a in acts]
    life = [0] * nf
    for a in acts:
        for t in range(a.created, a.last_forward_use + 1):
            life[t] += a.bytes

    def slot_time() -> float:
        return 0.0 if rng.random() < 0.05 else round(rng.uniform(0.1, 2.0), 3)
    slots = [Slot(f"f{t}", FORWARD, slot_time(), rng.randint(0, 200) + life[t]) for t in range(nf)]
    slots += [Slot(f"b{t}", BACKWARD, slot_time(), rng.randint(0, 200)) for t in range(nb)]
    bw = rng.choice([0.0, 0.0, 20.0, 200.0, 1e6])
    return Problem(slots=tuple(slots), activations=tuple(acts), host_bandwidth=bw, name="fuzz")


def with_random_takers(p: Problem, rng: random.Random, share: float = 0.6) -> Problem:
    """``p`` with ``taken_by`` set at random where legal (``Problem``): an activation with one
    consumer becomes, at ``share``, taken by it; it loses its backward uses and takes its
    taker's bytes, its forward slots' fixed bytes following."""
    acts = {a.name: a for a in p.activations}
    fixed = [s.fixed_bytes for s in p.slots]
    for a in sorted(p.activations, key=lambda a: a.created, reverse=True):  # takers first
        readers = set(p.consumers[a.name])
        if len(readers) != 1 or rng.random() >= share:
            continue
        taker = readers.pop()
        nbytes = acts[taker].bytes
        for t in range(a.created, a.last_forward_use + 1):
            fixed[t] += nbytes - a.bytes
        acts[a.name] = replace(a, taken_by=taker, backward_uses=(), bytes=nbytes)
    slots = tuple(replace(s, fixed_bytes=f) for s, f in zip(p.slots, fixed))
    return replace(p, slots=slots, activations=tuple(acts[a.name] for a in p.activations))


def with_random_handovers(p: Problem, rng: random.Random, share: float = 0.6) -> Problem:
    """``p`` with buffers handed to a kernel's result (``remat.kernel_groups.handovers``): at
    ``share``, an activation that backward reads and a recomputation may read too hands its buffer
    over at a random backward slot up to its last backward use (a recomputed reader breaks it)."""
    hand = {a.name: rng.randint(p.num_forward, a.backward_uses[-1]) for a in p.activations
            if a.backward_uses and p.consumers[a.name] and rng.random() < share}
    return replace(p, metadata={**p.metadata, "handovers": hand})
