"""The report of a study: every trial as a row, the Pareto front, the chosen trade-off, a plot, the overhead.

:func:`trial_rows` reads a study into plain rows (number, state, label, worker, the point, the metrics, seconds in
the evaluation and in the engine). :func:`summarise_study` puts the front, the ranks of labelled reference points
(e.g. MoViNet-A0), the chosen trade-off and the engine's overhead together; :func:`write_report` writes
``trials.csv``, ``pareto.csv``, ``pareto.png``, ``report.md`` and ``summary.json`` into a folder (atomically).
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Callable, Sequence

from .. import report
from ..io import atomic_write_json, atomic_write_text
from .engine import Objective
from .pareto import choose, front_rank, pareto_front

REPORT_FILES = ("trials.csv", "pareto.csv", "pareto.png", "report.md", "summary.json")


def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        rows.append({"number": t.number, "state": t.state.name.lower(), "label": ua.get("label") or "",
                     "worker": ua.get("worker", ""), "params": dict(t.params), "metrics": dict(ua.get("metrics", {})),
                     "eval_seconds": ua.get("eval_seconds"), "overhead_seconds": ua.get("overhead_seconds"),
                     "duplicate_of": ua.get("duplicate_of"), "reject_reason": ua.get("reject_reason"),
                     "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                     if t.datetime_complete and t.datetime_start else None})
    return rows


def summarise_study(rows: Sequence[dict], objectives: Sequence[Objective], budget: float | None = None) -> dict:
    """Front (rows), ranks of labelled rows, the chosen trade-off (best first objective within ``budget`` of the
    second, else the knee) and the overhead (engine seconds / trial seconds; median and max over trials)."""
    done = [r for r in rows if r["state"] == "complete"]
    names = [o.name for o in objectives]
    dirs = [o.direction for o in objectives]
    values = [[r["metrics"][n] for n in names] for r in done]
    front = [done[i] for i in pareto_front(values, dirs)] if done else []
    ranks = front_rank(values, dirs) if done else []
    refs = {}
    for r, k in zip(done, ranks):
        if r["label"]:
            refs[r["label"]] = {"number": r["number"], "rank": k, **{n: r["metrics"][n] for n in names}}
    chosen = None
    if len(names) == 2 and done:
        i = choose(values, dirs, budget)
        chosen = None if i is None else done[i]
    fractions = [r["overhead_seconds"] / (r["overhead_seconds"] + r["eval_seconds"]) for r in rows
                 if r["state"] in ("complete", "pruned") and r["eval_seconds"] and r["overhead_seconds"] is not None
                 and r["duplicate_of"] is None]
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    return {"objectives": [[o.name, o.direction] for o in objectives], "trials": len(rows), "states": states,
            "front": [r["number"] for r in sorted(front, key=lambda r: r["metrics"][names[-1]])],
            "references": refs, "budget": budget, "chosen": None if chosen is None else chosen["number"],
            "overhead": {"median_fraction": statistics.median(fractions) if fractions else None,
                         "max_fraction": max(fractions) if fractions else None,
                         "mean_engine_seconds": statistics.fmean([r["overhead_seconds"] for r in rows
                                                                  if r["overhead_seconds"] is not None])
                         if any(r["overhead_seconds"] is not None for r in rows) else None,
                         "trials": len(fractions)}}


def _csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([r.get(c, "") for c in columns])
    return buf.getvalue()


def _flat(r: dict, describe: Callable[[dict], str] | None) -> dict:
    d = {k: v for k, v in r.items() if k not in ("params", "metrics")}
    d.update({f"m.{k}": v for k, v in r["metrics"].items() if not isinstance(v, (dict, list))})
    d["point"] = describe(r["params"]) if describe else " ".join(f"{k}={v}" for k, v in r["params"].items())
    return d


def plot_front(rows: Sequence[dict], summary: dict, path: Path, x: str, y: str, x_label: str, y_label: str,
               title: str, y_scale: float = 100.0) -> Path:
    plt = report._pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    done = [r for r in rows if r["state"] == "complete"]
    front = set(summary["front"])
    pts = [(r["metrics"][x], r["metrics"][y] * y_scale, r) for r in done]
    ax.scatter([p[0] for p in pts if p[2]["number"] not in front], [p[1] for p in pts if p[2]["number"] not in front],
               s=18, c="0.65", label="trial")
    fr = sorted((p for p in pts if p[2]["number"] in front), key=lambda p: p[0])
    if fr:
        ax.step([p[0] for p in fr], [p[1] for p in fr], where="post", c="tab:blue", lw=1)
        ax.scatter([p[0] for p in fr], [p[1] for p in fr], s=28, c="tab:blue", label="Pareto front", zorder=3)
    for px, py, r in pts:
        if r["label"]:
            ax.scatter([px], [py], s=70, facecolors="none", edgecolors="tab:red", zorder=4)
            ax.annotate(r["label"], (px, py), textcoords="offset points", xytext=(5, 5), color="tab:red")
    if summary.get("chosen") is not None:
        c = next(p for p in pts if p[2]["number"] == summary["chosen"])
        ax.scatter([c[0]], [c[1]], marker="*", s=160, c="tab:orange", zorder=5, label="chosen")
    if summary.get("budget"):
        ax.axvline(summary["budget"], ls="--", c="tab:orange", lw=0.8)
    rej = [r for r in rows if r["state"] == "pruned" and x in r["metrics"]]
    if rej:
        ax.scatter([r["metrics"][x] for r in rej], [0 * r["number"] + ax.get_ylim()[0] for r in rej], marker="x",
                   c="0.4", s=18, label="rejected before training")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return report.save_figure(fig, path)


def write_report(study, out: Path, objectives: Sequence[Objective], budget: float | None, title: str,
                 x_label: str, y_label: str, describe: Callable[[dict], str] | None = None,
                 columns: Sequence[tuple[str, str, Callable]] = (), intro: str = "", command: str = "",
                 augment: Callable[[dict], dict] | None = None) -> dict:
    """Write the report files (:data:`REPORT_FILES`) of ``study`` into ``out``; returns the summary. ``columns``:
    (metric key, heading, formatter) of the front table. The first objective is plotted on y, the last on x.
    ``augment(metrics)``: metrics derived at report time (e.g. speed-ups against a baseline trial), added to rows."""
    rows = trial_rows(study)
    if augment is not None:
        for r in rows:
            r["metrics"].update(augment(r["metrics"]))
    summary = summarise_study(rows, objectives, budget)
    flat = [_flat(r, describe) for r in rows]
    cols = ["number", "state", "label", "worker", "point", "seconds", "eval_seconds", "overhead_seconds",
            "duplicate_of", "reject_reason"]
    mcols = sorted({k for f in flat for k in f if k.startswith("m.")})
    atomic_write_text(out / "trials.csv", _csv(flat, cols + mcols))
    by = {r["number"]: r for r in rows}
    front_rows = [by[n] for n in summary["front"]]
    atomic_write_text(out / "pareto.csv", _csv([_flat(r, describe) for r in front_rows], cols + mcols))
    y, x = objectives[0].name, objectives[-1].name
    if any(r["state"] == "complete" for r in rows):
        plot_front(rows, summary, out / "pareto.png", x, y, x_label, y_label, title)
    heads = ["trial", "label"] + [h for _, h, _ in columns] + ["architecture / plan"]
    table = [[r["number"], r["label"] or ("**chosen**" if r["number"] == summary["chosen"] else ""),
              *[fmt(r["metrics"].get(k)) for k, _, fmt in columns], describe(r["params"]) if describe else ""]
             for r in front_rows]
    ov = summary["overhead"]
    lines = [intro, "", f"{summary['trials']} trials: " + ", ".join(f"{v} {k}" for k, v in summary["states"].items())
             + ".", "", "**Pareto front** (" + ", ".join(f"{o.name} {o.direction[:3]}" for o in objectives) + "):", "",
             report.format_table(table, heads, markdown=True), ""]
    if summary["references"]:
        lines += ["References on the same protocol: " + "; ".join(
            f"{k}: trial {v['number']}, front rank {v['rank']} (0 = on the front)" for k, v in
            summary["references"].items()) + ".", ""]
    if summary["chosen"] is not None:
        c = by[summary["chosen"]]
        lines += [f"**Chosen trade-off** ({'best ' + y + ' within ' + f'{budget:.4g}' if budget else 'knee of the front'}"
                  f"): trial {c['number']}: " + ", ".join(f"{h} {fmt(c['metrics'].get(k))}" for k, h, fmt in columns)
                  + (f", {describe(c['params'])}" if describe else "") + ".", ""]
    elif budget:
        lines += [f"No trial of the front is within the budget {budget:g}.", ""]
    if ov["median_fraction"] is not None:
        lines += [f"Engine overhead per trial (sampling, storage, bookkeeping; outside training and measurement): "
                  f"median {100 * ov['median_fraction']:.2f}%, max {100 * ov['max_fraction']:.2f}% of the trial "
                  f"(mean {ov['mean_engine_seconds']:.3f} s).", ""]
    if (out / "pareto.png").exists():
        lines += ["![Pareto front](pareto.png)", ""]
    if command:
        lines += [f"Command: `{command}`  ", f"Machine: {report.machine_description()}"]
    atomic_write_text(out / "report.md", f"# {title}\n\n" + "\n".join(lines) + "\n")
    atomic_write_json(out / "summary.json", {**summary, "rows": rows})
    summary["table"] = report.format_table(table, heads)
    summary["markdown"] = "\n".join(lines)
    return summary


__all__ = ["REPORT_FILES", "plot_front", "summarise_study", "trial_rows", "write_report"]
