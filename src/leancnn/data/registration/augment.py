"""Random affine augmentation of registration volumes (label-reg ``helpers.py::random_transform_generator``).

Used with ``augment_scale > 0``, training only (:class:`~.dataset.RegistrationDataset`): per sample and
independently for the moving and the fixed volume, the 8 corners of the [-1, 1]^3 cube each move inward by
U(0, scale) along every axis, an affine is fitted to them by least squares (:func:`random_affine`), and the image
and its label are resampled through it (:func:`affine_warp`: ``affine_grid`` + ``grid_sample``, trilinear,
``align_corners=True``, normalised coordinates, border padding). label-reg moves 4 corners (an exact fit) and
DeepReg scales 4 corners by U(1 - s, 1); the 8-corner least-squares fit is symmetric in the axes. Since the corners
move inward, the transform samples a slightly smaller region: the content is enlarged by up to 1 / (1 - scale)
per axis. The fitted corners can leave the cube by at most scale / 4, hence border padding.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["affine_warp", "augment_pair", "random_affine"]

_CORNERS = np.array([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def random_affine(n: int, scale: float = 0.1, rng: np.random.Generator | int | Sequence[int] | None = None
                  ) -> torch.Tensor:
    """``n`` random affines ``(n, 3, 4)`` float32 for :func:`affine_warp` (label-reg random_transform_generator,
    8-corner form): each corner of the [-1, 1]^3 cube moves inward by U(0, scale) along each axis, and the
    affine mapping the corners (homogeneous) to the moved ones is fitted by least squares. ``scale=0`` gives
    the identity exactly. Seeded by ``rng`` (a numpy Generator or a seed)."""
    if not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not (isinstance(scale, numbers.Real) and 0 <= scale < 1):
        raise ValueError(f"scale must be in [0, 1), got {scale!r}")
    gen = _rng(rng)
    src = np.concatenate([_CORNERS, np.ones((8, 1))], axis=1)  # (8, 4)
    out = np.empty((n, 3, 4))
    for b in range(n):
        moved = _CORNERS - np.sign(_CORNERS) * gen.uniform(0.0, scale, size=(8, 3))
        sol = np.linalg.lstsq(src, moved, rcond=None)[0]  # (4, 3): moved = src @ sol
        out[b] = sol.T
    return torch.from_numpy(out.astype(np.float32))


def affine_warp(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border"
                ) -> torch.Tensor:
    """Resample ``x`` ``(B, C, X, Y, Z)`` through affines ``theta`` ``(B, 3, 4)`` in grid_sample's normalised
    coordinates (output point p samples the input at theta @ [p, 1]; coordinates ordered as affine_grid's,
    i.e. last spatial axis first), trilinear, ``align_corners=True``."""
    if x.ndim != 5 or theta.shape != (x.shape[0], 3, 4):
        raise ValueError(f"affine_warp needs x (B, C, X, Y, Z) and theta (B, 3, 4), got {tuple(x.shape)} and "
                         f"{tuple(theta.shape)}")
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def augment_pair(moving_image: torch.Tensor, fixed_image: torch.Tensor, moving_label: torch.Tensor | None = None,
                 fixed_label: torch.Tensor | None = None, scale: float = 0.1, rng=None):
    """Batched augmentation ``(B, C, X, Y, Z)`` tensors: one random affine per sample for the moving image and
    label, another for the fixed ones (e.g. on the training device). Returns the four (labels may be None;
    warped labels are clamped to [0, 1] against rounding)."""
    gen = _rng(rng)
    b = moving_image.shape[0]
    tm, tf = random_affine(b, scale, gen), random_affine(b, scale, gen)
    out = []
    for n, (vol, theta) in enumerate(((moving_image, tm), (fixed_image, tf), (moving_label, tm), (fixed_label, tf))):
        warped = None if vol is None else affine_warp(vol, theta)
        out.append(warped.clamp_(0, 1) if n >= 2 and warped is not None else warped)  # labels: no rounding past 1
    return tuple(out)

