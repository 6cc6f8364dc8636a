"""One test per step of ``remat.capture`` on tiny traced graphs.

``mlp_joint``: the joint graph of ``tanh(dropout(relu(x @ w1)) @ w2)`` (AOTAutograd, no
decompositions). Its slots: forward mm, relu, native_dropout, mm_1, tanh (0-4); backward
tanh_backward, mm_2, mm_3, native_dropout_backward, threshold_backward, mm_4 (5-10). Inductor
fuses native_dropout_backward into threshold_backward.
"""

import pytest
import torch
import torch.nn.functional as F
from torch._functorch import partitioners as P
from torch._functorch.aot_autograd import aot_function
from torch.fx.experimental.proxy_tensor import make_fx

import remat
from remat.passes.rng_replay import replay_in_joint
from remat.cost import DeviceSpec, tensor_bytes
from remat.capture import (
    ActivationFacts, activation_inputs, backward_relevant, broadcast_copies, capture, effective_readers,
    fixed_bytes, fold_fused_values, fused_schedule, fused_values, module_path, storage_lifetimes, with_renamed_ops,
)
from remat.joint_graph import (
    addmm_add, autograd_order, build_schedule, graph_facts, is_random, kernel_reads, pinned_storages, slot_readers,
    split_phases, storage_owners,
)
from remat.kernel_groups import KernelGroups
from remat.layouts import channels_last_copies, channels_last_storages, copied_inputs, layout_optimized, view_copies
from remat.pricing import slot_times

# bytes move at 1 B/s and flops are free: a kernel's time is the bytes it moves
BYTES_SPEC = DeviceSpec("bytes", peak_flops=1e30, bandwidth=1.0, host_bandwidth=0.0, launch_overhead=0.0)


def trace_joint(fn, *inputs):
    """(joint graph, the forward ops AOTAutograd's partitioner requires, number of forward outputs)."""
    seen = {}

    def partition(joint, joint_inputs, *, num_fwd_outputs, **kw):
        seen["joint"], seen["num_fwd_outputs"] = joint, num_fwd_outputs
        return P.default_partition(joint, joint_inputs, num_fwd_outputs=num_fwd_outputs, **kw)

    aot_function(fn, fw_compiler=lambda gm, _: gm, partition_fn=partition)(*inputs)
    joint, n = seen["joint"], seen["num_fwd_outputs"]
    return joint, set(P.classify_nodes(joint, [], n).required_fw_nodes), n


def mlp(x, w1, w2):
    return (F.dropout(torch.relu(x @ w1), 0.5, True) @ w2).tanh()


def scaled_exp(x, w1, w2):
    return ((x @ w1) * 2.0).exp() @ w2  # the product is fused into exp; backward reads only exp's result


def _weights():
    torch.manual_seed(0)
    return torch.randn(8, 4), torch.randn(4, 16, requires_grad=True), torch.randn(16, 4, requires_grad=True)


@pytest.fixture(scope="module")
def mlp_joint():
    return trace_joint(mlp, *_weights())


@pytest.fixture(scope="module")
def mlp_steps(mlp_joint):
    joint, fwd, n = mlp_joint
    g = graph_facts(joint, fwd, n)
    sched = build_schedule(g)
    fused = fused_values(g)
    readers = effective_readers(g, slot_readers(g), fused)
    return g, sched, fused, readers


def by_name(g):
    return {n.name: n for n in g.nodes}


def names(nodes):
    return [n.name for n in nodes]


def test_split_phases_puts_forward_tuple_elements_in_forward(mlp_joint):
    joint, fwd, _ = mlp_joint
    nodes = list(joint.graph.nodes)
    mask = next(n for n in nodes if n.name == "getitem_1")
    assert mask not in fwd  # only backward reads the dropout mask ...
    forward, backward = split_phases(nodes, fwd)
    assert mask in forward  # ... yet the dropout op makes it in forward
    assert {n.name for n in backward} >= {"tanh_backward", "mm_4", "detach_3"}
    assert not forward & backward
    assert not any(n.op == "placeholder" for n in forward | backward)


