"""``leancnn demo``: the whole pipeline in a few minutes, ending in a Markdown report.

Stage 1 (this issue): train ResNet-20 on the four digit domains, test it on each domain's test split.
Later stages (Bias Loss, MixStyle, pruning, latency, ...) append their sections to the same report.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from .. import report
from ..config import ExperimentConfig, apply_overrides, dump_config, from_dict
from ..data import DOMAINS
from ..models import get_model_entry
from ..nn import count_macs, count_params
from .classify import build_model, test_rows, train

# The demo's built-in experiment; configs/demo.yaml is the same file (a test keeps them equal).
DEMO_CONFIG = {
    "name": "demo",
    "model": {"name": "resnet20"},
    "data": {"domains": list(DOMAINS), "batch_size": 128},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
    "schedule": {"name": "cosine", "warmup_epochs": 0.5},
    "loss": {"name": "ce", "label_smoothing": 0.1},
    "train": {"epochs": 3, "seed": 0},
}


def default_demo_config(overrides=()) -> ExperimentConfig:
    return from_dict(ExperimentConfig, apply_overrides(copy.deepcopy(DEMO_CONFIG), list(overrides)))


def run_demo(cfg: ExperimentConfig, out: str | Path | None = None) -> Path:
    """Run every stage and write ``<run>/report.md``; returns its path."""
    start = time.perf_counter()
    out = Path(out) if out else Path(cfg.output_dir) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"[demo 1/1] training {cfg.model.name} on {', '.join(cfg.data.domains)} for {cfg.train.epochs} epochs")
    summary = train(cfg, out=out / "train", quiet=True)
    model = build_model(cfg)
    size = get_model_entry(cfg.model.name).input_size
    rows = test_rows(summary["test"])
    table = report.format_table(rows, ["test set", "images", "accuracy", "loss"], markdown=True)
    last = summary["history"][-1]
    sections = [
        ("Setup", f"- model: `{cfg.model.name}`, {count_params(model):,} parameters, "
                  f"{count_macs(model, size) / 1e6:.2f}M MACs at {'x'.join(map(str, size))}\n"
                  f"- data: digit domains {', '.join(cfg.data.domains)} (train/val/test split seed "
                  f"{cfg.data.split_seed})\n- machine: {report.machine_description()}, {torch.get_num_threads()} torch threads\n"
                  f"- run directory: `{summary['run_dir']}` (config.yaml, metrics.jsonl, best.pt, last.pt)"),
        ("Classification: test accuracy per domain", table + "\n\nBest validation accuracy "
         f"{100 * summary['best_val_acc']:.2f}%; last epoch trained at {last['train_images_per_s']:.0f} images/s."),
        ("Training curves", "![training curves](train/curves.png)"),
        ("Config", "```yaml\n" + dump_config(cfg) + "```"),
    ]
    elapsed = time.perf_counter() - start
    sections.append(("Time", f"The demo took {elapsed:.0f} s."))
    path = report.write_markdown(out / "report.md", "leancnn demo", sections)
    print("\n" + report.format_table(rows, ["test set", "images", "accuracy", "loss"]))
    print(f"\nreport written to {path}")
    return path
