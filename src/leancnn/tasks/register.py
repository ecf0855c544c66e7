"""Label-driven weakly-supervised image registration (Hu et al., Medical Image Analysis 2018): train, predict,
evaluate. See docs/registration.md.

A network (:mod:`leancnn.models.regnet`: local, global = affine, or composite) predicts a dense displacement field
(DDF) from an unlabelled image pair; during training only, corresponding labels drive the loss (every label of a
pair in every step by default, ``data.labels``; label-reg draws one): multi-scale soft Dice (or label
cross-entropy; optionally plus a boundary term) between the warped moving label and the fixed label, plus a
smoothness regulariser (bending energy, weight 0.5, by default).

**Geometry** (the conventions are in :mod:`leancnn.nn.warp`). Before the network, the moving volume is mapped
onto the fixed grid by ``data.initial``: ``centre`` (the default) aligns the volumes' centres and keeps millimetres
from the headers' spacings; ``corners`` maps corner to corner as label-reg does (moving voxel 0 on fixed voxel 0,
the last on the last; header world coordinates unused). The network
works on a grid of ``round(data.scale * fixed shape)`` voxels (``scale: 0.5`` halves each axis: 8x fewer voxels,
what makes CPU training feasible); its DDF is resampled to the full fixed grid (:func:`~leancnn.nn.warp.resize_ddf`)
before anything is warped or measured, so every metric is computed on the fixed image's own grid: the moving
label, on its own grid, is sampled at ``(q + ddf(q))`` mapped into the moving volume by that initial mapping.
``ddf`` is in fixed-grid voxel units (with ``corners``: the fixed voxel ``q`` corresponds to the moving voxel
``(q + ddf(q)) * (N_moving - 1) / (N_fixed - 1)`` per axis).

**Metrics** (:func:`score_pair`, :func:`pair_row`): binary Dice at 0.5 and the target registration error = distance
between the centroids of the thresholded warped-moving and fixed labels, in mm from the fixed header's voxel
spacing; for every label of every pair, before (the moving label under the initial mapping, no registration) and
after; the gland's 95% Hausdorff distance, the RMS of a pair's landmark TREs, the robust scores (worst 32%
removed) and the field's folding and std log|J| (:mod:`leancnn.losses.registration_metrics`). Label 0 is
the gland (Dice), the others landmarks (TRE), as in the MR-US data. An empty label (no voxel >= 0.5 in the moving
or the fixed volume) is skipped with a warning and never enters a summary; a registered label that comes out empty
has no centroid: its TRE is missing (counted in the summary), never 0 or NaN.

**Training** (schema: :class:`RegisterConfig`, below) goes through the shared lifecycle and the one engine with
:class:`RegisterTask`: one step = one batch of image pairs, each with all its labels (``data.labels: all``) or one
label pair drawn for this epoch (:class:`RegistrationDataset`), resized to the network grid, optionally
affine-augmented. The validation pairs
(``data.val_pairs`` of the training pairs, seeded) are registered each epoch: ``val_dice`` (mean gland Dice) picks
``best.pt``; ``val_tre`` (median landmark TRE, mm), ``val_hd95``, ``val_rms_tre``, ``val_folding`` and
``val_std_log_jac`` are printed and logged, and a run that ends while ``val_dice`` still rises is warned about
(:func:`still_rising`). With ``data.fold >= 0`` fold ``fold`` of a k-fold split by pair is the test set, never seen
in training, and is evaluated at the end (``test_per_label.csv``, ``test_per_pair.csv`` and ``summary.json``). The split's ids are recorded in every checkpoint (``meta.splits``, with a content digest of
the validation and test files) and in ``summary.json``; ``evaluate --split val|test`` scores exactly those pairs
(:func:`run_split`). Every pair that training reads is read and checked before anything is written, and a pair
whose labels are all empty is refused (:func:`check_labelled`).
"""

from __future__ import annotations

import csv
import hashlib
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from .. import report, threads
from ..config import (
    SEED_MAX,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    check_warmup,
    from_dict,
    rule,
)
from ..data.registration import (
    PairedNifti,
    RegistrationDataset,
    RegistrationPair,
    collate_pairs,
    kfold_ids,
    list_pair_ids,
    pair_initial_map,
    to_fixed_grid,
)
from ..errors import ConfigError, LeancnnError
from ..interrupts import loader_worker_init
from ..io import atomic_write_json, atomic_write_text
from ..losses.registration import RegistrationLoss, batch_binary_dice, binary_dice, centroid_distance_mm
from ..losses.registration_metrics import field_regularity, hausdorff95_mm, rms, robust_subset
from ..models.regnet import build_regnet, count_params
from ..nn.warp import resize_ddf, resize_volume, warp
from ..outputs import check_output, check_output_dir, staged_dir
from ..train import DistContext, Task
from ..train.engine import progress_enabled
from .lifecycle import train_task
from .protocol import Prepared, TaskSpec, load_run, register_task
from .runs import (
    check_path_arg,
    check_run_output,
    checkpoint_inputs,
    default_run_dir,
    resolve_device,
    resolve_train_config,
)

GLAND = 0  # label index of the gland (Dice); the others are landmarks (TRE)
CSV_FIELDS = ("pair", "label", "structure", "dice_before", "dice_after", "tre_before_mm", "tre_after_mm",
              "hd95_before_mm", "hd95_after_mm", "fixed_voxels")
PAIR_FIELDS = ("pair", "gland_dice_before", "gland_dice_after", "gland_hd95_before_mm", "gland_hd95_after_mm",
               "landmarks", "rms_tre_before_mm", "rms_tre_after_mm", "folding", "std_log_jac")


# ----------------------------------------------------------------------------------------------- schema


@dataclass
class RegisterDataConfig:
    """A paired NIfTI folder (docs/registration.md) and how it is split, sampled and resized for the network."""

    root: str = ""  # the paired folder (moving_images/, fixed_images/, moving_labels/, fixed_labels/)
    normalise: Literal["minmax", "zscore", "none"] = "minmax"  # per image
    nan_policy: Literal["error", "zero"] = "error"  # non-finite voxels: refuse the pair, or set them to 0
    # how the moving volume sits on the fixed grid before registration: centre = centres aligned, mm kept (header
    # spacings); corners = label-reg's corner-to-corner resize (stretches the moving volume to the fixed extent)
    initial: Literal["centre", "corners"] = "centre"
    folds: int = rule(4, ge=2)  # k of the k-fold split by pair (with fold >= 0)
    fold: int = rule(-1, ge=-1)  # -1: every pair trains (minus val_pairs); i >= 0: fold i is held out as the test set
    val_pairs: int = rule(4, ge=0)  # training pairs held out for the per-epoch validation Dice (seeded); 0 = none
    split_seed: int = rule(0, ge=0, lt=SEED_MAX)
    scale: float = rule(0.5, gt=0.0, le=1.0)  # the network's grid = round(scale * fixed shape); the DDF is upsampled
    augment_scale: float = rule(0.1, ge=0.0, lt=1.0)  # random affine augmentation (label-reg: 0.1); 0 = off
    # labels per image pair per step: all of them, each scored on its own (measured better on MR-US, issue 21), or
    # one drawn uniformly (label-reg)
    labels: Literal["one", "all"] = "all"
    batch_size: int = rule(4, ge=1)
    num_workers: int = rule(0, ge=0, runtime=True)
    # keys of earlier versions, accepted and dropped when read (older checkpoints and configs hold them)
    RETIRED: ClassVar[tuple[str, ...]] = ("eval_batch_size",)  # evaluation registers one pair at a time


