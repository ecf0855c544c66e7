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
from leancnn.tasks.register import (
    RegisterConfig,
    quartiles,  # noqa: E402
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


def config(name: str, overrides: list[str], fold: int, args) -> RegisterConfig:
    return load_config(None, [f"data.root={args.data}", f"data.folds={args.folds}", f"data.fold={fold}",
                              "data.val_pairs=0", f"train.epochs={args.epochs}", "train.threads=1",
                              f"name=reg-{slug(name)}-f{fold}", *overrides], cls=RegisterConfig)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.replace("¼", "quarter").replace("×", "x")).strip("-")


def run_one(job: tuple) -> dict:
    """Train (or reuse) one fold's run; returns its summary (in a worker process)."""
    import torch

    from leancnn.tasks.register import data_identity, split_ids, train_register
    from leancnn.tasks.runs import fingerprint, train_cached_with

    name, overrides, fold, args = job
    torch.set_num_threads(1)
    cfg = config(name, overrides, fold, args)
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
    p-value of the paired differences; items without a value before or after are left out."""
    from scipy.stats import wilcoxon

    pairs = [(r[before], r[after]) for r in rows if r["structure"] == structure
             and r[before] is not None and r[after] is not None]
    if not pairs:
        return "—"
    d = np.asarray([better * (a - b) for b, a in pairs])
    if np.allclose(d, 0):
        return "—"
    return f"{100 * np.mean(d > 0):.0f}% (p = {wilcoxon(d).pvalue:.1g})"


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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
