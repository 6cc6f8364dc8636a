"""Train a small GPT-style language model for a few steps with the remat backend, on CPU.

    python examples/gpt.py --budget 60% --steps 3

Prints the no-remat baseline peak, the cap, remat's predicted peak, the measured peak of a real
step (profiler allocation events on CPU, the CUDA allocator on GPU), the decisions and the solve
time. ``factory()`` is also a factory for the ``remat`` command: ``examples/gpt.py:factory``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab: int = 512
    seq: int = 128
    layers: int = 4
    d: int = 256
    heads: int = 4
    dropout: float = 0.1


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.heads, self.p = c.heads, c.dropout
        self.ln1, self.ln2 = nn.LayerNorm(c.d), nn.LayerNorm(c.d)
        self.qkv, self.proj = nn.Linear(c.d, 3 * c.d), nn.Linear(c.d, c.d)
        self.fc, self.out = nn.Linear(c.d, 4 * c.d), nn.Linear(4 * c.d, c.d)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))


class GPT(nn.Module):
    """A GPT-2-style decoder: token and position embeddings, pre-norm blocks, tied head."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c = c
        self.tok, self.pos = nn.Embedding(c.vocab, c.d), nn.Embedding(c.seq, c.d)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.ln = nn.LayerNorm(c.d)
        self.drop = nn.Dropout(c.dropout)
        for m in self.modules():  # GPT-2's initialisation
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.drop(self.tok(idx) + self.pos(torch.arange(t, device=idx.device)))
        for b in self.blocks:
            x = b(x)
        return self.ln(x) @ self.tok.weight.t()


def make_batch(c: GPTConfig, batch: int, device: str = "cpu"):
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, c.vocab, (batch, c.seq + 1), generator=g).to(device)
    return data[:, :-1], data[:, 1:]


def factory(batch: int = 8, **overrides):
    """(model, example_inputs, loss_fn) for ``remat analyze examples/gpt.py:factory``."""
    torch.manual_seed(0)
    c = GPTConfig(**overrides)
    idx, targets = make_batch(c, batch)
    loss_fn = lambda logits: F.cross_entropy(logits.reshape(-1, c.vocab), targets.reshape(-1))  # noqa: E731
    return GPT(c), (idx,), loss_fn


def main(argv=None) -> None:
    from _train import train_and_report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="60%", help="memory_budget: bytes, '300MiB' or a ratio like '60%%'")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--solver", default="ilp")
    args = ap.parse_args(argv)

    torch.set_num_threads(2)
    model, (idx,), loss_fn = factory(batch=args.batch, layers=args.layers)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    print(f"GPT-style model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"{args.layers} layers, batch {args.batch}, seq {model.c.seq}; memory_budget={args.budget!r}")
    train_and_report(model, (idx,), loss_fn, opt, {"memory_budget": args.budget, "solver": args.solver}, args.steps)

if __name__ == "__main__":
    main()
