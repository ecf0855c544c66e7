"""Eval-time folding of BatchNorm into the preceding convolution.

In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``, so a
convolution followed by it is one convolution with ``w' = w * gamma / sqrt(var + eps)`` (per output channel) and
``b' = (b - mean) * gamma / sqrt(var + eps) + beta``. Folding removes one pass over every feature map, which is
what batch-1 inference on the CPU pays for most (docs/benchmarks.md measures it).

:func:`fold_batchnorm` folds every ``Conv1d`` / ``Conv2d`` / ``Conv3d`` (subclasses included, e.g. MoViNet's
``Conv3dSame``) that is directly followed by a BatchNorm of the same dimension (``BatchNorm1d`` / ``2d`` / ``3d``)
inside an ``nn.Sequential`` (all of leancnn's networks: ``ConvBnAct``, MoViNet's ``ConvBnAct3d``); the BatchNorm
becomes ``nn.Identity``. Other
patterns (a BatchNorm applied in a hand-written ``forward``) are left as they are, and counted in the return
value so nothing is silently skipped. The result is for inference only: it has no BatchNorm to train.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution (same class, with a bias) equal to ``bn(conv(x))`` with ``bn`` in eval mode (1-, 2- or
    3-D; the weight keeps its memory format)."""
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale + (bn.bias.double() if bn.affine else 0.0)
    folded = copy.deepcopy(conv)
    weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.ndim - 1)))
    folded.weight = nn.Parameter(weight.to(conv.weight.dtype).contiguous(memory_format=_memory_format(conv.weight)))
    bias = (conv.bias.double() * scale if conv.bias is not None else 0.0) + shift
    folded.bias = nn.Parameter(bias.to(conv.weight.dtype))
    return folded


def _memory_format(w: torch.Tensor) -> torch.memory_format:
    cl = {4: torch.channels_last, 5: torch.channels_last_3d}.get(w.ndim)
    if cl is not None and w.is_contiguous(memory_format=cl) and not w.is_contiguous():
        return cl
    return torch.contiguous_format


_PAIRS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return any(isinstance(conv, c) and type(bn) is b for c, b in _PAIRS) and conv.out_channels == bn.num_features


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> tuple[nn.Module, int]:
    """``(eval model with every Sequential ConvNd -> BatchNormNd pair folded, number of pairs folded)``. The
    model is copied unless ``inplace``; the result is in eval mode."""
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)  # noqa: SLF001 - the only way to replace a member of a Sequential by name
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]  # noqa: SLF001
            if _foldable(conv, bn):
                seq._modules[a] = fold_conv_bn(conv, bn)  # noqa: SLF001
                seq._modules[b] = nn.Identity()  # noqa: SLF001
                folded += 1
    return model, folded


def unfolded_batchnorms(model: nn.Module) -> int:
    """BatchNorm layers still in ``model`` (after :func:`fold_batchnorm`: the ones it could not fold)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())  # noqa: SLF001
