"""``leancnn prune``: structural pruning of a trained classifier with a single or blended criterion (issue 12).

The pipeline (docs/pruning.md; schema: :class:`PruneConfig`, below), on a training run or checkpoint of the digit
classifiers:

1. the run's model and data (its config); the input checkpoint is only read;
2. the **score table**: every requested criterion scores every prunable group of the unpruned model once
   (data-driven criteria on ``calib_batches`` training batches) -- computed once, reused by every candidate;
3. with several criteria, **criteria clustering**: per layer and over the network, by rank correlation; one
   blending candidate (or ``candidates_per_cluster``) per cluster; a heatmap PNG;
4. the **blend**: equal weights over the candidates (``search.method: none``) or an **evolutionary search**
   of the calibration factors whose fitness is the validation accuracy of the pruned network after BatchNorm
   recalibration, without fine-tuning, at the fixed MAC target (the uniform pruning ratio is computed once);
   the validation split is never the test split;
5. the pruned model is written as an ordinary checkpoint (``pruned.pt``: its config records the pruned widths
   in ``model.pruned``, so ``leancnn evaluate`` and later runs rebuild the architecture) with its test
   accuracy before / after, MACs, parameters, and optionally fine-tuned with the one training engine
   (``finetune/``, a normal run: ``--resume`` works).

Everything is written into a temporary sibling of ``out`` (``.<out>.<random>.partial``) and moved into ``out`` at
the end: a failed or interrupted prune leaves no partial output (fine-tuning, a run of its own, comes after).
``out`` may not be, lie inside or hold the source run, its checkpoint or the config (``leancnn.outputs``); with
``force`` only the files a prune wrote there (:data:`PRUNE_FILES`, the manifest) are replaced, other files stay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Literal

import numpy as np
import torch
import torch.nn as nn

from .. import report
from ..config import SEED_MAX, ExperimentConfig, dump_config, rule, to_dict
from ..errors import ConfigError, LeancnnError
from ..io import atomic_write_json
from ..nn.counting import count_macs, count_params
from ..outputs import check_output, check_output_dir, record_outputs, staged_dir
from .digits import build_datasets, test_model
from .pruning import INPUT, accuracy, fixed_batches, load_source, recalibrate_bn, save_pruned
from .pruning import finetune as _finetune
from .pruning import finetune_config as _finetune_config

PRUNE_FILES = ("scores.npz", "criteria_correlation.png", "pruned.pt", "config.yaml", "summary.json")
ANALYSE_FILES = ("criteria_correlation.png", "clustering.json")


# ------------------------------------------------------------------------------------------------ schema


@dataclass
class PruneSearchConfig:
    """The evolutionary search of the blended criterion (docs/pruning.md)."""

    method: Literal["none", "ea"] = "none"  # none: the criteria blended with equal weights (one criterion: itself)
    population: int = rule(12, ge=2)
    generations: int = rule(8, ge=1)
    mutation_sigma: float = rule(0.2, gt=0.0)
    crossover: Literal["blend", "uniform"] = "blend"
    crossover_rate: float = rule(0.9, ge=0.0, le=1.0)
    elitism: int = rule(2, ge=0)
    seed: int = rule(0, ge=0, lt=SEED_MAX)
    workers: int = rule(1, ge=1)  # fitness evaluations in parallel processes (fork)
    buckets: int = rule(1, ge=1)  # 1: one weight vector for the network; n: one per depth bucket
    val_images: int = rule(1000, ge=10)  # validation images per fitness evaluation (the validation split)
    bn_batches: int = rule(10, ge=1)  # training batches that recalibrate BatchNorm before each evaluation
    # the EA runs as a strategy of the search engine (leancnn.search.engine.run_evolve): every evaluation is a trial
    # of an Optuna study, in memory ("") or in this database URL (e.g. sqlite:///blend.db), where a prune with the
    # same settings continues an interrupted search instead of starting again
    storage: str = ""

    def _check(self) -> None:
        if self.elitism >= self.population:
            raise ConfigError(f"config key 'search.elitism' ({self.elitism}) must be smaller than "
                              f"'search.population' ({self.population})")


@dataclass
class PruneConfig:
    """``leancnn prune``: structural pruning of a trained classifier to a MAC target with a single or blended
    criterion, optionally searched, then fine-tuned (docs/pruning.md)."""

    name: str = rule("prune", name=True)
    target_macs: float = rule(0.5, gt=0.0, lt=1.0)  # fraction of the MACs kept
    criteria: list[str] = rule(factory=lambda: ["l1"], min_len=1, unique=True)  # one: that criterion; more: blended
    normalise: Literal["rank", "scale", "zscore"] = "rank"  # how each criterion's scores are put on one scale
    correlation: Literal["spearman", "kendall"] = "spearman"
    cluster_threshold: float = rule(0.9, gt=0.0, le=1.0)  # criteria with rank correlation >= this share a cluster
    linkage: Literal["single", "complete", "average", "weighted"] = "average"
    candidates_per_cluster: int = rule(1, ge=1)  # blending candidates taken from each cluster
    global_pruning: bool = False  # one threshold over all groups instead of the same ratio in each
    round_to: int = rule(0, ge=0)  # keep channel counts multiples of this (0: no rounding)
    calib_batches: int = rule(4, ge=1)  # batches the data-driven criteria see
    search: PruneSearchConfig = field(default_factory=PruneSearchConfig)
    finetune_epochs: int = rule(0, ge=0)  # 0: no fine-tuning
    finetune_lr: float = rule(0.01, gt=0.0)
    finetune_limit_train: int = rule(0, ge=0)  # training images for fine-tuning (0: the source run's setting)
    seed: int = rule(0, ge=0, lt=SEED_MAX)
    # keys of earlier versions read under their new names (one spelling, "normalise", throughout the code)
    RENAMED: ClassVar[dict[str, str]] = {"normalize": "normalise"}


# ------------------------------------------------------------------------------------------------ pieces


class PruneFitness:
    """Validation accuracy of ``model`` pruned with a candidate blend of the score table, after BatchNorm
    recalibration, at a fixed uniform channel ratio (or a global threshold): the EA's fitness. Everything that
    does not change between candidates (scores, ratio, data batches) is computed before."""

    def __init__(self, model, example, table, space, ratio, bn_batches, val_batches, round_to=None,
                 global_target=None):
        self.model, self.example, self.table, self.space = model, example, table, space
        self.ratio, self.bn, self.val, self.round_to = ratio, bn_batches, val_batches, round_to
        self.global_target = global_target

    def prune(self, blended: dict[str, np.ndarray]):
        from ..prune import apply_plan, global_plan, prune_with_scores

        with torch.enable_grad():
            if self.global_target is not None:
                plan, _ = global_plan(self.model, self.example, blended, self.global_target,
                                      round_to=self.round_to)
                return apply_plan(self.model, self.example, plan), plan
            return prune_with_scores(self.model, self.example, blended, self.ratio, round_to=self.round_to)

    def evaluate(self, blended: dict[str, np.ndarray]) -> tuple[float, nn.Module, dict]:
        pruned, plan = self.prune(blended)
        recalibrate_bn(pruned, self.bn)
        return accuracy(pruned, self.val), pruned, plan

    threads: int | None = None  # set in forked search workers (one thread each), else torch's setting

    def __call__(self, genome) -> float:
        if self.threads:
            torch.set_num_threads(self.threads)
        crit = self.space.criterion(np.asarray(genome, dtype=np.float64), "candidate")
        return self.evaluate(crit.blend(self.table, order=list(self.table)))[0]


# ------------------------------------------------------------------------------------------------ the command


def _criterion_name(weights: dict[str, float]) -> str:
    active = {k: v for k, v in weights.items() if v > 1e-9}
    if len(active) == 1:
        return next(iter(active))
    return "blend(" + ", ".join(f"{k} {v:.2f}" for k, v in active.items()) + ")"


def check_prune_output(out: str | Path, source: str | Path, config_file: str | Path | None = None) -> Path:
    """``-o`` of ``prune`` / ``prune analyse``: not the source (run directory or checkpoint), its config file or
    the digit data, nor inside or holding one; not an existing file."""
    from .runs import checkpoint_inputs, data_inputs

    inputs = [*checkpoint_inputs(source, "source"), *data_inputs("digits")]
    if config_file:
        inputs.append(("config file", Path(config_file)))
    return check_output_dir(check_output(out, inputs, "-o"))


def prune_run(source: str | Path, pcfg: PruneConfig, out: str | Path, force: bool = False,
              progress: bool = False, log: Callable[[str], None] = print,
              config_file: str | Path | None = None) -> dict:
    """Prune the classifier of ``source`` as ``pcfg`` says into run directory ``out`` (see module docstring);
    returns the summary (also ``out/summary.json``). ``config_file``: the prune config's file, an input too."""
    from ..prune import check_round_to, compute_scores, get_criterion, prunable_groups, ratio_for_target
    from ..prune.cluster import cluster_criteria, plot_correlations
    from ..prune.search import BlendSpace
    from ..search.engine import SearchSettings, run_evolve

    t0 = time.perf_counter()
    out = check_prune_output(out, source, config_file)
    for c in pcfg.criteria:
        get_criterion(c)  # an unknown name fails now, listing the known ones
    if out.exists() and any(out.iterdir()) and not force:
        raise LeancnnError(f"'{out}' already holds files; add --force to replace the files leancnn wrote there "
                           "(other files are kept), or choose another -o")
    cfg, model, ckpt = load_source(source)
    example = torch.zeros(1, *INPUT)
    with torch.enable_grad():  # a round_to that leaves nothing to prune fails now, before any scoring
        check_round_to(prunable_groups(model, example), pcfg.round_to or None)
    torch.manual_seed(pcfg.seed)
    train_ds, val_ds, tests = build_datasets(cfg.data, label_seed=cfg.train.seed)
    bs = cfg.data.batch_size
    calib = fixed_batches(train_ds, pcfg.calib_batches * bs, bs, pcfg.seed)
    bn_batches = fixed_batches(train_ds, pcfg.search.bn_batches * bs, bs, pcfg.seed + 1)
    val_batches = fixed_batches(val_ds, pcfg.search.val_images, 256, pcfg.seed + 2)
    with staged_dir(out, force=True, known=PRUNE_FILES) as work:  # refused above unless force; none left on failure
        log(f"scoring {len(pcfg.criteria)} criteria on {cfg.model.name} ({ckpt})")
        with torch.enable_grad():
            table = compute_scores(model, example, pcfg.criteria, calib, max_batches=pcfg.calib_batches,
                                   progress=progress)
        np.savez_compressed(work / "scores.npz", **{f"{g}|{c}": v for g, row in table.items() for c, v in row.items()})
        clustering = None
        candidates = list(table.criteria)
        if len(candidates) > 1:
            clustering = cluster_criteria(dict(table), threshold=pcfg.cluster_threshold, linkage=pcfg.linkage,
                                          method=pcfg.correlation)
            plot_correlations(clustering, work / "criteria_correlation.png")
            candidates = clustering.candidates(pcfg.candidates_per_cluster)
            log(clustering.summary().splitlines()[0])
            log(f"blending candidates: {', '.join(candidates)}")
        size = INPUT
        ratio = None
        if not pcfg.global_pruning:
            with torch.enable_grad():
                ratio, achieved = ratio_for_target(model, example, pcfg.target_macs, size,
                                                   round_to=pcfg.round_to or None)
            log(f"uniform channel ratio {ratio:.4f} keeps {achieved:.4f} of the MACs (target {pcfg.target_macs})")
        space = BlendSpace(candidates, buckets=pcfg.search.buckets, normalise=pcfg.normalise)
        fitness = PruneFitness(model, example, table, space, ratio, bn_batches, val_batches,
                               round_to=pcfg.round_to or None,
                               global_target=pcfg.target_macs if pcfg.global_pruning else None)
        search = None
        if pcfg.search.method == "ea" and len(candidates) > 1:
            s = pcfg.search
            init = space.seed_population()  # every candidate alone, and the equal blend
            population = max(s.population, len(init))
            log(f"evolutionary search: population {population}"
                + (f" (raised from {s.population} to hold the {len(init)} seeds)" if population > s.population else "")
                + f", {s.generations} generations, {s.workers} worker(s)")
            fitness.threads = 1 if s.workers > 1 else None  # workers share the cores
            settings = SearchSettings(study_name=f"{pcfg.name}-blend", storage=s.storage or None, join=True,
                                      heartbeat_s=0, attrs={"source": str(ckpt), "prune": {
                                          **to_dict(pcfg), "search": {k: v for k, v in to_dict(s).items()
                                                                      if k not in ("workers", "storage")}}})
            res, _ = run_evolve(fitness, space.n_params, settings, objective="val_acc",
                                population=population, generations=s.generations,
                                mutation_sigma=s.mutation_sigma, crossover=s.crossover, crossover_rate=s.crossover_rate,
                                elitism=s.elitism, seed=s.seed, workers=s.workers, init=init,
                                progress=progress, blocks=space.blocks)
            genome = res.best_genome
            search = {"best_fitness": res.best_fitness, "evaluations": res.evaluations, "seconds": res.wall_time,
                      "history": res.history}
        else:
            genome = np.full(space.n_params, 1.0 / len(candidates))  # equal weights (one criterion: itself)
        criterion = space.criterion(np.asarray(genome, dtype=np.float64), "blended")
        blended = criterion.blend(table, order=list(table))
        with torch.enable_grad():
            pruned, plan = fitness.prune(blended)
        recalibrate_bn(pruned, bn_batches)
        val_acc = accuracy(pruned, val_batches)
        device = torch.device("cpu")
        before = test_model(model, tests, cfg, device)
        after = test_model(pruned, tests, cfg, device)
        macs0, macs1 = count_macs(model, size), count_macs(pruned, size)
        pruned_cfg = save_pruned(work / "pruned.pt", cfg, pruned, plan, ckpt, f"{cfg.name}-pruned")
        (work / "config.yaml").write_text(dump_config(pruned_cfg))
        weights = {c: float(w) for c, w in zip(criterion.criteria, np.asarray(criterion.weights)[0])}
        summary = {
            "source": str(ckpt), "model": cfg.model.name, "criteria": list(table.criteria),
            "candidates": candidates, "criterion": _criterion_name(weights), "weights": weights,
            "blend": criterion.to_dict(), "target_macs": pcfg.target_macs, "channel_ratio": ratio,
            "macs_before": macs0, "macs_after": macs1, "macs_ratio": macs1 / macs0,
            "params_before": count_params(model), "params_after": count_params(pruned),
            "val_acc_recalibrated": val_acc, "test_before": before, "test_after": after,
            "search": search, "clustering": clustering.to_dict() if clustering else None,
            "config": to_dict(pcfg), "seconds": time.perf_counter() - t0,
        }
        atomic_write_json(work / "summary.json", summary)
    summary["run_dir"] = str(out)
    summary["checkpoint"] = str(out / "pruned.pt")
    log(f"pruned: {summary['criterion']}, MACs {macs0 / 1e6:.1f}M -> {macs1 / 1e6:.1f}M "
        f"({100 * macs1 / macs0:.1f}%), params {summary['params_before']:,} -> {summary['params_after']:,}; "
        f"validation accuracy after BN recalibration {100 * val_acc:.2f}%")
    if pcfg.finetune_epochs > 0:
        ft = finetune(out / "pruned.pt", cfg, pcfg, out / "finetune")
        from .runs import RUN_FILES

        record_outputs(out, [f"finetune/{n}" for n in RUN_FILES if (out / "finetune" / n).exists()])
        summary["finetune"] = {"run_dir": ft["run_dir"], "epochs": pcfg.finetune_epochs, "test": ft["test"],
                               "best_val_acc": ft["best_val_acc"], "checkpoint": ft["checkpoint"]}
        atomic_write_json(out / "summary.json", summary)
    return summary


