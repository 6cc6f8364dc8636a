"""Train a small ResNet-style CNN for a few steps with the remat backend, on CPU.

    python examples/cnn.py --budget 50% --steps 3
    remat analyze examples/cnn.py:factory --budget 50% -a batch=64

A ResNet (He et al. 2016) with basic blocks: a 3x3 stem, stages of two residual blocks each
(conv-BN-ReLU-conv-BN plus the shortcut, a strided 1x1 projection where the shape changes), global
average pooling, dropout and a linear classifier. Convolutions and batch norm keep large
activations alive from the forward pass to the backward pass, and the early stages at full
resolution dominate the peak.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class CNNConfig:
    image: int = 32
    classes: int = 10
    width: int = 16  # channels of the first stage; doubled at each later stage
    stages: int = 3
    blocks_per_stage: int = 2
    dropout: float = 0.1


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, ``stages`` x ``blocks_per_stage`` basic blocks (in ``self.blocks``), pooling, head."""

    def __init__(self, c: CNNConfig):
        super().__init__()
        self.c = c
        self.stem = nn.Sequential(nn.Conv2d(3, c.width, 3, padding=1, bias=False), nn.BatchNorm2d(c.width), nn.ReLU())
        blocks, c_in = [], c.width
        for s in range(c.stages):
            c_out = c.width * 2**s
            for b in range(c.blocks_per_stage):
                blocks.append(BasicBlock(c_in, c_out, stride=2 if (s > 0 and b == 0) else 1))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c_in, c.classes)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.head(self.drop(x.mean((2, 3))))


def factory(batch: int = 32, **overrides):
    """(model, (images,), loss_fn) for ``remat analyze examples/cnn.py:factory``."""
    torch.manual_seed(0)
    c = CNNConfig(**overrides)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, c.image, c.image, generator=g)
    labels = torch.randint(0, c.classes, (batch,), generator=g)
    loss_fn = lambda logits: F.cross_entropy(logits, labels)  # noqa: E731
    return ResNet(c), (images,), loss_fn


def main(argv=None) -> None:
    from _train import train_and_report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="50%", help="memory_budget: bytes, '300MiB' or a ratio like '50%%'")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--solver", default="ilp")
    args = ap.parse_args(argv)

    torch.set_num_threads(2)
    model, (x,), loss_fn = factory(batch=args.batch, image=args.image)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    print(f"ResNet-style CNN: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{len(model.blocks)} blocks, batch {args.batch} x 3 x {args.image} x {args.image}; memory_budget={args.budget!r}")
    train_and_report(model, (x,), loss_fn, opt, {"memory_budget": args.budget, "solver": args.solver}, args.steps)

if __name__ == "__main__":
    main()
