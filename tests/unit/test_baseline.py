"""The plain-compile baseline (remat.baseline): the plan that Inductor's default min-cut partition
amounts to, compared with the forward graph that the real partition builds."""

import pytest
import torch
from torch._functorch.partitioners import min_cut_rematerialization_partition
from torch._inductor.custom_graph_pass import CustomPartitionerFn

from remat.planning import plain_compile_report, plan_joint_graph
from remat.baseline import copy_graph, plain_compile_plan, saved_outputs, storage_name
from remat.config import RematConfig
from remat.plan import Decision
from remat.simulate import simulate, store_all_peak
from tests.e2e.models import Block

from examples.mlp import MLP


class _Recorder(CustomPartitionerFn):
    """Plans a copy of the joint graph as remat does, builds the plain-compile plan from it, predicts
    plain compile on another copy (``plain_compile_report``: in the order plain Inductor keeps),
    then partitions the original with the real min-cut partitioner and keeps its forward graph."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def __call__(self, gm, joint_inputs, **kwargs):
        n, static = kwargs["num_fwd_outputs"], kwargs.get("static_lifetime_input_indices")
        cfg = RematConfig.from_options({"solver": "store_all"})
        report, (joint, _) = plan_joint_graph(copy_graph(gm), n, static, cfg)
        plan = plain_compile_plan(joint, report.captured, n, static)
        plain = plain_compile_report(copy_graph(gm), n, static, cfg)
        fw, bw = min_cut_rematerialization_partition(gm, joint_inputs, **kwargs)
        self.seen.append(dict(joint=joint, problem=report.captured.problem, plan=plan, plain=plain,
                              saved=saved_outputs(fw, n)))
        return fw, bw

    def uuid(self):
        return None


def _models():
    torch.manual_seed(0)
    return {
        "mlp": (MLP(d=64, hidden=256, blocks=2), torch.randn(128, 64)),
        "block": (Block(d=64, heads=4, p=0.1), torch.randn(4, 32, 64)),
    }


@pytest.fixture(scope="module", params=["mlp", "block"])
def recorded(request):
    model, x = _models()[request.param]
    rec = _Recorder()
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True, custom_partitioner_fn=rec):
        torch.compile(lambda x: model(x).pow(2).mean())(x).backward()
    torch._dynamo.reset()
    assert len(rec.seen) == 1
    return rec.seen[0]


def test_plan_is_valid_and_under_store_all(recorded):
    problem, plan = recorded["problem"], recorded["plan"]
    tl = simulate(problem, plan)
    assert tl.ok, tl.errors
    assert tl.peak_bytes <= store_all_peak(problem)


def test_store_set_is_what_the_real_partition_saves(recorded):
    joint, problem, plan = recorded["joint"], recorded["problem"], recorded["plan"]
    activations = {a.name for a in problem.activations}
    real = {storage_name(joint, s) for s in recorded["saved"]} & activations
    assert real, "the real partition saves some activation"
    assert set(plan.names(Decision.STORE)) == real
    assert not plan.info["stored_not_saved"]


def test_values_recomputed_are_those_not_saved(recorded):
    joint, problem, plan = recorded["joint"], recorded["problem"], recorded["plan"]
    real = {storage_name(joint, s) for s in recorded["saved"]}
    read_by_backward = {a.name for a in problem.activations if a.backward_uses}
    assert set(plan.names(Decision.RECOMPUTE)) >= read_by_backward - real


def test_a_folded_value_that_min_cut_saves_keeps_its_activation_inputs_stored():
    """A linear head's log-softmax under a cross-entropy: min-cut saves ``log`` (of the sum of
    exponentials), a pointwise value that remat folds into its readers; its inputs are stored."""
    torch.manual_seed(0)
    head, x, y = torch.nn.Linear(32, 64), torch.randn(256, 32), torch.randint(0, 64, (256,))
    rec = _Recorder()
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True, custom_partitioner_fn=rec):
        torch.compile(lambda x: torch.nn.functional.cross_entropy(head(x), y))(x).backward()
    torch._dynamo.reset()
    (seen,) = rec.seen
    plan, problem = seen["plan"], seen["problem"]
    folded_saved = set(plan.info["saved_not_activations"])
    assert folded_saved, plan.info  # the case this test is about: min-cut saves a folded value
    inputs = {a.name for a in problem.activations} & {
        x.name for s in folded_saved for x in next(n for n in seen["joint"].graph.nodes if n.name == s).all_input_nodes}
    assert inputs and all(plan.decisions[name] == Decision.STORE for name in inputs), (inputs, plan.info)


def _tiny_whisper_encoder():
    import transformers

    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8, max_source_positions=8,
        max_target_positions=8, pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=0)
    return transformers.WhisperModel(config).train().encoder, torch.randn(2, 8, 16)


def test_a_backward_value_that_min_cut_saves_is_held_from_the_forward():
    """transformers Whisper's encoder: its LayerNorms read a clone of the residual, and their
    backward recomputes the normalized input from the residual, ``(add_9 - mean) * rsqrt``, a
    backward op that reads no tangent: min-cut moves it into the forward and saves it (with
    ``rsqrt / 16``). Plain's backward code takes those values as inputs; the plain Problem holds
    them from the forward, so that the bytes at the backward's first slot are what the code
    receives (the Problem alone misses 2,176 of 19,332 B)."""
    from remat.baseline import plain_compile_problem, saved_backward_values
    from remat.wrapper_memory import collect_wrapper_code, wrapper_peak

    encoder, features = _tiny_whisper_encoder()
    rec = _Recorder()
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True, custom_partitioner_fn=rec), \
            collect_wrapper_code() as codes:
        torch.compile(lambda f: encoder(f).last_hidden_state.sum())(features).backward()
    torch._dynamo.reset()
    (seen,) = rec.seen
    joint, problem, plan = seen["joint"], seen["problem"], seen["plan"]
    values = saved_backward_values(joint, problem, plan.info["min_cut_saved"])
    names = [s.name for s in problem.slots[problem.num_forward:] if s.name in plan.info["min_cut_saved"]]
    assert len(values) == len(names) >= 2, (values, names)
    backward_inputs = {x.strip() for x in codes[-1].split("def call(self, args):")[1].split(" = args")[0].split(",")}
    assert set(names) <= backward_inputs, (names, backward_inputs)
    code_start = wrapper_peak(codes[-1]).start_bytes
    start = simulate(plain_compile_problem(joint, problem, plan), plan).device_bytes[problem.num_forward]
    assert abs(start - code_start) <= 0.01 * code_start, (start, code_start)


def _plain_backward_peaks(bias: bool) -> tuple[int, int]:
    """(the model's, the code's) backward peak of plain torch.compile on Linear-GELU-Linear."""
    from remat.wrapper_memory import collect_wrapper_code, wrapper_peak

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 256, bias=bias), torch.nn.GELU(), torch.nn.Linear(256, 64, bias=bias))
    x = torch.randn(512, 64)
    rec = _Recorder()
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True, custom_partitioner_fn=rec), \
            collect_wrapper_code() as codes:
        torch.compile(lambda x: mlp(x).sum())(x).backward()
    torch._dynamo.reset()
    (seen,) = rec.seen
    plain = seen["plain"]
    return max(plain.timeline.device_bytes[plain.problem.num_forward:]), wrapper_peak(codes[-1]).peak_bytes


def test_plain_without_a_bias_writes_each_copy_of_the_expanded_seed_at_its_reader():
    """The loss seed's expand is read by two extern mms (the last layer's input and weight
    gradients): Inductor materialises a copy for each, each in its own kernel just before its mm,
    as the model counts them (one slot each): the backward peaks agree (1,245,196 vs 1,245,188 B)."""
    model, code = _plain_backward_peaks(bias=False)
    assert abs(model - code) <= 64, (model, code)


def test_plain_with_a_bias_writes_both_copies_of_the_expanded_seed_in_its_first_kernel():
    """With a bias, plain Inductor's peak-memory pass keeps LPMF's order (off under remat), which
    runs the bias gradient's sum and both copies consecutively: the CPU backend writes them in one
    kernel (cpp_fused_expand_mm_sum_t_0) that allocates both copies as it starts. The prediction
    lays the backward out in that order and holds the copies from the sum to their mms (before:
    1,245,452 vs the code's 1,376,512 B)."""
    model, code = _plain_backward_peaks(bias=True)
    assert abs(model - code) <= 64, (model, code)
