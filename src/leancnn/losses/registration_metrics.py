"""Evaluation metrics that registration reports besides Dice and centroid TRE (µ-RegPro 2023, Learn2Reg).

Surface distance (``hausdorff95_mm``)
-------------------------------------
MONAI's ``compute_hausdorff_distance(percentile=95, directed=False)`` on one pair of label volumes (numpy or torch,
leading singleton dims dropped, thresholded at ``>= threshold`` like ``binary_dice``), both on the same grid:

* The *surface* of a mask is the mask minus its binary erosion by ``scipy.ndimage.binary_erosion``'s default
  structuring element, i.e. **face (6-) connectivity**: a mask voxel is a surface voxel iff one of its 6 face
  neighbours is outside the mask. Outside the grid counts as outside the mask (``border_value=0``), so mask voxels
  on the grid's border are surface voxels. MONAI's ``get_mask_edges`` does the same.
* Directed distances: for each surface voxel of A, the Euclidean distance in mm (per-axis ``spacing``) to the
  nearest surface voxel of B (``distance_transform_edt(~surface_b, sampling=spacing)``), a distance between voxel
  centres -- to B's *surface*, so a surface voxel of A inside B still has a positive distance; and B -> A alike.
* Result: ``max(P95(A -> B), P95(B -> A))`` with ``numpy.percentile``'s default linear interpolation, so one far
  outlier voxel among many need not change it. Either mask empty: ``None`` (MONAI gives inf/NaN), never NaN.

Pooling over landmarks and pairs
--------------------------------
* ``rms``: root mean square of the present values (``None`` entries skipped), e.g. the TREs of one pair's landmarks.
* ``robust_subset``: µ-RegPro's robust scores are computed with the worst 32 % of the values removed. ``None`` values
  are *excluded before ranking* (they are neither counted in n nor removed as "worst"; report how many were missing
  separately); then ``floor(drop * n)`` of the n present values are removed (floor with a 1e-9 tolerance, so
  0.29 * 100 removes 29 although it evaluates to 28.999...), but at least one value is always kept. "Worst" is the
  lowest for ``higher_is_better=True`` (Dice) and the highest otherwise (TRE, Hausdorff); ties are removed in input
  order (stable ranking), and the kept values are returned in their input order.

Field regularity (``jacobian_determinant``, ``folding_fraction``, ``std_log_jacobian``)
--------------------------------------------------------------------------------------
A DDF ``(B, 3, X, Y, Z)`` or ``(3, X, Y, Z)`` (torch or numpy) in voxel units, component ``c`` the displacement along
spatial axis ``c`` (x = axis 0), the library's convention (``leancnn.nn.warp``). The transform is
``phi(x) = x + u(x)``, its Jacobian ``I + grad u`` with ``(grad u)[c, d] = du_c / dx_d``, computed in float64 by
``numpy.gradient`` (``edge_order=1``): central differences ``(u[i+1] - u[i-1]) / 2`` in the interior and one-sided
differences ``u[1] - u[0]`` / ``u[N-1] - u[N-2]`` at the borders, so every voxel has a value, exact for affine
fields (every spatial size must be >= 2). The determinant uses the explicit 3x3 cofactor expansion.

* ``folding_fraction``: the fraction of voxels with ``det <= 0`` (a zero determinant counts as folded), over all
  voxels of all batch items.
* ``std_log_jacobian`` (Learn2Reg's SDlogJ): population standard deviation (ddof 0) of ``log(det)`` over all voxels
  of all batch items, with ``det`` clipped to ``[1e-9, 1e9]`` first so folded voxels contribute ``log(1e-9)`` rather
  than NaN. Unlike Learn2Reg's evaluation script no border is cropped and no mask is applied.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage

from .registration import _mask  # the shared label check (numpy/torch, leading size-1 dims, NaN, threshold)

DET_CLIP = (1e-9, 1e9)


# --------------------------------------------------------------------------------------------------- validation
def _spacing(spacing) -> np.ndarray:
    message = f"spacing must be a positive number or 3 positive numbers (mm per voxel), got {spacing!r}"
    if isinstance(spacing, bool):
        raise ValueError(message)
    try:
        sp = np.asarray(spacing.detach().cpu().double() if isinstance(spacing, torch.Tensor) else spacing,
                        dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if sp.ndim == 0:
        sp = np.full(3, float(sp))
    if sp.shape != (3,) or not np.isfinite(sp).all() or (sp <= 0).any():
        raise ValueError(message)
    return sp


def _present(values, name: str = "values") -> list[float]:
    """The non-None entries of ``values`` as floats; anything else than finite real numbers is a ValueError."""
    if isinstance(values, (str, bytes)) or values is None:
        raise ValueError(f"{name} must be a sequence of numbers or None, got {values!r}")
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().reshape(-1).tolist()
    elif isinstance(values, np.ndarray):
        values = values.reshape(-1).tolist()
    try:
        items = list(values)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of numbers or None, got {type(values).__name__}") from None
    out = []
    for i, v in enumerate(items):
        if v is None:
            continue
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if not isinstance(v, numbers.Real) or isinstance(v, (bool, np.bool_)) or not math.isfinite(v):
            raise ValueError(f"{name}[{i}] must be a finite number or None, got {v!r}")
        out.append(float(v))
    return out


def _field(ddf, name: str = "ddf") -> tuple[np.ndarray, bool]:
    """``ddf`` as float64 numpy ``(B, 3, X, Y, Z)`` and whether it had a batch dim."""
    if isinstance(ddf, torch.Tensor):
        ddf = ddf.detach().cpu()
        if ddf.dtype in (torch.bfloat16, torch.float16):
            ddf = ddf.float()
        ddf = ddf.numpy()
    if not isinstance(ddf, np.ndarray):
        raise ValueError(f"{name} must be a torch tensor or numpy array (B, 3, X, Y, Z) or (3, X, Y, Z), got "
                         f"{type(ddf).__name__}")
    if not (np.issubdtype(ddf.dtype, np.floating) or np.issubdtype(ddf.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric (a displacement field in voxels), got dtype {ddf.dtype}")
    if ddf.ndim not in (4, 5) or ddf.shape[-4] != 3:
        raise ValueError(f"{name} must be a displacement field of shape (B, 3, X, Y, Z) or (3, X, Y, Z) with 3 "
                         f"components (voxel units), got shape {ddf.shape}")
    batched = ddf.ndim == 5
    if batched and ddf.shape[0] < 1:
        raise ValueError(f"{name} must have at least one batch item, got shape {ddf.shape}")
    if min(ddf.shape[-3:]) < 2:
        raise ValueError(f"{name} needs at least 2 voxels along every spatial axis (finite differences), got "
                         f"spatial shape {ddf.shape[-3:]}")
    u = ddf.astype(np.float64, copy=False)
    if not np.isfinite(u).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return (u if batched else u[None]), batched


# -------------------------------------------------------------------------------------------- surface distance
def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask (outside the grid counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hausdorff95_mm(a, b, spacing: float | Sequence[float] = 1.0, threshold: float = 0.5) -> float | None:
    """95th-percentile symmetric Hausdorff distance (mm) between the surfaces of ``a >= threshold`` and
    ``b >= threshold`` on one grid: ``max(P95(A -> B), P95(B -> A))`` of the surface-to-nearest-surface distances
    (surfaces by face-connected erosion; see the module docstring). ``spacing``: mm per voxel, one number or one
    per axis. None if either mask is empty; 0 for identical masks."""
    sp = _spacing(spacing)
    ma, mb = _mask(a, threshold, "a"), _mask(b, threshold, "b")
    if ma.shape != mb.shape:
        raise ValueError(f"a and b must be on the same grid (same shape), got {ma.shape} and {mb.shape}")
    if not ma.any() or not mb.any():
        return None
    sa, sb = _surface(ma), _surface(mb)
    a_to_b = ndimage.distance_transform_edt(~sb, sampling=sp)[sa]
    b_to_a = ndimage.distance_transform_edt(~sa, sampling=sp)[sb]
    return float(max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95)))


# ----------------------------------------------------------------------------------------------------- pooling
def rms(values: Iterable[float | None]) -> float | None:
    """Root mean square of the present (non-None) values; None if there are none."""
    present = _present(values)
    if not present:
        return None
    return math.sqrt(math.fsum(v * v for v in present) / len(present))


def robust_subset(values: Iterable[float | None], drop: float = 0.32, higher_is_better: bool = True) -> list[float]:
    """The present values without the worst ``floor(drop * n)`` of them (n = number of non-None values; None values
    are excluded before ranking), keeping at least one; in input order. Worst = lowest if ``higher_is_better``
    (Dice), highest otherwise (TRE). µ-RegPro's robust scores use ``drop=0.32``. ``drop`` must be in [0, 1)."""
    if not isinstance(drop, numbers.Real) or isinstance(drop, bool) or not math.isfinite(drop) \
            or not 0.0 <= drop < 1.0:
        raise ValueError(f"drop must be a number in [0, 1) (the fraction of worst values removed), got {drop!r}")
    if not isinstance(higher_is_better, (bool, np.bool_)):
        raise ValueError(f"higher_is_better must be True or False, got {higher_is_better!r}")
    present = _present(values)
    n = len(present)
    if n == 0:
        return []
    k = min(int(math.floor(drop * n + 1e-9)), n - 1)
    sign = 1.0 if higher_is_better else -1.0
    worst_first = sorted(range(n), key=lambda i: sign * present[i])  # sorted() is stable: ties in input order
    removed = set(worst_first[:k])
    return [v for i, v in enumerate(present) if i not in removed]


