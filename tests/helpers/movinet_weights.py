"""Random MoViNet weights that exercise every path: non-trivial BatchNorm (statistics and affine) and non-zero
ReZero / positional-encoding scalars (at their initial 0 every residual branch and encoding would be off)."""

import torch
import torch.nn as nn


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with such weights, in eval mode (changed in place and returned)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
        for n, p in model.named_parameters():
            if n.endswith(("rezero", "pos_scale")):
                p.uniform_(0.2, 0.6, generator=g)
    return model.eval()
