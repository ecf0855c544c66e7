"""Memory layout (``torch.memory_format``) of convolutional networks and their feature maps.

On the CPU, oneDNN's convolutions run in the channels-last layout (NHWC): a network kept in the default
contiguous layout (NCHW) pays a reorder into and out of NHWC around every convolution. A network converted
once (``model.to(memory_format=torch.channels_last)``) and fed channels-last batches keeps NHWC from end to end,
as long as every op in between keeps it. This module names the layouts, converts tensors, finds the layers that
lose the layout, and measures which layout is faster where that is not known in advance (CUDA).

Names used in configs: ``"channels_last"``, ``"contiguous"`` and ``"auto"`` (:func:`resolve_memory_format`).
"""

from __future__ import annotations

import time
import warnings
from typing import Iterable

import torch
import torch.nn as nn

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def conv_dims(model: nn.Module) -> int:
    """2 or 3 when the model has 2-D or 3-D convolutions (3 wins), 0 when it has none."""
    dims = 0
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            return 3
        if isinstance(m, nn.Conv2d):
            dims = 2
    return dims


def channels_last_format(ndim: int) -> torch.memory_format | None:
    """The channels-last format of a tensor of ``ndim`` dimensions (None where there is none)."""
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim)


def to_memory_format(x: torch.Tensor, memory_format: torch.memory_format | None) -> torch.Tensor:
    """``x`` in ``memory_format`` where that applies to its number of dimensions (a no-op otherwise).
    ``torch.channels_last`` also means ``channels_last_3d`` for a 5-D tensor."""
    if memory_format is None or memory_format is torch.preserve_format:
        return x
    if memory_format is torch.contiguous_format:
        return x.contiguous()
    fmt = channels_last_format(x.ndim)
    return x.contiguous(memory_format=fmt) if fmt is not None else x


def to_device(x: torch.Tensor, device: torch.device, memory_format: torch.memory_format | None = None,
              non_blocking: bool = True) -> torch.Tensor:
    """Move a batch to ``device`` and into the model's layout in one copy (channels-last formats apply to 4-D and
    5-D tensors; other tensors, e.g. labels, only move)."""
    if memory_format is None or memory_format is torch.preserve_format:
        return x.to(device, non_blocking=non_blocking)
    fmt = channels_last_format(x.ndim) if memory_format in (torch.channels_last, torch.channels_last_3d) \
        else torch.contiguous_format
    if fmt is None:
        return x.to(device, non_blocking=non_blocking)
    return x.to(device, non_blocking=non_blocking, memory_format=fmt)


