"""Shared test helpers. The digit data cache stays at its default location (building it takes ~8 s once)."""

import pytest


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
