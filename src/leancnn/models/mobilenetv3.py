"""MobileNetV3 (Howard et al., ICCV 2019) and the SkipNet / SkipblockNet family (Abrahamyan et al., ICCV 2021).

Every network here is data: an :class:`ArchDef` whose stages are lists of block strings in timm's
``_gen_mobilenet_v3`` notation, decoded by :func:`decode_block` and built by the one class
:class:`MobileNetV3`. A block string is ``type_token_token...``:

* type ``ir``: inverted residual with a 1x1 expansion conv; ``ds``: depthwise-separable (no expansion conv);
* ``r<n>`` repeats (only the first repeat has the stride), ``k<n>`` depthwise kernel, ``s<n>`` stride,
  ``e<x>`` expansion ratio (expanded width ``make_divisible(in * x, 8)``), ``c<n>`` output channels (before the
  width multiplier), ``se<x>`` squeeze-excite ratio, ``nre`` ReLU instead of the default h-swish.

SkipNet adds *skip branches* ``(source stage, target stage, block string)``: the source stage's output is
pooled to the target stage's output size (read at run time, so any input of at least 32x32 works) and passed
through the block, whose output is added to the target stage's output (no activation after the add). Skip
input and hidden widths follow the width multiplier.

Layout: ``stem`` (conv3x3 s2, h-swish) -> ``blocks.0`` … ``blocks.N`` (stages) -> ``conv_head`` (1x1 conv, BN,
h-swish; the last feature map, returned by ``forward_features``) -> ``forward_head``: global average pool ->
``head_fc`` (Linear + bias) -> h-swish -> dropout -> ``classifier``. Channels scale as ``make_divisible(c * w, 8)``;
the ``head_fc`` width (1280 Large / 1024 Small) is kept for ``w <= 1`` and scaled only for ``w > 1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import ConvBnAct, InvertedResidual, PooledSkip, make_divisible
from .registry import register_model


@dataclass(frozen=True)
class BlockSpec:
    """One decoded block string."""

    kind: str  # "ir" (with expansion conv) or "ds" (without)
    repeat: int
    kernel: int
    stride: int
    exp: float
    out: int
    se: float
    act: str  # "hs" or "re"


_TOKEN = re.compile(r"(se|r|k|s|e|c)(\d+(?:\.\d+)?)$")


def decode_block(spec: str) -> BlockSpec:
    """Decode a block string such as ``"ir_r3_k5_s2_e3_c40_se0.25_nre"``."""
    kind, *tokens = spec.split("_")
    if kind not in ("ir", "ds"):
        raise ValueError(f"block '{spec}': unknown type '{kind}' (expected 'ir' or 'ds')")
    values: dict[str, float] = {"r": 1, "k": 3, "s": 1, "e": 1, "se": 0}
    act = "hs"
    for tok in tokens:
        if tok == "nre":
            act = "re"
            continue
        m = _TOKEN.match(tok)
        if m is None:
            raise ValueError(f"block '{spec}': cannot read token '{tok}'")
        values[m.group(1)] = float(m.group(2))
    if "c" not in values:
        raise ValueError(f"block '{spec}': output channels 'c<n>' missing")
    if kind == "ds" and values["e"] != 1:
        raise ValueError(f"block '{spec}': a 'ds' block has no expansion")
    return BlockSpec(kind, int(values["r"]), int(values["k"]), int(values["s"]), values["e"], int(values["c"]),
                     values["se"], act)


_ACTS = {"hs": nn.Hardswish, "re": nn.ReLU}


def build_block(spec: BlockSpec, in_ch: int, out_ch: int, stride: int) -> InvertedResidual:
    """The module of one repeat of ``spec`` with the given (already width-scaled) channels."""
    mid = make_divisible(in_ch * spec.exp, 8) if spec.kind == "ir" else None
    return InvertedResidual(in_ch, out_ch, spec.kernel, stride, mid, spec.se, _ACTS[spec.act])


@dataclass(frozen=True)
class ArchDef:
    """A whole network as data: stages of block strings, head widths, SkipNet skip branches."""

    stages: tuple[tuple[str, ...], ...]
    head_chs: int  # 1x1 conv before pooling (the feature map)
    head_hidden: int  # Linear after pooling (1280 Large, 1024 Small)
    skips: tuple[tuple[int, int, str], ...] = ()  # (source stage, target stage, block string)
    stem_chs: int = 16


class MobileNetV3(nn.Module):
    """The one builder: MobileNetV3-Large/Small and SkipNet from an :class:`ArchDef` and a width multiplier."""

    def __init__(self, arch: ArchDef, num_classes: int = 1000, width: float = 1.0, dropout: float = 0.2,
                 in_chans: int = 3):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")

        def chs(c: int) -> int:
            return make_divisible(c * width, 8)

        self.stem = ConvBnAct(in_chans, chs(arch.stem_chs), 3, 2, act=nn.Hardswish)
        in_ch, stage_chs, stages = chs(arch.stem_chs), [], []
        for stage in arch.stages:
            blocks = []
            for spec in map(decode_block, stage):
                for i in range(spec.repeat):
                    blocks.append(build_block(spec, in_ch, chs(spec.out), spec.stride if i == 0 else 1))
                    in_ch = chs(spec.out)
            stages.append(nn.Sequential(*blocks))
            stage_chs.append(in_ch)
        self.blocks = nn.Sequential(*stages)
        self.skips = nn.ModuleList()
        self.skip_routes: list[tuple[int, int]] = []
        for src, dst, text in arch.skips:
            spec = decode_block(text)
            if chs(spec.out) != stage_chs[dst] or spec.stride != 1 or spec.repeat != 1:
                raise ValueError(f"skip '{text}' must have stride 1, one repeat and the width of stage {dst}")
            self.skips.append(PooledSkip(build_block(spec, stage_chs[src], chs(spec.out), 1)))
            self.skip_routes.append((src, dst))
        self.num_features = chs(arch.head_chs)
        self.conv_head = ConvBnAct(in_ch, self.num_features, 1, act=nn.Hardswish)
        self.head_hidden_size = arch.head_hidden if width <= 1 else chs(arch.head_hidden)
        self.head_fc = nn.Linear(self.num_features, self.head_hidden_size)
        self.head_act = nn.Hardswish()
        self.head_drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.head_hidden_size, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Convs ~ N(0, sqrt(2 / (k*k*C_out))), BN (1, 0), Linear ~ N(0, 0.01) with zero bias (SkipNet §2.2)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        sources = {src for src, _ in self.skip_routes}
        saved: dict[int, torch.Tensor] = {}
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in sources:
                saved[i] = x
            for skip, (src, dst) in zip(self.skips, self.skip_routes):
                if dst == i:
                    x = x + skip(saved[src], x.shape[-2:])
        return self.conv_head(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)
        return self.classifier(self.head_drop(self.head_act(self.head_fc(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


MOBILENETV3_LARGE = ArchDef(
    stages=(
        ("ds_r1_k3_s1_c16_nre",),
        ("ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"),
        ("ir_r3_k5_s2_e3_c40_se0.25_nre",),
        ("ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"),
        ("ir_r2_k3_s1_e6_c112_se0.25",),
        ("ir_r3_k5_s2_e6_c160_se0.25",),
    ),
    head_chs=960,
    head_hidden=1280,
)

MOBILENETV3_SMALL = ArchDef(
    stages=(
        ("ds_r1_k3_s2_c16_se0.25_nre",),
        ("ir_r1_k3_s2_e4.5_c24_nre", "ir_r1_k3_s1_e3.67_c24_nre"),
        ("ir_r1_k5_s2_e4_c40_se0.25", "ir_r2_k5_s1_e6_c40_se0.25"),
        ("ir_r2_k5_s1_e3_c48_se0.25",),
        ("ir_r3_k5_s2_e6_c96_se0.25",),
    ),
    head_chs=576,
    head_hidden=1024,
)

# SkipNet-M: MobileNetV3-Large with an expanding, h-swish first block (IR1), IR6 expanded x6 with h-swish,
# and two skip branches from IR1's output to the outputs of IR6 (stage 2) and IR10 (stage 3).
SKIPNET = ArchDef(
    stages=(
        ("ir_r1_k3_s1_e1_c16",),
        ("ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"),
        ("ir_r2_k5_s2_e3_c40_se0.25_nre", "ir_r1_k5_s1_e6_c40_se0.25"),
        ("ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"),
        ("ir_r2_k3_s1_e6_c112_se0.25",),
        ("ir_r3_k5_s2_e6_c160_se0.25",),
    ),
    head_chs=960,
    head_hidden=1280,
    skips=((0, 2, "ir_k5_e6_c40_nre"), (0, 3, "ir_k3_e2.3_c80_nre")),
)


@dataclass(frozen=True)
class SkipNetMember:
    """A SkipNet family member: SKIPNET at a width and head size, and the published point it reproduces."""

    width: float
    head_hidden: int
    published_params: float  # at 224x224, 1000 classes
    published_macs: float


# Published MACs (read off a plot) run ~4% above this conv + linear count at every point, including the
# confirmed SkipNet-M (236.6M here vs ~246M); the parameter counts agree within 2.5%. For L, width 1.15 with the
# 1280 head (7.13M / 352M) has that same offset; width 1.2 with the 1024 head (7.02M / 365M) would not.
SKIPNET_FAMILY = {
    "xs": SkipNetMember(0.5, 1024, 2.3e6, 80e6),
    "s": SkipNetMember(0.7, 1280, 3.6e6, 150e6),
    "m": SkipNetMember(1.0, 1280, 5.5e6, 246e6),
    "l": SkipNetMember(1.15, 1280, 7.1e6, 365e6),
}


def _skipnet(member: str, num_classes: int, width: float | None, dropout: float, in_chans: int) -> MobileNetV3:
    """Member ``member`` of :data:`SKIPNET_FAMILY`; ``width=None`` takes the member's width."""
    spec = SKIPNET_FAMILY[member]
    arch = replace(SKIPNET, head_hidden=spec.head_hidden)
    return MobileNetV3(arch, num_classes, spec.width if width is None else width, dropout, in_chans)


