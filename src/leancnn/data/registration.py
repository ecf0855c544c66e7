"""Registration data: paired NIfTI folders, label sampling, random affine augmentation, synthetic phantom pairs.

After Hu et al., "Weakly-supervised convolutional neural networks for multimodal image registration", Medical
Image Analysis 49 (2018) (code: YipengHu/label-reg), and DeepReg's paired layout (DeepRegNet/DeepReg).

**Paired folder** (:class:`PairedNifti`, DeepReg's ``PairedDataLoader`` + ``NiftiFileLoader`` layout)::

    root/moving_images/<id>.nii.gz   3-D image (e.g. MR)
    root/fixed_images/<id>.nii.gz    3-D image (e.g. transrectal ultrasound)
    root/moving_labels/<id>.nii.gz   optional: 3-D (one label) or 4-D (X, Y, Z, L) masks in [0, 1]
    root/fixed_labels/<id>.nii.gz    optional: same L as the moving label; label k is the same structure

``.nii`` and ``.nii.gz`` are both read; a pair is matched by its id (the file name without the extension) and
every folder must hold the same ids. The label folders come both or not at all: a folder of images only is valid
for prediction. Shapes, the number of labels and readability of every header are checked when the folder is
opened (a few hundred headers take a fraction of a second); the voxels are read lazily, when a pair is first
asked for, and checked then (finite, labels in [0, 1]). With ``cache=True`` a read pair stays in memory in a
compact form (images in their file dtype, binary labels bit-packed: the 80 MR-US pairs take about 50 MB; with
DataLoader workers each worker holds its own copy). Every problem is a one-line :class:`LeancnnError` naming
the file (or the pair).

An item (:class:`RegistrationPair`) holds both images as float32 normalised per image (``"minmax"`` to [0, 1],
DeepReg's choice; ``"zscore"``; ``"none"`` keeps the file's values; label-reg normalises nothing), their 4x4
affines and voxel spacings (from the headers), and the labels as ``(L, X, Y, Z)`` float32. A label with no voxel
>= 0.5 in the moving or the fixed volume is kept but listed in ``empty``: evaluation skips it with a warning
(:meth:`PairedNifti.label_pairs`), training does not draw it.

**Sampling** (:class:`RegistrationDataset`, a torch ``Dataset``). ``mode="train"``: one item per image pair, with
*one* label pair drawn uniformly from that pair's labels (label-reg's two-stage sampling: the DataLoader's
shuffle picks image pairs, the dataset picks a label). The draw is seeded by ``(seed, epoch, pair index)``:
call :meth:`RegistrationDataset.set_epoch` every epoch for new draws (the same numbers with any number of
workers). ``mode="eval"``: one item per (pair, label), all labels, empty ones skipped with a warning;
``dataset.index[j]`` tells which. ``mode="predict"``: one item per pair, images only.

Every item is a :class:`RegistrationSample` ``(moving_image, fixed_image, moving_label, fixed_label)`` of
``(1, X, Y, Z)`` float32 tensors **on the fixed grid**: the moving image and label are *resized* to the fixed
shape by trilinear interpolation with ``align_corners=True`` (corner-aligned: moving voxel 0 on fixed voxel 0,
moving voxel N_m-1 on fixed voxel N_f-1, header world coordinates ignored), as label-reg resizes the moving image
for its network input. (label-reg keeps the moving *label* on its own grid and samples it at fixed index + DDF
mapped the same corner-aligned way; resizing it first gives the same correspondence, up to one more
interpolation, and lets every tensor of a batch share one shape.) So a DDF predicted from these tensors is in
fixed-grid voxel units, the resized moving volume has spacing ``s_m (N_m - 1) / (N_f - 1)`` per axis, and
distances (TRE) in mm use the fixed spacing. A resized label is soft (values in [0, 1]); threshold at 0.5 for
binary metrics. :func:`collate_pairs` stacks items of one fixed shape into ``(B, 1, X, Y, Z)`` tensors.

**Augmentation** (label-reg ``helpers.py::random_transform_generator``), ``augment_scale > 0``, training only:
per sample and independently for the moving and the fixed volume, the 8 corners of the [-1, 1]^3 cube each move
inward by U(0, scale) along every axis, an affine is fitted to them by least squares (:func:`random_affine`),
and the image and its label are resampled through it (:func:`affine_warp`: ``affine_grid`` + ``grid_sample``,
trilinear, ``align_corners=True``, normalised coordinates, border padding). label-reg moves 4 corners (an exact
fit) and DeepReg scales 4 corners by U(1 - s, 1); the 8-corner least-squares fit is symmetric in the axes. Since
the corners move inward, the transform samples a slightly smaller region: the content is enlarged by up to
1 / (1 - scale) per axis. The fitted corners can leave the cube by at most scale / 4, hence border padding.

**Phantoms** (:func:`make_phantoms`, :func:`write_phantoms`): synthetic two-"modality" pairs with a known smooth
deformation, for tests and the demo; see :func:`make_phantoms`.

**Cross-validation**: :func:`kfold_ids` splits pair ids (or groups of them, e.g. by patient) into k folds.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import numbers
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import LeancnnError
from ..io import atomic_path, cache_dir

__all__ = [
    "FOLDERS",
    "NAN_POLICIES",
    "NORMALISATIONS",
    "PairedNifti",
    "Phantom",
    "RegistrationDataset",
    "RegistrationPair",
    "RegistrationSample",
    "affine_warp",
    "augment_pair",
    "collate_pairs",
    "kfold_ids",
    "list_pair_ids",
    "make_phantoms",
    "normalise_image",
    "random_affine",
    "resize_to_grid",
    "to_fixed_grid",
    "initial_map",
    "pair_initial_map",
    "INITIAL_MAPPINGS",
    "write_phantoms",
]

FOLDERS = ("moving_images", "fixed_images", "moving_labels", "fixed_labels")
NORMALISATIONS = ("minmax", "zscore", "none")
NAN_POLICIES = ("error", "zero")
MODES = ("train", "eval", "predict")
_SUFFIXES = (".nii.gz", ".nii")
_FEW = 5  # how many offending names an error message lists


def _few(items: Sequence[str]) -> str:
    items = list(items)
    text = ", ".join(items[:_FEW])
    return text + (f" (and {len(items) - _FEW} more)" if len(items) > _FEW else "")


def _nibabel():
    try:
        import nibabel
    except ImportError:  # pragma: no cover - nibabel is a dependency of the registration task
        raise LeancnnError("reading NIfTI files needs nibabel: pip install nibabel") from None
    return nibabel


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text and text[0] else type(e).__name__


# ------------------------------------------------------------------------------------------------ normalisation
def normalise_image(x: np.ndarray, method: str = "minmax") -> np.ndarray:
    """Per-image intensity normalisation to float32: ``"minmax"`` to [0, 1] (a constant image gives 0),
    ``"zscore"`` to zero mean and unit standard deviation (a constant image gives 0), ``"none"``."""
    if method not in NORMALISATIONS:
        raise LeancnnError(f"unknown normalisation '{method}'; choose from: {', '.join(NORMALISATIONS)}")
    x = np.asarray(x, dtype=np.float32)
    if method == "none" or x.size == 0:
        return x.copy()
    if method == "minmax":
        lo, hi = float(x.min()), float(x.max())
        return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    mean, std = float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))
    return ((x - mean) / std).astype(np.float32) if std > 0 else np.zeros_like(x)


# ------------------------------------------------------------------------------------------------ paired folder
@dataclass
class RegistrationPair:
    """One image pair (and its labels) as read from a paired folder.

    Images are ``(X, Y, Z)`` float32 (normalised as the dataset says); labels ``(L, X, Y, Z)`` float32 in [0, 1]
    (``None`` for a folder without labels); ``empty`` lists the label indices with no voxel >= 0.5 in the moving
    or the fixed label. Affines are the headers' 4x4 voxel-to-world matrices, spacings their voxel sizes (mm).
    """

    id: str
    moving_image: np.ndarray
    fixed_image: np.ndarray
    moving_affine: np.ndarray
    fixed_affine: np.ndarray
    moving_spacing: tuple[float, float, float]
    fixed_spacing: tuple[float, float, float]
    moving_label: np.ndarray | None = None
    fixed_label: np.ndarray | None = None
    empty: list[int] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return 0 if self.moving_label is None else int(self.moving_label.shape[0])


@dataclass(frozen=True)
class _Volume:
    """What a header says about one file (checked when the folder is opened)."""

    path: Path
    shape: tuple[int, ...]  # the file's full shape
    spatial: tuple[int, int, int]
    num_labels: int  # 0 for an image
    affine: np.ndarray
    spacing: tuple[float, float, float]


def _spatial_image(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:  # (X, Y, Z, 1) is a 3-D image
        dims.pop()
    return tuple(dims) if len(dims) == 3 else None


def _spatial_label(shape: tuple[int, ...]) -> tuple[tuple[int, int, int], int] | None:
    dims = list(shape)
    if len(dims) == 3:
        return tuple(dims), 1
    if len(dims) == 4:
        return tuple(dims[:3]), dims[3]
    if len(dims) == 5 and dims[3] == 1:  # NIfTI vector convention (X, Y, Z, 1, L)
        return tuple(dims[:3]), dims[4]
    return None


def _read_header(path: Path, is_label: bool) -> _Volume:
    nib = _nibabel()
    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except Exception as e:  # nibabel raises many types for a bad file
        raise LeancnnError(f"cannot read NIfTI file '{path}': {_reason(e)}") from None
    if is_label:
        found = _spatial_label(shape)
        if found is None or found[1] < 1:
            raise LeancnnError(f"label file '{path}' must be 3-D (one label) or 4-D (X, Y, Z, L), got shape {shape}")
        spatial, num = found
    else:
        spatial, num = _spatial_image(shape), 0
        if spatial is None:
            raise LeancnnError(f"image file '{path}' must be 3-D, got shape {shape}")
    if min(spatial) < 1:
        raise LeancnnError(f"NIfTI file '{path}' is empty, shape {shape}")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise LeancnnError(f"NIfTI file '{path}' has no valid 4x4 affine in its header")
    spacing = tuple(zooms[:3]) if len(zooms) >= 3 else (1.0, 1.0, 1.0)
    return _Volume(path, shape, spatial, num, affine, spacing)


def _read_data(vol: _Volume, nan_policy: str) -> np.ndarray:
    """The voxels of a checked file: images ``(X, Y, Z)`` in their file dtype (floats as float32), labels
    ``(L, X, Y, Z)`` float32."""
    nib = _nibabel()
    try:
        data = np.asanyarray(nib.load(str(vol.path)).dataobj)
    except Exception as e:
        raise LeancnnError(f"cannot read the voxels of NIfTI file '{vol.path}': {_reason(e)}") from None
    if data.shape != vol.shape:  # pragma: no cover - the header said otherwise
        raise LeancnnError(f"NIfTI file '{vol.path}' has shape {data.shape}, its header says {vol.shape}")
    if vol.num_labels:
        data = np.moveaxis(data.reshape(*vol.spatial, vol.num_labels), -1, 0)
    else:
        data = data.reshape(vol.spatial)
    if data.dtype.kind not in "biuf":
        raise LeancnnError(f"NIfTI file '{vol.path}' has unsupported voxel type {data.dtype}")
    if data.dtype.kind == "f" or vol.num_labels:
        data = data.astype(np.float32)
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        if bad.any():
            if nan_policy == "error":
                raise LeancnnError(f"NIfTI file '{vol.path}' has {int(bad.sum())} NaN/inf voxels "
                                   f"(nan_policy='zero' replaces them by 0)")
            data = np.where(bad, np.float32(0), data)
    if vol.num_labels and data.size:
        lo, hi = float(data.min()), float(data.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise LeancnnError(f"label file '{vol.path}' has values in [{lo:g}, {hi:g}], expected masks in [0, 1] "
                               f"(store several structures as a 4-D file (X, Y, Z, L) of 0/1 masks)")
        data = np.clip(data, 0, 1)
    return data


def _pack(a: np.ndarray):
    """A compact copy for the in-memory cache: binary float arrays bit-packed, the rest as they are."""
    if a.dtype == np.float32 and np.all((a == 0) | (a == 1)):
        return ("bits", np.packbits(a.astype(bool), axis=None), a.shape)
    return ("raw", a, a.shape)


def _unpack(packed) -> np.ndarray:
    kind, data, shape = packed
    if kind == "bits":
        return np.unpackbits(data, count=int(np.prod(shape))).reshape(shape).astype(np.float32)
    return data


def _volume_id(name: str) -> str | None:
    if name.startswith("."):
        return None
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _list_folder(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        vid = _volume_id(path.name)
        if vid is None or not path.is_file():
            continue
        if vid in found:
            raise LeancnnError(f"'{folder}' holds two files for '{vid}': {found[vid].name} and {path.name}")
        found[vid] = path
    return found


def _folders(root: Path, labels: bool | None) -> tuple[str, ...]:
    if not root.is_dir():
        raise LeancnnError(f"paired registration folder '{root}' does not exist or is not a directory")
    missing = [f for f in FOLDERS[:2] if not (root / f).is_dir()]
    if missing:
        raise LeancnnError(f"'{root}' is not a paired registration folder: no {', '.join(f + '/' for f in missing)} "
                           f"(expected moving_images/, fixed_images/ and optionally moving_labels/, fixed_labels/)")
    have = [(root / f).is_dir() for f in FOLDERS[2:]]
    if labels is False:
        return FOLDERS[:2]
    if have[0] != have[1]:
        lacking = FOLDERS[2 + have.index(False)]
        raise LeancnnError(f"'{root}' has {FOLDERS[2 + have.index(True)]}/ but no {lacking}/: "
                           f"give both label folders or neither")
    if not have[0]:
        if labels:
            raise LeancnnError(f"'{root}' has no moving_labels/ and fixed_labels/ but labels were required")
        return FOLDERS[:2]
    return FOLDERS


def list_pair_ids(root: str | Path, labels: bool | None = None) -> list[str]:
    """The sorted pair ids of a paired folder; an error names ids missing from some folder."""
    root = Path(root)
    folders = _folders(root, labels)
    listed = {f: _list_folder(root / f) for f in folders}
    every = sorted(set().union(*[set(v) for v in listed.values()]))
    unmatched = [f"{vid} missing from {f}/" for vid in every for f in folders if vid not in listed[f]]
    if unmatched:
        raise LeancnnError(f"'{root}': file names do not match across {', '.join(f + '/' for f in folders)}: "
                           f"{_few(unmatched)}")
    if not every:
        raise LeancnnError(f"'{root}' holds no NIfTI pairs (.nii or .nii.gz files) in moving_images/")
    return every


class PairedNifti:
    """A paired registration folder (see the module docstring), read lazily.

    ``split_ids``: the pair ids to use, in that order (e.g. one fold of :func:`kfold_ids`); default all, sorted.
    ``labels``: ``None`` uses the label folders when present, ``True`` requires them, ``False`` ignores them.
    ``normalise``: ``"minmax"`` | ``"zscore"`` | ``"none"``, per image. ``nan_policy``: ``"error"`` (default) or
    ``"zero"`` (non-finite voxels become 0 before normalisation). ``cache``: keep read pairs in memory.
    """

    def __init__(self, root: str | Path, split_ids: Iterable[str] | None = None, *, labels: bool | None = None,
                 normalise: str = "minmax", nan_policy: str = "error", cache: bool = True):
        if normalise not in NORMALISATIONS:
            raise LeancnnError(f"unknown normalisation '{normalise}'; choose from: {', '.join(NORMALISATIONS)}")
        if nan_policy not in NAN_POLICIES:
            raise LeancnnError(f"unknown nan_policy '{nan_policy}'; choose from: {', '.join(NAN_POLICIES)}")
        self.root = Path(root)
        self.folders = _folders(self.root, labels)
        self.has_labels = len(self.folders) == 4
        all_ids = list_pair_ids(self.root, labels=self.has_labels)
        if split_ids is None:
            ids = all_ids
        else:
            ids = [str(i) for i in split_ids]
            unknown = [i for i in ids if i not in set(all_ids)]
            if unknown:
                raise LeancnnError(f"'{self.root}' has no pair {_few(unknown)}")
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise LeancnnError(f"split_ids repeats {_few(dupes)}")
            if not ids:
                raise LeancnnError(f"split_ids for '{self.root}' is empty")
        self.ids: list[str] = ids
        self.normalise, self.nan_policy, self.cache = normalise, nan_policy, cache
        self._headers = [self._check_pair(vid) for vid in ids]
        self._pos = {vid: i for i, vid in enumerate(ids)}
        self._cache: dict[int, tuple] = {}

    def _path(self, folder: str, vid: str) -> Path:
        for suffix in _SUFFIXES:
            path = self.root / folder / f"{vid}{suffix}"
            if path.is_file():
                return path
        raise LeancnnError(f"'{self.root / folder}' has no file for pair '{vid}'")  # pragma: no cover

    def _check_pair(self, vid: str) -> dict[str, _Volume]:
        vols = {f: _read_header(self._path(f, vid), is_label=f.endswith("labels")) for f in self.folders}
        if self.has_labels:
            for side in ("moving", "fixed"):
                img, lab = vols[f"{side}_images"], vols[f"{side}_labels"]
                if lab.spatial != img.spatial:
                    raise LeancnnError(f"label file '{lab.path}' has spatial shape {lab.spatial} but its image "
                                       f"'{img.path.name}' has {img.spatial}")
            m, f = vols["moving_labels"].num_labels, vols["fixed_labels"].num_labels
            if m != f:
                raise LeancnnError(f"pair '{vid}': the moving label has {m} labels but the fixed label has {f} "
                                   f"({vols['moving_labels'].path}, {vols['fixed_labels'].path})")
        return vols

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, key: int | str) -> int:
        if isinstance(key, str):
            if key not in self._pos:
                raise LeancnnError(f"'{self.root}' has no pair '{key}' in this split")
            return self._pos[key]
        if not isinstance(key, numbers.Integral) or isinstance(key, bool):
            raise TypeError(f"pair index must be an int or an id string, got {type(key).__name__}")
        n = len(self.ids)
        if not -n <= key < n:
            raise IndexError(f"pair index {key} out of range for {n} pairs")
        return int(key) % n

    def num_labels(self, key: int | str) -> int:
        """The number of labels of a pair, from its header (0 without labels)."""
        vols = self._headers[self.index_of(key)]
        return vols["moving_labels"].num_labels if self.has_labels else 0

    def shapes(self, key: int | str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """``(moving_shape, fixed_shape)`` of a pair, from its headers."""
        vols = self._headers[self.index_of(key)]
        return vols["moving_images"].spatial, vols["fixed_images"].spatial

    def _raw(self, i: int) -> tuple:
        if i in self._cache:
            return self._cache[i]
        vols = self._headers[i]
        raw = tuple(_pack(_read_data(vols[f], self.nan_policy)) for f in self.folders)
        empty: list[int] = []
        if self.has_labels:
            m, f = _unpack(raw[2]), _unpack(raw[3])
            empty = [k for k in range(m.shape[0]) if not (m[k] >= 0.5).any() or not (f[k] >= 0.5).any()]
        raw = (*raw, empty)
        if self.cache:
            self._cache[i] = raw
        return raw

    def __getitem__(self, key: int | str) -> RegistrationPair:
        i = self.index_of(key)
        vols = self._headers[i]
        raw = self._raw(i)
        mov, fix = vols["moving_images"], vols["fixed_images"]
        pair = RegistrationPair(
            id=self.ids[i],
            moving_image=normalise_image(_unpack(raw[0]), self.normalise),
            fixed_image=normalise_image(_unpack(raw[1]), self.normalise),
            moving_affine=mov.affine.copy(), fixed_affine=fix.affine.copy(),
            moving_spacing=mov.spacing, fixed_spacing=fix.spacing,
            empty=list(raw[-1]),
        )
        if self.has_labels:
            pair.moving_label, pair.fixed_label = _unpack(raw[2]).copy(), _unpack(raw[3]).copy()
        return pair

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def empty_labels(self) -> dict[str, list[int]]:
        """``{pair id: empty label indices}`` for the pairs that have any (reads every pair)."""
        return {self.ids[i]: list(self._raw(i)[-1]) for i in range(len(self)) if self._raw(i)[-1]}

    def unlabelled(self) -> list[str]:
        """The ids of the pairs whose every label is empty (no label has a voxel >= 0.5 in both the moving and the
        fixed file; reads every pair, so an unreadable or non-finite file is refused here too). ``[]`` without
        label folders."""
        if not self.has_labels:
            return []
        return [self.ids[i] for i in range(len(self)) if len(self._raw(i)[-1]) == self.num_labels(i)]

    def files(self, key: int | str) -> dict[str, Path]:
        """``{folder: file}`` of one pair (``moving_images``, ``fixed_images`` and, with labels, the label files)."""
        return {f: vol.path for f, vol in self._headers[self.index_of(key)].items()}

    def label_pairs(self, skip_empty: bool = True) -> list[tuple[int, int]]:
        """Every ``(pair index, label index)``, for evaluation over all labels. Empty labels are left out with
        one warning naming them (``skip_empty=False`` keeps them). Reads every pair."""
        if not self.has_labels:
            raise LeancnnError(f"'{self.root}' has no label folders (moving_labels/, fixed_labels/)")
        out, skipped = [], []
        for i in range(len(self)):
            empty = set(self._raw(i)[-1]) if skip_empty else set()
            for k in range(self.num_labels(i)):
                if k in empty:
                    skipped.append(f"{self.ids[i]} label {k}")
                else:
                    out.append((i, k))
        if skipped:
            warnings.warn(f"'{self.root}': skipping {len(skipped)} empty label(s) (no voxel >= 0.5 in the moving "
                          f"or the fixed label): {_few(skipped)}", stacklevel=2)
        return out


# ------------------------------------------------------------------------------------------------ augmentation
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


# ------------------------------------------------------------------------------------------------ torch dataset
def resize_to_grid(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resize of ``(C, X, Y, Z)`` to ``shape`` with ``align_corners=True`` (corner voxels aligned)."""
    from ..nn.warp import resize_volume

    return resize_volume(x[None], shape)[0]


