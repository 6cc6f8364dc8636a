"""The peak read from Inductor's wrapper code: hand-written wrappers, then a real compiled step."""

from __future__ import annotations

import textwrap

import pytest
import torch

import remat
from remat.measure import measure_step
from remat.wrapper_memory import (
    collect_wrapper_code, gradient_layout_copy_bytes, saved_copies, saved_layout, storage_bytes, wrapper_peak,
    wrapper_peaks,
)

MiB = 1 << 20


def wrapper(body: str, inputs: str = "primals_1, saved_1") -> str:
    return textwrap.dedent(f"""
    class Runner:
        def call(self, args):
            {inputs} = args
            args.clear()
    """) + textwrap.indent(textwrap.dedent(body), " " * 8)


def test_storage_bytes_follow_strides():
    assert storage_bytes((4, 8), (8, 1), 4) == 128
    assert storage_bytes((4, 8), (1, 4), 2) == 64
    assert storage_bytes((4, 8), (0, 1), 4) == 32  # broadcast rows share one
    assert storage_bytes((0, 8), (8, 1), 4) == 0


def test_fused_outputs_and_inputs_live_together():
    code = wrapper("""
        assert_size_stride(saved_1, (256, 1024), (1024, 1), 'input')
        buf0 = empty_strided_cpu((256, 1024), (1024, 1), torch.float32)
        buf1 = empty_strided_cpu((256, 1024), (1024, 1), torch.float32)
        cpp_fused_kernel_0(saved_1, buf0, buf1)
        del saved_1
        del primals_1
        buf2 = reinterpret_tensor(buf0, (1024, 256), (256, 1), 0); del buf0  # reuse
        del buf1
        return (buf2, )
    """)
    w = wrapper_peak(code)
    assert w.start_bytes == MiB  # saved_1 counts, primals_1 is resident
    assert w.peak_bytes == 3 * MiB  # the input and both outputs, at the kernel
    assert w.unsized == []


def test_extern_tuple_elements_live_while_either_name_does():
    code = wrapper("""
        buf3 = torch.ops.aten.some_op.default(saved_1)
        buf4 = buf3[0]
        assert_size_stride(buf4, (512, 512), (512, 1), 'torch.ops.aten.some_op.default')
        buf5 = buf3[1]
        assert_size_stride(buf5, (256, 512), (512, 1), 'torch.ops.aten.some_op.default')
        del buf4
        buf6 = empty_strided_cpu((128, 512), (512, 1), torch.bfloat16)
        del buf3
        del buf5
        buf7 = empty_strided_cpu((128, 512), (512, 1), torch.bfloat16)
        return (buf6, buf7)
    """, inputs="saved_1")
    w = wrapper_peak(code, {"saved_1": 4})
    # buf4 (1 MiB) stays allocated while the tuple buf3 holds it; buf6 comes on top of both elements
    assert w.peak_bytes == MiB + MiB // 2 + MiB // 8
    assert w.unsized == []  # the tuple itself is not a result to size


def test_extern_tuple_elements_exist_before_the_ops_inputs_are_freed():
    code = wrapper("""
        assert_size_stride(saved_1, (512, 512), (512, 1), 'input')
        buf0 = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default(saved_1)
        del saved_1
        buf1 = buf0[0]
        assert_size_stride(buf1, (512, 512), (512, 1), 'torch.ops.aten.some_op.default')
        buf2 = buf0[1]
        assert_size_stride(buf2, (256, 512), (512, 1), 'torch.ops.aten.some_op.default')
        del buf0
        return (buf1, buf2)
    """, inputs="saved_1")
    w = wrapper_peak(code)
    # the op holds its input (1 MiB) and returns both elements: all three live at the call
    assert w.peak_bytes == MiB + MiB + MiB // 2
    assert w.unsized == []


def test_an_extern_kernels_workspace_adds_at_its_call_only():
    code = wrapper("""
        assert_size_stride(saved_1, (512, 512), (512, 1), 'input')
        buf0 = extern_kernels.convolution(saved_1, primals_1, None)
        assert_size_stride(buf0, (256, 512), (512, 1), 'torch.ops.aten.convolution.default')
        del saved_1
        buf1 = empty_strided_cpu((256, 512), (512, 1), torch.float32)
        extern_kernels.mm(buf0, primals_1, out=buf1)
        del buf0
        buf2 = empty_strided_cpu((512, 512), (512, 1), torch.float32)
        return (buf1, buf2)
    """)
    assert wrapper_peak(code).peak_bytes == MiB + MiB // 2  # buf1 and buf2
    # the conv's scratch on top of its input and result; the mm's (out=) on top of buf0 and buf1
    assert wrapper_peak(code, workspaces={"buf0": MiB}).peak_bytes == 2 * MiB + MiB // 2
    assert wrapper_peak(code, workspaces={"buf1": 2 * MiB}).peak_bytes == 3 * MiB
    assert wrapper_peak(code, workspaces={"buf2": MiB}).peak_bytes == MiB + MiB // 2  # not an extern call


