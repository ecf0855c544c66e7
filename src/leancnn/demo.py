"""``leancnn demo``: the whole pipeline in a few minutes, ending in a Markdown report.

Stage 1: train ResNet-20 with Bias Loss on the four digit domains and test it on each domain's test split;
report Bias Loss's diagnostics (low-diversity samples per epoch, feature variance against correctness).
Stage 2: a short leave-one-domain-out run (train on mnist, syn, uci; test on mnistm, the whole domain unless
data.limit_eval shortens the demo; the report says which) of ResNet-20
without MixStyle, with MixStyle (random) and with MixStyle (crossdomain, domain-balanced batches).
Stage 3: MoViNet-A0 stream trained briefly on the moving-digits actions, then a long synthetic video streamed
through it frame by frame: the running top-1 and the process's memory, which stays flat (the state has a fixed
size whatever the video's length).
Stage 4: `leancnn latency` on the models of stages 1 and 3 and the Digits-DG CNN, idle and with a co-running CPU
hog per core, PyTorch eager and onnxruntime: latency CDFs, rank reversals, a recommendation.
Stage 5: `leancnn prune` on the stage-1 classifier: three criteria clustered and blended, pruned to half the MACs,
BatchNorm recalibrated, fine-tuned for an epoch; accuracy, MACs and measured latency before and after.
Stage 6: `leancnn register` on synthetic two-"modality" phantom pairs with a known deformation: a small local
network trained briefly with the label-driven loss, then gland Dice and landmark TRE before and after, on the
training pairs and on held-out pairs, and a picture of a registered pair.
Stage 7: `leancnn search prune` on the stage-1 classifier: a few trials of per-layer pruning ratios and round_to,
each scored by validation accuracy and measured p99 latency under a co-running hog; the Pareto front and its plot.
Stage 8: `leancnn retrieve` without and with MixStyle: re-identification of handwriting identities trained in one
style and tested on unseen identities in an unseen style (rank-1, mAP).
Stage 9: `leancnn export` of the stage-5 pruned classifier to ExecuTorch (XNNPACK) in fp32 and int8 and to ONNX,
each checked against PyTorch, int8's accuracy before and after, and the three timed side by side by the latency tool.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from . import report
from .config import ExperimentConfig, apply_overrides, dump_config, from_dict
from .data import DOMAINS
from .errors import LeancnnError
from .models import get_model_entry
from .nn import count_macs, count_params
from .outputs import check_output, check_output_dir
from .tasks.classify import train
from .tasks.digits import build_datasets, build_model, test_rows, variance_and_correctness
from .tasks.lodo import run_lodo, table
from .tasks.runs import check_path_arg, checkpoint_inputs, data_inputs, held_run_files
from .train import load_checkpoint, load_model_state

N_STAGES = 9

# The demo's built-in experiment; configs/demo.yaml is the same file (a test keeps them equal).
DEMO_CONFIG = {
    "name": "demo",
    "model": {"name": "resnet20"},
    "data": {"domains": list(DOMAINS), "batch_size": 128},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
    "schedule": {"name": "cosine", "warmup_epochs": 0.5},
    "loss": {"name": "bias", "label_smoothing": 0.1, "alpha": 0.3, "beta": 0.3},
    "train": {"epochs": 3, "seed": 0},
}


# Stage 2: leave-one-domain-out with and without MixStyle (short: one target, one seed, 2 epochs, 2,560 images;
# 6,000 before the registration stage needed its share of the 5-minute budget, 4,500 before the threads work
# took the demo on an empty cache to 307 s).
DEMO_LODO = {
    "name": "demo-lodo",
    "model": {"name": "resnet20", "mixstyle": {"after": ["layer1", "layer2"], "p": 0.5, "alpha": 0.1}},
    "data": {"batch_size": 128, "limit_train": 2560},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
    "schedule": {"name": "cosine", "warmup_epochs": 0.5},
    "train": {"epochs": 2},
}
DEMO_LODO_TARGET = "mnistm"
DEMO_LODO_VARIANTS = {
    "vanilla": ["model.mixstyle.after=[]"],
    "MixStyle-random": [],
    "MixStyle-crossdomain": ["model.mixstyle.mix=crossdomain", "data.sampler=domain"],
}


def mixstyle_section(cfg: ExperimentConfig, out: Path) -> tuple[str, str]:
    """Leave-one-domain-out on one target with and without MixStyle; the section of the report."""
    base = copy.deepcopy(DEMO_LODO)
    base["train"]["threads"] = cfg.train.threads
    base["train"]["device"] = cfg.train.device
    # a demo shortened with data.limit_train / data.limit_eval / train.epochs shortens this stage too
    if cfg.data.limit_train > 0:
        base["data"]["limit_train"] = min(cfg.data.limit_train, base["data"]["limit_train"])
    base["data"]["limit_eval"] = cfg.data.limit_eval
    base["train"]["epochs"] = min(cfg.train.epochs, base["train"]["epochs"])
    res = run_lodo(base, DEMO_LODO_VARIANTS, out / "lodo", targets=[DEMO_LODO_TARGET], seeds=[cfg.train.seed])
    sources = ", ".join(d for d in DOMAINS if d != DEMO_LODO_TARGET)
    text = (f"ResNet-20 trained on {sources} ({base['data']['limit_train']:,} training images, "
            f"{base['train']['epochs']} epochs, seed {cfg.train.seed}) and tested on "
            f"{res['tested_on'][DEMO_LODO_TARGET]}, without and with MixStyle after layer1 and layer2 (p = 0.5, "
            f"alpha = 0.1). Crossdomain mixing uses domain-balanced [A | B] batches. Held-out accuracy (%):\n\n"
            f"{table(res, [DEMO_LODO_TARGET], [cfg.train.seed], markdown=True)}\n\n"
            "One seed of a short run: a smoke test of the pipeline, not a result. In the three-seed study the "
            "held-out accuracy on mnistm varies by up to ~4 points (std) between seeds; "
            "`python benchmarks/mixstyle_lodo.py` runs the full protocol (4 targets, 3 seeds, 2 networks; "
            "docs/results.md). Runs: `lodo/`.")
    return "MixStyle: leave-one-domain-out", text


# Stage 3: a brief A0-stream run (256 clips, 2 epochs: about 35 s on 2 cores; 400 clips before the threads
# work took the demo on an empty cache past 300 s), then a long synthetic video streamed through it.
DEMO_VIDEO = {
    "name": "demo-video",
    "model": {"name": "movinet_a0_stream", "bn_momentum": 0.1},
    "data": {"frames": 16, "height": 32, "width": 32, "train": 256, "val": 64, "test": 160, "batch_size": 16},
    "optim": {"name": "adamw", "lr": 0.004, "weight_decay": 0.05},
    "schedule": {"name": "cosine", "warmup_epochs": 0.25},
    "train": {"epochs": 2, "grad_clip": 1.0},
}
DEMO_STREAM_FRAMES = 256
DEMO_STREAM_ACTION = "rotate_cw"


def video_section(cfg: ExperimentConfig, out: Path, force: bool = False) -> tuple[tuple[str, str], Path]:
    """Train A0 stream briefly, stream a long synthetic video through it; the report's section (and a figure),
    and the run's checkpoint."""
    from .models.movinet import state_nbytes
    from .tasks import video
    from .tasks.video import VideoConfig

    raw = copy.deepcopy(DEMO_VIDEO)
    raw["train"].update(threads=cfg.train.threads, device=cfg.train.device, seed=cfg.train.seed)
    if cfg.data.limit_train > 0:  # a demo shortened with data.limit_train / limit_eval shortens this stage too
        raw["data"]["train"] = max(20, min(raw["data"]["train"], cfg.data.limit_train // 4))
    if cfg.data.limit_eval > 0:
        raw["data"]["val"] = raw["data"]["test"] = max(10, min(raw["data"]["test"], cfg.data.limit_eval))
    raw["train"]["epochs"] = min(cfg.train.epochs, raw["train"]["epochs"])
    vcfg = from_dict(VideoConfig, raw)
    summary = video.train_video(vcfg, out=out / "video", quiet=True, force=force)
    model, _, _ = video.load_video_model(summary["checkpoint"], torch.device("cpu"))
    d = vcfg.data
    _, frames = video.synthetic_frames(DEMO_STREAM_ACTION, DEMO_STREAM_FRAMES, d.height, d.width, seed=1)
    reports = video.stream(model, frames, (d.height, d.width), every=16, topk=1,
                           labels=list(video.vdata.ACTIONS))
    rss = [r["rss_mib"] for r in reports]
    first = 1 if len(reports) > 2 else 0  # from the second report: the first includes one-off allocations
    growth = 100 * (rss[-1] - rss[first]) / max(rss[first], 1e-9)
    state_mib = state_nbytes(model.init_state(1, d.height, d.width)) / 2**20
    report.plot_stream(reports, out / "video_stream.png", DEMO_STREAM_ACTION,
                       title=f"A0 stream, {DEMO_STREAM_FRAMES} frames of '{DEMO_STREAM_ACTION}'")
    test = summary["test"]
    rows = [[f"{name} frame order", r["n"], f"{100 * r['acc']:.1f}%"] for name, r in test.items()]
    hits = sum(r["top"][0][0] == DEMO_STREAM_ACTION for r in reports)
    text = (f"MoViNet-A0 stream (3.7M parameters; 10 classes here) trained for {vcfg.train.epochs} epochs on "
            f"{d.train} moving-digits clips ({d.frames} frames of {d.height}x{d.width}; 10 actions such as left, "
            "rotate clockwise, appear-then-vanish) in whole causal clips. A brief run: the point is the pipeline, "
            "`python benchmarks/movinet_actions.py` trains properly (docs/results.md). Test clips:\n\n"
            + report.format_table(rows, ["test clips", "clips", "accuracy"], markdown=True)
            + f"\n\nThen a {DEMO_STREAM_FRAMES}-frame synthetic video (test clips of '{DEMO_STREAM_ACTION}' back "
            f"to back) streamed one frame at a time with the state carried: the running top-1 was "
            f"'{DEMO_STREAM_ACTION}' at {hits} of {len(reports)} reports; resident memory went from "
            f"{rss[first]:.0f} MiB (frame {reports[first]['frame']}) to {rss[-1]:.0f} MiB (frame {reports[-1]['frame']}), "
            f"{growth:+.1f}%, while the state stayed {state_mib:.2f} MiB; {reports[-1]['fps']:.0f} frames/s.\n\n"
            "![stream: running probability and memory](video_stream.png)")
    return ("MoViNet: streaming video in constant memory", text), summary["checkpoint"]


# Stage 4: latency under CPU contention of the demo's own models (the stage-1 classifier, the stage-3 stream step)
# and the Digits-DG CNN: idle and one CPU hog per core (so the timed inference shares its core), PyTorch eager
# and onnxruntime, one thread.
DEMO_LATENCY = {
    "name": "demo-latency",
    "grid": {"loads": [{"workers": 0}, {"workers": -1}], "threads": [1], "backends": ["eager", "onnxruntime"]},
    "protocol": {"warmup": 5, "samples": 150, "block": 10, "settle_seconds": 0.5, "condition_seconds": 20},
}


def latency_section(cfg: ExperimentConfig, out: Path, classifier: str | Path, stream: str | Path | None,
                    force: bool = False) -> tuple[str, str]:
    """Measure the demo's models idle and under load (``leancnn latency``); the report's section."""
    from .latency import report as lreport
    from .latency.config import LatencyConfig
    from .tasks import latency as latency_task

    raw = copy.deepcopy(DEMO_LATENCY)
    raw["grid"]["loads"][1]["workers"] = len(os.sched_getaffinity(0))
    raw["models"] = [{"checkpoint": str(classifier), "label": f"{cfg.model.name} (stage 1)"},
                     {"name": "digits_cnn"}]
    if stream is not None:
        raw["models"].append({"checkpoint": str(stream), "label": "A0 stream step (stage 3)"})
    if cfg.data.limit_train > 0:  # a shortened demo (tests) measures less
        raw["protocol"].update(samples=20, block=5, warmup=2, settle_seconds=0.0)
    lcfg = from_dict(LatencyConfig, raw)
    run_dir = out / "latency"
    latency_task.run(lcfg, run_dir, force=force, log=lambda line: print("  " + line, flush=True), progress=False)
    data = lreport.load_run(run_dir)
    result = lreport.analyse(data, quantiles=(0.5, 0.99))
    conds = {c["label"]: c for c in data.done}
    table = []
    for r in result["summary"]:
        share = conds[r["condition"]].get("load_cpu_share")
        table.append([r["condition"], r["model"], f"{1e3 * r['median']:.2f}", f"{1e3 * r['p99']:.2f}",
                      f"{100 * r['cv']:.0f}%", f"{share:.2f}" if share else "–"])
    rev = result["reversals"]
    kinds = sorted({c.get("load_kind_used") for c in data.done} - {"none", None})
    text = (f"`leancnn latency` on the models this demo trained and the Digits-DG CNN, batch 1, one thread: "
            f"idle and with one co-running CPU hog per core ({', '.join(kinds) or 'none'}), PyTorch eager and "
            "onnxruntime "
            f"(exported automatically), {lcfg.protocol.samples} timed inferences per model and condition in "
            "randomised interleaved blocks. A smoke test of the harness, not a result: the experiment with five "
            "models, 0/1/2 load workers and 1/2 threads is in docs/results.md.\n\n"
            + report.format_table(table, ["condition", "model", "median ms", "p99 ms", "CV", "load CPU used"],
                                  markdown=True)
            + "\n\n" + (f"{len(rev)} significant rank reversal(s) between conditions (Holm over "
                         f"{result['pairwise']['n_tests']} tests)." if rev else
                         f"No significant rank reversal (Holm over {result['pairwise']['n_tests']} tests).")
            + " " + (result["recommendation"] or {}).get("summary", "") + ".\n\n"
            "![latency CDFs](latency/latency_cdf.png)\n\nFull report: [latency/report.md](latency/report.md).")
    return "Latency under CPU contention", text


# Stage 5: the stage-1 classifier pruned to half its MACs by the blend of three criteria, fine-tuned briefly.
DEMO_PRUNE = {"name": "demo-prune", "target_macs": 0.5, "criteria": ["l1", "bn", "taylor"], "calib_batches": 2,
              "search": {"method": "none", "val_images": 500, "bn_batches": 4},
              "finetune_epochs": 1, "finetune_limit_train": 2000}


def prune_section(cfg: ExperimentConfig, out: Path, classifier: str | Path, force: bool = False
                  ) -> tuple[tuple[str, str], str]:
    """Prune the demo's classifier (``leancnn prune``), fine-tune it, time both; the report's section and the
    pruned, fine-tuned checkpoint."""
    from .latency import report as lreport
    from .latency.config import LatencyConfig
    from .tasks import latency as latency_task
    from .tasks import prune as tprune
    from .tasks.prune import PruneConfig

    raw = copy.deepcopy(DEMO_PRUNE)
    if cfg.data.limit_train > 0:  # a shortened demo (tests) prunes on less
        raw.update(finetune_limit_train=min(raw["finetune_limit_train"], cfg.data.limit_train), calib_batches=1)
        raw["search"].update(val_images=100, bn_batches=1)
    pcfg = from_dict(PruneConfig, raw)
    s = tprune.prune_run(classifier, pcfg, out / "prune", force=True, log=lambda line: print("  " + line, flush=True))
    ft = s["finetune"]
    lcfg = from_dict(LatencyConfig, {
        "name": "demo-prune-latency",
        "models": [{"checkpoint": str(classifier), "label": f"{cfg.model.name}"},
                   {"checkpoint": ft["checkpoint"], "label": f"{cfg.model.name} pruned + fine-tuned"}],
        "grid": {"loads": [{"workers": 0}], "threads": [1], "backends": ["eager"]},
        "protocol": {"warmup": 5, "samples": 100 if cfg.data.limit_train <= 0 else 20, "block": 10,
                     "settle_seconds": 0.0}})
    latency_task.run(lcfg, out / "prune" / "latency", force=True, log=lambda line: None, progress=False, report=False)
    data = lreport.load_run(out / "prune" / "latency")
    med = {m: float(np.median(data.samples["latency_s"][data.samples["model"] == m])) for m in data.models}
    base, pruned = (med[m] for m in data.models)
    rows = []
    for d, r in s["test_before"].items():
        rows.append([d, f"{100 * r['acc']:.2f}%", f"{100 * s['test_after'][d]['acc']:.2f}%",
                     f"{100 * ft['test'][d]['acc']:.2f}%"])
    text = (f"`leancnn prune` on the stage-1 {cfg.model.name}: the criteria {', '.join(s['criteria'])} scored every "
            f"prunable group, were clustered by rank correlation (candidates: {', '.join(s['candidates'])}) and "
            f"blended with equal weights ({s['criterion']}); every group lost the same fraction of its channels "
            f"({s['channel_ratio']:.3f}), leaving {100 * s['macs_ratio']:.1f}% of the MACs "
            f"({s['macs_before'] / 1e6:.1f}M -> {s['macs_after'] / 1e6:.1f}M) and {s['params_after']:,} of "
            f"{s['params_before']:,} parameters; BatchNorm recalibrated, then fine-tuned {ft['epochs']} epoch on "
            f"{pcfg.finetune_limit_train or 'all'} training images. Test accuracy:\n\n"
            + report.format_table(rows, ["test set", "before", "pruned, no fine-tuning", "pruned + fine-tuned"],
                                  markdown=True)
            + f"\n\nMeasured latency (batch 1, one thread, PyTorch eager, idle, median of {lcfg.protocol.samples}): "
            f"{1e3 * base:.2f} ms before, {1e3 * pruned:.2f} ms after: {base / pruned:.2f}x faster for "
            f"{s['macs_before'] / s['macs_after']:.2f}x fewer MACs. The search of the blend's weights (`--search ea`) "
            "and the full comparison of criteria are in docs/results.md; `leancnn evaluate prune/pruned.pt` and "
            "`--resume` work on the pruned runs like on any other.")
    return ("Pruning: blended criteria", text), ft["checkpoint"]


# Stage 9: the pruned classifier leaves for a device: ExecuTorch fp32 and int8, ONNX, checked and timed side by side.

def deploy_section(cfg: ExperimentConfig, out: Path, pruned: str | Path) -> tuple[str, str]:
    """``leancnn export`` of the pruned classifier to .pte (fp32, int8) and .onnx, and their latency; the section."""
    from .latency import report as lreport
    from .latency.config import LatencyConfig
    from .tasks import deploy
    from .tasks import latency as latency_task

    d = out / "deploy"
    short = cfg.data.limit_train > 0
    limit = 100 if short else 500
    files = {"ONNX fp32": d / "pruned.onnx", "ExecuTorch fp32": d / "pruned.pte",
             "ExecuTorch int8": d / "pruned-int8.pte"}
    results = {}
    for name, path in files.items():
        quant = "int8" if "int8" in name else None
        results[name] = deploy.export_command(str(pruned), path, "onnx" if path.suffix == ".onnx" else "executorch",
                                              quant, calibrate=1 if short else 4, limit=limit, force=True)
        print(f"  {name}: {path.name}, max relative difference from PyTorch "
              f"{results[name]['parity']['max_rel_diff']:.1e}", flush=True)
    lcfg = from_dict(LatencyConfig, {  # the files just written, each on its runtime, interleaved in one condition
        "name": "demo-deploy-latency",
        "models": [{"onnx" if p.suffix == ".onnx" else "pte": str(p), "label": name} for name, p in files.items()],
        "grid": {"loads": [{"workers": 0}], "threads": [1], "backends": ["onnxruntime", "executorch"]},
        "protocol": {"warmup": 5, "samples": 20 if short else 100, "block": 10, "settle_seconds": 0.0}})
    latency_task.run(lcfg, d / "latency", force=True, log=lambda line: None, progress=False, report=False)
    data = lreport.load_run(d / "latency")
    med = {m: float(np.median(data.samples["latency_s"][data.samples["model"] == m])) for m in data.models}
    acc = results["ExecuTorch int8"]["accuracy"]
    rows = [[name, p.name, f"{p.stat().st_size / 1e6:.2f}", f"{results[name]['parity']['max_rel_diff']:.1e}",
             f"{1e3 * med[name]:.3f}" if name in med else "–"] for name, p in files.items()]
    acc_text = ", ".join(f"{k} {100 * acc['pytorch'][k]:.1f}% -> {100 * acc['exported'][k]:.1f}%"
                         for k in acc["pytorch"] if k != "mean")
    text = ("`leancnn export` of the stage-5 pruned, fine-tuned classifier (`deploy/`; docs/deploy.md): each file "
            "loaded in its own runtime and run beside PyTorch on the same inputs, then the three files timed by "
            "`leancnn latency` (onnxruntime and ExecuTorch's runtime, interleaved, batch 1, one thread, idle, median "
            f"of {lcfg.protocol.samples}):\n\n"
            + report.format_table(rows, ["format", "file", "MB", "max rel. diff vs PyTorch", "median ms"],
                                  markdown=True)
            + "\n\nint8 (XNNPACK quantizer, calibrated on training batches): test accuracy PyTorch -> int8 on "
              f"{limit} images per domain: {acc_text}"
              + (f" (mean {100 * acc['pytorch']['mean']:.1f}% -> {100 * acc['exported']['mean']:.1f}%)"
                 if "mean" in acc["pytorch"] else "")
            + ". Measured across models, seeds and loads: docs/results.md and docs/benchmarks.md.")
    return "Deployment: ExecuTorch fp32 / int8 and ONNX", text


# Stage 7: latency-aware pruning search on the stage-1 classifier: a few trials of `leancnn search prune` (per-bucket
# ratios + round_to against the p99 of PyTorch eager, worst of idle and one CPU hog), the Pareto plot.
DEMO_SEARCH = {"name": "demo-search", "search": {"trials": 6, "sampler": "random"},
               "latency": {"loads": [0, 1], "statistic": "p99", "condition": "minimax", "samples": 40, "warmup": 3,
                           "settle_seconds": 0.2},
               "space": {"buckets": 3, "round_to": [1, 8], "max_ratio": 0.4}, "target_speedup": 1.1,
               "val_images": 500, "bn_batches": 4, "calib_batches": 2}


def search_section(cfg: ExperimentConfig, out: Path, classifier: str | Path) -> tuple[str, str]:
    """A few trials of ``leancnn search prune`` on the demo's classifier; the report's section (with the plot)."""
    from .tasks.search import LatencyPruneConfig, search_prune

    raw = copy.deepcopy(DEMO_SEARCH)
    if cfg.data.limit_train > 0:  # a shortened demo (tests)
        raw["search"]["trials"] = 3
        raw.update(val_images=100, bn_batches=1, calib_batches=1)
        raw["latency"].update(samples=10, settle_seconds=0.0)
    pcfg = from_dict(LatencyPruneConfig, raw)
    s = search_prune(classifier, pcfg, out / "search", force=True, log=lambda line: print("  " + line, flush=True),
                     command="leancnn search prune <stage-1 run> (demo settings: leancnn.demo.DEMO_SEARCH)")
    text = (f"`leancnn search prune` on the stage-1 {cfg.model.name}: {pcfg.search.trials} trials (the unpruned model "
            f"first) of per-depth-bucket pruning ratios and round_to, each pruned copy recalibrated and scored by "
            f"validation accuracy and by its **measured** p99 latency (PyTorch eager, batch 1, 1 thread), the worse of "
            f"idle and one co-running CPU hog. A real search runs tens of trials (docs/search.md; "
            f"`leancnn search movinet` searches MoViNet architectures the same way).\n\n"
            + s["markdown"].replace("(pareto.png)", "(search/pareto.png)"))
    return "Search: pruning against measured latency", text


# Stage 8: instance retrieval across styles without / with MixStyle (300 identities, 4 views, 8 epochs: ~10 s each)
DEMO_RETRIEVE = ["data.ids=300", "data.views=4", "train.epochs=8", "data.train_styles=[warm]", "data.test_style=cool"]


def retrieve_section(cfg: ExperimentConfig, out: Path, force: bool = False) -> tuple[str, str]:
    """``leancnn retrieve`` vanilla and with MixStyle after layer1 and layer2; the report's section."""
    from .config import load_config
    from .tasks.retrieve import RetrieveConfig, train_retrieve

    short = ["data.ids=60", "train.epochs=1", "data.p=4", "data.k=3"] if cfg.data.limit_train > 0 else []
    rows = []
    for name, extra in (("vanilla", []), ("MixStyle random (layer1, layer2)", ["model.mixstyle.after=[layer1,layer2]"])):
        rcfg = load_config(None, [*DEMO_RETRIEVE, *short, *extra, f"name=demo-retrieve-{name.split()[0].lower()}"],
                           cls=RetrieveConfig)
        s = train_retrieve(rcfg, out=out / "retrieve" / name.split()[0].lower(), quiet=True, force=True)
        t, src = s["test"]["target"], s["test"]["source"]
        rows.append([name, f"{100 * t['rank1']:.1f}%", f"{100 * t['mAP']:.1f}%", f"{100 * src['rank1']:.1f}%",
                     f"{100 * src['mAP']:.1f}%"])
    text = ("`leancnn retrieve`: re-identification of handwriting identities (one identity = one MNIST sample, seen "
            "by 4 views with their own pose), trained on the identities of the training split in the *warm* style "
            "and tested on unseen identities in the unseen *cool* style (and, for reference, in the training "
            "style); ResNet-20, identity loss + batch-hard triplet. One seed and a short run: "
            "`python benchmarks/mixstyle_retrieval.py` measures 3 seeds (docs/results.md).\n\n"
            + report.format_table(rows, ["variant", "unseen style rank-1", "unseen style mAP", "training style rank-1",
                                         "training style mAP"], markdown=True))
    return "MixStyle: retrieval across styles", text


# Stage 6: registration of phantom pairs (32x40x28 fixed grid, 36x36x32 moving grid, 1.5 mm voxels): a local
# network of 0.08M parameters on a half-resolution grid (16x20x14), 8 training and 4 held-out pairs.
DEMO_REGISTER = {
    "name": "demo-register",
    "model": {"kind": "local", "channels": [4, 8, 16]},
    "data": {"fold": 0, "folds": 3, "val_pairs": 0, "scale": 0.5, "augment_scale": 0.0},
    "optim": {"lr": 0.001},
    "train": {"epochs": 40},
}
DEMO_PHANTOMS = {"n": 12, "deformation": 1.0, "affine": 0.15}


def register_section(cfg: ExperimentConfig, out: Path, force: bool = False) -> tuple[str, str]:
    """Write phantom pairs, train a registration network briefly, evaluate it; the report's section."""
    from .data.registration import write_phantoms
    from .tasks import register as reg
    from .tasks.register import RegisterConfig

    data = out / "register" / "phantoms"
    write_phantoms(data, **DEMO_PHANTOMS)
    raw = copy.deepcopy(DEMO_REGISTER)
    raw["data"]["root"] = str(data)
    raw["train"].update(threads=cfg.train.threads, device=cfg.train.device, seed=cfg.train.seed)
    if cfg.data.limit_train > 0:  # a shortened demo (tests)
        raw["train"]["epochs"] = 3
    rcfg = from_dict(RegisterConfig, raw)
    summary = reg.train_register(rcfg, out=out / "register" / "run", quiet=True, force=force)
    model, _ = reg.load_register_model(summary["checkpoint"], torch.device(rcfg.train.device
                                                                            if rcfg.train.device != "auto" else "cpu"))
    device = next(model.parameters()).device
    rows, pics = [], []
    for split in ("train", "test"):
        pairs = reg.open_pairs(rcfg, summary["splits"][split])
        per_pair: list[dict] = []
        s = reg.summarise_rows(reg.register_and_score(model, pairs, rcfg.data.scale, device, "register", False,
                                                        rcfg.data.initial, pair_rows=per_pair), per_pair)
        name = "training pairs" if split == "train" else "held-out pairs"
        for metric, key, digits in (("gland Dice", "gland_dice", 3), ("landmark TRE (mm)", "landmark_tre", 2),
                                    ("gland HD95 (mm)", "gland_hd95", 2)):
            suffix = "_mm" if "tre" in key or "hd95" in key else ""
            b, a = s[f"{key}_before{suffix}"], s[f"{key}_after{suffix}"]
            rows.append([name, metric, str(a["n"]), f"{b['median']:.{digits}f}", f"{a['median']:.{digits}f}"])
        rows.append([name, "folding (% voxels, det J <= 0)", str(s["folding"]["n"]), "0",
                     f"{100 * s['folding']['median']:.3f}"])
        pair = pairs[0]
        ddf = reg.predict_ddf(model, pair, rcfg.data.scale, device, rcfg.data.initial)
        path = out / f"register_{split}.png"
        reg.overlay_figure(pair, ddf, reg.score_pair(pair, ddf, rcfg.data.initial), path,
                           title=f"{name[:-1]} {pair.id}: green = fixed gland and landmarks, red = moving",
                           initial=rcfg.data.initial)
        pics.append(f"![{name}: a registered pair]({path.name})")
    last = summary["history"][-1]
    text = (f"`leancnn register` (label-driven weakly-supervised registration, Hu et al. 2018) on {DEMO_PHANTOMS['n']} "
            "synthetic phantom pairs: an MR-like moving volume (36x36x32) and an ultrasound-like fixed volume "
            "(32x40x28; gland darker than its surroundings, speckle, bias field) of the same anatomy (a gland, "
            "landmarks of tens of voxels) under a random affine map and a smooth deformation. A local network of "
            f"{summary['params']:,} parameters trained for {rcfg.train.epochs} epochs on "
            f"{len(summary['splits']['train'])} pairs ({last['train_pairs_per_s']:.0f} pairs/s), with the labels "
            "in the loss only; registering needs the images alone. Medians, before and after registration:\n\n"
            + report.format_table(rows, ["pairs", "metric", "n", "before", "after"], markdown=True)
            + "\n\nA run this short fits its training pairs; generalising to new pairs takes thousands of steps "
            "and more pairs: the cross-validated numbers on the 80 real MR-US pairs are in docs/results.md "
            "(`python benchmarks/registration_cv.py`).\n\n" + "\n".join(pics))
    return "Registration: MR-to-ultrasound-like phantoms", text


def default_demo_config(overrides=()) -> ExperimentConfig:
    return from_dict(ExperimentConfig, apply_overrides(copy.deepcopy(DEMO_CONFIG), list(overrides)))


def bias_loss_sections(cfg: ExperimentConfig, summary: dict, model, out: Path) -> list[tuple[str, str]]:
    """Bias Loss diagnostics: the share of low-diversity samples per epoch and their accuracy vs the rest,
    and per-sample feature variance against correctness on the test sets."""
    history = summary["history"]
    if "bias_low_share" not in history[0]:
        return []
    rows = [[r["epoch"], f"{100 * r['bias_low_share']:.1f}%", f"{100 * r['bias_low_acc']:.1f}%",
             f"{100 * r['bias_rest_acc']:.1f}%", f"{r['bias_mean_weight']:.3f}"] for r in history]
    table = report.format_table(rows, ["epoch", f"low-diversity share (v̂ < {cfg.loss.low_threshold})",
                                       "their train acc", "rest train acc", "mean weight z"], markdown=True)
    _, _, tests = build_datasets(cfg.data)
    variance, correct = variance_and_correctness(model, ConcatDataset(list(tests.values())), cfg,
                                                 next(model.parameters()).device)
    report.plot_variance_correctness(variance, correct, out / "variance.png", title="test sets: feature variance")
    low = variance <= np.quantile(variance, 0.1)
    text = (f"Bias Loss (alpha = {cfg.loss.alpha}, beta = {cfg.loss.beta}, {cfg.loss.normalisation} "
            f"normalisation) scales each sample's cross-entropy by z = exp(alpha·v̂) − beta, where v̂ is the "
            f"min-max-normalised variance of its last feature map: low-diversity samples weigh less.\n\n{table}\n\n"
            f"On the test sets, the 10% of samples with the lowest feature variance are "
            f"{100 * correct[low].mean():.1f}% correct, the other 90% {100 * correct[~low].mean():.1f}%.\n\n"
            f"![feature variance against correctness](variance.png)")
    return [("Bias Loss diagnostics", text)]


def _threads_text(summary: dict) -> str:
    """``threads auto: 2, then 1 from 12 s (0.9 CPU busy elsewhere)`` from a run's ``summary["threads"]``."""
    rec = summary.get("threads") or {}
    choices = rec.get("choices") or []
    if not choices:
        return "threads: not recorded"
    steps = [f"{c['threads']}" + (f" from {c['t']:g} s" if c["t"] else "")
             + (f" ({c['busy']:.1f} CPU busy elsewhere)" if c.get("busy") is not None else "") for c in choices]
    return f"threads {rec.get('setting')} ({rec.get('source')}): " + ", then ".join(steps)


def run_demo(cfg: ExperimentConfig, out: str | Path | None = None, force: bool = False,
             config_file: str | Path | None = None) -> Path:
    """Run every stage and write ``<run>/report.md``; returns its path. A directory that already holds a demo
    is refused unless ``force`` (stage 2's runs are then reused where their fingerprints match; every stage
    replaces only the files it wrote, other files stay). ``out`` may not be, lie inside or hold the config file
    (``config_file``), the ``model.init`` weights or the cached data."""
    start = time.perf_counter()
    out = check_path_arg(out, "-o") or Path(cfg.output_dir) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    inputs = [("config file", config_file), *checkpoint_inputs(cfg.model.init, "model.init"),
              *data_inputs("digits", "video")]
    check_output_dir(check_output(out, inputs, "-o"))
    if not force and ((out / "report.md").exists() or held_run_files(out / "train")):
        raise LeancnnError(f"'{out}' already holds a demo; add --force to replace it, or choose another -o")
    print(f"[demo 1/{N_STAGES}] training {cfg.model.name} with loss '{cfg.loss.name}' on {', '.join(cfg.data.domains)} "
          f"for {cfg.train.epochs} epochs")
    summary = train(cfg, out=out / "train", quiet=True, force=force)
    stage_times = [time.perf_counter() - start]
    model = build_model(cfg)
    load_model_state(model, load_checkpoint(summary["checkpoint"]), summary["checkpoint"])
    size = get_model_entry(cfg.model.name).input_size
    rows = test_rows(summary["test"])
    table = report.format_table(rows, ["test set", "images", "accuracy", "loss"], markdown=True)
    last = summary["history"][-1]
    sections = [
        ("Setup", f"- model: `{cfg.model.name}`, {count_params(model):,} parameters, "
                  f"{count_macs(model, size) / 1e6:.2f}M MACs at {'x'.join(map(str, size))}\n"
                  f"- data: digit domains {', '.join(cfg.data.domains)} (train/val/test split seed "
                  f"{cfg.data.split_seed})\n- machine: {report.machine_description()}; stage 1 {_threads_text(summary)}\n"
                  f"- run directory: `{summary['run_dir']}` (config.yaml, metrics.jsonl, best.pt, last.pt)"),
        ("Classification: test accuracy per domain", table + "\n\nBest validation accuracy "
         f"{100 * summary['best_val_acc']:.2f}%; last epoch trained at {last['train_images_per_s']:.0f} images/s."),
        ("Training curves", "![training curves](train/curves.png)"),
        *bias_loss_sections(cfg, summary, model, out),
    ]
    print(f"[demo 2/{N_STAGES}] leave-one-domain-out on {DEMO_LODO_TARGET}: ResNet-20 without / with MixStyle", flush=True)
    sections.append(mixstyle_section(cfg, out))
    stage_times.append(time.perf_counter() - start - sum(stage_times))
    print(f"[demo 3/{N_STAGES}] MoViNet-A0 stream: brief training on moving-digits actions, then a long video streamed "
          "frame by frame", flush=True)
    video_sec, stream_ckpt = video_section(cfg, out, force)
    sections.append(video_sec)
    stage_times.append(time.perf_counter() - start - sum(stage_times))
    print(f"[demo 4/{N_STAGES}] latency under CPU contention: the demo's models idle and with a CPU hog per core, "
          "PyTorch eager and onnxruntime", flush=True)
    sections.append(latency_section(cfg, out, summary["checkpoint"], stream_ckpt, force))
    stage_times.append(time.perf_counter() - start - sum(stage_times))
    print(f"[demo 5/{N_STAGES}] pruning: the stage-1 classifier to half its MACs with blended criteria, fine-tuned "
          "briefly", flush=True)
    prune_sec, pruned_ckpt = prune_section(cfg, out, summary["checkpoint"], force)
    sections.append(prune_sec)
    stage_times.append(time.perf_counter() - start - sum(stage_times))
    print(f"[demo 6/{N_STAGES}] registration: a network trained briefly on MR/ultrasound-like phantom pairs, "
          "Dice and TRE before and after", flush=True)
    sections.append(register_section(cfg, out, force))
    stage_times.append(time.perf_counter() - start - sum(stage_times))
    print(f"[demo 7/{N_STAGES}] search: pruning plans of the stage-1 classifier against measured p99 latency "
          "(a few trials)", flush=True)
    sections.append(search_section(cfg, out, summary["checkpoint"]))
    stage_times.append(time.perf_counter() - start - sum(stage_times))
    print(f"[demo 8/{N_STAGES}] retrieval across styles: re-identification without and with MixStyle",
          flush=True)
    sections.append(retrieve_section(cfg, out, force))
    stage_times.append(time.perf_counter() - start - sum(stage_times))
    print(f"[demo 9/{N_STAGES}] deployment: the pruned classifier exported to ExecuTorch (fp32, int8) and ONNX, "
          "checked against PyTorch and timed side by side", flush=True)
    sections.append(deploy_section(cfg, out, pruned_ckpt))
    stage_times.append(time.perf_counter() - start - sum(stage_times))
    sections.append(("Config", "```yaml\n" + dump_config(cfg) + "```"))
    elapsed = time.perf_counter() - start
    per_stage = ", ".join(f"stage {i} {t:.0f} s" for i, t in enumerate(stage_times, 1))
    sections.append(("Time", f"The demo took {elapsed:.0f} s ({per_stage}; the rest is this report)."))
    path = report.write_markdown(out / "report.md", "leancnn demo", sections)
    print("\n" + report.format_table(rows, ["test set", "images", "accuracy", "loss"]))
    print(f"\nreport written to {path}")
    return path
