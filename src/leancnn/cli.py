"""``leancnn``: argument parsing only. Every command calls into a task or tool module."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .errors import LeancnnError
from .interrupts import die_with_launcher, reports_interrupt, sigterm_raises

# --force everywhere (docs/training.md, "Runs, resume and reuse"): -o is never an input, nor inside or holding one;
# --force deletes only the files leancnn wrote there, only after every check; other files are never removed
FORCE_RUN = ("replace the run that -o already holds: only its run files (checkpoints, metrics, summary, ...) are "
             "deleted, once every check has passed; other files stay (-o may never be, lie inside or hold an input)")
FORCE_FOLDER = ("write into a non-empty -o: the files leancnn wrote there earlier are replaced, once every check has "
                "passed; other files stay (-o may never be, lie inside or hold an input)")
FORCE_FILE = "replace the output file if it exists"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML experiment file (see configs/); defaults apply when omitted")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. optim.lr=0.1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leancnn", description="Compact convolutional networks, from training to deployment.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"leancnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("models", help="table of registered models with parameters and MACs",
                       description="List registered models with parameters and multiply-accumulates (conv/linear) "
                                   "at their default input size.")
    p.add_argument("pattern", nargs="?", help="only names containing this text")
    p.add_argument("--input", help="input size CxHxW instead of each model's default, e.g. 3x64x64")

    p = sub.add_parser("data", help="prepare and inspect the datasets, draw a sample grid",
                       description="Digit domains built from data shipped in installed packages, cached under "
                                   "$LEANCNN_CACHE (default ~/.cache/leancnn).")
    dsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = dsub.add_parser("prepare", help="build and cache domains (all by default) and describe them")
    q.add_argument("names", nargs="*", help="domains (mnist, mnistm, syn, uci)")
    q = dsub.add_parser("inspect", help="describe one domain: size, classes, per-class counts, splits")
    q.add_argument("name")
    q.add_argument("--seed", type=int, default=0, help="split seed")
    q = dsub.add_parser("grid", help="write an image grid of samples, one row per domain")
    q.add_argument("names", nargs="*", help="domains (default: all)")
    q.add_argument("-o", "--out", default="digits-grid.png", help="image path; its suffix picks the format: "
                                                                  ".png, .jpg/.jpeg, .pdf, .svg, .webp "
                                                                  "(default: digits-grid.png)")
    q.add_argument("--per-domain", type=int, default=10, help="samples per row, 1 to 100 "
                                                              "(default 10: one per class)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--force", action="store_true", help=FORCE_FILE)

    p = sub.add_parser("train", help="train a model from a YAML config",
                       description="Train a model. Single process by default; under "
                                   "`torchrun --nproc_per_node=N -m leancnn train ...` the same command trains with DDP.")
    _add_config_args(p)
    p.add_argument("-o", "--out", help="run directory (default: <output_dir>/<name>-<time>; with --resume, the "
                                       "checkpoint's directory)")
    p.add_argument("--resume", help="checkpoint (or run directory) to continue exactly; its config is used "
                                    "unless -c is given. Only train.epochs, train.device, train.threads, "
                                    "data.num_workers, data.eval_batch_size, name and output_dir may change")
    p.add_argument("--force", action="store_true", help=FORCE_RUN)
    p.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="train with DDP in N processes on this machine (the same as torchrun "
                        "--nproc_per_node=N -m leancnn train ..., with the config checked once before any starts)")

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the test (or another) split",
                       description="Evaluate a checkpoint. By default on the test sets of the run's domains.")
    p.add_argument("checkpoint", help="a .pt checkpoint or a run directory (uses its best.pt, else last.pt; a "
                                      "prune run's pruned.pt)")
    p.add_argument("--domains", nargs="+", help="domains to evaluate on (default: those of the run)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--limit", type=int, default=0, metavar="N", help="evaluate only N images of each set (a fixed "
                   "random subset, seeded by the run's data.split_seed; default 0: all)")
    p.add_argument("--force", action="store_true", help="replace the --plot-variance file if it exists")
    p.add_argument("--plot-variance", metavar="PNG", help="also plot per-sample feature variance (Bias Loss's "
                                                          "diversity signal) against correctness")

    p = sub.add_parser("lodo", help="leave-one-domain-out: train on all domains but one, test on it; table",
                       description="Leave-one-domain-out protocol on the digit domains: for every target domain, "
                                   "train on the others and test on the held-out domain (the whole domain, unless "
                                   "data.limit_eval draws a random subset of it or data.test_split=test takes its "
                                   "test split; lodo.md says which), for each seed and variant. Finished runs "
                                   "are reused, interrupted ones resumed. Prints the per-target table (mean ± std "
                                   "over seeds) and the average; writes lodo.md, lodo.json and lodo.png into the "
                                   "output directory.")
    _add_config_args(p)
    p.add_argument("-o", "--out", help="output directory (default: <output_dir>/lodo-<config name>)")
    p.add_argument("--targets", nargs="+", help="held-out domains (default: all of mnist, mnistm, syn, uci)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    p.add_argument("--variant", action="append", metavar="'NAME: key=value ...'",
                   help="a named variant of the config, repeatable, e.g. --variant vanilla --variant "
                        "'crossdomain: model.mixstyle.after=[layer1,layer2] model.mixstyle.mix=crossdomain "
                        "data.sampler=domain' (default: one variant, 'run')")
    p.add_argument("--shard", default="0/1", metavar="I/N", help="train only runs i, i+n, ... (split over "
                                                                  "processes; re-run with 0/1 to collect)")

    _add_export_parser(sub)
    _add_video_parser(sub)
    _add_latency_parser(sub)
    _add_prune_parser(sub)
    _add_search_parser(sub)
    _add_retrieve_parser(sub)
    _add_rl_parser(sub)
    _add_register_parser(sub)

    p = sub.add_parser("demo", help="the whole pipeline in a few minutes, with a Markdown report",
                       description="Train a small model on the four digit domains, evaluate it and write "
                                   "runs/demo-<time>/report.md with a results table and the training curves.")
    _add_config_args(p)
    p.add_argument("-o", "--out", help="run directory (default: runs/demo-<time>)")
    p.add_argument("--force", action="store_true", help="replace the demo that -o already holds: each stage "
                                                        "deletes only the files it wrote, once its checks have "
                                                        "passed; other files stay")
    _add_threads_args(sub)
    return parser


# commands that compute with torch: they take --threads, and the entry point sets OpenMP's wait policy for them
# (the latency tool's own measured conditions set their threads themselves and keep the user's environment)
_COMPUTING = {"train": None, "evaluate": None, "lodo": None, "demo": None, "prune": None,
              "video": ("train", "evaluate", "ensemble", "stream", "export"),
              "register": ("train", "predict", "evaluate"), "retrieve": ("train", "evaluate"),
              "rl": ("train", "evaluate"), "export": None}


def _threads_type(text: str):
    from .threads import parse_threads

    try:
        return parse_threads(text, "--threads")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_threads_args(sub) -> None:
    for name, actions in _COMPUTING.items():
        parser = sub.choices[name]
        targets = [parser] if actions is None else [
            next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[act]  # noqa: SLF001
            for act in actions]
        for q in targets:
            q.add_argument("--threads", type=_threads_type, default=None, metavar="auto|N",
                           help="torch intra-op threads: auto (the default) follows the machine: its free cores, "
                                "re-checked as the work goes; N fixes N (wins over the config's train.threads)")


def _computing(args: argparse.Namespace) -> bool:
    actions = _COMPUTING.get(args.command, False)
    return actions is None or (actions is not False and getattr(args, "action", None) in actions)


def _add_prune_parser(sub) -> None:
    p = sub.add_parser("prune", help="structural filter pruning with single or blended criteria (and a search)",
                       description="Prune a trained digit classifier to a MAC target (docs/pruning.md): "
                                   "`leancnn prune RUN_OR_CHECKPOINT --target-macs 0.5 --criteria l1 bn taylor "
                                   "--search ea`; `leancnn prune analyse RUN_OR_CHECKPOINT --criteria ...` "
                                   "clusters the criteria only. The input checkpoint is never modified.")
    p.add_argument("source", nargs="+", metavar="[analyse] RUN_OR_CHECKPOINT",
                   help="a training run directory or checkpoint (prefix 'analyse' for the clustering alone)")
    p.add_argument("-c", "--config", help="YAML prune config: the keys of leancnn.tasks.prune.PruneConfig (docs/pruning.md "
                                          "explains them); defaults apply when omitted")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. search.population=8")
    p.add_argument("-o", "--out", help="output directory (default runs/<name>-<time>)")
    p.add_argument("--force", action="store_true", help=FORCE_FOLDER)
    p.add_argument("--target-macs", type=float, help="fraction of the MACs kept (e.g. 0.5)")
    p.add_argument("--criteria", nargs="+", help="one criterion, or several to blend: l1, l2, fpgm, bn, taylor, "
                                                 "act_mean, apoz, entropy, hrank, random")
    p.add_argument("--search", choices=["none", "ea"], help="ea: evolutionary search of the blend's weights")
    p.add_argument("--finetune-epochs", type=int, help="fine-tune the pruned model for N epochs (0: none)")


def _run_prune(args: argparse.Namespace) -> int:
    from .tasks import prune

    src = list(args.source)
    if src[0] == "analyse":
        if len(src) != 2:
            raise LeancnnError("usage: leancnn prune analyse RUN_OR_CHECKPOINT --criteria C1 C2 ... [-o DIR]")
        from .config import load_config
        from .tasks.prune import PruneConfig

        pcfg = load_config(args.config, args.overrides, cls=PruneConfig)
        prune.analyse(src[1], args.criteria or ["l1", "l2", "fpgm", "bn", "taylor", "act_mean", "apoz", "entropy",
                                                 "hrank", "random"], args.out or "runs/prune-analyse", pcfg,
                      force=args.force, config_file=args.config)
        return 0
    if len(src) != 1:
        raise LeancnnError(f"give one run directory or checkpoint, got {src}")
    return prune.prune_command(src[0], args.config, args.overrides, args.out, args.force, args.target_macs,
                               args.criteria, args.search, args.finetune_epochs)


def _add_search_parser(sub) -> None:
    p = sub.add_parser("search", help="search architectures / pruning plans against measured latency (Optuna)",
                       description="Hardware-aware search (docs/search.md): `leancnn search movinet` (MoViNet stream "
                                   "architectures, accuracy vs measured per-frame latency), `leancnn search prune RUN` "
                                   "(per-layer pruning ratios and round_to against measured latency), `leancnn search "
                                   "report DIR` (rewrite a search's report). A study lives in DIR/study.db or any "
                                   "database URL (search.storage=...); several workers may share it (--join).")
    ssub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("movinet", "MoViNet stream architectures: short training + measured stream-step latency"),
                       ("prune", "latency-aware pruning of a trained digit classifier (the source is only read)")):
        q = ssub.add_parser(name, help=text)
        if name == "prune":
            q.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="the trained classifier to prune")
        q.add_argument("-c", "--config", help="YAML search config (keys: docs/search.md); defaults apply when omitted")
        q.add_argument("overrides", nargs="*", metavar="key.sub=value",
                       help="config overrides, e.g. latency.loads=[0,2] latency.condition=load")
        q.add_argument("-o", "--out", help="output directory (default runs/<name>-<time>): study.db, trials, report")
        q.add_argument("--trials", type=int, help="finished trials the study should hold (all workers together)")
        q.add_argument("--timeout-min", type=float, dest="timeout_minutes",
                       help="start no new trial after this many minutes (this worker)")
        q.add_argument("--storage", help="database URL of the study (default sqlite:///<out>/study.db); e.g. "
                                         "postgresql://user:pw@host/db for workers on several machines")
        g = q.add_mutually_exclusive_group()
        g.add_argument("--resume", action="store_true", help="continue the study that -o (or --storage) holds")
        g.add_argument("--join", action="store_true", help="add this process as a worker of a running study")
        g.add_argument("--force", action="store_true", help=FORCE_FOLDER)
    q = ssub.add_parser("report", help="rewrite the report of a search folder (optionally under another statistic)")
    q.add_argument("out", metavar="DIR")
    q.add_argument("--condition", choices=["idle", "load", "minimax"], help="read the latency at this condition")
    q.add_argument("--statistic", choices=["p50", "p99"], help="read this latency statistic")


def _run_search(args: argparse.Namespace) -> int:
    from .tasks import search

    if args.action == "report":
        return search.report_command(args.out, args.condition, args.statistic)
    return search.search_command(args.action, getattr(args, "source", None), args.config, args.overrides, args.out,
                                 args.resume, args.join, args.force, args.trials, args.timeout_minutes, args.storage,
                                 command="leancnn " + " ".join(sys.argv[1:]))


def _add_retrieve_parser(sub) -> None:
    p = sub.add_parser("retrieve", help="instance retrieval (re-ID) across visual domains: train, evaluate",
                       description="Re-identification of digit identities across styles (docs/mixstyle.md): train on "
                                   "some identities in the training styles, test on unseen identities in an unseen "
                                   "style; CMC rank-1/5/10 and mAP. MixStyle by name: model.mixstyle.after=[...].")
    rsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = rsub.add_parser("train", help="train a retrieval model (label-smoothed identity loss + batch-hard triplet)")
    _add_config_args(q)
    q.add_argument("-o", "--out", help="run directory (default runs/<name>-<time>)")
    q.add_argument("--resume", help="a run directory or last.pt to continue (train.epochs=N extends it)")
    q.add_argument("--force", action="store_true", help=FORCE_RUN)
    q = rsub.add_parser("evaluate", help="rank-1/5/10 and mAP of a run on its unseen-style and training-style tests")
    q.add_argument("checkpoint", help="a retrieval run directory or checkpoint")
    q.add_argument("--device", default="cpu")


def _run_retrieve(args: argparse.Namespace) -> int:
    from . import report
    from .tasks import retrieve

    if args.action == "train":
        return retrieve.train_command(args.config, args.overrides, args.resume, args.out, args.force)
    results = retrieve.evaluate_checkpoint(args.checkpoint, args.device)
    print(report.format_table(retrieve.result_rows(results), ["test", "rank-1", "rank-5", "rank-10", "mAP"]))
    return 0


def _add_rl_parser(sub) -> None:
    p = sub.add_parser("rl", help="PPO in pixels under visual shift (MiniGrid styles), with MixStyle: train, evaluate",
                       description="PPO (stable-baselines3) on a MiniGrid task seen in pixels, trained in some visual "
                                   "styles and tested in unseen ones (docs/mixstyle.md). The feature extractor is a "
                                   "leancnn model (default the IMPALA CNN); MixStyle by name: "
                                   "model.mixstyle.after=[seq0,seq1].")
    rsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = rsub.add_parser("train", help="train an agent; success rate and return in training and unseen styles")
    _add_config_args(q)
    q.add_argument("-o", "--out", help="run directory (default runs/<name>-<time>)")
    q.add_argument("--resume", help="a run directory or last.pt to continue exactly (train.frames=N extends it)")
    q.add_argument("--force", action="store_true", help=FORCE_RUN)
    q = rsub.add_parser("evaluate", help="success rate and return of a run's agent in its training and unseen styles")
    q.add_argument("checkpoint", help="an RL run directory or its last.pt")
    q.add_argument("--episodes", type=int, help="episodes per style set (default: the run's eval.final_episodes)")
    q.add_argument("--styles", nargs="+", help="evaluate in these styles instead (any of the style table)")
    q.add_argument("--deterministic", action="store_true", help="take the most likely action (default: sample, "
                                                                "as the run's eval.deterministic says)")
    q.add_argument("--device", default="cpu")


def _run_rl(args: argparse.Namespace) -> int:
    from . import report
    from .errors import LeancnnError
    from .tasks import rl

    if args.action == "train":
        return rl.train_command(args.config, args.overrides, args.resume, args.out, args.force)
    if args.episodes is not None and args.episodes < 1:
        raise LeancnnError(f"--episodes must be >= 1, got {args.episodes}")
    results = rl.evaluate_checkpoint(args.checkpoint, args.episodes, args.styles,
                                     True if args.deterministic else None, args.device)
    print(report.format_table(rl.result_rows(results), ["styles", "success", "return", "length", "episodes"]))
    return 0


def _add_latency_parser(sub) -> None:
    p = sub.add_parser("latency", help="latency under CPU contention: measure a grid, report, compare devices",
                       description="Latency variability under CPU contention with rank-reversal analysis "
                                   "(docs/latency.md): models x contention levels x threads x backend x batch, "
                                   "raw samples kept, statistics with bootstrap CIs and Holm-corrected tests.")
    lsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = lsub.add_parser("run", help="measure the grid of a config (configs/latency_*.yaml) and write the report")
    _add_config_args(q)
    q.add_argument("-o", "--out", help="run directory (default: <output_dir>/<name>-<time>)")
    q.add_argument("--quick", action="store_true", help="a smoke run: 3 models, idle and one load level, one "
                                                        "thread setting and backend, 60 samples (< 2 minutes)")
    q.add_argument("--resume", action="store_true", help="finish the interrupted run in --out with its recorded "
                                                         "config (finished conditions are kept; those whose samples "
                                                         "are missing from samples.csv are measured again)")
    q.add_argument("--force", action="store_true", help=FORCE_RUN.replace("run files (checkpoints, metrics, "
                                                                         "summary, ...)", "samples and report"))
    q.add_argument("--no-report", action="store_true", help="measure only (write the report later with "
                                                            "`leancnn latency report`)")
    q = lsub.add_parser("report", help="(re)write the Markdown report of a run directory")
    q.add_argument("run_dir")
    q.add_argument("-o", "--out", help="report directory (default: the run directory)")
    q.add_argument("--force", action="store_true", help="replace the report files another -o already holds "
                                                        "(the run's own report is rewritten without it)")
    q.add_argument("--quantiles", type=float, nargs="+", help="quantiles to test (default: the run's config)")
    q.add_argument("--alpha", type=float, help="family-wise error rate (Holm)")
    q.add_argument("--margin", type=float, help="relative tie band")
    q = lsub.add_parser("compare", help="one report over several runs (e.g. two devices): reversals across them")
    q.add_argument("run_dirs", nargs="+", help="two or more run directories")
    q.add_argument("-o", "--out", required=True, help="report directory")
    q.add_argument("--force", action="store_true", help="replace the report files -o already holds")


def _run_latency(args: argparse.Namespace) -> int:
    from .latency import report as lreport

    if args.action == "run":
        from .tasks import latency as latency_task

        if args.resume and not args.out:
            raise LeancnnError("--resume needs --out: the run directory to finish")
        if args.resume and not args.config:  # the run's own config (run.json), with any overrides
            cfg = latency_task.resume_config(args.out, args.overrides)
        else:
            cfg = latency_task.load_config_file(args.config, args.overrides)
        if args.quick:
            cfg = latency_task.quick_config(cfg)
        out = Path(args.out) if args.out else latency_task.default_out(cfg)
        summary = latency_task.run(cfg, out, resume=args.resume, force=args.force, report=not args.no_report,
                                   command="leancnn " + " ".join(sys.argv[1:]), config_file=args.config)
        print(f"{summary['measured']} condition(s) measured in {summary['seconds']:.0f} s; run directory {out}")
        if summary.get("report"):
            print(f"report written to {summary['report']}")
    elif args.action == "report":
        kw = {k: v for k, v in (("quantiles", tuple(args.quantiles) if args.quantiles else None),
                                ("alpha", args.alpha), ("margin", args.margin)) if v is not None}
        print(f"report written to {lreport.write_report(args.run_dir, args.out, force=args.force, **kw)}")
    else:
        import json

        path = lreport.compare(args.run_dirs, args.out, force=args.force)
        analysis = Path(args.out) / "analysis.json"
        if analysis.is_file():  # which model orders hold across the runs, which reverse
            for line in lreport.cross_device_summary(json.loads(analysis.read_text(encoding="utf-8"))):
                print(line)
        print(f"report written to {path}")
    return 0


def _add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="export a run (or a registered model) to ONNX or ExecuTorch (.pte, XNNPACK; "
                                      "fp32 or int8), checked against PyTorch",
                       description="Export a classifier, a pruned classifier, a video run's stream step (its state "
                                   "as named inputs/outputs) or a registration network to ONNX or to an ExecuTorch "
                                   "program with the XNNPACK delegate (docs/deploy.md). The export is run against "
                                   "PyTorch on the same inputs; int8 (--quantize) calibrates on N training batches "
                                   "and reports the test accuracy before and after. Beside the file: <file>.json "
                                   "(metadata and the check).")
    p.add_argument("model", help="a run (checkpoint or run directory) or a registered model name (random weights)")
    p.add_argument("-o", "--out", required=True, help="the file to write: .pte (executorch) or .onnx")
    p.add_argument("--format", choices=["executorch", "onnx"], default=None,
                   help="default: by the suffix of -o (.pte: executorch, .onnx: onnx)")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="int8 post-training quantization (XNNPACK quantizer, PT2E; executorch only). Default fp32")
    p.add_argument("--calibrate", type=int, default=8, metavar="N",
                   help="training batches int8 calibrates on (default 8)")
    p.add_argument("--input-shape", default=None, metavar="CxHxW",
                   help="one sample's shape (default: the run's data; a registered model: its registry size)")
    p.add_argument("--batch", type=int, default=1, help="the program's (fixed) batch size (default 1)")
    p.add_argument("--frames", type=int, default=1, help="a stream step's new frames per step (default 1)")
    ev = p.add_mutually_exclusive_group()
    ev.add_argument("--evaluate", dest="evaluate", action="store_true", default=None,
                    help="test accuracy of PyTorch and of the program on the run's test split (default: with int8)")
    ev.add_argument("--no-evaluate", dest="evaluate", action="store_false")
    p.add_argument("--limit", type=int, default=0, metavar="N",
                   help="evaluate on a fixed draw of N samples per test set (default 0: all)")
    p.add_argument("--force", action="store_true", help="replace the file (and its .json) if they exist")


def _run_export(args: argparse.Namespace) -> int:
    from . import report
    from .tasks import deploy

    fmt = args.format or {".pte": "executorch", ".onnx": "onnx"}.get(Path(args.out).suffix, "executorch")
    r = deploy.export_command(args.model, args.out, fmt, args.quantize, args.calibrate, args.input_shape,
                              args.batch, args.frames, args.evaluate, args.limit, args.force)
    print(report.format_table(deploy.report_rows(r), ["export", ""]))
    return 0


def _add_video_parser(sub) -> None:
    p = sub.add_parser("video", help="MoViNet video: train, evaluate, stream frame by frame, ensemble, export",
                       description="Video classification with MoViNets (docs/movinet.md): train on the moving-digits "
                                   "actions, evaluate in the frames' order and reversed, stream a video with a "
                                   "constant-size state, average a temporal ensemble, export the stream step to "
                                   "ONNX.")
    vsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = vsub.add_parser("train", help="train a video model from a YAML config (configs/video_*.yaml)")
    _add_config_args(q)
    q.add_argument("-o", "--out", help="run directory (default: <output_dir>/<name>-<time>)")
    q.add_argument("--resume", help="checkpoint to continue exactly (its config is used unless -c is given)")
    q.add_argument("--force", action="store_true", help=FORCE_RUN)
    q.add_argument("--nproc-per-node", type=int, default=1, metavar="N", help="train with DDP in N processes")
    q = vsub.add_parser("evaluate", help="test accuracy of a video run, in the frames' order and reversed")
    q.add_argument("checkpoint", help="a .pt checkpoint or a run directory (best.pt, else last.pt)")
    q.add_argument("--split", default="test", choices=["train", "val", "test"])
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    q = vsub.add_parser("ensemble", help="temporal ensemble: member i sees every k-th frame from offset i; "
                                         "logits averaged")
    q.add_argument("checkpoints", nargs="+", help="two or more checkpoints or run directories")
    q.add_argument("--split", default="test", choices=["train", "val", "test"])
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    q = vsub.add_parser("stream", help="stream a video file, a folder of frames or a synthetic video through a "
                                       "stream model, printing the running top-k")
    q.add_argument("source", nargs="?", help="a video file (decoded with PyAV) or a folder of frames")
    q.add_argument("--synthetic", nargs="?", const="random", metavar="ACTION",
                   help="instead of SOURCE: moving-digits test clips of ACTION (default: a random one) back to back")
    q.add_argument("--model", required=True, help="a stream run (checkpoint or run directory) or a registered "
                                                  "stream model name (random weights, e.g. movinet_a0_stream)")
    q.add_argument("--frames", type=int, default=128, help="length of the synthetic video (default 128)")
    q.add_argument("--max-frames", type=int, help="stop after this many frames of SOURCE")
    q.add_argument("--every", type=int, default=16, help="print the running top-k every N frames (default 16)")
    q.add_argument("--topk", type=int, default=3)
    q.add_argument("--chunk", type=int, default=1, help="frames per stream step (default 1)")
    q.add_argument("--size", help="frame size HxW fed to the model (default: the run's training size)")
    q.add_argument("--fused", action="store_true", help="stream through the fused inference form (BatchNorm "
                                                        "folded, 2-D convs; the same logits, ~2x faster on a CPU)")
    q = vsub.add_parser("export", help="export the stream step (state as named inputs/outputs) to ONNX and "
                                       "check it with onnxruntime")
    q.add_argument("model", help="a stream run (checkpoint or run directory) or a registered stream model name")
    q.add_argument("-o", "--out", required=True, help="the .onnx file")
    q.add_argument("--force", action="store_true", help=FORCE_FILE)
    q.add_argument("--size", help="frame size HxW (default: the run's training size)")
    q.add_argument("--frames", type=int, default=1, help="frames per step in the exported graph (default 1)")
    q = vsub.add_parser("preview", help="write a PNG of example moving-digits clips, a row per action")
    _add_config_args(q)
    q.add_argument("-o", "--out", default="moving-digits.png", help="image path (default moving-digits.png)")
    q.add_argument("--force", action="store_true", help=FORCE_FILE)


def _add_register_parser(sub) -> None:
    p = sub.add_parser("register", help="label-driven weakly-supervised 3-D image registration (MR to ultrasound): "
                                        "train, predict, evaluate",
                       description="Weakly-supervised registration (Hu et al. 2018; docs/registration.md): a 3-D "
                                   "network predicts a dense displacement field from an unlabelled image pair; "
                                   "labels drive the training loss only. Data: a paired NIfTI folder "
                                   "(moving_images/, fixed_images/, moving_labels/, fixed_labels/).")
    rsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = rsub.add_parser("train", help="train a registration network on a labelled paired folder")
    _add_config_args(q)
    q.add_argument("--data", help="the paired NIfTI folder (sets data.root)")
    q.add_argument("-o", "--out", help="run directory (default: <output_dir>/<name>-<time>)")
    q.add_argument("--resume", help="checkpoint to continue exactly (its config is used unless -c is given)")
    q.add_argument("--force", action="store_true", help=FORCE_RUN)
    q = rsub.add_parser("predict", help="register image pairs (images only): write the DDF, the warped moving image "
                                        "(and warped labels when the folder has them) as NIfTI")
    q.add_argument("checkpoint", help="a .pt checkpoint or a run directory (best.pt, else last.pt)")
    q.add_argument("--data", required=True, help="a paired folder; only moving_images/ and fixed_images/ are needed")
    q.add_argument("-o", "--out", required=True, help="output folder (must be new or empty unless --force)")
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _add_infer_args(q)
    q.add_argument("--force", action="store_true", help=FORCE_FOLDER)
    q = rsub.add_parser("evaluate", help="gland Dice and landmark TRE before and after registration: per-pair "
                                         "per-label CSV, summary with medians and quartiles, a PNG per pair")
    q.add_argument("checkpoint", nargs="?", help="a .pt checkpoint or a run directory; omit with --identity")
    q.add_argument("--identity", action="store_true", help="evaluate no registration (the moving volume mapped "
                                                           "on the fixed grid by --initial)")
    q.add_argument("--initial", default=None, choices=["centre", "corners"],
                   help="with --identity: centres aligned, mm kept (default), or corner to corner (label-reg)")
    q.add_argument("--data", required=True, help="a labelled paired folder")
    q.add_argument("-o", "--out", required=True, help="output folder (must be new or empty unless --force)")
    q.add_argument("--split", default="all", choices=["all", "test", "val"],
                   help="all pairs of --data, or the run's test / validation pairs: the ids the run recorded, "
                        "which --data must hold (default all)")
    q.add_argument("--no-png", action="store_true", help="skip the per-pair pictures")
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _add_infer_args(q)
    q.add_argument("--force", action="store_true", help=FORCE_FOLDER)


def _add_infer_args(q) -> None:
    """Inference options of predict / evaluate; each defaults to the run's config (its ``infer`` section)."""
    q.add_argument("--tta", choices=["none", "flips"], default=None,
                   help="test-time flips: average the DDFs of the pair mirrored along each axis (default: the "
                        "run's infer.tta)")
    q.add_argument("--refine", type=int, default=None, metavar="N",
                   help="refine each DDF by N optimiser steps of an image similarity + bending, images only "
                        "(default: the run's infer.refine_steps; 0 = off; see docs/registration.md)")
    q.add_argument("--refine-similarity", choices=["mind", "lncc_grad"], default=None,
                   help="the refinement's similarity: MIND-SSC or LNCC of gradient magnitudes (default: the run's)")


