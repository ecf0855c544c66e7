"""Synthetic two-"modality" registration pairs (MR-like / US-like prostate phantoms) with a known deformation.

For tests and the demo: :func:`make_phantoms` draws the pairs (deterministic, cached), :func:`write_phantoms`
writes them as a paired NIfTI folder that :class:`~.nifti.PairedNifti` reads, with the true DDFs beside it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ...errors import LeancnnError
from ...io import atomic_path, cache_dir
from .nifti import _nibabel

__all__ = ["PHANTOM_SPACING", "PHANTOM_VERSION", "Phantom", "make_phantoms", "write_phantoms"]

PHANTOM_VERSION = 1
PHANTOM_SPACING = 1.5
_CONTROL = 4  # control points per axis of the random displacement


@dataclass
class Phantom:
    """A synthetic pair with its ground truth.

    ``moving_image`` ``(Xm, Ym, Zm)`` and ``fixed_image`` ``(Xf, Yf, Zf)`` uint8; labels ``(L, X, Y, Z)`` float32
    0/1 (label 0 the gland, 1.. the landmarks); ``ddf`` ``(3, Xf, Yf, Zf)`` float32, fixed-grid voxel units:
    fixed voxel p corresponds to the point p + ddf[:, p] of the moving volume resized to the fixed grid
    (corner-aligned: the ``"corners"`` initial mapping of :func:`leancnn.nn.warp.initial_map`); channel k is the
    displacement along axis k.
    """

    id: str
    moving_image: np.ndarray
    fixed_image: np.ndarray
    moving_label: np.ndarray
    fixed_label: np.ndarray
    ddf: np.ndarray
    spacing: float = PHANTOM_SPACING


def _grid_points(shape: Sequence[int]) -> np.ndarray:
    """Normalised corner-aligned coordinates ``(3, X, Y, Z)`` of a grid, in [-1, 1]."""
    axes = [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def _smooth_field(rng: np.random.Generator, coarse: int, points: np.ndarray, channels: int = 1) -> np.ndarray:
    """A smooth random field: N(0, 1) values on a ``coarse``^3 grid spanning [-1, 1]^3, cubic-spline
    interpolated at normalised ``points`` ``(3, ...)``. Returns ``(channels, ...)``."""
    from scipy.ndimage import map_coordinates

    idx = (np.clip(points, -1, 1) + 1) * (coarse - 1) / 2
    vals = rng.standard_normal((channels, coarse, coarse, coarse))
    return np.stack([map_coordinates(v, idx, order=3, mode="nearest") for v in vals])


def _rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    r = np.eye(3)
    for axis in range(3):
        a = rng.uniform(-max_angle, max_angle)
        c, s = math.cos(a), math.sin(a)
        i, j = [d for d in range(3) if d != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        r = r @ m
    return r


def _phantom_anatomy(rng: np.random.Generator, half: np.ndarray, landmarks: tuple[int, int]) -> dict:
    """Random anatomy in moving voxel units relative to the volume centre (``half`` = (N_m - 1) / 2)."""
    gland_c = rng.uniform(-0.08, 0.08, 3) * half
    gland_a = rng.uniform(0.5, 0.62, 3) * half
    rot = _rotation(rng, 0.35)
    zone_c = gland_c + rot @ (rng.uniform(-0.2, 0.2, 3) * gland_a)
    zone_a = gland_a * rng.uniform(0.4, 0.55, 3)
    ure_c = gland_c + rot @ (rng.uniform(-0.15, 0.15, 3) * gland_a)
    ure_d = rot @ np.array([0.0, 0.0, 1.0])
    n_lm = int(rng.integers(landmarks[0], landmarks[1] + 1))
    blobs: list[tuple[np.ndarray, float]] = []
    tries = 0
    while len(blobs) < n_lm:
        tries += 1
        if tries > 1000:  # pragma: no cover - the gland leaves ample room
            raise RuntimeError("could not place the phantom landmarks")
        r = float(rng.uniform(1.9, 2.4))
        u = rng.uniform(-1, 1, 3)
        if np.linalg.norm(u) > 0.7:
            continue
        c = gland_c + rot @ (u * gland_a)
        if all(np.linalg.norm(c - c2) > r + r2 + 2.5 for c2, r2 in blobs):
            blobs.append((c, r))
    return dict(gland=(gland_c, gland_a, rot), zone=(zone_c, zone_a, rot), urethra=(ure_c, ure_d, 1.4),
                blobs=blobs)


def _tissues(anat: dict, v: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of each structure at points ``v`` ``(3, ...)`` (moving voxel units, centred)."""

    def ellipsoid(c, a, rot):
        d = np.einsum("ij,i...->j...", rot, v - c.reshape(3, *[1] * (v.ndim - 1)))  # rot^T (v - c)
        return (d / a.reshape(3, *[1] * (v.ndim - 1))) ** 2

    gland = ellipsoid(*anat["gland"]).sum(0) <= 1
    zone = (ellipsoid(*anat["zone"]).sum(0) <= 1) & gland
    c, d, r = anat["urethra"]
    rel = v - c.reshape(3, *[1] * (v.ndim - 1))
    along = np.einsum("i,i...->...", d, rel)
    dist2 = (rel**2).sum(0) - along**2
    urethra = (dist2 <= r * r) & gland
    blobs = [((v - bc.reshape(3, *[1] * (v.ndim - 1))) ** 2).sum(0) <= br * br for bc, br in anat["blobs"]]
    return dict(gland=gland, zone=zone, urethra=urethra, blobs=blobs)