@dataclass
class RegisterModelConfig:
    kind: Literal["local", "global", "composite"] = "local"
    channels: list[int] = rule(factory=lambda: [8, 16, 32, 64], min_len=1, ge=1)  # label-reg: 32, 64, 128, 256
    global_channels: list[int] = rule(factory=lambda: [4, 8, 16, 32], min_len=1, ge=1)  # composite's affine part
    ddf_levels: list[int] = rule(factory=list, ge=0, unique=True)  # local: [] = every level (label-reg)
    bn_mode: Literal["batch", "running"] = "batch"  # batch: batch statistics at inference too (label-reg)
    # composite: final field = affine + local (label-reg's sum) or the true composition (warp, then compose)
    compose: Literal["sum", "warp"] = "sum"


@dataclass
class RegisterLossConfig:
    label: Literal["dice", "cross_entropy"] = "dice"  # multi-scale soft Dice (label-reg) or label cross-entropy
    sigmas: list[float] = rule(factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0, 16.0], min_len=1, ge=0.0)  # voxels of the net grid
    regulariser: Literal["bending", "gradient_l2", "gradient_l1"] = "bending"
    weight: float = rule(0.5, ge=0.0)  # label-reg: 0.5 (bending)
    # with data.labels=all: the gland's weight against each landmark's 1 in a pair's mean label term
    gland_weight: float = rule(1.0, gt=0.0)
    # + this weight x the boundary loss (warped label x the fixed label's signed distance map); 0 = off
    boundary_weight: float = rule(0.0, ge=0.0)
    # the label term on the full fixed grid (the DDF upsampled, sigmas scaled by 1 / data.scale to the same mm)
    # instead of the network's grid; the regulariser stays on the network's grid
    full_grid: bool = False


@dataclass
class RegisterInferConfig:
    """How ``predict`` / ``evaluate`` (and the per-epoch validation and test scoring) turn a network into a DDF;
    ``leancnn register predict|evaluate --tta / --refine N`` override the run's values."""

    # flips: the mean of the DDFs predicted for the pair as given and flipped along each axis (4 forward passes)
    tta: Literal["none", "flips"] = "none"
    # test-time refinement from the images alone (no labels): optimiser steps of an image similarity + bending
    refine_steps: int = rule(0, ge=0)
    refine_similarity: Literal["mind", "lncc_grad"] = "mind"  # MIND-SSC, or LNCC of gradient magnitudes
    refine_weight: float = rule(0.5, ge=0.0)  # bending energy weight
    refine_lr: float = rule(0.1, gt=0.0)  # Adam step, voxels of the network grid


@dataclass
class RegisterOptimConfig(OptimConfig):
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = rule(3e-4, gt=0.0)  # label-reg: Adam 1e-5 for 10k steps at full width; small nets train faster
    weight_decay: float = rule(0.0, ge=0.0)
    # lr multiplier of the affine head (global, composite): its zero-initialised linear layer flattens thousands of
    # features, so a plain Adam step moves all 12 affine numbers by lr x that many at once (diverges at 1e-3)
    affine_lr_scale: float = rule(0.01, gt=0.0, le=1.0)


@dataclass
class RegisterScheduleConfig(ScheduleConfig):
    name: Literal["cosine", "multistep", "constant"] = "cosine"
    warmup_epochs: float = rule(1.0, ge=0.0)


@dataclass
class RegisterTrainConfig(TrainConfig):
    # one epoch = one pass over the training pairs
    epochs: int = rule(200, ge=1, resumable=True)
    memory_format: Literal["auto", "channels_last", "contiguous"] = rule("contiguous", runtime=True)  # 3-D nets


@dataclass
class RegisterConfig:
    """``leancnn register train``: label-driven weakly-supervised registration (docs/registration.md)."""

    name: str = rule("register", name=True, runtime=True)
    output_dir: str = rule("runs", nonempty=True, runtime=True)
    model: RegisterModelConfig = field(default_factory=RegisterModelConfig)
    data: RegisterDataConfig = field(default_factory=RegisterDataConfig)
    loss: RegisterLossConfig = field(default_factory=RegisterLossConfig)
    optim: RegisterOptimConfig = field(default_factory=RegisterOptimConfig)
    schedule: RegisterScheduleConfig = field(default_factory=RegisterScheduleConfig)
    train: RegisterTrainConfig = field(default_factory=RegisterTrainConfig)
    infer: RegisterInferConfig = field(default_factory=RegisterInferConfig)

    def _check(self) -> None:
        check_warmup(self.schedule, self.train)
        if self.data.fold >= self.data.folds:
            raise ConfigError(f"config key 'data.fold' ({self.data.fold}) must be below 'data.folds' "
                              f"({self.data.folds}), or -1 for no test fold")
        if self.model.ddf_levels and max(self.model.ddf_levels) > len(self.model.channels):
            raise ConfigError(f"config key 'model.ddf_levels' {self.model.ddf_levels} goes below the bottom level "
                              f"{len(self.model.channels)} of model.channels {self.model.channels}")


# ----------------------------------------------------------------------------------------------- splits, data


def split_ids(cfg: RegisterConfig) -> dict[str, list[str]]:
    """``{"train", "val", "test"}`` pair ids: fold ``data.fold`` of a k-fold split by pair is the test set (none
    with -1); ``data.val_pairs`` of the remaining pairs, drawn with ``data.split_seed``, validate."""
    root = check_data_root(cfg.data.root)
    ids = list_pair_ids(root, labels=True)
    if cfg.data.fold >= 0:
        if len(ids) < cfg.data.folds:
            raise LeancnnError(f"'{root}' has {len(ids)} pairs, fewer than data.folds={cfg.data.folds}")
        train, test = kfold_ids(ids, cfg.data.folds, seed=cfg.data.split_seed)[cfg.data.fold]
    else:
        train, test = list(ids), []
    if cfg.data.val_pairs >= len(train):
        raise LeancnnError(f"data.val_pairs={cfg.data.val_pairs} leaves no training pair ({len(train)} pairs "
                           f"before the validation split); lower it")
    rng = np.random.default_rng([cfg.data.split_seed, 1])
    val = sorted(str(v) for v in rng.choice(sorted(train), cfg.data.val_pairs, replace=False)) \
        if cfg.data.val_pairs else []
    return {"train": [i for i in train if i not in set(val)], "val": val, "test": list(test)}


def _few(items: Sequence[str], n: int = 5) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def check_labelled(pairs: PairedNifti, role: str) -> None:
    """Refuse pairs whose every label is empty (:meth:`PairedNifti.unlabelled`; reads every pair, so a NaN or
    out-of-range file is refused here too, before anything is written). The label-driven loss learns nothing
    from such a pair (its Dice term is 0, only the regulariser acts: it pulls the displacement towards zero) and
    training would report a Dice of 1 for it; a validation or test pair without a label scores nothing. A pair
    with *some* empty labels is fine (the empty ones are not drawn, and are skipped with a warning when scored)."""
    bad = pairs.unlabelled()
    if bad:
        files = [f"{vid} ({', '.join(f'{f}/{p.name}' for f, p in pairs.files(vid).items() if f.endswith('labels'))})"
                 for vid in bad]
        which = f"all {len(pairs)}" if len(bad) == len(pairs) else f"{len(bad)} of the {len(pairs)}"
        raise LeancnnError(f"'{pairs.root}': {which} {role} pairs have only empty labels (every structure lacks a "
                           f"voxel >= 0.5 in its moving or its fixed label), so training can neither learn from nor "
                           f"score them: {_few(files, 3)}; fix these label files or remove the pairs")


