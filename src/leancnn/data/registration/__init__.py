"""Registration data (Hu et al., "Weakly-supervised convolutional neural networks for multimodal image
registration", Medical Image Analysis 49 (2018); code YipengHu/label-reg; DeepReg's paired layout), one module
per job:

* :mod:`.nifti`: paired NIfTI folders (:class:`PairedNifti`, :class:`RegistrationPair`), header checks, lazy
  reading, per-image normalisation;
* :mod:`.dataset`: the torch dataset (:class:`RegistrationDataset`: label sampling, the moving volume on the
  fixed grid through the ``initial`` mapping) and :func:`collate_pairs`;
* :mod:`.augment`: random affine augmentation (label-reg's random_transform_generator);
* :mod:`.phantoms`: synthetic MR-like / US-like pairs with a known deformation (:func:`make_phantoms`,
  :func:`write_phantoms`);
* :mod:`.splits`: k-fold cross-validation by pair or group (:func:`kfold_ids`).

The coordinate conventions (voxel / world, the ``"centre"`` and ``"corners"`` initial mappings, the DDF's grid)
are in :mod:`leancnn.nn.warp`; ``initial_map`` and ``INITIAL_MAPPINGS`` are re-exported here because the dataset
takes an ``initial`` from them. The default mapping is the config's (``RegisterDataConfig.initial``).
"""

from ...nn.warp import INITIAL_MAPPINGS, initial_map
from .augment import affine_warp, augment_pair, random_affine
from .dataset import (RegistrationDataset, RegistrationSample, collate_pairs, pair_initial_map, resize_to_grid,
                      to_fixed_grid)
from .nifti import FOLDERS, NAN_POLICIES, NORMALISATIONS, PairedNifti, RegistrationPair, list_pair_ids, normalise_image
from .phantoms import Phantom, make_phantoms, write_phantoms
from .splits import kfold_ids

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