def _render(t: dict, values: dict, texture: np.ndarray, tex_weight: dict) -> np.ndarray:
    """Piecewise intensity: background, then gland, zone, urethra, blobs painted in that order, plus texture."""
    img = values["background"] + tex_weight["background"] * texture
    img = np.where(t["gland"], values["gland"] + tex_weight["gland"] * texture, img)
    img = np.where(t["zone"], values["zone"], img)
    img = np.where(t["urethra"], values["urethra"], img)
    for b in t["blobs"]:
        img = np.where(b, values["blob"], img)
    return img


def _labels(t: dict) -> np.ndarray:
    return np.stack([t["gland"], *t["blobs"]]).astype(np.float32)


def _make_one(seed: int, i: int, moving_shape, fixed_shape, landmarks, deformation: float, affine: float
              ) -> Phantom:
    from scipy.ndimage import gaussian_filter

    for attempt in range(20):
        rng = np.random.default_rng([seed, i, attempt])
        half_m = (np.array(moving_shape, dtype=np.float64) - 1) / 2
        half_f = (np.array(fixed_shape, dtype=np.float64) - 1) / 2
        anat = _phantom_anatomy(rng, half_m, landmarks)
        # the true map fixed normalised q -> moving normalised u = A q + t + d(q)
        q = _grid_points(fixed_shape)
        a_mat = np.eye(3) + rng.uniform(-affine, affine, (3, 3))
        t_vec = rng.uniform(-2 * affine, 2 * affine, 3)
        disp = _smooth_field(rng, _CONTROL, q, channels=3) * (deformation / half_f).reshape(3, 1, 1, 1)
        u = np.einsum("ij,j...->i...", a_mat, q) + t_vec.reshape(3, 1, 1, 1) + disp
        ddf = ((u - q) * half_f.reshape(3, 1, 1, 1)).astype(np.float32)
        # one anatomy-attached texture, seen through both modalities
        tex_seed = int(rng.integers(2**31))
        um = _grid_points(moving_shape)
        vm = um * half_m.reshape(3, 1, 1, 1)
        vf = u * half_m.reshape(3, 1, 1, 1)
        tm, tf = _tissues(anat, vm), _tissues(anat, vf)
        mlab, flab = _labels(tm), _labels(tf)
        if (flab[1:].reshape(len(flab) - 1, -1).sum(1) < 8).any() or (mlab.reshape(len(mlab), -1).sum(1) < 8).any():
            continue  # a landmark left (or nearly left) the fixed field of view: redraw
        tex_m = _smooth_field(np.random.default_rng(tex_seed), 9, um)[0]
        tex_f = _smooth_field(np.random.default_rng(tex_seed), 9, u)[0]
        # "MR": bright gland, darker zone, dark urethra, bright landmarks; textured background, additive noise
        mr = _render(tm, dict(background=0.3, gland=0.7, zone=0.5, urethra=0.15, blob=0.95), tex_m,
                     dict(background=0.08, gland=0.04))
        mr = gaussian_filter(mr, 0.6) + rng.normal(0, 0.03, mr.shape)
        # "US": gland darker than its surroundings, bright urethra, dark (anechoic) landmarks, a different texture
        # weight; multiplicative speckle (gamma, mean 1) and a smooth bias field in the fixed frame
        us = _render(tf, dict(background=0.55, gland=0.33, zone=0.4, urethra=0.75, blob=0.1), tex_f,
                     dict(background=0.12, gland=0.06))
        us = gaussian_filter(us, 0.6)
        bias = np.exp(0.25 * _smooth_field(rng, 4, q)[0])
        us = us * rng.gamma(4.0, 0.25, us.shape) * bias / 1.6
        return Phantom(
            id=f"case{i:03d}",
            moving_image=np.round(np.clip(mr, 0, 1) * 255).astype(np.uint8),
            fixed_image=np.round(np.clip(us, 0, 1) * 255).astype(np.uint8),
            moving_label=mlab, fixed_label=flab, ddf=ddf,
        )
    raise RuntimeError(f"phantom {i}: no valid deformation in 20 attempts")  # pragma: no cover