FORWARD_WITH_LAYOUT_COPY = wrapper("""
    assert_size_stride(primals_1, (256, 1024), (1024, 1), 'input')
    buf0 = empty_strided_cpu((256, 1024), (1, 256), torch.float32)
    cpp_fused_copy_0(primals_1, buf0)
    buf1 = empty_strided_cpu((256, 1024), (1024, 1), torch.float32)
    cpp_fused_relu_1(primals_2, buf1)
    return (buf1, buf0, primals_2, s0)
""", inputs="primals_1, primals_2")

BACKWARD_OF_THE_COPY = wrapper("""
    assert_size_stride(primals_1, (256, 1024), (1, 256), 'input')
    assert_size_stride(primals_2, (256, 1024), (1024, 1), 'input')
    assert_size_stride(tangents_1, (256, 1024), (1024, 1), 'input')
    buf0 = empty_strided_cpu((256, 1024), (1024, 1), torch.float32)
    cpp_fused_mul_0(primals_1, primals_2, tangents_1, buf0)
    del primals_1
    del tangents_1
    return (buf0, None)
""", inputs="s0, primals_1, primals_2, tangents_1")


def test_a_copy_saved_under_a_parameters_name_counts_in_the_backward():
    # the forward returns its own channels-last buffer where the backward reads "primals_1"
    assert saved_copies(FORWARD_WITH_LAYOUT_COPY, BACKWARD_OF_THE_COPY) == {"primals_1"}
    forward, backward = wrapper_peaks([FORWARD_WITH_LAYOUT_COPY, BACKWARD_OF_THE_COPY], [{}, {}], [{}, {}])
    assert backward.start_bytes == 2 * MiB  # the copy and the incoming gradient; primals_2 is resident
    assert backward.peak_bytes == 3 * MiB
    assert wrapper_peak(BACKWARD_OF_THE_COPY).peak_bytes == 2 * MiB  # alone, the copy looks resident


def test_codes_that_do_not_pair_count_no_copies():
    swapped = FORWARD_WITH_LAYOUT_COPY.replace("(buf1, buf0, primals_2, s0)", "(buf1, primals_2, buf0, s0)")
    assert saved_copies(swapped, BACKWARD_OF_THE_COPY) == set()  # primals_2 returned where primals_1 is read


FORWARD_OF_A_CONV = wrapper("""
    assert_size_stride(primals_1, (64, 16, 3, 3), (144, 9, 3, 1), 'input')
    assert_size_stride(primals_2, (64, ), (1, ), 'input')
    buf0 = empty_strided_cpu((1, 64, 2, 2), (256, 1, 128, 64), torch.float32)
    cpp_fused_conv_0(primals_1, primals_2, buf0)
    return (buf0, )
""", inputs="primals_1, primals_2")

BACKWARD_OF_A_CONV = wrapper("""
    assert_size_stride(tangents_1, (1, 64, 2, 2), (256, 1, 128, 64), 'input')
    buf1 = torch.ops.aten.convolution_backward.default(tangents_1, tangents_1, tangents_1)
    buf2 = buf1[1]
    assert_size_stride(buf2, (64, 16, 3, 3), (144, 1, 48, 16), 'torch.ops.aten.convolution_backward.default')
    buf3 = buf1[2]
    assert_size_stride(buf3, (64, ), (1, ), 'torch.ops.aten.convolution_backward.default')
    del buf1
    del tangents_1
    return (buf2, buf3, )
""", inputs="tangents_1")


