"""Small composable layers."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10% (MobileNet convention)."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def used_taps(size: int, kernel: int, padding: int, stride: int) -> tuple[int, int, int, int]:
    """For a zero-padded convolution along one axis of length ``size``: the first and last kernel tap that
    ever reads a real input (not padding), and the left/right padding the cropped kernel then needs to give
    the same outputs. ``(0, kernel - 1, padding, padding)`` when every tap is used."""
    out = (size + 2 * padding - kernel) // stride + 1
    lo = max(0, padding - (out - 1) * stride)
    hi = min(kernel - 1, size - 1 + padding)
    left = padding - lo
    right = max(0, (out - 1) * stride + (hi - lo + 1) - size - left)
    return lo, hi, left, right


class TapCroppedConv2d(nn.Conv2d):
    """A ``Conv2d`` that, on a feature map too small for its kernel, convolves with only the taps that can
    touch the input. MobileNet-style networks meet this on small images: at 32×32 input their last stages see
    2×2 and 1×1 maps, where a 5×5 depthwise kernel with padding 2 reads padding zeros with 16 or 24 of its 25
    taps, and the CPU kernels spend most of the time of a training step's depthwise backward on them. The
    outputs are the same sums without the zero terms (equal up to float rounding), the gradient of an unused
    tap is zero as before, and parameters, state dict and MAC count (the conventional full-kernel count)
    are unchanged. Maps at least as large as the kernel's reach take the plain path."""

    crop = True  # class switch, for measuring against the plain path (benchmarks/train_throughput.py)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (not self.crop or self.padding_mode != "zeros" or isinstance(self.padding, str) or self.dilation != (1, 1)
                or x.ndim != 4):
            return super()._conv_forward(x, weight, bias)
        plans = [used_taps(x.shape[2 + d], weight.shape[2 + d], self.padding[d], self.stride[d]) for d in range(2)]
        if all(lo == 0 and hi == weight.shape[2 + d] - 1 for d, (lo, hi, _, _) in enumerate(plans)):
            return super()._conv_forward(x, weight, bias)
        (lo_h, hi_h, top, bottom), (lo_w, hi_w, left, right) = plans
        weight = weight[:, :, lo_h:hi_h + 1, lo_w:hi_w + 1]
        if (weight.shape[2:] == (1, 1) and top == bottom == left == right == 0
                and self.groups == self.in_channels == self.out_channels):
            # depthwise with one tap left: a per-channel scale (PyTorch's conv would take its slow per-group
            # path for a 1x1 depthwise kernel at batch 1 on one thread)
            out = x[:, :, ::self.stride[0], ::self.stride[1]] * weight.view(1, -1, 1, 1)
            return out + bias.view(1, -1, 1, 1) if bias is not None else out
        if top == bottom and left == right:
            return F.conv2d(x, weight, bias, self.stride, (top, left), 1, self.groups)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, self.stride, 0, 1, self.groups)


class ConvBnAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation; 'same' padding for odd kernels. Kernels larger than 1×1
    are :class:`TapCroppedConv2d` (the same parameters; no work on taps that only read padding)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 act: Callable[[], nn.Module] | None = nn.ReLU):
        layers: list[nn.Module] = [
            (TapCroppedConv2d if kernel_size > 1 else nn.Conv2d)(
                in_ch, out_ch, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)
