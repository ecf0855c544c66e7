"""Registration data: the paired NIfTI loader, label sampling, affine augmentation, phantoms, k-fold splits."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

nib = pytest.importorskip("nibabel")

from leancnn.data.registration import (  # noqa: E402
    PairedNifti,
    RegistrationDataset,
    affine_warp,
    collate_pairs,
    kfold_ids,
    make_phantoms,
    normalise_image,
    random_affine,
    resize_to_grid,
    write_phantoms,
)
from leancnn.errors import LeancnnError  # noqa: E402

MRUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "mrus"
N_PHANTOMS = 4
MOVING, FIXED = (36, 36, 32), (32, 40, 28)


@pytest.fixture(scope="module")
def phantom_cache(fresh_cache):
    return fresh_cache


@pytest.fixture(scope="module")
def phantoms(phantom_cache):
    return make_phantoms(N_PHANTOMS, seed=0)


@pytest.fixture(scope="module")
def phantom_root(phantom_cache, phantoms, tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    assert write_phantoms(root, N_PHANTOMS, seed=0) == [p.id for p in phantoms]
    return root


def _save(path: Path, data: np.ndarray, spacing=(1.5, 1.5, 1.5)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data), np.diag([*spacing, 1.0]))
    nib.save(img, str(path))


def _tiny_folder(root: Path, ids=("a", "b"), labels=(2, 2), moving=(6, 7, 5), fixed=(5, 6, 4)) -> Path:
    """A small valid paired folder: images of ramps, labels with one voxel set per label."""
    for vid in ids:
        _save(root / "moving_images" / f"{vid}.nii.gz", np.arange(np.prod(moving), dtype=np.uint8).reshape(moving))
        _save(root / "fixed_images" / f"{vid}.nii.gz", np.arange(np.prod(fixed), dtype=np.float32).reshape(fixed))
        for side, shape, n in (("moving", moving, labels[0]), ("fixed", fixed, labels[1])):
            lab = np.zeros((*shape, n), np.float32)
            for k in range(n):
                lab[k, 1, 1, k] = 1.0
            _save(root / f"{side}_labels" / f"{vid}.nii.gz", lab)
    return root


def _dice(a, b) -> float:
    a, b = np.asarray(a) >= 0.5, np.asarray(b) >= 0.5
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def _surface(mask: torch.Tensor) -> int:
    """Voxels of a binary mask with a background 6-neighbour (the one-voxel shell)."""
    m = F.pad(mask >= 0.5, (1, 1, 1, 1, 1, 1))
    inner = m[1:-1, 1:-1, 1:-1].clone()
    for d in range(3):
        for step in (1, -1):
            inner &= torch.roll(m, step, d)[1:-1, 1:-1, 1:-1]
    return int((mask >= 0.5).sum() - inner.sum())


def _warp_ddf(moving: np.ndarray, ddf: np.ndarray) -> np.ndarray:
    """Quick warp: resize ``(L, *moving)`` to the DDF's grid (corner-aligned), sample at index + ddf."""
    shape = ddf.shape[1:]
    m = resize_to_grid(torch.from_numpy(moving), shape)
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    pos = idx + torch.from_numpy(ddf)
    grid = torch.stack([2 * pos[k] / (n - 1) - 1 for k, n in enumerate(shape)], -1).flip(-1)[None]
    return F.grid_sample(m[None], grid, align_corners=True)[0].numpy()


