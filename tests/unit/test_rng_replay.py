"""Random ops replayed from the seed or generator state that the forward drew (remat.passes.rng_replay)."""

import pytest
import torch
import torch._inductor.inductor_prims  # noqa: F401  (registers prims.inductor_*)
import torch.fx as fx
from torch.fx.experimental.proxy_tensor import make_fx

import remat
import remat.passes.rng_replay as rng_replay
from remat.errors import PlanError
from remat.passes.rng_replay import (
    DROPOUT_MASK, REPLAY_DROPOUT, RNG_STATE, check_backward, draws, replay_dropouts, replay_in_joint, replays,
)

prims = torch.ops.prims


def test_replay_dropout_draws_as_eager_and_its_mask_replays_without_moving_the_generator():
    x = torch.rand(64, 33) + 0.5
    torch.manual_seed(7)
    eager, eager_mask = torch.ops.aten.native_dropout(x, 0.3, True)
    eager_after = torch.get_rng_state()

    torch.manual_seed(7)
    state = rng_replay.rng_state(x)
    out, mask = rng_replay.replay_dropout(state, x, 0.3, list(x.stride()))
    assert torch.equal(out, eager) and torch.equal(mask, eager_mask)
    assert torch.equal(torch.get_rng_state(), eager_after)  # the forward moves the stream as eager does

    alone = torch.ops.remat.dropout_mask(state, x.shape, x.stride(), x.dtype, x.device, 0.3)
    assert torch.equal(alone, mask)  # the backward's mask is the forward's, bit for bit
    assert torch.equal(torch.get_rng_state(), eager_after)  # and the next draw is eager's next draw


def _seeded_graph() -> fx.GraphModule:
    g = fx.Graph()
    seeds = g.call_function(prims.inductor_seeds.default, (1, torch.device("cpu")))
    seed = g.call_function(prims.inductor_lookup_seed.default, (seeds, 0))
    noise = g.call_function(prims.inductor_random.default, ([4, 4], seed, "rand"))
    g.output((noise,))
    return fx.GraphModule(torch.nn.Module(), g)


def test_only_the_seed_draws_inductors_seeded_prims_replay():
    seeds, seed, noise = list(_seeded_graph().graph.nodes)[:3]
    assert draws(seeds) and not replays(seeds)
    assert replays(seed) and replays(noise) and not draws(seed) and not draws(noise)
    assert rng_replay.fusible(noise) and not rng_replay.fusible(seeds)


def test_a_backward_that_would_draw_fresh_numbers_is_refused():
    with pytest.raises(PlanError, match="inductor_seeds"):
        check_backward(_seeded_graph())
    g = fx.Graph()
    state = g.placeholder("state")
    g.output((g.call_function(DROPOUT_MASK, (state, [4], [1], torch.float32, torch.device("cpu"), 0.5)),))
    check_backward(fx.GraphModule(torch.nn.Module(), g))  # a replayed mask is fine


def test_replay_dropouts_rewrites_a_training_dropout_in_place_and_keeps_eager_numbers():
    def f(x):
        a, m = torch.ops.aten.native_dropout(x, 0.5, True)
        b, _ = torch.ops.aten.native_dropout(x, 0.5, False)  # not training: left alone
        return a, m, b

    x = torch.rand(16, 16) + 0.5
    gm = make_fx(f)(x)
    dropout, mask = (next(n for n in gm.graph.nodes if n.name == k) for k in ("native_dropout", "getitem_1"))
    states = replay_dropouts(gm, set(gm.graph.nodes))
    assert [s.target for s in states] == [RNG_STATE] and rng_replay.forward_ops(gm) == states | {mask}
    assert dropout.target is REPLAY_DROPOUT and dropout.args[0] in states and not replays(dropout)
    assert mask.target is DROPOUT_MASK and mask.all_input_nodes == [dropout.args[0]]  # not the input: the state
    assert sum(n.target is torch.ops.aten.native_dropout.default for n in gm.graph.nodes) == 1
    torch.manual_seed(3)
    want = f(x)
    torch.manual_seed(3)
    got = gm(x)
    assert all(torch.equal(w, g) for w, g in zip(want, got))


def test_replay_in_joint_rewrites_forward_dropouts_that_the_classification_keeps_in_forward():
    from torch._functorch import partitioners as P
    from tests.unit.test_capture import _weights, mlp, trace_joint

    joint, fwd, n = trace_joint(mlp, *_weights())
    replay_in_joint(joint)
    made = rng_replay.forward_ops(joint)
    assert {m.target for m in made} == {RNG_STATE, DROPOUT_MASK}
    replay_in_joint(joint)
    assert rng_replay.forward_ops(joint) == made  # idempotent: a second planning of the graph
    # the state and the mask (read only by backward) are forward ops to the partitioner
    assert made <= set(P.classify_nodes(joint, [], n).required_fw_nodes)


