"""The report of a latency-under-contention run (issue 11; Yang, Lu, Ren 2020): tables, figures, rank reversals.

A run directory holds ``run.json`` (config, machine, versions, device, planned conditions), ``models.json``,
``conditions.jsonl`` (one line per completed condition, with its confounders) and ``samples.csv``
(``condition,model,block,seq,latency_s,t_s``). :func:`load_run` reads it (samples of conditions missing from
``conditions.jsonl``, i.e. interrupted ones, are ignored; a samples.csv that holds fewer, or more, rows of a completed
condition and model than conditions.jsonl records is refused, naming them: ``latency run --resume`` re-measures
them), :func:`analyse` runs :mod:`leancnn.latency.stats` on it
(summaries, block-paired pairwise tests with Holm, rank reversals and the axes that differ between their two
conditions, Kendall τ, a recommendation), :func:`write_report` writes ``report.md``, CSVs and PNGs, and
:func:`compare` does the same for several runs (e.g. a CPU and a GPU machine) merged, each condition label
prefixed by its run's device (and its CPU's family/model, or else the run directory's name, when two runs share a
device string). A compare report adds the cross-device analysis (``result["cross_device"]``, section "Across
devices", ``cross_device.csv``, ``cross_device_tau.csv``): the conditions of two runs with the same setting (load,
quota, threads, backend, batch) are matched, and every model order is classified as holding, reversing or unsettled
between the two machines (:func:`leancnn.latency.stats.order_agreement`), with Kendall τ between the two machines'
rankings of each setting. All statistics come from :mod:`leancnn.latency.stats`; nothing is recomputed here.
"""

from __future__ import annotations

import csv
import json
import math
import shlex
from collections import Counter
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import LeancnnError
from ..io import atomic_write_json, atomic_write_text, ensure_writable_dir
from ..report import _pyplot, format_table, save_figure, write_markdown
from .stats import (
    kendall_tau,
    order_agreement,
    pairwise,
    quantile_label,
    rank_reversals,
    rankings,
    recommend,
    summarize_table,
)
from .system import cpu_label

__all__ = ["RunData", "load_run", "analyse", "write_report", "compare", "cross_device_summary", "sample_shortfalls",
           "check_analysis_args", "check_report_out", "AXES", "FIGURES", "REPORT_FILES", "CROSS_DEVICE_FILES"]

AXES = ("load", "quota", "threads", "backend", "batch", "device")
SAMPLE_COLUMNS = ("condition", "model", "block", "seq", "latency_s", "t_s")
FIGURES = {"cdf": "latency_cdf.png", "boxes": "latency_boxes.png", "tau": "kendall_tau.png",
           "trend": "latency_vs_load.png"}
CROSS_DEVICE_FILES = ("cross_device.csv", "cross_device_tau.csv")  # compare reports only
REPORT_FILES = ("report.md", "summary.csv", "tests.csv", "reversals.csv", "analysis.json", *FIGURES.values(),
                *CROSS_DEVICE_FILES)
SUMMARY_BOOT = 1000


@dataclass
class RunData:
    """One run directory read back: ``conditions`` are all lines of conditions.jsonl (``done`` the completed
    ones), ``samples`` the columns of samples.csv (numpy arrays) restricted to those conditions."""

    path: Path
    run: dict
    models: dict
    conditions: list[dict]
    samples: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)  # the run(s) behind it: name, machine, device, versions, ...

    @property
    def done(self) -> list[dict]:
        return [c for c in self.conditions if c.get("status") == "done"]


# ------------------------------------------------------------------------------------------------ reading


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LeancnnError(f"{path} is missing: is '{path.parent}' a latency run directory?") from None
    except (OSError, ValueError) as e:
        raise LeancnnError(f"cannot read {path}: {e}") from None


def sample_shortfalls(conditions: Sequence[dict], counts: Any) -> list[tuple[str, str, int, int]]:
    """``(condition id, model, rows in samples.csv, rows recorded)`` for every model of every *done* condition
    whose ``samples_per_model`` (conditions.jsonl) differs from what samples.csv holds (``counts``: a mapping
    ``(condition id, model) -> rows``): a samples.csv cut short, or edited, after the condition finished."""
    out = []
    for c in conditions:
        if c.get("status") != "done" or not isinstance(c.get("samples_per_model"), dict):
            continue
        for model, want in c["samples_per_model"].items():
            have = int(counts.get((c.get("id"), model), 0))
            if have != int(want):
                out.append((str(c.get("id")), str(model), have, int(want)))
    return out


def describe_shortfalls(short: Sequence[tuple[str, str, int, int]], n: int = 4) -> str:
    """``c02 resnet20: 4 of 10, c02 digits_cnn: 0 of 10 (and 3 more)``."""
    text = ", ".join(f"{cid} {model}: {have} of {want}" for cid, model, have, want in short[:n])
    return text + (f" (and {len(short) - n} more)" if len(short) > n else "")


def check_analysis_args(quantiles: Sequence[float] | None = None, alpha: float | None = None,
                        margin: float | None = None, recommend_quantile: float | None = None) -> None:
    """One line naming the flag (and config key) and its range for a bad analysis setting, before any file is
    read or written."""
    def unit(v, what, lo_open=True):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
            (0 < v < 1 if lo_open else 0 <= v < 1)
        if not ok:
            raise LeancnnError(f"{what} must be in {'(0, 1)' if lo_open else '[0, 1)'}, got {v!r}")

    if alpha is not None:
        unit(alpha, "--alpha (analysis.alpha, the family-wise error rate)")
    if margin is not None:
        unit(margin, "--margin (analysis.margin, the relative tie band)", lo_open=False)
    if quantiles is not None:
        if not len(quantiles):
            raise LeancnnError("--quantiles (analysis.quantiles) needs at least one quantile in (0, 1)")
        for q in quantiles:
            unit(q, "every --quantiles value (analysis.quantiles)")
        if len(set(quantiles)) != len(quantiles):
            raise LeancnnError(f"--quantiles (analysis.quantiles) repeats a quantile: {list(quantiles)}")
    if recommend_quantile is not None:
        unit(recommend_quantile, "analysis.recommend_quantile")