def finetune_config(pruned_ckpt: str | Path, cfg: ExperimentConfig, pcfg: PruneConfig) -> ExperimentConfig:
    """The source run's config, on the pruned architecture, started from the pruned weights, for
    ``finetune_epochs`` at ``finetune_lr`` (cosine, no warm-up)."""
    return _finetune_config(pruned_ckpt, cfg, pcfg.finetune_epochs, pcfg.finetune_lr, pcfg.finetune_limit_train)


def finetune(pruned_ckpt: str | Path, cfg: ExperimentConfig, pcfg: PruneConfig, out: Path) -> dict:
    return _finetune(pruned_ckpt, cfg, pcfg.finetune_epochs, pcfg.finetune_lr, out, pcfg.finetune_limit_train)


def analyse(source: str | Path, criteria: list[str], out: str | Path, pcfg: PruneConfig,
            log: Callable[[str], None] = print, force: bool = False, config_file: str | Path | None = None) -> dict:
    """``leancnn prune analyse``: the criteria's scores, correlations and clusters alone (no pruning), written to
    ``out`` (:data:`ANALYSE_FILES`; earlier ones are replaced only with ``force``)."""
    from ..prune import compute_scores, get_criterion
    from ..prune.cluster import cluster_criteria, plot_correlations

    out = check_prune_output(out, source, config_file)
    held = [f for f in ANALYSE_FILES if (out / f).exists()]
    if held and not force:
        raise LeancnnError(f"'{out}' already holds an analysis ({', '.join(held)}); add --force to replace it, or "
                           "choose another -o")
    for c in criteria:
        get_criterion(c)
    if len(criteria) < 2:
        raise LeancnnError("--criteria: the analysis compares criteria; give at least two")
    cfg, model, ckpt = load_source(source)
    train_ds, _, _ = build_datasets(cfg.data, label_seed=cfg.train.seed)
    calib = fixed_batches(train_ds, pcfg.calib_batches * cfg.data.batch_size, cfg.data.batch_size, pcfg.seed)
    with torch.enable_grad():
        table = compute_scores(model, torch.zeros(1, *INPUT), criteria, calib, max_batches=pcfg.calib_batches)
    out.mkdir(parents=True, exist_ok=True)
    result = cluster_criteria(dict(table), threshold=pcfg.cluster_threshold, linkage=pcfg.linkage,
                              method=pcfg.correlation)
    fig = plot_correlations(result, out / "criteria_correlation.png")
    atomic_write_json(out / "clustering.json", result.to_dict())
    log(result.summary())
    log(f"heatmap written to {fig}")
    return result.to_dict()