# ------------------------------------------------------------------------------------------------ real data
@pytest.mark.slow
@pytest.mark.skipif(not MRUS.is_dir(), reason="../shared/data/mrus not present")
def test_real_mrus_pairs_load_as_the_readme_says():
    ds = PairedNifti(MRUS, cache=False)
    assert len(ds) == 80 and ds.ids == [f"obs{i:03d}" for i in range(80)] and ds.has_labels
    for pair in ds:
        assert pair.moving_image.shape == (69, 69, 64) and pair.fixed_image.shape == (47, 63, 44), pair.id
        assert pair.moving_spacing == (1.5, 1.5, 1.5) and pair.fixed_spacing == (1.5, 1.5, 1.5)
        assert pair.moving_affine.shape == (4, 4) and np.allclose(np.diag(pair.fixed_affine)[:3], 1.5)
        assert pair.moving_image.dtype == np.float32
        assert pair.moving_image.min() == 0 and pair.moving_image.max() == 1  # min-max normalised
        n = pair.num_labels
        assert 2 <= n <= 6 and pair.fixed_label.shape == (n, 47, 63, 44)
        assert pair.moving_label.shape == (n, 69, 69, 64)
        assert set(np.unique(pair.fixed_label)) <= {0.0, 1.0}
        assert 0 not in pair.empty and (pair.moving_label[0] >= 0.5).sum() > 1000
        assert (pair.fixed_label[0] >= 0.5).sum() > 1000
    # training item: the moving image and label resized onto the fixed grid
    train = RegistrationDataset(PairedNifti(MRUS, ["obs000", "obs001"]), "train", seed=0, initial="corners")
    sample = train[0]
    assert [tuple(t.shape) for t in sample[:4]] == [(1, 47, 63, 44)] * 4 and sample.label_mask is None
    k = train.draw_label(0)
    raw = train.pairs[0]
    assert torch.equal(sample.fixed_label[0], torch.from_numpy(raw.fixed_label[k]))
    # corners are aligned: the first and last voxels keep their values exactly
    assert sample.moving_image[0, 0, 0, 0] == pytest.approx(float(raw.moving_image[0, 0, 0]))
    assert sample.moving_image[0, -1, -1, -1] == pytest.approx(float(raw.moving_image[-1, -1, -1]))


@pytest.mark.skipif(not MRUS.is_dir(), reason="../shared/data/mrus not present")
def test_real_mrus_augmentation_keeps_the_gland_binary_and_inside():
    pair = PairedNifti(MRUS, ["obs003"])[0]
    for side in (pair.moving_label, pair.fixed_label):
        gland = torch.from_numpy(side[:1])[None]
        assert torch.allclose(affine_warp(gland, random_affine(1, 0.0, rng=0)), gland, atol=1e-5)  # scale 0
        for seed in range(3):
            out = affine_warp(gland, random_affine(1, 0.1, rng=seed))[0, 0]
            assert out.min() >= 0 and out.max() <= 1 + 1e-5
            ratio = (out >= 0.5).sum().item() / (gland >= 0.5).sum().item()
            assert 0.95 <= ratio <= 1.45  # corners moved inward: enlarged by at most 1 / 0.9 per axis
            soft = ((out > 0.05) & (out < 0.95)).sum().item()
            assert soft < 2.5 * _surface(gland[0, 0])  # binary-ish: a soft rim about one voxel thick
            border = torch.cat([out[[0, -1]].flatten(), out[:, [0, -1]].flatten(), out[:, :, [0, -1]].flatten()])
            assert border.max() < 0.5 and _dice(out, gland[0, 0]) > 0.85  # inside, and still the gland
    # through the training dataset: the same draws with and without augmentation, labels in [0, 1]
    pairs = PairedNifti(MRUS, ["obs003", "obs004"])
    aug = RegistrationDataset(pairs, "train", seed=1, augment_scale=0.1, initial="corners")
    plain = RegistrationDataset(pairs, "train", seed=1, initial="corners")
    for i in range(2):
        a, b = aug[i], plain[i]
        assert a.fixed_label.min() >= 0 and a.fixed_label.max() <= 1
        assert a.moving_label.sum() == pytest.approx(b.moving_label.sum().item(), rel=0.5)