def _read_samples(path: Path, keep: set[str], notes: list[str], counts: Counter | None = None
                  ) -> dict[str, np.ndarray]:
    cols: dict[str, list] = {k: [] for k in SAMPLE_COLUMNS}
    ignored = broken = 0
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [k for k in SAMPLE_COLUMNS if k not in (reader.fieldnames or ())]
            if missing:
                raise LeancnnError(f"{path} lacks the column(s) {', '.join(missing)}; expected header "
                                   f"{','.join(SAMPLE_COLUMNS)}")
            for row in reader:
                if any(row.get(k) in (None, "") for k in SAMPLE_COLUMNS):
                    broken += 1
                elif row["condition"] not in keep:
                    ignored += 1
                else:
                    for k in SAMPLE_COLUMNS:
                        cols[k].append(row[k])
                    if counts is not None:
                        counts[row["condition"], row["model"]] += 1
        out = {"condition": np.array(cols["condition"], dtype=str), "model": np.array(cols["model"], dtype=str),
               "block": np.array(cols["block"], dtype=np.int64), "seq": np.array(cols["seq"], dtype=np.int64),
               "latency_s": np.array(cols["latency_s"], dtype=np.float64),
               "t_s": np.array(cols["t_s"], dtype=np.float64)}
    except FileNotFoundError:
        raise LeancnnError(f"{path} is missing: the run wrote no samples") from None
    except (OSError, csv.Error, ValueError) as e:
        raise LeancnnError(f"cannot read {path}: {e}") from None
    if ignored:
        notes.append(f"{ignored} sample rows of conditions not completed (not in conditions.jsonl) ignored")
    if broken:
        notes.append(f"{broken} incomplete sample rows ignored")
    bad = ~(np.isfinite(out["latency_s"]) & (out["latency_s"] > 0))
    if bad.any():
        notes.append(f"{int(bad.sum())} latencies that are not finite and positive ignored")
        out = {k: v[~bad] for k, v in out.items()}
    return out


def load_run(run_dir: str | Path, check_samples: bool = True) -> RunData:
    """Read a run directory; :class:`LeancnnError` naming the file when run.json is missing or unreadable, or no
    condition completed, and (``check_samples``) naming the (condition, model) cells whose rows in samples.csv
    differ from the count conditions.jsonl records (a samples.csv cut short: ``leancnn latency run --resume``
    re-measures those conditions). Conditions come in the run's planned order."""
    path = Path(run_dir)
    run = _read_json(path / "run.json")
    if not isinstance(run, dict):
        raise LeancnnError(f"{path / 'run.json'} must hold a JSON object, got {type(run).__name__}")
    models = _read_json(path / "models.json")
    if not isinstance(models, dict):
        raise LeancnnError(f"{path / 'models.json'} must map model labels to descriptions")
    notes: list[str] = []
    conditions = []
    jsonl = path / "conditions.jsonl"
    try:
        lines = jsonl.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                conditions.append(json.loads(line))
            except ValueError:
                notes.append(f"conditions.jsonl line {i} is not valid JSON (cut off?); ignored")
    done_ids = {c.get("id") for c in conditions if c.get("status") == "done"}
    if not done_ids:
        raise LeancnnError(f"{jsonl} lists no completed condition: nothing to report")
    listed = {c.get("id") for c in conditions}
    planned = [c.get("id") for c in run.get("conditions") or [] if c.get("id") not in listed]
    if planned:
        notes.append(f"planned but not completed (run interrupted?): {', '.join(map(str, planned))}")
    counts: Counter = Counter()
    samples = _read_samples(path / "samples.csv", done_ids, notes, counts)
    short = sample_shortfalls(conditions, counts) if check_samples else []
    if short:
        raise LeancnnError(f"{path / 'samples.csv'} does not hold the samples that conditions.jsonl records for "
                           f"{len(short)} (condition, model) cell(s) ({describe_shortfalls(short)}): it was cut short "
                           f"or edited; re-measure those conditions with: leancnn latency run --resume -o "
                           f"{shlex.quote(str(path))}")
    planned_order = {c.get("id"): i for i, c in enumerate(run.get("conditions") or [])}
    conditions.sort(key=lambda c: planned_order.get(c.get("id"), len(planned_order)))  # a resume appends out of order
    source = {"name": path.name, **{k: run.get(k) for k in ("machine", "device", "versions", "created", "command")},
              "cpu": _run_cpu(run, conditions)}
    return RunData(path, run, models, conditions, samples, notes, [source])


def _run_cpu(run: dict, conditions: Sequence[dict]) -> dict | None:
    """The processor identity (:func:`~leancnn.latency.system.cpu_identity`) of a run: run.json's ``cpu`` or the
    first condition snapshot that records one; None for runs written before it was recorded."""
    if isinstance(run.get("cpu"), dict):
        return run["cpu"]
    for c in conditions:
        cpu = (c.get("snapshot_before") or {}).get("cpu") if isinstance(c.get("snapshot_before"), dict) else None
        if isinstance(cpu, dict):
            return cpu
    return None


# ------------------------------------------------------------------------------------------------ conditions


def _load_level(c: dict) -> str:
    """``idle``, ``2x100%``, ``1x50% spread``, ``quota 0.5 cores``, or a combination."""
    ld, parts = c.get("load") or {}, []
    if ld.get("workers"):
        pin = ld.get("pin")
        where = "" if pin is None else " spread" if pin == "spread" else f" cpus {','.join(map(str, pin))}"
        parts.append(f"{ld['workers']}x{ld.get('percent', 100)}%{where}")
    if c.get("quota") is not None:
        parts.append(f"quota {c['quota']:g} cores")
    return " + ".join(parts) or "idle"


def _load_rank(c: dict) -> tuple:
    """Sort key, least contention first: load cores, then tighter quota."""
    ld = c.get("load") or {}
    cores = ld.get("workers", 0) * ld.get("percent", 100) / 100 if ld.get("workers") else 0.0
    return cores, 1.0 / c["quota"] if c.get("quota") else 0.0, _load_level(c)


def _setting(c: dict, with_device: bool) -> str:
    s = f"{c.get('threads')} thr, {c.get('backend')}, batch {c.get('batch')}"
    return f"{c.get('device')}: {s}" if with_device else s


def _axis_value(c: dict, axis: str) -> Any:
    if axis == "load":
        ld = c.get("load") or {}
        return (ld.get("workers"), ld.get("percent"), json.dumps(ld.get("pin"))) if ld.get("workers") else None
    return c.get(axis)


def differing_axes(c1: dict, c2: dict) -> list[str]:
    """Which of :data:`AXES` differ between two condition records."""
    return [a for a in AXES if _axis_value(c1, a) != _axis_value(c2, a)]


def _died(c: dict) -> str | None:
    d = c.get("load_died")
    if not d:
        return None
    return str(d.get("message", "?") if isinstance(d, dict) else d)


