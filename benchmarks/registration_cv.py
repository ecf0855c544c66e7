"""The MR-US registration experiment of docs/results.md (issue 13, part 7): k-fold cross-validation by pair.

On the 80 prostate MR-TRUS pairs of ``../shared/data/mrus`` (or ``--data``), fold i of a 4-fold split by pair is
the test set of a network trained on the other 60 pairs (``data.fold=i``, no validation pairs: the last
checkpoint is evaluated, nothing is selected on the test pairs). Compared, on every pair once:

* identity: no registration, the moving volume centred on the fixed one in mm (``data.initial=centre``), and
  label-reg's corner-to-corner resize;
* affine (``model.kind=global``), local and composite networks, at the CPU widths of the default config;
* the accuracy/size trade-off: local networks of a quarter and four times the parameters (``--width-folds``
  folds only, to fit a CPU run).

Gland Dice (binary at 0.5) and landmark TRE (centroid distance, mm) are pooled over the test folds: medians
and quartiles, and the mean ± std over folds of the per-fold medians. Runs are cached under
``$LEANCNN_CACHE/bench/registration_cv`` (an interrupted run resumes); ``--jobs`` trainings run side by side, one
thread each.

    python benchmarks/registration_cv.py [--epochs 70] [--jobs 2] [--folds 4] [--width-folds 1] [--long-epochs 210] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import ROOT, bench_dir, write_section  # noqa: E402

from leancnn.config import load_config  # noqa: E402
from leancnn.report import _pyplot, format_table, save_figure  # noqa: E402
from leancnn.tasks.register import (  # noqa: E402
    RegisterConfig,
    quartiles,
    summarise_rows,
)

DATA = ROOT.parent / "shared" / "data" / "mrus"
MAIN = {  # name -> overrides
    "affine": ["model.kind=global"],
    "local": ["model.kind=local"],
    "composite": ["model.kind=composite"],
}
WIDTHS = {
    "local, ¼ width": ["model.kind=local", "model.channels=[4,8,16,32]"],
    "local, 2× width": ["model.kind=local", "model.channels=[16,32,64,128]"],
}  # and with --long-epochs N: the local network trained N epochs on --long-folds folds


# What limits accuracy (issue 21): each variant against "default" on the same folds (--study-folds), trained
# --study-epochs epochs, then scored on its test folds with the same code; the test-time variants (flips,
# refinement) reuse the "all labels" networks.
STUDY = {
    "default": [],
    "all labels": ["data.labels=all"],
    "all, lr 1e-3": ["data.labels=all", "optim.lr=0.001"],
    "all, no augmentation": ["data.labels=all", "data.augment_scale=0"],
    "all, cross-entropy": ["data.labels=all", "loss.label=cross_entropy"],
    "all, + boundary term": ["data.labels=all", "loss.boundary_weight=1"],
    "all, composite (sum)": ["data.labels=all", "model.kind=composite"],
    "all, composite (warp)": ["data.labels=all", "model.kind=composite", "model.compose=warp"],
    "all, grid 0.75": ["data.labels=all", "data.scale=0.75"],  # 3.7x the step time: --study-folds capped at 1
    # training length beyond the recipe's 200 epochs (the recipe's settings; fold 0 only: 35 min at one thread)
    "recipe, 500 epochs": ["data.labels=all", "train.epochs=500"],
    # no augmentation led at 80 epochs (not significantly): at the recipe's length, on all four folds
    "recipe, no augmentation": ["data.labels=all", "train.epochs=200", "data.augment_scale=0"],
}


# The reference every variant changes one thing of: the defaults before issue 21 (label-reg's one label per pair
# per step, a local network at data.scale 0.5, AdamW 3e-4 cosine, multi-scale Dice + 0.5 bending), spelled out so
# that the shipped defaults can move on without changing what these runs are.
BASE = ["data.labels=one", "loss.gland_weight=1", "data.scale=0.5", "data.augment_scale=0.1", "model.kind=local",
        "model.channels=[8,16,32,64]", "loss.label=dice", "loss.sigmas=[0,1,2,4,8,16]", "loss.regulariser=bending",
        "loss.weight=0.5", "loss.boundary_weight=0", "optim.lr=0.0003", "schedule.name=cosine", "schedule.warmup_epochs=1",
        "infer.tta=none", "infer.refine_steps=0"]
# variants trained on another number of folds than --study-folds: too slow for every fold on a 2-core CPU (1), or
# compared with the shipped recipe on all its folds (4)
STUDY_FOLDS = {"all, grid 0.75": 1, "recipe, 500 epochs": 1, "recipe, no augmentation": 4}
SHIPPED = ROOT / "configs" / "register_mrus.yaml"
RECIPE = "shipped recipe"  # configs/register_mrus.yaml as it is, on --recipe-folds folds


def config(name: str, overrides: list[str], fold: int, args, prefix: str = "reg") -> RegisterConfig:
    common = [f"data.root={args.data}", f"data.folds={args.folds}", f"data.fold={fold}", "data.val_pairs=0",
              "train.threads=1", f"name={prefix}-{slug(name)}-f{fold}"]
    if name == RECIPE:
        return load_config(SHIPPED, [*common, *overrides], cls=RegisterConfig)
    return load_config(None, [*BASE, f"train.epochs={args.epochs}", *common, *overrides], cls=RegisterConfig)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.replace("¼", "quarter").replace("×", "x")).strip("-")


def run_one(job: tuple) -> dict:
    """Train (or reuse) one fold's run; returns its summary (in a worker process)."""
    import torch

    from leancnn.tasks.register import data_identity, split_ids, train_register
    from leancnn.tasks.runs import fingerprint, train_cached_with

    name, overrides, fold, args, *rest = job
    torch.set_num_threads(1)
    cfg = config(name, overrides, fold, args, *rest)
    splits = split_ids(cfg)
    fp = fingerprint(cfg, data_identity(cfg.data.root, splits["train"]))
    run_dir = bench_dir("registration_cv") / cfg.name
    t = time.perf_counter()
    summary = train_cached_with(train_register, cfg, run_dir, fp, quiet=True)
    print(f"{name} fold {fold}: done in {time.perf_counter() - t:.0f} s "
          f"(test gland Dice {summary['test']['gland_dice_after']['median']:.3f})", flush=True)
    return summary


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("dice_before", "dice_after", "tre_before_mm", "tre_after_mm"):
            r[k] = float(r[k]) if r[k] != "" else None
    return rows