def test_storage_owners_follow_views_to_their_base():
    def f(x):
        y = x.sin()
        a, _ = y.split(2)
        return a.cos(), y.view(-1), x.t().sum(), x.size(0)

    gm = make_fx(f, tracing_mode="fake")(torch.randn(4, 3))
    owner = storage_owners(list(gm.graph.nodes))
    n = {v.name: v for v in gm.graph.nodes}
    assert owner[n["x_1"]] is n["x_1"] and owner[n["sin"]] is n["sin"]
    assert owner[n["split"]] is n["sin"] and owner[n["getitem"]] is n["sin"]  # an element of a split
    assert owner[n["view"]] is n["sin"] and owner[n["t"]] is n["x_1"]
    assert owner[n["cos"]] is n["cos"]
    assert owner[n["output"]] is None


def test_graph_facts_resident_inputs_tangents_and_pinned_outputs(mlp_steps, mlp_joint):
    g = mlp_steps[0]
    n = by_name(g)
    assert names(g.tangents) == ["tangents_1"]
    assert {v.name for v in g.resident} == {"primals_1", "primals_2", "primals_3"}
    # the forward output and the two gradients (the input x has none)
    assert {v.name for v in pinned_storages(mlp_joint[0], mlp_joint[2], g.owner)} == {"tanh", "mm_2", "mm_4"}
    assert g.pinned == {n["tanh"], n["mm_2"], n["mm_4"]}


def test_autograd_order_emits_a_backward_op_with_the_ops_it_reads():
    graph = torch.fx.Graph()
    p, tangent = graph.placeholder("primals_1"), graph.placeholder("tangents_1")
    early = graph.call_function(torch.ops.aten.cos.default, (p,))  # backward, read only by `late`
    first = graph.call_function(torch.ops.aten.mul.Tensor, (tangent, 2.0))
    late = graph.call_function(torch.ops.aten.add.Tensor, (first, early))
    graph.output((late,))
    nodes = list(graph.nodes)
    index = {v: i for i, v in enumerate(nodes)}
    assert autograd_order(nodes, index, {early, first, late}, [tangent]) == [first, early, late]


def test_build_schedule_slots_forward_then_backward_views_take_none(mlp_steps):
    g, sched, _, _ = mlp_steps
    n = by_name(g)
    assert names(sched.forward) == ["mm", "relu", "native_dropout", "mm_1", "tanh"]
    assert names(sched.backward) == ["tanh_backward", "mm_2", "mm_3", "native_dropout_backward",
                                     "threshold_backward", "mm_4"]
    assert sched.num_forward == 5 and sched.last == 10
    assert sched.slot_of[n["getitem_1"]] == sched.slot_of[n["native_dropout"]] == 2  # at its op's slot
    assert n["detach"] not in sched.slot_of and n["t"] not in sched.slot_of


def selected_tied(x, w):
    return ((x * w[0]).tanh() @ w).tanh().sum()  # w's gradient: mm_1 (early) + select_backward (last)


def test_an_mm_that_inductor_folds_into_addmm_runs_at_its_add():
    # Inductor's post-grad pattern turns add(mm_1, select_backward) into addmm(select_backward, ...)
    # (measured: its code runs the addmm last and frees tanh_backward's buffer only after it)
    joint, fwd, n = trace_joint(selected_tied, torch.randn(256, 64), torch.randn(64, 64, requires_grad=True))
    g = graph_facts(joint, fwd, n)
    sched = build_schedule(g)
    assert names(sched.order)[-3:] == ["select_backward", "mm_1", "add"]
    by = by_name(g)
    assert addmm_add(by["mm_1"]) is by["add"] and addmm_add(by["mm_2"]) is None  # mm_2 feeds tanh_backward_1
    fused = fused_values(g)
    life = storage_lifetimes(g, sched, effective_readers(g, slot_readers(g), fused), fused)
    made = sched.slot_of[by["tanh_backward"]]
    assert (made, sched.slot_of[by["mm_1"]], by["tanh_backward"].meta["val"]) in life.intervals  # read by the addmm
    assert (sched.last - 1, sched.last - 1, by["mm_1"].meta["val"]) in life.intervals  # the add writes into it


def test_addmm_add_needs_one_reader_and_a_tensor_of_its_dtype():
    def two_readers(x, w):
        y = x @ w
        return (y + x).sum() + y.sum()

    def scalar(x, w):
        return ((x @ w) + 1.0).sum()

    for fn in (two_readers, scalar):
        joint, fwd, n = trace_joint(fn, torch.randn(8, 8), torch.randn(8, 8, requires_grad=True))
        assert not any(addmm_add(m) for m in joint.graph.nodes), fn.__name__


