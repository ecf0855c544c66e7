"""Multimodal image similarity without labels, and test-time refinement of a predicted DDF (issue 21, part 2).

Label-driven registration exists because intensity similarity is unreliable between MR and ultrasound; this module
lets that be *measured*: :func:`refine_ddf` starts from a network's DDF and takes a few optimiser steps of an image
similarity plus a regulariser, using the images alone (no labels at test time), as instance optimisation does in
Learn2Reg entries (e.g. ConvexAdam). Two modality-independent similarities:

* ``"mind"``: **MIND-SSC** (Heinrich et al., MICCAI 2013, "Towards realtime multimodal fusion for image-guided
  interventions using self-similarities"). For the 12 pairs of voxels of the 6-neighbourhood that are sqrt(2)
  apart (the edges of the octahedron), the patch distance ``D`` = Gaussian-weighted (``sigma`` voxels) mean of the
  squared difference of the image shifted by the two offsets (``dilation`` voxels); the local variance ``V`` = the
  mean of the 12 ``D`` (clamped to ``[1e-3 mean, 1e3 mean]`` of V); descriptor = ``exp(-D / V)``, divided by its
  maximum over the 12 channels. The loss is the mean squared difference of the two images' descriptors. Written
  after the descriptor of Heinrich's public ``MINDSSC`` PyTorch code (ConvexAdam / Learn2Reg baselines), not
  copied: the 12 shifts are taken by padding and slicing.
* ``"lncc_grad"``: 1 - local normalised cross-correlation (box window ``window`` voxels, squared: ``cov² / (var_a
  var_b + 1e-5)``, as voxelmorph's NCC) of the *gradient magnitudes* of the two images, each scaled to unit mean:
  edges correspond across modalities even where intensities do not. A window without structure in either image
  scores 0, so even identical images score above 0 where they are flat.

Both take ``(B, 1, X, Y, Z)`` float tensors on one grid and return a scalar (lower = more similar).

:func:`refine_ddf` (``leancnn register predict --refine N``): with the moving image already on the fixed grid by
the initial mapping, the DDF (network grid, fixed-grid voxel units as the network predicts it) is the parameter;
each of ``steps`` Adam steps (``lr`` voxels) minimises ``similarity(warp(moving, ddf), fixed) + weight *
bending_energy(ddf)``. ``steps=0`` returns the DDF unchanged.
"""

from __future__ import annotations

import numbers
from typing import Callable

import torch
import torch.nn.functional as F

from ..nn.warp import _check_volume, warp
from .registration import bending_energy, gaussian_smooth

__all__ = ["SIMILARITIES", "lncc_gradient_loss", "mind_ssc", "mind_ssc_loss", "refine_ddf"]

# the 6-neighbourhood and its 12 pairs at distance sqrt(2) (MIND-SSC's "self-similarity context")
_SIX = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))
_PAIRS = [(i, j) for i in range(6) for j in range(i + 1, 6)
          if sum((a - b) ** 2 for a, b in zip(_SIX[i], _SIX[j])) == 2]


def _check_image(x: torch.Tensor, name: str) -> None:
    _check_volume(x, name)
    if x.shape[1] != 1:
        raise ValueError(f"{name} must have one channel (B, 1, X, Y, Z), got shape {tuple(x.shape)}")


def _shift(x: torch.Tensor, offset: tuple[int, int, int], d: int) -> torch.Tensor:
    """``x`` shifted by ``d * offset`` voxels (replicate padding): out[q] = x[q + d * offset]."""
    p = d
    padded = F.pad(x, (p, p, p, p, p, p), mode="replicate")
    sx, sy, sz = (p + d * o for o in offset)
    return padded[:, :, sx:sx + x.shape[2], sy:sy + x.shape[3], sz:sz + x.shape[4]]