def identity_rows(args, initial: str) -> list[dict]:
    import torch

    from leancnn.data.registration import PairedNifti
    from leancnn.tasks.register import register_and_score

    pairs = PairedNifti(args.data)
    return register_and_score(None, pairs, 1.0, torch.device("cpu"), "register", False, initial)


def cell(s: dict, digits: int) -> str:
    miss = f" ({s['missing']} missing)" if s["missing"] else ""
    return f"{s['median']:.{digits}f} [{s['q1']:.{digits}f}, {s['q3']:.{digits}f}]{miss}"


def fold_spread(rows_by_fold: list[list[dict]], key: str, structure: str) -> str:
    meds = [quartiles([r[key] for r in rows if r["structure"] == structure])["median"] for rows in rows_by_fold]
    return f"{np.mean(meds):.{3 if 'dice' in key else 2}f} ± {np.std(meds, ddof=1) if len(meds) > 1 else 0:.{3 if 'dice' in key else 2}f}"


def paired(rows: list[dict], structure: str, before: str, after: str, better: int) -> str:
    """Share of items that the method improved over no registration (centred), and the Wilcoxon signed-rank
    p-value of the paired differences (:func:`wilcoxon_cell`); items without a value before or after are left
    out."""
    items = [((r["pair"], r["label"]), r) for r in rows if r["structure"] == structure]
    return wilcoxon_cell({k: r[before] for k, r in items}, {k: r[after] for k, r in items}, better)


def study_jobs(args) -> list[tuple]:
    names = args.variants or list(STUDY)
    unknown = [n for n in names if n not in STUDY]
    if unknown:
        raise SystemExit(f"unknown --variants {unknown}; choose from: {', '.join(STUDY)}")
    if "default" not in names:
        names = ["default", *names]
    jobs = [(n, [f"train.epochs={args.study_epochs}", *STUDY[n]], f, args, "study")
            for n in names for f in range(STUDY_FOLDS.get(n, args.study_folds))]
    jobs += [(RECIPE, [], f, args, "study") for f in range(args.recipe_folds)]
    if args.recipe_folds > args.study_folds:  # the reference on the recipe's folds too, for the paired tests
        jobs += [("default", [f"train.epochs={args.study_epochs}"], f, args, "study")
                 for f in range(args.study_folds, args.recipe_folds)]
    return jobs