def test_slot_readers_count_reads_through_views(mlp_steps):
    g = mlp_steps[0]
    n = by_name(g)
    uses = slot_readers(g)
    assert names(uses[n["relu"]]) == ["native_dropout", "threshold_backward"]  # via detach, detach_3
    assert names(uses[n["getitem"]]) == ["mm_1", "mm_2"]  # mm_2 reads it through t


def test_fused_values_single_fusible_reader_of_the_same_phase():
    def f(x):
        a = x.sin()  # read by one kernel (cos and exp end in relu): fused
        b = a.cos()  # read by one pointwise op: fused
        c = a.exp()  # read by one pointwise op: fused
        d = (b + c).relu()  # add: fused into relu; relu: read by mm (extern): a buffer
        return (d @ x.t(),)

    gm = make_fx(f, tracing_mode="fake")(torch.randn(4, 4))
    g = graph_facts(gm, set(gm.graph.nodes), 1)
    assert {v.name for v in fused_values(g)} == {"sin", "cos", "exp", "add"}


def test_fused_values_inline_a_cheap_result_into_each_reader_and_store_a_heavy_one():
    # as Inductor's CPU code does: sin(x), read by two kernels, is computed in each (x stays live
    # until the last); exp(x) is a heavy op on the CPU: stored; a sum of five loads: stored
    def f(x, y, z, u, v):
        a, e, s = x.sin(), x.exp(), x + y + z + u + v
        return (a.cos() @ x, a.sum(0), e.cos() @ x, e.sum(0), s.cos() @ x, s.sum(0))

    gm = make_fx(f, tracing_mode="fake")(*[torch.randn(4, 4) for _ in range(5)])
    g = graph_facts(gm, set(gm.graph.nodes), 6)
    fused = {v.name for v in fused_values(g)}
    assert {"sin", "add", "add_1", "add_2"} <= fused and not {"exp", "add_3"} & fused
    readers = effective_readers(g, slot_readers(g), fused_values(g))
    assert "sum_1" in names(readers[by_name(g)["x_1"]])  # x is read until sin's last reader


def test_fused_values_and_effective_readers_of_the_mlp(mlp_steps):
    g, _, fused, readers = mlp_steps
    n = by_name(g)
    assert names(fused) == ["native_dropout_backward"]
    # mm_3 and the mask stay live until threshold_backward, the kernel that inlines their reader
    assert names(readers[n["mm_3"]]) == ["native_dropout_backward", "threshold_backward"]
    assert names(readers[n["getitem_1"]]) == ["native_dropout_backward", "threshold_backward"]


def test_storage_lifetimes_of_the_mlp(mlp_steps):
    g, sched, fused, readers = mlp_steps
    n = by_name(g)
    life = storage_lifetimes(g, sched, readers, fused)
    mb = 8 * 16 * 4  # one [8, 16] float
    assert life.activations == {
        n["mm"]: ActivationFacts(mb, 0, 0, []),  # relu writes its result in mm's buffer
        n["relu"]: ActivationFacts(mb, 1, 2, [9]),
        n["getitem"]: ActivationFacts(mb, 2, 3, [6]),
        n["getitem_1"]: ActivationFacts(8 * 16, 2, 2, [8, 9]),  # the bool mask, read by the fused kernel
        n["mm_1"]: ActivationFacts(128, 3, 3, []),  # tanh too (the forward's code: ``buf6 = buf5; del buf5  # reuse``)
    }
    assert sorted((a, b, tensor_bytes(v)) for a, b, v in life.intervals) == sorted([
        (5, 5, 128),  # tangent: from the backward's start to its last read, tanh_backward (the compiled backward frees it)
        (0, 0, mb), (1, 2, mb), (2, 3, mb), (2, 2, 128), (3, 3, 128),  # forward values to last forward use, or taken
        (4, 10, 128),  # the output, pinned
        (5, 7, 128),  # tanh_backward to its last reader, mm_3
        (6, 10, 256), (10, 10, 256),  # gradients, pinned
        (7, 8, mb),  # mm_3: threshold_backward writes its result in place of it at slot 9
        (9, 10, mb),  # threshold_backward to mm_4
    ])


