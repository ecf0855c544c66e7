"""Checkpoints: model, optimiser, scheduler, AMP scaler, epoch, RNG states and config in one file,
written atomically (temp file + rename), so a killed run never leaves a half-written checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import LeancnnError
from ..io import atomic_write

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    state = {"format_version": FORMAT_VERSION, **state}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise LeancnnError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a truncated or foreign file: say so in one line
        raise LeancnnError(f"checkpoint '{path}' cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise LeancnnError(f"'{path}' is not a leancnn checkpoint (no 'model' entry)")
    state["path"] = str(path)
    return state


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """A content digest of a state dict (names and values, in name order): what identifies a model's weights."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        h.update(k.encode())
        v = v.detach().cpu()
        h.update((v.float() if v.dtype == torch.bfloat16 else v).contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def load_model_state(model: nn.Module, state: dict[str, Any], source: str = "checkpoint") -> None:
    """Load weights, failing with one clear line when they come from another architecture."""
    saved_name = state.get("model_name")
    this_name = getattr(model, "model_name", None)
    weights = state["model"] if "model" in state and isinstance(state["model"], dict) else state
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shape = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        what = f"model '{saved_name}'" if saved_name else "another architecture"
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} shape mismatches (e.g. {k}: {tuple(weights[k].shape)} vs {tuple(own[k].shape)})")
        raise LeancnnError(f"{source} holds weights of {what}, which do not fit model "
                           f"'{this_name or type(model).__name__}': " + "; ".join(parts))
    model.load_state_dict(weights)