def _cells(data: RunData) -> tuple[list[dict], dict, list[str]]:
    """Done conditions with samples (each with a unique ``key``: its label) and ``{key: {model: (latencies,
    blocks)}}``, models in config order, restricted to the blocks every model of the condition has."""
    s, notes = data.samples, []
    order = {m: i for i, m in enumerate(data.models)}
    counts = Counter(c.get("label") for c in data.done)
    conds, cells = [], {}
    for c in data.done:
        key = c.get("label") if counts[c.get("label")] == 1 else f"{c.get('label')} [{c['id']}]"
        rows = s["condition"] == c["id"]
        per = {}
        for m in sorted(set(s["model"][rows].tolist()), key=lambda m: (order.get(m, len(order)), m)):
            sel = rows & (s["model"] == m)
            per[m] = (s["latency_s"][sel], s["block"][sel])
        if per:
            common = set.intersection(*(set(b.tolist()) for _, b in per.values()))
            if any(len(set(b.tolist())) != len(common) for _, b in per.values()):
                notes.append(f"{c['id']}: only the {len(common)} blocks that every model completed are used")
                keep = {m: np.isin(b, list(common)) for m, (_, b) in per.items()}
                per = {m: (x[keep[m]], b[keep[m]]) for m, (x, b) in per.items()}
        few = [m for m, (x, _) in per.items() if x.size < 2]
        if few:
            notes.append(f"{c['id']}: fewer than 2 latencies for {', '.join(few)}; left out")
        per = {m: v for m, v in per.items() if v[0].size >= 2}
        if not per:
            notes.append(f"{c['id']} ({c.get('label')}) is marked done but has no usable samples; left out")
            continue
        conds.append({**c, "key": key})
        cells[key] = per
    return conds, cells, notes


# ------------------------------------------------------------------------------------------------ analysis


def _analyse(data: RunData, quantiles: Sequence[float] = (0.5, 0.99), alpha: float = 0.05, margin: float = 0.02,
             recommend_quantile: float = 0.99, rule: str = "minimax", n_boot: int | None = None,
             seed: int = 0) -> tuple[dict, list[dict], dict]:
    conds, cells, notes = _cells(data)
    if not cells:
        raise LeancnnError(f"{data.path}: no completed condition has samples in samples.csv")
    nested = {k: {m: x for m, (x, _) in per.items()} for k, per in cells.items()}
    summary = summarize_table(nested, confidence=1 - alpha, n_boot=SUMMARY_BOOT, seed=seed)
    multi = [k for k, per in cells.items() if len(per) >= 2]
    for c in conds:
        if c["key"] not in multi:
            notes.append(f"{c['id']} ({c['key']}) has a single model; left out of the pairwise tests")
    pw, reversals = None, []
    if multi:
        cols: dict[str, list] = {"condition": [], "model": [], "latency": [], "block": []}
        for k in multi:
            for m, (x, b) in cells[k].items():
                cols["condition"] += [k] * x.size
                cols["model"] += [m] * x.size
                cols["latency"].append(x)
                cols["block"].append(b)
        cols["latency"], cols["block"] = np.concatenate(cols["latency"]), np.concatenate(cols["block"])
        pw = pairwise(cols, quantiles, alpha, margin, n_boot=n_boot, seed=seed, blocks=True)
        by_key = {c["key"]: c for c in conds}
        reversals = rank_reversals(pw)
        for r in reversals:
            r["axes"] = differing_axes(by_key[r["condition_1"]], by_key[r["condition_2"]])
    else:
        notes.append("no condition has 2 models: no pairwise test, no rank reversal")
    ranks = {quantile_label(q): rankings(nested, q) for q in quantiles}
    models = list(dict.fromkeys(m for per in nested.values() for m in per))
    common = [m for m in models if all(m in per for per in nested.values())]
    rec = None
    if len(common) >= 2:
        idle = [c["key"] for c in conds if _load_level(c) == "idle"]
        rec = recommend({k: {m: per[m] for m in common} for k, per in nested.items()}, quantile=recommend_quantile,
                        baseline=(idle or [conds[0]["key"]])[0], rule=rule)
    else:
        notes.append(f"no recommendation: fewer than 2 models ({', '.join(common) or 'none'}) are present in every "
                     f"condition")
    result = {
        "run": data.path.name, "sources": data.sources,
        "settings": {"quantiles": list(quantiles), "alpha": alpha, "margin": margin,
                     "recommend_quantile": recommend_quantile, "rule": rule, "seed": seed},
        "models": data.models, "conditions": conds,
        "other_conditions": [c for c in data.conditions if c.get("status") != "done"],
        "summary": summary, "pairwise": pw, "reversals": reversals, "rankings": ranks,
        "kendall_tau": {s: kendall_tau(r) for s, r in ranks.items()}, "recommendation": rec,
        "notes": data.notes + notes,
    }
    result["cross_device"] = _cross_device(conds, pw, result["kendall_tau"], result["notes"])
    return result, conds, cells


def _setting_key(c: dict) -> tuple:
    """What a condition measures, apart from the device: equal keys on two runs are the same setting."""
    return tuple(_axis_value(c, a) for a in AXES if a != "device")


def _cross_device(conds: list[dict], pw: dict | None, taus: dict, notes: list[str]) -> dict | None:
    """For every two runs of a merged analysis (conditions carry ``run_index``): the settings both measured, each
    model order there classified by :func:`~leancnn.latency.stats.order_agreement` from the merged (Holm) tests,
    counts per statistic, and the Kendall τ between the two runs' rankings of each setting. None for one run."""
    runs = list(dict.fromkeys(c["run_index"] for c in conds if c.get("run_index") is not None))
    if len(runs) < 2:
        return None
    by_run: dict[int, dict[tuple, dict]] = {i: {} for i in runs}
    info: dict[int, dict] = {}
    for c in conds:
        i = c.get("run_index")
        if i is None:
            continue
        info.setdefault(i, {"index": i, "name": c.get("run"), "prefix": c.get("device")})
        k = _setting_key(c)
        if k in by_run[i]:
            notes.append(f"{c['id']} measures the same setting as {by_run[i][k]['id']}; only the first is matched "
                         f"across devices")
            continue
        by_run[i][k] = c
    position = {stat: {key: n for n, key in enumerate(t["conditions"])} for stat, t in taus.items()}
    stats = [quantile_label(q) for q in pw["quantiles"]] if pw else list(taus)
    pairs = []
    for n, i in enumerate(runs):
        for j in runs[n + 1:]:
            matched = [(c, by_run[j][k]) for k, c in by_run[i].items() if k in by_run[j]]
            orders = order_agreement(pw, [(c1["key"], c2["key"]) for c1, c2 in matched]) if pw and matched else []
            by_key = {c1["key"]: (c1, c2) for c1, c2 in matched}
            for r in orders:
                c1, c2 = by_key[r["condition_1"]]
                r.update(setting=c1.get("run_label"), id_1=c1["id"], id_2=c2["id"])
            tau_rows = []
            for c1, c2 in matched:
                row = {"setting": c1.get("run_label"), "id_1": c1["id"], "id_2": c2["id"]}
                for stat, t in taus.items():
                    a, b = position[stat].get(c1["key"]), position[stat].get(c2["key"])
                    cell = {k: None if a is None or b is None else t[k][a][b]
                            for k in ("tau", "p_value", "spearman", "discordant", "n_models")}
                    row[stat] = cell
                tau_rows.append(row)
            counts = {}
            for stat in stats:
                rs = [r for r in orders if r["statistic"] == stat]
                counts[stat] = {"compared": len(rs), **{a: sum(r["agreement"] == a for r in rs)
                                                        for a in ("holds", "reverses", "unsettled")},
                                **{f"settled_{s.replace(' ', '_')}": sum(r["settled"] == s for r in rs)
                                   for s in ("1 only", "2 only", "neither")},
                                "unsettled_same_direction": sum(r["agreement"] == "unsettled" and r["same_direction"]
                                                                for r in rs)}
            pairs.append({"run_1": info[i], "run_2": info[j], "matched": len(matched),
                          "unmatched_1": [c["id"] for k, c in by_run[i].items() if k not in by_run[j]],
                          "unmatched_2": [c["id"] for k, c in by_run[j].items() if k not in by_run[i]],
                          "counts": counts, "orders": orders, "tau": tau_rows})
    return {"match_axes": [a for a in AXES if a != "device"], "alpha": pw["alpha"] if pw else None,
            "n_tests": pw["n_tests"] if pw else 0, "pairs": pairs}