def _check_shape(shape, name: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise LeancnnError(f"{name} must be 3 ints, got {shape!r}") from None
    if len(dims) != 3 or min(dims) < 8:
        raise LeancnnError(f"{name} must be 3 ints >= 8, got {shape!r}")
    return dims


def make_phantoms(n: int, shape: Sequence[int] = (32, 40, 28), seed: int = 0, *,
                  moving_shape: Sequence[int] = (36, 36, 32), landmarks: tuple[int, int] = (2, 4),
                  deformation: float = 0.8, affine: float = 0.05, cache: bool = True) -> list[Phantom]:
    """``n`` synthetic two-"modality" pairs with a known smooth deformation (tests and the demo).

    Anatomy (drawn per pair, in the moving volume): a gland-like rotated ellipsoid (label 0) holding a "zone"
    (a smaller ellipsoid), a "urethra" (a tube) and ``landmarks`` (min, max) balls of radius 1.9-2.4 voxels
    (tens of voxels; labels 1..). ``shape`` is the fixed grid, ``moving_shape`` the moving one (1.5 mm voxels
    when written). The fixed volume sees the same anatomy through the map fixed -> moving
    ``u = A q + t + d(q)`` in corner-aligned normalised coordinates: A = I + U(-affine, affine)^{3x3},
    t = U(-2 affine, 2 affine)^3, d a cubic-spline upsampled 4^3 grid of N(0, deformation^2) displacements (fixed
    voxels). The defaults give displacements of about 3-5 voxels at most and Jacobian determinants of about
    0.45-1.75 (no folding). The fixed labels are the analytic shapes at u (crisp, not interpolated); ``ddf`` is
    u - q in fixed voxels. Modalities: "moving" = MR-like (gland bright, textured background, additive Gaussian
    noise), "fixed" = US-like (gland darker than its surroundings, bright urethra, dark landmarks, gamma speckle,
    smooth bias field), so raw intensity similarity is misleading. Images are uint8.

    Deterministic: pair i depends on (seed, i) only (``make_phantoms(4)`` is a prefix of ``make_phantoms(8)``).
    Cached (``cache=True``) as ``$LEANCNN_CACHE/registration/phantoms-<digest of the parameters>.npz``.
    """
    if not isinstance(n, numbers.Integral) or n < 1:
        raise LeancnnError(f"make_phantoms: n must be a positive int, got {n!r}")
    fixed_shape, moving_shape = _check_shape(shape, "shape"), _check_shape(moving_shape, "moving_shape")
    lo, hi = (int(x) for x in landmarks)
    if not 0 <= lo <= hi <= 8:
        raise LeancnnError(f"make_phantoms: landmarks must be (min, max) with 0 <= min <= max <= 8, got {landmarks!r}")
    if not (0 <= deformation <= 2 and 0 <= affine <= 0.2):
        raise LeancnnError(f"make_phantoms: deformation must be in [0, 2] voxels and affine in [0, 0.2], "
                           f"got {deformation}, {affine}")
    params = dict(version=PHANTOM_VERSION, n=int(n), shape=list(fixed_shape), moving_shape=list(moving_shape),
                  seed=int(seed), landmarks=[lo, hi], deformation=float(deformation), affine=float(affine))
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "registration" / f"phantoms-{digest}.npz" if cache else None
    if path is not None and path.is_file():
        try:
            return _load_phantoms(path, int(n))
        except Exception:  # a damaged cache file: build again
            pass
    out = [_make_one(int(seed), i, moving_shape, fixed_shape, (lo, hi), float(deformation), float(affine))
           for i in range(int(n))]
    if path is not None:
        arrays = {"params": np.array(json.dumps(params))}
        for i, p in enumerate(out):
            for name in ("moving_image", "fixed_image", "moving_label", "fixed_label", "ddf"):
                arrays[f"{i}_{name}"] = getattr(p, name)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return out


def _load_phantoms(path: Path, n: int) -> list[Phantom]:
    with np.load(path) as z:
        return [Phantom(id=f"case{i:03d}", **{name: z[f"{i}_{name}"] for name in
                                              ("moving_image", "fixed_image", "moving_label", "fixed_label", "ddf")})
                for i in range(n)]


def _nifti_bytes(data: np.ndarray, spacing: float) -> bytes:
    nib = _nibabel()
    img = nib.Nifti1Image(data, np.diag([spacing, spacing, spacing, 1.0]))
    img.header.set_zooms((spacing,) * 3 + (1.0,) * (data.ndim - 3))
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), mtime=0)