# ------------------------------------------------------------------------------------------------ augmentation
def test_random_affine_bounds_worked_out_from_the_corner_fit():
    # LSQ over the 8 corners c of the cube with targets c - sign(c) u: A[d, j] = delta_dj - mean_c(c_d c_j u_cd),
    # t_d = -mean_c(c_d u_cd); so diag in [1 - s, 1], |off-diagonal| <= s / 2, |t| <= s / 2.
    s = 0.1
    theta = random_affine(500, s, rng=0).double()
    diag = torch.diagonal(theta[:, :, :3], dim1=1, dim2=2)
    off = theta[:, :, :3] - torch.diag_embed(diag)
    assert diag.min() >= 1 - s - 1e-6 and diag.max() <= 1 + 1e-6
    assert off.abs().max() <= s / 2 + 1e-6 and theta[:, :, 3].abs().max() <= s / 2 + 1e-6
    assert diag.mean().item() == pytest.approx(1 - s / 2, abs=3e-3)  # E[u] = s / 2
    assert torch.equal(random_affine(3, s, rng=7), random_affine(3, s, rng=7))
    assert not torch.equal(random_affine(3, s, rng=7), random_affine(3, s, rng=8))
    assert torch.allclose(random_affine(4, 0.0, rng=1), torch.eye(3, 4).expand(4, 3, 4), atol=1e-7)


def test_affine_warp_identity_and_uniform_zoom():
    x = torch.rand(2, 2, 5, 6, 7)
    assert torch.allclose(affine_warp(x, torch.eye(3, 4).expand(2, 3, 4)), x, atol=1e-5)
    # theta = 0.5 I samples the central half: a linear ramp along the last axis, values 0..6, becomes 1.5..4.5
    ramp = torch.arange(7.0).expand(1, 1, 5, 6, 7).contiguous()
    theta = torch.cat([0.5 * torch.eye(3), torch.zeros(3, 1)], 1)[None]
    out = affine_warp(ramp, theta)
    assert torch.allclose(out[0, 0, 2, 3], torch.linspace(1.5, 4.5, 7), atol=1e-5)


# ------------------------------------------------------------------------------------------------ phantoms
def test_phantoms_are_deterministic_cached_and_well_formed(phantoms, phantom_cache):
    again = make_phantoms(N_PHANTOMS, seed=0, cache=False)
    prefix = make_phantoms(2, seed=0, cache=False)
    other = make_phantoms(1, seed=1, cache=False)
    files = list((phantom_cache / "registration").glob("phantoms-*.npz"))
    assert len(files) == 1
    cached = make_phantoms(N_PHANTOMS, seed=0)  # read back from the cache
    for p, q, c in zip(phantoms, again, cached):
        for name in ("moving_image", "fixed_image", "moving_label", "fixed_label", "ddf"):
            assert np.array_equal(getattr(p, name), getattr(q, name))
            assert np.array_equal(getattr(p, name), getattr(c, name))
    assert np.array_equal(prefix[1].ddf, phantoms[1].ddf)
    assert not np.array_equal(other[0].moving_image, phantoms[0].moving_image)
    for p in phantoms:
        assert p.moving_image.shape == MOVING and p.fixed_image.shape == FIXED and p.moving_image.dtype == np.uint8
        n = p.moving_label.shape[0]
        assert 3 <= n <= 5 and p.fixed_label.shape == (n, *FIXED) and p.ddf.shape == (3, *FIXED)
        for lab in (p.moving_label, p.fixed_label):
            sizes = (lab >= 0.5).reshape(n, -1).sum(1)
            assert sizes[0] > 1000 and all(8 <= s <= 120 for s in sizes[1:]), sizes  # blobs: tens of voxels
        # two modalities: the gland is brighter than its surroundings in "moving", darker in "fixed"
        gm, gf = p.moving_label[0] >= 0.5, p.fixed_label[0] >= 0.5
        assert p.moving_image[gm].mean() > p.moving_image[~gm].mean() + 50
        assert p.fixed_image[gf].mean() < p.fixed_image[~gf].mean() - 10