def _same_dir(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).is_dir() and Path(b).is_dir() and Path(a).samefile(b)
    except OSError:
        return False


def run_split(state: dict, cfg: RegisterConfig, split: str, data: str | Path) -> tuple[list[str], str]:
    """The ids of a run's ``split`` (``"val"`` or ``"test"``) to score on folder ``data``, and where they come from.

    A run records its split in every checkpoint (``meta.splits``, also in ``summary.json``): those ids are used,
    whatever folder is given, and a folder that lacks any of them, or holds other files under their names (the
    content digest recorded beside them differs), is refused in one line naming them. The split is never
    recomputed on the folder given: on another folder (a subset, say) that would score training pairs as
    validation pairs. A checkpoint without a recorded split (written before splits were recorded) has it
    recomputed from its own ``data.root``, only when ``data`` is that same folder."""
    where = f"checkpoint '{state.get('path', '?')}'"
    meta = state.get("meta") or {}
    root = check_data_root(data)
    if "splits" in meta:
        ids, source = [str(i) for i in meta["splits"].get(split) or []], "recorded by the run"
    elif str(cfg.data.root).strip() and _same_dir(cfg.data.root, root):
        ids, source = split_ids(cfg)[split], f"recomputed on the run's data.root '{cfg.data.root}'"
    else:
        raise LeancnnError(f"{where} records no pair split (written before runs recorded them), so --split {split} "
                           f"can only recompute it on the run's own folder data.root='{cfg.data.root}', not on "
                           f"'{data}'; pass --data {cfg.data.root or 'DIR'} (that folder) or --split all")
    if not ids:
        raise LeancnnError(f"the run has no {split} pairs (data.fold={cfg.data.fold}, "
                           f"data.val_pairs={cfg.data.val_pairs}); use --split all")
    have = set(list_pair_ids(root, labels=True))
    missing = [i for i in ids if i not in have]
    if missing:
        raise LeancnnError(f"'{data}' lacks {len(missing)} of the run's {len(ids)} {split} pairs: {_few(missing)}; "
                           f"give a folder that holds them (the run trained on data.root='{cfg.data.root}') or use "
                           f"--split all")
    digest = (meta.get("split_digests") or {}).get(split)
    if digest is not None and data_identity(root, ids)["pairs"] != digest:
        raise LeancnnError(f"the files of the run's {len(ids)} {split} pairs ({_few(ids, 3)}) in '{data}' differ "
                           f"from those it was trained with (content digest); they are other pairs under the same "
                           f"names: give the run's data folder (data.root='{cfg.data.root}') or use --split all")
    return ids, source


def check_data_root(root: str | Path) -> Path:
    if not str(root).strip():
        raise LeancnnError("no data folder: pass --data DIR (or set data.root)")
    path = Path(root)
    if not path.is_dir():
        raise LeancnnError(f"data folder '{path}' does not exist or is not a directory")
    return path


def open_pairs(cfg: RegisterConfig, ids: Sequence[str] | None, labels: bool | None = True,
               root: str | Path | None = None) -> PairedNifti:
    return PairedNifti(check_data_root(root or cfg.data.root), ids, labels=labels, normalise=cfg.data.normalise,
                       nan_policy=cfg.data.nan_policy)


def net_shape(fixed_shape: Sequence[int], scale: float) -> tuple[int, int, int]:
    """The network's grid for a fixed grid: ``round(scale * n)`` per axis, at least 5 voxels (the bending
    energy's stencil needs 5)."""
    return tuple(max(5, int(round(scale * n))) if scale != 1 else int(n) for n in fixed_shape)


def fixed_grid(pairs: PairedNifti) -> tuple[int, int, int]:
    """The one fixed shape of a set of pairs (batches, and the affine network's flatten head, need one)."""
    shapes = sorted({pairs.shapes(i)[1] for i in range(len(pairs))})
    if len(shapes) != 1:
        raise LeancnnError(f"the fixed images of '{pairs.root}' have {len(shapes)} different shapes "
                           f"({', '.join(map(str, shapes[:4]))}); training needs one fixed shape: resample them "
                           "to one grid first")
    return shapes[0]


def data_identity(root: str | Path, ids: Sequence[str]) -> dict[str, str]:
    """A content digest of the files of these pairs (part of a run's fingerprint)."""
    h = hashlib.sha256()
    root = Path(root)
    for folder in ("moving_images", "fixed_images", "moving_labels", "fixed_labels"):
        for vid in sorted(ids):
            for suffix in (".nii.gz", ".nii"):
                f = root / folder / f"{vid}{suffix}"
                if f.is_file():
                    h.update(f"{folder}/{f.name}".encode())
                    h.update(f.read_bytes())
                    break
    return {"pairs": h.hexdigest()[:24]}


# ----------------------------------------------------------------------------------------------- model


def build_model(cfg: RegisterConfig, image_size: Sequence[int]) -> nn.Module:
    """The configured network for a network grid of ``image_size``."""
    m = cfg.model
    kw: dict[str, Any] = {"bn_mode": m.bn_mode}
    if m.kind == "local" and m.ddf_levels:
        kw["ddf_levels"] = m.ddf_levels
    if m.kind == "composite":
        kw["global_channels"] = m.global_channels
        kw["compose"] = m.compose
    model = build_regnet(m.kind, m.channels, image_size, **kw)
    # the affine head flattens a feature map of one size: such a network always sees its training grid; a local
    # network registers any fixed shape on the grid data.scale gives it
    model.image_size = tuple(image_size) if m.kind != "local" else None
    model.model_name = f"reg_{m.kind}"  # the registry's name of this network
    return model


def affine_lr_scales(model: nn.Module, scale: float) -> dict[str, float]:
    """``{affine head module name: scale}`` for :func:`~leancnn.train.optim.build_optimizer`."""
    from ..models.regnet import GlobalNet

    return {f"{name}.head" if name else "head": scale for name, m in model.named_modules() if isinstance(m, GlobalNet)} \
        if scale != 1.0 else {}


FLIP_AXES = ((), (0,), (1,), (2,))  # the test-time flips: as given, then mirrored along each axis


