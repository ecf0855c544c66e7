"""Losses and metrics of label-driven weakly-supervised registration (Hu et al., MedIA 2018; YipengHu/label-reg).

Label similarity (``labelreg/losses.py``)
-----------------------------------------
* ``gaussian_smooth``: separable 1-D Gaussian with taps -floor(3σ)..floor(3σ), normalised to sum 1, zero "same"
  padding; σ = 0 (or any σ < 1/3, which leaves one tap) is the identity.
* ``multiscale_dice_loss`` = label-reg's ``multi_scale_loss(..., 'dice', scales)``: for each σ both labels are
  smoothed, per-σ loss = 1 - soft Dice, soft Dice = 2·Σ(t·p) / (Σt + Σp + 1e-6) over one sample's voxels (and
  channels), not squared; mean over σ, then mean over the batch. For σ > 0 its minimum is not 0 (a blurred mask
  is not a binary mask), but the smoothing keeps gradients alive for labels that do not overlap.
* ``label_cross_entropy``: the ISBI-2018 alternative, weighted binary cross-entropy
  ``-(w·t·log p + (1 - t)·log(1 - p))`` with p clipped to [1e-6, 1 - 1e-6] (no gradient where clipped), mean over
  voxels, also multi-scale.

Argument order: (warped moving label, fixed label) = (prediction, target). Labels are ``(B, C, X, Y, Z)``.

Regularisers (``labelreg/losses.py::local_displacement_energy``), on DDFs ``(B, 3, X, Y, Z)`` in voxel units
-----------------------------------------------------------------------------------------------------------
Derivatives are central differences ``(f[i+1] - f[i-1]) / 2``; each derivative also crops one voxel from *every*
spatial side (label-reg's ``gradient_dx/dy/dz``), so first derivatives live on the ``(X-2, Y-2, Z-2)`` interior and
second derivatives -- central differences applied twice -- on ``(X-4, Y-4, Z-4)``. The pure second derivative is
thus the wide stencil [1, 0, -2, 0, 1] / 4 (exact, = 2a, for a·x²), the mixed one the 4-point [[1, -1], [-1, 1]] / 4
on the diagonal neighbours.

* ``bending_energy``: mean over those voxels and the 3 components of
  u_xx² + u_yy² + u_zz² + 2u_xy² + 2u_xz² + 2u_yz², then mean over the batch. This is label-reg's and DeepReg's
  energy and MONAI's ``BendingEnergyLoss`` up to **monai 1.5.2**; **monai 1.6** switched to the compact [1, -2, 1]
  stencil, which agrees on quadratic fields but gives about 7x more on white noise (expected value per voxel and
  component for i.i.d. N(0, 1) displacements: 2.625 here, 19.5 with the compact stencil), so loss weights (label-reg:
  0.5) do not carry over to monai >= 1.6.
* ``gradient_l2`` / ``gradient_l1``: mean over the first-derivative interior and components of
  u_x² + u_y² + u_z² / |u_x| + |u_y| + |u_z|.

The training loss (:class:`RegistrationLoss`)
---------------------------------------------
``total = label + weight · regulariser``: the label term (``"dice"`` = ``multiscale_dice_loss`` over ``sigmas``,
label-reg's default; ``"cross_entropy"`` = ``label_cross_entropy`` over ``sigmas``) between the warped moving label
and the fixed label, plus ``weight`` (label-reg: 0.5) times a regulariser of ``REGULARISERS`` on the DDF (default
bending energy). The module returns the total and both terms (:class:`RegistrationLossTerms`), each a mean over the
batch; the terms' own checks name the bad argument. :meth:`RegistrationLoss.from_config` builds it from the
``loss`` config section (``label``, ``sigmas``, ``regulariser``, ``weight``) as the registration task always has:
``loss.sigmas`` are the Dice's scales, and ``cross_entropy`` keeps ``label_cross_entropy``'s default scales
``DEFAULT_SIGMAS`` whatever ``loss.sigmas`` says. Degenerate cases never give NaN: an empty fixed label and an
empty warped label give soft Dice 0 (the Dice term is 1 for that sample, and passes no gradient), and ``weight=0``
still computes (and returns) the regulariser. Under DDP each process computes the loss of its own batch (no
collective operation): DDP's gradient average then equals the gradient of the global batch's mean for equal local
batch sizes.

Metrics that training and evaluation share (``labelreg/utils.py``)
-------------------------------------------------------------------
``binary_dice``, ``centroid`` and ``centroid_distance_mm`` work on one label volume (numpy or torch; leading
singleton dims are dropped) thresholded at ``>= threshold`` (0.5). Centroids are in voxel indices of the label's grid
(for TRE: the fixed grid, both labels on it); an empty label gives ``None``, never NaN. ``batch_binary_dice`` is the
same Dice for a batch ``(B, C, X, Y, Z)`` of torch tensors, on their device (no synchronisation; what training logs
per step), where two empty masks give 1 (nothing to align, nothing missed) instead of ``None``.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..nn.warp import _check_volume

DEFAULT_SIGMAS = (0, 1, 2, 4, 8, 16)
REDUCTIONS = ("mean", "none")


# --------------------------------------------------------------------------------------------------- validation
def _check_pair(pred, target, names=("warped_label", "fixed_label")) -> None:
    _check_volume(pred, names[0])
    _check_volume(target, names[1])
    if pred.shape != target.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)} (warp the moving label onto the fixed grid first)")


def _check_sigma(sigma) -> float:
    if isinstance(sigma, torch.Tensor) and sigma.numel() == 1:
        sigma = sigma.item()
    if not isinstance(sigma, numbers.Real) or isinstance(sigma, bool) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0 (voxels), got {sigma!r}")
    return float(sigma)


def _check_sigmas(sigmas) -> tuple[float, ...]:
    if isinstance(sigmas, (numbers.Real, torch.Tensor)):
        sigmas = (sigmas,)
    try:
        values = tuple(sigmas)
    except TypeError:
        raise ValueError(f"sigmas must be a sequence of numbers >= 0, got {sigmas!r}") from None
    if not values:
        raise ValueError("sigmas must not be empty (use (0,) for a single unsmoothed scale)")
    return tuple(_check_sigma(s) for s in values)


def _check_positive(value, name: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_ddf(ddf, min_size: int, what: str) -> None:
    if not isinstance(ddf, torch.Tensor):
        raise ValueError(f"ddf must be a torch tensor (B, 3, X, Y, Z), got {type(ddf).__name__}")
    if ddf.ndim != 5 or ddf.shape[1] != 3 or ddf.shape[0] < 1:
        raise ValueError(f"ddf must be a displacement field of shape (B, 3, X, Y, Z), got shape {tuple(ddf.shape)}")
    if not ddf.is_floating_point():
        raise ValueError(f"ddf must be a floating-point tensor, got dtype {ddf.dtype}")
    if min(ddf.shape[2:]) < min_size:
        raise ValueError(f"{what} needs at least {min_size} voxels along every spatial axis (its central differences "
                         f"crop the border), got spatial shape {tuple(ddf.shape[2:])}")


# ---------------------------------------------------------------------------------------------- Gaussian smoothing
def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """label-reg's ``gauss_kernel1d``: exp(-t²/2σ²) for t = -floor(3σ)..floor(3σ), normalised to sum 1 (float64).
    σ = 0 gives the single tap [1]."""
    sigma = _check_sigma(sigma)
    if sigma == 0:
        return torch.ones(1, dtype=torch.float64)
    tail = int(math.floor(3.0 * sigma))
    t = torch.arange(-tail, tail + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * t**2 / sigma**2)
    return k / k.sum()


def _smoothing_matrix(kernel: torch.Tensor, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The ``(n, n)`` matrix of a 1-D "same" convolution with ``kernel`` (odd length) and zero padding: row i holds
    ``kernel[tail + j - i]`` at column j (the taps that reach outside the axis are the zero padding's)."""
    tail = (kernel.numel() - 1) // 2
    offset = torch.arange(n).view(1, n) - torch.arange(n).view(n, 1)  # j - i
    inside = offset.abs() <= tail
    m = torch.where(inside, kernel[(offset + tail).clamp(0, kernel.numel() - 1)], torch.zeros((), dtype=kernel.dtype))
    return m.to(dtype=dtype, device=device)


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``x`` (B, C, X, Y, Z) along X, Y, Z with zero "same" padding.

    σ = 0 (or a single-tap kernel, σ < 1/3) returns ``x`` itself. Each axis is one product with the ``(N, N)``
    banded matrix of the 1-D convolution (:func:`_smoothing_matrix`): the same numbers as a zero-padded
    convolution, several times faster on a CPU than a one-channel ``conv3d`` with the long kernels of large σ.
    """
    _check_volume(x, "x")
    kernel = gaussian_kernel1d(sigma)
    if kernel.numel() == 1:
        return x
    nx, ny, nz = x.shape[2:]
    mx, my, mz = (_smoothing_matrix(kernel, n, x.dtype, x.device) for n in (nx, ny, nz))
    v = x.reshape(-1, nx, ny, nz) @ mz.T  # along Z
    v = (v.transpose(2, 3) @ my.T).transpose(2, 3)  # along Y
    v = (v.transpose(1, 3) @ mx.T).transpose(1, 3)  # along X
    return v.reshape(x.shape)


# ------------------------------------------------------------------------------------------------ label losses
def soft_dice(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-sample soft Dice ``2·Σ(t·p) / (Σt + Σp + eps)`` over all non-batch dims: shape (B,)."""
    for x, name in ((pred, "pred"), (target, "target")):
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor (B, ...) with a batch dim, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if not (isinstance(eps, numbers.Real) and eps >= 0):
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    dims = tuple(range(1, pred.ndim))
    numerator = 2.0 * (target * pred).sum(dim=dims)
    denominator = target.sum(dim=dims) + pred.sum(dim=dims) + eps
    return numerator / denominator