def test_phantom_true_ddf_maps_moving_labels_onto_fixed_labels(phantoms):
    for p in phantoms:
        warped = _warp_ddf(p.moving_label, p.ddf)
        identity = resize_to_grid(torch.from_numpy(p.moving_label), FIXED).numpy()
        assert _dice(warped[0], p.fixed_label[0]) > 0.95
        assert _dice(warped[0], p.fixed_label[0]) > _dice(identity[0], p.fixed_label[0]) + 0.03
        for k in range(1, len(warped)):
            assert _dice(warped[k], p.fixed_label[k]) > 0.6
            c_w = np.argwhere(warped[k] >= 0.5).mean(0)
            c_f = np.argwhere(p.fixed_label[k] >= 0.5).mean(0)
            assert np.linalg.norm(c_w - c_f) < 1.0  # centroid distance (TRE) under one voxel


def test_phantom_folder_reads_back_through_paired_nifti(phantoms, phantom_root, phantom_cache, tmp_path):
    raw = PairedNifti(phantom_root, normalise="none")
    assert raw.ids == [p.id for p in phantoms] and raw.has_labels
    for p, r in zip(phantoms, raw):
        assert np.array_equal(r.moving_image, p.moving_image) and np.array_equal(r.fixed_image, p.fixed_image)
        assert np.array_equal(r.moving_label, p.moving_label) and np.array_equal(r.fixed_label, p.fixed_label)
        assert r.moving_spacing == (1.5, 1.5, 1.5) and r.empty == []
    ddf = np.asanyarray(nib.load(str(phantom_root / "true_ddfs" / "case000.nii.gz")).dataobj)
    assert np.array_equal(np.moveaxis(ddf, -1, 0), phantoms[0].ddf)
    mm = PairedNifti(phantom_root)[1]
    assert mm.fixed_image.min() == 0 and mm.fixed_image.max() == 1
    z = PairedNifti(phantom_root, normalise="zscore")[1]
    assert abs(z.moving_image.mean()) < 1e-4 and z.moving_image.std() == pytest.approx(1, abs=1e-4)
    # byte-identical when written again
    write_phantoms(tmp_path, N_PHANTOMS, seed=0)
    for f in sorted(phantom_root.rglob("*.nii.gz")):
        assert f.read_bytes() == (tmp_path / f.relative_to(phantom_root)).read_bytes(), f


def test_training_sampling_and_augmentation_on_phantoms(phantom_root):
    pairs = PairedNifti(phantom_root)
    train = RegistrationDataset(pairs, "train", seed=3, initial="corners")
    sample = train[0]
    assert [tuple(t.shape) for t in sample[:4]] == [(1, *FIXED)] * 4
    # one label per pair per epoch, uniform over its labels, seeded by (seed, epoch, pair)
    draws = []
    for epoch in range(60):
        train.set_epoch(epoch)
        draws.append(train.draw_label(1))
    n1 = pairs.num_labels(1)
    counts = np.bincount(draws, minlength=n1)
    assert len(counts) == n1 and counts.min() >= 60 / n1 / 3
    train.set_epoch(5)
    again = RegistrationDataset(pairs, "train", seed=3, initial="corners")
    again.set_epoch(5)
    assert [train.draw_label(i) for i in range(4)] == [again.draw_label(i) for i in range(4)]
    # augmentation: scale 0 is the identity, 0.1 keeps labels in [0, 1] and the gland inside
    aug = RegistrationDataset(pairs, "train", seed=3, augment_scale=0.1, initial="corners")
    aug.set_epoch(5)
    plain = RegistrationDataset(pairs, "train", seed=3, augment_scale=0.0, initial="corners")
    plain.set_epoch(5)
    for i in range(len(pairs)):
        a, b = aug[i], plain[i]
        assert aug.draw_label(i) == plain.draw_label(i)
        for lab, ref in ((a.moving_label, b.moving_label), (a.fixed_label, b.fixed_label)):
            assert lab.min() >= 0 and lab.max() <= 1
            ratio = lab.sum().item() / ref.sum().item()  # label mass: enlarged by at most 1 / 0.9 per axis
            assert 0.9 <= ratio <= 1.5
        assert not torch.equal(a.moving_image, b.moving_image)
    # the gland through the augmentation
    pair = pairs[0]
    gland = torch.from_numpy(pair.fixed_label[:1])[None]
    out = affine_warp(gland, random_affine(1, 0.1, rng=0))[0, 0]
    border = torch.cat([out[[0, -1]].flatten(), out[:, [0, -1]].flatten(), out[:, :, [0, -1]].flatten()])
    assert border.max() < 0.5 and _dice(out, gland[0, 0]) > 0.7
    assert ((out > 0.05) & (out < 0.95)).sum().item() < 2 * _surface(gland[0, 0])
    # batching
    batch = collate_pairs([train[i] for i in range(3)])
    assert [tuple(t.shape) for t in batch[:4]] == [(3, 1, *FIXED)] * 4
    loader = torch.utils.data.DataLoader(train, batch_size=2, shuffle=True, collate_fn=collate_pairs,
                                         generator=torch.Generator().manual_seed(0))
    first = next(iter(loader))
    assert first.fixed_label.shape == (2, 1, *FIXED)