def _infer_overrides(args: argparse.Namespace) -> dict:
    out = {"tta": args.tta, "refine_steps": args.refine, "refine_similarity": args.refine_similarity}
    return {k: v for k, v in out.items() if v is not None}


def _run_register(args: argparse.Namespace) -> int:
    from .tasks import register

    if args.action == "train":
        return register.train_command(args.config, args.overrides, args.data, args.resume, args.out, args.force)
    if args.action == "predict":
        ids = register.predict_folder(args.checkpoint, args.data, args.out, args.device, args.force,
                                      infer=_infer_overrides(args))
        print(f"registered {len(ids)} pair(s); written to {args.out}")
        return 0
    if bool(args.checkpoint) == bool(args.identity):
        raise LeancnnError("give a checkpoint or --identity (not both)")
    register.evaluate_folder(None if args.identity else args.checkpoint, args.data, args.out, args.device,
                             args.split, not args.no_png, args.force, initial=args.initial,
                             infer=_infer_overrides(args))
    return 0


def _run_video(args: argparse.Namespace) -> int:
    from . import report
    from .tasks import video

    if args.action == "train":
        return video.train_command(args.config, args.overrides, args.resume, args.out, args.force,
                                   args.nproc_per_node, args.debug)
    if args.action == "evaluate":
        results = video.evaluate_checkpoint(args.checkpoint, args.split, args.device)
        print(report.format_table(video.result_rows(results), [f"{args.split} clips", "n", "accuracy", "loss",
                                                               "errors = reversed action"]))
    elif args.action == "ensemble":
        r = video.evaluate_ensemble(args.checkpoints, args.split, args.device)
        print(report.format_table(video.ensemble_rows(r), ["model", "frames", "GMACs/clip", "accuracy"]))
    elif args.action == "stream":
        for line in video.stream_command(args.source, args.synthetic, args.model, args.frames, args.max_frames,
                                         args.every, args.topk, args.chunk, args.size, args.threads,
                                         args.fused):
            print(line, flush=True)
    elif args.action == "export":
        r = video.export_checkpoint(args.model, args.out, *video.parse_size(args.size), frames=args.frames,
                                    force=args.force)
        print(f"stream step written to {r['path']} ({r['bytes'] / 2**20:.1f} MiB, {r['height']}x{r['width']}, "
              f"{r['frames_per_step']} frame(s) per step); onnxruntime vs PyTorch over {r['checked_frames']} "
              f"frames: max |logit difference| {r['max_abs_diff']:.2e}")
    elif args.action == "preview":
        path = video.write_preview(args.config, args.overrides, args.out, force=args.force)
        print(f"preview written to {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    # imports are local so that `leancnn --help` stays fast
    from . import report

    if args.command == "models":
        from .tasks.catalog import model_rows, parse_input_size

        size = parse_input_size(args.input) if args.input else None
        print(report.format_table(model_rows(args.pattern, size), ["model", "params", "MACs", "input", "description"]))
    elif args.command == "data":
        from .tasks import catalog

        if args.action == "prepare":
            rows = catalog.dataset_rows(args.names)
            print(report.format_table(rows, ["domain", "images", "classes", "shape", "min/class", "max/class", "source"]))
        elif args.action == "inspect":
            print(catalog.inspect_text(args.name, args.seed))
        else:
            path = catalog.write_sample_grid(args.names, args.out, per_domain=args.per_domain, seed=args.seed,
                                             force=args.force)
            print(f"sample grid written to {path}")
    elif args.command == "train":
        from .tasks.classify import train_command

        return train_command(args.config, args.overrides, args.resume, args.out, args.force, args.nproc_per_node,
                             args.debug)
    elif args.command == "evaluate":
        from .tasks.classify import evaluate_checkpoint
        from .tasks.digits import test_rows
        from .tasks.runs import resolve_checkpoint

        path = resolve_checkpoint(args.checkpoint, "checkpoint")  # a run: best.pt, last.pt or a prune's pruned.pt
        results = evaluate_checkpoint(path, args.domains, args.split, args.device, args.plot_variance,
                                      force=args.force, limit=args.limit)
        print(report.format_table(test_rows(results), [f"{args.split} set", "images", "accuracy", "loss"]))
        if args.plot_variance:
            print(f"variance plot written to {args.plot_variance}")
    elif args.command == "lodo":
        from .config import apply_overrides, read_yaml
        from .tasks.lodo import parse_variant, run_lodo
        from .tasks.runs import check_path_arg

        base = apply_overrides(read_yaml(args.config) if args.config else {}, args.overrides)
        variants = [parse_variant(v) for v in (args.variant or ["run"])]
        try:
            shard = tuple(int(v) for v in args.shard.split("/"))
            assert len(shard) == 2
        except (ValueError, AssertionError):
            raise LeancnnError(f"--shard {args.shard!r}: expected I/N, e.g. 0/2") from None
        out = args.out if args.out is not None else Path(base.get("output_dir", "runs")) / f"lodo-{base.get('name', 'experiment')}"
        results = run_lodo(base, variants, check_path_arg(out, "-o"), args.targets, args.seeds, shard,
                           config_file=args.config)
        print(results["text"])
        if results["missing"]:
            print(f"{len(results['missing'])} run(s) not finished yet (other shards?); re-run to collect")
        else:
            print(f"table written to {Path(out) / 'lodo.md'}")
    elif args.command == "video":
        return _run_video(args)
    elif args.command == "export":
        return _run_export(args)
    elif args.command == "latency":
        return _run_latency(args)
    elif args.command == "prune":
        return _run_prune(args)
    elif args.command == "search":
        return _run_search(args)
    elif args.command == "retrieve":
        return _run_retrieve(args)
    elif args.command == "rl":
        return _run_rl(args)
    elif args.command == "register":
        return _run_register(args)
    elif args.command == "demo":
        from .config import load_config
        from .demo import default_demo_config, run_demo

        cfg = load_config(args.config, args.overrides) if args.config else default_demo_config(args.overrides)
        run_demo(cfg, out=args.out, force=args.force, config_file=args.config)
    return 0


_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Like ``parse_args``, but ``key.sub=value`` overrides may stand anywhere after the command, also after
    options and after list options (``leancnn lodo --seeds 0 1 -o DIR train.epochs=3``): they are taken out
    first (except where they are the value of an option, ``-o a=b``) and given to the command's overrides."""
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = parser._subparsers._group_actions[0].choices if parser._subparsers else {}  # noqa: SLF001
    cmd = next((i for i, a in enumerate(argv) if a in sub), None)
    overrides: list[str] = []
    command = sub[argv[cmd]] if cmd is not None else None
    nested = next((a.choices for a in command._actions if isinstance(a, argparse._SubParsersAction)),  # noqa: SLF001
                  None) if command is not None else None
    if nested:  # a command with actions (leancnn video train ...): the action's parser takes the overrides
        cmd = next((i for i in range(cmd + 1, len(argv)) if argv[i] in nested), None)
        command = nested[argv[cmd]] if cmd is not None else None
    if command is not None and any(a.dest == "overrides" for a in command._actions):  # noqa: SLF001
        takes_value = {o for a in command._actions if a.option_strings and a.nargs is None  # noqa: SLF001
                       and not isinstance(a, (argparse._StoreTrueAction, argparse._HelpAction))  # noqa: SLF001
                       for o in a.option_strings}
        rest = argv[:cmd + 1]
        for i in range(cmd + 1, len(argv)):
            if _OVERRIDE.match(argv[i]) and argv[i - 1] not in takes_value and argv[i - 1] != "--":
                overrides.append(argv[i])
            else:
                rest.append(argv[i])
        argv = rest
    args = parser.parse_args(argv)
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        # SIGTERM ends a command as Ctrl-C does, also while torch loads: the same cleanup, the same one line
        with sigterm_raises():
            die_with_launcher()  # a --nproc-per-node worker ends with its launcher, however that ends
            if _computing(args):
                from . import threads

                threads.force(args.threads)
                threads.prepare_environment()  # before torch loads: OpenMP reads its wait policy once
                threads.apply()  # --threads, LEANCNN_THREADS or auto; a training run re-applies its train.threads
            return _run(args)
    except KeyboardInterrupt as e:
        if reports_interrupt():
            print("interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except (LeancnnError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError,
            NotADirectoryError) as e:
        if args.debug:
            raise
        from .train.distributed import env_rank

        if env_rank() == 0:  # under torchrun every rank meets the same error: rank 0 reports it
            message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())  # always one line
            print(f"leancnn {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
