"""Bias Loss vs cross-entropy on the digit domains, same recipe, several compact networks and seeds
-> docs/results.md.

    python benchmarks/bias_loss_digits.py [--models mobilenetv3_small skipnet_s resnet20] [--seeds 0 1 2]
                                         [--settings mnistm mnist-to-others] [--epochs 10]
    # on 2 cores, faster: two processes with one thread each, then the report from the cached runs
    python benchmarks/bias_loss_digits.py --threads 1 --shard 0/2 & python benchmarks/bias_loss_digits.py \
        --threads 1 --shard 1/2; wait; python benchmarks/bias_loss_digits.py

Settings:
* ``mnistm``: train and test on MNIST-M (the hardest single domain here; ResNet-20 reaches ~96%);
* ``mnist-to-others``: the harder variant: train on MNIST, test on the whole MNIST-M, SYN and UCI sets
  (domain shift; the score is the mean accuracy over the three targets).
Control (``mnistm`` only): cross-entropy with the learning rate multiplied by the mean Bias Loss weight z of the
same seed's Bias Loss run: Bias Loss also scales the whole loss down (z < 1), which lowers the effective
learning rate; the control separates that from the per-sample reweighting.
Each run is `leancnn train -c configs/bias_loss_digits.yaml model.name=M loss.name=L train.seed=S ...`;
finished runs are kept under $LEANCNN_CACHE/bench/bias_loss_digits and reused when run again if their fingerprint
(config and data) matches; a run of another config is trained again.
"""

from __future__ import annotations

import argparse
import json

from _common import DOCS, ROOT, bench_dir, command, machine

from leancnn import report
from leancnn.config import load_config
from leancnn.tasks.classify import train_cached
from leancnn.tasks.digits import run_fingerprint
from leancnn.tasks.runs import cached_run_state

SETTINGS = {
    "mnistm": ["data.domains=[mnistm]", "data.test_domains=[]"],
    "mnist-to-others": ["data.domains=[mnist]", "data.test_domains=[mnistm, syn, uci]"],
}
LOSSES = ("ce", "bias")


CONTROL = "ce_lr"  # cross-entropy with the learning rate scaled by the mean Bias Loss weight of the same seed


def run_dir(setting: str, model: str, loss: str, seed: int, epochs: int):
    return bench_dir("bias_loss_digits") / f"{setting}-{model}-{loss}-e{epochs}-s{seed}"


def mean_bias_weight(setting: str, model: str, seed: int, epochs: int) -> float:
    """Mean over epochs of the mean weight z of the Bias Loss run of the same setting, model and seed."""
    history = json.loads((run_dir(setting, model, "bias", seed, epochs) / "summary.json").read_text())["history"]
    return sum(r["bias_mean_weight"] for r in history) / len(history)


def job_config(setting: str, model: str, loss: str, seed: int, epochs: int, threads: int):
    """The config of one run (the lr-matched control needs its Bias Loss run to be finished)."""
    base = ROOT / "configs/bias_loss_digits.yaml"
    overrides = SETTINGS[setting] + [f"model.name={model}", f"train.seed={seed}", f"train.epochs={epochs}",
                                     f"train.threads={threads}"]
    if loss == CONTROL:  # same recipe, lr matched to Bias Loss's average down-scaling of the loss
        lr = load_config(base).optim.lr * mean_bias_weight(setting, model, seed, epochs)
        overrides += ["loss.name=ce", f"optim.lr={lr}"]
    else:
        overrides.append(f"loss.name={loss}")
    return load_config(base, overrides)


def run_one(setting: str, model: str, loss: str, seed: int, epochs: int, threads: int) -> dict:
    """Reuse the cached run when its fingerprint matches (threads do not count), else train it."""
    print(f"== {setting}: {model}, {loss}, seed {seed}", flush=True)
    return train_cached(job_config(setting, model, loss, seed, epochs, threads), run_dir(setting, model, loss, seed,
                                                                                         epochs))


