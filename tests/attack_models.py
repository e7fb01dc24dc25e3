"""Small models shared by the attack tests: the digits split, a batch-invariant copy of an MLP, a row counter.

On CPU, MKL's matrix product rounds the rows of a partial block of the batch differently in the last
bit (``nn.Linear`` on 1-3 rows, or on a row count not divisible by 4 in float64), so an attack on an
``nn.Linear`` model can differ by an ulp between batches. The tests of batch invariance and early
stopping need a model whose per-image arithmetic is exactly the same in any batch: :func:`row_wise`
computes every linear layer as an elementwise product and a sum over the input, row by row.
"""
import torch
import torch.nn as nn


def digits_split():
    """The sklearn digits (8×8, in [0, 1]): 1400 training and 300 test images, a fixed permutation."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:1400]], y[perm[:1400]], x[perm[1400:1700]], y[perm[1400:1700]]


class RowLinear(nn.Module):
    """``nn.Linear`` as ``(h[:, None, :] * W).sum(-1) + b``: each row's result is the same in any batch."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.register_buffer("weight", lin.weight.detach().clone())
        self.register_buffer("bias", lin.bias.detach().clone())

    def forward(self, h):
        return (h[:, None, :] * self.weight).sum(-1) + self.bias


def row_wise(net: nn.Sequential, dtype=torch.float64) -> nn.Sequential:
    """A copy of a Sequential MLP with every ``nn.Linear`` computed row by row (batch-invariant), in ``dtype``."""
    return nn.Sequential(*[RowLinear(m) if isinstance(m, nn.Linear) else m for m in net]).to(dtype).eval()


class RowCounter(nn.Module):
    """Wraps a model and counts the images it was called on (the work an attack did)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.model(x)