def _flip_ddf(ddf: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """The DDF of the mirrored pair mapped back: mirror the field along ``axes`` and negate those components."""
    if not axes:
        return ddf
    out = ddf.flip([2 + a for a in axes]).clone()
    for a in axes:
        out[:, a] = -out[:, a]
    return out


@torch.no_grad()
def predict_ddf(model: nn.Module | None, pair: RegistrationPair, scale: float, device: torch.device,
                initial: str, infer: RegisterInferConfig | None = None) -> torch.Tensor:
    """The DDF (1, 3, X, Y, Z) of one pair on its full fixed grid, fixed voxel units (zeros for ``model=None``:
    no registration), relative to the ``initial`` mapping. Images only: labels are not read. ``infer``
    (:class:`RegisterInferConfig`; None = plain): ``tta="flips"`` averages the DDFs of the pair mirrored along
    each axis (each pass on its own, so batch-statistics BN sees one volume as in training); ``refine_steps > 0``
    then refines the DDF on the network grid by an image similarity (:func:`~leancnn.losses.similarity.refine_ddf`)."""
    fixed_shape = pair.fixed_image.shape
    if model is None:
        return torch.zeros(1, 3, *fixed_shape)
    infer = infer or RegisterInferConfig()
    grid = tuple(getattr(model, "image_size", None) or net_shape(fixed_shape, scale))
    matrix = pair_initial_map(pair, initial)
    moving = to_fixed_grid(torch.from_numpy(pair.moving_image)[None], fixed_shape, matrix)
    moving = resize_volume(moving[None].to(device), grid)
    fixed = resize_volume(torch.from_numpy(pair.fixed_image)[None, None].to(device), grid)
    model.eval()
    flips = FLIP_AXES if infer.tta == "flips" else ((),)
    ddf = sum(_flip_ddf(model(moving.flip([2 + a for a in axes]), fixed.flip([2 + a for a in axes]))["ddf"].float(),
                        axes) for axes in flips) / len(flips)
    if infer.refine_steps:
        from ..losses.similarity import refine_ddf

        ddf = refine_ddf(moving.float(), fixed.float(), ddf, infer.refine_steps, infer.refine_similarity,
                         infer.refine_weight, infer.refine_lr)
    return resize_ddf(ddf, fixed_shape).cpu()


def warp_moving(volume: np.ndarray, ddf: torch.Tensor, matrix: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """``volume`` (moving grid; (X, Y, Z) or (L, X, Y, Z)) sampled at ``matrix @ (q + ddf(q))`` for every fixed
    voxel ``q`` (trilinear, zeros outside the moving volume)."""
    v = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    out = warp(v[None, None] if v.ndim == 3 else v[None], ddf, mode=mode, fixed_to_moving=matrix)[0]
    return out[0].numpy() if volume.ndim == 3 else out.numpy()


# ----------------------------------------------------------------------------------------------- metrics


def score_pair(pair: RegistrationPair, ddf: torch.Tensor, initial: str) -> list[dict]:
    """One row per non-empty label: Dice and TRE before (the ``initial`` mapping alone) and after ``ddf``; for the
    gland also the 95% Hausdorff distance of the surfaces (mm; None for landmarks)."""
    if pair.moving_label is None:
        raise LeancnnError(f"pair '{pair.id}' has no labels to evaluate")
    spacing = np.asarray(pair.fixed_spacing, dtype=np.float64)
    matrix = pair_initial_map(pair, initial)
    before = warp_moving(pair.moving_label, torch.zeros_like(ddf), matrix)
    after = warp_moving(pair.moving_label, ddf, matrix)
    rows = []
    for k in range(pair.num_labels):
        if k in pair.empty:
            continue
        fixed = pair.fixed_label[k]
        gland = k == GLAND
        rows.append({
            "pair": pair.id, "label": k, "structure": "gland" if gland else "landmark",
            "dice_before": binary_dice(before[k], fixed), "dice_after": binary_dice(after[k], fixed),
            "tre_before_mm": centroid_distance_mm(before[k], fixed, spacing),
            "tre_after_mm": centroid_distance_mm(after[k], fixed, spacing),
            "hd95_before_mm": hausdorff95_mm(before[k], fixed, spacing) if gland else None,
            "hd95_after_mm": hausdorff95_mm(after[k], fixed, spacing) if gland else None,
            "fixed_voxels": int((fixed >= 0.5).sum()),
        })
    return rows


def pair_row(pair_id: str, ddf: torch.Tensor, rows: Sequence[dict]) -> dict:
    """One pair's summary: gland Dice and HD95, RMS of its landmark TREs (mm) before and after, and the regularity
    of the field (the fraction of voxels whose Jacobian determinant is <= 0, and the std of log|J|)."""
    gland = next((r for r in rows if r["structure"] == "gland"), None)
    marks = [r for r in rows if r["structure"] == "landmark"]
    reg = field_regularity(ddf)
    return {"pair": pair_id,
            "gland_dice_before": gland["dice_before"] if gland else None,
            "gland_dice_after": gland["dice_after"] if gland else None,
            "gland_hd95_before_mm": gland["hd95_before_mm"] if gland else None,
            "gland_hd95_after_mm": gland["hd95_after_mm"] if gland else None,
            "landmarks": len(marks),
            "rms_tre_before_mm": rms([r["tre_before_mm"] for r in marks]),
            "rms_tre_after_mm": rms([r["tre_after_mm"] for r in marks]),
            "folding": reg["folding"], "std_log_jac": reg["std_log_jac"]}


def quartiles(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Median, quartiles and mean of the present values; ``missing`` counts the None ones."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    out: dict[str, float | int | None] = {"n": int(v.size), "missing": int(len(values) - v.size)}
    if v.size:
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        out.update(median=float(med), q1=float(q1), q3=float(q3), mean=float(v.mean()))
    else:
        out.update(median=None, q1=None, q3=None, mean=None)
    return out


def summarise_rows(rows: Sequence[dict], pairs: Sequence[dict] | None = None) -> dict[str, dict]:
    """Gland Dice and landmark TRE (and gland-centroid TRE), before and after, as :func:`quartiles`; gland HD95;
    the robust scores (µ-RegPro: the worst 32% of the glands / landmarks removed); with ``pairs`` (:func:`pair_row`
    of each pair) the RMS landmark TRE per pair and the field's folding fraction and std log|J| over pairs."""
    gland = [r for r in rows if r["structure"] == "gland"]
    marks = [r for r in rows if r["structure"] == "landmark"]
    out = {
        "gland_dice_before": quartiles([r["dice_before"] for r in gland]),
        "gland_dice_after": quartiles([r["dice_after"] for r in gland]),
        "landmark_tre_before_mm": quartiles([r["tre_before_mm"] for r in marks]),
        "landmark_tre_after_mm": quartiles([r["tre_after_mm"] for r in marks]),
        "gland_tre_before_mm": quartiles([r["tre_before_mm"] for r in gland]),
        "gland_tre_after_mm": quartiles([r["tre_after_mm"] for r in gland]),
    }
    for when in ("before", "after"):
        out[f"gland_hd95_{when}_mm"] = quartiles([r.get(f"hd95_{when}_mm") for r in gland])
        out[f"robust_gland_dice_{when}"] = quartiles(robust_subset([r[f"dice_{when}"] for r in gland], ROBUST_DROP))
        out[f"robust_landmark_tre_{when}_mm"] = quartiles(robust_subset([r[f"tre_{when}_mm"] for r in marks],
                                                                        ROBUST_DROP, higher_is_better=False))
    if pairs is not None:
        for when in ("before", "after"):
            out[f"rms_tre_{when}_mm"] = quartiles([p[f"rms_tre_{when}_mm"] for p in pairs])
        out["folding"] = quartiles([p["folding"] for p in pairs])
        out["std_log_jac"] = quartiles([p["std_log_jac"] for p in pairs])
    return out


ROBUST_DROP = 0.32  # µ-RegPro's robust scores: the worst 32% removed


def summary_rows(summary: dict[str, dict]) -> list[list[str]]:
    def q(s: dict | None, digits: int, scale: float = 1.0) -> str:
        if s is None or s["median"] is None:
            return "n/a" if s is not None else "—"
        text = (f"{scale * s['median']:.{digits}f} [{scale * s['q1']:.{digits}f}, "
                f"{scale * s['q3']:.{digits}f}]")
        return text + (f" ({s['missing']} missing)" if s["missing"] else "")

    out = []
    for name, key, digits in (("gland Dice", "gland_dice", 3), ("landmark TRE (mm)", "landmark_tre_mm", 2),
                              ("gland centroid TRE (mm)", "gland_tre_mm", 2), ("gland HD95 (mm)", "gland_hd95_mm", 2),
                              ("RMS landmark TRE per pair (mm)", "rms_tre_mm", 2),
                              ("robust gland Dice (worst 32% out)", "robust_gland_dice", 3),
                              ("robust landmark TRE (worst 32% out, mm)", "robust_landmark_tre_mm", 2)):
        stem, suffix = (key[:-3], "_mm") if key.endswith("_mm") else (key, "")
        b, a = summary.get(f"{stem}_before{suffix}"), summary.get(f"{stem}_after{suffix}")
        if a is None:
            continue
        out.append([name, str(a["n"]), q(b, digits), q(a, digits)])
    if "folding" in summary:
        out.append(["folding: % voxels with det J <= 0 per pair", str(summary["folding"]["n"]), "0",
                    q(summary["folding"], 3, 100.0)])
        out.append(["std log det J per pair", str(summary["std_log_jac"]["n"]), "0", q(summary["std_log_jac"], 3)])
    return out


SUMMARY_HEADERS = ["metric", "n", "before: median [q1, q3]", "after: median [q1, q3]"]


def write_rows_csv(path: Path, rows: Sequence[dict], fields: Sequence[str] = CSV_FIELDS) -> None:
    """``rows`` as CSV (``fields``: per label :data:`CSV_FIELDS`, per pair :data:`PAIR_FIELDS`); None = empty."""
    def cell(v):
        return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)

    lines = [list(fields)] + [[cell(r.get(k)) for k in fields] for r in rows]
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(lines)
    atomic_write_text(path, buf.getvalue())


def register_and_score(model: nn.Module | None, pairs: PairedNifti, scale: float, device: torch.device,
                       desc: str, progress: bool, initial: str,
                       on_pair=None, infer: RegisterInferConfig | None = None,
                       pair_rows: list | None = None) -> list[dict]:
    """Register every pair (``infer``: test-time flips / refinement, :func:`predict_ddf`) and score every
    non-empty label; empty labels are left out with one warning (they are ``pairs.empty_labels()``).
    ``on_pair(pair, ddf, rows)`` is called after each pair; ``pair_rows`` (a list) receives :func:`pair_row` of
    each pair."""
    rows: list[dict] = []
    skipped: list[str] = []
    for i in tqdm(range(len(pairs)), desc=desc, leave=False, disable=not progress):
        threads.tick()  # under threads=auto: follow the machine's load
        pair = pairs[i]
        skipped += [f"{pair.id} label {k}" for k in pair.empty]
        ddf = predict_ddf(model, pair, scale, device, initial, infer)
        pair_rows_ = score_pair(pair, ddf, initial)
        rows += pair_rows_
        if pair_rows is not None:
            pair_rows.append(pair_row(pair.id, ddf, pair_rows_))
        if on_pair is not None:
            on_pair(pair, ddf, pair_rows_)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} empty label(s) (no voxel >= 0.5 in the moving or the fixed label): "
                      f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}", stacklevel=2)
    return rows


