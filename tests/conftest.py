"""Shared test helpers. The digit data cache stays at its default location (building it takes ~8 s once)."""

import os

import pytest
import torch

# Every command under test (in this process and the ones it starts) runs at one fixed thread, as the fixture below
# does: bit-exact comparisons need a fixed count, and tiny workloads are fastest at one. tests/test_threads.py
# takes this away to test threads=auto itself.
os.environ["LEANCNN_THREADS"] = "1"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on the 2-core test machine, shared with other processes, torch's spinning worker
    threads make small forward passes up to 10x slower than a single thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """Config overrides for a training run of a few seconds on the CPU (copy before changing it)."""
    return [
        "model.name=digits_cnn",
        "data.limit_train=256",
        "data.limit_eval=128",
        "data.batch_size=64",
        "train.epochs=1",
    ]


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """A fresh, empty cache directory as $LEANCNN_CACHE for one test module."""
    path = tmp_path_factory.mktemp("leancnn-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEANCNN_CACHE", str(path))
        yield path
