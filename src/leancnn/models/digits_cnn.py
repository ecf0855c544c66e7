"""The Digits-DG backbone of Dassl.pytorch (``cnn_digitsdg``), used by MixStyle's Digits-DG experiments:
four blocks of conv3×3(64, padding 1) + ReLU + max-pool 2, giving a 64×2×2 = 256-d feature at 32×32 input,
then one linear classifier. Blocks are named ``conv1``…``conv4``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_model


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10, hidden: int = 64, in_chans: int = 3):
        super().__init__()
        chans = [in_chans] + [hidden] * 4
        for i in range(4):
            self.add_module(f"conv{i + 1}", nn.Sequential(
                nn.Conv2d(chans[i], chans[i + 1], 3, 1, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)))
        self.num_features = hidden * 4
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"digits_cnn expects 32x32 inputs, got {tuple(x.shape[-2:])}")
        return self.conv4(self.conv3(self.conv2(self.conv1(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(description="Digits-DG CNN (Dassl cnn_digitsdg): 4x[conv3x3-64, ReLU, maxpool]")
def digits_cnn(num_classes: int = 10, hidden: int = 64, in_chans: int = 3) -> DigitsCNN:
    return DigitsCNN(num_classes, hidden, in_chans)
