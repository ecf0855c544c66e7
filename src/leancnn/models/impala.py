"""The IMPALA CNN (Espeholt et al., "IMPALA", ICML 2018), the backbone of Procgen/CoinRun agents and of MixStyle's
RL experiment (MixStyle after conv-sequences 0 and 1, depths 16, 32, 32).

One conv sequence = conv3x3(depth) -> max-pool 3x3 stride 2 (padding 1) -> two residual blocks
[ReLU, conv3x3, ReLU, conv3x3] + skip. The sequences are the modules ``seq0``, ``seq1``, ... (MixStyle goes after
them by name); :meth:`forward_features` returns the last sequence's map after a ReLU, :meth:`embed` the
``hidden``-d vector an agent's policy and value heads read (flatten -> linear -> ReLU), :meth:`forward_head` that
embedding's class logits (so it also works as a plain classifier). No batch norm: RL rollouts and updates see
the same network. Inputs are expected in [0, 1] (an agent divides pixels by 255).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ConvSequence(nn.Module):
    def __init__(self, in_chans: int, depth: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, depth, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res0 = ResidualBlock(depth)
        self.res1 = ResidualBlock(depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res1(self.res0(self.pool(self.conv(x))))


def _pooled_size(n: int, sequences: int) -> int:
    for _ in range(sequences):
        n = (n + 2 - 3) // 2 + 1
    return n


class ImpalaCNN(nn.Module):
    def __init__(self, num_classes: int = 10, depths: tuple[int, ...] | list[int] = (16, 32, 32), hidden: int = 256,
                 in_chans: int = 3, input_hw: tuple[int, int] | list[int] = (64, 64)):
        super().__init__()
        depths = [int(d) for d in depths]
        if not depths or min(depths) < 1:
            raise ValueError(f"depths must be one or more positive channel counts, got {depths}")
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        h, w = (int(v) for v in input_hw)
        chans = [in_chans] + depths
        for i in range(len(depths)):
            self.add_module(f"seq{i}", ConvSequence(chans[i], chans[i + 1]))
        self.sequences = len(depths)
        self.input_hw = (h, w)
        self.map_size = (_pooled_size(h, self.sequences), _pooled_size(w, self.sequences))
        self.num_features = hidden
        self.fc = nn.Linear(depths[-1] * self.map_size[0] * self.map_size[1], hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_hw:
            raise ValueError(f"impala_cnn was built for {self.input_hw[0]}x{self.input_hw[1]} inputs "
                             f"(input_hw), got {tuple(x.shape[-2:])}")
        for i in range(self.sequences):
            x = getattr(self, f"seq{i}")(x)
        return F.relu(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The ``hidden``-d embedding an agent's heads read."""
        return F.relu(self.fc(self.forward_features(x).flatten(1)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.relu(self.fc(features.flatten(1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(3, 64, 64), description="IMPALA CNN (Procgen/CoinRun agents): conv sequences "
                "[conv3x3, maxpool/2, 2 residual blocks] of depths 16, 32, 32 + a 256-d embedding")
def impala_cnn(num_classes: int = 10, depths=(16, 32, 32), hidden: int = 256, in_chans: int = 3,
               input_hw=(64, 64)) -> ImpalaCNN:
    return ImpalaCNN(num_classes, depths, hidden, in_chans, input_hw)
