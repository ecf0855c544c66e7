"""ResNet-20 trained and tested on each digit domain, over seeds -> docs/results.md.

    python benchmarks/digits_domains.py [--seeds 0 1 2] [--epochs 10] [--domains mnist mnistm syn uci]

Each run is `leancnn train -c configs/resnet20_digits.yaml data.domains=[D] train.seed=S`; finished runs are
kept under $LEANCNN_CACHE/bench/digits_domains and reused when the script is run again, if their fingerprint
(config and data) still matches.
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import DOCS, ROOT, bench_dir, command, machine

from leancnn import report
from leancnn.config import load_config
from leancnn.data import DOMAINS
from leancnn.tasks.classify import train_cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--domains", nargs="+", default=list(DOMAINS))
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/results.md")
    args = ap.parse_args()
    out = bench_dir("digits_domains")
    rows, start = [], time.perf_counter()
    for domain in args.domains:
        accs = []
        for seed in args.seeds:
            run = out / f"{domain}-e{args.epochs}-s{seed}"
            print(f"== {domain}, seed {seed}", flush=True)
            cfg = load_config(ROOT / "configs/resnet20_digits.yaml",
                              [f"data.domains=[{domain}]", f"train.seed={seed}", f"train.epochs={args.epochs}"])
            summary = train_cached(cfg, run)  # reused when its fingerprint matches
            accs.append(summary["test"][domain]["acc"])
        n_test = summary["test"][domain]["n"]
        rows.append([domain, n_test, report.fmt_mean_std(accs), ", ".join(f"{100 * a:.2f}" for a in accs)])
        print(report.format_table(rows[-1:], ["domain", "test images", "accuracy (%)", "per seed"]), flush=True)
    table = report.format_table(rows, ["domain (train = test)", "test images", "top-1 accuracy (%), mean ± std",
                                       "per seed"], markdown=True)
    print(table)
    if args.no_docs:
        return
    body = (f"ResNet-20 (269,722 parameters) trained on the train split of one domain and tested on the test split "
            f"of the same domain (70/15/15 stratified split, split seed 0; the best-validation checkpoint is tested). "
            f"Recipe `configs/resnet20_digits.yaml`: SGD (Nesterov, momentum 0.9, lr 0.1, weight decay 5e-4), "
            f"batch 128, {args.epochs} epochs, cosine schedule with 1 warm-up epoch, random-crop augmentation. "
            f"Mean ± sample std over training seeds {', '.join(map(str, args.seeds))}.\n\n{table}\n\n"
            f"Command: `{command()}` ({(time.perf_counter() - start) / 60:.0f} min for the runs not cached)  \n"
            f"Machine: {machine()}")
    report.update_doc_section(DOCS / "results.md", "digits-domains", body, "ResNet-20 on each digit domain")
    print("docs/results.md updated", file=sys.stderr)


if __name__ == "__main__":
    main()
