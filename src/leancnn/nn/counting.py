"""Parameter and multiply-accumulate (MAC) counters.

MACs count the multiply-accumulates of convolution and linear layers only (normalisation, activations,
pooling and additions are not counted), per sample, measured by forward hooks on one forward pass, so they
follow the real shapes of any input size. The pass runs on a copy of the model on the ``meta`` device (shapes
only, no arithmetic), so a video network at its paper input is counted in milliseconds.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
import torch.nn as nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    batch = out.shape[0]
    if isinstance(module, _CONV):
        per_out = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        return out.numel() // batch * per_out
    if isinstance(module, _CONV_T):
        per_in = (module.out_channels // module.groups) * math.prod(module.kernel_size)
        return inp.numel() // inp.shape[0] * per_in
    if isinstance(module, nn.Linear):
        return out.numel() // batch * module.in_features
    return 0


def count_macs(model: nn.Module, input_size: Sequence[int], per_layer: bool = False,
               device: torch.device | str | None = None, num_inputs: int = 1):
    """Multiply-accumulates of one sample's forward pass.

    ``input_size`` is the per-sample shape, e.g. ``(3, 32, 32)`` (a leading batch dimension is not given);
    ``num_inputs`` inputs of that shape are passed (2 for a registration network: moving, fixed).
    Returns an int, or ``(total, {layer_name: macs})`` when ``per_layer`` is true.
    """
    if any(int(s) <= 0 for s in input_size):
        raise ValueError(f"input_size must be positive, got {tuple(input_size)}")
    if device is None:  # shapes are all that is needed: a copy on the meta device computes nothing
        try:
            return count_macs(copy.deepcopy(model).to("meta"), input_size, per_layer, "meta", num_inputs)
        except (NotImplementedError, RuntimeError):  # an op without a meta kernel: count on the real device
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
    counts: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _CONV + _CONV_T + (nn.Linear,)):
            def hook(mod, args, out, name=name):
                counts[name] = counts.get(name, 0) + _layer_macs(mod, args[0], out)
            handles.append(module.register_forward_hook(hook))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(*[torch.zeros(1, *[int(s) for s in input_size], device=device) for _ in range(num_inputs)])
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    total = sum(counts.values())
    return (total, counts) if per_layer else total
