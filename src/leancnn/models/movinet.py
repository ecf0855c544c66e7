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

**Other architectures** (issue 22, the NAS space as data; :mod:`leancnn.search.movinet_space`): a
:class:`MovinetSpec` may also switch squeeze-excite off per layer (no ``se`` module, no ``pool_buffer`` state) and
use any odd kernel ``(kt, kh, kw)`` (the paper's space adds 1x7x7, 5x1x1 and 7x1x1); it has a one-line text form
(:meth:`MovinetSpec.to_string` / :meth:`MovinetSpec.from_string`), which ``movinet_arch`` / ``movinet_arch_stream``
take as ``arch`` (default A0), so a run with ``model.kwargs: {arch: ...}`` rebuilds from its checkpoint. They are
the same :class:`MoViNet`: the same state API, stream parity, inference form and ONNX export.

**Stream state** (stream models): ``logits, state = model.stream_step(frames, state)`` takes any number of
frames ``T >= 1`` and a plain dict of tensors from ``model.init_state(batch, height, width)``; whatever the
chunking, the logits equal those of the whole clip (``tests/test_movinet_stream.py``). The state, per layer
``block{b}_layer{l}_``: ``stream_buffer`` ``[B, E, kt-1, H', W']`` (the last ``kt - 1`` outputs of the spatial
conv, the temporal conv's past; (2+1)-D placement, as TF) and ``pool_buffer`` ``[B, E, 1, 1, 1]`` (the sum of the
SE's per-frame spatial means); ``head_pool_buffer`` ``[B, P, 1, 1, 1]`` (the sum of the head's per-frame means)
and ``frame_count`` (int64 ``[1]``; the cumulative means divide by it and the positional encoding starts at it).
Its size does not depend on the video's length.

**Inference form** (opt-in): ``model.fuse_for_inference()`` returns a :class:`FusedStreamMovinet` with the same
``stream_step`` / ``init_state`` / state dict and the same logits (float rounding; tested ≤ 1e-5 against the whole
clip), about 2× faster per frame on the CPU (A0-A2, one frame per step; ``docs/benchmarks.md``): BatchNorm and
ReZero folded into the convolutions, 2-D convolutions on the frames folded into the batch, channels-last, the
temporal convolutions as multiply-adds on the stream buffers. ``StreamingMovinet(model, fuse=True)`` streams
through it; ``leancnn.export.export_stream_step`` writes its graph to ONNX.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LeancnnError
from ..nn.causal import Conv3dSame, avg_pool2d_same, avg_pool_same, conv2d_same, cumulative_mean, stream_cumulative_mean
from ..nn.fold import fold_conv_bn
from ..nn.layers import make_divisible
from .registry import register_model

K13, K15, K33, K53 = (1, 3, 3), (1, 5, 5), (3, 3, 3), (5, 3, 3)
ARCH_INPUT_SIZE = (3, 16, 32, 32)  # default input of a spec read from text: the moving-digit clips (C, T, H, W)
_HEADER = re.compile(r"s(\d+)-p(\d+)-d(\d+)")
_BLOCK = re.compile(r"(\d+)s(\d+):(.*)")
_LAYER = re.compile(r"(\d+)k(\d)(\d)(\d)(n?)")


class ArchError(LeancnnError, ValueError):
    """A MoViNet architecture (a :class:`MovinetSpec` or its text) that cannot be built: one line naming the part."""


def layer_entry(entry) -> tuple[int, tuple[int, int, int], bool]:
    """``(expand, kernel, se)`` of one layer entry of ``MovinetSpec.blocks``: ``(expand, kernel)`` has
    squeeze-excite, ``(expand, kernel, se)`` says whether. Refuses a malformed entry (:class:`ArchError`)."""
    if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
        raise ArchError(f"a layer must be (expand, kernel) or (expand, kernel, se), got {entry!r}")
    expand, kernel, se = (*entry, True) if len(entry) == 2 else entry
    if isinstance(expand, bool) or not isinstance(expand, int) or expand < 1:
        raise ArchError(f"layer {tuple(entry)!r}: the expansion width must be a positive int, got {expand!r}")
    if not isinstance(kernel, (tuple, list)) or len(kernel) != 3 or any(
            isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in kernel):
        raise ArchError(f"layer {tuple(entry)!r}: the kernel must be (t, h, w) of odd positive ints, got {kernel!r}")
    if not isinstance(se, bool):
        raise ArchError(f"layer {tuple(entry)!r}: the squeeze-excite switch must be True or False, got {se!r}")
    return expand, tuple(kernel), se


def _positive(what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArchError(f"{what} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class MovinetSpec:
    """A MoViNet architecture: stem width, blocks, head projection width, classifier hidden width.

    ``blocks``: per block ``(out channels, first-layer spatial stride (1 or 2), layers)``, each layer
    ``(expand, (kt, kh, kw))`` (with squeeze-excite, as every published model) or ``(expand, (kt, kh, kw), se)``
    (``se=False``: no squeeze-excite, so no ``pool_buffer`` state). Kernel sizes are odd; ``kh = kw = 1`` is a
    per-channel scale (the NAS space's 5x1x1 / 7x1x1 temporal-only kernels).

    **Text** (:meth:`to_string` / :meth:`from_string`; ``model.kwargs.arch`` of ``movinet_arch[_stream]``):
    ``s{stem}-p{project}-d{dense}``, then per block ``|{out}s{stride}:`` and its layers separated by ``,``, each
    ``{expand}k{t}{h}{w}`` (one digit per kernel size) with a trailing ``n`` when it has no squeeze-excite. A0::

        s8-p480-d2048|8s2:24k155|32s2:80k333,80k333,80k333|56s2:184k533,112k333,184k333|
        56s1:184k533,184k333,184k333,184k333|104s2:384k533,280k155,280k155,280k155

    (one line, no spaces). ``input_size`` (the registered default input) is not part of the text: ``from_string``
    takes it as an argument (default :data:`ARCH_INPUT_SIZE`), so ``MovinetSpec.from_string(s.to_string(),
    s.input_size) == s`` for every spec whose layers are written in the canonical form (two entries with
    squeeze-excite, three with ``False`` without), as the published ones are."""

    stem: int
    blocks: tuple  # (out channels, first-layer spatial stride, ((expand, kernel[, se]), ...))
    project: int
    dense: int = 2048
    input_size: tuple = (3, 50, 172, 172)  # the paper's eval input (C, T, H, W)

    def check(self) -> "MovinetSpec":
        """This spec if it can be built; otherwise :class:`ArchError` naming the block (0-based, as the state
        names ``block{b}_layer{l}_``) and what is wrong."""
        for what, v in (("stem", self.stem), ("project", self.project), ("dense", self.dense)):
            _positive(what, v)
        if not isinstance(self.blocks, (tuple, list)) or not self.blocks:
            raise ArchError(f"blocks must be a non-empty tuple of (out, stride, layers), got {self.blocks!r}")
        for b, block in enumerate(self.blocks):
            if not isinstance(block, (tuple, list)) or len(block) != 3:
                raise ArchError(f"block {b} must be (out channels, stride, layers), got {block!r}")
            out, stride, layers = block
            _positive(f"block {b}: out channels", out)
            if isinstance(stride, bool) or stride not in (1, 2):
                raise ArchError(f"block {b}: the stride must be 1 or 2, got {stride!r}")
            if not isinstance(layers, (tuple, list)) or not layers:
                raise ArchError(f"block {b}: needs at least one layer, got {layers!r}")
            for i, entry in enumerate(layers):
                try:
                    layer_entry(entry)
                except ArchError as e:
                    raise ArchError(f"block {b} layer {i}: {e}") from None
        return self

    def to_string(self) -> str:
        """The architecture as one line of text (the class docstring); :meth:`from_string` reads it back."""
        self.check()
        parts = [f"s{self.stem}-p{self.project}-d{self.dense}"]
        for b, (out, stride, layers) in enumerate(self.blocks):
            texts = []
            for i, entry in enumerate(layers):
                expand, kernel, se = layer_entry(entry)
                if max(kernel) > 9:
                    raise ArchError(f"block {b} layer {i}: kernel {kernel} has no text form (sizes above 9)")
                texts.append(f"{expand}k{''.join(map(str, kernel))}{'' if se else 'n'}")
            parts.append(f"{out}s{stride}:{','.join(texts)}")
        return "|".join(parts)

    @classmethod
    def from_string(cls, text: str, input_size: tuple = ARCH_INPUT_SIZE) -> "MovinetSpec":
        """The spec written by :meth:`to_string` (class docstring), in canonical form (layers with squeeze-excite
        as ``(expand, kernel)``, without as ``(expand, kernel, False)``). Malformed text: one-line
        :class:`ArchError` (a ``ValueError``) quoting the part that is wrong."""
        if not isinstance(text, str):
            raise ArchError(f"a MoViNet arch must be a string, got {type(text).__name__}")
        example = "e.g. " + SPECS["a0"].to_string()[:40] + "..."
        parts = text.strip().split("|")
        head = _HEADER.fullmatch(parts[0])
        if head is None:
            raise ArchError(f"arch {text[:60]!r}: the header {parts[0][:40]!r} is not s{{stem}}-p{{project}}-d{{dense}} "
                            f"({example})")
        if len(parts) < 2:
            raise ArchError(f"arch {text[:60]!r}: no blocks after the header ({example})")
        stem, project, dense = map(int, head.groups())
        blocks = []
        for part in parts[1:]:
            block = _BLOCK.fullmatch(part)
            if block is None:
                raise ArchError(f"arch: block {part[:40]!r} is not {{out}}s{{stride}}:{{layer}},... ({example})")
            layers = []
            for layer in block.group(3).split(","):
                m = _LAYER.fullmatch(layer)
                if m is None:
                    raise ArchError(f"arch: layer {layer[:30]!r} of block {part[:40]!r} is not {{expand}}k{{t}}{{h}}{{w}} "
                                    "with an optional n for no squeeze-excite (e.g. 80k333 or 80k155n)")
                expand, kt, kh, kw = map(int, m.groups()[:4])
                layers.append((expand, (kt, kh, kw)) if not m.group(5) else (expand, (kt, kh, kw), False))
            blocks.append((int(block.group(1)), int(block.group(2)), tuple(layers)))
        spec = cls(stem, tuple(blocks), project, dense, input_size=tuple(input_size))
        try:
            return spec.check()
        except ArchError as e:
            raise ArchError(f"arch {text[:60]!r}: {e}") from None


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

    def stream(self, x: torch.Tensor, buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The causal conv on a sub-clip with its stream buffer, then BN and the activation."""
        y, buffer = self[0].stream(x, buffer)
        for module in list(self)[1:]:
            y = module(y)
        return y, buffer


def positional_encoding(channels: int, frames: int, start: int | torch.Tensor = 0, device=None,
                        dtype=None) -> torch.Tensor:
    """[1, C, T, 1, 1] for positions ``start .. start + frames - 1`` (``start`` may be a tensor, e.g. the frame
    count of a stream state): angle = pos / 10000^(2 floor(i/2) / C); sin of the even-index angles concatenated
    with cos of the odd-index angles (TF MoViNet's layout: concatenated, not interleaved). Computed in ``dtype``
    by the same operations whatever ``start`` is, so a stream and a whole clip get bit-identical encodings."""
    dtype = dtype or torch.get_default_dtype()
    i = torch.arange(channels, dtype=torch.float64)
    inv_freq = torch.pow(10000.0, -2 * torch.div(i, 2, rounding_mode="floor") / channels).to(device, dtype)
    pos = torch.arange(frames, device=device, dtype=dtype)
    if isinstance(start, torch.Tensor):
        pos = pos + start.to(device, dtype).reshape(-1)[:1]
    elif start:
        pos = pos + start
    angle = pos.view(-1, 1) * inv_freq.view(1, -1)  # [T, C]
    enc = torch.cat([torch.sin(angle[:, 0::2]), torch.cos(angle[:, 1::2])], dim=1)
    return enc.t().reshape(1, channels, frames, 1, 1)


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

    def _excite(self, x: torch.Tensor, s: torch.Tensor, start) -> torch.Tensor:
        if self.pos_scale is not None:
            s = s + self.pos_scale * positional_encoding(s.shape[1], s.shape[2], start, s.device, s.dtype)
        return x * self.gate(self.se_expand(self.act(self.se_reduce(s))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stream:
            frame = x.mean((3, 4), keepdim=True)  # [B, C, T, 1, 1]
            return self._excite(x, torch.cat([cumulative_mean(frame, 2), frame], dim=1), 0)
        return self._excite(x, x.mean((2, 3, 4), keepdim=True), 0)

    def stream_step(self, x: torch.Tensor, pool_sum: torch.Tensor, count: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The causal SE on a sub-clip: the cumulative mean continues from ``pool_sum`` (the sum of the spatial
        means of the ``count`` earlier frames) and the positions from ``count``. Returns (output, new sum)."""
        frame = x.mean((3, 4), keepdim=True)
        mean, pool_sum = stream_cumulative_mean(frame, pool_sum, count)
        return self._excite(x, torch.cat([mean, frame], dim=1), count), pool_sum


class MovinetLayer(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, expand: int, kernel: tuple, stride: int, stream: bool,
                 positional: bool, se: bool = True):
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
        self.se = SqueezeExcite3d(expand, act, gate, stream, positional) if se else None
        self.projection = ConvBnAct3d(expand, out_ch)
        self.rezero = nn.Parameter(torch.zeros(()))
        self.stride = stride
        self.skip = None if (in_ch == out_ch and stride == 1) else ConvBnAct3d(in_ch, out_ch)

    def _residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = self.projection(y) * self.rezero
        if self.skip is not None:
            x = self.skip(avg_pool_same(x) if self.stride > 1 else x)
        return x + y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.feature(self.expansion(x))
        if self.feature_temporal is not None:
            y = self.feature_temporal(y)
        return self._residual(x, y if self.se is None else self.se(y))

    def state_shapes(self, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        """This layer's stream state for inputs of ``height x width``: the temporal conv's buffer (at the
        spatial conv's output resolution, (2+1)-D placement; only when ``kt > 1``) and the SE's running sum (only
        with squeeze-excite)."""
        shapes = {}
        if self.feature_temporal is not None:  # TF 'same': ceil(size / stride)
            shapes["stream_buffer"] = self.feature_temporal[0].buffer_shape(batch, -(-height // self.stride),
                                                                            -(-width // self.stride))
        if self.se is not None:
            shapes["pool_buffer"] = (batch, self.se.se_expand.out_channels, 1, 1, 1)
        return shapes

    def stream_step(self, x: torch.Tensor, state: dict[str, torch.Tensor], count: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        new = {}
        y = self.feature(self.expansion(x))
        if self.feature_temporal is not None:
            y, new["stream_buffer"] = self.feature_temporal.stream(y, state["stream_buffer"])
        if self.se is not None:
            y, new["pool_buffer"] = self.se.stream_step(y, state["pool_buffer"], count)
        return self._residual(x, y), new


class _StreamStateApi(nn.Module):
    """The clip and stream-state checks shared by :class:`MoViNet` and its inference form
    :class:`FusedStreamMovinet`: both have ``spec``, ``stream``, ``in_chans`` and ``blocks`` (stages of layers
    with ``stride`` and ``state_shapes``), so both take and return the same state dict."""

    def _check_clip(self, x, name: str = "x") -> None:
        c = self.in_chans
        if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[1] != c or 0 in x.shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected a clip [B, {c}, T, H, W] with B, T, H, W >= 1, got {got}")

    def _layers(self):
        for b, stage in enumerate(self.blocks):
            for i, layer in enumerate(stage):
                yield f"block{b}_layer{i}_", layer

    def state_shapes(self, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        """Name → shape of every state tensor for ``batch`` clips of ``height x width`` frames. None of them
        depends on the number of frames: the state is the same size after 1 frame or 10,000."""
        self._check_stream("state_shapes")
        for name, v in (("batch", batch), ("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        shapes = {}
        h, w = -(-height // 2), -(-width // 2)  # after the stem (stride 2, TF 'same')
        for prefix, layer in self._layers():
            shapes.update({prefix + k: v for k, v in layer.state_shapes(batch, h, w).items()})
            h, w = -(-h // layer.stride), -(-w // layer.stride)
        shapes["head_pool_buffer"] = (batch, self.spec.project, 1, 1, 1)
        shapes["frame_count"] = (1,)
        return shapes

    def init_state(self, batch: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """The state at the start of a video: zero buffers (= causal zero padding), zero sums, frame count 0
        (int64); on the model's device and in its dtype."""
        p = next(self.parameters())
        return {k: torch.zeros(v, device=p.device, dtype=torch.int64 if k == "frame_count" else p.dtype)
                for k, v in self.state_shapes(batch, height, width).items()}

    def _check_stream(self, what: str) -> None:
        if not self.stream:
            raise ValueError(f"{what}: {getattr(self, 'model_name', 'this model')} is a base (non-causal) MoViNet; "
                             "streaming needs a stream model (movinet_aX_stream)")

    def check_state(self, state, frames: torch.Tensor) -> None:
        """Refuse a state that does not belong to this model, batch size or resolution (one-line ValueError).
        Skipped while tracing for ONNX (the shapes are then traced values; the export fixes them)."""
        if torch.jit.is_tracing():
            return
        name = getattr(self, "model_name", "this model")
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict of tensors from {name}.init_state(), got {type(state).__name__}")
        b, _, _, h, w = frames.shape
        want = self.state_shapes(b, h, w)
        missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
        if missing or extra:
            detail = "; ".join(f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                               for label, keys in (("missing", missing), ("unexpected", extra)) if keys)
            raise ValueError(f"state does not belong to {name} ({detail})")
        p = next(self.parameters())
        for key, shape in want.items():
            t = state[key]
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"state[{key!r}] must be a tensor, got {type(t).__name__}")
            if tuple(t.shape) != shape:
                if key != "frame_count" and t.ndim == len(shape) and t.shape[0] != b:
                    why = f"a state for batch size {t.shape[0]}, frames have batch size {b}"
                elif key != "frame_count" and t.ndim == len(shape):
                    why = f"a state for another resolution or model, frames are {h}x{w}"
                else:
                    why = "a state from another model"
                raise ValueError(f"state[{key!r}] has shape {tuple(t.shape)}, {name} needs {shape}: {why}")
            if t.device != p.device:
                raise ValueError(f"state[{key!r}] is on {t.device}, the model on {p.device}")
        if state["frame_count"].dtype.is_floating_point:
            raise ValueError("state['frame_count'] must be an integer tensor")


class MoViNet(_StreamStateApi):
    """A MoViNet classifier on clips ``[B, 3, T, H, W]`` (any T ≥ 1, any H, W); ``forward_features`` gives the
    head's feature map ``[B, project, T, H', W']``, ``forward_head`` pools it over all frames and classifies."""

    def __init__(self, spec: MovinetSpec, num_classes: int = 600, stream: bool = False, positional: bool = False,
                 dropout: float = 0.2, in_chans: int = 3):
        super().__init__()
        act = nn.Hardswish if stream else nn.SiLU
        if not isinstance(spec, MovinetSpec):
            raise ArchError(f"spec must be a MovinetSpec, got {type(spec).__name__}")
        spec.check()
        self.stream, self.spec, self.in_chans = stream, spec, in_chans
        self.stem = ConvBnAct3d(in_chans, spec.stem, (1, 3, 3), (1, 2, 2), act=act)
        blocks, in_ch = [], spec.stem
        for out_ch, stride, layers in spec.blocks:
            stage = []
            for i, entry in enumerate(layers):
                expand, kernel, se = layer_entry(entry)
                stage.append(MovinetLayer(in_ch, out_ch, expand, kernel, stride if i == 0 else 1, stream, positional,
                                          se))
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

    # ------------------------------------------------------------------------------------- whole clip

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_clip(x)
        return self.head(self.blocks(self.stem(x)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features.mean((2, 3, 4), keepdim=True)).flatten(1)

    def forward(self, x: torch.Tensor, state: dict[str, torch.Tensor] | None = None):
        """Logits of whole clips ``[B, 3, T, H, W]``; with a ``state`` (stream models) this is
        :meth:`stream_step` and returns ``(logits, new state)`` (so DDP and ``torch.compile`` see it as forward)."""
        if state is not None:
            return self.stream_step(x, state)
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------------------------- stream

    def fuse_for_inference(self, memory_format: torch.memory_format = torch.channels_last) -> FusedStreamMovinet:
        """A faster copy of this stream model for inference (:class:`FusedStreamMovinet`): same logits (to
        float rounding) and the same state dict; this model is not changed."""
        return FusedStreamMovinet(self, memory_format)

    def stream_step(self, frames: torch.Tensor, state: dict[str, torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Feed the next ``T >= 1`` frames ``[B, 3, T, H, W]`` of a video. ``state``: from :meth:`init_state` or
        the previous call (``None`` starts a video). Returns the logits for every frame so far (the classifier
        on the running mean of the head's features) and the new state; the input state is not modified, so it
        can be kept to branch from. Any chunking of a clip gives the logits of the whole clip."""
        self._check_stream("stream_step")
        self._check_clip(frames, "frames")
        if state is None:
            state = self.init_state(frames.shape[0], frames.shape[3], frames.shape[4])
        else:
            self.check_state(state, frames)
        count = state["frame_count"]
        new: dict[str, torch.Tensor] = {}
        x = self.stem(frames)
        for prefix, layer in self._layers():
            n = len(prefix)
            mine = {k[n:]: v for k, v in state.items() if k.startswith(prefix)}
            x, out = layer.stream_step(x, mine, count)
            new.update({prefix + k: v for k, v in out.items()})
        x = self.head(x)
        head_sum = state["head_pool_buffer"] + x.mean((3, 4), keepdim=True).sum(2, keepdim=True)
        # a tensor, not an int operand: PT2E quantization turns scalar operands into float constants
        new_count = count + torch.full_like(count, frames.shape[2])
        new["head_pool_buffer"] = head_sum
        new["frame_count"] = new_count
        pooled = head_sum / new_count.to(head_sum.dtype).reshape(1, 1, 1, 1, 1)
        return self.classifier(pooled).flatten(1), new


# ------------------------------------------------------------------------------------- inference form


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=False)


def _folded(seq: ConvBnAct3d, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight without its temporal axis when that is 1, bias) of ``seq``'s conv with its BatchNorm folded in,
    times ``scale`` (a ReZero scalar) if given."""
    conv = fold_conv_bn(seq[0], seq[1])
    w, b = conv.weight.detach(), conv.bias.detach()
    if scale is not None:
        w, b = w * scale.detach(), b * scale.detach()
    return (w.squeeze(2) if w.shape[2] == 1 else w), b


def _check_acts(layer: nn.Module, kinds: tuple) -> None:
    for m in layer.modules():
        if isinstance(m, (nn.ReLU, nn.SiLU, nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid, nn.GELU)) \
                and not isinstance(m, kinds):
            raise ValueError(f"cannot fuse a MoViNet with {type(m).__name__} activations")


class FusedMovinetLayer(nn.Module):
    """One stream layer for inference, on frames ``[B*T, C, H, W]``: BatchNorms folded into the convolutions,
    the ReZero scalar into the projection, 2-D convolutions for the 1×1 and 1×k×k ones, the causal temporal
    convolution as ``kt`` multiply-adds over [stream buffer ‖ new frames], the squeeze-excite on pooled vectors
    as two matrix products, activations in place."""

    def __init__(self, layer: MovinetLayer):
        super().__init__()
        if layer.training:
            raise ValueError("fuse an eval-mode model (its BatchNorm statistics are folded)")
        self.stride = layer.stride
        self.expand_weight, self.expand_bias = map(_frozen, _folded(layer.expansion))
        self.spatial_weight, self.spatial_bias = map(_frozen, _folded(layer.feature))
        self.channels = self.spatial_weight.shape[0]
        self.kt = 1
        if layer.feature_temporal is not None:
            w, b = _folded(layer.feature_temporal)  # [E, 1, kt, 1, 1]
            self.kt = w.shape[2]
            self.temporal_weight, self.temporal_bias = _frozen(w.flatten(1).t()), _frozen(b)  # [kt, E], [E]
        se = layer.se
        self.has_se = se is not None
        self.pos_scale = None
        if se is not None:
            self.se_reduce_weight = _frozen(se.se_reduce.weight.flatten(1))
            self.se_reduce_bias = _frozen(se.se_reduce.bias)
            self.se_expand_weight = _frozen(se.se_expand.weight.flatten(1))
            self.se_expand_bias = _frozen(se.se_expand.bias)
            self.pos_scale = None if se.pos_scale is None else _frozen(se.pos_scale)
        self.proj_weight, self.proj_bias = map(_frozen, _folded(layer.projection, layer.rezero))
        self.skip_weight = self.skip_bias = None
        if layer.skip is not None:
            self.skip_weight, self.skip_bias = map(_frozen, _folded(layer.skip))

    def state_shapes(self, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        shapes = {}
        if self.kt > 1:
            shapes["stream_buffer"] = (batch, self.channels, self.kt - 1, -(-height // self.stride),
                                       -(-width // self.stride))
        if self.has_se:
            shapes["pool_buffer"] = (batch, self.channels, 1, 1, 1)
        return shapes

    def _temporal(self, y: torch.Tensor, buffer: torch.Tensor, b: int, t: int, channels_last: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal kt×1×1 depthwise conv (BN folded) + hard-swish over [buffer ‖ y]; returns (output frames,
        new buffer = the last kt - 1 frames of [buffer ‖ y]). Channels-last: frames as ``[B, T, H, W, E]`` views
        (channels innermost, so each tap is one vectorised multiply-add over contiguous memory); contiguous:
        ``[B, E, T, H, W]`` (the layout an exported graph keeps). One frame (the streaming case) copies only the
        new buffer, not [buffer ‖ frame]."""
        n, e, h, w = y.shape
        kt, weight, bias = self.kt, self.temporal_weight, self.temporal_bias
        if channels_last:
            past, frames = buffer.permute(0, 2, 3, 4, 1), y.permute(0, 2, 3, 1).reshape(b, t, h, w, e)
            if t == 1:
                out = torch.addcmul(bias, frames, weight[kt - 1])
                for k in range(kt - 1):
                    out.addcmul_(past[:, k:k + 1], weight[k])
                new = torch.cat([past[:, 1:], frames], 1)
            else:
                full = torch.cat([past, frames], 1)
                out = torch.addcmul(bias, full[:, :t], weight[0])
                for k in range(1, kt):
                    out.addcmul_(full[:, k:k + t], weight[k])
                new = full[:, t:].clone()  # not a view: the state would keep all of full alive
            out = F.hardswish(out, inplace=True).view(n, h, w, e).permute(0, 3, 1, 2)
            return out, new.permute(0, 4, 1, 2, 3)
        frames = y.view(b, 1, e, h, w).transpose(1, 2) if t == 1 else y.view(b, t, e, h, w).transpose(1, 2)
        full = torch.cat([buffer, frames], 2)
        wk = weight.t().reshape(e, kt, 1, 1)
        out = full[:, :, :t] * wk[:, :1] + bias.view(e, 1, 1, 1)
        for k in range(1, kt):
            out = out + full[:, :, k:k + t] * wk[:, k:k + 1]
        out = F.hardswish(out)
        if t == 1:
            return out.reshape(n, e, h, w), full[:, :, 1:]
        return out.transpose(1, 2).reshape(n, e, h, w), full[:, :, t:].clone()

    def _excite(self, y: torch.Tensor, pool_sum: torch.Tensor, step: dict, b: int, t: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The 2plus3d squeeze-excite: [cumulative mean ‖ frame mean] (+ positional encoding) → gate per frame.
        ``step`` holds what every layer of this step shares: ``counts`` ``[1, T, 1]`` (frames seen after each
        new frame), ``count`` (the state's frame count) and a cache of positional encodings by width."""
        n, e = y.shape[:2]
        frame = y.mean((2, 3), keepdim=True).view(b, t, e)  # keepdim: the form XNNPACK delegates
        sums = pool_sum.view(b, 1, e) + (frame if t == 1 else frame.cumsum(1))
        s = torch.cat([sums / step["counts"], frame], 2)  # [B, T, 2E]
        if self.pos_scale is not None:
            enc = step["encodings"].get(2 * e)
            if enc is None:
                enc = step["encodings"][2 * e] = positional_encoding(2 * e, t, step["count"], y.device,
                                                                     y.dtype).view(2 * e, t).t()
            s = s + self.pos_scale * enc
        g = F.hardswish(F.linear(s, self.se_reduce_weight, self.se_reduce_bias), inplace=True)
        g = F.hardsigmoid(F.linear(g, self.se_expand_weight, self.se_expand_bias), inplace=True)
        return y * g.view(n, e, 1, 1), (sums if t == 1 else sums[:, t - 1:]).reshape(b, e, 1, 1, 1)

    def stream_step(self, x: torch.Tensor, state: dict[str, torch.Tensor], step: dict, b: int, t: int,
                    channels_last: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        new = {}
        y = F.hardswish(F.conv2d(x, self.expand_weight, self.expand_bias), inplace=True)
        y = F.hardswish(conv2d_same(y, self.spatial_weight, self.spatial_bias, self.stride, self.channels),
                        inplace=True)
        if self.kt > 1:
            y, new["stream_buffer"] = self._temporal(y, state["stream_buffer"], b, t, channels_last)
        if self.has_se:
            y, new["pool_buffer"] = self._excite(y, state["pool_buffer"], step, b, t)
        y = F.conv2d(y, self.proj_weight, self.proj_bias)  # times the ReZero scalar (folded)
        if self.skip_weight is not None:
            x = F.conv2d(avg_pool2d_same(x) if self.stride > 1 else x, self.skip_weight, self.skip_bias)
        return y.add_(x), new


class FusedStreamMovinet(_StreamStateApi):
    """A stream MoViNet in the form that runs fastest at inference (``model.fuse_for_inference()``): the same
    ``stream_step(frames, state)`` / ``forward(clip[, state])`` / ``init_state`` and the same state dict as the
    model it was made from (states pass freely between the two), the same logits to float rounding (tested
    ≤ 1e-5 against the whole clip), but no BatchNorm (folded into the convolutions), 2-D convolutions on the
    frames folded into the batch, the temporal convolutions as multiply-adds on the stream buffer, and
    activations in place. Eval only: no gradients (its tensors do not require them), no dropout.

    ``memory_format``: ``torch.channels_last`` (default; oneDNN's native layout: the frames stay NHWC from end to
    end, the stream buffers come back in ``channels_last_3d`` strides) or ``torch.contiguous_format`` (NCHW
    throughout; the form :func:`leancnn.export.export_stream_step` writes to ONNX, which has no strides).
    ``docs/benchmarks.md`` measures what each step of this buys."""

    def __init__(self, model: MoViNet, memory_format: torch.memory_format = torch.channels_last):
        super().__init__()
        if not isinstance(model, MoViNet):
            raise ValueError(f"model must be a MoViNet, got {type(model).__name__}")
        model._check_stream("fuse_for_inference")
        if memory_format not in (torch.channels_last, torch.contiguous_format):
            raise ValueError(f"memory_format must be torch.channels_last or torch.contiguous_format, "
                             f"got {memory_format}")
        _check_acts(model.blocks, (nn.Hardswish, nn.Hardsigmoid))
        self.stream, self.spec, self.in_chans = True, model.spec, model.in_chans
        self.channels_last = memory_format is torch.channels_last
        if hasattr(model, "model_name"):
            self.model_name = model.model_name
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            self.stem_weight, self.stem_bias = map(_frozen, _folded(model.stem))
            self.blocks = nn.ModuleList(nn.ModuleList(FusedMovinetLayer(layer) for layer in stage)
                                        for stage in model.blocks)
            self.head_weight, self.head_bias = map(_frozen, _folded(model.head))
        finally:
            for m, mode in modes.items():
                m.training = mode
        dense, _, _, out = model.classifier
        if not isinstance(model.classifier[1], nn.SiLU):
            raise ValueError("cannot fuse a MoViNet whose classifier activation is not SiLU")
        self.dense_weight, self.dense_bias = _frozen(dense.weight.flatten(1)), _frozen(dense.bias)
        self.out_weight, self.out_bias = _frozen(out.weight.flatten(1)), _frozen(out.bias)
        self.num_features = model.num_features
        if self.channels_last:
            for name, p in self.named_parameters():
                if p.ndim == 4:
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
        self.eval()

    def train(self, mode: bool = True):
        if mode:
            raise ValueError("a FusedStreamMovinet is for inference only; train the model it was made from")
        return super().train(False)

    def forward(self, x: torch.Tensor, state: dict[str, torch.Tensor] | None = None):
        """With a ``state``: :meth:`stream_step`. Without: the logits of whole clips (a stream from zero state,
        which equals the causal whole-clip pass of the original model)."""
        if state is not None:
            return self.stream_step(x, state)
        return self.stream_step(x)[0]

    @torch.no_grad()
    def stream_step(self, frames: torch.Tensor, state: dict[str, torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`MoViNet.stream_step`: the next ``T >= 1`` frames ``[B, 3, T, H, W]`` and the state → (logits of
        every frame so far, new state); the input state is not modified."""
        self._check_clip(frames, "frames")
        b, c, t, h, w = frames.shape
        if state is None:
            state = self.init_state(b, h, w)
        else:
            self.check_state(state, frames)
        count = state["frame_count"]
        cl = self.channels_last
        if cl:  # [B*T, C, H, W] in channels-last strides
            x = frames.permute(0, 2, 3, 4, 1).reshape(b * t, h, w, c).permute(0, 3, 1, 2)
        else:
            x = frames.view(b, c, h, w) if t == 1 else frames.transpose(1, 2).reshape(b * t, c, h, w)
        x = F.hardswish(conv2d_same(x, self.stem_weight, self.stem_bias, 2), inplace=True)
        counts = count.to(x.dtype).reshape(-1) + torch.arange(1, t + 1, device=x.device, dtype=x.dtype)
        step = {"count": count, "counts": counts.view(1, t, 1), "encodings": {}}
        new: dict[str, torch.Tensor] = {}
        for prefix, layer in self._layers():
            n = len(prefix)
            mine = {k[n:]: v for k, v in state.items() if k.startswith(prefix)}
            x, out = layer.stream_step(x, mine, step, b, t, cl)
            new.update({prefix + k: v for k, v in out.items()})
        x = F.hardswish(F.conv2d(x, self.head_weight, self.head_bias), inplace=True)
        p = x.shape[1]
        frame = x.mean((2, 3), keepdim=True).view(b, t, p)
        head_sum = state["head_pool_buffer"].view(b, p) + (frame.view(b, p) if t == 1 else frame.sum(1))
        new_count = count + torch.full_like(count, t)  # (see MoViNet.stream_step: int8 export)
        new["head_pool_buffer"] = head_sum.view(b, p, 1, 1, 1)
        new["frame_count"] = new_count
        pooled = head_sum / new_count.to(head_sum.dtype).reshape(1, 1)
        hidden = F.silu(F.linear(pooled, self.dense_weight, self.dense_bias), inplace=True)
        return F.linear(hidden, self.out_weight, self.out_bias), new


def state_nbytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes held by a stream state."""
    return sum(t.numel() * t.element_size() for t in state.values())


def detach_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same state cut from the autograd graph (sub-clip training: no gradient flows into earlier clips)."""
    return {k: v.detach() for k, v in state.items()}


class StreamingMovinet:
    """A stream model with its state kept for you: ``logits = s(frames)`` feeds the next frames of the current
    video (``[B, 3, T, H, W]``, or one frame ``[B, 3, H, W]``); ``s.reset()`` starts a new video (needed before
    a batch size or resolution change, which is otherwise refused). Runs under ``torch.inference_mode``.
    ``fuse=True`` streams through ``model.fuse_for_inference()`` (the same logits, faster; a copy made now, so
    later changes to ``model``'s weights are not seen); a :class:`FusedStreamMovinet` may also be given."""

    def __init__(self, model: MoViNet | FusedStreamMovinet, fuse: bool = False):
        if not isinstance(model, (MoViNet, FusedStreamMovinet)):
            raise ValueError(f"model must be a MoViNet, got {type(model).__name__}")
        model._check_stream("StreamingMovinet")
        if fuse and isinstance(model, MoViNet):
            model = model.fuse_for_inference()
        self.model = model.eval()
        self.state: dict[str, torch.Tensor] | None = None

    def reset(self) -> None:
        self.state = None

    @property
    def frames_seen(self) -> int:
        return 0 if self.state is None else int(self.state["frame_count"].item())

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if isinstance(frames, torch.Tensor) and frames.ndim == 4:
            frames = frames.unsqueeze(2)
        with torch.inference_mode():
            logits, self.state = self.model.stream_step(frames, self.state)
        return logits


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

A0_ARCH = SPECS["a0"].to_string()


def _register_arch(stream: bool) -> None:
    """``movinet_arch[_stream]``: any architecture of the MoViNet space, given as ``arch`` (the text of
    :meth:`MovinetSpec.to_string`), so a run's ``model.kwargs: {arch: ...}`` rebuilds it from a checkpoint.
    Registered at the moving-digit clips' size (:data:`ARCH_INPUT_SIZE`), so tables over every model stay fast."""
    kind = "stream: causal (2+1)D, 2plus3d SE" if stream else "base: 3D depthwise, global SE"

    if stream:
        def build(num_classes: int = 10, arch: str = A0_ARCH, dropout: float = 0.2, in_chans: int = 3,
                  positional: bool = False) -> MoViNet:
            return MoViNet(MovinetSpec.from_string(arch), num_classes, True, positional, dropout, in_chans)
    else:
        def build(num_classes: int = 10, arch: str = A0_ARCH, dropout: float = 0.2, in_chans: int = 3) -> MoViNet:
            return MoViNet(MovinetSpec.from_string(arch), num_classes, False, False, dropout, in_chans)

    build.__name__ = f"movinet_arch{'_stream' if stream else ''}"
    register_model(input_size=ARCH_INPUT_SIZE, num_classes=10,
                   description=f"MoViNet from an architecture string (arch=..., default A0), {kind}")(build)


_register_arch(stream=False)
_register_arch(stream=True)

__all__ = ["A0_ARCH", "ARCH_INPUT_SIZE", "ArchError", "FusedStreamMovinet", "MoViNet", "MovinetSpec", "SPECS",
           "StreamingMovinet", "detach_state", "layer_entry", "positional_encoding", "state_nbytes"]
