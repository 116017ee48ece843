"""Parameter and MAC counts under the paper's convention (thop 0.0.31, as documented in the architecture notes).

- Conv: MACs + 1 per output element when the conv has a bias.
- BatchNorm (eval): 2 per element.       - Linear: in x out.
- ``nn.Upsample``: 11 per output element when bilinear, 0 when nearest (thop's rule).
- Functional ops (relu, pooling, RoiAlign, softmax, F.interpolate): free.
- Params: modules that run in the forward pass (pruned CCR stages are not built).

``torch.utils.flop_counter.FlopCounterMode`` reports 2 x conv/matmul MACs and skips bias and BN; the
numbers here are MACs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Complexity:
    params: int
    macs: int

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def _conv_macs(m: nn.Conv2d, y: torch.Tensor) -> int:
    per_out = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
    return y.numel() * (per_out + (1 if m.bias is not None else 0))


def count_complexity(model: nn.Module, input_size: int, batch: int = 1) -> Complexity:
    """Count params and MACs of one forward pass at (batch, 3, input_size, input_size).

    Works on a model built on the ``meta`` device (shapes only, no memory or compute), which is how the
    Table 9 rows of the 154 M-parameter model are counted in a second."""
    total = 0

    def hook(m: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += _conv_macs(m, output)
        elif isinstance(m, nn.BatchNorm2d):
            total += 2 * output.numel()
        elif isinstance(m, nn.Linear):
            total += m.in_features * output.numel()
        elif isinstance(m, nn.Upsample) and m.mode == "bilinear":
            total += 11 * output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.Upsample))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(batch, 3, input_size, input_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return Complexity(params=params, macs=total // batch)
