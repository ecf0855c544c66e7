"""Paired NIfTI folders: listing, header checks, lazy voxel reading, per-image normalisation.

After DeepReg's paired layout (DeepRegNet/DeepReg, ``PairedDataLoader`` + ``NiftiFileLoader``), as used for
label-driven registration (Hu et al., MedIA 2018; YipengHu/label-reg). A paired folder (:class:`PairedNifti`)::

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
affines and voxel spacings (from the headers), and the labels as ``(L, X, Y, Z)`` float32, each on its own
volume's grid (:mod:`.dataset` puts them on the fixed grid). A label with no voxel >= 0.5 in the moving or the
fixed volume is kept but listed in ``empty``: evaluation skips it with a warning (:meth:`PairedNifti.label_pairs`),
training does not draw it.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ...errors import LeancnnError

__all__ = ["FOLDERS", "NAN_POLICIES", "NORMALISATIONS", "PairedNifti", "RegistrationPair", "list_pair_ids",
           "normalise_image"]

FOLDERS = ("moving_images", "fixed_images", "moving_labels", "fixed_labels")
NORMALISATIONS = ("minmax", "zscore", "none")
NAN_POLICIES = ("error", "zero")
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