def write_phantoms(folder: str | Path, n: int = 8, shape: Sequence[int] = (32, 40, 28), seed: int = 0,
                   **kwargs) -> list[str]:
    """Write :func:`make_phantoms` (same arguments) as a paired folder that :class:`PairedNifti` reads:
    ``moving_images/``, ``fixed_images/`` (uint8), ``moving_labels/``, ``fixed_labels/`` (float32 (X, Y, Z, L))
    as ``case<i>.nii.gz`` with 1.5 mm voxels, plus ``true_ddfs/`` (float32 (X, Y, Z, 3), fixed voxel units),
    which the loader ignores. Files are written atomically and byte-identical for the same arguments.
    Returns the pair ids."""
    folder = Path(folder)
    phantoms = make_phantoms(n, shape, seed, **kwargs)
    for p in phantoms:
        files = {
            "moving_images": p.moving_image, "fixed_images": p.fixed_image,
            "moving_labels": np.moveaxis(p.moving_label, 0, -1), "fixed_labels": np.moveaxis(p.fixed_label, 0, -1),
            "true_ddfs": np.moveaxis(p.ddf, 0, -1),
        }
        for sub, data in files.items():
            target = folder / sub / f"{p.id}.nii.gz"
            payload = _nifti_bytes(np.ascontiguousarray(data), p.spacing)
            with atomic_path(target) as tmp:
                tmp.write_bytes(payload)
    return [p.id for p in phantoms]
