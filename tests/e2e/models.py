"""Small models for end-to-end tests: an MLP, a transformer block with dropout, a CNN with BN, a
Llama-style block, a mixture-of-experts block, and random models for the fuzzer (``FuzzSpec``)."""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from examples.mlp import MLP


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and an MLP, dropout in both."""

    def __init__(self, d=128, heads=4, p=0.1):
        super().__init__()
        self.heads, self.p = heads, p
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.drop = nn.Dropout(p)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class CNN(nn.Module):
    def __init__(self, c=16, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
        )
        self.head = nn.Linear(2 * c, classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def make(name):
    """(model, example inputs, loss_fn) for a test model."""
    torch.manual_seed(0)
    if name == "mlp":
        return MLP(d=256, hidden=1024, blocks=3), (torch.randn(512, 256),), lambda out: out.pow(2).mean()
    if name == "block":
        return Block(), (torch.randn(8, 64, 128),), lambda out: out.pow(2).mean()
    if name == "cnn":
        y = torch.randint(0, 10, (16,))
        return CNN(), (torch.randn(16, 3, 32, 32),), lambda out: F.cross_entropy(out, y)
    if name == "llama":
        return LlamaBlock(), (torch.randn(2, 32, 64),), lambda out: out.pow(2).mean()
    if name == "moe":
        return MoEBlock(), (torch.randn(2, 32, 32),), lambda out: out.pow(2).mean()
    raise KeyError(name)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of ``x`` (batch, heads, time, head_dim), Llama's half-split form."""
    t, half = x.shape[-2], x.shape[-1] // 2
    freqs = 1.0 / 10000 ** (torch.arange(half, dtype=x.dtype) / half)
    angles = torch.outer(torch.arange(t, dtype=x.dtype), freqs)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class LlamaBlock(nn.Module):
    """Llama-style block: RMSNorm, causal SDPA with rotary q and k, RMSNorm, SwiGLU MLP."""

    def __init__(self, d: int = 64, heads: int = 4, hidden: int = 176):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.gate, self.up = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(self.norm1(x)).split(d, -1))
        att = F.scaled_dot_product_attention(rotary(q), rotary(k), v, is_causal=True)
        x = x + self.out(att.transpose(1, 2).reshape(b, t, d))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class MoEBlock(nn.Module):
    """Mixture of experts with top-2 routing and a fixed capacity (static shapes, as GShard's
    capacity factor): each of ``experts`` MLPs takes the ``capacity`` tokens that gave it the
    largest routing weight (zero where it is not among a token's top 2), gathered by index, and
    ``index_add``s its weighted outputs back. A residual around it."""

    def __init__(self, d: int = 32, experts: int = 4, hidden: int = 64):
        super().__init__()
        self.router = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, d)) for _ in range(experts))

    def forward(self, x):
        tokens = x.reshape(-1, x.shape[-1])
        top, chosen = torch.softmax(self.router(tokens), -1).topk(2, dim=-1)
        gates = torch.zeros(tokens.shape[0], len(self.experts)).scatter(1, chosen, top / top.sum(-1, keepdim=True))
        capacity = 2 * tokens.shape[0] // len(self.experts)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            gate, index = gates[:, e].topk(capacity)
            out = out.index_add(0, index, expert(tokens[index]) * gate[:, None])
        return x + out.view_as(x)


# ---- random models for the fuzzer (tests/e2e/test_fuzz_models.py): a FuzzSpec is plain data
# (its repr is the repro), FuzzModel builds the torch model it describes.

STEMS = ("linear", "embedding", "conv_bn")
BLOCKS = ("linear", "layernorm", "rmsnorm", "gelu", "tanh", "sigmoid", "silu", "relu_inplace", "softmax",
          "dropout", "permute_view", "buffer_scale", "residual_mlp", "matmul_attention", "sdpa", "sdpa_causal")
HEADS_OUT = ("linear", "relu", "tanh", "sigmoid", "softmax", "exp")  # all but "linear": backward reads the output
EXTRA_OUTPUTS = ("hidden", "argmax", "nested")


@dataclass(frozen=True)
class FuzzSpec:
    """A random model: a stem (float features, int tokens or an image), blocks on (batch, seq,
    width), a head whose backward may read its output, and extra outputs: "hidden" (what the head's
    linear reads), "argmax" (an int output), "nested" (outputs in a dict holding a tuple)."""

    stem: str
    blocks: tuple[str, ...]
    head: str
    extra_outputs: tuple[str, ...] = ()
    batch: int = 2
    seq: int = 8
    width: int = 16
    input_grad: bool = False  # the float input requires grad (linear stem only)