@register_model(input_size=(3, 224, 224), num_classes=1000,
                description="MobileNetV3-Large (Howard et al. 2019): 5.48M params, 217M MACs at 224")
def mobilenetv3_large(num_classes: int = 1000, width: float = 1.0, dropout: float = 0.2,
                      in_chans: int = 3) -> MobileNetV3:
    return MobileNetV3(MOBILENETV3_LARGE, num_classes, width, dropout, in_chans)


@register_model(input_size=(3, 224, 224), num_classes=1000,
                description="MobileNetV3-Small (Howard et al. 2019): 2.54M params, 57M MACs at 224")
def mobilenetv3_small(num_classes: int = 1000, width: float = 1.0, dropout: float = 0.2,
                      in_chans: int = 3) -> MobileNetV3:
    return MobileNetV3(MOBILENETV3_SMALL, num_classes, width, dropout, in_chans)


@register_model(input_size=(3, 224, 224), num_classes=1000,
                description="SkipNet-XS (Abrahamyan et al. 2021): width 0.5, 1024 head, 2.33M params, 76M MACs")
def skipnet_xs(num_classes: int = 1000, width: float | None = None, dropout: float = 0.2,
               in_chans: int = 3) -> MobileNetV3:
    return _skipnet("xs", num_classes, width, dropout, in_chans)


@register_model(input_size=(3, 224, 224), num_classes=1000,
                description="SkipNet-S (Abrahamyan et al. 2021): width 0.7, 1280 head, 3.69M params, 144M MACs")
def skipnet_s(num_classes: int = 1000, width: float | None = None, dropout: float = 0.2,
              in_chans: int = 3) -> MobileNetV3:
    return _skipnet("s", num_classes, width, dropout, in_chans)


@register_model(input_size=(3, 224, 224), num_classes=1000,
                description="SkipNet-M (Abrahamyan et al. 2021): width 1.0, 1280 head, 5.53M params, 237M MACs")
def skipnet_m(num_classes: int = 1000, width: float | None = None, dropout: float = 0.2,
              in_chans: int = 3) -> MobileNetV3:
    return _skipnet("m", num_classes, width, dropout, in_chans)


@register_model(input_size=(3, 224, 224), num_classes=1000,
                description="SkipNet-L (Abrahamyan et al. 2021): width 1.15, 1280 head, 7.13M params, 352M MACs")
def skipnet_l(num_classes: int = 1000, width: float | None = None, dropout: float = 0.2,
              in_chans: int = 3) -> MobileNetV3:
    return _skipnet("l", num_classes, width, dropout, in_chans)