def test_a_kept_mask_is_the_one_its_replay_drew():
    def f(x):
        a, m = torch.ops.aten.native_dropout(x, 0.5, True)
        return a, m

    x = torch.rand(16, 16) + 0.5
    gm = make_fx(f)(x)
    replay_dropouts(gm, set(gm.graph.nodes))
    torch.manual_seed(3)
    want = gm(x)
    rng_replay.share_forward_masks(gm)
    assert not any(n.target is DROPOUT_MASK for n in gm.graph.nodes)  # one draw, not two
    torch.manual_seed(3)
    got = gm(x)
    assert all(torch.equal(w, g) for w, g in zip(want, got))


class TwoDropouts(torch.nn.Module):
    """Activations far larger than the weights, so that masks weigh at the floor."""

    def __init__(self, d: int = 64, h: int = 256) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = torch.nn.Linear(d, h), torch.nn.Linear(h, h), torch.nn.Linear(h, d)
        self.drop = torch.nn.Dropout(0.25)

    def forward(self, x):
        return self.l3(self.drop(torch.relu(self.l2(self.drop(torch.relu(self.l1(x)))))))


def _floor(model, x) -> tuple[int, dict]:
    report = remat.analyze(model, (x,), memory_budget="min")
    return report.predicted_peak_bytes, {k: v.value for k, v in report.decisions.items()}


@pytest.mark.parametrize("fallback_random", [False, True])
def test_replaying_masks_lowers_the_floor_below_storing_them(fallback_random, monkeypatch):
    torch.manual_seed(0)
    model, x = TwoDropouts(), torch.randn(2048, 64)
    with torch._inductor.config.patch(fallback_random=fallback_random):
        replayed, decisions = _floor(model, x)
        draws_before = rng_replay.draws  # before: every random op's result was stored
        monkeypatch.setattr(rng_replay, "draws", lambda n: draws_before(n) or replays(n))
        stored, _ = _floor(model, x)
    masks = ("getitem_1", "getitem_3") if fallback_random else ("gt", "gt_1")
    assert any(decisions.get(m) == "recompute" for m in masks), decisions
    mask = 2048 * 256  # one bool mask
    assert replayed <= stored - mask // 2, (replayed, stored)


def test_a_dropout_of_symbolic_size_is_left_as_it_is():
    gm = make_fx(lambda x: torch.ops.aten.native_dropout(x, 0.5, True), tracing_mode="symbolic")(torch.rand(6, 4))
    assert replay_dropouts(gm, set(gm.graph.nodes)) == set()
    assert any(n.target is torch.ops.aten.native_dropout.default for n in gm.graph.nodes)


def test_replay_draws_in_eager_layout_whatever_layout_it_is_handed():
    """Inductor may pass a transposed value made contiguous: the mask is still eager's (drawn in
    eager's memory order) and so equal to ``dropout_mask``'s replay of the same state."""
    x = torch.randn(8, 4).t()  # eager's layout: stride (1, 4)
    state = rng_replay.rng_state(x)
    eager_out, eager_mask = torch.ops.aten.native_dropout.default(x, 0.3, True)
    out, mask = rng_replay.replay_dropout(state, x.contiguous(), 0.3, list(x.stride()))
    assert torch.equal(mask, eager_mask) and torch.equal(out, eager_out)
    replayed = DROPOUT_MASK(state, list(x.shape), list(x.stride()), x.dtype, x.device, 0.3)
    assert torch.equal(replayed, eager_mask)


def _call(op, *args, **kwargs) -> fx.Node:
    g = fx.Graph()
    q = g.placeholder("q")
    return g.call_function(op, tuple(q if a is _Q else a for a in args), kwargs)


_Q = object()  # stands for a tensor argument


def test_attention_draws_only_with_dropout_and_its_backward_replays_the_forward_seed():
    aten = torch.ops.aten
    sdpa = aten._scaled_dot_product_efficient_attention.default
    assert not rng_replay.draws(_call(sdpa, _Q, _Q, _Q, None, True, 0.0, True))  # no dropout: recomputable
    assert rng_replay.draws(_call(sdpa, _Q, _Q, _Q, None, True, 0.1, True))
    cpu = aten._scaled_dot_product_flash_attention_for_cpu.default
    assert not rng_replay.draws(_call(cpu, _Q, _Q, _Q, dropout_p=0.0))
    assert rng_replay.draws(_call(cpu, _Q, _Q, _Q, 0.2))
    # CUDA's attention backward draws from the philox seed and offset the forward returned
    backward = aten._scaled_dot_product_efficient_attention_backward.default
    node = _call(backward, _Q, _Q, _Q, _Q, None, _Q, _Q, _Q, _Q, 0.1, [True] * 4, True)
    assert rng_replay.replays(node) and not rng_replay.draws(node)
    assert rng_replay.draws(_call(aten.native_dropout.default, _Q, 0.1, True))
