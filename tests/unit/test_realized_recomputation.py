"""A recomputation that makes Inductor store a backward value it inlines under store-all, on the
smallest graph that has one: the e2e CNN's ReLU after a BatchNorm.

``bn_relu`` is ``(relu(batch_norm(x @ w1)) @ s).sum()`` (x 64x32, ``s`` a constant: nothing in
backward reads the ReLU but its own backward), traced with Inductor's decompositions. Backward
slots: le 12, scalar_tensor 13 (its zero), where 14 (the ReLU's backward, inlined into each kernel that reads
it), then the BatchNorm backward: its reductions sum_2 15, sub_1 16, mul_2 17, sum_3 18, and its
pointwise part mul_3 .. mul_9 19-28, which reads them. Storing everything, ``where`` loads two
buffers (the ReLU, the incoming gradient); with the ReLU recomputed it loads six (the matmul, the
batch statistics, the affine weights, the gradient), more than Inductor's four for a value that
several kernels read: Inductor stores it, in a kernel that recomputes the ReLU, which both parts
of the BatchNorm backward then read.
"""

import torch
import torch.nn.functional as F
from torch._functorch import partitioners as P
from torch._functorch.aot_autograd import aot_function
from torch._inductor.decomposition import select_decomp_table

import remat
from remat.capture import capture, inlined_codes, realized_by_recomputation
from remat.cost import DeviceSpec
from remat.joint_graph import graph_facts
from remat.kernel_groups import KernelGroups, recompute_kernels, scheduler_groups, with_kernels
from remat.plan import Decision
from remat.simulate import moved_readers, needed_activations

SPEC = DeviceSpec("t", peak_flops=1e12, bandwidth=1e11, host_bandwidth=1e10)


def bn_relu(x, w1, g, b, s):
    return (torch.relu(F.batch_norm(x @ w1, None, None, g, b, training=True)) @ s).sum()


def _inputs(s_grad=False):
    torch.manual_seed(0)
    params = [torch.randn(32, 32), torch.randn(32), torch.randn(32)]
    return [torch.randn(64, 32)] + [p.requires_grad_() for p in params] + [torch.randn(32, 16, requires_grad=s_grad)]


def _trace(s_grad=False):
    """(joint graph, its forward ops, number of forward outputs), with Inductor's decompositions;
    with ``s_grad``, ``s`` is a weight: its gradient, a matmul, reads the ReLU in backward."""
    seen = {}

    def partition(joint, joint_inputs, *, num_fwd_outputs, **kw):
        seen["joint"], seen["n"] = joint, num_fwd_outputs
        return P.default_partition(joint, joint_inputs, num_fwd_outputs=num_fwd_outputs, **kw)

    traced = aot_function(bn_relu, fw_compiler=lambda gm, _: gm, partition_fn=partition, decompositions=select_decomp_table())
    traced(*_inputs(s_grad))
    return seen["joint"], set(P.classify_nodes(seen["joint"], [], seen["n"]).required_fw_nodes), seen["n"]


def _slots(problem, *names):
    index = {s.name: t for t, s in enumerate(problem.slots)}
    return tuple(index[n] for n in names)


def test_a_recomputation_whose_loads_exceed_the_threshold_makes_its_inlined_reader_stored():
    g = graph_facts(*_trace())
    realized = {v.name: w.name for v, w in realized_by_recomputation(g, inlined_codes(g)).items()}
    # the ReLU's recomputation loads five storages: ``where`` then loads six; the matmul's (mm), an
    # extern kernel's result, is a buffer whatever reads it
    assert realized == {"relu": "where"}


def test_a_recomputation_that_an_extern_kernel_reads_is_a_buffer_and_realizes_nothing():
    # s's gradient (h^T @ grad) reads the ReLU: Inductor stores its recomputation, which ``where``
    # then loads as before (the e2e CNN's first ReLU, read by its convolution's backward)
    g = graph_facts(*_trace(s_grad=True))
    assert realized_by_recomputation(g, inlined_codes(g)) == {}


def test_a_recomputation_joins_no_kernel_that_depends_on_another_op_that_loads_it():
    # with s a weight the ReLU's recomputation is a buffer of its own; joined to the BatchNorm
    # backward's pointwise part (slots 19-28), it spanned the sums that load it too (15-18), which
    # that part reads: a cycle, which Inductor's scheduler refuses (it runs the ReLU alone)
    joint, fwd, n = _trace(s_grad=True)
    problem = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=SPEC).problem
    assert "relu" not in recompute_kernels(problem)
    import remat.inductor_check as inductor_check

    recorded = []
    original = inductor_check.scheduler_groups
    inductor_check.scheduler_groups = lambda nodes: recorded.append(original(nodes)) or recorded[-1]
    try:
        step = torch.compile(bn_relu, backend="remat", options={"solver": "recompute_all", "memory_budget": "1GiB"})
        step(*_inputs(s_grad=True)).backward()
    finally:
        inductor_check.scheduler_groups = original
    (report,) = remat.reports(step)
    assert report.plan.decisions["relu"] is Decision.RECOMPUTE
    backward = {s.name for s in report.problem.slots[report.problem.num_forward:]}
    assert not any("relu" in group and group & backward for group in recorded[-1])


def test_the_recomputed_relu_runs_in_the_kernel_of_its_stored_backward_and_its_readers_after_it():
    joint, fwd, n = _trace()
    problem = capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=SPEC).problem
    # session 13 joined the ReLU to the BatchNorm backward's pointwise kernel (slots 12-28, across
    # its reductions at 15-18), so the simulator ran those reductions after it, holding what they
    # read (the e2e CNN: 1.12 x its code's peak at the floor)
    assert recompute_kernels(problem)["relu"].slots == _slots(problem, "le", "scalar_tensor", "where") == (12, 13, 14)
    plan = {a: Decision.STORE for a in needed_activations(problem, {"relu": Decision.RECOMPUTE})} | {
        "relu": Decision.RECOMPUTE}
    needed = set(needed_activations(problem, plan))
    assert moved_readers(problem, plan, needed, recompute_kernels(problem)) == {}


def test_inductor_recomputes_the_relu_in_the_predicted_kernel():
    # every recomputable value recomputed: the kernel that Inductor's backward recomputes the ReLU
    # in is the predicted one (its ops' slots)
    import remat.inductor_check as inductor_check

    recorded = []
    original = inductor_check.scheduler_groups
    inductor_check.scheduler_groups = lambda nodes: recorded.append(original(nodes)) or recorded[-1]
    try:
        step = torch.compile(bn_relu, backend="remat", options={"solver": "recompute_all", "memory_budget": "1GiB"})
        step(*_inputs()).backward()
    finally:
        inductor_check.scheduler_groups = original
    (report,) = remat.reports(step)
    assert report.plan.decisions["relu"] is Decision.RECOMPUTE
    told = with_kernels(report.problem, KernelGroups(recorded[-2], recorded[-1]))
    assert recompute_kernels(told)["relu"].slots == recompute_kernels(report.problem)["relu"].slots