def test_fixed_bytes_sums_intervals_inclusive_and_skips_empty_ones():
    sized = lambda n: n  # noqa: E731 (intervals of plain byte counts)
    assert fixed_bytes([(0, 1, 10), (1, 2, 5), (2, 1, 7), (0, 0, 0)], 3, size_of=sized) == [10, 15, 5]
    t = torch.empty(2, 3)
    assert fixed_bytes([(0, 0, t), (0, 1, t)], 2) == [48, 24]  # tensors: their bytes


def test_broadcast_copies_only_for_extern_readers():
    def f(x):
        e = x[:1].expand(4, 3)
        return torch.mm(e, x.t()), e + 1  # mm reads the stride-0 view; add reads it in place

    gm = make_fx(f, tracing_mode="fake")(torch.randn(4, 3))
    g = graph_facts(gm, set(gm.graph.nodes), 2)
    sched = build_schedule(g)
    assert names(sched.order) == ["mm", "add"]
    assert [(a, b, tensor_bytes(v)) for a, b, v in broadcast_copies(sched)] == [(0, 0, 4 * 3 * 4)]


def test_fold_fused_values_and_backward_relevant():
    joint, fwd, n_out = trace_joint(scaled_exp, *_weights())
    g = graph_facts(joint, fwd, n_out)
    sched, fused = build_schedule(g), fused_values(g)
    acts = storage_lifetimes(g, sched, effective_readers(g, slot_readers(g), fused), fused).activations
    n = by_name(g)
    mm, mul, exp = n["mm"], n["mul"], n["exp"]
    assert activation_inputs(g, acts)[exp] == [mul]
    folding = fold_fused_values(g, acts, activation_inputs(g, acts), fused)
    assert folding.folded == {mul}
    assert folding.inputs[exp] == [mm] and folding.through[exp] == [mul]
    assert backward_relevant(g, acts, folding) == {mm, exp}  # mm: only to recompute exp


def test_a_random_fused_value_is_not_folded():
    def f(x):
        return ((torch.rand_like(x) * x).exp(),)

    gm = make_fx(f, tracing_mode="fake")(torch.randn(4))
    g = graph_facts(gm, set(gm.graph.nodes), 1)
    n = by_name(g)
    noise, mul, exp = n["rand_like"], n["mul"], n["exp"]
    assert is_random(noise)
    # as if both were fused (Inductor's random op is pointwise) and backward read only exp
    acts = {noise: ActivationFacts(16, 0, 1, []), mul: ActivationFacts(16, 1, 2, []),
            exp: ActivationFacts(16, 2, 2, [3])}
    folding = fold_fused_values(g, acts, activation_inputs(g, acts), {noise, mul})
    assert folding.folded == {mul}  # the noise stays a decision: recomputing it draws new numbers
    assert folding.inputs[exp] == [noise] and folding.through[exp] == [mul]


def test_a_value_made_from_no_tensor_is_folded_though_backward_reads_it():
    def f(x):
        i = torch.arange(4)  # a causal mask's index vector (transformers GPT-2's iota)
        keep = i[:, None] >= i[None, :]
        return (torch.where(keep, x, 0.0).exp(),)

    gm = make_fx(f, tracing_mode="fake")(torch.randn(4, 4))
    g = graph_facts(gm, set(gm.graph.nodes), 1)
    n = by_name(g)
    iota, ge, exp = n["arange"], n["ge"], n["exp"]
    # backward reads the index vector and the mask; neither is fused into a reader here
    acts = {iota: ActivationFacts(32, 0, 1, [5]), ge: ActivationFacts(16, 1, 2, [5]), exp: ActivationFacts(64, 2, 2, [5])}
    folding = fold_fused_values(g, acts, activation_inputs(g, acts), set())
    assert folding.folded == {iota}  # storing it saves no work: backward recomputes it where it reads it
    assert folding.inputs[ge] == [] and ge not in folding.folded


def test_kernel_reads_and_slot_times_follow_fused_kernels(mlp_steps):
    g, sched, fused, _ = mlp_steps
    n = by_name(g)
    tb = n["threshold_backward"]
    # native_dropout_backward runs inside threshold_backward's kernel: its inputs are read instead
    assert kernel_reads(tb, g.owner, fused) == {n["mm_3"], n["getitem_1"], n["relu"]}
    times, alone = slot_times(sched, g.owner, fused, BYTES_SPEC)
    mb = 8 * 16 * 4
    assert times[tb] == mb + 128 + mb + mb  # mm_3, mask, relu read; its result written
    assert alone[tb] == mb + mb + mb  # on its own: its two inputs read, its result written
    assert times[n["native_dropout_backward"]] < 1e-20  # no traffic of its own
    assert alone[n["native_dropout_backward"]] == mb + 128 + mb


