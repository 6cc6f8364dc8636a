"""Train a small AlphaFold2-style Evoformer stack for a few steps with the remat backend, on CPU.

    python examples/evoformer.py --budget 50% --steps 3
    remat analyze examples/evoformer.py:factory --budget 50% -a residues=128

One Evoformer block (Jumper et al. 2021, Algorithm 6) updates an MSA representation m (sequences x
residues x c_m) and a pair representation z (residues x residues x c_z):

    m += RowAttentionWithPairBias(m, z); m += ColumnAttention(m); m += Transition(m)
    z += OuterProductMean(m)
    z += TriangleMultiplicationOutgoing(z); z += TriangleMultiplicationIncoming(z)
    z += TriangleAttentionStartingNode(z); z += TriangleAttentionEndingNode(z); z += Transition(z)

with row-wise dropout on the MSA row attention (0.15) and on the triangle updates (0.25), as in the
paper. The attention logits (heads x N x N per row) and the triangle products make the activation
memory grow with residues^3: the pair stack is where rematerialisation pays. Default sizes are
small so that a CPU step takes about a second.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class EvoformerConfig:
    sequences: int = 32  # MSA depth
    residues: int = 64
    c_m: int = 32
    c_z: int = 16
    heads: int = 4
    c_hidden: int = 8  # per head (attention) and for the outer product / triangle projections
    blocks: int = 2
    transition: int = 4  # hidden width multiplier of the transitions
    msa_dropout: float = 0.15
    pair_dropout: float = 0.25


def shared_dropout(x: torch.Tensor, p: float, training: bool, dim: int) -> torch.Tensor:
    """Dropout whose mask is shared along ``dim`` (AF2's row- or column-wise dropout)."""
    if not training or p == 0.0:
        return x
    shape = list(x.shape)
    shape[dim] = 1
    mask = F.dropout(x.new_ones(shape), p, training=True)
    return x * mask


class GatedAttention(nn.Module):
    """Multi-head attention over the second-to-last axis with an optional additive bias and a
    sigmoid gate on the output (AF2 Algorithm 7, 8, 13, 14)."""

    def __init__(self, c_in: int, heads: int, c_hidden: int):
        super().__init__()
        self.heads, self.c = heads, c_hidden
        self.q = nn.Linear(c_in, heads * c_hidden, bias=False)
        self.k = nn.Linear(c_in, heads * c_hidden, bias=False)
        self.v = nn.Linear(c_in, heads * c_hidden, bias=False)
        self.g = nn.Linear(c_in, heads * c_hidden)
        self.o = nn.Linear(heads * c_hidden, c_in)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # x: (..., L, c_in); bias broadcastable to (..., heads, L, L)
        *lead, n, _ = x.shape
        split = lambda t: t.view(*lead, n, self.heads, self.c).transpose(-2, -3)  # noqa: E731
        q, k, v = split(self.q(x)) / math.sqrt(self.c), split(self.k(x)), split(self.v(x))
        logits = q @ k.transpose(-1, -2)
        if bias is not None:
            logits = logits + bias
        a = torch.softmax(logits, dim=-1)
        out = (a @ v).transpose(-2, -3).reshape(*lead, n, self.heads * self.c)
        return self.o(torch.sigmoid(self.g(x)) * out)


class MSARowAttentionWithPairBias(nn.Module):
    def __init__(self, c: EvoformerConfig):
        super().__init__()
        self.ln_m, self.ln_z = nn.LayerNorm(c.c_m), nn.LayerNorm(c.c_z)
        self.bias = nn.Linear(c.c_z, c.heads, bias=False)
        self.att = GatedAttention(c.c_m, c.heads, c.c_hidden)

    def forward(self, m, z):
        b = self.bias(self.ln_z(z)).permute(0, 3, 1, 2).unsqueeze(1)  # (B, 1, H, R, R)
        return self.att(self.ln_m(m), b)  # rows: attention over residues of each sequence


class MSAColumnAttention(nn.Module):
    def __init__(self, c: EvoformerConfig):
        super().__init__()
        self.ln = nn.LayerNorm(c.c_m)
        self.att = GatedAttention(c.c_m, c.heads, c.c_hidden)

    def forward(self, m):
        mt = self.ln(m).transpose(-2, -3)  # (B, R, S, c): attention over the sequences of each column
        return self.att(mt).transpose(-2, -3)


class Transition(nn.Module):
    def __init__(self, c_in: int, n: int):
        super().__init__()
        self.ln, self.fc1, self.fc2 = nn.LayerNorm(c_in), nn.Linear(c_in, n * c_in), nn.Linear(n * c_in, c_in)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(self.ln(x))))


class OuterProductMean(nn.Module):
    def __init__(self, c: EvoformerConfig):
        super().__init__()
        self.ln = nn.LayerNorm(c.c_m)
        self.a, self.b = nn.Linear(c.c_m, c.c_hidden), nn.Linear(c.c_m, c.c_hidden)
        self.o = nn.Linear(c.c_hidden * c.c_hidden, c.c_z)

    def forward(self, m):
        x = self.ln(m)
        a, b = self.a(x), self.b(x)  # (B, S, R, c)
        outer = torch.einsum("bsic,bsjd->bijcd", a, b) / m.shape[1]
        return self.o(outer.flatten(-2))