# ----------------------------------------------------------------------------------------------- training


class RegisterTask(Task):
    """The engine task: batches of :class:`RegistrationSample` on the fixed grid; loss = label loss +
    ``weight`` x regulariser on the network grid; validation = registering the validation pairs."""

    unit = "pairs"
    best_metric, best_mode = "val_dice", "max"

    def __init__(self, cfg: RegisterConfig, grid: Sequence[int], val_pairs: PairedNifti | None = None):
        self.cfg, self.grid, self.val_pairs = cfg, tuple(grid), val_pairs
        self.loss = RegistrationLoss.from_config(cfg.loss)
        if cfg.loss.full_grid and cfg.data.scale != 1:  # the same smoothing in mm on the finer grid
            self.loss.sigmas = tuple(sg / cfg.data.scale for sg in self.loss.sigmas)

    def start_epoch(self, trainer):
        trainer.train_loader.dataset.set_epoch(trainer.epoch)  # new label draws and augmentations

    def train_step(self, trainer, batch):
        dev = trainer.device
        mov, fix = (resize_volume(t.to(dev, non_blocking=True), self.grid) for t in batch[:2])
        out = trainer.net(mov, fix)
        ddf = out["ddf"]
        if self.cfg.loss.full_grid:  # labels on the fixed grid, the DDF brought to it
            mlab, flab = (t.to(dev, non_blocking=True) for t in batch[2:4])
            warped = warp(mlab, resize_ddf(ddf, flab.shape[2:]))
        else:
            mlab, flab = (resize_volume(t.to(dev, non_blocking=True), self.grid) for t in batch[2:4])
            warped = warp(mlab, ddf)
        weights = None
        if batch.label_mask is not None:  # data.labels=all: every label scored on its own, the gland weighted
            weights = batch.label_mask.to(dev).clone()
            weights[:, GLAND] *= self.cfg.loss.gland_weight
        loss, label, reg = self.loss(warped, flab, ddf, weights)
        trainer.backward(loss)
        with torch.no_grad():
            if weights is None:
                dice = batch_binary_dice(warped, flab)
            else:  # the mean Dice of each pair's real labels
                b, n_lab = warped.shape[:2]
                per = batch_binary_dice(warped.reshape(b * n_lab, 1, *warped.shape[2:]),
                                        flab.reshape(b * n_lab, 1, *flab.shape[2:])).view(b, n_lab).float()
                m = batch.label_mask.to(dev)
                dice = (per * m).sum(1) / m.sum(1).clamp(min=1)
        n = mov.shape[0]
        return {"n": n, "loss": loss.item() * n, "label": label.item() * n, "reg": reg.item() * n,
                "dice": dice.sum().item()}

    def evaluate(self, trainer):
        if self.val_pairs is None:
            return {}
        pairs: list[dict] = []
        rows = register_and_score(trainer.model, self.val_pairs, self.cfg.data.scale, trainer.device, "val",
                                  progress_enabled(trainer.dist), self.cfg.data.initial, infer=self.cfg.infer,
                                  pair_rows=pairs)
        s = summarise_rows(rows, pairs)
        return {"val_dice": s["gland_dice_after"]["mean"], "val_tre": s["landmark_tre_after_mm"]["median"],
                "val_hd95": s["gland_hd95_after_mm"]["median"], "val_rms_tre": s["rms_tre_after_mm"]["median"],
                "val_folding": s["folding"]["mean"], "val_std_log_jac": s["std_log_jac"]["mean"]}


def _train_loader(ds: RegistrationDataset, cfg: RegisterConfig, ctx: DistContext) -> DataLoader:
    if cfg.data.batch_size % ctx.world_size:
        raise LeancnnError(f"data.batch_size={cfg.data.batch_size} must be a multiple of the {ctx.world_size} "
                           "processes")
    local = cfg.data.batch_size // ctx.world_size
    sampler = DistributedSampler(ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=cfg.train.seed)
    return DataLoader(ds, batch_size=local, sampler=sampler, collate_fn=collate_pairs,
                      num_workers=cfg.data.num_workers, worker_init_fn=loader_worker_init)


