"""The latency-under-contention experiment of docs/results.md (issue 11, part 6).

Runs ``leancnn latency run -c configs/latency_cpu.yaml`` (five models of different shapes x 0 / 1 / 2 co-running
CPU hogs x 1 / 2 threads x PyTorch eager / onnxruntime, batch 1) into ``$LEANCNN_CACHE/bench/latency-cpu`` (an
interrupted run is resumed), writes its full report there, and the section ``latency-contention`` of
docs/results.md: how median, p99 and CV move with the load, the rank reversals found (or that none were), the
Kendall τ between rankings and the recommendation, with two figures copied to docs/img. With ``--compare DIR``
(a run of the same config on another device, e.g. the GPU machine), the cross-device report is added.

    python benchmarks/latency_contention.py [--config configs/latency_cpu.yaml] [--fresh] [--compare RUN_DIR]

Run it on an otherwise idle machine: any other work is contention the conditions do not describe.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DOCS, ROOT, bench_dir, write_section  # noqa: E402

from leancnn.config import load_config  # noqa: E402
from leancnn.latency import report as lreport  # noqa: E402
from leancnn.latency.config import LatencyConfig
from leancnn.report import format_table  # noqa: E402
from leancnn.tasks import latency as latency_task  # noqa: E402


def _ms(v: float) -> str:
    return f"{1e3 * v:.2f}"


def growth_table(result: dict, data) -> str:
    """Per model and setting (threads, backend): median / p99 / CV at each load level."""
    conds = {c["label"]: c for c in data.done}
    cells = {(r["condition"], r["model"]): r for r in result["summary"]}
    levels = sorted({(c["load"] or {}).get("workers", 0) for c in conds.values() if c["load"] is not None})
    settings = sorted({(c["threads"], c["backend"]) for c in conds.values()}, key=lambda s: (s[1], s[0]))
    rows = []
    for model in data.models:
        for threads, backend in settings:
            row = [model, f"{threads}", backend]
            for w in levels:
                c = next((c for c in conds.values() if c["threads"] == threads and c["backend"] == backend
                          and c["load"] is not None and c["load"]["workers"] == w), None)
                r = cells.get((c["label"], model)) if c else None
                row.append("–" if r is None else f"{_ms(r['median'])} / {_ms(r['p99'])} / {100 * r['cv']:.0f}%")
            rows.append(row)
    return format_table(rows, ["model", "threads", "backend", *[f"{w} load worker(s): median / p99 ms / CV"
                                                                for w in levels]], markdown=True)


def ratio_table(result: dict, data) -> str:
    """Per setting and load level: the range over models of median and p99 relative to the same setting idle."""
    conds = [c for c in data.done if c["load"] is not None]
    cells = {(r["condition"], r["model"]): r for r in result["summary"]}
    rows = []
    for threads, backend in sorted({(c["threads"], c["backend"]) for c in conds}, key=lambda s: (s[1], s[0])):
        mine = {c["load"]["workers"]: c for c in conds if c["threads"] == threads and c["backend"] == backend}
        idle = mine.get(0)
        if idle is None:
            continue
        for w in sorted(mine):
            if w == 0:
                continue
            med, p99, cv = [], [], []
            for m in data.models:
                a, b = cells.get((idle["label"], m)), cells.get((mine[w]["label"], m))
                if a and b:
                    med.append(b["median"] / a["median"])
                    p99.append(b["p99"] / a["p99"])
                    cv.append((a["cv"], b["cv"]))
            if med:
                rows.append([f"{threads}", backend, f"{w}", f"{min(med):.2f}–{max(med):.2f}×",
                             f"{min(p99):.2f}–{max(p99):.2f}×",
                             f"{100 * min(c[0] for c in cv):.0f}–{100 * max(c[0] for c in cv):.0f}% → "
                             f"{100 * min(c[1] for c in cv):.0f}–{100 * max(c[1] for c in cv):.0f}%",
                             f"{mine[w].get('load_cpu_share') or 0:.2f}"])
    return format_table(rows, ["threads", "backend", "load workers", "median vs idle (range over models)",
                               "p99 vs idle", "CV idle → loaded", "load CPU used"], markdown=True)


def reversal_text(result: dict) -> str:
    rev = result["reversals"]
    n = result["pairwise"]["n_tests"]
    if not rev:
        return (f"**No rank reversal found**: no model pair has significant, opposite orders in two conditions "
                f"({n} tests, Holm-adjusted together at α = {result['pairwise']['alpha']}, tie margin "
                f"±{100 * result['pairwise']['margin']:.0f}%).")
    rows = []
    for r in rev:
        rows.append([f"{r['a']} vs {r['b']}", r["statistic"], r["condition_1"], r["faster_1"],
                     f"{r['ratio_1']:.3f} ({r['ratio_ci_1'][0]:.3f}–{r['ratio_ci_1'][1]:.3f})", r["condition_2"],
                     r["faster_2"], f"{r['ratio_2']:.3f} ({r['ratio_ci_2'][0]:.3f}–{r['ratio_ci_2'][1]:.3f})",
                     ", ".join(r.get("axes", []))])
    by_axes: dict[str, int] = {}
    for r in rev:
        key = " + ".join(r.get("axes", [])) or "?"
        by_axes[key] = by_axes.get(key, 0) + 1
    return (f"**{len(rev)} rank reversal(s)** (significant, opposite orders; {n} tests, Holm at α = "
            f"{result['pairwise']['alpha']}, tie margin ±{100 * result['pairwise']['margin']:.0f}%), by what differs "
            "between the two conditions: " + ", ".join(f"{k}: {v}" for k, v in sorted(by_axes.items())) + ".\n\n"
            + format_table(rows, ["pair (A vs B)", "statistic", "condition 1", "faster", "ratio A/B (CI)",
                                  "condition 2", "faster", "ratio A/B (CI)", "differs in"], markdown=True))


def tau_text(result: dict) -> str:
    out = []
    for stat, kt in result["kendall_tau"].items():
        conds, tau = kt["conditions"], kt["tau"]
        pairs = [(tau[i][j], conds[i], conds[j]) for i in range(len(conds)) for j in range(i + 1, len(conds))
                 if tau[i][j] is not None]
        if pairs:
            lo = min(pairs)
            mean = sum(p[0] for p in pairs) / len(pairs)
            out.append(f"by {stat}: mean τ {mean:.2f} over {len(pairs)} condition pairs, lowest {lo[0]:.2f} "
                       f"('{lo[1]}' vs '{lo[2]}')")
    return "Kendall τ between the model rankings of every two conditions: " + "; ".join(out) + "."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "latency_cpu.yaml"))
    ap.add_argument("--fresh", action="store_true", help="discard a previous (or interrupted) run")
    ap.add_argument("--compare", help="a run directory of the same config from another device")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    cfg = load_config(args.config, cls=LatencyConfig)
    out = bench_dir("latency-cpu")
    resume = (out / "run.json").is_file() and not args.fresh
    latency_task.run(cfg, out, resume=resume, force=args.fresh, report=False)
    a = cfg.analysis
    kw = dict(quantiles=tuple(a.quantiles), alpha=a.alpha, margin=a.margin, recommend_quantile=a.recommend_quantile,
              rule=a.recommend_rule)
    path = lreport.write_report(out, **kw)
    print(f"report written to {path}")
    data = lreport.load_run(out)
    result = lreport.analyse(data, **kw)
    kinds = sorted({c.get("load_kind_used") for c in data.done} - {None, "none"})
    shares = [f"{c['load_cpu_share']:.2f}" for c in data.done if c.get("load_cpu_share")]
    died = [c["label"] for c in data.done if c.get("load_died")]
    trunc = [c["label"] for c in data.done if c.get("truncated")]
    models = format_table([[m, info["name"], "×".join(map(str, info["input"])), info["kind"],
                            f"{info['macs'] / 1e6:.0f}M" if info.get("macs") else "–"]
                           for m, info in data.models.items()], ["model", "registry name", "input", "kind", "MACs"],
                          markdown=True)
    rec = result["recommendation"] or {}
    body = (f"Five models of different shapes, batch 1, on this machine: {len(data.done)} conditions = load "
            f"(0, 1, 2 co-running CPU hogs, {', '.join(kinds)}) × threads (1, 2) × backend (PyTorch eager, "
            f"onnxruntime with its default spinning), {cfg.protocol.samples} timed inferences per model and "
            f"condition after {cfg.protocol.warmup} warm-up, in randomised interleaved blocks of "
            f"{cfg.protocol.block}. The loads used {min(shares, default='–')}–{max(shares, default='–')} CPU "
            "(measured from /proc; requested 1 or 2). "
            + (f"Load died mid-run in: {', '.join(died)}. " if died else "No load process died. ")
            + (f"Cut short by the time budget: {', '.join(trunc)}. " if trunc else "")
            + "\n\n" + models
            + "\n\n**How latency and its variability grow with the load**, relative to the same setting idle:\n\n"
            + ratio_table(result, data)
            + "\n\nPer model (median / p99 in ms / CV):\n\n"
            + growth_table(result, data)
            + "\n\n![latency by condition](img/latency_boxes.png)\n\n"
            + "**Rank reversals.** " + reversal_text(result) + "\n\n" + tau_text(result) + "\n\n"
            + "**Recommendation** (rule minimax on the p99 over all conditions): " + rec.get("summary", "–") + ".\n\n"
            + "p99 here rests on 300 samples per cell, under MLPerf's 662 floor: its CIs are wide, and the tests "
            "account for that (a p99 order counts only where its bootstrap CI clears the tie margin). The full "
            f"report (CDFs, every CI, τ heatmap, tests.csv): `{out}/report.md` after running the command.")
    if args.compare:
        cmp_out = out.parent / "latency-compare"
        print(f"cross-device report written to {lreport.compare([out, args.compare], cmp_out, force=True, **kw)}")
    print(body)
    if not args.no_docs:
        img = DOCS / "img"
        img.mkdir(exist_ok=True)
        shutil.copyfile(out / lreport.FIGURES["boxes"], img / "latency_boxes.png")
        write_section("results.md", "latency-contention", "Latency under CPU contention", body,
                      note=" (about 15 min; resumes an interrupted run)")


if __name__ == "__main__":
    main()
