"""Real speed of pruned networks (issue 12, part 7): params, MACs and measured CPU latency before and after.

ResNet-56 and MobileNetV3-Small (and SkipNet-S) at 32x32, pruned to 50% of their MACs by l1 with a uniform
channel ratio, with and without ``round_to=8`` (channel counts multiples of 8), timed by ``leancnn latency``'s
harness (randomised interleaved blocks, all variants of a model in the same run) in PyTorch eager and onnxruntime,
1 thread, batch 1 and batch 64. The speed-up is the ratio of medians against the unpruned model in the same run;
the goal is >= 0.8 of the MAC reduction. Writes the section ``pruning-speed`` of docs/benchmarks.md.

    python benchmarks/pruning_speed.py [--samples 200] [--batches 1 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import bench_dir, write_section  # noqa: E402

from leancnn import create_model  # noqa: E402
from leancnn.config import from_dict  # noqa: E402
from leancnn.latency import measure  # noqa: E402
from leancnn.latency.config import LatencyConfig
from leancnn.nn.counting import count_macs, count_params  # noqa: E402
from leancnn.prune import prune_model  # noqa: E402
from leancnn.report import format_table  # noqa: E402

INPUT = (3, 32, 32)


def variants(name: str) -> list[tuple[str, torch.nn.Module]]:
    torch.manual_seed(0)
    base = create_model(name).eval()
    x = torch.zeros(1, *INPUT)
    out = [("unpruned", base)]
    for label, round_to in (("pruned 50%", None), ("pruned 50%, round_to 8", 8)):
        with torch.enable_grad():
            try:
                pruned, _ = prune_model(base, x, 0.5, "l1", round_to=round_to)
            except Exception as e:  # noqa: BLE001 - a target round_to cannot meet is reported, not fatal
                print(f"{name} {label}: {e}")
                continue
        out.append((label, pruned.eval()))
    return out


def search_time(args) -> str:
    """Wall time of `leancnn prune --search ea` with its default search settings on ResNet-56 at 50% MACs (the
    trained seed-0 model of benchmarks/pruning_criteria.py), all nine criteria, 2 threads."""
    from leancnn.tasks.prune import PruneConfig, prune_run

    src = bench_dir("pruning") / "resnet56-s0" / "base"
    if not (src / "best.pt").is_file():
        return "\n\n(The search time needs `python benchmarks/pruning_criteria.py` first: its trained ResNet-56.)"
    torch.set_num_threads(2)
    pcfg = from_dict(PruneConfig, {"criteria": ["l1", "l2", "fpgm", "bn", "taylor", "act_mean", "apoz", "entropy",
                                                "hrank"], "search": {"method": "ea"}})
    s = prune_run(src, pcfg, bench_dir("pruning-speed") / "search", force=True, log=lambda m: None)
    torch.set_num_threads(1)
    sr = s["search"]
    return (f"\n\n**Search time** (goal: ≤ 10 minutes for ResNet-56 at 50% MACs on 2 cores): `leancnn prune` "
            f"with the nine criteria and the default search (population {pcfg.search.population}, "
            f"{pcfg.search.generations} generations, fitness on {pcfg.search.val_images} validation images after "
            f"recalibrating BatchNorm on {pcfg.search.bn_batches} batches) took {s['seconds']:.0f} s in all, "
            f"{sr['seconds']:.0f} s of it in the search ({sr['evaluations']} distinct evaluations, "
            f"{sr['seconds'] / max(sr['evaluations'], 1):.1f} s each), 2 threads, on the trained seed-0 ResNet-56 of "
            "the criteria experiment: goal " + ("met." if s["seconds"] <= 600 else "**not met**."))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet56", "mobilenetv3_small", "skipnet_s"])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--no-search", action="store_true", help="skip timing the evolutionary search")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, met = [], []
    for name in args.models:
        vs = variants(name)
        for backend in ("eager", "onnxruntime"):
            for batch in args.batches:
                cfg = from_dict(LatencyConfig, {"models": [{"name": name}], "grid": {"loads": [{"workers": 0}],
                                                "backends": [backend], "batch_sizes": [batch]}})
                cond = measure.plan_conditions(cfg)[0]
                fns = {}
                for label, m in vs:
                    spec = measure.ModelSpec(label, "registry", f"{name}-{label}", INPUT, "classifier", module=m)
                    fns[label] = measure.make_callable(spec, cond, cfg, {})
                n = max(20, args.samples // max(1, batch // 8))
                with torch.inference_mode():
                    for fn in fns.values():
                        for _ in range(5):
                            fn()
                    r = measure.measure(fns, n, 10, np.random.default_rng(0))
                med = {label: float(np.median([row[3] for row in r["rows"] if row[0] == label])) for label in fns}
                base_macs = count_macs(vs[0][1], INPUT)
                for label, m in vs:
                    macs = count_macs(m, INPUT)
                    red = base_macs / macs
                    speed = med["unpruned"] / med[label]
                    frac = (speed - 1) / (red - 1) if red > 1.001 else None
                    ok = None if label == "unpruned" else speed >= 0.8 * red
                    if ok is not None:
                        met.append(ok)
                    rows.append([name, label, f"{count_params(m):,}", f"{macs / 1e6:.1f}M", f"{red:.2f}×", backend,
                                 batch, f"{1e3 * med[label]:.3f}", f"{speed:.2f}×",
                                 "–" if frac is None else f"{speed / red:.2f}",
                                 "–" if ok is None else ("met" if ok else "**not met**")])
                print(f"{name} {backend} batch {batch} done", flush=True)
    search = search_time(args) if not args.no_search else ""
    table = format_table(rows, ["model @32×32", "variant", "params", "MACs", "MAC reduction", "runtime", "batch",
                                "median ms / batch", "speed-up", "speed-up / MAC reduction", "goal ≥ 0.8"],
                         markdown=True)
    body = ("Pruned by l1 to 50% of the MACs with the same channel ratio in every group (random weights: speed does "
            "not depend on them), timed with `leancnn latency`'s harness: every variant of a model in the same "
            f"randomised interleaved blocks, 1 thread, idle, median over {args.samples} inferences at batch 1 (fewer "
            "at larger batches). *speed-up*: unpruned median / pruned median; the goal is a speed-up of at least 0.8 "
            "of the MAC reduction.\n\n" + table + f"\n\nGoal met in {sum(met)} of {len(met)} rows." + search)
    print(body)
    if not args.no_docs:
        write_section("benchmarks.md", "pruning-speed", "Pruning: real speed-up", body)


if __name__ == "__main__":
    main()