class Pointwise(nn.Module):
    """Activations (some in place), dropout, a feature permutation through views, a buffer scale."""

    def __init__(self, kind: str, d: int):
        super().__init__()
        self.kind = kind
        self.drop = nn.Dropout(0.2)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, d))

    def forward(self, x):
        k = self.kind
        if k == "relu_inplace":
            return (x * 1.5).relu_()
        if k == "softmax":
            return torch.softmax(x, -1)
        if k == "dropout":
            return self.drop(x)
        if k == "permute_view":
            b, t, d = x.shape
            return x.view(b, t, 2, d // 2).transpose(2, 3).reshape(b, t, d)
        if k == "buffer_scale":
            return x * self.scale
        return {"gelu": F.gelu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "silu": F.silu}[k](x)


class Attention(nn.Module):
    """Two-head self-attention, by matmuls (bool causal mask, softmax, dropout) or by SDPA."""

    def __init__(self, kind: str, d: int):
        super().__init__()
        self.kind = kind
        self.qkv, self.proj, self.drop = nn.Linear(d, 3 * d), nn.Linear(d, d), nn.Dropout(0.1)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, 2, d // 2).transpose(1, 2) for z in self.qkv(x).split(d, -1))
        if self.kind == "matmul_attention":
            scores = q @ k.transpose(-1, -2) / (d // 2) ** 0.5
            mask = torch.ones(t, t, dtype=torch.bool).triu(1)
            att = self.drop(torch.softmax(scores.masked_fill(mask, float("-inf")), -1)) @ v
        else:
            att = F.scaled_dot_product_attention(q, k, v, is_causal=self.kind == "sdpa_causal")
        return x + self.proj(att.transpose(1, 2).reshape(b, t, d))


def fuzz_block(kind: str, d: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(d, d)
    if kind == "layernorm":
        return nn.LayerNorm(d)
    if kind == "rmsnorm":
        return RMSNorm(d)
    if kind == "residual_mlp":
        return Residual(nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)))
    if kind in ("matmul_attention", "sdpa", "sdpa_causal"):
        return Attention(kind, d)
    return Pointwise(kind, d)


class Residual(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x + self.inner(x)


class ConvStem(nn.Module):
    """Conv2d + BatchNorm2d + ReLU on a (batch, 3, 2, seq/2) image, as (batch, seq, width)."""

    def __init__(self, d: int):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, d, 3, padding=1), nn.BatchNorm2d(d)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))).flatten(2).transpose(1, 2)


class FuzzModel(nn.Module):
    def __init__(self, spec: FuzzSpec, vocab: int = 32):
        super().__init__()
        d, self.spec = spec.width, spec
        self.stem = {"linear": lambda: nn.Linear(d, d), "embedding": lambda: nn.Embedding(vocab, d),
                     "conv_bn": lambda: ConvStem(d)}[spec.stem]()
        self.blocks = nn.ModuleList(fuzz_block(k, d) for k in spec.blocks)
        self.head = nn.Linear(d, d)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        out = self.head(h)
        if self.spec.head != "linear":
            out = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "exp": torch.exp,
                   "softmax": lambda y: torch.softmax(y, -1)}[self.spec.head](out)
        extras = self.spec.extra_outputs
        if not extras:
            return out
        aux = tuple([h] if "hidden" in extras else []) + tuple([out.argmax(-1)] if "argmax" in extras else [])
        return {"out": out, "aux": aux} if "nested" in extras else (out, *aux)


def fuzz_inputs(spec: FuzzSpec, vocab: int = 32) -> tuple[torch.Tensor]:
    """The model's example input, seeded by the spec's shape."""
    g = torch.Generator().manual_seed(spec.batch * 1000 + spec.seq)
    if spec.stem == "embedding":
        return (torch.randint(0, vocab, (spec.batch, spec.seq), generator=g),)
    if spec.stem == "conv_bn":
        return (torch.randn(spec.batch, 3, 2, spec.seq // 2, generator=g),)
    x = torch.randn(spec.batch, spec.seq, spec.width, generator=g)
    return (x.requires_grad_(spec.input_grad),)