def test_all_labels_per_pair_padded_and_masked(phantom_root):
    """data.labels=all: every label of a pair, on the fixed grid, the same voxels as the one-label draw; a batch
    pads to its largest label count with masked (0) channels."""
    pairs = PairedNifti(phantom_root)
    one = RegistrationDataset(pairs, "train", seed=3, initial="corners")
    every = RegistrationDataset(pairs, "train", seed=3, initial="corners", labels="all")
    counts = [pairs.num_labels(i) for i in range(len(pairs))]
    for i in range(len(pairs)):
        s = every[i]
        assert s.moving_label.shape == (counts[i], *FIXED) and s.fixed_label.shape == (counts[i], *FIXED)
        assert s.label_mask.tolist() == [0.0 if k in pairs[i].empty else 1.0 for k in range(counts[i])]
        k = one.draw_label(i)
        assert torch.equal(s.moving_label[k], one[i].moving_label[0])
        assert torch.equal(s.fixed_label[k], one[i].fixed_label[0])
    batch = collate_pairs([every[i] for i in range(len(pairs))])
    width = max(counts)
    assert batch.moving_label.shape == (len(pairs), width, *FIXED) and batch.label_mask.shape == (len(pairs), width)
    for i, n in enumerate(counts):
        assert batch.label_mask[i, n:].sum() == 0 and batch.fixed_label[i, n:].abs().sum() == 0
    augmented = RegistrationDataset(pairs, "train", seed=3, initial="corners", labels="all", augment_scale=0.1)
    assert augmented[0].moving_label.shape == (counts[0], *FIXED)
    with pytest.raises(LeancnnError, match="training only"):
        RegistrationDataset(pairs, "eval", initial="corners", labels="all")
    with pytest.raises(LeancnnError, match="unknown label sampling"):
        RegistrationDataset(pairs, "train", initial="corners", labels="some")


def test_eval_and_predict_modes(phantom_root, tmp_path):
    pairs = PairedNifti(phantom_root)
    ev = RegistrationDataset(pairs, "eval", initial="corners")
    total = sum(pairs.num_labels(i) for i in range(len(pairs)))
    assert len(ev) == total and ev.index[:2] == [(0, 0), (0, 1)]
    i, k = ev.index[-1]
    assert torch.equal(ev[len(ev) - 1].fixed_label[0], torch.from_numpy(pairs[i].fixed_label[k]))
    with pytest.raises(LeancnnError, match="training only"):
        RegistrationDataset(pairs, "eval", augment_scale=0.1, initial="corners")
    # a folder of images only: valid for prediction
    images = tmp_path / "images_only"
    for sub in ("moving_images", "fixed_images"):
        shutil.copytree(phantom_root / sub, images / sub)
    pred = PairedNifti(images)
    assert not pred.has_labels and pred[0].moving_label is None and pred.num_labels(0) == 0
    item = RegistrationDataset(pred, "predict", initial="corners")[0]
    assert item.moving_image.shape == (1, *FIXED) and item.moving_label is None
    assert collate_pairs([item, item]).fixed_label is None
    with pytest.raises(LeancnnError, match="no label folders"):
        RegistrationDataset(pred, "train", initial="corners")
    # split ids and collate across fixed shapes
    assert PairedNifti(phantom_root, split_ids=["case002", "case000"]).ids == ["case002", "case000"]
    with pytest.raises(LeancnnError, match="no pair case009"):
        PairedNifti(phantom_root, split_ids=["case009"])
    small = RegistrationDataset(PairedNifti(_tiny_folder(tmp_path / "tiny")), "train", initial="corners")[0]
    with pytest.raises(LeancnnError, match="different fixed shapes"):
        collate_pairs([item, small])