def mind_ssc(image: torch.Tensor, sigma: float = 0.8, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC descriptor ``(B, 12, X, Y, Z)`` of ``image`` ``(B, 1, X, Y, Z)`` (see the module docstring)."""
    _check_image(image, "image")
    if not (isinstance(dilation, numbers.Integral) and dilation >= 1):
        raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")
    shifted = [_shift(image, o, dilation) for o in _SIX]
    d = torch.cat([(shifted[i] - shifted[j]) ** 2 for i, j in _PAIRS], dim=1)
    d = gaussian_smooth(d, sigma) if sigma > 0 else d
    d = d - d.min(dim=1, keepdim=True).values
    v = d.mean(dim=1, keepdim=True)
    m = v.mean().detach()
    v = v.clamp(min=1e-3 * m + 1e-12, max=1e3 * m + 1e-12)
    mind = torch.exp(-d / v)
    return mind / mind.max(dim=1, keepdim=True).values


def mind_ssc_loss(warped: torch.Tensor, fixed: torch.Tensor, sigma: float = 0.8, dilation: int = 2) -> torch.Tensor:
    """Mean squared difference of the MIND-SSC descriptors of two images (0 for identical images)."""
    _check_image(warped, "warped")
    _check_image(fixed, "fixed")
    if warped.shape != fixed.shape:
        raise ValueError(f"warped and fixed must have one shape, got {tuple(warped.shape)} and {tuple(fixed.shape)}")
    return ((mind_ssc(warped, sigma, dilation) - mind_ssc(fixed, sigma, dilation)) ** 2).mean()


def _gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    p = F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate")
    gx = (p[:, :, 2:, 1:-1, 1:-1] - p[:, :, :-2, 1:-1, 1:-1]) / 2
    gy = (p[:, :, 1:-1, 2:, 1:-1] - p[:, :, 1:-1, :-2, 1:-1]) / 2
    gz = (p[:, :, 1:-1, 1:-1, 2:] - p[:, :, 1:-1, 1:-1, :-2]) / 2
    return torch.sqrt(gx ** 2 + gy ** 2 + gz ** 2 + 1e-8)


def lncc_gradient_loss(warped: torch.Tensor, fixed: torch.Tensor, window: int = 7) -> torch.Tensor:
    """1 - mean local normalised cross-correlation (box ``window``) of the two images' gradient magnitudes."""
    _check_image(warped, "warped")
    _check_image(fixed, "fixed")
    if warped.shape != fixed.shape:
        raise ValueError(f"warped and fixed must have one shape, got {tuple(warped.shape)} and {tuple(fixed.shape)}")
    if not (isinstance(window, numbers.Integral) and window >= 3 and window % 2):
        raise ValueError(f"window must be an odd int >= 3, got {window!r}")
    a, b = _gradient_magnitude(warped), _gradient_magnitude(fixed)
    a = a / a.mean(dim=(1, 2, 3, 4), keepdim=True).clamp(min=1e-8)  # unit mean: eps is small against the variances
    b = b / b.mean(dim=(1, 2, 3, 4), keepdim=True).clamp(min=1e-8)

    def box(t):
        return F.avg_pool3d(t, window, stride=1, padding=window // 2, count_include_pad=False)

    ma, mb = box(a), box(b)
    cov = box(a * b) - ma * mb
    va = (box(a * a) - ma ** 2).clamp(min=0)
    vb = (box(b * b) - mb ** 2).clamp(min=0)
    cc = cov * cov / (va * vb + 1e-5)
    return 1.0 - cc.mean()


SIMILARITIES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mind": mind_ssc_loss, "lncc_grad": lncc_gradient_loss}


def refine_ddf(moving: torch.Tensor, fixed: torch.Tensor, ddf: torch.Tensor, steps: int, similarity: str = "mind",
               weight: float = 0.5, lr: float = 0.1) -> torch.Tensor:
    """``ddf`` (B, 3, X, Y, Z) refined by ``steps`` Adam steps of ``similarity(warp(moving, ddf), fixed) + weight *
    bending_energy(ddf)``; ``moving`` and ``fixed`` ``(B, 1, X, Y, Z)`` on the DDF's grid (the moving image already
    on the fixed grid by the initial mapping). Returns a new, detached tensor; ``steps=0`` returns a copy."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {tuple(SIMILARITIES)}, got {similarity!r}")
    if not (isinstance(steps, numbers.Integral) and steps >= 0):
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    for value, name in ((weight, "weight"), (lr, "lr")):
        if not (isinstance(value, numbers.Real) and value >= 0):
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    _check_image(moving, "moving")
    _check_image(fixed, "fixed")
    if moving.shape[2:] != ddf.shape[2:] or fixed.shape[2:] != ddf.shape[2:]:
        raise ValueError(f"moving, fixed and ddf must share a grid, got {tuple(moving.shape[2:])}, "
                         f"{tuple(fixed.shape[2:])} and {tuple(ddf.shape[2:])}")
    fn = SIMILARITIES[similarity]
    param = ddf.detach().clone().requires_grad_(True)
    if steps == 0:
        return param.detach()
    opt = torch.optim.Adam([param], lr=lr)
    moving, fixed = moving.detach(), fixed.detach()
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = fn(warp(moving, param), fixed) + weight * bending_energy(param)
            loss.backward()
            opt.step()
    return param.detach()