def multiscale_dice_loss(warped_label: torch.Tensor, fixed_label: torch.Tensor,
                         sigmas: Sequence[float] = DEFAULT_SIGMAS, eps: float = 1e-6,
                         reduction: str = "mean") -> torch.Tensor:
    """Mean over σ of (1 - soft Dice of the two σ-smoothed labels); mean over the batch (``reduction="none"``:
    per sample, (B,)). label-reg's ``multi_scale_loss`` with ``loss_type='dice'``."""
    _check_pair(warped_label, fixed_label)
    scales = _check_sigmas(sigmas)
    per_sigma = [1.0 - soft_dice(gaussian_smooth(warped_label, s), gaussian_smooth(fixed_label, s), eps)
                 for s in scales]
    return _reduce(torch.stack(per_sigma, dim=1).mean(dim=1), reduction)


def label_cross_entropy(warped_label: torch.Tensor, fixed_label: torch.Tensor,
                        sigmas: Sequence[float] = DEFAULT_SIGMAS, pos_weight: float = 1.0, eps: float = 1e-6,
                        reduction: str = "mean") -> torch.Tensor:
    """Multi-scale weighted binary cross-entropy (label-reg ``cross-entropy``, the ISBI-2018 loss).

    Per σ: mean over voxels of ``-(pos_weight·t·log p + (1 - t)·log(1 - p))`` with t, p the smoothed fixed and
    warped labels and p clipped to [eps, 1 - eps]; mean over σ, then over the batch.
    """
    _check_pair(warped_label, fixed_label)
    scales = _check_sigmas(sigmas)
    pos_weight = _check_positive(pos_weight, "pos_weight")
    if not (isinstance(eps, numbers.Real) and 0 < eps < 0.5):
        raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
    per_sigma = []
    for s in scales:
        p = gaussian_smooth(warped_label, s).clamp(eps, 1.0 - eps)
        t = gaussian_smooth(fixed_label, s)
        ce = -(pos_weight * t * torch.log(p) + (1.0 - t) * torch.log(1.0 - p))
        per_sigma.append(ce.flatten(1).mean(dim=1))
    return _reduce(torch.stack(per_sigma, dim=1).mean(dim=1), reduction)