# ----------------------------------------------------------------------------------------------- field regularity
def jacobian_determinant(ddf) -> np.ndarray:
    """det(I + grad u) per voxel (float64) of a DDF ``(B, 3, X, Y, Z)`` -> ``(B, X, Y, Z)`` or ``(3, X, Y, Z)`` ->
    ``(X, Y, Z)``; ``numpy.gradient`` differences (central inside, one-sided at the borders)."""
    u, batched = _field(ddf)
    # j[r][c] = delta_rc + du_r / dx_c, each (B, X, Y, Z)
    j = [[np.gradient(u[:, r], axis=1 + c) + (1.0 if r == c else 0.0) for c in range(3)] for r in range(3)]
    det = (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
           - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
           + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))
    return det if batched else det[0]


def folding_fraction(ddf) -> float:
    """Fraction of voxels (all voxels of all batch items) whose Jacobian determinant is <= 0."""
    det = jacobian_determinant(ddf)
    return float(np.count_nonzero(det <= 0) / det.size)


def std_log_jacobian(ddf) -> float:
    """Learn2Reg's SDlogJ: population std of log(det) over all voxels of all batch items, det clipped to
    ``DET_CLIP`` = [1e-9, 1e9] first (folded voxels give log(1e-9))."""
    det = jacobian_determinant(ddf)
    return float(np.std(np.log(np.clip(det, *DET_CLIP))))


def field_regularity(ddf) -> dict[str, float]:
    """``{"folding": folding_fraction, "std_log_jac": std_log_jacobian}`` of one field (one determinant pass)."""
    det = jacobian_determinant(ddf)
    return {"folding": float(np.count_nonzero(det <= 0) / det.size),
            "std_log_jac": float(np.std(np.log(np.clip(det, *DET_CLIP))))}


__all__ = ["DET_CLIP", "field_regularity", "folding_fraction", "hausdorff95_mm", "jacobian_determinant", "rms",
           "robust_subset", "std_log_jacobian"]
