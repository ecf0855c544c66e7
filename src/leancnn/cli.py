"""``leancnn``: argument parsing only. Every command calls into a task or tool module."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import LeancnnError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML experiment file (see configs/); defaults apply when omitted")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. optim.lr=0.1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leancnn", description="Compact convolutional networks, from training to deployment.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
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
    q = dsub.add_parser("grid", help="write a PNG grid of samples, one row per domain")
    q.add_argument("names", nargs="*", help="domains (default: all)")
    q.add_argument("-o", "--out", default="digits-grid.png", help="PNG path (default: digits-grid.png)")
    q.add_argument("--per-domain", type=int, default=10, help="samples per row (default 10: one per class)")
    q.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train", help="train a model from a YAML config",
                       description="Train a model. Single process by default; under "
                                   "`torchrun --nproc_per_node=N -m leancnn train ...` the same command trains with DDP.")
    _add_config_args(p)
    p.add_argument("-o", "--out", help="run directory (default: <output_dir>/<name>-<time>)")
    p.add_argument("--resume", help="checkpoint (or run directory) to continue exactly; its config is used "
                                    "unless -c is given")

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the test (or another) split",
                       description="Evaluate a checkpoint. By default on the test sets of the run's domains.")
    p.add_argument("checkpoint", help="a .pt checkpoint or a run directory (uses its best.pt, else last.pt)")
    p.add_argument("--domains", nargs="+", help="domains to evaluate on (default: those of the run)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--plot-variance", metavar="PNG", help="also plot per-sample feature variance (Bias Loss's "
                                                          "diversity signal) against correctness")

    p = sub.add_parser("lodo", help="leave-one-domain-out: train on all domains but one, test on it; table",
                       description="Leave-one-domain-out protocol on the digit domains: for every target domain, "
                                   "train on the others and test on the whole held-out domain, for each seed and "
                                   "variant. Finished runs are reused, interrupted ones resumed. Prints the "
                                   "per-target table (mean ± std over seeds) and the average; writes lodo.md, "
                                   "lodo.json and lodo.png into the output directory.")
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

    p = sub.add_parser("demo", help="the whole pipeline in a few minutes, with a Markdown report",
                       description="Train a small model on the four digit domains, evaluate it and write "
                                   "runs/demo-<time>/report.md with a results table and the training curves.")
    _add_config_args(p)
    p.add_argument("-o", "--out", help="run directory (default: runs/demo-<time>)")
    return parser


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
            from .data import DOMAINS, sample_grid

            path = sample_grid(args.names or list(DOMAINS), args.out, per_domain=args.per_domain, seed=args.seed)
            print(f"sample grid written to {path}")
    elif args.command == "train":
        from .tasks.classify import resolve_train_config, train

        cfg, out = resolve_train_config(args.config, args.overrides, args.resume, args.out)
        train(cfg, out=out, resume=args.resume)
    elif args.command == "evaluate":
        from .tasks.classify import evaluate_checkpoint, test_rows

        path = Path(args.checkpoint)
        if path.is_dir():
            path = path / "best.pt" if (path / "best.pt").exists() else path / "last.pt"
        results = evaluate_checkpoint(path, args.domains, args.split, args.device, args.plot_variance)
        print(report.format_table(test_rows(results), [f"{args.split} set", "images", "accuracy", "loss"]))
        if args.plot_variance:
            print(f"variance plot written to {args.plot_variance}")
    elif args.command == "lodo":
        from .config import apply_overrides, read_yaml
        from .tasks.lodo import parse_variant, run_lodo

        base = apply_overrides(read_yaml(args.config) if args.config else {}, args.overrides)
        variants = dict(parse_variant(v) for v in (args.variant or ["run"]))
        try:
            shard = tuple(int(v) for v in args.shard.split("/"))
            assert len(shard) == 2
        except (ValueError, AssertionError):
            raise LeancnnError(f"--shard {args.shard!r}: expected I/N, e.g. 0/2") from None
        out = args.out or Path(base.get("output_dir", "runs")) / f"lodo-{base.get('name', 'experiment')}"
        results = run_lodo(base, variants, out, args.targets, args.seeds, shard)
        print(results["text"])
        if results["missing"]:
            print(f"{len(results['missing'])} run(s) not finished yet (other shards?); re-run to collect")
        else:
            print(f"table written to {Path(out) / 'lodo.md'}")
    elif args.command == "demo":
        from .config import load_config
        from .tasks.demo import default_demo_config, run_demo

        cfg = load_config(args.config, args.overrides) if args.config else default_demo_config(args.overrides)
        run_demo(cfg, out=args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (LeancnnError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError,
            NotADirectoryError) as e:
        if args.debug:
            raise
        print(f"leancnn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
