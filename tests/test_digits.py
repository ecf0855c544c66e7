"""The four digit domains, their cache, splits, dataset wrapper and sample grid."""

import numpy as np
import pytest
import torch

from leancnn.data import DOMAINS, DigitsDataset, describe, digits, load_domain, sample_grid, split_indices

SIZES = {"mnist": 5000, "mnistm": 5000, "syn": 5000, "uci": 1797}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache directory (also $LEANCNN_CACHE) with all four domains built once."""
    path = tmp_path_factory.mktemp("leancnn-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEANCNN_CACHE", str(path))
        for name in DOMAINS:
            load_domain(name)
        yield path


@pytest.mark.parametrize("name", DOMAINS)
def test_domain_shapes_and_labels(cache, name):
    images, labels = load_domain(name)
    assert images.shape == (SIZES[name], 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (SIZES[name],) and labels.dtype == np.int64
    assert set(np.unique(labels)) == set(range(10))
    assert images.std() > 20  # not blank
    info = describe(name)
    assert info["num_images"] == SIZES[name] and info["image_shape"] == (32, 32, 3)
    assert sum(info["class_counts"]) == SIZES[name] and min(info["class_counts"]) > 150


def test_cache_file_is_reused(cache, monkeypatch):
    path = cache / "digits" / "syn-v1.npz"
    assert path.is_file()
    first = load_domain("syn")

    def fail():
        raise AssertionError("rebuilt instead of read from the cache")

    monkeypatch.setitem(digits._BUILDERS, "syn", fail)
    second = load_domain("syn", cache=cache)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not list(path.parent.glob("*.tmp"))  # atomic write left no temp file


def test_damaged_cache_file_is_rebuilt(tmp_path, cache):
    path = tmp_path / "digits" / "uci-v1.npz"
    path.parent.mkdir()
    path.write_bytes(b"not a zip file")
    images, labels = load_domain("uci", cache=tmp_path)
    assert np.array_equal(images, load_domain("uci")[0])
    assert np.load(path)["labels"].shape == labels.shape


def test_syn_is_deterministic():
    a, b = digits._build_syn(per_class=3), digits._build_syn(per_class=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.bincount(a[1]).tolist() == [3] * 10


def test_mnistm_blends_mnist(cache):
    mnist, mnist_labels = load_domain("mnist")
    mnistm, mnistm_labels = load_domain("mnistm")
    assert np.array_equal(mnist_labels, mnistm_labels)
    assert not np.array_equal(mnist, mnistm)
    assert (mnistm[..., 0] != mnistm[..., 1]).mean() > 0.5  # coloured, not grey
    assert (mnist[..., 0] == mnist[..., 2]).all()  # grey replicated to RGB


def test_unknown_domain_message():
    with pytest.raises(ValueError, match=r"^unknown dataset 'xyz'; choose from: mnist, mnistm, syn, uci$"):
        load_domain("xyz")


def test_split_indices_deterministic_disjoint_stratified(cache):
    _, labels = load_domain("uci")
    a, b, c = split_indices(labels, 0), split_indices(labels, 0), split_indices(labels, 1)
    assert set(a) == {"train", "val", "test"}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train"], c["train"])
    joined = np.concatenate([a["train"], a["val"], a["test"]])
    assert len(joined) == len(labels) and np.array_equal(np.sort(joined), np.arange(len(labels)))
    for k, frac in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
        counts = np.bincount(labels[a[k]], minlength=10)
        assert np.allclose(counts, frac * np.bincount(labels), atol=1)
    with pytest.raises(ValueError):
        split_indices(labels, 0, fractions=(0.5, 0.2, 0.2))


def test_dataset_combines_domains(cache):
    ds = DigitsDataset(["uci", "mnist"], split="val", seed=3)
    n_uci = len(split_indices(load_domain("uci")[1], 3)["val"])
    assert ds.domains == ("uci", "mnist") and ds.num_classes == 10
    assert len(ds) == n_uci + 750 == len(ds.targets) == len(ds.domain_labels)
    assert ds.domain_labels.dtype == torch.long and ds.targets.dtype == torch.long
    assert (ds.domain_labels[:n_uci] == 0).all() and (ds.domain_labels[n_uci:] == 1).all()
    x, y, d = ds[n_uci]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert (y, d) == (int(ds.targets[n_uci]), 1)
    assert float(x.min()) >= -1 and float(x.max()) <= 1 and float(x.min()) == -1
    expected = ds.images[n_uci].float() / 127.5 - 1
    assert torch.allclose(x, expected, atol=1e-6)
    assert len(DigitsDataset("uci", split="all")) == 1797


def test_dataset_augment_is_reproducible(cache):
    ds = DigitsDataset("syn", split="test", augment=True)
    torch.manual_seed(0)
    first = torch.stack([ds[i][0] for i in range(20)])
    torch.manual_seed(0)
    second = torch.stack([ds[i][0] for i in range(20)])
    assert torch.equal(first, second) and first.shape == (20, 3, 32, 32)
    assert float(first.min()) >= -1 and float(first.max()) <= 1
    plain = DigitsDataset("syn", split="test")
    assert not torch.equal(first, torch.stack([plain[i][0] for i in range(20)]))


def test_dataset_rejects_bad_split(cache):
    with pytest.raises(ValueError, match="train, val, test, all"):
        DigitsDataset("mnist", split="training")


def test_sample_grid_writes_png(cache, tmp_path):
    path = sample_grid(DOMAINS, tmp_path / "grid.png")
    assert path == tmp_path / "grid.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(path) as im:
        assert im.width > 500 and im.height > 200
