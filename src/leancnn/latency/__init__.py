"""Latency under CPU contention (issue 11; Yang, Lu, Ren 2020): contention generators, the measurement runner,
statistics and the report. Only the statistics exist so far: :mod:`leancnn.latency.stats` turns raw
per-inference latencies into variability summaries with bootstrap CIs, Holm-corrected pairwise "A faster than B"
tests, rank reversals between conditions, Kendall τ between rankings and a contention-aware recommendation."""

from .stats import (
    VERDICTS,
    auto_n_boot,
    compare,
    holm,
    kendall_tau,
    latency_cells,
    min_samples,
    pairwise,
    quantile_label,
    rank_reversals,
    rankings,
    recommend,
    summarize,
    summarize_table,
)

__all__ = [
    "VERDICTS", "auto_n_boot", "compare", "holm", "kendall_tau", "latency_cells", "min_samples", "pairwise",
    "quantile_label", "rank_reversals", "rankings", "recommend", "summarize", "summarize_table",
]