def signed_distance(label: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Signed distance maps ``(B, C, X, Y, Z)`` of the masks ``label >= threshold`` (each channel on its own), in
    voxels divided by the grid's largest size: negative inside (minus the distance to the nearest outside
    voxel), positive outside (the distance to the nearest mask voxel), 0 for an empty mask. Computed on the CPU
    with scipy (no gradient: it is a target)."""
    from scipy import ndimage

    _check_volume(label, "label")
    masks = (label.detach() >= threshold).cpu().numpy()
    out = np.zeros(masks.shape, dtype=np.float32)
    scale = float(max(masks.shape[2:]))
    for b in range(masks.shape[0]):
        for c in range(masks.shape[1]):
            m = masks[b, c]
            if m.any() and not m.all():
                out[b, c] = (ndimage.distance_transform_edt(~m) - ndimage.distance_transform_edt(m)) / scale
    return torch.from_numpy(out).to(device=label.device, dtype=label.dtype)


def boundary_loss(warped_label: torch.Tensor, fixed_sdm: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Kervadec et al.'s boundary loss (MIDL 2019 / MedIA 2021): the sum over voxels of the warped label times the
    fixed label's signed distance map (:func:`signed_distance`), per sample, divided by the fixed label's volume
    (the voxels where the map is <= 0) so that a landmark and the gland weigh alike: lowest when the warped label
    fills the fixed one exactly, and its gradient tells a label that does not overlap which way the target lies."""
    _check_pair(warped_label, fixed_sdm, ("warped_label", "fixed_sdm"))
    volume = (fixed_sdm < 0).flatten(1).sum(dim=1).clamp(min=1).to(warped_label.dtype)
    return _reduce(warped_label.mul(fixed_sdm).flatten(1).sum(dim=1) / volume, reduction)


