"""On-device deployment (issue 24): ExecuTorch fp32 and int8 against PyTorch and onnxruntime -> docs/results.md
(accuracy) and docs/benchmarks.md (latency).

    python benchmarks/deploy_int8.py [--part accuracy speed] [--seeds 0 1 2] [--video-seeds 0 1 2] [--models ...]
                                     [--rounds 3] [--samples 1000] [--fresh]

**accuracy**: per seed, each classifier of the issue's targets (MobileNetV3-Small, SkipNet-S, ResNet-20,
MobileNetV3-Large) trained on the four digit domains (cross-entropy, SGD, ``--epochs`` epochs; 32x32, the digits'
size) and MoViNet-A0 stream trained on the moving-digits actions (configs/video_a0_stream.yaml, ``--video-epochs``
epochs); each run exported by ``leancnn export --quantize int8`` (the XNNPACK quantizer, PT2E, calibrated on 8
training batches) and its int8 program tested on the run's test split beside the PyTorch network (fp32 ExecuTorch
equals PyTorch to ~1e-6, checked in the same export). Every run and export is cached under
``$LEANCNN_CACHE/bench/deploy_int8`` and reused (an interrupted benchmark resumes).

**speed**: ``leancnn latency run`` on the issue's shapes (the classifiers at 32x32, MobileNetV3-Large at 224x224,
the A0 stream step at 172x172, one frame per step), batch 1, one thread, idle and with one co-running CPU hog, the
backends PyTorch eager, onnxruntime, ExecuTorch fp32 and ExecuTorch int8 measured in the same
run (each backend a condition, one after another, the models interleaved within it), the whole grid ``--rounds``
times; ratios of medians and p99, each round's, given as the median over rounds and their range.

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, bench_dir, write_section  # noqa: E402

from leancnn import report  # noqa: E402
from leancnn.config import apply_overrides, from_dict, read_yaml  # noqa: E402
from leancnn.latency import report as lreport  # noqa: E402
from leancnn.latency.config import LatencyConfig  # noqa: E402

CLASSIFIERS = {"MobileNetV3-Small": "mobilenetv3_small", "SkipNet-S": "skipnet_s", "ResNet-20": "resnet20",
               "MobileNetV3-Large": "mobilenetv3_large"}
VIDEO = "MoViNet-A0 stream"
RECIPE = {"data": {"domains": ["mnist", "mnistm", "syn", "uci"], "batch_size": 128, "augment": True},
          "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
          "schedule": {"name": "cosine", "warmup_epochs": 0.5}, "loss": {"name": "ce"}}
SPEED_MODELS = [{"name": "mobilenetv3_small", "input": [3, 32, 32]}, {"name": "skipnet_s", "input": [3, 32, 32]},
                {"name": "resnet20", "input": [3, 32, 32]}, {"name": "mobilenetv3_large", "input": [3, 224, 224]},
                {"name": "movinet_a0_stream", "input": [3, 1, 172, 172], "label": "movinet_a0_step"}]
BACKENDS = ["eager", "onnxruntime", "executorch", "executorch_int8"]


def _train_classifier(name: str, model: str, seed: int, epochs: int, out: Path) -> Path:
    from leancnn.config import ExperimentConfig
    from leancnn.tasks.classify import train_cached

    run = out / f"{model}-seed{seed}"
    cfg = from_dict(ExperimentConfig, {**RECIPE, "name": f"deploy-{model}", "model": {"name": model},
                                       "train": {"epochs": epochs, "seed": seed, "threads": 2}})
    print(f"[seed {seed}] training {name}", flush=True)
    train_cached(cfg, run)
    return run


def _train_video(seed: int, epochs: int, out: Path) -> Path:
    from leancnn.tasks.video import VideoConfig, train_video_cached

    run = out / f"a0-seed{seed}"
    raw = apply_overrides(read_yaml(str(ROOT / "configs" / "video_a0_stream.yaml")),
                          [f"train.epochs={epochs}", f"train.seed={seed}", "train.threads=2"])
    print(f"[seed {seed}] training {VIDEO}", flush=True)
    train_video_cached(from_dict(VideoConfig, raw), run)
    return run


def _export(run: Path, out: Path) -> dict:
    """``leancnn export --quantize int8`` of ``run`` (cached by the run's checkpoint)."""
    from leancnn.tasks.deploy import export_command
    from leancnn.tasks.runs import resolve_checkpoint

    ckpt = resolve_checkpoint(run)
    done = out / "int8.result.json"
    if done.is_file():
        r = json.loads(done.read_text())
        if r.get("checkpoint_mtime") == ckpt.stat().st_mtime:
            return r
    r = export_command(str(run), out / "int8.pte", "executorch", "int8", calibrate=8, force=True)
    r["checkpoint_mtime"] = ckpt.stat().st_mtime
    done.write_text(json.dumps(r, indent=2))
    return r


HEADERS = ["model", "seeds", "PyTorch fp32 (%)", "ExecuTorch int8 (%)", "points lost", "largest |change| of a seed",
           "mean loss ≤ 1 point (target)", "int8 raw output diff", "ops outside XNNPACK", "measured"]


def _previous_rows() -> dict[str, list[str]]:
    """The rows of the section's current table in docs/results.md, by model (cells padded to HEADERS: a table
    written before a column existed gets "—" there)."""
    import re

    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- BEGIN deploy-int8 -->(.*?)<!-- END deploy-int8 -->", text, re.S)
    if not m:
        return {}
    lines = [ln for ln in m.group(1).splitlines() if ln.startswith("|")]
    if len(lines) < 3:
        return {}
    split = lambda ln: [c.strip() for c in ln.strip().strip("|").split(" | ")]  # noqa: E731
    head = split(lines[0])
    machine = re.search(r"Machine: ([^,\n]+)", m.group(1))
    rows = {}
    for ln in lines[2:]:
        cells = dict(zip(head, split(ln)))
        if "measured" not in cells and machine:  # a table from before the column: its section's machine
            cells["measured"] = f"earlier, on {machine.group(1).strip()}"
        rows[cells["model"]] = [cells.get(h, "—") for h in HEADERS]
    return rows


def accuracy(args, out: Path) -> None:
    import datetime

    from _common import machine

    rows, today = {}, f"{datetime.date.today().isoformat()}, on {machine().split(',')[0]}"
    names = [n for n in [*CLASSIFIERS, VIDEO] if n in args.models]
    jobs = [(name, seed) for seed in args.seeds for name in names if name != VIDEO]
    jobs += [(VIDEO, s) for s in args.video_seeds if VIDEO in names]
    for name, seed in jobs:
        if name == VIDEO:
            run = _train_video(seed, args.video_epochs, out)
        else:
            run = _train_classifier(name, CLASSIFIERS[name], seed, args.epochs, out)
        print(f"[seed {seed}] exporting {name} to int8 and testing it", flush=True)
        r = _export(run, out / "exports" / run.name)
        acc = r["accuracy"]
        key = "test" if name == VIDEO else "mean"
        rows.setdefault(name, []).append((acc["pytorch"][key], acc["exported"][key], r["parity"]["max_rel_diff"],
                                          r["outside_delegate"]))
    table = _previous_rows()
    for name, rs in rows.items():
        before, after = [100 * b for b, _, _, _ in rs], [100 * a for _, a, _, _ in rs]
        lost = [b - a for b, a in zip(before, after)]
        parity = [p for _, _, p, _ in rs]
        table[name] = [name, len(rs), report.fmt_mean_std(before, 1), report.fmt_mean_std(after, 1),
                       report.fmt_mean_std(lost, 1), f"{max(abs(v) for v in lost):.2f}",
                       ("yes" if statistics.mean(lost) <= 1.0 else f"no ({statistics.mean(lost):.2f})")
                       + ("" if max(lost) <= 1.0 else f"; not on every seed (worst {max(lost):.2f})"),
                       f"{min(parity):.3f}–{max(parity):.3f}", ", ".join(rs[0][3]) or "none", today]
    order = [*CLASSIFIERS, VIDEO]
    table = [table[n] for n in sorted(table, key=lambda n: order.index(n) if n in order else len(order))]
    kept = [r[0] for r in table if r[0] not in rows]
    body = (f"Each model trained on the four digit domains ({args.epochs} epochs, cross-entropy, SGD; 32×32) or, for "
            f"A0, on the moving-digits actions (configs/video_a0_stream.yaml, {args.video_epochs} epochs), then "
            "`leancnn export RUN -o int8.pte --quantize int8` (XNNPACK quantizer through PT2E: weights int8 per "
            "channel, activations int8 per tensor, static, calibrated on 8 training batches) and the int8 program "
            "run in ExecuTorch's runtime on the run's whole test split beside the PyTorch network. Classifiers: the "
            "mean accuracy over the four domains' test splits; A0: the 600 test clips streamed frame by frame through "
            "the int8 step (16 steps per clip, the state carried in int8-quantized form).\n\n"
            + report.format_table(table, HEADERS, markdown=True)
            + "\n\n*int8 raw output diff*: the int8 program's largest output difference from PyTorch, relative to the "
              "largest output, over one sample of training data (a stream: over 16 frames), the range over seeds; a "
              "sanity check, not an accuracy. The fp32 programs match PyTorch to 1e-4 relative "
              "(tests/test_executorch.py), so their accuracy is PyTorch's."
            + (f" Rows kept from an earlier run of this benchmark (not named by `--models` this time): "
               f"{', '.join(kept)}; *measured* says when and on which CPU (\"—\" raw diffs: the table then had no such "
               "column; they were 0.011–0.330 over all its rows)." if kept else ""))
    print(body)
    if not args.no_docs:
        write_section("results.md", "deploy-int8", "int8 on the device: accuracy", body,
                      note=" (trains and caches every run; resumes; `--models` re-measures only the rows it names)")


def speed(args, out: Path) -> None:
    from leancnn.tasks import latency as latency_task

    cfg = from_dict(LatencyConfig, {
        "name": "deploy-speed", "models": SPEED_MODELS,
        "grid": {"loads": [{"workers": 0}, {"workers": 1}], "threads": [1], "backends": BACKENDS},
        "protocol": {"warmup": 10, "samples": args.samples, "block": 10, "condition_seconds": 240},
        "analysis": {"quantiles": [0.5, 0.99]}})
    # the backends are conditions run one after another: a drift of the shared machine between them would pass for
    # a difference of backends, so the whole grid is run --rounds times and every ratio is given per round
    rounds, skipped, models = [], {}, []
    for i in range(args.rounds):
        run = out / "latency" / f"round{i}"
        resume = (run / "run.json").is_file() and not args.fresh
        print(f"round {i + 1}/{args.rounds}", flush=True)
        latency_task.run(cfg, run, resume=resume, force=args.fresh or not resume, report=False)
        lreport.write_report(run, quantiles=(0.5, 0.99))
        data = lreport.load_run(run)
        models = models or list(data.models)
        med = {}
        for c in data.done:
            for m in data.models:
                lat = data.samples["latency_s"][(data.samples["condition"] == c["id"]) & (data.samples["model"] == m)]
                if len(lat):
                    lat = sorted(lat.tolist())
                    med[(c["load"]["workers"], c["backend"], m)] = (statistics.median(lat),
                                                                    lat[min(len(lat) - 1, int(0.99 * len(lat)))])
            for m, why in (c.get("skipped_models") or {}).items():  # a row says why, it is never dropped
                skipped.setdefault((c["backend"], m), why)
        rounds.append(med)

    def spread(values: list[float], unit: str) -> str:
        if not values:
            return "—"
        mid = statistics.median(values)
        return (f"{mid:.2f}{unit}" if len(values) == 1 else
                f"{mid:.2f}{unit} ({min(values):.2f}–{max(values):.2f})")

    rows = []
    for m in models:
        for load in (0, 1):
            cells = [{b: r.get((load, b, m)) for b in BACKENDS} for r in rounds]
            if not any(any(c.values()) for c in cells):
                continue
            ratios = {}
            for name, (num, den, q) in {"int8": ("executorch", "executorch_int8", 0),
                                        "ort": ("onnxruntime", "executorch", 0),
                                        "int8_p99": ("executorch", "executorch_int8", 1)}.items():
                ratios[name] = [c[num][q] / c[den][q] for c in cells if c[num] and c[den]]
            rows.append([m, "idle" if load == 0 else "1 hog",
                         *(spread([1e3 * c[b][0] for c in cells if c[b]], "") if any(c[b] for c in cells)
                           else "not timed" for b in BACKENDS),
                         spread(ratios["int8"], "×"), spread(ratios["ort"], "×"), spread(ratios["int8_p99"], "×")])
    missing = [f"{m} on {b}: {why}" for (b, m), why in sorted(skipped.items())]
    run = out / "latency" / "round0"
    body = (f"Batch 1, one thread, {args.rounds} rounds of one `leancnn latency run` each: each backend a condition "
            "of the run (idle and with one co-running stress-ng CPU hog), one after another, the five models "
            f"interleaved within each condition (randomised blocks of 10, {args.samples} timed inferences per model "
            "after 10 warm-up). Cells: the median over rounds of each round's median ms (or ratio), with the range "
            "over rounds in brackets (the backends are timed minutes apart: the range shows how much of a ratio the "
            "shared machine's drift can be). Median ms; *int8 speed-up* = ExecuTorch fp32 / ExecuTorch int8 (target ≥ 1.5×), "
            "*ET vs ORT* = onnxruntime / ExecuTorch fp32 (≥ 1: ExecuTorch no slower; the A0 target).\n\n"
            + report.format_table(rows, ["model", "load", "eager", "onnxruntime", "ExecuTorch fp32", "ExecuTorch int8",
                                         "int8 speed-up (median)", "ET vs ORT (median)", "int8 speed-up (p99)"],
                                  markdown=True)
            + (f"\n\nNot timed (the run's reason): {'; '.join(missing)}." if missing else "")
            + f"\n\nThe full report of each round (CDFs, every pairwise test with its CI): `{run}/report.md` and its siblings. The int8 programs here "
              "are calibrated on random inputs (the latency tool's int8 backend): their timing holds, their accuracy "
              "is measured on trained runs in docs/results.md (*int8 on the device: accuracy*).")
    print(body)
    if not args.no_docs:
        write_section("benchmarks.md", "deploy-speed", "On-device backends: ExecuTorch fp32 and int8", body,
                      note=" (about 20 min, the exports made once and cached)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", nargs="+", default=["accuracy", "speed"], choices=["accuracy", "speed"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--video-seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=[*CLASSIFIERS, VIDEO], choices=[*CLASSIFIERS, VIDEO],
                    metavar="MODEL", help="the accuracy rows to measure (the others are kept from the section)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--video-epochs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3, help="the speed grid run this many times (ratios per round)")
    ap.add_argument("--fresh", action="store_true", help="measure the speed part again")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    out = bench_dir("deploy_int8")
    if "speed" in args.part:
        speed(args, out)
    if "accuracy" in args.part:
        accuracy(args, out)


if __name__ == "__main__":
    main()