def test_empty_label_is_flagged_skipped_in_eval_and_not_drawn(tmp_path):
    root = _tiny_folder(tmp_path / "d", ids=("a", "b"), labels=(3, 3))
    lab = np.zeros((5, 6, 4, 3), np.float32)
    lab[1, 1, 0, 0] = lab[1, 1, 2, 2] = 1.0  # label 1 of pair b empty on the fixed side
    _save(root / "fixed_labels" / "b.nii.gz", lab)
    ds = PairedNifti(root)
    assert ds["a"].empty == [] and ds["b"].empty == [1] and ds.empty_labels() == {"b": [1]}
    with pytest.warns(UserWarning, match="b label 1"):
        ev = RegistrationDataset(ds, "eval", initial="corners")
    assert (1, 1) not in ev.index and len(ev) == 5
    assert len(RegistrationDataset(ds, "eval", skip_empty=False, initial="corners")) == 6
    train = RegistrationDataset(ds, "train", initial="corners")
    drawn = set()
    for epoch in range(40):
        train.set_epoch(epoch)
        drawn.add(train.draw_label(1))
    assert drawn == {0, 2}


# ------------------------------------------------------------------------------------------------ bad input
def test_unmatched_names_are_listed(tmp_path):
    root = _tiny_folder(tmp_path / "d", ids=("a", "b"))
    (root / "fixed_images" / "b.nii.gz").rename(root / "fixed_images" / "c.nii.gz")
    with pytest.raises(LeancnnError, match=r"b missing from fixed_images/.*c missing from moving_images/"):
        PairedNifti(root)


def test_mismatched_label_count_names_the_pair(tmp_path):
    root = _tiny_folder(tmp_path / "d", ids=("a", "b"), labels=(2, 2))
    _save(root / "fixed_labels" / "b.nii.gz", np.zeros((5, 6, 4, 3), np.float32))
    with pytest.raises(LeancnnError, match=r"pair 'b': the moving label has 2 labels but the fixed label has 3"):
        PairedNifti(root)
    assert PairedNifti(root, split_ids=["a"]).num_labels("a") == 2


def test_2d_image_names_the_file(tmp_path):
    root = _tiny_folder(tmp_path / "d")
    _save(root / "moving_images" / "b.nii.gz", np.zeros((6, 7), np.uint8))
    with pytest.raises(LeancnnError, match=r"image file '.*moving_images/b.nii.gz' must be 3-D, got shape \(6, 7\)"):
        PairedNifti(root)


def test_nan_voxels_name_the_file_or_become_zero(tmp_path):
    root = _tiny_folder(tmp_path / "d")
    img = np.ones((5, 6, 4), np.float32)
    img[2, 2, 2] = np.nan
    img[0, 0, 0] = np.inf
    _save(root / "fixed_images" / "a.nii.gz", img)
    ds = PairedNifti(root)  # headers are fine; the voxels are checked when read
    with pytest.raises(LeancnnError, match=r"fixed_images/a.nii.gz' has 2 NaN/inf voxels"):
        ds["a"]
    fixed = PairedNifti(root, nan_policy="zero", normalise="none")["a"].fixed_image
    assert fixed[2, 2, 2] == 0 and fixed[0, 0, 0] == 0 and fixed.sum() == 5 * 6 * 4 - 2