# ---------------------------------------------------------------------------------------------- regularisers
def _diff(f: torch.Tensor, axis: int) -> torch.Tensor:
    """label-reg's gradient_d{x,y,z}: central difference along spatial ``axis``, cropped to the interior of all three
    spatial axes (each spatial size shrinks by 2)."""
    plus = [slice(None), slice(None), slice(1, -1), slice(1, -1), slice(1, -1)]
    minus = list(plus)
    plus[2 + axis] = slice(2, None)
    minus[2 + axis] = slice(None, -2)
    return (f[tuple(plus)] - f[tuple(minus)]) / 2.0


def bending_energy(ddf: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """label-reg / DeepReg / monai<=1.5.2 bending energy of ``ddf`` (B, 3, X, Y, Z), every spatial size >= 5:
    mean over the (X-4, Y-4, Z-4) interior and the 3 components of
    u_xx² + u_yy² + u_zz² + 2u_xy² + 2u_xz² + 2u_yz² (twice-applied central differences), then over the batch."""
    _check_ddf(ddf, 5, "bending_energy")
    dx, dy, dz = _diff(ddf, 0), _diff(ddf, 1), _diff(ddf, 2)
    dxx, dyy, dzz = _diff(dx, 0), _diff(dy, 1), _diff(dz, 2)
    dxy, dyz, dxz = _diff(dy, 0), _diff(dz, 1), _diff(dz, 0)
    energy = dxx**2 + dyy**2 + dzz**2 + 2.0 * dxy**2 + 2.0 * dxz**2 + 2.0 * dyz**2
    return _reduce(energy.flatten(1).mean(dim=1), reduction)


def gradient_l2(ddf: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """label-reg ``gradient-l2``: mean over the (X-2, Y-2, Z-2) interior and components of u_x² + u_y² + u_z²."""
    _check_ddf(ddf, 3, "gradient_l2")
    norms = _diff(ddf, 0) ** 2 + _diff(ddf, 1) ** 2 + _diff(ddf, 2) ** 2
    return _reduce(norms.flatten(1).mean(dim=1), reduction)


def gradient_l1(ddf: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """label-reg ``gradient-l1``: mean over the (X-2, Y-2, Z-2) interior and components of |u_x| + |u_y| + |u_z|."""
    _check_ddf(ddf, 3, "gradient_l1")
    norms = _diff(ddf, 0).abs() + _diff(ddf, 1).abs() + _diff(ddf, 2).abs()
    return _reduce(norms.flatten(1).mean(dim=1), reduction)


REGULARISERS = {"bending": bending_energy, "gradient_l2": gradient_l2, "gradient_l1": gradient_l1}
LABEL_LOSSES = {"dice": multiscale_dice_loss, "cross_entropy": label_cross_entropy}


# ------------------------------------------------------------------------------------------------ the loss
class RegistrationLossTerms(NamedTuple):
    """What :class:`RegistrationLoss` returns: ``total = label + weight * reg`` and its two terms (scalars)."""

    total: torch.Tensor
    label: torch.Tensor
    reg: torch.Tensor


class RegistrationLoss(nn.Module):
    """Label-driven registration loss: label term + ``weight`` x regulariser (see the module docstring).

    ``loss(warped_label, fixed_label, ddf)`` with the labels ``(B, C, X, Y, Z)`` on one grid and the DDF
    ``(B, 3, X, Y, Z)`` in voxel units; returns :class:`RegistrationLossTerms` ``(total, label, reg)``.
    ``label``: ``"dice"`` (multi-scale soft Dice) or ``"cross_entropy"``; ``sigmas``: the label term's Gaussian
    scales (voxels); ``regulariser``: a key of ``REGULARISERS``; ``weight``: a finite number >= 0. No parameters.
    """

    def __init__(self, label: str = "dice", sigmas: Sequence[float] = DEFAULT_SIGMAS, regulariser: str = "bending",
                 weight: float = 0.5, boundary_weight: float = 0.0):
        super().__init__()
        if label not in LABEL_LOSSES:
            raise ValueError(f"label must be one of {tuple(LABEL_LOSSES)}, got {label!r}")
        if regulariser not in REGULARISERS:
            raise ValueError(f"regulariser must be one of {tuple(REGULARISERS)}, got {regulariser!r}")
        if not isinstance(weight, numbers.Real) or isinstance(weight, bool) or not math.isfinite(weight) \
                or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        if not isinstance(boundary_weight, numbers.Real) or not math.isfinite(boundary_weight) or boundary_weight < 0:
            raise ValueError(f"boundary_weight must be a finite number >= 0, got {boundary_weight!r}")
        self.label, self.regulariser, self.weight = label, regulariser, float(weight)
        self.boundary_weight = float(boundary_weight)
        self.sigmas = _check_sigmas(sigmas)

    @classmethod
    def from_config(cls, cfg) -> "RegistrationLoss":
        """From the ``loss`` config section (``label``, ``sigmas``, ``regulariser``, ``weight``), as the
        registration task computes it: ``sigmas`` for ``dice``; ``cross_entropy`` uses ``DEFAULT_SIGMAS``."""
        sigmas = cfg.sigmas if cfg.label == "dice" else DEFAULT_SIGMAS
        return cls(cfg.label, sigmas, cfg.regulariser, cfg.weight, getattr(cfg, "boundary_weight", 0.0))

    def forward(self, warped_label: torch.Tensor, fixed_label: torch.Tensor, ddf: torch.Tensor,
                label_weights: torch.Tensor | None = None) -> RegistrationLossTerms:
        """``label_weights`` ``(B, L)`` (>= 0; every sample needs one positive weight): the labels are ``(B, L, X,
        Y, Z)`` channels, each scored on its own, and a sample's label term is the weighted mean of its labels'
        (0 weight = padding or an empty label); then the mean over the batch. None: the label term of the ``C``
        channels together, as label-reg (one label per sample)."""
        if label_weights is None:
            label = LABEL_LOSSES[self.label](warped_label, fixed_label, self.sigmas)
            if self.boundary_weight:
                label = label + self.boundary_weight * boundary_loss(warped_label, signed_distance(fixed_label))
        else:
            _check_pair(warped_label, fixed_label)
            b, n = warped_label.shape[:2]
            if tuple(label_weights.shape) != (b, n):
                raise ValueError(f"label_weights must be (B, L) = {(b, n)} for labels of shape "
                                 f"{tuple(warped_label.shape)}, got {tuple(label_weights.shape)}")
            w = label_weights.to(warped_label.dtype)
            total = w.sum(dim=1)
            if bool((w < 0).any()) or bool((total <= 0).any()):
                raise ValueError("label_weights must be >= 0 with at least one positive weight per sample")
            flat = (lambda t: t.reshape(b * n, 1, *t.shape[2:]))
            per = LABEL_LOSSES[self.label](flat(warped_label), flat(fixed_label), self.sigmas,
                                           reduction="none").view(b, n)
            if self.boundary_weight:
                sdm = signed_distance(flat(fixed_label))
                per = per + self.boundary_weight * boundary_loss(flat(warped_label), sdm, "none").view(b, n)
            label = ((per * w).sum(dim=1) / total).mean()
        reg = REGULARISERS[self.regulariser](ddf)
        return RegistrationLossTerms(label + self.weight * reg, label, reg)

    def extra_repr(self) -> str:
        return (f"label={self.label!r}, sigmas={self.sigmas}, regulariser={self.regulariser!r}, weight={self.weight}"
                + (f", boundary_weight={self.boundary_weight}" if self.boundary_weight else ""))


# ------------------------------------------------------------------------------------------------- evaluation
def _label_array(label, name: str) -> np.ndarray:
    if isinstance(label, torch.Tensor):
        label = label.detach().cpu()
        if label.dtype == torch.bfloat16:
            label = label.float()
        label = label.numpy()
    try:
        a = np.asarray(label)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array or tensor, got {type(label).__name__}") from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"{name} must be one 3-D label volume (X, Y, Z), optionally with leading size-1 dims, got "
                         f"shape {np.shape(label)} (loop over batch and label channels)")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating) and np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    return a


def _mask(label, threshold, name: str) -> np.ndarray:
    if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return _label_array(label, name) >= threshold


def binary_dice(a, b, threshold: float = 0.5) -> float | None:
    """Dice of the two masks ``a >= threshold`` and ``b >= threshold`` (same grid); None if both are empty."""
    ma, mb = _mask(a, threshold, "a"), _mask(b, threshold, "b")
    if ma.shape != mb.shape:
        raise ValueError(f"a and b must have the same shape, got {ma.shape} and {mb.shape}")
    total = int(ma.sum()) + int(mb.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(ma, mb).sum()) / total


@torch.no_grad()
def batch_binary_dice(warped_label: torch.Tensor, fixed_label: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-sample binary Dice ``(B,)`` float64 of the masks ``>= threshold`` of two label batches (B, C, X, Y, Z) on
    one grid, over all channels and voxels; 1 where both masks are empty. Stays on the tensors' device."""
    _check_pair(warped_label, fixed_label)
    if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    p, t = warped_label >= threshold, fixed_label >= threshold
    inter = (p & t).flatten(1).sum(1).double()
    total = p.flatten(1).sum(1).double() + t.flatten(1).sum(1).double()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def centroid(label, threshold: float = 0.5) -> np.ndarray | None:
    """Centroid (voxel indices, float64 (3,)) of the mask ``label >= threshold``; None if the mask is empty."""
    mask = _mask(label, threshold, "label")
    idx = np.argwhere(mask)
    if idx.shape[0] == 0:
        return None
    return idx.mean(axis=0, dtype=np.float64)


def centroid_distance_mm(a, b, spacing: float | Sequence[float] = 1.0, threshold: float = 0.5) -> float | None:
    """TRE between the centroids of the two thresholded labels on the same grid, in mm: the Euclidean norm of the
    centroid difference (voxels) times ``spacing`` (a number or one per axis; 1 gives voxels). None if either label
    is empty."""
    try:
        sp = np.asarray(spacing.detach().cpu().double() if isinstance(spacing, torch.Tensor) else spacing,
                        dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be a positive number or 3 positive numbers (mm per voxel), got {spacing!r}") \
            from None
    if sp.ndim == 0:
        sp = np.full(3, float(sp))
    if sp.shape != (3,) or not np.isfinite(sp).all() or (sp <= 0).any():
        raise ValueError(f"spacing must be a positive number or 3 positive numbers (mm per voxel), got {spacing!r}")
    ma, mb = _mask(a, threshold, "a"), _mask(b, threshold, "b")
    if ma.shape != mb.shape:
        raise ValueError(f"a and b must be on the same grid (same shape), got {ma.shape} and {mb.shape}")
    ca, cb = centroid(ma, 0.5), centroid(mb, 0.5)
    if ca is None or cb is None:
        return None
    return float(np.linalg.norm((ca - cb) * sp))


__all__ = ["DEFAULT_SIGMAS", "LABEL_LOSSES", "REGULARISERS", "RegistrationLoss", "RegistrationLossTerms",
           "batch_binary_dice", "bending_energy", "binary_dice", "centroid", "centroid_distance_mm",
           "gaussian_kernel1d", "gaussian_smooth", "gradient_l1", "gradient_l2", "label_cross_entropy",
           "multiscale_dice_loss", "soft_dice"]