def study(args) -> None:
    jobs = study_jobs(args)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        summaries = list(pool.map(run_one, jobs))
    print(f"study: {len(jobs)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
    study_report(args, jobs, summaries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--width-folds", type=int, default=2, help="folds for the width trade-off (0: skip)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--long-epochs", type=int, default=0, help="also train the local network this many epochs on "
                                                                "--long-folds folds (does training length help?)")
    ap.add_argument("--long-folds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2 epochs, 1 width fold: a check that it runs")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--study", action="store_true", help="what limits accuracy: each --variants against default")
    ap.add_argument("--variants", nargs="*", help=f"study variants (default: all of {', '.join(STUDY)})")
    ap.add_argument("--study-folds", type=int, default=2)
    ap.add_argument("--study-epochs", type=int, default=80)
    ap.add_argument("--recipe-folds", type=int, default=0,
                    help="also train the shipped configs/register_mrus.yaml on this many folds")
    args = ap.parse_args()
    if args.study:
        return study(args)
    if args.quick:
        args.epochs, args.width_folds = 2, 1
    jobs = [(n, o, f, args) for f in range(args.folds) for n, o in MAIN.items()]
    jobs += [(n, o, f, args) for f in range(args.width_folds) for n, o in WIDTHS.items()]
    long_name = f"local, {args.long_epochs} epochs"
    if args.long_epochs:
        jobs += [(long_name, ["model.kind=local", f"train.epochs={args.long_epochs}"], f, args)
                 for f in range(args.long_folds)]
    jobs.sort(key=lambda j: -{long_name: 4, "composite": 3, "local, 2× width": 3, "local": 2}.get(j[0], 1))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        summaries = list(pool.map(run_one, jobs))
    wall = time.perf_counter() - t0
    by = {}
    for (name, _, fold, _), s in zip(jobs, summaries):
        by.setdefault(name, {})[fold] = s
    out = bench_dir("registration_cv")
    methods: list[tuple[str, list[list[dict]], str]] = []
    ident = {init: identity_rows(args, init) for init in ("centre", "corners")}
    for init, label in (("centre", "identity (centred, mm kept)"), ("corners", "identity (corner-aligned resize)")):
        per_fold = []
        for fold in range(args.folds):
            test_ids = set(by["local"][fold]["splits"]["test"])
            per_fold.append([{**r, "dice_after": r["dice_before"], "tre_after_mm": r["tre_before_mm"]}
                             for r in ident[init] if r["pair"] in test_ids])
        methods.append((label, per_fold, "—"))
    for name in [*MAIN, *WIDTHS, *([long_name] if args.long_epochs else [])]:
        if name not in by:
            continue
        folds = sorted(by[name])
        per_fold = [read_rows(Path(by[name][f]["run_dir"]) / "test_per_label.csv") for f in folds]
        params = by[name][folds[0]]["params"]
        methods.append((f"{name}" + ("" if len(folds) == args.folds else f" (folds {', '.join(map(str, folds))})"),
                        per_fold, f"{params / 1e6:.2f} M"))
    table = []
    for label, per_fold, params in methods:
        rows = [r for fold in per_fold for r in fold]
        g = quartiles([r["dice_after"] for r in rows if r["structure"] == "gland"])
        t = quartiles([r["tre_after_mm"] for r in rows if r["structure"] == "landmark"])
        table.append([label, params, str(g["n"]), cell(g, 3), fold_spread(per_fold, "dice_after", "gland"),
                      paired(rows, "gland", "dice_before", "dice_after", +1),
                      cell(t, 2), fold_spread(per_fold, "tre_after_mm", "landmark"),
                      paired(rows, "landmark", "tre_before_mm", "tre_after_mm", -1)])
    headers = ["method", "params", "pairs", "gland Dice, median [q1, q3]", "per-fold median, mean ± std",
               "glands improved (Wilcoxon)", "landmark TRE mm, median [q1, q3]", "per-fold median, mean ± std",
               "landmarks improved (Wilcoxon)"]
    text = format_table(table, headers, markdown=True)
    print(format_table(table, headers))
    # pair-level picture: gland Dice and TRE before vs after for the local and composite networks
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, per_fold, _ in methods:
        rows = [r for fold in per_fold for r in fold]
        d = sorted(r["dice_after"] for r in rows if r["structure"] == "gland" and r["dice_after"] is not None)
        e = sorted(r["tre_after_mm"] for r in rows if r["structure"] == "landmark" and r["tre_after_mm"] is not None)
        axes[0].plot(d, np.linspace(0, 1, len(d)), label=label)
        axes[1].plot(e, np.linspace(0, 1, len(e)), label=label)
    axes[0].set(xlabel="gland Dice", ylabel="share of test pairs", title="gland Dice (CDF, right is better)")
    axes[1].set(xlabel="landmark TRE (mm)", ylabel="share of landmarks", title="landmark TRE (CDF, left is better)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, ROOT / "docs" / "img" / "registration_cv.png")
    (out / "table.json").write_text(json.dumps({"headers": headers, "rows": table, "wall_s": wall}, indent=1))
    train_hours = sum(r["train_seconds"] for s in summaries for r in s["history"]) / 3600
    epochs_note = (f"{args.epochs} epochs of the training pairs (one label drawn per pair per epoch), batch 4, "
                   f"AdamW 3e-4 cosine, bending 0.5, grid 24×32×22 (data.scale 0.5 of the 47×63×44 ultrasound "
                   f"grid); {args.folds}-fold split by pair (seed 0); {train_hours:.1f} h of training in all, one "
                   f"thread per training, {args.jobs} side by side")
    body = (f"{text}\n\n\"Improved\": the share of test glands (landmarks) whose Dice rose (TRE fell) against no "
            "registration with the centred initial mapping, which is every network's starting point, and the "
            f"two-sided Wilcoxon signed-rank p-value of the paired differences (a small p under 50% means worse). "
            f"{epochs_note}.\n\n![gland Dice and landmark TRE over the test pairs](img/registration_cv.png)")
    if not args.no_doc:
        write_section("results.md", "registration-cv", "Registration: MR-US cross-validation (issue 13)", body)


# test-time variants: (name, the trained variant whose networks they reuse, infer overrides)
TEST_TIME = [
    ("all labels + flips", "all labels", {"tta": "flips"}),
    ("all labels + refine MIND 20", "all labels", {"refine_steps": 20, "refine_similarity": "mind"}),
    ("all labels + refine MIND 20, lr 0.02", "all labels", {"refine_steps": 20, "refine_similarity": "mind",
                                                            "refine_lr": 0.02}),
    ("all labels + refine LNCC-grad 20", "all labels", {"refine_steps": 20, "refine_similarity": "lncc_grad"}),
]


def score_run(run_dir: Path, infer: dict, key: str) -> dict:
    """Per-label rows and per-pair rows of a finished run on its test fold, with ``infer`` overrides; cached in
    the run directory as ``study_<key>.json``."""
    import torch

    from leancnn.tasks import register as R

    cache = run_dir / f"study_{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    torch.set_num_threads(1)
    model, cfg, state = R.load_register_state(run_dir / "last.pt", torch.device("cpu"))
    inf = R.infer_config(cfg, infer)
    pairs = R.open_pairs(cfg, state["meta"]["splits"]["test"])
    per_pair: list[dict] = []
    rows = R.register_and_score(model, pairs, cfg.data.scale, torch.device("cpu"), "test", False, cfg.data.initial,
                                infer=inf, pair_rows=per_pair)
    times = []  # inference alone (the DDF on the fixed grid from the two images), one thread, 5 pairs
    for i in range(min(5, len(pairs))):
        pair = pairs[i]
        t = time.perf_counter()
        R.predict_ddf(model, pair, cfg.data.scale, torch.device("cpu"), cfg.data.initial, inf)
        times.append(time.perf_counter() - t)
    out = {"rows": rows, "pairs": per_pair, "seconds_per_pair": float(np.median(times))}
    cache.write_text(json.dumps(out))
    return out


def _score_job(job):
    return score_run(*job)


def wilcoxon_cell(ref: dict, new: dict, better: int) -> str:
    """Share of the paired items (same pair and label) that ``new`` improved over ``ref`` and the two-sided Wilcoxon
    signed-rank p-value; ``ref``/``new``: {item: value}."""
    from scipy.stats import wilcoxon

    keys = [k for k in ref if k in new and ref[k] is not None and new[k] is not None]
    d = np.asarray([better * (new[k] - ref[k]) for k in keys])
    if not keys or np.allclose(d, 0):
        return "—"
    return f"{100 * np.mean(d > 0):.0f}% (p = {wilcoxon(d).pvalue:.1g})"


def study_report(args, jobs, summaries) -> None:
    runs: dict[str, list[Path]] = {}
    for (name, _, fold, *_), s in zip(jobs, summaries):
        runs.setdefault(name, []).append(Path(s["run_dir"]))
    evals = [(name, base, infer) for name, base, infer in TEST_TIME if base in runs]
    score_jobs = [(d, {}, "plain") for ds in runs.values() for d in ds]
    score_jobs += [(d, infer, slug(name)) for name, base, infer in evals for d in runs[base]]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        scored = list(pool.map(_score_job, score_jobs))
    by_dir: dict[tuple, dict] = {(str(d), key): r for (d, _, key), r in zip(score_jobs, scored)}

    def pooled(dirs, key):
        rows, pairs, sec = [], [], []
        for d in dirs:
            r = by_dir[(str(d), key)]
            rows += r["rows"]
            pairs += r["pairs"]
            sec.append(r["seconds_per_pair"])
        return rows, pairs, float(np.mean(sec))

    k = args.study_folds

    def fold_of(d: Path) -> int:
        return int(str(d).rsplit("-f", 1)[1])

    def folds(name, upto=None):
        return sorted((d for d in runs.get(name, []) if upto is None or fold_of(d) < upto), key=fold_of)

    # (row name, run dirs, scoring key, the row it is compared with)
    methods = [("no registration (centred)", folds("default", k), "before", None),
               ("default", folds("default", k), "plain", "no registration (centred)")]
    # each variant against the one it changes one thing of: "all, X" against "all labels" (on the variant's folds)
    late: list[tuple] = []
    for name in runs:
        if name in ("default", RECIPE):
            continue
        ref = ("all labels" if name.startswith("all,") and "all labels" in runs
               else RECIPE if name.startswith("recipe,") and RECIPE in runs else "default")
        n = len(runs[name])
        if ref == RECIPE and n == len(runs[RECIPE]) > k:  # on all the recipe's folds: its row of those folds
            late.append((name, folds(name), "plain", f"{RECIPE}, {n} folds"))  # listed after the recipe's rows
            continue
        if n < len(folds(ref, k if ref != RECIPE else None)):
            sub = f"{ref}, fold 0" if n == 1 else f"{ref}, folds 0-{n - 1}"
            methods.append((sub, folds(ref, n), "plain", None))
            ref = sub
        methods.append((name, folds(name), "plain", ref))
    methods += [(name, folds(base), slug(name), base) for name, base, _ in evals]
    if RECIPE in runs:
        n = len(runs[RECIPE])
        if n > k:  # the recipe on all its folds, against the reference on the same folds
            methods += [(f"no registration (centred), {n} folds", folds("default", n), "before", None),
                        (f"default, {n} folds", folds("default", n), "plain", f"no registration (centred), {n} folds"),
                        (f"{RECIPE}, {n} folds", folds(RECIPE), "plain", f"default, {n} folds")]
        if "all labels" in runs:  # training length: the recipe's folds 0..k-1 against the short run
            methods += [(f"{RECIPE}, folds 0-{k - 1}", folds(RECIPE, k), "plain", "all labels")]
    methods += late
    results = {}
    for name, dirs, key, _ in methods:
        rows, pairs, sec = pooled(dirs, "plain" if key == "before" else key)
        if key == "before":  # no registration: the "before" values of the same pairs
            rows = [{**r, "dice_after": r["dice_before"], "tre_after_mm": r["tre_before_mm"],
                     "hd95_after_mm": r.get("hd95_before_mm")} for r in rows]
            pairs = [{**p, "rms_tre_after_mm": p["rms_tre_before_mm"], "folding": 0.0, "std_log_jac": 0.0}
                     for p in pairs]
        results[name] = (rows, pairs, sec)

    def items(rows, structure, field):
        return {(r["pair"], r["label"]): r[field] for r in rows if r["structure"] == structure}

    table = []
    for name, dirs, key, ref in methods:
        rows, pairs, sec = results[name]
        ref_rows = results[ref][0] if ref else []
        s = summarise_rows(rows, pairs)
        minutes = np.mean([sum(h["train_seconds"] for h in json.loads((d / "summary.json").read_text())["history"])
                           for d in dirs]) / 60 if key != "before" else 0.0
        same = ref is None
        table.append([name, str(s["gland_dice_after"]["n"]), cell(s["gland_dice_after"], 3),
                      "—" if same else wilcoxon_cell(items(ref_rows, "gland", "dice_after"),
                                                     items(rows, "gland", "dice_after"), +1),
                      cell(s["landmark_tre_after_mm"], 2),
                      "—" if same else wilcoxon_cell(items(ref_rows, "landmark", "tre_after_mm"),
                                                     items(rows, "landmark", "tre_after_mm"), -1),
                      cell(s["gland_hd95_after_mm"], 1), cell(s["rms_tre_after_mm"], 2),
                      f"{100 * s['folding']['mean']:.3f}", "—" if same else f"{minutes:.1f}",
                      "—" if same else f"{sec:.3f}", ref or "", ", ".join(str(fold_of(d)) for d in dirs)])
    headers = ["variant", "pairs", "gland Dice, median [q1, q3]", "glands improved (Wilcoxon)",
               "landmark TRE mm, median [q1, q3]", "landmarks improved (Wilcoxon)", "gland HD95 mm",
               "RMS TRE per pair mm", "folding %", "train min/fold", "inference s/pair", "against", "folds"]
    print(format_table(table, headers))
    text = format_table(table, headers, markdown=True)
    out = bench_dir("registration_cv")
    (out / "study.json").write_text(json.dumps({"headers": headers, "rows": table}, indent=1))
    study_figure([(name, results[name][0]) for name, *_ in methods])
    note = (f"Each variant trained on folds {', '.join(map(str, range(args.study_folds)))} of the 4-fold split by "
            f"pair ({args.study_epochs} epochs of the 60 training pairs unless named, batch 4, one thread per "
            f"training), scored on its test fold with the same code, pooled. \"Improved\": the share of the same "
            f"glands (landmarks) whose Dice rose (TRE fell) against the variant in \"against\" (the default for "
            f"training variants; the networks they reuse for test-time variants) and the two-sided Wilcoxon "
            f"signed-rank p-value. Folding: the mean over pairs of the share of voxels with a Jacobian determinant "
            f"<= 0. \"default\": the defaults before issue 21 (label-reg's one label per pair per step, local "
            f"network 8-16-32-64 on the 24×32×22 grid, AdamW 3e-4 cosine, affine augmentation 0.1, multi-scale Dice "
            f"+ 0.5 bending); \"all, X\": every label per step and X changed; \"shipped recipe\": "
            f"configs/register_mrus.yaml (every label per step, 200 epochs). Train minutes and inference times "
            f"(the DDF alone, median of 5 pairs): one thread each, while one to three other trainings shared the "
            f"2 cores, so they are upper bounds that moved with the load.")
    if not args.no_doc:
        write_section("results.md", "registration-study", "Registration: what limits accuracy (issue 21)",
                      f"{text}\n\n{note}\n\n![gland Dice and landmark TRE of every variant]"
                      f"(img/registration_study.png)")


def study_figure(rows_by_name: list[tuple[str, list[dict]]]) -> None:
    """Box plots of the test glands' Dice and the landmarks' TRE of every row of the study table."""
    plt = _pyplot()
    names = [n for n, _ in rows_by_name]
    dice = [[r["dice_after"] for r in rows if r["structure"] == "gland" and r["dice_after"] is not None]
            for _, rows in rows_by_name]
    tre = [[r["tre_after_mm"] for r in rows if r["structure"] == "landmark" and r["tre_after_mm"] is not None]
           for _, rows in rows_by_name]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.34 * len(names) + 1.6), sharey=True)
    for ax, data, title in ((axes[0], dice, "gland Dice (right is better)"),
                            (axes[1], tre, "landmark TRE, mm (left is better)")):
        ax.boxplot(data, vert=False, widths=0.6, showfliers=False)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(1, len(names) + 1), names, fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    save_figure(fig, ROOT / "docs" / "img" / "registration_study.png")


if __name__ == "__main__":
    main()