class RegisterSpec(TaskSpec):
    """Label-driven weakly-supervised registration of paired NIfTI volumes (Hu et al. 2018)."""

    name, config_cls, kind = "register", RegisterConfig, "registration"
    commands = "leancnn register predict | evaluate"

    def check(self, cfg, world_size):
        return split_ids(cfg)  # the data folder and the split: refused before any file is written

    def prepare(self, cfg, ctx, device, splits, resuming):
        train_pairs = open_pairs(cfg, splits["train"])
        grid = net_shape(fixed_grid(train_pairs), cfg.data.scale)
        val_pairs = open_pairs(cfg, splits["val"]) if splits["val"] else None
        if val_pairs is not None and fixed_grid(val_pairs) != fixed_grid(train_pairs):
            raise LeancnnError("the validation pairs have another fixed shape than the training pairs")
        test_pairs = open_pairs(cfg, splits["test"]) if splits["test"] else None
        for role, pairs in (("training", train_pairs), ("validation", val_pairs), ("test", test_pairs)):
            if pairs is not None:
                check_labelled(pairs, role)  # reads every pair: bad files are refused before anything is written
        ds = RegistrationDataset(train_pairs, "train", seed=cfg.train.seed, augment_scale=cfg.data.augment_scale,
                                 initial=cfg.data.initial, labels=cfg.data.labels)
        loader = _train_loader(ds, cfg, ctx)
        model = build_model(cfg, grid)
        meta = {"grid": list(grid), "splits": splits}
        if ctx.is_main:  # `register evaluate --split` scores these very pairs (run_split)
            meta["split_digests"] = {k: data_identity(cfg.data.root, v)["pairs"] for k, v in splits.items()
                                     if k != "train" and v}
        return Prepared(model=model, task=RegisterTask(cfg, grid, val_pairs), train_loader=loader,
                        val_loader=val_pairs, lr_scales=affine_lr_scales(model, cfg.optim.affine_lr_scale),
                        meta=meta, extra={"splits": splits, "grid": grid, "test_pairs": test_pairs})

    def data_identity(self, cfg, prepared):
        splits = prepared.extra["splits"]
        return data_identity(cfg.data.root, [*splits["train"], *splits["val"]])

    def announce(self, cfg, prepared):
        splits, grid = prepared.extra["splits"], prepared.extra["grid"]
        print(f"{cfg.model.kind} network, {count_params(prepared.model):,} parameters, grid "
              f"{'x'.join(map(str, grid))}; {len(splits['train'])} training / {len(splits['val'])} "
              f"validation / {len(splits['test'])} test pairs", flush=True)

    def summarise(self, cfg, prepared, trainer, device, ctx, run_dir):
        splits, model = prepared.extra["splits"], prepared.model
        out = {"kind": cfg.model.kind, "params": count_params(model), "grid": list(prepared.extra["grid"]),
               "epochs": cfg.train.epochs, "best_val_dice": _finite(trainer.best), "splits": splits}
        rising = still_rising([r.get("val_dice") for r in trainer.history])
        if rising is not None:
            out["val_dice_still_rising"] = rising
            warnings.warn(f"training stopped while the validation gland Dice was still rising ({rising}): more "
                          f"epochs (train.epochs, now {cfg.train.epochs}) would likely register better",
                          stacklevel=2)
        if splits["test"]:
            pairs: list[dict] = []
            rows = register_and_score(model, prepared.extra["test_pairs"], cfg.data.scale, device, "test",
                                      progress_enabled(ctx), cfg.data.initial, infer=cfg.infer, pair_rows=pairs)
            write_rows_csv(run_dir / "test_per_label.csv", rows)
            write_rows_csv(run_dir / "test_per_pair.csv", pairs, PAIR_FIELDS)
            out["test"] = summarise_rows(rows, pairs)
        return out

    def plot_curves(self, history, path, cfg):
        plot_register_curves(history, path, f"{cfg.name}: {cfg.model.kind}")

    def print_summary(self, summary):
        if "test" in summary:
            print(report.format_table(summary_rows(summary["test"]), SUMMARY_HEADERS))

    def model_from_state(self, cfg, state):
        grid = (state.get("meta") or {}).get("grid")
        if grid is None:
            raise LeancnnError(f"checkpoint '{state['path']}' does not record its network grid (meta.grid); it was "
                               "not written by leancnn register train")
        return build_model(cfg, grid)

    def input_shape(self, cfg, state):
        grid = (state.get("meta") or {}).get("grid")  # the network sees the grid it was trained on
        return (1, *grid) if grid else None


SPEC = register_task(RegisterSpec())


def train_register(cfg: RegisterConfig, out: str | Path | None = None, resume: str | Path | dict | None = None,
                   quiet: bool = False, force: bool = False, callbacks=()) -> dict:
    """Train ``cfg`` (the lifecycle of :func:`leancnn.tasks.lifecycle.train_task`). The run directory gets
    config.yaml, fingerprint.json, metrics.jsonl, last.pt / best.pt, curves.png and summary.json (with the test
    fold's results and test_per_label.csv when ``data.fold >= 0``). Bad input is refused before any file is
    written."""
    return train_task(SPEC, cfg, out=out, resume=resume, callbacks=callbacks, quiet=quiet, force=force)


def still_rising(values: Sequence[float | None], window: int = 5) -> str | None:
    """A one-line reason when the last ``window`` validation values rose against the ``window`` before them by
    more than their own spread (a least-squares slope over the last ``2 * window`` epochs that is positive and
    larger than twice its standard error), else None; None with fewer than ``2 * window`` values."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if len(v) < 2 * window:
        return None
    y = np.asarray(v[-2 * window:], dtype=np.float64)
    x = np.arange(y.size, dtype=np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    se = math.sqrt(max(resid @ resid, 0.0) / (y.size - 2) / ((x - x.mean()) @ (x - x.mean())))
    if slope > 0 and slope > 2 * se:
        return (f"+{slope * y.size:.3f} over the last {y.size} epochs, slope {slope:.4f} ± {se:.4f} per epoch; "
                f"mean of the last {window} {y[-window:].mean():.3f} vs {y[:window].mean():.3f} before")
    return None


def _finite(x: float) -> float | None:
    return x if isinstance(x, float) and math.isfinite(x) else None


def plot_register_curves(history: Sequence[dict], path: Path, title: str = "") -> Path:
    """Training loss and its label / regulariser terms; training and validation Dice; validation TRE (median
    landmark, median per-pair RMS); validation gland HD95 and the field's folding."""
    plt = report._pyplot()
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    axes[0].plot(epochs, [r["train_loss"] for r in history], label="loss")
    axes[0].plot(epochs, [r["train_label"] for r in history], label="label term")
    axes[0].plot(epochs, [r["train_reg"] for r in history], label="regulariser")
    axes[0].set(xlabel="epoch", title="training loss")
    axes[1].plot(epochs, [r["train_dice"] for r in history], label="train (sampled labels, net grid)")

    def val(key):
        return [r.get(key) for r in history]

    if any(v is not None for v in val("val_dice")):
        axes[1].plot(epochs, val("val_dice"), "s-", ms=3, label="val gland")
    axes[1].set(xlabel="epoch", ylabel="binary Dice", title="Dice", ylim=(0, 1))
    for key, name, colour in (("val_tre", "landmarks, median", "C3"), ("val_rms_tre", "RMS per pair, median", "C4")):
        if any(v is not None for v in val(key)):
            axes[2].plot(epochs, val(key), "s-", ms=3, color=colour, label=name)
    axes[2].set(xlabel="epoch", ylabel="mm", title="validation TRE")
    if any(v is not None for v in val("val_hd95")):
        axes[3].plot(epochs, val("val_hd95"), "s-", ms=3, color="C5", label="gland HD95 (mm)")
    axes[3].set(xlabel="epoch", ylabel="mm", title="val gland HD95; folding")
    if any(v is not None for v in val("val_folding")):
        twin = axes[3].twinx()
        twin.plot(epochs, [None if v is None else 100 * v for v in val("val_folding")], ":", color="k",
                  label="folding (% voxels)")
        twin.set_ylabel("% voxels with |J| <= 0")
        twin.legend(fontsize=7, loc="upper right")
    for ax in axes:
        ax.grid(alpha=0.3)
    for ax in axes[:3]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if axes[3].get_legend_handles_labels()[0]:
        axes[3].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title)
    return report.save_figure(fig, path)


