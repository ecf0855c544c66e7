"""Feature taps: get a model's last feature map next to its logits, for losses that need features.

Models of ours expose ``forward_features``/``forward_head``. For any other ``nn.Module`` a forward hook
captures the output of a named layer (default: the last ``nn.Conv2d`` in module order).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def last_conv_name(model: nn.Module) -> str:
    """Name of the last ``Conv2d`` registered in ``model`` (module order, which is definition order)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer to take features from; name a layer")
    return names[-1]


class WithFeatures(nn.Module):
    """``forward(x) -> (logits, features)``.

    ``layer=None`` and a model with ``forward_features``/``forward_head``: the model's own split. Otherwise
    the output of module ``layer`` (default: the last Conv2d) is captured by a forward hook. Wrapping (rather
    than calling methods of the model) keeps DDP's gradient synchronisation intact.
    """

    def __init__(self, model: nn.Module, layer: str | None = None):
        super().__init__()
        self.model = model
        self.layer = layer
        self._captured: torch.Tensor | None = None
        self._handle = None
        if layer is not None or not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
            self.layer = layer or last_conv_name(model)
            modules = dict(model.named_modules())
            if self.layer not in modules:
                valid = ", ".join(n for n in modules if n)
                raise ValueError(f"layer '{self.layer}' is not a module of {type(model).__name__}; valid names: {valid}")
            self._handle = modules[self.layer].register_forward_hook(self._capture)

    def _capture(self, module, args, output) -> None:
        self._captured = output

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._handle is None:
            features = self.model.forward_features(x)
            return self.model.forward_head(features), features
        self._captured = None
        logits = self.model(x)
        features, self._captured = self._captured, None
        if features is None:
            raise RuntimeError(f"layer '{self.layer}' did not run in the forward pass")
        return logits, features

    def remove(self) -> None:
        """Detach the hook (the wrapped model is left as it was)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
