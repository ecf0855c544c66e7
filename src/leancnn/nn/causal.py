"""3-D convolution pieces for video networks: TF-"same" spatial padding, causal (or centred) temporal padding,
average pooling that leaves padding out of the mean, and a causal cumulative mean over time.

Tensors are ``[B, C, T, H, W]``. TF's "same" padding for a kernel ``k`` and stride ``s`` on a length ``n`` pads
``max(k - ((n - 1) mod s + 1), 0)`` in total, ``floor`` of it at the start and the rest at the end, so a stride-2
layer gives ``ceil(n / 2)`` outputs (PyTorch's symmetric padding would shift the sampling grid by one pixel).
Causal temporal padding puts all ``kt - 1`` zero frames in front, so output frame ``t`` sees frames ``<= t``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'same' padding (start, end) along one axis."""
    total = max(kernel - ((size - 1) % stride + 1), 0)
    return total // 2, total - total // 2


class Conv3dSame(nn.Conv3d):
    """``nn.Conv3d`` with TF-'same' spatial padding computed from the input size, and temporal padding that is
    either centred (``causal=False``, odd kernels) or all in front (``causal=True``). The module's own
    ``padding`` stays 0; the parameters are those of a plain ``Conv3d``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size, stride=1, groups: int = 1, bias: bool = False,
                 causal: bool = False):
        super().__init__(in_ch, out_ch, kernel_size, stride, padding=0, groups=groups, bias=bias)
        self.causal = causal

    def temporal_pads(self) -> tuple[int, int]:
        kt = self.kernel_size[0]
        return (kt - 1, 0) if self.causal else ((kt - 1) // 2, kt // 2)

    def _padded_conv(self, x: torch.Tensor, front: int, back: int) -> torch.Tensor:
        (_, kh, kw), (_, sh, sw) = self.kernel_size, self.stride
        top, bottom = same_pads(x.shape[3], kh, sh)
        left, right = same_pads(x.shape[4], kw, sw)
        if top or bottom or left or right or front or back:
            x = F.pad(x, (left, right, top, bottom, front, back))
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected a video tensor [B, C, T, H, W], got shape {tuple(x.shape)}")
        return self._padded_conv(x, *self.temporal_pads())

    def buffer_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """Shape of the stream buffer for inputs of ``height x width``: the last ``kt - 1`` input frames."""
        return batch, self.in_channels, self.kernel_size[0] - 1, height, width

    def stream(self, x: torch.Tensor, buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The causal conv on a sub-clip whose past is ``buffer`` (the last ``kt - 1`` input frames, zeros at
        the start of a video): valid in time, so the output has one frame per input frame, exactly what the
        whole clip with causal zero padding gives at those frames. Returns ``(output, new buffer)``; the new
        buffer is the last ``kt - 1`` frames of ``[buffer, x]`` (older buffer frames roll forward when the
        sub-clip is shorter than the buffer), its own tensor when ``x`` has several frames (so a state holds
        ``kt - 1`` frames per layer whatever the sub-clip length)."""
        if not self.causal:
            raise ValueError("only a causal convolution has a stream buffer")
        full = torch.cat([buffer, x], dim=2)
        keep = self.kernel_size[0] - 1
        new = full[:, :, full.shape[2] - keep:]
        # a copy when the sub-clip has several frames: a view would keep all of [buffer, x] alive in the state
        return self._padded_conv(full, 0, 0), (new.clone() if x.shape[2] > 1 else new)


