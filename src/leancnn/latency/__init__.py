"""Latency under CPU contention (issue 11; Yang, Lu, Ren 2020), the library: contention generators, the
measurement harness, statistics and the report (``leancnn latency run`` itself is :mod:`leancnn.tasks.latency`).

:mod:`~leancnn.latency.loads` runs co-running CPU hogs (:class:`~leancnn.loadspec.LoadSpec` says what one level is),
their processes run :mod:`~leancnn.latency.worker`; :mod:`~leancnn.latency.quota` puts a process under a cgroup CPU
quota; :mod:`~leancnn.latency.cleanup` ends every load and quota on exit, exception or signal;
:mod:`~leancnn.latency.system` snapshots the machine's confounders; :mod:`~leancnn.latency.measure` measures models
in the conditions of a grid and :mod:`~leancnn.latency.report` writes a run up. This package re-exports the statistics:
:mod:`leancnn.latency.stats` turns raw per-inference latencies into variability summaries with bootstrap CIs,
Holm-corrected pairwise "A faster than B" tests, rank reversals between conditions, which orders hold or reverse
between matched conditions (e.g. two machines), Kendall τ between rankings and a contention-aware recommendation."""

from .stats import (
    VERDICTS,
    auto_n_boot,
    compare,
    holm,
    kendall_tau,
    latency_cells,
    min_samples,
    order_agreement,
    pairwise,
    quantile_label,
    rank_reversals,
    rankings,
    recommend,
    summarize,
    summarize_table,
)

__all__ = [
    "VERDICTS", "auto_n_boot", "compare", "holm", "kendall_tau", "latency_cells", "min_samples", "order_agreement",
    "pairwise", "quantile_label", "rank_reversals", "rankings", "recommend", "summarize", "summarize_table",
]