INITIAL_MAPPINGS = ("corners", "centre")


def initial_map(moving_shape: Sequence[int], fixed_shape: Sequence[int], moving_spacing: Sequence[float] | None = None,
                fixed_spacing: Sequence[float] | None = None, mode: str = "corners") -> np.ndarray:
    """The 4x4 map from fixed voxel indices to moving voxel indices that puts the moving volume on the fixed grid
    before any registration.

    ``"corners"`` (label-reg): corner voxels on corner voxels, ``m = q (N_m - 1) / (N_f - 1)`` per axis (the
    moving volume is stretched to the fixed extent; spacings are not used). ``"centre"``: the volumes' centres
    coincide and millimetres stay millimetres (voxel spacings from the headers, header origins and rotations
    ignored), ``m = c_m + (q - c_f) s_f / s_m`` with ``c = (N - 1) / 2``."""
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


def pair_initial_map(pair: "RegistrationPair", mode: str = "corners") -> np.ndarray:
    return initial_map(pair.moving_image.shape, pair.fixed_image.shape, pair.moving_spacing, pair.fixed_spacing,
                       mode)


def to_fixed_grid(x: torch.Tensor, shape: Sequence[int], matrix: np.ndarray | None = None) -> torch.Tensor:
    """``(C, Xm, Ym, Zm)`` resampled (trilinear) on the fixed grid ``shape``: by :func:`resize_to_grid` (the
    "corners" mapping) when ``matrix`` is None, else at ``matrix`` @ fixed voxel (zeros outside the volume)."""
    if matrix is None:
        return resize_to_grid(x, shape)
    from ..nn.warp import warp

    zero = torch.zeros(1, 3, *(int(s) for s in shape), dtype=x.dtype)
    return warp(x[None], zero, fixed_to_moving=matrix)[0]


