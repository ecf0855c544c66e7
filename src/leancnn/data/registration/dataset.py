"""The registration training / evaluation / prediction dataset: label sampling, the moving volume on the fixed grid.

**Sampling** (:class:`RegistrationDataset`, a torch ``Dataset`` over a :class:`~.nifti.PairedNifti`).
``mode="train"``: one item per image pair, with *one* label pair drawn uniformly from that pair's labels
(label-reg's two-stage sampling: the DataLoader's shuffle picks image pairs, the dataset picks a label). The draw is
seeded by ``(seed, epoch, pair index)``: call :meth:`RegistrationDataset.set_epoch` every epoch for new draws (the
same numbers with any number of workers); ``labels="all"`` gives every label of the pair instead, with a mask of
the real ones (:class:`RegistrationSample`); ``augment_scale > 0`` adds the random affine augmentation of
:mod:`.augment`. ``mode="eval"``: one item per (pair, label), all labels, empty ones skipped with a warning;
``dataset.index[j]`` tells which. ``mode="predict"``: one item per pair, images only.

Every item is a :class:`RegistrationSample` ``(moving_image, fixed_image, moving_label, fixed_label)`` of
``(1, X, Y, Z)`` float32 tensors **on the fixed grid**: the moving image and label are resampled (trilinear) onto
the fixed grid through the ``initial`` mapping (:func:`leancnn.nn.warp.initial_map`, whose conventions are
described there; the caller chooses it, the config's default is ``data.initial: centre``). ``"corners"``
(label-reg) *resizes* the moving volume to the fixed shape with ``align_corners=True`` (moving voxel 0 on fixed
voxel 0, moving voxel N_m-1 on fixed voxel N_f-1, header world coordinates ignored), as label-reg resizes the
moving image for its network input. (label-reg keeps the moving *label* on its own grid and samples it at fixed
index + DDF mapped the same corner-aligned way; resizing it first gives the same correspondence, up to one more
interpolation, and lets every tensor of a batch share one shape.) ``"centre"`` puts the volumes' centres together
and keeps millimetres (zeros outside the moving volume). Either way a DDF predicted from these tensors is in
fixed-grid voxel units, relative to the initial mapping, and distances (TRE) in mm use the fixed spacing. A
resampled label is soft (values in [0, 1]); threshold at 0.5 for binary metrics. :func:`collate_pairs` stacks items
of one fixed shape into ``(B, 1, X, Y, Z)`` tensors.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ...errors import LeancnnError
from ...nn.warp import INITIAL_MAPPINGS, initial_map, resize_volume, warp
from .augment import augment_pair
from .nifti import PairedNifti, RegistrationPair, _few

__all__ = ["LABEL_SAMPLING", "MODES", "RegistrationDataset", "RegistrationSample", "collate_pairs", "pair_initial_map",
           "resize_to_grid", "to_fixed_grid"]

MODES = ("train", "eval", "predict")
LABEL_SAMPLING = ("one", "all")  # training: one label drawn per pair per epoch (label-reg), or every label


def resize_to_grid(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resize of ``(C, X, Y, Z)`` to ``shape`` with ``align_corners=True`` (corner voxels aligned)."""
    return resize_volume(x[None], shape)[0]


def pair_initial_map(pair: RegistrationPair, mode: str) -> np.ndarray:
    """:func:`~leancnn.nn.warp.initial_map` of a pair (its shapes and header spacings) for ``mode`` "centre" or
    "corners"."""
    return initial_map(pair.moving_image.shape, pair.fixed_image.shape, pair.moving_spacing, pair.fixed_spacing,
                       mode=mode)


def to_fixed_grid(x: torch.Tensor, shape: Sequence[int], matrix: np.ndarray | None) -> torch.Tensor:
    """``(C, Xm, Ym, Zm)`` resampled (trilinear) on the fixed grid ``shape``: by :func:`resize_to_grid` (the
    "corners" mapping) when ``matrix`` is None, else at ``matrix`` @ fixed voxel (zeros outside the volume)."""
    if matrix is None:
        return resize_to_grid(x, shape)
    zero = torch.zeros(1, 3, *(int(s) for s in shape), dtype=x.dtype)
    return warp(x[None], zero, fixed_to_moving=matrix)[0]


class RegistrationSample(NamedTuple):
    """``(1, X, Y, Z)`` float32 tensors on the fixed grid (batched: ``(B, 1, X, Y, Z)``); labels None in predict.
    With ``labels="all"`` the labels are ``(L, X, Y, Z)`` (batched: ``(B, L, X, Y, Z)``, padded with empty
    channels to the batch's largest L) and ``label_mask`` ``(L,)`` (batched ``(B, L)``) is 1 for a real label, 0
    for padding or an empty label; None with one drawn label."""

    moving_image: torch.Tensor
    fixed_image: torch.Tensor
    moving_label: torch.Tensor | None
    fixed_label: torch.Tensor | None
    label_mask: torch.Tensor | None = None