def test_unreadable_and_truncated_files_name_the_file(tmp_path):
    root = _tiny_folder(tmp_path / "d")
    (root / "moving_labels" / "a.nii.gz").write_bytes(b"this is not a nifti file")
    with pytest.raises(LeancnnError, match=r"cannot read NIfTI file '.*moving_labels/a.nii.gz'"):
        PairedNifti(root)
    root = _tiny_folder(tmp_path / "e")
    path = root / "moving_images" / "b.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) - 60]))  # the header is intact, the voxels cut short
    ds = PairedNifti(root)
    ds["a"]
    with pytest.raises(LeancnnError, match=r"moving_images/b.nii.gz"):
        ds["b"]


def test_other_folder_problems(tmp_path):
    with pytest.raises(LeancnnError, match="does not exist"):
        PairedNifti(tmp_path / "nowhere")
    root = _tiny_folder(tmp_path / "d")
    shutil.rmtree(root / "fixed_labels")
    with pytest.raises(LeancnnError, match="has moving_labels/ but no fixed_labels/"):
        PairedNifti(root)
    assert not PairedNifti(root, labels=False).has_labels
    root = _tiny_folder(tmp_path / "e")
    lab = np.zeros((5, 6, 4), np.float32)
    lab[1, 1, 1] = 3  # an integer segmentation map, not masks
    _save(root / "fixed_labels" / "a.nii.gz", np.stack([lab, lab], -1))
    with pytest.raises(LeancnnError, match=r"fixed_labels/a.nii.gz' has values in \[0, 3\]"):
        PairedNifti(root)["a"]
    _save(root / "fixed_labels" / "b.nii.gz", np.zeros((5, 6, 5, 2), np.float32))
    with pytest.raises(LeancnnError, match=r"fixed_labels/b.nii.gz' has spatial shape \(5, 6, 5\)"):
        PairedNifti(root)
    with pytest.raises(LeancnnError, match="unknown normalisation"):
        PairedNifti(root, normalise="max")


# ------------------------------------------------------------------------------------------------ misc
def test_three_d_label_file_is_one_label(tmp_path):
    root = _tiny_folder(tmp_path / "d", ids=("a",))
    one = np.zeros((6, 7, 5), np.float32)
    one[2, 2, 2] = 1
    _save(root / "moving_labels" / "a.nii.gz", one)
    _save(root / "fixed_labels" / "a.nii.gz", one[:5, :6, :4])
    pair = PairedNifti(root)["a"]
    assert pair.moving_label.shape == (1, 6, 7, 5) and pair.moving_label[0, 2, 2, 2] == 1


def test_normalise_image_numbers():
    x = np.array([2.0, 4.0, 6.0, 10.0])
    assert np.allclose(normalise_image(x, "minmax"), [0, 0.25, 0.5, 1])
    assert np.allclose(normalise_image(x, "zscore"), (x - 5.5) / np.sqrt(8.75))
    assert np.array_equal(normalise_image(np.full(3, 7.0), "minmax"), np.zeros(3))
    assert normalise_image(x.astype(np.uint8), "none").dtype == np.float32


def test_kfold_ids_partition():
    ids = [f"obs{i:03d}" for i in range(23)]
    folds = kfold_ids(ids, 5, seed=0)
    assert len(folds) == 5 and sorted(len(t) for _, t in folds) == [4, 4, 5, 5, 5]
    tests = [i for _, t in folds for i in t]
    assert sorted(tests) == ids
    for train, test in folds:
        assert sorted(train + test) == ids and not set(train) & set(test)
        assert test == sorted(test)  # input order kept
    assert kfold_ids(ids, 5, seed=0) == folds and kfold_ids(ids, 5, seed=1) != folds
    groups = [i // 3 for i in range(23)]  # 8 "patients"
    for train, test in kfold_ids(ids, 4, seed=0, groups=groups):
        assert not {groups[ids.index(i)] for i in train} & {groups[ids.index(i)] for i in test}
        assert 5 <= len(test) <= 6
    with pytest.raises(LeancnnError, match="k must be"):
        kfold_ids(ids, 1)
    with pytest.raises(LeancnnError, match="repeated"):
        kfold_ids(["a", "a", "b"], 2)
