"""A 2-D baseline for video classification: the mean of a clip's frames through an image classifier.

A clip ``[B, C, T, H, W]`` is averaged over time to one image ``[B, C, H, W]`` and classified by a registered
2-D network. Whatever the frames' order, the average is the same, so this baseline measures how much of a task
can be solved without time (docs/movinet.md: on the moving-digits actions it cannot tell "left" from "right").
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .registry import create_model, register_model


class FrameAverage(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"x: expected a clip [B, C, T, H, W], got {tuple(x.shape)}")
        return self.backbone.forward_features(x.mean(2))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(3, 16, 32, 32), num_classes=10,
                description="2-D baseline: ResNet-20 on the mean of a clip's frames (blind to frame order)")
def frameavg_r20(num_classes: int = 10, **kwargs) -> FrameAverage:
    return FrameAverage(create_model("resnet20", num_classes=num_classes, **kwargs))


__all__ = ["FrameAverage", "frameavg_r20"]