def score(summary: dict) -> float:
    """Held-out accuracy: the unweighted mean over target domains ("mean"), or the one domain's."""
    test = summary["test"]
    return test["mean"]["acc"] if "mean" in test else next(iter(test.values()))["acc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mobilenetv3_small", "skipnet_s", "resnet20"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    ap.add_argument("--shard", default="0/1", help="i/n: run only every n-th missing run, starting at i (run n "
                                                   "processes with --threads 1 to use n cores); no report")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    shard, shards = (int(v) for v in args.shard.split("/"))
    def done(job) -> bool:
        if job[2] == CONTROL and not done((job[0], job[1], "bias", job[3])):
            return False
        cfg = job_config(*job, args.epochs, args.threads)
        return cached_run_state(run_dir(*job, args.epochs), run_fingerprint(cfg)).action == "done"

    jobs = [(st, m, loss, seed) for st in args.settings for m in args.models for seed in args.seeds for loss in LOSSES]
    for job in [j for j in jobs if not done(j)][shard::shards]:
        run_one(*job, args.epochs, args.threads)
    # the lr-matched control (in-domain setting only) needs the Bias Loss run of its seed
    controls = [("mnistm", m, CONTROL, seed) for m in args.models for seed in args.seeds if "mnistm" in args.settings]
    ready = [j for j in controls if not done(j) and done(("mnistm", j[1], "bias", j[3]))]
    for job in ready[shard::shards]:
        run_one(*job, args.epochs, args.threads)
    if shards > 1:
        return
    sections = []
    for setting in args.settings:
        rows, target_rows = [], []
        for model in args.models:
            variants = LOSSES + ((CONTROL,) if setting == "mnistm" else ())
            acc = {loss: [] for loss in variants}
            per_target = {loss: {} for loss in variants}
            for seed in args.seeds:
                for loss in variants:
                    s = train_cached(job_config(setting, model, loss, seed, args.epochs, args.threads),
                                     run_dir(setting, model, loss, seed, args.epochs))  # finished: reused
                    acc[loss].append(score(s))
                    for domain, r in s["test"].items():  # the targets and their unweighted "mean"
                        if domain != "all":  # pooled over images: not a target
                            per_target[loss].setdefault(domain, []).append(r["acc"])
            diffs = [b - c for b, c in zip(acc["bias"], acc["ce"])]
            row = [model, report.fmt_mean_std(acc["ce"]), report.fmt_mean_std(acc["bias"]),
                   ", ".join(f"{100 * d:+.2f}" for d in diffs), report.fmt_mean_std(diffs), sum(d > 0 for d in diffs)]
            if CONTROL in acc:
                ctrl = [b - c for b, c in zip(acc["bias"], acc[CONTROL])]
                weights = [mean_bias_weight(setting, model, seed, args.epochs) for seed in args.seeds]
                row += [f"{sum(weights) / len(weights):.3f}", report.fmt_mean_std(acc[CONTROL]),
                        ", ".join(f"{100 * d:+.2f}" for d in ctrl), report.fmt_mean_std(ctrl)]
            rows.append(row)
            if len(per_target["ce"]) > 1:
                for domain in per_target["ce"]:
                    target_rows.append([model, domain, report.fmt_mean_std(per_target["ce"][domain]),
                                        report.fmt_mean_std(per_target["bias"][domain])])
        headers = ["model", "CE (%)", "Bias Loss (%)", "Δ per seed (Bias − CE, pts)", "Δ mean ± std",
                   f"seeds Bias > CE (of {len(args.seeds)})"]
        if setting == "mnistm":
            headers += ["mean z", "CE, lr × mean z (%)", "Δ per seed (Bias − lr-matched CE)", "Δ mean ± std"]
        table = report.format_table(rows, headers, markdown=True)
        print(f"\n{setting}\n{table}", flush=True)
        text = table
        if target_rows:
            text += "\n\nPer target domain (mean ± std over seeds, %):\n\n" + report.format_table(
                target_rows, ["model", "target", "CE", "Bias Loss"], markdown=True)
        sections.append((setting, text))
    if args.no_docs:
        return
    body = ("Top-1 accuracy (%), mean ± sample std over training seeds " + ", ".join(map(str, args.seeds)) +
            f"; Δ = Bias Loss − cross-entropy of the same seed (same initialisation and data order). Recipe "
            f"`configs/bias_loss_digits.yaml` for every model and both losses: SGD (Nesterov, momentum 0.9, "
            f"lr 0.05, weight decay 5e-4), batch 128, {args.epochs} epochs, cosine schedule with 1 warm-up epoch, "
            f"random-crop augmentation, 32×32 inputs, 10 classes; Bias Loss with the paper's defaults "
            f"(alpha = beta = 0.3, per-batch min-max). The best-validation checkpoint is tested. Control (mnistm): "
            f"Bias Loss multiplies the loss by z < 1 on average, which also lowers the effective learning rate; "
            f"*CE, lr × mean z* is cross-entropy with the learning rate multiplied by the mean weight z of the same "
            f"seed's Bias Loss run (mean over epochs), so Bias − lr-matched CE isolates the per-sample "
            f"reweighting.\n\n")
    for setting, text in sections:
        what = ("**mnistm**: train and test on MNIST-M (test split)" if setting == "mnistm" else
                "**mnist-to-others** (harder, domain shift): train on MNIST, test on the whole MNIST-M, SYN "
                "and UCI sets; the score is the mean over the three targets")
        body += f"{what}\n\n{text}\n\n"
    body += (f"Command: `{command()}` (finished runs are cached under $LEANCNN_CACHE/bench/bias_loss_digits; on "
             f"2 cores, run them first as two `--threads 1 --shard i/2` processes, see the script's docstring)  \n"
             f"Machine: {machine()}")
    report.update_doc_section(DOCS / "results.md", "bias-loss-digits", body, "Bias Loss vs cross-entropy")


if __name__ == "__main__":
    main()
