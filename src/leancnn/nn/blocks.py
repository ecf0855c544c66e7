"""Building blocks of mobile networks: squeeze-excite, inverted residual, pooled skip branch."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ConvBnAct, make_divisible


class SqueezeExcite(nn.Module):
    """MobileNetV3 squeeze-excite: global average -> 1x1 conv (+bias) -> ReLU -> 1x1 conv (+bias) -> hard-sigmoid,
    which rescales the channels. The bottleneck has ``make_divisible(channels * rd_ratio, divisor)`` channels."""

    def __init__(self, channels: int, rd_ratio: float = 0.25, divisor: int = 8):
        super().__init__()
        rd = make_divisible(channels * rd_ratio, divisor)
        self.conv_reduce = nn.Conv2d(channels, rd, 1)
        self.act = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.conv_expand(self.act(self.conv_reduce(s))))


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: [1x1 expansion to ``mid_ch``] -> depthwise kxk -> [squeeze-excite] -> linear 1x1
    projection, plus an identity shortcut when ``stride == 1`` and ``in_ch == out_ch``.

    ``mid_ch=None`` leaves out the expansion conv (the depthwise conv then works on ``in_ch`` channels);
    ``se_ratio > 0`` adds squeeze-excite on the depthwise output; ``act`` is the activation class of the
    expansion and depthwise convs (e.g. ``nn.ReLU`` or ``nn.Hardswish``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, mid_ch: int | None = None,
                 se_ratio: float = 0.0, act: Callable[[], nn.Module] = nn.ReLU):
        super().__init__()
        mid = in_ch if mid_ch is None else mid_ch
        self.conv_pw = nn.Identity() if mid_ch is None else ConvBnAct(in_ch, mid, 1, act=act)
        self.conv_dw = ConvBnAct(mid, mid, kernel_size, stride, groups=mid, act=act)
        self.se = SqueezeExcite(mid, se_ratio) if se_ratio > 0 else nn.Identity()
        self.conv_pwl = ConvBnAct(mid, out_ch, 1, act=None)
        self.has_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_pwl(self.se(self.conv_dw(self.conv_pw(x))))
        return out + x if self.has_skip else out


class PooledSkip(nn.Module):
    """A long skip branch (SkipNet's "skip block"): adaptive average pooling of an early feature map to the
    spatial size of the later map it is added to, then ``body`` (typically an :class:`InvertedResidual`
    without shortcut). The size is read at run time, so the branch works for any input size."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.body(F.adaptive_avg_pool2d(x, size))
