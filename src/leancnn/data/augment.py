"""Batched augmentations on normalised image tensors ``[B, C, H, W]`` (on any device), for FixMatch-style training.

Both draw from the global torch RNG (saved in checkpoints, so resumed runs continue the same stream), and both
return their result in the layout of their input (channels-last batches stay channels-last).

* :func:`weak_augment`: a random translation of up to ``max_shift`` pixels (edges replicated), per sample.
* :func:`strong_augment`: a RandAugment-like mix suited to digits, per sample: random affine (rotation,
  shear, scale, translation), brightness and contrast jitter, colour-channel shuffle, inversion with
  probability 0.2, then Cutout (a square of half the image side set to the mean grey). Horizontal flips are
  left out on purpose: they change digit identity (2, 5, 7 …).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..nn.layout import same_layout


def _uniform(n: int, lo: float, hi: float, device) -> torch.Tensor:
    return torch.rand(n).to(device) * (hi - lo) + lo


def random_affine(x: torch.Tensor, degrees: float = 0.0, shear: float = 0.0, scale: tuple[float, float] = (1, 1),
                  translate: float = 0.0) -> torch.Tensor:
    """Per-sample affine warp; ``translate`` is a fraction of the image size; edges are replicated."""
    b = x.shape[0]
    dev = x.device
    angle = _uniform(b, -degrees, degrees, dev) * math.pi / 180
    sh = _uniform(b, -shear, shear, dev)
    s = _uniform(b, scale[0], scale[1], dev)
    t = _uniform(2 * b, -translate, translate, dev).view(b, 2) * 2  # grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = cos / s
    theta[:, 0, 1] = (-sin + sh * cos) / s
    theta[:, 1, 0] = sin / s
    theta[:, 1, 1] = (cos + sh * sin) / s
    theta[:, :, 2] = t
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return same_layout(F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False), x)


def weak_augment(x: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Random integer translation by up to ``max_shift`` pixels in each direction (edges replicated)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    off = torch.randint(0, 2 * max_shift + 1, (b, 2))
    rows = (off[:, 0:1] + torch.arange(h)).to(x.device)  # [B, H]
    cols = (off[:, 1:2] + torch.arange(w)).to(x.device)  # [B, W]
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    out = padded.permute(0, 2, 3, 1)[bi, rows.view(b, h, 1), cols.view(b, 1, w)]  # [B, H, W, C]
    return same_layout(out.permute(0, 3, 1, 2), x)  # the gather is channels-last already


def cutout(x: torch.Tensor, size: int, value: float = 0.0) -> torch.Tensor:
    """Set one ``size``×``size`` square per sample (centre uniform over the image, clipped) to ``value``."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b, 1, 1)).to(x.device)
    cx = torch.randint(0, w, (b, 1, 1)).to(x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    box = ((ys - cy).abs() * 2 < size) & ((xs - cx).abs() * 2 < size)  # [B, H, W]
    return x.masked_fill(box.unsqueeze(1), value)


def strong_augment(x: torch.Tensor, cutout_frac: float = 0.5) -> torch.Tensor:
    """RandAugment-like strong augmentation for normalised (range [-1, 1]) digit images."""
    b, like = x.shape[0], x
    dev = x.device
    x = random_affine(x, degrees=30, shear=0.3, scale=(0.85, 1.15), translate=0.125)
    shape = (b, 1, 1, 1)
    contrast = _uniform(b, 0.5, 1.5, dev).view(shape)
    brightness = _uniform(b, -0.4, 0.4, dev).view(shape)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + brightness
    perm = torch.argsort(torch.rand(b, x.shape[1]), dim=1).to(dev)  # a random channel order per sample
    x = torch.gather(x, 1, perm.view(b, -1, 1, 1).expand_as(x))
    invert = (torch.rand(b) < 0.2).to(dev).view(shape)
    x = torch.where(invert, -x, x).clamp(-1, 1)
    if cutout_frac > 0:
        x = cutout(x, max(1, int(round(cutout_frac * x.shape[-1]))), 0.0)
    return same_layout(x, like)


__all__ = ["cutout", "random_affine", "strong_augment", "weak_augment"]
