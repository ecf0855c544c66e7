"""The blended-pruning-criteria experiment of docs/results.md (issue 12, part 6), and the search's wall time.

For ResNet-56 and MobileNetV3-Small trained on the four digit domains (3 seeds each), pruned to 50% of the MACs
with the same uniform channel ratio in every group:

* every single criterion (l1, l2, fpgm, bn, taylor, act_mean, apoz, entropy, hrank) and random;
* the blend of the cluster representatives with equal weights ("blend, equal");
* the blend searched by the evolutionary algorithm on the validation split ("blend, EA");

each judged on the test split after BatchNorm recalibration without fine-tuning, and after a short fine-tuning
(the one training engine). The criteria's rank correlations (Spearman, per layer) are averaged over seeds and
clustered. Runs are cached under ``$LEANCNN_CACHE/bench/pruning``; an interrupted run resumes.

    python benchmarks/pruning_criteria.py [--seeds 0 1 2] [--models resnet56 mobilenetv3_small] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import bench_dir, write_section  # noqa: E402

from leancnn.config import ExperimentConfig, from_dict, to_dict  # noqa: E402
from leancnn.prune import compute_scores, prune_with_scores, ratio_for_target  # noqa: E402
from leancnn.prune.cluster import cluster_criteria, correlations, plot_correlations  # noqa: E402
from leancnn.prune.search import BlendSpace, evolve  # noqa: E402
from leancnn.report import fmt_mean_std, format_table  # noqa: E402
from leancnn.tasks.classify import train_cached  # noqa: E402
from leancnn.tasks.digits import build_datasets, test_model  # noqa: E402
from leancnn.tasks.prune import (  # noqa: E402
    INPUT,
    PruneFitness,
    accuracy,
    fixed_batches,
    load_source,
    recalibrate_bn,
)
from leancnn.train import save_checkpoint  # noqa: E402

CRITERIA = ["l1", "l2", "fpgm", "bn", "taylor", "act_mean", "apoz", "entropy", "hrank", "random"]
DOMAINS = ["mnist", "mnistm", "syn", "uci"]


def base_config(model: str, seed: int, epochs: int, limit: int) -> ExperimentConfig:
    return from_dict(ExperimentConfig, {
        "name": f"prune-base-{model}-s{seed}", "model": {"name": model},
        "data": {"domains": DOMAINS, "batch_size": 128, "limit_train": limit},
        # lr 0.1 with half an epoch of warm-up diverged for ResNet-56 here (10% after 3 epochs): lr 0.05, one
        # epoch of warm-up and gradient clipping
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 1.0},
        "train": {"epochs": epochs, "seed": seed, "grad_clip": 1.0}})


def finetune_cfg(base: ExperimentConfig, ckpt: Path, plan: dict, epochs: int, limit: int, tag: str):
    raw = to_dict(base)
    raw["name"] = f"{base.name}-{tag}-ft"
    raw["model"]["pruned"] = {g: [int(i) for i in idx] for g, idx in plan.items()}
    raw["model"]["init"] = str(ckpt)
    raw["data"]["limit_train"] = limit
    raw["train"]["epochs"] = epochs
    raw["optim"]["lr"] = 0.01
    raw["schedule"]["warmup_epochs"] = 0
    return from_dict(ExperimentConfig, raw)


def mean_acc(results: dict) -> float:
    return results["mean"]["acc"] if "mean" in results else next(iter(results.values()))["acc"]


def run_seed(model_name: str, seed: int, args, root: Path) -> dict:
    done = root / f"{model_name}-s{seed}.json"
    if done.is_file():
        return json.loads(done.read_text())
    base = base_config(model_name, seed, args.epochs, args.limit_train)
    summary = train_cached(base, root / f"{model_name}-s{seed}" / "base")
    cfg, model, _ = load_source(summary["checkpoint"])
    torch.manual_seed(seed)
    train_ds, val_ds, tests = build_datasets(cfg.data, label_seed=seed)
    example = torch.zeros(1, *INPUT)
    calib = fixed_batches(train_ds, 4 * 64, 64, seed)
    bn = fixed_batches(train_ds, args.bn_batches * 128, 128, seed + 1)
    val = fixed_batches(val_ds, args.val_images, 256, seed + 2)
    t = time.perf_counter()
    with torch.enable_grad():
        table = compute_scores(model, example, CRITERIA, calib, max_batches=4)
    score_s = time.perf_counter() - t
    with torch.enable_grad():
        ratio, achieved = ratio_for_target(model, example, 0.5, INPUT)
    clustering = cluster_criteria(dict(table), threshold=0.9, method="spearman")
    corr = correlations(dict(table), method="spearman")
    candidates = [c for c in clustering.candidates(1) if c != "random"]
    if seed == args.seeds[0] and not args.no_docs:
        plot_correlations(clustering, Path(__file__).resolve().parents[1] / "docs" / "img" /
                          f"pruning_correlation_{model_name}.png")
    space = BlendSpace(candidates, buckets=1, normalise="rank")
    fitness = PruneFitness(model, example, table, space, ratio, bn, val)
    t = time.perf_counter()
    init = space.seed_population()  # every candidate alone and the equal blend
    res = evolve(fitness, space.n_params, population=max(args.population, len(init)), generations=args.generations,
                 seed=seed, init=init, progress=False, blocks=space.blocks)
    ea_s = time.perf_counter() - t
    arms = {c: table.of(c) for c in CRITERIA}
    equal = space.criterion(np.full(space.n_params, 1.0 / len(candidates)), "equal")
    arms["blend, equal"] = equal.blend(table, order=list(table))
    best = space.criterion(np.asarray(res.best_genome), "ea")
    arms["blend, EA"] = best.blend(table, order=list(table))
    before = mean_acc(test_model(model, tests, cfg, torch.device("cpu")))
    out = {"model": model_name, "seed": seed, "base_test": before, "ratio": ratio, "macs_kept": achieved,
           "population": max(args.population, len(init)),
           "score_seconds": score_s, "ea_seconds": ea_s, "ea_evaluations": res.evaluations,
           "candidates": candidates, "ea_weights": {c: float(w) for c, w in zip(best.criteria,
                                                                                 np.asarray(best.weights)[0])},
           "corr_mean": corr.mean.tolist(), "corr_criteria": corr.criteria, "clusters": clustering.clusters,
           "arms": {}}
    for arm, scores in arms.items():
        with torch.enable_grad():
            pruned, plan = prune_with_scores(model, example, scores, ratio)
        recalibrate_bn(pruned, bn)
        val_acc = accuracy(pruned, val)
        test_noft = mean_acc(test_model(pruned, tests, cfg, torch.device("cpu")))
        tag = arm.replace(", ", "-").replace(" ", "")
        ckpt = root / f"{model_name}-s{seed}" / f"{tag}.pt"
        save_checkpoint(ckpt, {"model": pruned.state_dict(), "config": to_dict(cfg), "epoch": 0})
        ft = train_cached(finetune_cfg(cfg, ckpt, plan, args.ft_epochs, args.ft_limit, tag),
                          root / f"{model_name}-s{seed}" / f"{tag}-ft")
        out["arms"][arm] = {"val_recal": val_acc, "test_noft": test_noft, "test_ft": mean_acc(ft["test"])}
        print(f"{model_name} s{seed} {arm}: val {100 * val_acc:.1f} test {100 * test_noft:.1f} -> "
              f"ft {100 * out['arms'][arm]['test_ft']:.1f}", flush=True)
    done.write_text(json.dumps(out))
    return out


def ensure_plot(model_name: str, seed: int, root: Path) -> None:
    """The correlation heatmap of ``model_name``'s first seed in docs/img (recomputed from its cached run when a
    run made with --no-docs lacks it)."""
    path = Path(__file__).resolve().parents[1] / "docs" / "img" / f"pruning_correlation_{model_name}.png"
    if path.is_file():
        return
    run = root / f"{model_name}-s{seed}" / "base"
    cfg, model, _ = load_source(run)
    train_ds, _, _ = build_datasets(cfg.data, label_seed=seed)
    with torch.enable_grad():
        table = compute_scores(model, torch.zeros(1, *INPUT), CRITERIA, fixed_batches(train_ds, 4 * 64, 64, seed),
                               max_batches=4)
    plot_correlations(cluster_criteria(dict(table), threshold=0.9, method="spearman"), path)


def tables(results: list[dict], args) -> str:
    parts = []
    for model_name in args.models:
        rs = [r for r in results if r["model"] == model_name]
        if not rs:
            continue
        arms = list(rs[0]["arms"])
        rows = []
        for arm in arms:
            v = [r["arms"][arm] for r in rs]
            rows.append([arm, fmt_mean_std([x["val_recal"] for x in v]), fmt_mean_std([x["test_noft"] for x in v]),
                         fmt_mean_std([x["test_ft"] for x in v])])
        rows.sort(key=lambda r: 0 if r[0].startswith("blend") else 1)
        base = fmt_mean_std([r["base_test"] for r in rs])
        ea = np.mean([r["ea_seconds"] for r in rs])
        ev = np.mean([r["ea_evaluations"] for r in rs])
        weights = {}
        for r in rs:
            for c, w in r["ea_weights"].items():
                weights.setdefault(c, []).append(w)
        crit = rs[0]["corr_criteria"]
        corr = np.mean([np.asarray(r["corr_mean"]) for r in rs], axis=0)
        ctab = format_table([[c, *[f"{corr[i, j]:.2f}" for j in range(len(crit))]] for i, c in enumerate(crit)],
                            ["Spearman ρ", *crit], markdown=True)
        clusters = "; ".join(" / ".join("{" + ", ".join(c) + "}" for c in r["clusters"]) for r in rs[:1])
        parts.append(
            f"### {model_name}\n\nUnpruned test accuracy {base} (mean over the four test domains); pruned to "
            f"{np.mean([r['macs_kept'] for r in rs]):.3f} of the MACs (uniform channel ratio "
            f"{np.mean([r['ratio'] for r in rs]):.3f} per group). Accuracy in %, mean ± std over seeds "
            f"{', '.join(str(r['seed']) for r in rs)}; *val*: the validation split (what the search sees), *test*: "
            f"the four test splits' mean; fine-tuned {args.ft_epochs} epoch(s) on {args.ft_limit} training images at "
            "lr 0.01.\n\n"
            + format_table(rows, ["criterion", "val, BN recalibrated, no fine-tuning",
                                  "test, no fine-tuning", "test, fine-tuned"], markdown=True)
            + f"\n\nEA: population {rs[0]['population']}, {args.generations} generations, "
            f"{ev:.0f} distinct evaluations, {ea:.0f} s per search on average (1 process; scoring all criteria "
            f"{np.mean([r['score_seconds'] for r in rs]):.1f} s). Blending candidates (cluster representatives, "
            f"random excluded): {', '.join(rs[0]['candidates'])}; EA weights (mean over seeds): "
            + ", ".join(f"{c} {np.mean(w):.2f}" for c, w in weights.items())
            + f".\n\nCriteria clusters at ρ ≥ 0.9 (network mean, seed {rs[0]['seed']}): {clusters}. Mean Spearman ρ "
            "between criteria (per layer, averaged over layers and seeds):\n\n" + ctab
            + f"\n\n![correlations](img/pruning_correlation_{model_name}.png)\n")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet56", "mobilenetv3_small"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--limit-train", type=int, default=8000)
    ap.add_argument("--ft-epochs", type=int, default=1)
    ap.add_argument("--ft-limit", type=int, default=4000)
    ap.add_argument("--population", type=int, default=10)
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--val-images", type=int, default=1000)
    ap.add_argument("--bn-batches", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, tiny budgets, no docs")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.limit_train, args.ft_limit = args.seeds[:1], 1, 1000, 500
        args.population, args.generations, args.val_images, args.no_docs = 4, 2, 200, True
    torch.set_num_threads(2)
    root = bench_dir("pruning-quick" if args.quick else "pruning")
    results = [run_seed(m, s, args, root) for m in args.models for s in args.seeds]
    if not args.no_docs:
        for m in args.models:
            ensure_plot(m, args.seeds[0], root)
    body = (" and ".join(args.models) + " trained on the four digit domains (" + str(args.limit_train)
            + f" training images, {args.epochs} epochs, SGD lr 0.05 with one epoch of warm-up), each pruned to 50% of its MACs with the same uniform "
            "channel ratio in every group (so every criterion removes the same number of channels per layer and "
            "only the choice of channels differs), by each criterion, by the blend of the cluster "
            "representatives with equal weights, and by the blend the evolutionary search found on the "
            "validation split (fitness: validation accuracy after BatchNorm recalibration on "
            f"{args.bn_batches} training batches, no fine-tuning).\n\n" + tables(results, args))
    print(body)
    if not args.no_docs:
        write_section("results.md", "pruning-criteria", "Blended pruning criteria", body)


if __name__ == "__main__":
    main()