def test_capture_builds_activations_of_the_mlp():
    joint, fwd, n = trace_joint(mlp, *_weights())  # the dropout is rewritten in place: a graph of its own
    replay_in_joint(joint)  # as the planner does before it classifies the nodes (remat.planning)
    fwd = set(P.classify_nodes(joint, [], n).required_fw_nodes)
    spec = DeviceSpec("t", peak_flops=1e12, bandwidth=1e11, host_bandwidth=1e10)
    captured = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=spec, host_bandwidth=5.0, name="mlp")
    problem = captured.problem
    assert problem.name == "mlp" and problem.host_bandwidth == 5.0
    state = "native_dropout_rng_state"  # the generator's state, saved before the dropout draws
    forward = ["mm", "relu", state, "native_dropout", "getitem_1", "mm_1", "tanh"]  # getitem_1: the mask, from the state
    assert [s.name for s in problem.slots] == forward + captured.backward_order
    acts = {a.name: a for a in problem.activations}
    assert set(acts) == {"mm", "relu", state, "getitem", "getitem_1"}  # mm: only to recompute relu
    assert acts["relu"].inputs == ("mm",) and acts["relu"].recomputable
    assert not acts[state].recomputable and acts[state].bytes == torch.get_rng_state().numel()
    assert acts["getitem_1"].recomputable and acts["getitem_1"].inputs == (state,)  # replayed, not drawn
    assert acts["getitem_1"].dtype == "bool" and acts["getitem_1"].shape == (8, 16)
    assert not any(a.offloadable for a in acts.values())  # far below MIN_OFFLOAD_BYTES
    assert "getitem_1" in captured.forward_nodes and "detach" not in captured.forward_nodes
    assert captured.folded == []
    assert problem.slots[5].fixed_bytes >= 128  # the tangent is live from the first backward slot on
    assert all(a.module == "" for a in acts.values())  # not traced by Dynamo: no nn_module_stack


# ---- module paths and repeated layers (traced by Dynamo through remat.analyze) ------------------


def test_module_path_is_the_innermost_module_without_dynamos_root():
    g = torch.fx.Graph()
    fwd, bwd, bare = (g.call_function(torch.relu, ()) for _ in range(3))
    fwd.meta["nn_module_stack"] = {"a": ("L['self'].blocks.3", object), "b": ("L['self'].blocks.3.attn", object)}
    bwd.meta["fwd_nn_module_stack"] = {"a": ("G['model'].head", object)}
    assert (module_path(fwd), module_path(bwd), module_path(bare)) == ("blocks.3.attn", "head", "")


class Named(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh())
        self.head = torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.head(self.encoder(x)).sigmoid()


def modules_by_op(model, x) -> dict[str, set[str]]:
    problem = remat.analyze(model, (x,), memory_budget="min").problem
    out: dict[str, set[str]] = {}
    for a in problem.activations:
        out.setdefault(a.op.split(".")[0], set()).add(a.module)
    return out


def test_activation_module_of_a_sequential_and_of_named_submodules():
    torch.manual_seed(0)
    seq = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8), torch.nn.Tanh())
    assert modules_by_op(seq, torch.randn(16, 8))["tanh"] == {"1", "3"}
    named = modules_by_op(Named(), torch.randn(16, 8))
    assert named["tanh"] == {"encoder.1"} and named["sigmoid"] == {""}  # the root's own forward


