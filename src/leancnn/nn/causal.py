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
        sub-clip is shorter than the buffer)."""
        if not self.causal:
            raise ValueError("only a causal convolution has a stream buffer")
        full = torch.cat([buffer, x], dim=2)
        keep = self.kernel_size[0] - 1
        return self._padded_conv(full, 0, 0), full[:, :, full.shape[2] - keep:]


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


__all__ = ["Conv3dSame", "avg_pool_same", "cumulative_mean", "same_pads", "stream_cumulative_mean"]
