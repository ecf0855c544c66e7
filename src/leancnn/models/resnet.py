"""ResNets for small (32×32) inputs.

* ``resnet20`` / ``resnet56``: the CIFAR ResNets of He et al. (2016, §4.2): a 3×3 stem of 16 channels,
  three stages of n basic blocks with 16-32-64 channels (n = 3 / 9), parameter-free shortcuts (option A:
  stride-2 subsampling plus zero-padded channels), global average pooling, one linear layer.
* ``resnet18``: the ImageNet ResNet-18 (2-2-2-2 basic blocks, 64-128-256-512) adapted to small inputs as
  is customary for CIFAR: 3×3 stride-1 stem, no max-pool; projection shortcuts (1×1 conv + BN).

Stages are named ``layer1``…``layer4`` (MixStyle and pruning address them by name). ``forward_features``
returns the last feature map before pooling; ``forward_head`` pools and classifies.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import ConvBnAct
from .registry import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially by ``stride`` and zero-pad the extra channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = ConvBnAct(in_ch, out_ch, 3, stride)
        self.conv2 = ConvBnAct(out_ch, out_ch, 3, 1, act=None)
        if stride == 1 and in_ch == out_ch:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_ch, out_ch, stride)
        else:
            self.shortcut = ConvBnAct(in_ch, out_ch, 1, stride, act=None)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem + stages of basic blocks + global pooling + linear classifier."""

    def __init__(self, depths: list[int], widths: list[int], num_classes: int = 10, shortcut: str = "A",
                 in_chans: int = 3):
        super().__init__()
        if len(depths) != len(widths):
            raise ValueError("depths and widths must have the same length")
        self.stem = ConvBnAct(in_chans, widths[0], 3, 1)
        in_ch = widths[0]
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                stride = 2 if (j == 0 and i > 0) else 1
                blocks.append(BasicBlock(in_ch, width, stride, shortcut))
                in_ch = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(depths)
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out" if isinstance(m, nn.Conv2d) else "fan_in",
                                        nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(description="CIFAR ResNet-20 (He et al. 2016), 16-32-64, option-A shortcuts")
def resnet20(num_classes: int = 10, in_chans: int = 3) -> ResNet:
    return ResNet([3, 3, 3], [16, 32, 64], num_classes, "A", in_chans)


@register_model(description="CIFAR ResNet-56 (He et al. 2016), 16-32-64, option-A shortcuts")
def resnet56(num_classes: int = 10, in_chans: int = 3) -> ResNet:
    return ResNet([9, 9, 9], [16, 32, 64], num_classes, "A", in_chans)


@register_model(description="ResNet-18 for small inputs: 3x3 stride-1 stem, no max-pool")
def resnet18(num_classes: int = 10, in_chans: int = 3) -> ResNet:
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, "B", in_chans)