def cross_device_summary(result: dict) -> list[str]:
    """One line per two runs and statistic of a compare analysis (``result["cross_device"]``): how many orders
    hold, reverse or stay unsettled; empty for a single run."""
    cd = result.get("cross_device")
    if not cd:
        return []
    lines = []
    for p in cd["pairs"]:
        for stat, n in p["counts"].items():
            lines.append(f"{p['run_1']['name']} vs {p['run_2']['name']}, {stat}: {n['holds']} hold, {n['reverses']} "
                         f"reverse, {n['unsettled']} unsettled (settled on {p['run_1']['name']} only "
                         f"{n['settled_1_only']}, on {p['run_2']['name']} only {n['settled_2_only']}, neither "
                         f"{n['settled_neither']}) of {n['compared']} model pairs in {p['matched']} matched settings")
    return lines


def analyse(data: RunData, quantiles: Sequence[float] = (0.5, 0.99), alpha: float = 0.05, margin: float = 0.02,
            recommend_quantile: float = 0.99, rule: str = "minimax", n_boot: int | None = None,
            seed: int = 0) -> dict:
    """Summaries per cell, block-paired pairwise tests (Holm), rank reversals with the axes that differ,
    rankings and Kendall τ per quantile, and a recommendation over the models present in every condition.
    JSON-serialisable. ``n_boot=None``: :func:`~leancnn.latency.stats.auto_n_boot` for the pairwise tests."""
    return _analyse(data, quantiles, alpha, margin, recommend_quantile, rule, n_boot, seed)[0]


# ------------------------------------------------------------------------------------------------ figures


