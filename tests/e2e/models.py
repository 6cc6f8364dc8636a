"""Small models for end-to-end tests: an MLP, a transformer block with dropout, a CNN with BN."""

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
    raise KeyError(name)
