"""Datasets: the Digits-DG stand-in (four digit domains built offline)."""

from .digits import (
    DOMAINS,
    MEAN,
    STD,
    DigitsDataset,
    cache_dir,
    describe,
    load_domain,
    sample_grid,
    split_indices,
)

__all__ = [
    "DOMAINS",
    "MEAN",
    "STD",
    "DigitsDataset",
    "cache_dir",
    "describe",
    "load_domain",
    "sample_grid",
    "split_indices",
]