def test_a_gradient_returned_in_other_strides_than_its_parameter_is_copied_after_the_backward():
    # AccumulateGrad copies a channels-last weight gradient into the weight's strides
    # (``new_empty_strided``) while the returned one lives: found by the model fuzzer (seed 18), a conv
    # + BN stem 1,408 B over the code's reading, its peak in that copy after the backward returned
    weight_grad = 64 * 16 * 9 * 4
    assert gradient_layout_copy_bytes(FORWARD_OF_A_CONV, BACKWARD_OF_A_CONV) == weight_grad
    alone = wrapper_peak(BACKWARD_OF_A_CONV)
    _, backward = wrapper_peaks([FORWARD_OF_A_CONV, BACKWARD_OF_A_CONV], [{}, {}], [{}, {}])
    assert alone.end_bytes == weight_grad + 64 * 4  # the gradients it returns
    assert backward.peak_bytes == alone.end_bytes + weight_grad > alone.peak_bytes
    same_strides = BACKWARD_OF_A_CONV.replace("(144, 1, 48, 16)", "(144, 9, 3, 1)")
    assert gradient_layout_copy_bytes(FORWARD_OF_A_CONV, same_strides) == 0


FORWARD_SAVING_VIEWS = wrapper("""
    buf0 = empty_strided_cpu((256, 3072), (3072, 1), torch.float32)
    cpp_fused_qkv_0(primals_1, buf0)
    buf1 = empty_strided_cpu((256, 1024), (1024, 1), torch.float32)
    return (buf1, reinterpret_tensor(primals_1, (1024, 256), (1, 1024), 0), reinterpret_tensor(buf0, (256, 1024), (3072, 1), 0), reinterpret_tensor(buf0, (256, 1024), (3072, 1), 1024), reinterpret_tensor(buf0, (256, 1024), (3072, 1), 2048), )
""", inputs="primals_1")

BACKWARD_OF_THE_VIEWS = wrapper("""
    assert_size_stride(view, (1024, 256), (1, 1024), 'input')
    assert_size_stride(q, (256, 1024), (3072, 1), 'input')
    assert_size_stride(k, (256, 1024), (3072, 1), 'input')
    assert_size_stride(v, (256, 1024), (3072, 1), 'input')
    assert_size_stride(tangents_1, (256, 1024), (1024, 1), 'input')
    buf0 = empty_strided_cpu((256, 1024), (1024, 1), torch.float32)
    cpp_fused_0(view, q, k, v, tangents_1, buf0)
    del q
    del k
    del tangents_1
    buf1 = empty_strided_cpu((256, 1024), (1024, 1), torch.float32)
    del v
    return (buf0, buf1)
""", inputs="view, q, k, v, tangents_1")


def test_saved_views_of_one_buffer_share_it_and_views_of_a_parameter_are_resident():
    layout = saved_layout(FORWARD_SAVING_VIEWS, BACKWARD_OF_THE_VIEWS)
    assert layout.resident == {"view"} and layout.copies == set()
    assert layout.shared == {"q": ("buf0", 256 * 3072 - 2048), "k": ("buf0", 256 * 3072 - 1024),
                             "v": ("buf0", 256 * 3072)}
    _, backward = wrapper_peaks([FORWARD_SAVING_VIEWS, BACKWARD_OF_THE_VIEWS], [{}, {}], [{}, {}])
    assert backward.start_bytes == 3 * MiB + MiB  # q, k, v in one 3 MiB buffer, and the gradient
    assert backward.peak_bytes == 3 * MiB + 2 * MiB  # the buffer lives until v goes: buf0 and buf1 on top
    alone = wrapper_peak(BACKWARD_OF_THE_VIEWS)  # each view its own storage, the parameter's view counted
    assert alone.start_bytes > backward.start_bytes + 2 * MiB


def test_host_copies_are_not_device_memory_and_free_releases():
    code = wrapper("""
        buf0 = empty_strided_cuda((1024, 256), (256, 1), torch.float32)
        buf1 = torch.ops.remat.to_host.default(buf0)
        assert_size_stride(buf1, (1024, 256), (256, 1), 'torch.ops.remat.to_host.default')
        torch.ops.remat.free_.default(buf0)
        buf2 = empty_strided_cuda((1024, 256), (256, 1), torch.float32)
        return (buf1, buf2)
    """, inputs="primals_1")
    assert wrapper_peak(code).peak_bytes == MiB


def test_an_allocation_of_a_data_dependent_size_is_reported_unsized():
    code = wrapper("""
        buf0 = empty_strided_cpu((u0, 256), (256, 1), torch.float32)
        return (buf0, )
    """, inputs="primals_1")
    w = wrapper_peak(code)
    assert (w.peak_bytes, w.unsized) == (0, ["buf0"])
    assert wrapper_peak(code, sizes={"u0": 1024}).peak_bytes == MiB  # an upper bound given for u0