def resolve_register_config(config: str | None, overrides: Sequence[str], resume: str | None,
                            data: str | None) -> tuple[RegisterConfig, dict | None]:
    """The config of ``leancnn register train`` and the checkpoint it resumes (read once; None without one)."""
    overrides = list(overrides) + ([f"data.root={data}"] if data else [])
    return resolve_train_config(RegisterConfig, "register", "a registration run", config, overrides, resume)


def train_command(config: str | None, overrides: Sequence[str], data: str | None = None, resume: str | None = None,
                  out: str | None = None, force: bool = False) -> int:
    """``leancnn register train``."""
    cfg, state = resolve_register_config(config, overrides, resume, data)
    out_path = check_path_arg(out, "-o")
    if state is not None and out_path is None:
        out_path = Path(state["path"]).parent
    root = Path(cfg.data.root) if str(cfg.data.root).strip() else None
    check_run_output(out_path or default_run_dir(cfg), config, resume, data=[("data folder", root)])
    train_register(cfg, out=out_path, resume=state, force=force)
    return 0


# ----------------------------------------------------------------------------------------------- checkpoints


def load_register_model(path: str | Path, device: torch.device,
                        command: str = "leancnn register") -> tuple[nn.Module, RegisterConfig]:
    model, cfg, _ = load_register_state(path, device, command)
    return model, cfg


def load_register_state(path: str | Path, device: torch.device,
                        command: str = "leancnn register") -> tuple[nn.Module, RegisterConfig, dict]:
    """The network, config and checkpoint (its ``meta``: grid, splits) of a registration run or checkpoint; a
    run of another kind is refused naming both kinds."""
    run = load_run(path, device, ("register",), command, "a registration run")
    return run.model, run.cfg, run.state


# ----------------------------------------------------------------------------------------------- outputs


def _nifti(data: np.ndarray, affine: np.ndarray, descrip: str = "", intent: str | None = None):
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(data), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    if descrip:
        img.header["descrip"] = descrip[:79].encode()
    if intent:
        img.header.set_intent(intent)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return img


EVALUATE_FILES = ("per_label.csv", "per_pair.csv", "summary.json", "summary.md")  # and pairs/<id>.png


def check_output_folder(out: str | Path, checkpoint: str | Path | None, data: str | Path) -> Path:
    """``-o`` of ``predict`` / ``evaluate`` (:mod:`leancnn.outputs`): not the run or checkpoint, nor the data
    folder, nor inside or holding one of them; not an existing file."""
    inputs = [*checkpoint_inputs(checkpoint, "model"), ("data folder", Path(data) if str(data).strip() else None)]
    return check_output_dir(check_output(out, inputs, "-o"))


def infer_config(cfg: RegisterConfig, overrides: dict | None) -> RegisterInferConfig:
    """The run's ``infer`` section with the command line's values (``{"tta": ..., "refine_steps": ...}``; None
    values are not given) on top, checked as a config is (a negative --refine is refused in one line)."""
    base = asdict(cfg.infer)
    base.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(RegisterInferConfig, base)


def predict_folder(checkpoint: str | Path, data: str | Path, out: str | Path, device: str = "auto",
                   force: bool = False, progress: bool | None = None, infer: dict | None = None) -> list[str]:
    """``leancnn register predict``: for every pair of ``data`` (images only; labels are warped when the folder
    has them), write on the fixed grid, with the fixed image's header affine:

    - ``<id>_ddf.nii.gz``: float32 (X, Y, Z, 1, 3), NIfTI vector intent, in fixed-grid voxel units;
    - ``<id>_warped.nii.gz``: the moving image resampled on the fixed grid (float32, normalised as in training);
    - ``<id>_warped_labels.nii.gz``: (X, Y, Z, L) float32 in [0, 1], when the folder has labels.

    Nothing is left in ``out`` on failure (written to a temporary sibling, moved in at the end); with ``force``
    the files an earlier predict wrote there are replaced, other files stay."""
    out = check_output_folder(out, checkpoint, data)
    dev = resolve_device(device)
    model, cfg = load_register_model(checkpoint, dev, "leancnn register predict")
    inf = infer_config(cfg, infer)
    pairs = open_pairs(cfg, None, labels=None, root=data)
    if progress is None:
        progress = progress_enabled(DistContext())
    with staged_dir(out, force) as tmp:
        for i in tqdm(range(len(pairs)), desc="register", disable=not progress):
            pair = pairs[i]
            ddf = predict_ddf(model, pair, cfg.data.scale, dev, cfg.data.initial, inf)
            matrix = pair_initial_map(pair, cfg.data.initial)
            aff = pair.fixed_affine
            field = ddf[0].permute(1, 2, 3, 0).numpy()[:, :, :, None, :].astype(np.float32)
            _nifti(field, aff, "ddf, fixed voxels: moving index = M (q + d), M in _ddf.json", "vector") \
                .to_filename(tmp / f"{pair.id}_ddf.nii.gz")
            atomic_write_json(tmp / f"{pair.id}_ddf.json", {
                "units": "fixed-grid voxels", "initial": cfg.data.initial, "infer": asdict(inf),
                "fixed_to_moving_voxel": matrix.tolist(),
                "meaning": "fixed voxel q corresponds to moving voxel M @ (q + ddf(q)), M = fixed_to_moving_voxel",
                "moving_affine": np.asarray(pair.moving_affine).tolist(),
                "fixed_affine": np.asarray(pair.fixed_affine).tolist()})
            _nifti(warp_moving(pair.moving_image, ddf, matrix).astype(np.float32), aff, "warped moving image") \
                .to_filename(tmp / f"{pair.id}_warped.nii.gz")
            if pair.moving_label is not None:
                lab = np.moveaxis(warp_moving(pair.moving_label, ddf, matrix), 0, -1).clip(0, 1).astype(np.float32)
                _nifti(lab, aff, "warped moving labels").to_filename(tmp / f"{pair.id}_warped_labels.nii.gz")
    return list(pairs.ids)