class TriangleMultiplication(nn.Module):
    """Outgoing: z_ij += sum_k a_ik b_jk; incoming: z_ij += sum_k a_ki b_kj (Algorithms 11, 12)."""

    def __init__(self, c: EvoformerConfig, outgoing: bool):
        super().__init__()
        self.outgoing = outgoing
        self.ln_in, self.ln_out = nn.LayerNorm(c.c_z), nn.LayerNorm(c.c_hidden)
        self.a_p, self.a_g = nn.Linear(c.c_z, c.c_hidden), nn.Linear(c.c_z, c.c_hidden)
        self.b_p, self.b_g = nn.Linear(c.c_z, c.c_hidden), nn.Linear(c.c_z, c.c_hidden)
        self.g, self.o = nn.Linear(c.c_z, c.c_z), nn.Linear(c.c_hidden, c.c_z)

    def forward(self, z):
        x = self.ln_in(z)
        a = torch.sigmoid(self.a_g(x)) * self.a_p(x)
        b = torch.sigmoid(self.b_g(x)) * self.b_p(x)
        if self.outgoing:
            t = torch.einsum("bikc,bjkc->bijc", a, b)
        else:
            t = torch.einsum("bkic,bkjc->bijc", a, b)
        return torch.sigmoid(self.g(x)) * self.o(self.ln_out(t))


class TriangleAttention(nn.Module):
    """Starting node: row i attends over j with bias b_jk from z (Algorithm 13); ending node: the
    same on the transposed pair representation (Algorithm 14)."""

    def __init__(self, c: EvoformerConfig, starting: bool):
        super().__init__()
        self.starting = starting
        self.ln = nn.LayerNorm(c.c_z)
        self.bias = nn.Linear(c.c_z, c.heads, bias=False)
        self.att = GatedAttention(c.c_z, c.heads, c.c_hidden)

    def forward(self, z):
        if not self.starting:
            z = z.transpose(1, 2)
        x = self.ln(z)
        b = self.bias(x).permute(0, 3, 1, 2).unsqueeze(1)  # (B, 1, H, R, R)
        out = self.att(x, b)
        return out if self.starting else out.transpose(1, 2)


class EvoformerBlock(nn.Module):
    def __init__(self, c: EvoformerConfig):
        super().__init__()
        self.c = c
        self.row = MSARowAttentionWithPairBias(c)
        self.col = MSAColumnAttention(c)
        self.msa_transition = Transition(c.c_m, c.transition)
        self.opm = OuterProductMean(c)
        self.tri_out = TriangleMultiplication(c, outgoing=True)
        self.tri_in = TriangleMultiplication(c, outgoing=False)
        self.tri_att_start = TriangleAttention(c, starting=True)
        self.tri_att_end = TriangleAttention(c, starting=False)
        self.pair_transition = Transition(c.c_z, c.transition)

    def forward(self, m, z):
        c, tr = self.c, self.training
        m = m + shared_dropout(self.row(m, z), c.msa_dropout, tr, dim=1)  # row-wise: shared over sequences
        m = m + self.col(m)
        m = m + self.msa_transition(m)
        z = z + self.opm(m)
        z = z + shared_dropout(self.tri_out(z), c.pair_dropout, tr, dim=1)
        z = z + shared_dropout(self.tri_in(z), c.pair_dropout, tr, dim=1)
        z = z + shared_dropout(self.tri_att_start(z), c.pair_dropout, tr, dim=1)
        z = z + shared_dropout(self.tri_att_end(z), c.pair_dropout, tr, dim=2)  # column-wise
        z = z + self.pair_transition(z)
        return m, z


class Evoformer(nn.Module):
    """A stack of Evoformer blocks; ``forward(m, z) -> (m, z)``."""

    def __init__(self, c: EvoformerConfig):
        super().__init__()
        self.c = c
        self.blocks = nn.ModuleList(EvoformerBlock(c) for _ in range(c.blocks))

    def forward(self, m, z):
        for b in self.blocks:
            m, z = b(m, z)
        return m, z


def factory(batch: int = 1, **overrides):
    """(model, (msa, pair), loss_fn) for ``remat analyze examples/evoformer.py:factory``."""
    torch.manual_seed(0)
    c = EvoformerConfig(**overrides)
    g = torch.Generator().manual_seed(0)
    m = torch.randn(batch, c.sequences, c.residues, c.c_m, generator=g)
    z = torch.randn(batch, c.residues, c.residues, c.c_z, generator=g)
    m_target = torch.randn(m.shape, generator=g)
    z_target = torch.randn(z.shape, generator=g)

    def loss_fn(out):
        m_out, z_out = out
        return F.mse_loss(m_out, m_target) + F.mse_loss(z_out, z_target)

    return Evoformer(c), (m, z), loss_fn


def main(argv=None) -> None:
    from _train import train_and_report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="50%", help="memory_budget: bytes, '300MiB' or a ratio like '50%%'")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--residues", type=int, default=64)
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--solver", default="ilp")
    args = ap.parse_args(argv)

    torch.set_num_threads(2)
    model, (m, z), loss_fn = factory(blocks=args.blocks, residues=args.residues, sequences=args.sequences)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    print(f"Evoformer: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {args.blocks} blocks, "
          f"{args.sequences} sequences x {args.residues} residues; memory_budget={args.budget!r}")
    train_and_report(model, (m, z), loss_fn, opt, {"memory_budget": args.budget, "solver": args.solver}, args.steps)

if __name__ == "__main__":
    main()
