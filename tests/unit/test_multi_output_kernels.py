"""A pointwise backward kernel that writes several buffers, predicted before the first compile:
SwiGLU's backward, on the smallest graph that has one.

``swiglu`` is ``((silu(x @ w1) * (x @ w3)) @ w2).sum()`` (x 64x16, hidden 32: each projection
8 KiB), traced with Inductor's decompositions. Its slots: forward mm 0, neg 1, exp 2, add 3,
div 4 (the SiLU, fused), mm_1 5, mul 6, mm_2 7, sum_1 8; backward mm_3 9 (w2's gradient), mm_4 10
(the gradient of the product), mul_1 11 (the up projection's gradient, ``mm_4 * div``), mul_2 12,
mm_5 13, sigmoid 14, mul_3..add_1 15-18, mul_5 19 (the gate's gradient), mm_6 20. Inductor fuses
mul_1..mul_5 into one kernel with two outputs (three when it recomputes the product too), whose
inputs, read by two of its ops, no output can take.
"""

import torch
import torch.nn.functional as F
from torch._functorch import partitioners as P
from torch._functorch.aot_autograd import aot_function
from torch._inductor.decomposition import select_decomp_table

import remat
from remat.capture import capture, fused_values
from remat.cost import DeviceSpec
from remat.joint_graph import build_schedule, graph_facts
from remat.kernel_groups import KERNEL_STARTS, handovers
from remat.plan import Decision
from remat.predicted_kernels import multi_output_kernels, predicted_kernel_groups
from remat.simulate import simulate, store_all_plan

SPEC = DeviceSpec("t", peak_flops=1e12, bandwidth=1e11, host_bandwidth=1e10)
PROJECTION = 64 * 32 * 4  # bytes of x @ w1, x @ w3 and of every gradient of the same shape


def swiglu(x, w1, w3, w2):
    return ((F.silu(x @ w1) * (x @ w3)) @ w2).sum()


def _inputs():
    torch.manual_seed(0)
    return [torch.randn(64, 16)] + [torch.randn(*s, requires_grad=True) for s in ((16, 32), (16, 32), (32, 16))]


def _trace():
    """(joint graph, its forward ops, number of forward outputs), with Inductor's decompositions."""
    seen = {}

    def partition(joint, joint_inputs, *, num_fwd_outputs, **kw):
        seen["joint"], seen["n"] = joint, num_fwd_outputs
        return P.default_partition(joint, joint_inputs, num_fwd_outputs=num_fwd_outputs, **kw)

    traced = aot_function(swiglu, fw_compiler=lambda gm, _: gm, partition_fn=partition, decompositions=select_decomp_table())
    traced(*_inputs())
    return seen["joint"], set(P.classify_nodes(seen["joint"], [], seen["n"]).required_fw_nodes), seen["n"]


def _problem():
    joint, fwd, n = _trace()
    return capture(joint, forward_nodes=fwd, num_fwd_outputs=n, spec=SPEC).problem


def test_swiglus_backward_is_one_kernel_with_several_outputs():
    joint, fwd, n = _trace()
    g = graph_facts(joint, fwd, n)
    fused = fused_values(g)
    (kernel,) = multi_output_kernels(predicted_kernel_groups(g, build_schedule(g), fused), g, fused).backward
    assert {"mul_1", "mul_5", "sigmoid"} <= kernel


def test_each_output_is_allocated_as_the_kernel_starts_and_takes_the_first_dying_input_it_loads():
    # store everything: the up projection's gradient (mul_1 = mm_4 * div) writes over the saved
    # SiLU (div), the gate's (mul_5, which loads mm_4, then the up projection mm_1, then the gate
    # mm) over mm_1; the gate and the gradient mm_4, read by both outputs, stay (plain Inductor's
    # code: ``buf4 = div; del div  # reuse``, ``buf7 = mm_1; del mm_1  # reuse``). One by one,
    # without those handovers, the model put the gate's gradient over mm_4 and peaked at 43012 B,
    # 10 % over the code's 38916 B
    problem = _problem()
    starts = problem.metadata[KERNEL_STARTS]
    assert starts["mul_1"] == starts["mul_5"] == 11
    assert handovers(problem) == {"div": 11, "mm_1": 11}
    assert simulate(problem, store_all_plan(problem)).peak_bytes == 38920  # the code's 38916 B and the 4 B seed


def test_a_kernel_that_recomputes_holds_its_outputs_beside_every_input_it_reads():
    # recompute the SiLU and the product inside the kernel (w2's gradient mm_3 reads the product):
    # the kernel then reads both projections twice and the gradient twice and takes none of them,
    # and writes three outputs: six buffers at once (Inductor's code for this plan: 53252 B, the
    # six and the seed's 4 KiB expansion, which it fuses into that kernel); one by one, the model
    # held five (the gate's gradient written over mm_4: 43016 B)
    problem = _problem()
    plan = {"mm": Decision.STORE, "mm_1": Decision.STORE, "div": Decision.RECOMPUTE, "mul": Decision.RECOMPUTE}
    timeline = simulate(problem, plan)
    assert timeline.ok
    assert timeline.peak_bytes >= 6 * PROJECTION and 11 <= timeline.peak_slot <= 19


def test_the_store_all_plan_is_predicted_as_inductors_code_allocates_it():
    torch._dynamo.reset()
    x, *ws = _inputs()
    step = torch.compile(swiglu, backend="remat", options={"memory_budget": "1GiB", "solver": "store_all"})
    step(x, *ws).backward()
    (report,) = remat.reports(step)
    assert report.inductor_peak_bytes <= report.timeline.peak_bytes <= report.inductor_peak_bytes + 8