def same_layout(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``out`` in the layout of ``like`` (for ops such as ``grid_sample`` that return the default layout)."""
    fmt = channels_last_format(like.ndim)
    if fmt is not None and is_channels_last(like) and not like.is_contiguous():
        return out.contiguous(memory_format=fmt)
    return out.contiguous()


def is_channels_last(x: torch.Tensor) -> bool:
    """True when ``x`` is laid out channels-last (for shapes where both layouts coincide, e.g. one channel or a
    1×1 map, a tensor is both: then this is True too)."""
    fmt = channels_last_format(x.ndim)
    return fmt is not None and x.is_contiguous(memory_format=fmt)


def layout_is_ambiguous(x: torch.Tensor) -> bool:
    """Both layouts describe ``x`` (one channel, or one spatial position): nothing to keep or lose."""
    return x.ndim >= 4 and (x.shape[1] == 1 or all(s == 1 for s in x.shape[2:]))


def convert_model(model: nn.Module, memory_format: torch.memory_format | None) -> nn.Module:
    """Convert the model's 4-D (5-D) parameters and buffers once, in place; returns the model."""
    if memory_format is None or memory_format is torch.preserve_format:
        return model
    if memory_format is torch.contiguous_format:
        return model.to(memory_format=torch.contiguous_format)
    fmt = torch.channels_last_3d if conv_dims(model) == 3 else torch.channels_last
    return model.to(memory_format=fmt)


def model_memory_format(model: nn.Module) -> torch.memory_format | None:
    """The layout the model's convolution weights are in (channels-last or contiguous), read from the first
    weight whose layout is not ambiguous; None for a model without such weights."""
    for p in model.parameters():
        fmt = channels_last_format(p.ndim)
        if fmt is not None and not layout_is_ambiguous(p):
            if p.is_contiguous(memory_format=fmt) and not p.is_contiguous():
                return fmt
            return torch.contiguous_format
    return None


def contiguous_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with every tensor in the default layout: checkpoints are the same whatever layout trained."""
    return {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def match_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Lay each optimiser state tensor (momentum, Adam moments) out like its parameter: after loading a state
    saved in another layout, the update then runs without reorders."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p).copy_(v)


def layout_breaks(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the modules that take a channels-last feature map and return one in another layout, found by
    one forward pass of ``example`` (channels-last) in eval mode under ``no_grad``: every module is checked
    (a block's own code, e.g. a squeeze-excite product, can lose the layout as well as a layer), and a module is
    named only when none of its submodules is. Shapes where both layouts coincide (one channel, 1×1 maps)
    are not counted."""
    fmt = channels_last_format(example.ndim)
    if fmt is None:
        return []
    broken: list[str] = []
    handles = []

    def check(name):
        def hook(module, args, output):
            inputs = [a for a in args if isinstance(a, torch.Tensor) and a.ndim == example.ndim]
            if not inputs or not isinstance(output, torch.Tensor) or output.ndim != example.ndim:
                return
            x = inputs[0]
            if layout_is_ambiguous(x) or layout_is_ambiguous(output) or not x.is_contiguous(memory_format=fmt):
                return
            if not output.is_contiguous(memory_format=fmt):
                broken.append(name)
        return hook

    for name, m in model.named_modules():
        if name:
            handles.append(m.register_forward_hook(check(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example.contiguous(memory_format=fmt))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    broken = list(dict.fromkeys(broken))
    return [n for n in broken if not any(o.startswith(n + ".") for o in broken)]


def warn_layout_breaks(model: nn.Module, example: torch.Tensor) -> list[str]:
    """:func:`layout_breaks`, with a warning that names the layers (they run, but slower, in another layout)."""
    broken = layout_breaks(model, example)
    if broken:
        shown = ", ".join(broken[:8]) + (f" and {len(broken) - 8} more" if len(broken) > 8 else "")
        warnings.warn(f"{type(model).__name__}: {len(broken)} layer(s) do not keep the channels-last layout "
                      f"({shown}); the layers after them pay a reorder", stacklevel=2)
    return broken


def time_step(model: nn.Module, x: torch.Tensor, steps: int = 3, train: bool = True) -> float:
    """Median seconds of one forward (+ backward when ``train``) pass of ``x``, after one warm-up pass."""
    times = []
    for i in range(steps + 1):
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        if train:
            model.zero_grad(set_to_none=True)
            out = model(x)
            (out.float().sum() if isinstance(out, torch.Tensor) else sum(o.float().sum() for o in out)).backward()
        else:
            with torch.no_grad():
                model(x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        if i:
            times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def fastest_memory_format(model: nn.Module, x: torch.Tensor, steps: int = 3) -> torch.memory_format:
    """Time forward + backward of ``model`` on ``x`` in both layouts and return the faster. The passes run in
    eval mode, so no BatchNorm statistic, dropout or MixStyle draw changes the model or a random stream; the
    model is left in the default layout with its gradients cleared."""
    fmt = channels_last_format(x.ndim) or torch.contiguous_format
    timings = {}
    was_training = model.training
    model.eval()
    try:
        for memory_format in (torch.contiguous_format, fmt):
            convert_model(model, memory_format)
            timings[memory_format] = time_step(model, to_memory_format(x, memory_format), steps)
    finally:
        model.zero_grad(set_to_none=True)
        convert_model(model, torch.contiguous_format)
        model.train(was_training)
    return min(timings, key=timings.get)


def resolve_memory_format(name: str, model: nn.Module, device: torch.device,
                          example: torch.Tensor | None = None) -> torch.memory_format:
    """``"channels_last"`` / ``"contiguous"`` as named. ``"auto"``: contiguous for a network without
    convolutions; channels-last on the CPU (oneDNN's native layout, measured faster for every registered
    network, docs/benchmarks.md); on CUDA whichever of the two a short timed training step on ``example``
    finds faster (contiguous when no example is given)."""
    if name not in MEMORY_FORMATS:
        raise ValueError(f"memory format {name!r} is not one of {', '.join(MEMORY_FORMATS)}")
    dims = conv_dims(model)
    last = torch.channels_last_3d if dims == 3 else torch.channels_last
    if name == "contiguous" or (name == "auto" and dims == 0):
        return torch.contiguous_format
    if name == "channels_last":
        return last
    if device.type == "cpu":
        return last
    if example is None:
        return torch.contiguous_format
    return fastest_memory_format(model, example.to(device))


def format_name(memory_format: torch.memory_format) -> str:
    return {torch.channels_last: "channels_last", torch.channels_last_3d: "channels_last_3d",
            torch.contiguous_format: "contiguous"}.get(memory_format, str(memory_format))


__all__: Iterable[str] = [
    "MEMORY_FORMATS", "channels_last_format", "contiguous_state", "conv_dims", "convert_model",
    "fastest_memory_format", "format_name", "is_channels_last", "layout_breaks", "layout_is_ambiguous",
    "match_optimizer_state", "model_memory_format", "resolve_memory_format", "same_layout", "time_step", "to_device", "to_memory_format",
    "warn_layout_breaks",
]
