"""Dense-displacement warping, affine helpers and every coordinate convention of 3-D registration (label-reg
conventions, in PyTorch).

After Hu et al., "Weakly-supervised convolutional neural networks for multimodal image registration", Medical
Image Analysis 49 (2018), and their TensorFlow-1 code YipengHu/label-reg (``labelreg/utils.py``). The rest of the
library (the registration data, losses, networks and task) follows the conventions written here.

Conventions
-----------
* Voxel and world coordinates: a voxel *index* ``(i, j, k)`` counts from voxel 0 along tensor dims 2, 3, 4 (file
  axes X, Y, Z); a NIfTI header's 4x4 affine maps voxel indices to world millimetres (:func:`world_affine`,
  :func:`voxel_spacing`, :func:`voxel_to_voxel`).
* Volumes are ``(B, C, X, Y, Z)`` and displacement fields (DDFs) ``(B, 3, X, Y, Z)``, channel-first. Channel
  ``k`` of a DDF is the displacement along spatial axis ``k`` (tensor dim ``2 + k``).
* A DDF lives on the *fixed* grid, in *voxel units of the fixed grid*: fixed voxel ``p = (i, j, k)`` looks at the
  point ``p + ddf[:, :, i, j, k]`` (fixed voxel indices). That point is mapped into the *moving* volume's
  voxel-index space by a 4x4 affine ``fixed_to_moving`` (voxel index -> voxel index) and the moving volume is
  sampled there. The moving volume may have another shape than the fixed grid (the DDF's spatial shape).
  Default ``fixed_to_moving``: the corner-aligned scaling ``diag((Nm - 1) / (Nf - 1))`` per axis, i.e. both grids
  cover the same extent, voxel 0 on voxel 0 and voxel Nf-1 on voxel Nm-1 (label-reg resizes the moving image to
  the fixed grid this way; ``resize_volume`` with ``align_corners=True`` does the same). Equal shapes: identity.
  For grids known in world coordinates (NIfTI headers) use ``voxel_to_voxel(fixed_affine, moving_affine)``.
* The *initial mapping* (:func:`initial_map`, ``INITIAL_MAPPINGS``) is the ``fixed_to_moving`` that puts the moving
  volume on the fixed grid before any registration; a registration DDF is relative to it. ``"corners"``
  (label-reg): corner voxels on corner voxels, the default ``fixed_to_moving`` above. ``"centre"``: the volumes'
  centres coincide and millimetres stay millimetres (header spacings; origins and rotations ignored). The mode
  has no default here: callers pass it, and the one default is the config's (``data.initial: centre``).
* Sampling is ``torch.nn.functional.grid_sample(align_corners=True)``, index ``q`` of an axis of length ``N``
  becoming the normalised coordinate ``(2q - (N - 1)) / (N - 1)``; so ``warp`` is differentiable w.r.t. the
  moving volume, the DDF (bilinear mode) and a tensor ``fixed_to_moving``.

Boundary handling (``padding``)
-------------------------------
* ``"zeros"`` (default; label-reg and DeepReg ``zero_boundary=True``): the volume is taken as 0 outside its grid and
  trilinear weights run linearly to 0 over the voxel beyond the border; a point at or beyond one voxel outside
  samples 0. A point *exactly on* the last voxel (index N-1) samples that voxel, so the identity warp is exact.
  **label-reg quirk not copied:** label-reg's ``resample_linear`` builds its clamped corner weights so that any
  coordinate ``< 0`` or ``>= N - 1`` returns 0, i.e. even its identity warp zeroes the last slice on every axis.
* ``"border"`` (MONAI ``Warp``'s default): coordinates are clamped to the grid, border values extend outwards.

``mode="nearest"`` takes the nearest voxel (grid_sample rounding, half to even); with ``"zeros"`` a point more than
half a voxel outside samples 0. It passes no gradient to the DDF.

Affine parameters ``theta`` (``(B, 3, 4)``) follow label-reg's GlobalNet: they act on homogeneous *voxel-index*
coordinates ``[i, j, k, 1]`` with the origin at voxel (0, 0, 0) -- not at the volume centre and not on
grid_sample's normalised [-1, 1] coordinates (as ``torch.nn.functional.affine_grid`` would).
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import LeancnnError

MODES = ("bilinear", "nearest")
PADDINGS = ("zeros", "border")
RESIZE_MODES = ("trilinear", "nearest")
INITIAL_MAPPINGS = ("corners", "centre")


# --------------------------------------------------------------------------------------------------- validation
def _shape3(shape, name: str) -> tuple[int, int, int]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of 3 positive ints (X, Y, Z), got {shape!r}") from None
    if len(dims) != 3 or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0
                                 for n in dims):
        raise ValueError(f"{name} must be a sequence of 3 positive ints (X, Y, Z), got {shape!r}")
    return tuple(int(n) for n in dims)


def _check_volume(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor (B, C, X, Y, Z), got {type(x).__name__}")
    if x.ndim != 5:
        raise ValueError(f"{name} must be a 5-D tensor (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype} (cast labels with .float())")
    if min(x.shape) < 1:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")


def _check_field(ddf, name: str = "ddf") -> None:
    if not isinstance(ddf, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor (B, 3, X, Y, Z), got {type(ddf).__name__}")
    if ddf.ndim != 5 or ddf.shape[1] != 3:
        raise ValueError(f"{name} must be a displacement field of shape (B, 3, X, Y, Z) in voxel units, got shape "
                         f"{tuple(ddf.shape)}")
    if not ddf.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {ddf.dtype}")
    if min(ddf.shape) < 1:
        raise ValueError(f"{name} must not be empty, got shape {tuple(ddf.shape)}")


def _affine_tensor(a, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``fixed_to_moving`` as a ``(B, 4, 4)`` tensor (a 4x4 numpy array, tensor or nested list; or ``(B, 4, 4)``)."""
    if isinstance(a, torch.Tensor):
        t = a.to(device=device, dtype=dtype)
    else:
        try:
            t = torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype, device=device)
        except (TypeError, ValueError):
            raise ValueError(f"fixed_to_moving must be a 4x4 (or (B, 4, 4)) affine matrix, got {a!r}") from None
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3 or tuple(t.shape[1:]) != (4, 4) or t.shape[0] not in (1, batch):
        raise ValueError(f"fixed_to_moving must be a 4x4 voxel-to-voxel affine or a (B, 4, 4) stack with B = {batch}, "
                         f"got shape {tuple(t.shape)}")
    d = t.detach()
    if not torch.isfinite(d).all():
        raise ValueError("fixed_to_moving contains NaN or infinite values")
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=dtype, device=device)
    if not torch.allclose(d[:, 3, :], bottom.expand_as(d[:, 3, :]), atol=1e-6, rtol=0.0):
        raise ValueError(f"fixed_to_moving must be a homogeneous affine with last row [0, 0, 0, 1], got "
                         f"{d[:, 3, :].tolist()}")
    return t