class Block(torch.nn.Module):
    """A transformer-ish block: layer norm, self-attention by matmuls, an MLP, residuals."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.fc1, self.fc2 = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x):
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1)
        x = x + self.proj(att @ v)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Tower(torch.nn.Module):
    """Blocks, then a final layer norm and a head (so the last block is like the others)."""

    def __init__(self, blocks: int = 4) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block() for _ in range(blocks))
        self.ln_f, self.head = torch.nn.LayerNorm(16), torch.nn.Linear(16, 16)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def test_problem_layers_found_on_four_blocks():
    torch.manual_seed(0)
    problem = remat.analyze(Tower(4), (torch.randn(2, 8, 16),), memory_budget="min").problem
    assert len(problem.layers) == 1
    (layers,) = problem.layers
    assert len(layers) == 4
    for i, layer in enumerate(layers):
        assert {tuple(problem.activation(name).module.split(".")[:2]) for name in layer} == {("blocks", str(i))}


def _ends(fn, *inputs, backward: bool = True) -> dict[str, tuple[int, int]]:
    """Each buffer's (first, last) slot in the graph of ``fn`` traced on fake tensors, every op in
    the backward (or every op in the forward)."""
    gm = make_fx(fn, tracing_mode="fake")(*inputs)
    ops = set() if backward else set(gm.graph.nodes)
    g = graph_facts(gm, ops, 1)
    sched, fused = build_schedule(g), fused_values(g)
    life = storage_lifetimes(g, sched, effective_readers(g, slot_readers(g), fused), fused)
    made = {id(n.meta["val"]): n.name for n in g.nodes if "val" in n.meta}
    ends = {made[id(v)]: (a, b) for a, b, v in life.intervals}
    ends.update({s.name: (f.created, f.last_forward_use) for s, f in life.activations.items()})
    return ends


def test_a_result_takes_a_buffer_it_reads_through_a_view_laid_out_as_itself():
    # Inductor lays out a pointwise result as the loads of its kernel vote (``pick_loop_order``):
    # a transpose read alone, or a reshape of a contiguous buffer, is read at the index the result
    # is written at, and the result takes the buffer (measured on 64 x 64 fp32 with torch 2.13:
    # ``buf1 = reinterpret_tensor(buf0, (64, 64), (1, 64), 0); del buf0  # reuse``); with a
    # contiguous load beside the transpose the vote ties, the result is contiguous and the
    # transposed read is not its index (``buf1 = empty_strided_cpu(...)``)
    w, b, t = torch.randn(16, 16), torch.randn(16, 16), torch.randn(16, 16)
    alone = _ends(lambda w, b, t: (((t @ w).t() * 2) @ w,), w, b, t)
    reshaped = _ends(lambda w, b, t: (((t @ w).view(8, 32) * 2).view(16, 16) @ w,), w, b, t)
    tie = _ends(lambda w, b, t: (((t @ w).t() * b) @ w,), w, b, t)
    both = _ends(lambda w, b, t: (((t @ w).t() * b.t()) @ w,), w, b, t)
    # slots: mm 0, mul 1, mm_1 2: mm ends at 0 when mul takes it, at 1 when it does not
    assert alone["mm"] == reshaped["mm"] == both["mm"] == (0, 0)
    assert tie["mm"] == (0, 1)


def test_a_forward_value_that_backward_does_not_read_is_taken_by_its_last_reader():
    # a log-softmax over the logits writes its result in the logits' buffer (Llama's forward:
    # ``buf58 = buf54; del buf54  # reuse``): the logits end the slot before it
    def log_softmax(w, x):
        logits = x @ w
        m = logits.amax(-1, keepdim=True)
        s = (logits - m).exp().sum(-1, keepdim=True)
        return ((logits - m - s.log()) @ w,)

    ends = _ends(log_softmax, torch.randn(8, 8), torch.randn(4, 8), backward=False)
    # slots: mm 0, amax 1, sub 2, exp 3, sum 4, sub_1 5, log 6, sub_2 7, mm_1 8
    assert ends["mm"] == (0, 6)


def _conv_steps(fn, *inputs):
    joint, fwd, n = trace_joint(fn, *inputs)
    g = graph_facts(joint, fwd, n)
    sched = build_schedule(g)
    return g, sched, effective_readers(g, slot_readers(g), fused_values(g))


def test_a_forward_conv_lays_out_its_resident_inputs_channels_last_until_their_last_read():
    # Inductor's forward with a 2-D conv on the CPU is laid out channels-last: its code copies
    # the batch and the weight first (``buf0 = empty_strided_cpu((16, 3, 3, 3), (27, 1, 9, 3))``,
    # ``cpp_fused_0``) and the backward's convolution_backward receives the copies
    torch.manual_seed(0)
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3, requires_grad=True)
    g, sched, readers = _conv_steps(lambda x, w: F.conv2d(x, w).relu().sum(), x, w)
    assert layout_optimized(g)
    assert [n.meta["val"].shape for n in copied_inputs(g)] == [x.shape, w.shape]
    conv_backward = next(t for t, n in enumerate(sched.order) if n.target is torch.ops.aten.convolution_backward.default)
    assert [(a, b, tensor_bytes(v)) for a, b, v in channels_last_copies(g, sched, readers)] == [
        (0, conv_backward, x.numel() * 4), (0, conv_backward, w.numel() * 4)]


def test_no_channels_last_copy_without_a_2d_conv_or_for_an_input_laid_out_so():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    x_last = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    g, _, _ = _conv_steps(lambda x, w: F.conv2d(x, w).relu().sum(), x_last, w)
    assert [n.meta["val"].shape for n in copied_inputs(g)] == [w.shape]
    g, sched, readers = _conv_steps(lambda x, w: (x @ w).relu().sum(), torch.randn(4, 8), torch.randn(8, 4, requires_grad=True))
    assert not layout_optimized(g) and channels_last_copies(g, sched, readers) == []
    g, _, _ = _conv_steps(lambda x, w: F.conv1d(x, w).relu().sum(), torch.randn(2, 3, 8), torch.randn(4, 3, 3, requires_grad=True))
    assert copied_inputs(g) == []


def _fused_names(fn, *inputs) -> set[str]:
    gm = make_fx(fn, tracing_mode="fake")(*inputs)
    return {n.name for n in fused_values(graph_facts(gm, set(), 1))}


def test_a_constant_is_inlined_into_the_copy_that_a_scatter_add_updates():
    # Inductor lowers ``scatter_add(full, ...)`` as ``scatter_add_(clone(full), ...)``: one
    # buffer, the zeros written by the kernel that makes the copy (the max-pool backward's
    # ``buf13 = empty_strided_cpu((512, 1024))``, then ``aten.scatter_reduce_.two(buf13, ...)``)
    idx, src, w = torch.randint(0, 16, (8, 4)), torch.randn(8, 4), torch.randn(16, 16)
    scatter = _fused_names(lambda i, s, w: (torch.full((8, 16), 0.0).scatter_add(1, i, s) @ w,), idx, src, w)
    assert "full" in scatter and "scatter_add" not in scatter
    # scattered into (its source), or read by an extern kernel, a constant is a buffer
    source = _fused_names(lambda i, s, w: (torch.zeros(8, 16).scatter_add(1, i, torch.full((8, 4), 1.0)) @ w,), idx, src, w)
    assert "full" not in source
    assert "full" not in _fused_names(lambda i, s, w: (torch.full((8, 16), 1.0) @ w,), idx, src, w)


def test_an_extern_kernel_reads_a_copy_of_a_view_that_channels_last_strides_cannot_express():
    # the max-pool backward's ``scatter_add`` reads ``view(indices, (512, 256))`` of a
    # channels-last buffer: Inductor copies it first (``buf15 = empty_strided_cpu((512, 256),
    # (1, 512), torch.int64)``); merging H and W of a channels-last tensor is a view
    def f(x, w, i2, i3):
        y = F.conv2d(x, w, padding=1)  # the forward: channels-last
        g = y * 2  # a loop kernel of a channels-last load: channels-last
        across = torch.zeros(8, 64).scatter_add(1, i2, g.view(8, 64))  # merges N and C: a copy
        along = torch.zeros(2, 4, 64).scatter_add(2, i3, y.view(2, 4, 64))  # merges H and W: a view
        return (across.sum() + along.sum(),)

    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    gm = make_fx(f, tracing_mode="fake")(x, w, torch.randint(0, 64, (8, 64)), torch.randint(0, 64, (2, 4, 64)))
    conv = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.convolution.default)
    g = graph_facts(gm, {conv}, 1)
    sched = build_schedule(g)
    laid_out = channels_last_storages(g)
    assert {"convolution", "mul"} <= {n.name for n in laid_out}
    scatter = next(t for t, n in enumerate(sched.order) if n.target is torch.ops.aten.scatter_add.default)
    assert [(a, b, tuple(v.shape)) for a, b, v in view_copies(g, sched, laid_out)] == [(scatter, scatter, (8, 64))]


def test_a_pointwise_result_read_by_an_indexing_loop_is_inlined_into_it():
    # Inductor lowers gather (the loss's pick of the log-softmax, hf_llama's ``sub_1``) and
    # embedding to a pointwise loop with an indirect load: what they read is computed inside
    x, i, w = torch.randn(8, 16), torch.randint(0, 16, (8, 1)), torch.randn(16, 16)
    assert "mul" in _fused_names(lambda x, i, w: ((x * 2).gather(1, i),), x, i, w)
    assert "mul" in _fused_names(lambda x, i, w: (F.embedding(i, w * 2),), x, i, w)
    assert "mul" not in _fused_names(lambda x, i, w: ((x * 2) @ w,), x, i, w)


def test_a_stored_value_inlined_into_a_forward_gather_is_handed_to_its_elementwise_backward_reader():
    # hf_llama's loss: the log-softmax ``sub_1`` is inlined into the forward's gather and read
    # by the backward's ``sub_2``, which writes its result in the saved value's buffer
    def f(x, w, i, t):
        s = x @ w - 1.0
        return s.gather(1, i), (s.exp() * t - t) @ w

    x, w, i, t = torch.randn(8, 16), torch.randn(16, 16), torch.randint(0, 16, (8, 1)), torch.randn(8, 16)
    gm = make_fx(f, tracing_mode="fake")(x, w, i, t)
    nodes = by_name(gm.graph)
    g = graph_facts(gm, {nodes["mm"], nodes["sub"], nodes["gather"]}, 1)
    sched, fused = build_schedule(g), fused_values(g)
    life = storage_lifetimes(g, sched, effective_readers(g, slot_readers(g), fused), fused)
    assert nodes["sub"] in fused
    h = sched.slot_of[nodes["sub_1"]]
    # ``sub`` recomputed inside ``sub_1``'s kernel reads ``mm`` at the index it writes: ``mm`` then
    assert life.handovers == {nodes["sub"]: h, nodes["mm"]: h}
    assert life.through == {nodes["mm"]: [nodes["sub"]]}


def routed(x, p, perm, w, w2):
    return ((x @ w) * p[perm][:, None] @ w2).sum()  # a router weight, gathered before its expert's matmul


def test_a_told_kernel_runs_where_its_first_buffer_is_written_and_the_ops_between_that_it_does_not_read_after_it():
    # transformers Mixtral's router-weight gradient: the row sums of the gradient times the expert's
    # output (mul_1 inlined into sum_2) scattered back to p (index_put) were one kernel of the last
    # compile, which the graph splits around the expert output's gradient (mul_2): Inductor runs
    # the kernel where sum_2 is, and mul_2, whose buffer comes first, before it
    torch.manual_seed(0)
    joint, fwd, n = trace_joint(routed, torch.randn(16, 4), torch.randn(16, requires_grad=True), torch.randperm(16),
                                torch.randn(4, 32, requires_grad=True), torch.randn(32, 4, requires_grad=True))
    sched = build_schedule(graph_facts(joint, fwd, n))
    assert names(sched.backward) == ["mm_2", "mm_3", "mul_1", "mul_2", "sum_2", "new_zeros", "index_put", "mm_4"]
    router = frozenset({"mul_1", "sum_2", "new_zeros", "index_put", "no_such_node"})
    told = fused_schedule(sched, (router, frozenset({"mul_2"})))
    expected = ["mm_2", "mm_3", "mul_2", "mul_1", "sum_2", "new_zeros", "index_put", "mm_4"]
    assert names(told.backward) == expected
    assert [told.slot_of[u] for u in told.backward] == list(range(sched.num_forward, sched.last + 1))
    # the ops that a kernel reads run before it, those after its first buffer included, and the
    # ops between that it does not read after it (sum_2's kernel, before index_put's)
    pulled = fused_schedule(sched, (frozenset({"mul_2", "index_put"}),))
    assert names(pulled.backward) == ["mm_2", "mm_3", "mul_1", "sum_2", "new_zeros", "mul_2", "index_put", "mm_4"]
    # no kernel of this graph: index_put reads mul_1 through sum_2, outside it
    assert fused_schedule(sched, (frozenset({"mul_1", "index_put"}),)) is sched
    assert fused_schedule(sched, ()) is sched
    # the same kernel where Inductor's passes renamed the sum (no kernel names sum_2): sum_2, between
    # two of its ops, is its op; mul_2, which no kernel names either, is not
    renamed = KernelGroups(backward=(frozenset({"mul_1", "sum_default", "new_zeros", "index_put"}),))
    found = with_renamed_ops(renamed, sched)
    assert found.backward == (renamed.backward[0] | {"sum_2"},)
    assert names(fused_schedule(sched, found.backward).backward) == expected
    assert fused_schedule(sched, renamed.backward) is sched  # without it, the kernel reads itself through sum_2
