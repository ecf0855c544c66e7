"""MixStyle on the digit domains, leave-one-domain-out -> docs/results.md.

    python benchmarks/mixstyle_lodo.py [--studies cnn resnet20 ssdg] [--seeds 0 1 2]
    # on 2 cores, faster: two one-thread processes, then the report from the cached runs
    python benchmarks/mixstyle_lodo.py --threads 1 --shard 0/2 & python benchmarks/mixstyle_lodo.py \
        --threads 1 --shard 1/2; wait; python benchmarks/mixstyle_lodo.py

Studies (each is `leancnn lodo` over the four targets mnist, mnistm, syn, uci):
* ``cnn``: Digits-DG CNN (configs/mixstyle_digits_cnn.yaml), vanilla vs MixStyle random vs crossdomain
  (after conv1, conv2; p = 0.5, alpha = 0.1; crossdomain with the domain-balanced [A | B] sampler);
* ``resnet20``: the same with ResNet-20 (configs/mixstyle_resnet20.yaml), MixStyle after layer1, layer2;
* ``ssdg``: semi-supervised DG with the Digits-DG CNN: 10 labelled images per class and source domain;
  labelled-only (MixStyle random, the reference's baseline) vs the FixMatch-style trainer with
  labelled <-> unlabelled crossdomain MixStyle (unlabelled = the rest of the source training images,
  capped at 3,000 per run to fit the CPU budget).
Runs are cached under $LEANCNN_CACHE/bench/mixstyle_lodo/<study>; finished runs are skipped when run again.
"""

from __future__ import annotations

import argparse
import shutil

from _common import DOCS, ROOT, bench_dir, command, machine

from leancnn import report
from leancnn.config import read_yaml
from leancnn.tasks.lodo import run_lodo, table

CNN_MS = "model.mixstyle.after=[conv1,conv2]"
R20_MS = "model.mixstyle.after=[layer1,layer2]"
CROSS = ["model.mixstyle.mix=crossdomain", "data.sampler=domain", "data.domains_per_batch=2"]

STUDIES = {
    "cnn": ("configs/mixstyle_digits_cnn.yaml", ["train.epochs=5"], {
        "vanilla": [],
        "random": [CNN_MS],
        "crossdomain": [CNN_MS, *CROSS],
    }),
    "resnet20": ("configs/mixstyle_resnet20.yaml", ["train.epochs=3"], {
        "vanilla": [],
        "random": [R20_MS],
        "crossdomain": [R20_MS, *CROSS],
    }),
    "ssdg": ("configs/mixstyle_digits_cnn.yaml", ["data.labels_per_class=10", CNN_MS], {
        "labelled-only": ["data.batch_size=32", "train.epochs=25"],
        "ssdg": ["semi.mode=ssdg", "data.batch_size=64", "data.limit_train=3000",
                                                  "train.epochs=4"],
    }),
}
TITLES = {
    "cnn": "Digits-DG CNN (115k parameters), 5 epochs",
    "resnet20": "ResNet-20 (270k parameters), 3 epochs",
    "ssdg": "Semi-supervised DG, Digits-DG CNN, 10 labels per class and source domain",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", nargs="+", default=list(STUDIES), choices=list(STUDIES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=0, help="torch threads per process (0 = default)")
    ap.add_argument("--shard", default="0/1", help="I/N: train only every N-th run starting at I")
    args = ap.parse_args()
    shard = tuple(int(v) for v in args.shard.split("/"))
    sections, complete = [], True
    for study in args.studies:
        config, common, variants = STUDIES[study]
        base = read_yaml(ROOT / config)
        base.setdefault("train", {})["threads"] = args.threads
        variants = {name: [*common, *ov] for name, ov in variants.items()}
        out = bench_dir(f"mixstyle_lodo/{study}")
        res = run_lodo(base, variants, out, seeds=args.seeds, shard=shard)
        print(f"\n{study}\n{res['text']}\n", flush=True)
        if res["missing"]:
            complete = False
            continue
        img = DOCS / "img" / f"mixstyle_lodo_{study}.png"
        img.parent.mkdir(exist_ok=True)
        shutil.copyfile(out / "lodo.png", img)
        sections.append(f"**{TITLES[study]}** (`{config}` with {' '.join(common) or 'no overrides'}; variants: "
                        + "; ".join(f"{n}: `{' '.join(v[len(common):]) or '-'}`" for n, v in variants.items())
                        + f")\n\n{table(res, res['targets'], res['seeds'], markdown=True)}\n\n"
                        f"![{study}](img/mixstyle_lodo_{study}.png)")
    if shard != (0, 1) or not complete or set(args.studies) != set(STUDIES):
        print("not all runs of all studies are finished in this process: docs not updated")
        return
    body = (f"Command: `{command()}` (two one-thread shards, then the same command to collect).\n"
            f"Machine: {machine()}.\n\n"
            "Leave-one-domain-out on the four digit domains: train on three (their train splits; best epoch by "
            "the sources' validation accuracy), test on the **whole** held-out domain. Held-out accuracy in %, "
            f"mean ± std over seeds {', '.join(map(str, args.seeds))}; avg = mean over the four targets per "
            "seed, then mean ± std over seeds. MixStyle p = 0.5, alpha = 0.1.\n\n" + "\n\n".join(sections))
    report.update_doc_section(DOCS / "results.md", "mixstyle-lodo", body, "MixStyle: leave-one-domain-out")
    print("docs/results.md updated")


if __name__ == "__main__":
    main()
