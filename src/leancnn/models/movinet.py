"""MoViNets A0–A5 (Kondratyuk et al., CVPR 2021), base and stream, as spec tables decoded by one builder.

The tables are the TF reference's ``BLOCK_SPECS`` (``tensorflow/models``, ``official/projects/movinet``), which
the authors changed after the paper (the code is the reference): per block, the output width, the stride of its
first layer and, per layer, the expansion width and the depthwise kernel ``(t, h, w)``.

One layer ("MovinetBlock"): 1×1×1 expansion (BN, act) → depthwise feature conv (BN, act) → squeeze-excite →
1×1×1 projection (BN, no act) → times a ReZero scalar initialised to 0 → plus the skip (identity, or
[3×3 average pool when strided] + 1×1×1 conv + BN).

* **base** (``movinet_aX``): full 3-D depthwise convolutions, non-causal (centred temporal padding), swish /
  sigmoid, squeeze-excite on the global average over (T, H, W).
* **stream** (``movinet_aX_stream``): causal (2+1)-D depthwise convolutions, a spatial 1×k×k conv (BN, act)
  then, when ``kt > 1``, a causal temporal kt×1×1 conv (its own BN, act); hard-swish / hard-sigmoid;
  the "2plus3d" squeeze-excite whose input is the per-frame spatial mean concatenated with its cumulative mean
  over the frames so far (a different gate per frame); A3–A5 add a positional encoding to that input, scaled by
  a learned scalar initialised to 0.

Spatial padding is TF-'same' (stride-2 layers pad the extra pixel at the end); there are no temporal strides,
so the frame count is kept to the head. The head is a 1×1×1 conv to ``project`` channels (BN, act), a global
average over all frames (the causal model's logits after the last frame are those of the mean over every
frame), then the classifier: 1×1×1 conv to 2048 (bias, swish, dropout) and 1×1×1 conv to the classes.

Parameter counts equal the reference (PyTorch counts, BN running statistics excluded): A0 3,111,799 base /
3,748,031 stream, ..., A5 18,650,523 / 31,495,875 + 59 (``tests/test_movinet.py``).

Not here yet (issue 10, next steps): the stream-step API with an explicit state and its parity tests, video
data, training with sub-clips, ensembles, ONNX export of the stream step, the ``leancnn video`` command.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..nn.causal import Conv3dSame, avg_pool_same, cumulative_mean
from ..nn.layers import make_divisible
from .registry import register_model

K13, K15, K33, K53 = (1, 3, 3), (1, 5, 5), (3, 3, 3), (5, 3, 3)


@dataclass(frozen=True)
class MovinetSpec:
    stem: int
    blocks: tuple  # (out channels, first-layer spatial stride, ((expand, kernel), ...))
    project: int
    dense: int = 2048
    input_size: tuple = (3, 50, 172, 172)  # the paper's eval input (C, T, H, W)


def _layers(expands, kernels):
    return tuple(zip(expands, kernels))


SPECS = {
    "a0": MovinetSpec(8, (
        (8, 2, _layers([24], [K15])),
        (32, 2, _layers([80, 80, 80], [K33, K33, K33])),
        (56, 2, _layers([184, 112, 184], [K53, K33, K33])),
        (56, 1, _layers([184, 184, 184, 184], [K53, K33, K33, K33])),
        (104, 2, _layers([384, 280, 280, 344], [K53, K15, K15, K15])),
    ), 480, input_size=(3, 50, 172, 172)),
    "a1": MovinetSpec(16, (
        (16, 2, _layers([40, 40], [K15, K33])),
        (40, 2, _layers([96, 120, 96, 96], [K33] * 4)),
        (64, 2, _layers([216, 128, 216, 168, 216], [K53] + [K33] * 4)),
        (64, 1, _layers([216, 216, 216, 128, 128, 216], [K53, K33, K33, K33, K15, K33])),
        (136, 2, _layers([456, 360, 360, 360, 456, 456, 544], [K53, K15, K15, K15, K15, K33, K13])),
    ), 600, input_size=(3, 50, 172, 172)),
    "a2": MovinetSpec(16, (
        (16, 2, _layers([40, 40, 64], [K15, K33, K33])),
        (40, 2, _layers([96, 120, 96, 96, 120], [K33] * 5)),
        (72, 2, _layers([240, 160, 240, 192, 240], [K53] + [K33] * 4)),
        (72, 1, _layers([240, 240, 240, 240, 144, 240], [K53, K33, K33, K33, K15, K33])),
        (144, 2, _layers([480, 384, 384, 480, 480, 480, 576], [K53, K15, K15, K15, K15, K33, K13])),
    ), 640, input_size=(3, 50, 224, 224)),
    "a3": MovinetSpec(16, (
        (16, 2, _layers([40, 40, 64, 40], [K15, K33, K33, K33])),
        (48, 2, _layers([112, 144, 112, 112, 144, 144], [K33, K33, K33, K15, K33, K33])),
        (80, 2, _layers([240, 152, 240, 192, 240], [K53] + [K33] * 4)),
        (88, 1, _layers([264, 264, 264, 264, 160, 264, 264, 264], [K53, K33, K33, K33, K15, K33, K33, K33])),
        (168, 2, _layers([560, 448, 448, 560, 560, 560, 448, 448, 560, 672],
                         [K53, K15, K15, K15, K15, K33, K15, K15, K33, K13])),
    ), 744, input_size=(3, 120, 256, 256)),
    "a4": MovinetSpec(24, (
        (24, 2, _layers([64, 64, 96, 64, 96, 64], [K15] + [K33] * 5)),
        (56, 2, _layers([168, 168, 136, 136, 168, 168, 168, 136, 136], [K33] * 7 + [K15, K33])),
        (96, 2, _layers([320, 160, 320, 192, 320, 160, 320, 256, 320], [K53] + [K33] * 8)),
        (96, 1, _layers([320, 320, 320, 320, 192, 320, 320, 192, 320, 320], [K53, K33, K33, K33, K15] + [K33] * 5)),
        (192, 2, _layers([640, 512, 512, 640, 640, 640, 512, 512, 640, 768, 640, 640, 768],
                         [K53, K15, K15, K15, K15, K33, K15, K15, K15, K15, K15, K33, K33])),
    ), 856, input_size=(3, 80, 290, 290)),
    "a5": MovinetSpec(24, (
        (24, 2, _layers([64, 64, 96, 64, 96, 64], [K15, K15] + [K33] * 4)),
        (64, 2, _layers([192, 152, 152, 152, 192, 192, 192, 152, 152, 192, 192], [K53] + [K33] * 10)),
        (112, 2, _layers([376, 224, 376, 376, 296, 376, 224, 376, 376, 296, 376, 376, 376], [K53] + [K33] * 12)),
        (120, 1, _layers([376, 376, 376, 376, 224, 376, 376, 224, 376, 376, 376], [K53, K33, K33, K33, K15] + [K33] * 6)),
        (224, 2, _layers([744, 744, 600, 600, 744, 744, 744, 896, 600, 600, 896, 744, 744, 896, 600, 600, 744, 744],
                         [K53, K33, K15, K15, K15, K15, K33, K15, K15, K15, K15, K15, K33, K15, K15, K15, K15, K33])),
    ), 992, input_size=(3, 120, 320, 320)),
}
POSITIONAL_ENCODING = {"a3", "a4", "a5"}  # stream models only


class ConvBnAct3d(nn.Sequential):
    def __init__(self, in_ch, out_ch, kernel=(1, 1, 1), stride=(1, 1, 1), groups=1, act=None, causal=False):
        layers = [Conv3dSame(in_ch, out_ch, kernel, stride, groups=groups, causal=causal),
                  nn.BatchNorm3d(out_ch, eps=1e-3, momentum=0.01)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


def positional_encoding(channels: int, frames: int, start: int = 0, device=None, dtype=None) -> torch.Tensor:
    """[1, C, T, 1, 1]: angle = pos / 10000^(2 floor(i/2) / C); sin of the even-index angles concatenated with
    cos of the odd-index angles (TF MoViNet's layout: concatenated, not interleaved)."""
    pos = torch.arange(start, start + frames, device=device, dtype=torch.float64).view(-1, 1)
    i = torch.arange(channels, device=device, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(i, 2, rounding_mode="floor") / channels)  # [T, C]
    enc = torch.cat([torch.sin(angle[:, 0::2]), torch.cos(angle[:, 1::2])], dim=1)
    return enc.to(dtype or torch.get_default_dtype()).t().reshape(1, channels, frames, 1, 1)


class SqueezeExcite3d(nn.Module):
    """``3d``: gate from the global (T, H, W) mean. ``2plus3d`` (causal): from [cumulative mean ‖ frame mean]
    over space, one gate per frame, with an optional positional encoding scaled by a scalar initialised to 0."""

    def __init__(self, channels: int, act, gate, stream: bool, positional: bool):
        super().__init__()
        m = 2 if stream else 1
        hidden = make_divisible(0.25 * m * channels, 8)
        self.stream = stream
        self.se_reduce = nn.Conv3d(m * channels, hidden, 1)
        self.act = act()
        self.se_expand = nn.Conv3d(hidden, channels, 1)
        self.gate = gate()
        self.pos_scale = nn.Parameter(torch.zeros(())) if positional else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stream:
            frame = x.mean((3, 4), keepdim=True)  # [B, C, T, 1, 1]
            s = torch.cat([cumulative_mean(frame, 2), frame], dim=1)
            if self.pos_scale is not None:
                s = s + self.pos_scale * positional_encoding(s.shape[1], s.shape[2], device=s.device, dtype=s.dtype)
        else:
            s = x.mean((2, 3, 4), keepdim=True)
        return x * self.gate(self.se_expand(self.act(self.se_reduce(s))))


class MovinetLayer(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, expand: int, kernel: tuple, stride: int, stream: bool,
                 positional: bool):
        super().__init__()
        act = nn.Hardswish if stream else nn.SiLU
        gate = nn.Hardsigmoid if stream else nn.Sigmoid
        st = (1, stride, stride)
        self.expansion = ConvBnAct3d(in_ch, expand, act=act)
        kt, kh, kw = kernel
        if stream:  # causal (2+1)-D: spatial conv, then (kt > 1) a causal temporal conv with its own BN
            self.feature = ConvBnAct3d(expand, expand, (1, kh, kw), st, groups=expand, act=act)
            self.feature_temporal = (ConvBnAct3d(expand, expand, (kt, 1, 1), groups=expand, act=act, causal=True)
                                     if kt > 1 else None)
        else:
            self.feature = ConvBnAct3d(expand, expand, kernel, st, groups=expand, act=act)
            self.feature_temporal = None
        self.se = SqueezeExcite3d(expand, act, gate, stream, positional)
        self.projection = ConvBnAct3d(expand, out_ch)
        self.rezero = nn.Parameter(torch.zeros(()))
        self.stride = stride
        self.skip = None if (in_ch == out_ch and stride == 1) else ConvBnAct3d(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.feature(self.expansion(x))
        if self.feature_temporal is not None:
            y = self.feature_temporal(y)
        y = self.projection(self.se(y)) * self.rezero
        if self.skip is not None:
            x = self.skip(avg_pool_same(x) if self.stride > 1 else x)
        return x + y


class MoViNet(nn.Module):
    """A MoViNet classifier on clips ``[B, 3, T, H, W]`` (any T ≥ 1, any H, W); ``forward_features`` gives the
    head's feature map ``[B, project, T, H', W']``, ``forward_head`` pools it over all frames and classifies."""

    def __init__(self, spec: MovinetSpec, num_classes: int = 600, stream: bool = False, positional: bool = False,
                 dropout: float = 0.2, in_chans: int = 3):
        super().__init__()
        act = nn.Hardswish if stream else nn.SiLU
        self.stream, self.spec = stream, spec
        self.stem = ConvBnAct3d(in_chans, spec.stem, (1, 3, 3), (1, 2, 2), act=act)
        blocks, in_ch = [], spec.stem
        for out_ch, stride, layers in spec.blocks:
            stage = []
            for i, (expand, kernel) in enumerate(layers):
                stage.append(MovinetLayer(in_ch, out_ch, expand, kernel, stride if i == 0 else 1, stream, positional))
                in_ch = out_ch
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBnAct3d(in_ch, spec.project, act=act)
        self.classifier = nn.Sequential(nn.Conv3d(spec.project, spec.dense, 1), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv3d(spec.dense, num_classes, 1))
        self.num_features = spec.project
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        last = self.classifier[-1]
        nn.init.normal_(last.weight, std=0.01)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.stem[0].in_channels:
            raise ValueError(f"expected a clip [B, {self.stem[0].in_channels}, T, H, W], got shape {tuple(x.shape)}")
        return self.head(self.blocks(self.stem(x)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features.mean((2, 3, 4), keepdim=True)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _register(name: str, spec: MovinetSpec, stream: bool) -> None:
    variant = "stream: causal (2+1)D, 2plus3d SE" + (", positional encoding" if name in POSITIONAL_ENCODING else "") \
        if stream else "base: 3D depthwise, global SE"
    frames, side = spec.input_size[1], spec.input_size[2]

    def build(num_classes: int = 600, dropout: float = 0.5 if name != "a0" else 0.2, in_chans: int = 3) -> MoViNet:
        return MoViNet(spec, num_classes, stream, stream and name in POSITIONAL_ENCODING, dropout, in_chans)

    build.__name__ = f"movinet_{name}{'_stream' if stream else ''}"
    register_model(input_size=spec.input_size, num_classes=600,
                   description=f"MoViNet-{name.upper()} {variant} ({frames}x{side}x{side})")(build)


for _name, _spec in SPECS.items():
    _register(_name, _spec, stream=False)
    _register(_name, _spec, stream=True)

__all__ = ["MoViNet", "MovinetSpec", "SPECS", "positional_encoding"]