def evaluate_folder(checkpoint: str | Path | None, data: str | Path, out: str | Path, device: str = "auto",
                    split: str = "all", pictures: bool = True, force: bool = False,
                    progress: bool | None = None, quiet: bool = False, initial: str | None = None,
                    infer: dict | None = None) -> dict:
    """``leancnn register evaluate``: register every labelled pair (``checkpoint=None``: no registration) and write
    ``per_label.csv`` (one row per pair and non-empty label), ``summary.json`` / ``summary.md`` (gland Dice and
    landmark TRE, medians and quartiles, before and after) and ``pairs/<id>.png`` overlays. ``split``: ``all``
    pairs of the folder, or the run's ``test`` / ``val`` pairs: the ids the run recorded (:func:`run_split`), which
    the folder must hold."""
    out = check_output_folder(out, checkpoint, data)
    dev = resolve_device(device)
    if checkpoint is None:
        cfg = from_dict(RegisterConfig, {"data": {"initial": initial}} if initial else {})  # None: the config's
        model, method = None, f"identity (no registration; {initial} mapping)"
        if split != "all":
            raise LeancnnError("--split test/val needs a checkpoint (the split is the run's)")
    else:
        model, cfg, state = load_register_state(checkpoint, dev, "leancnn register evaluate")
        method = f"{cfg.model.kind} network ({count_params(model):,} parameters) from {checkpoint}"
    inf = infer_config(cfg, infer)
    extras = (["flips"] if inf.tta == "flips" else []) + \
        ([f"{inf.refine_steps} refinement steps ({inf.refine_similarity})"] if inf.refine_steps else [])
    if model is not None and extras:
        method += f"; test-time {', '.join(extras)}"
    if split not in ("all", "test", "val"):
        raise LeancnnError(f"--split must be all, test or val, got {split!r}")
    ids, source = None, None
    if split != "all":
        ids, source = run_split(state, cfg, split, data)  # the run's own pairs, never recomputed on `data`
    pairs = open_pairs(cfg, ids, labels=True, root=data)
    if progress is None:
        progress = progress_enabled(DistContext())
    with staged_dir(out, force, known=EVALUATE_FILES) as tmp:
        def picture(pair, ddf, pair_rows):
            overlay_figure(pair, ddf, pair_rows, tmp / "pairs" / f"{pair.id}.png", initial=cfg.data.initial)

        per_pair: list[dict] = []
        rows = register_and_score(model, pairs, cfg.data.scale, dev, "evaluate", progress, cfg.data.initial,
                                  picture if pictures else None, infer=inf, pair_rows=per_pair)
        skipped = [f"{pid} label {k}" for pid, ks in pairs.empty_labels().items() for k in ks]
        summary = {"method": method, "data": str(data), "split": split, "pairs": len(pairs),
                   **({"split_ids": list(pairs.ids), "split_source": source} if source else {}),
                   "infer": asdict(inf), "skipped_empty_labels": skipped, **summarise_rows(rows, per_pair)}
        write_rows_csv(tmp / "per_label.csv", rows)
        write_rows_csv(tmp / "per_pair.csv", per_pair, PAIR_FIELDS)
        atomic_write_json(tmp / "summary.json", summary)
        table = report.format_table(summary_rows(summary), SUMMARY_HEADERS, markdown=True)
        atomic_write_text(tmp / "summary.md", f"# Registration evaluation\n\n{method}; {len(pairs)} pairs of "
                                              f"`{data}` ({split}).\n\n{table}\n")
    if not quiet:
        print(f"{method}; {len(pairs)} pairs")
        print(report.format_table(summary_rows(summary), SUMMARY_HEADERS))
        print(f"written to {out}")
    return summary


# ----------------------------------------------------------------------------------------------- pictures


def overlay_figure(pair: RegistrationPair, ddf: torch.Tensor, rows: Sequence[dict], path: Path,
                   title: str | None = None, *, initial: str) -> Path:
    """One pair at a glance: an axial and a sagittal slice through the fixed gland's centre. Columns: the fixed
    image with its gland (green); the moving image before registration (on the fixed grid by the initial mapping) with
    its gland (red) against the fixed one (green); the warped moving image with the warped gland (red) against
    the fixed one; fixed and warped in a checkerboard. Landmarks: fixed centroids as green crosses, moving /
    warped ones as red dots."""
    plt = report._pyplot()
    m = pair_initial_map(pair, initial)
    zero = torch.zeros_like(ddf)
    before_img, after_img = warp_moving(pair.moving_image, zero, m), warp_moving(pair.moving_image, ddf, m)
    before_lab = warp_moving(pair.moving_label, zero, m) if pair.moving_label is not None else None
    after_lab = warp_moving(pair.moving_label, ddf, m) if pair.moving_label is not None else None
    fixed_lab = pair.fixed_label
    fixed = pair.fixed_image
    if fixed_lab is not None and GLAND not in pair.empty and (fixed_lab[GLAND] >= 0.5).any():
        centre = np.argwhere(fixed_lab[GLAND] >= 0.5).mean(0).round().astype(int)
    else:
        centre = np.array(fixed.shape) // 2
    sp = np.asarray(pair.fixed_spacing, dtype=float)
    views = [("axial", 2), ("sagittal", 0)]
    fig, axes = plt.subplots(len(views), 4, figsize=(13, 6.2))
    checker_size = max(4, min(fixed.shape) // 6)

    def cut(vol, axis):
        s = np.take(vol, centre[axis], axis=axis)
        return s.T  # rows = the second remaining axis

    def extent(axis):
        keep = [a for a in range(3) if a != axis]
        return (0, fixed.shape[keep[0]] * sp[keep[0]], 0, fixed.shape[keep[1]] * sp[keep[1]])

    by_label = {r["label"]: r for r in rows}
    for row, (vname, axis) in enumerate(views):
        ext = extent(axis)
        f2, b2, a2 = cut(fixed, axis), cut(before_img, axis), cut(after_img, axis)
        yy, xx = np.indices(f2.shape)
        checker = np.where(((yy // checker_size) + (xx // checker_size)) % 2 == 0, f2, a2)
        panels = [(f2, "fixed", None), (b2, "moving, before", before_lab), (a2, "moving, registered", after_lab),
                  (checker, "fixed | registered checkerboard", None)]
        for col, (img, name, mlab) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", origin="lower", extent=ext, aspect="equal")
            if fixed_lab is not None and col < 3 and GLAND not in pair.empty:
                ax.contour(cut(fixed_lab[GLAND], axis) >= 0.5, levels=[0.5], colors="lime", linewidths=1.2,
                           origin="lower", extent=ext)
            if mlab is not None and GLAND not in pair.empty:
                ax.contour(cut(mlab[GLAND], axis) >= 0.5, levels=[0.5], colors="red", linewidths=1.2,
                           origin="lower", extent=ext)
            if fixed_lab is not None and col in (1, 2):
                keep = [a for a in range(3) if a != axis]
                for k in range(1, pair.num_labels):
                    if k in pair.empty:
                        continue
                    fc = np.argwhere(fixed_lab[k] >= 0.5).mean(0)
                    ax.plot(fc[keep[0]] * sp[keep[0]], fc[keep[1]] * sp[keep[1]], "+", color="lime", ms=8, mew=1.5)
                    mk = mlab[k] >= 0.5
                    if mk.any():
                        mc = np.argwhere(mk).mean(0)
                        ax.plot(mc[keep[0]] * sp[keep[0]], mc[keep[1]] * sp[keep[1]], ".", color="red", ms=7)
            label = name
            g = by_label.get(GLAND)
            if g is not None and col in (1, 2):
                d = g["dice_before"] if col == 1 else g["dice_after"]
                tres = [r["tre_before_mm" if col == 1 else "tre_after_mm"] for r in rows if r["structure"] == "landmark"]
                tres = [t for t in tres if t is not None]
                label += f"\ngland Dice {d:.2f}" if d is not None else ""
                label += f", landmark TRE {np.median(tres):.1f} mm" if tres else ""
            ax.set_title(label, fontsize=9)
            ax.set_xlabel(f"{vname}, mm", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(title or f"pair {pair.id}: green = fixed gland and landmarks, red = moving (before / registered)",
                 fontsize=10)
    fig.tight_layout()
    return report.save_figure(fig, path)


__all__ = ["RegisterTask", "build_model", "check_labelled", "evaluate_folder", "load_register_state", "net_shape",
           "infer_config", "overlay_figure", "pair_row", "predict_ddf", "predict_folder", "register_and_score", "run_split",
           "score_pair", "split_ids", "still_rising", "summarise_rows", "train_register"]