def conv2d_same(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 1,
                groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` with TF-'same' padding on ``[N, C, H, W]`` (a clip's frames folded into the batch): the
    (1, k, k) convolutions of a video network, frame by frame. Symmetric padding goes to the convolution itself
    (no padded copy); only the stride-2 layers on even sizes (one extra pixel at the end) pad explicitly."""
    kh, kw = weight.shape[2], weight.shape[3]
    top, bottom = same_pads(x.shape[2], kh, stride)
    left, right = same_pads(x.shape[3], kw, stride)
    if top == bottom and left == right:
        return F.conv2d(x, weight, bias, stride, (top, left), 1, groups)
    return F.conv2d(pad2d(x, (left, right, top, bottom)), weight, bias, stride, 0, 1, groups)


def pad2d(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Zero padding ``(left, right, top, bottom)`` of ``[N, C, H, W]`` that keeps a channels-last input
    channels-last (``F.pad`` returns it contiguous, which sends every later op through NCHW kernels)."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return F.pad(x, pads)
    left, right, top, bottom = pads
    n, c, h, w = x.shape
    out = x.new_zeros((n, h + top + bottom, w + left + right, c))  # NHWC memory
    out[:, top:top + h, left:left + w] = x.permute(0, 2, 3, 1)
    return out.permute(0, 3, 1, 2)


def avg_pool2d_same(x: torch.Tensor) -> torch.Tensor:
    """:func:`avg_pool_same` (3×3, stride 2, padding left out of the mean) on frames ``[N, C, H, W]``, by one
    pooling call per axis parity: TF pads (1, 1) on an odd size, which is PyTorch's ``padding=1`` without the
    padding in the count, and (0, 1) on an even size, which is ``ceil_mode`` without padding (the last window is
    clipped to the input and divided by its real size)."""
    odd_h, odd_w = x.shape[2] % 2, x.shape[3] % 2
    if odd_h == odd_w and not torch.compiler.is_exporting():
        return F.avg_pool2d(x, 3, 2, padding=odd_h, ceil_mode=not odd_h, count_include_pad=False)
    pads = []  # mixed parity, or a graph being exported (XNNPACK takes plain pooling, not ceil_mode): pad explicitly
    # (zeros), then divide by the share of each window that is real input, like avg_pool_same
    for n in (x.shape[3], x.shape[2]):
        pads += list(same_pads(n, 3, 2))
    total = F.avg_pool2d(pad2d(x, tuple(pads)), 3, 2)
    share = F.avg_pool2d(F.pad(x.new_ones(1, 1, x.shape[2], x.shape[3]), pads), 3, 2)
    return total / share


def avg_pool_same(x: torch.Tensor, kernel=(1, 3, 3), stride=(1, 2, 2)) -> torch.Tensor:
    """Average pooling with TF-'same' spatial padding, the padding left out of each mean (TF's AvgPool 'same')."""
    pads = []
    for d in (4, 3):  # F.pad order: W then H
        pads += list(same_pads(x.shape[d], kernel[d - 2], stride[d - 2]))
    pads += [0, 0]
    total = F.avg_pool3d(F.pad(x, pads), kernel, stride)
    ones = x.new_ones(1, 1, 1, x.shape[3], x.shape[4])
    share = F.avg_pool3d(F.pad(ones, pads), kernel, stride)  # fraction of each window that is real input
    return total / share


def cumulative_mean(x: torch.Tensor, dim: int = 2) -> torch.Tensor:
    """Mean over time of every frame so far: output frame ``t`` is the mean of frames ``0..t`` along ``dim``."""
    count = torch.arange(1, x.shape[dim] + 1, device=x.device, dtype=x.dtype)
    shape = [1] * x.ndim
    shape[dim] = -1
    return x.cumsum(dim) / count.view(shape)


def stream_cumulative_mean(x: torch.Tensor, running_sum: torch.Tensor, count: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cumulative_mean` over time (dim 2) continued from earlier sub-clips: ``running_sum`` is the sum of
    every earlier frame (``[B, C, 1, ...]``, zeros at the start), ``count`` how many there were (a tensor, so
    exported graphs keep it as an input). Returns ``(means, new running sum)``."""
    sums = running_sum + x.cumsum(2)
    steps = torch.arange(1, x.shape[2] + 1, device=x.device, dtype=x.dtype)
    counts = count.to(x.dtype).reshape(-1) + steps
    shape = [1] * x.ndim
    shape[2] = -1
    return sums / counts.view(shape), sums[:, :, -1:]


__all__ = ["Conv3dSame", "avg_pool2d_same", "avg_pool_same", "conv2d_same", "cumulative_mean", "pad2d",
           "same_pads", "stream_cumulative_mean"]