class RegistrationDataset(Dataset):
    """Torch view of a :class:`PairedNifti` for training / evaluation / prediction (see the module docstring).

    ``mode="train"``: item i = pair i with one label drawn uniformly (non-empty labels only, unless all are
    empty), seeded by ``(seed, epoch, i)``; ``augment_scale > 0`` adds the random affine augmentation.
    ``mode="eval"``: item j = ``index[j]`` = (pair, label) over all labels (empty ones skipped, with a warning,
    when ``skip_empty``). ``mode="predict"``: item i = pair i, images only. The moving image and label are
    resampled onto the fixed grid (trilinear) through the ``initial`` mapping, ``"centre"`` or ``"corners"``
    (required: the default lives in the config, ``data.initial``).
    """

    def __init__(self, pairs: PairedNifti, mode: str = "train", seed: int = 0, augment_scale: float = 0.0,
                 skip_empty: bool = True, *, initial: str, labels: str = "one"):
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
        if labels not in LABEL_SAMPLING:
            raise LeancnnError(f"unknown label sampling '{labels}'; choose from: {', '.join(LABEL_SAMPLING)}")
        if labels != "one" and mode != "train":
            raise LeancnnError(f"label sampling '{labels}' is for training only (mode '{mode}')")
        self.labels = labels
        self.pairs, self.mode, self.seed, self.initial = pairs, mode, int(seed), initial
        self.augment_scale, self.skip_empty = float(augment_scale), skip_empty
        self.epoch = 0
        self._grid_cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
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

    def _on_fixed_grid(self, i: int, pair: RegistrationPair) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The moving image ``(1, X, Y, Z)`` and labels ``(L, X, Y, Z)`` (None without labels) on the fixed grid by
        the initial mapping. Training keeps them (deterministic; every epoch reads every pair again): the
        resampling costs about as much as a CPU training step of the default network. Evaluation keeps the last
        pair only (its items, one per label, come one after another)."""
        if i in self._grid_cache:
            return self._grid_cache[i]
        shape = pair.fixed_image.shape
        matrix = None if self.initial == "corners" else pair_initial_map(pair, self.initial)
        mov = to_fixed_grid(torch.from_numpy(pair.moving_image)[None], shape, matrix)
        mlab = None
        if pair.moving_label is not None and self.mode != "predict":
            mlab = to_fixed_grid(torch.from_numpy(pair.moving_label), shape, matrix).clamp_(0, 1)
        if self.mode != "train":
            self._grid_cache.clear()
        self._grid_cache[i] = (mov, mlab)
        return mov, mlab

    def __getitem__(self, j: int) -> RegistrationSample:
        if self.mode == "eval":
            i, k = self.index[j]
            pair, rng = self.pairs[i], None
        else:
            i = self.pairs.index_of(j)
            pair = self.pairs[i]
            k, rng = self._draw(i, pair) if self.mode == "train" else (None, None)
        mov, all_mlab = self._on_fixed_grid(i, pair)
        fix = torch.from_numpy(pair.fixed_image)[None]
        if k is None:
            return RegistrationSample(mov, fix, None, None)
        mask = None
        if self.labels == "all":  # every label of the pair; empty ones masked out of the loss
            mlab, flab = all_mlab, torch.from_numpy(pair.fixed_label)
            mask = torch.tensor([0.0 if (self.skip_empty and j in pair.empty) else 1.0
                                 for j in range(pair.num_labels)])
        else:
            mlab, flab = all_mlab[k:k + 1], torch.from_numpy(pair.fixed_label[k])[None]
        if self.augment_scale > 0:
            mov, fix, mlab, flab = (v[0] for v in augment_pair(mov[None], fix[None], mlab[None], flab[None],
                                                                 self.augment_scale, rng))
        return RegistrationSample(mov, fix, mlab, flab, mask)


def collate_pairs(batch: Sequence[RegistrationSample]) -> RegistrationSample:
    """Stack samples of one fixed shape into ``(B, 1, X, Y, Z)`` tensors (labels stay None in predict mode)."""
    if not batch:
        raise LeancnnError("cannot collate an empty batch")
    shapes = sorted({tuple(s.fixed_image.shape[1:]) for s in batch})
    if len(shapes) > 1:
        raise LeancnnError(f"cannot batch pairs of different fixed shapes {_few([str(s) for s in shapes])}: "
                           f"use batch size 1 or resample the fixed images to one shape")
    out = []
    width = max((s.moving_label.shape[0] for s in batch if s.moving_label is not None), default=1)
    for field_ in RegistrationSample._fields:
        vals = [getattr(s, field_) for s in batch]
        if any(v is None for v in vals):
            out.append(None)
            continue
        if field_ in ("moving_label", "fixed_label", "label_mask") and width > 1:  # pad to the largest L
            vals = [torch.cat([v, v.new_zeros((width - v.shape[0], *v.shape[1:]))]) for v in vals]
        out.append(torch.stack(vals))
    return RegistrationSample(*out)

