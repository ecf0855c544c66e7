"""The latency-under-contention experiment of docs/results.md (issue 11, part 6).

Runs ``leancnn latency run -c configs/latency_cpu.yaml`` (five models of different shapes x 0 / 1 / 2 co-running
CPU hogs x 1 / 2 threads x PyTorch eager / onnxruntime, batch 1) into ``$LEANCNN_CACHE/bench/latency-cpu`` (an
interrupted run is resumed), writes its full report there, and the section ``latency-contention`` of
docs/results.md: how median, p99 and CV move with the load, the rank reversals found (or that none were), the
Kendall τ between rankings and the recommendation, with two figures copied to docs/img. With ``--compare DIR``
(a run of the same config on another device: another CPU, or the GPU machine), the cross-device report goes to
``$LEANCNN_CACHE/bench/latency-compare`` and the section ``latency-cross-device`` of docs/results.md says, from its
analysis, which model orders hold across the two machines, which reverse and which are unsettled, with the Kendall
τ between the two machines' rankings of each setting. A finished run is resumed without measuring anything.

    python benchmarks/latency_contention.py [--config configs/latency_cpu.yaml] [--fresh] [--compare RUN_DIR]
        [--compare-cpu TEXT] [--cross-device-docs-only]

Run it on an otherwise idle machine: any other work is contention the conditions do not describe.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DOCS, ROOT, bench_dir, write_section  # noqa: E402

from leancnn.config import load_config  # noqa: E402
from leancnn.latency import report as lreport  # noqa: E402
from leancnn.latency.config import LatencyConfig  # noqa: E402
from leancnn.latency.system import cpu_identity, cpu_label  # noqa: E402
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


def _pval(p: float) -> str:
    return f"{p:.1g}" if p < 0.001 else f"{p:.3f}"


def _order_text(r: dict, k: int) -> str:
    """How machine ``k`` orders the pair: 'a faster (0.88, 0.85–0.91; p 0.001)' or 'undecided (1.01, ...)'."""
    lo, hi = r[f"ratio_ci_{k}"]
    who = r[f"faster_{k}"] or "tie/undecided"
    return f"{who} ({r[f'ratio_{k}']:.3f}, {lo:.3f}–{hi:.3f}; p {_pval(r[f'p_holm_{k}'])})"


def machine_line(data, cpu_note: str | None, here: bool) -> str:
    """One machine of the comparison, from its run.json and conditions (CPU identity where recorded)."""
    cpu = cpu_label(data.sources[0].get("cpu"))
    if cpu is None and cpu_note:
        cpu = f"{cpu_note} (given with --compare-cpu; the run predates the CPU record)"
    elif cpu is None and here:
        cpu = f"{cpu_label(cpu_identity())} (this machine's /proc/cpuinfo now; the run predates the CPU record)"
    mhz = [c["snapshot_before"]["cpu_mhz_mean"] for c in data.done
           if (c.get("snapshot_before") or {}).get("cpu_mhz_mean")]
    v = data.run.get("versions") or {}
    parts = [f"run.json machine `{data.run.get('machine')}`", f"CPU {cpu or 'not recorded'}"]
    if mhz:
        parts.append(f"{statistics.median(mhz):.0f} MHz reported (median over conditions)")
    parts.append(f"torch {v.get('torch')}, onnxruntime {v.get('onnxruntime')}, "
                 f"{(v.get('stress-ng') or 'no stress-ng').split(' (')[0]}")
    parts.append(f"measured {data.run.get('created')}")
    return f"- **{data.path.resolve().name}**: " + "; ".join(parts)


def speed_table(result: dict, pair: dict) -> str:
    """Per model: machine 2 / machine 1 median and p99 over the matched settings (range)."""
    by = {(r["condition"], r["model"]): r for r in result["summary"]}
    keys = {c["id"]: c["key"] for c in result["conditions"]}
    rows = []
    for m in result["models"]:
        med, p99 = [], []
        for t in pair["tau"]:
            a, b = by.get((keys[t["id_1"]], m)), by.get((keys[t["id_2"]], m))
            if a and b:
                med.append(b["median"] / a["median"])
                p99.append(b["p99"] / a["p99"])
        if med:
            rows.append([m, f"{min(med):.2f}–{max(med):.2f}× (median {statistics.median(med):.2f}×)",
                         f"{min(p99):.2f}–{max(p99):.2f}× (median {statistics.median(p99):.2f}×)"])
    n1, n2 = pair["run_1"]["name"], pair["run_2"]["name"]
    return format_table(rows, ["model", f"median on {n2} / on {n1}", f"p99 on {n2} / on {n1}"], markdown=True)


def cross_device_text(result: dict, runs: list, cmp_out: Path, cpu_note: str | None) -> str:
    """The section latency-cross-device: every number comes from the compare analysis (``result``)."""
    cd = result["cross_device"]
    if not cd or not cd["pairs"]:
        return "The two runs share no setting: nothing to compare across machines."
    pair = cd["pairs"][0]
    n1, n2 = pair["run_1"]["name"], pair["run_2"]["name"]
    orders = pair["orders"]
    stats = list(pair["counts"])
    parts = ["Two runs of `configs/latency_cpu.yaml`, merged by `leancnn latency compare` (conditions of the same "
             "setting, i.e. load × threads × backend × batch, matched across the runs):",
             "\n".join([machine_line(runs[0], None, here=True), machine_line(runs[1], cpu_note, here=False)])]
    same_versions = all((runs[0].run.get("versions") or {}).get(k) == (runs[1].run.get("versions") or {}).get(k)
                        for k in ("torch", "onnxruntime", "numpy"))
    parts.append(f"{pair['matched']} settings matched"
                 + (f" (unmatched: {', '.join(pair['unmatched_1'] + pair['unmatched_2'])})"
                    if pair["unmatched_1"] or pair["unmatched_2"] else "")
                 + f"; each order is one of the {cd['n_tests']} block-paired bootstrap tests of the merged report, "
                 f"Holm-adjusted together at α = {cd['alpha']}, tie margin ±"
                 f"{100 * result['settings']['margin']:g} % ({result['pairwise']['n_boot']} resamples: the smallest "
                 f"Holm p they resolve is {min(1.0, cd['n_tests'] * result['pairwise']['p_floor']):.3f}). An order **holds** when both machines have a "
                 "significant order with the same faster model, **reverses** when both are significant with "
                 "opposite winners, and is **unsettled** when one or both are tie/undecided."
                 + ("" if same_versions else " The two runs used different torch / onnxruntime / numpy versions "
                    "(above): a difference between them is not the processor's alone."))
    crows = [[s, n["compared"], n["holds"], n["reverses"], n["unsettled"], n["settled_1_only"], n["settled_2_only"],
              n["settled_neither"], n["unsettled_same_direction"]] for s, n in pair["counts"].items()]
    parts.append(format_table(crows, ["statistic", "model pairs", "hold", "reverse", "unsettled",
                                      f"of which significant on {n1} only", f"on {n2} only", "on neither",
                                      "unsettled with agreeing point estimates"], markdown=True))
    rev = sorted((r for r in orders if r["agreement"] == "reverses"), key=lambda r: -abs(r["log_ratio_change"]))
    if rev:
        rrows = [[r["setting"], f"{r['a']} vs {r['b']}", r["statistic"], _order_text(r, 1), _order_text(r, 2)] for r in rev]
        parts.append(f"**Orders that reverse** ({len(rev)}; faster model, ratio a/b with its "
                     f"{100 * (1 - cd['alpha']):g} % CI and Holm p, on {n1} and on {n2}):\n\n"
                     + format_table(rrows, ["setting", "pair (a vs b)", "statistic", f"on {n1}", f"on {n2}"],
                                    markdown=True))
    else:
        parts.append("**No order reverses** between the two machines: no model pair has significant, opposite "
                     "orders in the same setting.")
    # notable unsettled: significant on one machine, with the other's point estimate on the opposite side of 1
    one = [r for r in orders if r["agreement"] == "unsettled" and r["settled"] != "neither" and not r["same_direction"]]
    one.sort(key=lambda r: min(r["p_holm_1"], r["p_holm_2"]))
    if one:
        orows = [[r["setting"], f"{r['a']} vs {r['b']}", r["statistic"], _order_text(r, 1), _order_text(r, 2)]
                 for r in one[:8]]
        parts.append(f"**Unsettled, but pointing the other way**: {len(one)} order(s) significant on one machine "
                     "whose point estimate on the other machine is on the opposite side of 1 (not significant there)"
                     + (f"; the {len(orows)} with the smallest p" if len(one) > len(orows) else "") + ":\n\n"
                     + format_table(orows, ["setting", "pair (a vs b)", "statistic", f"on {n1}", f"on {n2}"],
                                    markdown=True))
    # orders that hold in every matched setting
    for s in stats:
        pairs_all = {}
        for r in orders:
            if r["statistic"] == s:
                pairs_all.setdefault((r["a"], r["b"]), []).append(r)
        robust = [f"{rs[0]['faster_1']} < {rs[0]['b'] if rs[0]['faster_1'] == rs[0]['a'] else rs[0]['a']}"
                  for rs in pairs_all.values()
                  if len(rs) == pair["matched"] and all(r["agreement"] == "holds" for r in rs)
                  and len({r["faster_1"] for r in rs}) == 1]
        parts.append(f"By {s}, orders that hold in all {pair['matched']} settings on both machines: "
                     + (", ".join(robust) if robust else "none") + ".")
    stat_names = list(result["kendall_tau"])
    share = {c["id"]: c.get("load_cpu_share") for c in result["conditions"]}

    def cores(cid: str) -> str:
        return "–" if share.get(cid) is None else f"{share[cid]:.2f}"

    trows = [[t["setting"], *(("–" if t[s]["tau"] is None else f"{t[s]['tau']:.2f} ({t[s]['discordant']})")
                              for s in stat_names), f"{cores(t['id_1'])} / {cores(t['id_2'])}"] for t in pair["tau"]]
    taus = {s: [t[s]["tau"] for t in pair["tau"] if t[s]["tau"] is not None] for s in stat_names}
    parts.append(f"**Kendall τ between the two machines' rankings** of the {len(result['models'])} models per setting "
                 "(point estimates; in parentheses the model pairs ordered oppositely, significant or not): "
                 + "; ".join(f"by {s} mean {statistics.mean(v):.2f}, range {min(v):.2f} to {max(v):.2f}"
                             for s, v in taus.items() if v) + ".\n\n"
                 + format_table(trows, ["setting", *(f"τ by {s} (discordant)" for s in stat_names),
                                        f"load CPU used, {n1} / {n2}"], markdown=True))
    parts.append(f"**Latency on {n2} over latency on {n1}** per model, over the matched settings (ratio of the "
                 f"point estimates; above 1: slower on {n2}):\n\n" + speed_table(result, pair))
    parts.append(reading(pair, rev, n1, n2))
    parts.append(f"Full report (every test, CIs, τ heatmap, cross_device.csv): `{cmp_out}/report.md` after running "
                 "the command.")
    return "\n\n".join(parts)


def reading(pair: dict, rev: list, n1: str, n2: str) -> str:
    """A short reading, in rules over the counts (no number that is not in the analysis)."""
    out = []
    for s, n in pair["counts"].items():
        settled = n["holds"] + n["reverses"]
        if settled:
            out.append(f"by {s}, {n['holds']} of the {settled} orders settled on both machines hold "
                       f"({100 * n['holds'] / settled:.0f} %) and {n['reverses']} reverse; {n['unsettled']} of "
                       f"{n['compared']} are unsettled on at least one machine, and {n['unsettled_same_direction']} "
                       "of those point the same way on both")
        else:
            out.append(f"by {s}, no order is settled on both machines ({n['unsettled']} of {n['compared']} "
                       "unsettled)")
    joined = "; ".join(out)
    text = "**Reading.** " + joined[:1].upper() + joined[1:] + "."
    if rev:
        where: dict[str, int] = {}
        for r in rev:
            where[r["setting"]] = where.get(r["setting"], 0) + 1
        top = sorted(where.items(), key=lambda kv: -kv[1])
        text += (" The reversals fall in " + ", ".join(f"'{k}' ({v})" for k, v in top) + ".")
    text += (f" Each machine was measured once, so a difference between {n1} and {n2} mixes the processor with "
             "everything else that differs between the two runs (the day, the VM host's other tenants, the "
             "loads' achieved CPU share): a reversal here says the order is not portable between these two runs, "
             "not that the processor alone causes it; an unsettled order is not evidence of equal speed.")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "latency_cpu.yaml"))
    ap.add_argument("--fresh", action="store_true", help="discard a previous (or interrupted) run")
    ap.add_argument("--compare", help="a run directory of the same config from another device")
    ap.add_argument("--compare-cpu", help="the other run's processor, when its run.json does not record it "
                    "(e.g. 'AMD EPYC, family 25 model 1 (Milan)'); quoted in the docs as given")
    ap.add_argument("--cross-device-docs-only", action="store_true",
                    help="with --compare: write only the latency-cross-device section of docs/results.md")
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
    cross = None
    if args.compare:
        cmp_out = out.parent / "latency-compare"
        print(f"cross-device report written to {lreport.compare([out, args.compare], cmp_out, force=True, **kw)}")
        cmp_result = json.loads((cmp_out / "analysis.json").read_text(encoding="utf-8"))
        print("\n".join(lreport.cross_device_summary(cmp_result)))
        cross = cross_device_text(cmp_result, [data, lreport.load_run(args.compare)], cmp_out, args.compare_cpu)
    print(body)
    if cross:
        print("\n" + cross)
        if not args.no_docs:
            write_section("results.md", "latency-cross-device", "Latency across two machines", cross,
                          note=" (resumes the run here, measuring only conditions it lacks: none once finished; "
                          "then about half a minute of analysis)")
    if not args.no_docs and not (args.compare and args.cross_device_docs_only):
        img = DOCS / "img"
        img.mkdir(exist_ok=True)
        shutil.copyfile(out / lreport.FIGURES["boxes"], img / "latency_boxes.png")
        write_section("results.md", "latency-contention", "Latency under CPU contention", body,
                      note=" (about 15 min; resumes an interrupted run)")


if __name__ == "__main__":
    main()