def test_a_custom_ops_result_sized_under_its_alias_counts():
    code = wrapper("""
        buf0 = torch.ops.transformers.grouped_mm_fallback.default(saved_1, primals_1)
        buf1 = buf0
        assert_size_stride(buf1, (2048, 128), (128, 1), 'torch.ops.transformers.grouped_mm_fallback.default')
        del buf0
        buf2 = empty_strided_cpu((2048, 128), (128, 1), torch.float32)
        return (buf2, )
    """)
    w = wrapper_peak(code, {"buf1": 2})
    assert (w.peak_bytes, w.unsized) == (MiB // 2 + MiB, [])  # the bf16 result and buf2


def test_unsized_results_are_named_in_a_warning(caplog):
    from remat.backend import _warn_unsized
    from remat.wrapper_memory import WrapperPeak

    _warn_unsized("graph0", [WrapperPeak(0, 0), WrapperPeak(0, 0, ["buf7"])])
    assert "buf7" in caplog.text and "graph0" in caplog.text
    caplog.clear()
    _warn_unsized("graph0", [WrapperPeak(0, 0)])
    assert caplog.text == ""


def test_on_cuda_each_storage_counts_as_the_caching_allocator_rounds_it():
    body = """
        assert_size_stride(saved_1, (10, 10), (10, 1), 'input')
        buf0 = empty_strided_{dev}((100, ), (1, ), torch.float32)
        buf1 = empty_strided_{dev}((1000, ), (1, ), torch.float32)
        buf2 = empty_strided_{dev}((0, ), (1, ), torch.float32)
        return (buf0, buf1, buf2)
    """
    cpu, cuda = (wrapper_peak(wrapper(body.format(dev=dev))) for dev in ("cpu", "cuda"))
    assert (cpu.start_bytes, cpu.peak_bytes) == (400, 400 + 400 + 4000)
    # 400 B -> 512, 4,000 B -> 4,096, nothing for an empty tensor (as torch.cuda.max_memory_allocated)
    assert (cuda.start_bytes, cuda.peak_bytes) == (512, 512 + 512 + 4096)
    guarded = wrapper("with torch.cuda._DeviceGuard(0):\n    buf0 = torch.ops.aten.some_op.default(saved_1)\n"
                      "    assert_size_stride(buf0, (3, ), (1, ), 'op')\n    return (buf0, )\n")
    assert wrapper_peak(guarded).peak_bytes == 512  # an extern result of 12 B, under a CUDA device guard


def test_no_call_function_gives_none():
    assert wrapper_peak("x = 1\n") is None
    assert wrapper_peak("def call(:\n") is None


class SwiGLU(torch.nn.Module):
    """A Llama MLP: a fused silu-backward kernel writes three outputs while its inputs still live."""

    def __init__(self, d: int = 64, hidden: int = 256) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(d, hidden, bias=False)
        self.up = torch.nn.Linear(d, hidden, bias=False)
        self.down = torch.nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return x + self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


def test_wrapper_code_is_collected_and_matches_a_measured_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(SwiGLU(), SwiGLU())
    x = torch.randn(512, 64)
    step = torch.compile(lambda x: model(x).square().mean(), backend="remat", options={"memory_budget": "90%"})
    with collect_wrapper_code() as codes:
        step(x).backward()
    assert len(codes) >= 2 and all("def call" in c for c in codes)
    for p in model.parameters():
        p.grad = None
    measured = measure_step(lambda: step(x).backward()).peak_bytes
    (report,) = remat.reports(step)
    assert report.inductor_peak_bytes == pytest.approx(measured, rel=0.01)


def test_inductors_channels_last_conv_copies_are_found_in_its_code():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    with collect_wrapper_code() as codes:
        torch.compile(conv, backend="inductor")(x).square().sum().backward()
    forward, backward = codes
    # the weight (primals_1) and the image (primals_3) are saved as channels-last copies
    assert saved_copies(forward, backward) == {"primals_1", "primals_3"}
    walks = wrapper_peaks(codes, [{}, {}], [{}, {}])
    copies = storage_bytes((8, 3, 3, 3), (27, 9, 3, 1), 4) + storage_bytes((1, 3, 4, 4), (48, 16, 4, 1), 4)
    assert walks[1].start_bytes == wrapper_peak(backward).start_bytes + copies