def summary_rows(summary: dict) -> list[list]:
    rows = []
    for d, r in summary["test_before"].items():
        a = summary["test_after"][d]
        row = [d, f"{100 * r['acc']:.2f}%", f"{100 * a['acc']:.2f}%"]
        if summary.get("finetune"):
            row.append(f"{100 * summary['finetune']['test'][d]['acc']:.2f}%")
        rows.append(row)
    return rows


def prune_command(source: str, config: str | None, overrides: list[str], out: str | None, force: bool,
                  target_macs: float | None, criteria: list[str] | None, search: str | None,
                  finetune_epochs: int | None) -> int:
    from ..config import load_config
    from ..train.distributed import DistContext
    from ..train.engine import progress_enabled

    extra = []
    if target_macs is not None:
        extra.append(f"target_macs={target_macs}")
    if criteria:
        extra.append("criteria=[" + ",".join(criteria) + "]")
    if search is not None:
        extra.append(f"search.method={search}")
    if finetune_epochs is not None:
        extra.append(f"finetune_epochs={finetune_epochs}")
    pcfg = load_config(config, [*overrides, *extra], cls=PruneConfig)
    out_dir = Path(out) if out else Path("runs") / f"{pcfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = prune_run(source, pcfg, out_dir, force=force, progress=progress_enabled(DistContext()),
                        config_file=config)
    heads = ["test set", "before", "pruned (BN recalibrated)"] + (["fine-tuned"] if summary.get("finetune") else [])
    print(report.format_table(summary_rows(summary), heads))
    print(f"pruned checkpoint: {summary['checkpoint']}" + (f"; fine-tuned run: {summary['finetune']['run_dir']}"
                                                          if summary.get("finetune") else ""))
    return 0


__all__ = ["ANALYSE_FILES", "PRUNE_FILES", "PruneFitness", "accuracy", "analyse", "check_prune_output", "finetune",
           "finetune_config", "fixed_batches", "load_source", "prune_command", "prune_run", "recalibrate_bn",
           "summary_rows"]