class RegistrationSample(NamedTuple):
    """``(1, X, Y, Z)`` float32 tensors on the fixed grid (batched: ``(B, 1, X, Y, Z)``); labels None in predict."""

    moving_image: torch.Tensor
    fixed_image: torch.Tensor
    moving_label: torch.Tensor | None
    fixed_label: torch.Tensor | None


class RegistrationDataset(Dataset):
    """Torch view of a :class:`PairedNifti` for training / evaluation / prediction (see the module docstring).

    ``mode="train"``: item i = pair i with one label drawn uniformly (non-empty labels only, unless all are
    empty), seeded by ``(seed, epoch, i)``; ``augment_scale > 0`` adds the random affine augmentation.
    ``mode="eval"``: item j = ``index[j]`` = (pair, label) over all labels (empty ones skipped, with a warning,
    when ``skip_empty``). ``mode="predict"``: item i = pair i, images only. The moving image and label are
    resized to the fixed grid (trilinear, ``align_corners=True``).
    """

    def __init__(self, pairs: PairedNifti, mode: str = "train", seed: int = 0, augment_scale: float = 0.0,
                 skip_empty: bool = True, initial: str = "corners"):
        if mode not in MODES:
            raise LeancnnError(f"unknown dataset mode '{mode}'; choose from: {', '.join(MODES)}")
        if mode != "predict" and not pairs.has_labels:
            raise LeancnnError(f"'{pairs.root}' has no label folders (moving_labels/, fixed_labels/); "
                               f"mode '{mode}' needs them")
        if augment_scale and mode != "train":
            raise LeancnnError(f"augmentation is for training only, got augment_scale={augment_scale} in mode '{mode}'")
        if not 0 <= augment_scale < 1:
            raise LeancnnError(f"augment_scale must be in [0, 1), got {augment_scale}")
        if initial not in INITIAL_MAPPINGS:
            raise LeancnnError(f"unknown initial mapping '{initial}'; choose from: {', '.join(INITIAL_MAPPINGS)}")
        self.pairs, self.mode, self.seed, self.initial = pairs, mode, int(seed), initial
        self.augment_scale, self.skip_empty = float(augment_scale), skip_empty
        self.epoch = 0
        self.index: list[tuple[int, int]] = pairs.label_pairs(skip_empty) if mode == "eval" else []

    def set_epoch(self, epoch: int) -> None:
        """New label draws and augmentations for this epoch (training)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index) if self.mode == "eval" else len(self.pairs)

    def draw_label(self, i: int, pair: RegistrationPair | None = None) -> int:
        """The label index that training item ``i`` uses this epoch."""
        return self._draw(i, pair or self.pairs[i])[0]

    def _draw(self, i: int, pair: RegistrationPair):
        rng = np.random.default_rng([self.seed, self.epoch, i])
        choices = list(range(pair.num_labels))
        if self.skip_empty:
            choices = [k for k in choices if k not in pair.empty] or choices
        return choices[int(rng.integers(len(choices)))], rng

    def __getitem__(self, j: int) -> RegistrationSample:
        if self.mode == "eval":
            i, k = self.index[j]
            pair, rng = self.pairs[i], None
        else:
            i = self.pairs.index_of(j)
            pair = self.pairs[i]
            k, rng = self._draw(i, pair) if self.mode == "train" else (None, None)
        shape = pair.fixed_image.shape
        matrix = None if self.initial == "corners" else pair_initial_map(pair, self.initial)
        mov = to_fixed_grid(torch.from_numpy(pair.moving_image)[None], shape, matrix)
        fix = torch.from_numpy(pair.fixed_image)[None]
        if k is None:
            return RegistrationSample(mov, fix, None, None)
        mlab = to_fixed_grid(torch.from_numpy(pair.moving_label[k])[None], shape, matrix).clamp_(0, 1)
        flab = torch.from_numpy(pair.fixed_label[k])[None]
        if self.augment_scale > 0:
            mov, fix, mlab, flab = (v[0] for v in augment_pair(mov[None], fix[None], mlab[None], flab[None],
                                                                 self.augment_scale, rng))
        return RegistrationSample(mov, fix, mlab, flab)


def collate_pairs(batch: Sequence[RegistrationSample]) -> RegistrationSample:
    """Stack samples of one fixed shape into ``(B, 1, X, Y, Z)`` tensors (labels stay None in predict mode)."""
    if not batch:
        raise LeancnnError("cannot collate an empty batch")
    shapes = sorted({tuple(s.fixed_image.shape[1:]) for s in batch})
    if len(shapes) > 1:
        raise LeancnnError(f"cannot batch pairs of different fixed shapes {_few([str(s) for s in shapes])}: "
                           f"use batch size 1 or resample the fixed images to one shape")
    out = []
    for field_ in RegistrationSample._fields:
        vals = [getattr(s, field_) for s in batch]
        out.append(None if any(v is None for v in vals) else torch.stack(vals))
    return RegistrationSample(*out)


# ------------------------------------------------------------------------------------------------ cross-validation
def kfold_ids(ids: Sequence[str], k: int, seed: int = 0, groups: Sequence | None = None
              ) -> list[tuple[list[str], list[str]]]:
    """k-fold cross-validation by pair: ``[(train_ids, test_ids)] * k``. The ids are shuffled (seeded) and dealt
    into k test folds whose sizes differ by at most one; every id is in exactly one test fold, and each list keeps
    the input order. With ``groups`` (one per id, e.g. the patient), whole groups go to one fold (largest
    groups first, each to the currently smallest fold, ties broken by the shuffle)."""
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise LeancnnError(f"kfold_ids: repeated ids {_few(sorted({i for i in ids if ids.count(i) > 1}))}")
    if groups is None:
        groups = ids
    groups = list(groups)
    if len(groups) != len(ids):
        raise LeancnnError(f"kfold_ids: {len(groups)} groups for {len(ids)} ids")
    members: dict = {}
    for vid, g in zip(ids, groups):
        members.setdefault(g, []).append(vid)
    if not isinstance(k, numbers.Integral) or not 2 <= k <= len(members):
        raise LeancnnError(f"kfold_ids: k must be an int in [2, {len(members)}] (the number of "
                           f"{'groups' if len(members) < len(ids) else 'ids'}), got {k!r}")
    keys = list(members)
    order = np.random.default_rng(seed).permutation(len(keys))
    shuffled = [keys[o] for o in order]
    folds: list[list[str]] = [[] for _ in range(k)]
    if len(members) == len(ids):  # one id per group: deal round-robin
        for j, g in enumerate(shuffled):
            folds[j % k].extend(members[g])
    else:
        for g in sorted(shuffled, key=lambda g: -len(members[g])):  # stable: ties keep the shuffle
            min(folds, key=len).extend(members[g])
    pos = {vid: n for n, vid in enumerate(ids)}
    out = []
    for j in range(k):
        test = sorted(folds[j], key=pos.__getitem__)
        held = set(test)
        out.append(([i for i in ids if i not in held], test))
    return out


# ------------------------------------------------------------------------------------------------ phantoms
PHANTOM_VERSION = 1
PHANTOM_SPACING = 1.5
_CONTROL = 4  # control points per axis of the random displacement


@dataclass
class Phantom:
    """A synthetic pair with its ground truth.

    ``moving_image`` ``(Xm, Ym, Zm)`` and ``fixed_image`` ``(Xf, Yf, Zf)`` uint8; labels ``(L, X, Y, Z)`` float32
    0/1 (label 0 the gland, 1.. the landmarks); ``ddf`` ``(3, Xf, Yf, Zf)`` float32, fixed-grid voxel units:
    fixed voxel p corresponds to the point p + ddf[:, p] of the moving volume resized to the fixed grid
    (corner-aligned, as :class:`RegistrationDataset` resizes it); channel k is the displacement along axis k.
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
    0.45-1.75 (no folding). The fixed labels are the analytic shapes at u (crisp, not interpolated); ``ddf`` is u - q in fixed
    voxels. Modalities: "moving" = MR-like (gland bright, textured background, additive Gaussian noise), "fixed"
    = US-like (gland darker than its surroundings, bright urethra, dark landmarks, gamma speckle, smooth bias
    field), so raw intensity similarity is misleading. Images are uint8.

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