def _default_scale(n_fixed: int, n_moving: int) -> float:
    """Corner-aligned fixed->moving index scale along one axis (as align_corners=True resizing)."""
    if n_fixed == n_moving:
        return 1.0
    if n_fixed == 1:
        return 0.0  # a 1-voxel grid sits on the moving volume's first voxel, as F.interpolate(align_corners=True)
    return (n_moving - 1) / (n_fixed - 1)


# ------------------------------------------------------------------------------------------------------ grids
def identity_grid(shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Voxel-index coordinates of a grid of spatial ``shape`` (X, Y, Z): a ``(1, 3, X, Y, Z)`` field with
    ``grid[0, :, i, j, k] == (i, j, k)``."""
    dims = _shape3(shape, "shape")
    axes = [torch.arange(n, dtype=dtype, device=device) for n in dims]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def warp(moving: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear", padding: str = "zeros",
         fixed_to_moving=None) -> torch.Tensor:
    """Resample ``moving`` (B, C, Xm, Ym, Zm) at fixed-grid voxel index + ``ddf`` (B, 3, X, Y, Z, fixed voxel units).

    Returns ``(B, C, X, Y, Z)`` on the fixed grid, in ``moving``'s dtype. ``fixed_to_moving`` (4x4 or (B, 4, 4),
    numpy or torch; voxel index -> voxel index) maps the displaced fixed-grid points into the moving volume's index
    space; default: corner-aligned scaling (identity when the shapes agree), see the module docstring. A batch of 1
    in ``moving`` or ``ddf`` is broadcast to the other's batch. ``mode``: "bilinear" (trilinear; "trilinear" is
    accepted too) or "nearest"; ``padding``: "zeros" (label-reg/DeepReg, without label-reg's last-slice quirk) or
    "border" (MONAI).
    """
    _check_volume(moving, "moving")
    _check_field(ddf)
    if mode == "trilinear":
        mode = "bilinear"
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} (or 'trilinear'), got {mode!r}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if ddf.device != moving.device:
        raise ValueError(f"moving and ddf must be on the same device, got {moving.device} and {ddf.device}")
    bm, bd = moving.shape[0], ddf.shape[0]
    if bm != bd and 1 not in (bm, bd):
        raise ValueError(f"moving and ddf batch sizes differ ({bm} vs {bd}); they must agree or one must be 1")
    batch = max(bm, bd)
    dtype, device = moving.dtype, moving.device
    fixed_shape, moving_shape = tuple(ddf.shape[2:]), tuple(moving.shape[2:])

    points = identity_grid(fixed_shape, dtype=dtype, device=device) + ddf.to(dtype)  # fixed voxel indices
    if fixed_to_moving is None:
        scale = [_default_scale(nf, nm) for nf, nm in zip(fixed_shape, moving_shape)]
        if any(s != 1.0 for s in scale):
            points = points * torch.tensor(scale, dtype=dtype, device=device).view(1, 3, 1, 1, 1)
    else:
        a = _affine_tensor(fixed_to_moving, batch, dtype, device)
        points = torch.einsum("bij,bjxyz->bixyz", a[:, :3, :3], points) + a[:, :3, 3, None, None, None]
    points = points.expand(batch, -1, -1, -1, -1)  # moving voxel indices, (B, 3, X, Y, Z)

    extent = torch.tensor([n - 1 for n in moving_shape], dtype=dtype, device=device).view(1, 3, 1, 1, 1)
    normalised = (2.0 * points - extent) / extent.clamp(min=1.0)  # exactly -1 / +1 on the first / last voxel
    grid = normalised.permute(0, 2, 3, 4, 1).flip(-1)  # grid_sample wants (x, y, z) = (Z, Y, X) of a 5-D input
    out = F.grid_sample(moving.expand(batch, -1, -1, -1, -1), grid, mode=mode, padding_mode=padding,
                        align_corners=True)

    if padding == "zeros" and 1 in moving_shape:
        # With align_corners=True every coordinate of a 1-voxel axis maps onto its only voxel, so grid_sample never
        # pads there; apply that axis's zero boundary by hand: trilinear weight max(0, 1 - |q|), nearest |q| <= 1/2.
        for axis, n in enumerate(moving_shape):
            if n == 1:
                q = points[:, axis:axis + 1]
                weight = (1.0 - q.abs()).clamp(min=0.0) if mode == "bilinear" else (q.abs() <= 0.5).to(dtype)
                out = out * weight
    return out


# ---------------------------------------------------------------------------------------------- world affines
def world_affine(nifti_affine) -> np.ndarray:
    """A validated voxel-index -> world (mm) affine as a float64 4x4 numpy array.

    Accepts a 4x4 array-like (e.g. ``img.affine``), a nibabel image (its ``.affine``) or a nibabel header (its
    ``get_best_affine()``). Raises ValueError unless it is finite, homogeneous (last row [0, 0, 0, 1]) and
    invertible.
    """
    a = nifti_affine
    if hasattr(a, "affine") and not isinstance(a, np.ndarray):
        a = a.affine
    elif hasattr(a, "get_best_affine"):
        a = a.get_best_affine()
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    try:
        m = np.array(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"a NIfTI affine must be a 4x4 numeric matrix, got {nifti_affine!r}") from None
    if m.shape != (4, 4):
        raise ValueError(f"a NIfTI affine must be 4x4, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("the NIfTI affine contains NaN or infinite values")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6, rtol=0.0):
        raise ValueError(f"the NIfTI affine must have last row [0, 0, 0, 1], got {m[3].tolist()}")
    linear = m[:3, :3]
    if abs(np.linalg.det(linear)) <= 1e-12 * max(float(np.abs(linear).max()), 1e-300) ** 3:
        raise ValueError(f"the NIfTI affine is singular (zero voxel size or collinear axes): {m[:3, :3].tolist()}")
    return m


def voxel_spacing(nifti_affine) -> np.ndarray:
    """Voxel size (mm) along each voxel axis: the lengths of the affine's first three columns, shape (3,)."""
    m = world_affine(nifti_affine)
    return np.sqrt((m[:3, :3] ** 2).sum(axis=0))


def voxel_to_voxel(fixed_affine, moving_affine) -> np.ndarray:
    """Fixed voxel index -> moving voxel index: ``inv(moving_affine) @ fixed_affine`` (float64 4x4 numpy).

    Both are voxel -> world affines (NIfTI ``img.affine``); the grids may differ in shape, spacing, origin and
    orientation. Pass the result as ``warp(..., fixed_to_moving=...)``.
    """
    f, m = world_affine(fixed_affine), world_affine(moving_affine)
    out = np.linalg.solve(m, f)
    out[3] = (0.0, 0.0, 0.0, 1.0)
    return out


# --------------------------------------------------------------------------------------------- initial mapping
def initial_map(moving_shape: Sequence[int], fixed_shape: Sequence[int], moving_spacing: Sequence[float] | None = None,
                fixed_spacing: Sequence[float] | None = None, *, mode: str) -> np.ndarray:
    """The 4x4 map from fixed voxel indices to moving voxel indices that puts the moving volume on the fixed grid
    before any registration (pass it as ``warp(..., fixed_to_moving=...)``).

    ``"corners"`` (label-reg): corner voxels on corner voxels, ``m = q (N_m - 1) / (N_f - 1)`` per axis (the
    moving volume is stretched to the fixed extent; spacings are not used). ``"centre"``: the volumes' centres
    coincide and millimetres stay millimetres (voxel spacings from the headers, header origins and rotations
    ignored), ``m = c_m + (q - c_f) s_f / s_m`` with ``c = (N - 1) / 2``. ``mode`` has no default (the config's
    ``data.initial`` holds it)."""
    if mode not in INITIAL_MAPPINGS:
        raise LeancnnError(f"unknown initial mapping '{mode}'; choose from: {', '.join(INITIAL_MAPPINGS)}")
    nm = np.asarray(moving_shape, dtype=np.float64)
    nf = np.asarray(fixed_shape, dtype=np.float64)
    out = np.eye(4)
    if mode == "corners":
        scale = np.where(nf > 1, (nm - 1) / np.maximum(nf - 1, 1), 0.0)
        out[:3, :3] = np.diag(scale)
        return out
    if moving_spacing is None or fixed_spacing is None:
        raise LeancnnError("the 'centre' initial mapping needs both voxel spacings")
    scale = np.asarray(fixed_spacing, dtype=np.float64) / np.asarray(moving_spacing, dtype=np.float64)
    out[:3, :3] = np.diag(scale)
    out[:3, 3] = (nm - 1) / 2 - scale * (nf - 1) / 2
    return out


# ------------------------------------------------------------------------------------------------ affine DDFs
def identity_theta(batch: int, *, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """``(batch, 3, 4)`` identity affine parameters ``[I | 0]`` (label-reg GlobalNet's initial output)."""
    if not isinstance(batch, numbers.Integral) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    return torch.eye(3, 4, dtype=dtype, device=device).expand(int(batch), 3, 4).clone()


def affine_to_ddf(theta: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """DDF ``(B, 3, X, Y, Z)`` of affine parameters ``theta`` (B, 3, 4): ``ddf(p) = theta @ [p; 1] - p``.

    ``theta`` acts on homogeneous voxel-index coordinates with the origin at voxel (0, 0, 0) (label-reg's
    convention), so a rotation about the volume centre c is ``T(c) R T(-c)``. A ``(3, 4)`` theta is taken as B = 1.
    """
    if not isinstance(theta, torch.Tensor):
        raise ValueError(f"theta must be a torch tensor (B, 3, 4), got {type(theta).__name__}")
    if theta.ndim == 2:
        theta = theta.unsqueeze(0)
    if theta.ndim != 3 or tuple(theta.shape[1:]) != (3, 4):
        raise ValueError(f"theta must have shape (B, 3, 4) (affine on voxel indices), got {tuple(theta.shape)}")
    if not theta.is_floating_point():
        raise ValueError(f"theta must be a floating-point tensor, got dtype {theta.dtype}")
    grid = identity_grid(shape, dtype=theta.dtype, device=theta.device)
    moved = torch.einsum("bij,bjxyz->bixyz", theta[:, :, :3], grid.expand(theta.shape[0], -1, -1, -1, -1))
    return moved + theta[:, :, 3, None, None, None] - grid


# ------------------------------------------------------------------------------------------------------ resize
def resize_volume(x: torch.Tensor, shape: Sequence[int], mode: str = "trilinear") -> torch.Tensor:
    """Resize ``x`` (B, C, X, Y, Z) to spatial ``shape``, corner-aligned (``align_corners=True``).

    "trilinear": ``F.interpolate(align_corners=True)``, equal to ``warp(x, zero ddf on shape, "bilinear")``.
    "nearest": the nearest voxel of the same corner-aligned mapping (as ``warp(..., mode="nearest")``; note
    ``F.interpolate``'s "nearest" is not corner-aligned). Same shape: ``x`` is returned as is.
    """
    _check_volume(x, "x")
    size = _shape3(shape, "shape")
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
    if tuple(x.shape[2:]) == size:
        return x
    if mode == "trilinear":
        return F.interpolate(x, size=size, mode="trilinear", align_corners=True)
    out = x
    for axis, (n_in, n_out) in enumerate(zip(x.shape[2:], size)):
        if n_in == n_out:
            continue
        pos = torch.arange(n_out, dtype=torch.float64, device=x.device) * _default_scale(n_out, n_in)
        idx = torch.round(pos).to(torch.long).clamp_(0, n_in - 1)
        out = out.index_select(2 + axis, idx)
    return out


def resize_ddf(ddf: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A DDF (B, 3, X, Y, Z) in voxel units of its grid, resampled to the corner-aligned grid of spatial ``shape``
    and rescaled to that grid's voxel units: component i is multiplied by ``(N_out_i - 1) / (N_in_i - 1)``. So a
    field predicted on a coarse grid becomes the same mapping on the fine grid (exactly, for an affine field)."""
    _check_field(ddf)
    size = _shape3(shape, "shape")
    if tuple(ddf.shape[2:]) == size:
        return ddf
    out = F.interpolate(ddf, size=size, mode="trilinear", align_corners=True)
    factor = [_default_scale(n_in, n_out) for n_in, n_out in zip(ddf.shape[2:], size)]
    return out * torch.tensor(factor, dtype=ddf.dtype, device=ddf.device).view(1, 3, 1, 1, 1)


__all__ = ["INITIAL_MAPPINGS", "MODES", "PADDINGS", "RESIZE_MODES", "affine_to_ddf", "identity_grid", "identity_theta",
           "initial_map", "resize_ddf", "resize_volume",
           "voxel_spacing", "voxel_to_voxel", "warp", "world_affine"]