def _grid(n: int, ncols: int, w: float, h: float):
    plt = _pyplot()
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _log_axis(ax, which: str = "x") -> None:
    """Log scale with readable plain-number ticks (a narrow range gets linear-spaced ticks)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

    getattr(ax, f"set_{which}scale")("log")
    lo, hi = getattr(ax, f"get_{which}lim")()
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(MaxNLocator(5) if hi < 10 * lo else LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def _plot_cdfs(conds, cells, colors, path):
    fig, axes = _grid(len(conds), 4, 3.4, 2.6)
    for ax, c in zip(axes, conds):
        for m, (x, _) in cells[c["key"]].items():
            xs = np.sort(x) * 1e3
            ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, color=colors[m], lw=1.2, label=m)
        _log_axis(ax)
        ax.set_title(f"{c['id']}: {c['key']}" + (" [load died]" if _died(c) else ""), fontsize=7)
        ax.set_xlabel("latency (ms)", fontsize=8)
        ax.set_ylabel("CDF", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


def _plot_boxes(conds, cells, models, path):
    from matplotlib.patches import Patch

    with_device = len({c.get("device") for c in conds}) > 1
    settings = list(dict.fromkeys(_setting(c, with_device) for c in conds))
    order = sorted(conds, key=lambda c: (settings.index(_setting(c, with_device)), _load_rank(c)))
    ncols = 1 if len(order) > 12 else 2
    fig, axes = _grid(len(models), ncols, min(14.0, max(4.0, 0.45 * len(order) + 1.5)), 3.4)
    for ax, m in zip(axes, models):
        pos = [i for i, c in enumerate(order) if m in cells[c["key"]]]
        bp = ax.boxplot([cells[order[i]["key"]][m][0] * 1e3 for i in pos], positions=pos, whis=(1, 99),
                        showfliers=False, widths=0.6, patch_artist=True)
        for patch, i in zip(bp["boxes"], pos):
            patch.set(facecolor=f"C{settings.index(_setting(order[i], with_device)) % 10}", alpha=0.5)
        for i in range(1, len(order)):
            if _setting(order[i], with_device) != _setting(order[i - 1], with_device):
                ax.axvline(i - 0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(order)), [f"{c['id']} {_load_level(c)}" for c in order], rotation=60, ha="right",
                      fontsize=7)
        _log_axis(ax, "y")
        ax.set_ylabel("latency (ms)", fontsize=8)
        ax.set_title(f"{m} (box: IQR, whiskers: p1-p99)", fontsize=9)
        ax.grid(alpha=0.3, axis="y", which="both")
    axes[0].legend(handles=[Patch(color=f"C{i % 10}", alpha=0.5, label=s) for i, s in enumerate(settings)],
                   fontsize=7)
    return save_figure(fig, path)


def _plot_tau(taus, conds, path):
    plt = _pyplot()
    k = len(conds)
    size = min(7.5, 2.8 + 0.3 * k)
    fig, axes = plt.subplots(1, len(taus), figsize=(size * len(taus) + 1, size), squeeze=False)
    ids = [c["id"] for c in conds]
    for ax, (stat, t) in zip(axes.flat, taus.items()):
        mat = np.array([[np.nan if v is None else v for v in row] for row in t["tau"]], dtype=np.float64)
        im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu")
        ax.set_xticks(range(k), ids, rotation=90, fontsize=7)
        ax.set_yticks(range(k), ids, fontsize=7)
        ax.set_title(f"Kendall τ of the rankings by {stat}", fontsize=9)
        if k <= 16:
            for i in range(k):
                for j in range(k):
                    if not np.isnan(mat[i, j]):
                        ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if abs(mat[i, j]) > 0.6 else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path)


def _plot_trend(conds, summary, models, colors, path):
    with_device = len({c.get("device") for c in conds}) > 1
    groups: dict[str, list[dict]] = {}
    for c in conds:
        groups.setdefault(_setting(c, with_device), []).append(c)
    fig, axes = _grid(len(groups), 3, 4.2, 3.2)
    stats = {(r["condition"], r["model"]): r for r in summary}
    for ax, (setting, cs) in zip(axes, groups.items()):
        cs = sorted(cs, key=_load_rank)
        for m in models:
            xs = [i for i, c in enumerate(cs) if (c["key"], m) in stats]
            for stat, ls in (("median", "-"), ("p99", "--")):
                ax.plot(xs, [stats[cs[i]["key"], m][stat] * 1e3 for i in xs], ls, marker="o", ms=3,
                        color=colors[m], label=f"{m} {stat}")
        ax.set_xticks(range(len(cs)), [_load_level(c) for c in cs], rotation=45, ha="right", fontsize=7)
        _log_axis(ax, "y")
        ax.set_ylabel("latency (ms)", fontsize=8)
        ax.set_title(setting, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------------ tables


def _f(v: Any, spec: str = ".3g", scale: float = 1.0) -> str:
    return "–" if v is None else format(v if scale == 1 else v * scale, spec)


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _ci(v: float, ci: Sequence[float], spec: str = ".3f") -> str:
    return f"{v:{spec}} [{ci[0]:{spec}}, {ci[1]:{spec}}]"


def _write_csv(path: Path, headers: Sequence[str], rows: Sequence[Sequence]) -> Path:
    buf = StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(headers)
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def _write_csvs(result: dict, out: Path) -> None:
    ids = {c["key"]: c["id"] for c in result["conditions"]}
    stats = ("n", "mean", "std", "cv", "median", "p90", "p99", "iqr", "max_min")
    _write_csv(out / "summary.csv",
               ("condition", "label", "model", *stats, "median_ci_low", "median_ci_high", "p99_ci_low",
                "p99_ci_high"),
               [[ids[r["condition"]], r["condition"], r["model"], *(r[s] for s in stats), *r["ci"]["median"],
                 *r["ci"]["p99"]] for r in result["summary"]])
    tests = (result["pairwise"] or {}).get("tests", [])
    _write_csv(out / "tests.csv",
               ("condition", "label", "a", "b", "statistic", "estimate_a", "estimate_b", "ratio", "ratio_ci_low",
                "ratio_ci_high", "prob_a_faster", "p_value", "p_holm", "verdict_holm", "faster", "few_samples"),
               [[ids[t["condition"]], t["condition"], t["a"], t["b"], t["statistic"], t["estimate_a"],
                 t["estimate_b"], t["ratio"], *t["ratio_ci"], t["prob_a_faster"], t["p_value"], t["p_holm"],
                 t["verdict_holm"], t["faster"] or "", t["few_samples"]] for t in tests])
    _write_csv(out / "reversals.csv",
               ("a", "b", "statistic", "condition_1", "condition_2", "faster_1", "faster_2", "ratio_1",
                "ratio_1_ci_low", "ratio_1_ci_high", "ratio_2", "ratio_2_ci_low", "ratio_2_ci_high",
                "log_ratio_change", "log_ratio_change_ci_low", "log_ratio_change_ci_high", "p_holm_1", "p_holm_2",
                "axes", "label_1", "label_2"),
               [[r["a"], r["b"], r["statistic"], ids[r["condition_1"]], ids[r["condition_2"]], r["faster_1"],
                 r["faster_2"], r["ratio_1"], *r["ratio_ci_1"], r["ratio_2"], *r["ratio_ci_2"], r["log_ratio_change"],
                 *r["log_ratio_change_ci"], r["p_holm_1"], r["p_holm_2"], " ".join(r["axes"]), r["condition_1"],
                 r["condition_2"]] for r in result["reversals"]])
    cd = result.get("cross_device")
    if cd:
        _write_csv(out / "cross_device.csv",
                   ("run_1", "run_2", "setting", "id_1", "id_2", "a", "b", "statistic", "agreement", "settled",
                    "faster_1", "faster_2", "ratio_1", "ratio_1_ci_low", "ratio_1_ci_high", "p_holm_1", "ratio_2",
                    "ratio_2_ci_low", "ratio_2_ci_high", "p_holm_2", "same_direction", "log_ratio_change",
                    "log_ratio_change_ci_low", "log_ratio_change_ci_high"),
                   [[p["run_1"]["name"], p["run_2"]["name"], r["setting"], r["id_1"], r["id_2"], r["a"], r["b"],
                     r["statistic"], r["agreement"], r["settled"], r["faster_1"] or "", r["faster_2"] or "",
                     r["ratio_1"], *r["ratio_ci_1"], r["p_holm_1"], r["ratio_2"], *r["ratio_ci_2"], r["p_holm_2"],
                     r["same_direction"], r["log_ratio_change"], *r["log_ratio_change_ci"]]
                    for p in cd["pairs"] for r in p["orders"]])
        _write_csv(out / "cross_device_tau.csv",
                   ("run_1", "run_2", "setting", "id_1", "id_2", "statistic", "tau", "p_value", "spearman",
                    "discordant", "n_models"),
                   [[p["run_1"]["name"], p["run_2"]["name"], t["setting"], t["id_1"], t["id_2"], stat,
                     *("" if t[stat][k] is None else t[stat][k]
                       for k in ("tau", "p_value", "spearman", "discordant", "n_models"))]
                    for p in cd["pairs"] for t in p["tau"] for stat in result["kendall_tau"]])


# ------------------------------------------------------------------------------------------------ Markdown


def _setup_section(result: dict, all_conditions: list[dict]) -> str:
    lines = []
    for s in result["sources"]:
        versions = s.get("versions") or {}
        vtext = ", ".join(f"{k} {v if v is not None else 'not installed'}" for k, v in versions.items()) or "–"
        lines += [f"- **{_md(s.get('name'))}**: device `{s.get('device')}`, machine: {_md(s.get('machine') or '–')}",
                  f"  - versions: {vtext}; created {s.get('created') or '–'}",
                  f"  - command: `{s.get('command') or '–'}`"]
    kinds = Counter(c.get("load_kind_used") or "unknown" for c in result["conditions"])
    what = {"stress-ng": "stress-ng", "python fallback": "the built-in Python busy-loop generator (stress-ng not "
            "available)", "cgroup v1": "a cgroup v1 CPU quota", "cgroup v2": "a cgroup v2 CPU quota",
            "none": "none (idle)"}
    lines.append("\nLoad generator used: " + "; ".join(f"{what.get(k, k)} in {n} condition{'s' * (n != 1)}"
                                                      for k, n in kinds.items()) + ".")
    mrows = [[_md(m), d.get("source"), _md(d.get("name")), "×".join(map(str, d.get("input") or [])), d.get("kind"),
              _f(d.get("params"), ","), _f(d.get("macs"), ",")] for m, d in result["models"].items()]
    lines += ["", "Models:", "", format_table(mrows, ["label", "source", "name", "input", "kind", "params", "MACs"],
                                              markdown=True)]
    crows = []
    for c in all_conditions:
        b, a = c.get("snapshot_before") or {}, c.get("snapshot_after") or {}
        ld = c.get("load") or {}
        planned = ld.get("workers", 0) * ld.get("percent", 100) / 100 if ld.get("workers") else 0
        flags = ["truncated (time budget hit)"] if c.get("truncated") else []
        if _died(c):
            flags.append(f"**load died mid-run: {_md(_died(c))}**")
        if c.get("status") != "done":
            flags.append(f"skipped: {_md(c.get('skip_reason') or '?')}")
        n = list((c.get("samples_per_model") or {}).values())
        crows.append([c.get("id"), _md(c.get("label")), c.get("status"), c.get("load_kind_used") or "–",
                      f"{planned:g} / {_f(c.get('load_cpu_share'), '.2f')}", _f(c.get("load_wait_share"), ".2f"),
                      f"{_f(b.get('loadavg_1'), '.2f')} → {_f(a.get('loadavg_1'), '.2f')}",
                      f"{_f(b.get('cpu_mhz_mean'), '.0f')} → {_f(a.get('cpu_mhz_mean'), '.0f')}",
                      _f(c.get("seconds"), ".1f"), (f"{min(n)}–{max(n)}" if min(n) != max(n) else str(n[0])) if n
                      else "–", "; ".join(flags) or "–",
                      "; ".join(f"{_md(m)}: {_md(r)}" for m, r in (c.get("skipped_models") or {}).items()) or "–"])
    lines += ["", "Conditions (load CPU: planned / measured cores used by the load; wait: cores the load was runnable "
              "but waiting; loadavg and mean MHz before → after):", "",
              format_table(crows, ["id", "label", "status", "load generator", "load CPU", "load wait", "loadavg 1 min",
                                   "MHz", "seconds", "samples/model", "flags", "skipped models"], markdown=True)]
    return "\n".join(lines)


def _variability_sections(result: dict) -> list[tuple[str, str]]:
    conds = {c["key"]: c for c in result["conditions"]}
    rows, few = [], False
    for r in result["summary"]:
        few |= r["few_samples"]["p99"]
        rows.append([conds[r["condition"]]["id"], _md(r["model"]), r["n"], _f(r["median"], ".4g", 1e3),
                     _f(r["p90"], ".4g", 1e3), _f(r["p99"], ".4g", 1e3) + ("†" if r["few_samples"]["p99"] else ""),
                     _f(r["cv"], ".1f", 100), _f(r["iqr_rel"], ".1f", 100), _f(r["p99_p50"], ".2f")])
    table = format_table(rows, ["condition", "model", "n", "median ms", "p90 ms", "p99 ms", "CV %", "IQR/median %",
                                "p99/p50"], markdown=True)
    if few:
        table += "\n\n† fewer than 662 latencies (MLPerf's floor): the p99 rests on a handful of tail points."
    with_device = len({c.get("device") for c in conds.values()}) > 1
    levels = list(dict.fromkeys(_load_level(c) for c in sorted(conds.values(), key=_load_rank)))
    settings = list(dict.fromkeys(_setting(c, with_device) for c in conds.values()))
    by = {(r["model"], _setting(conds[r["condition"]], with_device), _load_level(conds[r["condition"]])): r
          for r in result["summary"]}
    parts = ["Each cell: p99/p50 · CV %, per load level (columns, least contention first)."]
    for m in dict.fromkeys(r["model"] for r in result["summary"]):
        trows = [[_md(s)] + [_ratio_cv(by.get((m, s, lv))) for lv in levels] for s in settings]
        parts += [f"**{_md(m)}**", format_table(trows, ["setting", *levels], markdown=True)]
    parts.append(f"![median and p99 against load]({FIGURES['trend']})\n\n![latency by condition]({FIGURES['boxes']})")
    return [("Variability per condition", table + f"\n\n![latency CDFs]({FIGURES['cdf']})"),
            ("How variability grows with load", "\n\n".join(parts))]


def _ratio_cv(r: dict | None) -> str:
    return f"{r['p99_p50']:.2f} · {100 * r['cv']:.1f} %" if r else "–"


def _label(conds: dict, key: str) -> str:
    died = " ⚠ load died" if _died(conds[key]) else ""
    return f"{conds[key]['id']} ({_md(key)}){died}"


def _comparison_sections(result: dict) -> list[tuple[str, str]]:
    conds = {c["key"]: c for c in result["conditions"]}
    pw = result["pairwise"]
    if pw is None:
        pair_text = "No pairwise test: no condition has two models."
        rev_text = "No rank reversal can be tested: no condition has two models."
    else:
        lines = [f"{pw['n_tests']} tests (conditions × model pairs × statistics) with the block-paired bootstrap "
                 f"(B = {pw['n_boot']}), tie margin ±{100 * pw['margin']:g} %, Holm-adjusted together at "
                 f"α = {pw['alpha']:g} (family-wise)." + (" **Holm limited: raise n_boot.**"
                                                         if pw["holm_limited"] else ""), ""]
        for q in pw["quantiles"]:
            ts = [t for t in pw["tests"] if math.isclose(t["quantile"], q)]
            sig = sum(t["significant"] for t in ts)
            lines.append(f"- {quantile_label(q)}: {sig} of {len(ts)} pairs have a significant order, "
                         f"{len(ts) - sig} tied or undecided")
        ranks = result["rankings"]
        orows = [[c["id"]] + [" < ".join(map(_md, r["order"][i])) for r in ranks.values()]
                 for i, c in enumerate(result["conditions"])]
        lines += ["", "Order per condition (point estimates, fastest first):", "",
                  format_table(orows, ["condition", *(f"by {s}" for s in ranks)], markdown=True)]
        pair_text = "\n".join(lines)
        if result["reversals"]:
            rrows = [[f"{_md(r['a'])} vs {_md(r['b'])}", r["statistic"],
                      f"{_label(conds, r['condition_1'])} → {_md(r['faster_1'])}",
                      f"{_label(conds, r['condition_2'])} → {_md(r['faster_2'])}",
                      _ci(r["ratio_1"], r["ratio_ci_1"]), _ci(r["ratio_2"], r["ratio_ci_2"]),
                      ", ".join(r["axes"]) or "–"] for r in result["reversals"]]
            rev_text = (f"{len(rrows)} rank reversal(s): Holm-significant, opposite orders in two conditions "
                        f"(ratio = statistic of a / statistic of b, {100 * (1 - pw['alpha']):g} % CI).\n\n"
                        + format_table(rrows, ["pair", "statistic", "condition 1 → faster", "condition 2 → faster",
                                               "a/b in 1", "a/b in 2", "axes that differ"], markdown=True))
        else:
            rev_text = (f"No rank reversal found: {pw['n_tests']} tests over {len(pw['conditions'])} conditions, "
                        f"Holm-adjusted at α = {pw['alpha']:g}; no pair has significant, opposite orders in two "
                        f"conditions.")
    tau_lines = []
    for stat, t in result["kendall_tau"].items():
        k = len(t["conditions"])
        pairs = [(t["tau"][i][j], i, j) for i in range(k) for j in range(i + 1, k) if t["tau"][i][j] is not None]
        if not pairs:
            tau_lines.append(f"- by {stat}: no two conditions with comparable rankings")
            continue
        lo, i, j = min(pairs)
        tau_lines.append(f"- by {stat}: lowest τ = {lo:.2f} between {_label(conds, t['conditions'][i])} and "
                         f"{_label(conds, t['conditions'][j])} ({t['discordant'][i][j]} discordant model pair(s)); "
                         f"mean τ {np.mean([p[0] for p in pairs]):.2f} over {len(pairs)} condition pairs")
    tau_text = "\n".join(tau_lines) + f"\n\n![Kendall tau]({FIGURES['tau']})"
    rec = result["recommendation"]
    if rec is None:
        rec_text = "No recommendation: fewer than 2 models are present in every condition."
    else:
        rrows = [[_md(r["model"]), _f(r["worst_case"], ".4g", 1e3), _label(conds, r["worst_condition"]),
                  _f(r["regret"], ".3f"), _f(r["mean_rank"], ".2f"), _f(r["baseline_mean"], ".4g", 1e3)]
                 for r in rec["table"]]
        rec_text = (f"Rule `{rec['rule']}` on the {rec['statistic']}: {_md(rec['summary'])}.\n\n"
                    + format_table(rrows, ["model", f"worst {rec['statistic']} ms", "where", "regret ×",
                                           "mean rank", f"mean ms in {conds[rec['baseline']]['id']}"], markdown=True)
                    + "\n\nPoint estimates: the pairwise tests above say which gaps are significant.")
    return [("Pairwise comparisons", pair_text), ("Rank reversals", rev_text),
            ("Ranking agreement (Kendall τ)", tau_text), ("Recommendation", rec_text)]


def _p(v: float) -> str:
    return f"{v:.2g}" if v < 0.01 else f"{v:.3g}"


def _cross_device_section(result: dict) -> str:
    cd = result["cross_device"]
    alpha = cd["alpha"]
    parts = [f"Conditions of two runs with the same {', '.join(cd['match_axes'])} are matched. For each model pair "
             f"and statistic, the order **holds** when both machines have a Holm-significant order with the same "
             f"faster model, **reverses** when both are significant with opposite winners, and is **unsettled** when "
             f"one or both are tie/undecided (within the tie margin, or too little evidence). The verdicts are those "
             f"of the {cd['n_tests']} tests above (Holm together at α = {alpha}), so P(any false 'holds' or "
             f"'reverses') ≤ α. Full list: cross_device.csv; τ: cross_device_tau.csv."
             if alpha is not None else "No pairwise test: no order can be compared across devices."]
    for p in cd["pairs"]:
        r1, r2 = p["run_1"], p["run_2"]
        head = (f"**{_md(r1['name'])}** (conditions {r1['index']}.\\*) vs **{_md(r2['name'])}** (conditions "
                f"{r2['index']}.\\*): {p['matched']} matched setting(s)")
        extra = [f"only in {_md(r['name'])}: {', '.join(u)}" for r, u in ((r1, p["unmatched_1"]), (r2, p["unmatched_2"]))
                 if u]
        parts.append(head + (f" ({'; '.join(extra)})" if extra else "") + ".")
        if not p["matched"]:
            continue
        crows = [[stat, n["compared"], n["holds"], n["reverses"], n["unsettled"],
                  f"{n['settled_1_only']} / {n['settled_2_only']} / {n['settled_neither']}",
                  n["unsettled_same_direction"]] for stat, n in p["counts"].items()]
        parts.append(format_table(crows, ["statistic", "model pairs", "hold", "reverse", "unsettled",
                                          f"unsettled: settled on {r1['index']} only / {r2['index']} only / neither",
                                          "unsettled, point estimates agree"], markdown=True))
        rev = [r for r in p["orders"] if r["agreement"] == "reverses"]
        if rev:
            rrows = [[_md(r["setting"]), f"{_md(r['a'])} vs {_md(r['b'])}", r["statistic"],
                      f"{_md(r['faster_1'])}: {_ci(r['ratio_1'], r['ratio_ci_1'])}, p {_p(r['p_holm_1'])}",
                      f"{_md(r['faster_2'])}: {_ci(r['ratio_2'], r['ratio_ci_2'])}, p {_p(r['p_holm_2'])}"]
                     for r in rev]
            parts.append(f"Orders that reverse between the machines (a/b ratio with its {100 * (1 - alpha):g} % CI, "
                         f"Holm p):\n\n" + format_table(rrows, ["setting", "pair", "statistic",
                                                                f"faster on {r1['index']}", f"faster on {r2['index']}"],
                                                         markdown=True))
        else:
            parts.append("No order reverses between the two machines.")
        stats = list(result["kendall_tau"])
        trows = [[_md(t["setting"]), t["id_1"], t["id_2"],
                  *(("–" if t[s]["tau"] is None else f"{t[s]['tau']:.2f} ({t[s]['discordant']} discordant)")
                    for s in stats)] for t in p["tau"]]
        parts.append("Kendall τ between the two machines' model rankings of each setting (point estimates):\n\n"
                     + format_table(trows, ["setting", "id 1", "id 2", *(f"τ by {s}" for s in stats)], markdown=True))
    return "\n\n".join(parts)


def _write(data: RunData, out: Path, title: str, **analysis_kw) -> Path:
    result, conds, cells = _analyse(data, **analysis_kw)
    out = ensure_writable_dir(out)
    models = list(dict.fromkeys(m for per in cells.values() for m in per))
    colors = {m: f"C{i % 10}" for i, m in enumerate(models)}
    _plot_cdfs(conds, cells, colors, out / FIGURES["cdf"])
    _plot_boxes(conds, cells, models, out / FIGURES["boxes"])
    _plot_tau(result["kendall_tau"], conds, out / FIGURES["tau"])
    _plot_trend(conds, result["summary"], models, colors, out / FIGURES["trend"])
    _write_csvs(result, out)
    atomic_write_json(out / "analysis.json", result)
    warnings = [f"- **{c['id']} ({_md(c.get('label'))}): load died mid-run: {_md(_died(c))}**; its latencies were "
                f"measured with less contention than planned" for c in data.conditions if _died(c)]
    warnings += [f"- {c['id']} ({_md(c.get('label'))}): truncated, the time budget was hit"
                 for c in data.conditions if c.get("truncated")]
    sections = [("Warnings", "\n".join(warnings))] if warnings else []
    sections += [("Setup", _setup_section(result, data.conditions)), *_variability_sections(result),
                 *_comparison_sections(result)]
    if result["cross_device"]:
        sections.append(("Across devices", _cross_device_section(result)))
    if result["notes"]:
        sections.append(("Notes", "\n".join(f"- {_md(n)}" for n in result["notes"])))
    sections.append(("Files", "summary.csv (seconds), tests.csv, reversals.csv, "
                     + ("cross_device.csv, cross_device_tau.csv, " if result["cross_device"] else "")
                     + "analysis.json, " + ", ".join(FIGURES.values())))
    return write_markdown(out / "report.md", title, sections)


def check_report_out(out: str | Path, run_dirs: Sequence[str | Path], force: bool = False,
                     own: str | Path | None = None) -> Path:
    """A report's folder (``leancnn.outputs``): not one of ``run_dirs`` (but the run's ``own`` folder), nor
    inside or holding one; the :data:`REPORT_FILES` it already holds are replaced only with ``force`` (a run's
    own report is rewritten without)."""
    from ..outputs import check_output, check_output_dir, relation

    out = check_output_dir(check_output(out, [("latency run directory", d) for d in run_dirs], "-o", own=own))
    held = [f for f in REPORT_FILES if (out / f).exists()]
    if held and not force and not (own is not None and relation(out, own) == "is"):
        raise LeancnnError(f"-o '{out}' already holds a latency report ({', '.join(held[:3])}"
                           f"{', ...' if len(held) > 3 else ''}); add --force to replace it, or choose another -o")
    return out


def write_report(run_dir: str | Path, out: str | Path | None = None, force: bool = False, **analysis_kw) -> Path:
    """Write ``report.md``, ``summary.csv``, ``tests.csv``, ``reversals.csv``, ``analysis.json`` and the PNGs of
    :data:`FIGURES` into ``out`` (default ``run_dir``; another folder's earlier report only with ``force``);
    ``analysis_kw`` go to :func:`analyse`. Returns the report's path."""
    check_analysis_args(*(analysis_kw.get(k) for k in ("quantiles", "alpha", "margin", "recommend_quantile")))
    if out is not None:
        check_report_out(out, [run_dir], force, own=run_dir)
    data = load_run(run_dir)
    return _write(data, Path(run_dir if out is None else out),
                  f"Latency under CPU contention: {data.path.resolve().name}", **analysis_kw)


def _merge(runs: list[RunData], out: Path) -> RunData:
    devices = [str(r.run.get("device") or "?") for r in runs]
    cpus = [cpu_label(r.sources[0].get("cpu"), name=False) if len(r.sources) == 1 else None for r in runs]
    devices = [f"{d} [{cpu}]" if devices.count(d) > 1 and cpu else d for d, cpu in zip(devices, cpus)]
    prefixes: list[str] = []
    for i, (r, d) in enumerate(zip(runs, devices)):
        p = d if devices.count(d) == 1 else f"{d} ({r.path.resolve().name})"
        prefixes.append(p if p not in prefixes else f"{p} #{i + 1}")
    conditions, cols, models, notes, sources = [], {k: [] for k in SAMPLE_COLUMNS}, {}, [], []
    for i, (r, p) in enumerate(zip(runs, prefixes), 1):
        rename = {c.get("id"): f"{i}.{c.get('id')}" for c in r.conditions}
        conditions += [{**c, "id": rename[c.get("id")], "label": f"{p} · {c.get('label')}", "device": p,
                        "run": r.path.resolve().name, "run_index": i, "run_label": c.get("label")}
                       for c in r.conditions]
        for k in SAMPLE_COLUMNS:
            v = r.samples[k]
            cols[k].append(np.array([rename[x] for x in v.tolist()], dtype=str) if k == "condition" else v)
        for m, spec in r.models.items():
            models.setdefault(m, spec)
        notes += [f"{p}: {n}" for n in r.notes]
        sources += [{**s, "name": f"{s['name']} (conditions {i}.*, prefix '{p}')"} for s in r.sources]
    samples = {k: np.concatenate(v) for k, v in cols.items()}
    run = {"device": ", ".join(prefixes), "machine": "; ".join(str(r.run.get("machine")) for r in runs)}
    return RunData(out, run, models, conditions, samples, notes, sources)


def compare(run_dirs: Sequence[str | Path], out: str | Path, force: bool = False, **analysis_kw) -> Path:
    """One report over several runs (e.g. a CPU and a GPU machine): every condition label is prefixed by its
    run's device (plus the CPU's family/model, or else the run directory's name, when two runs share a device
    string), ids become ``<run #>.<id>``; the report adds the cross-device analysis of every two runs (section
    "Across devices", cross_device.csv, cross_device_tau.csv, ``analysis.json``'s ``cross_device``;
    :func:`cross_device_summary` for a few lines).
    :class:`LeancnnError` for fewer than 2 runs or runs with no model label in common. ``out`` is none of the
    runs; an earlier report there is replaced only with ``force``."""
    check_analysis_args(*(analysis_kw.get(k) for k in ("quantiles", "alpha", "margin", "recommend_quantile")))
    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 2:
        raise LeancnnError(f"compare needs at least 2 run directories, got {len(dirs)}")
    check_report_out(out, dirs, force)
    runs = [load_run(d) for d in dirs]
    labels = [set(r.samples["model"].tolist()) for r in runs]
    if not set.intersection(*labels):
        raise LeancnnError("the runs share no model label, nothing to compare: "
                           + "; ".join(f"{d}: {', '.join(sorted(s)) or 'none'}" for d, s in zip(dirs, labels)))
    return _write(_merge(runs, Path(out)), Path(out), f"Latency under contention, {len(runs)} runs compared", **analysis_kw)
