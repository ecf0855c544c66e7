"""Leave-one-domain-out (LODO) evaluation: for each target domain, train on the other domains and test on the
whole held-out domain, over seeds and over named variants of one base config (e.g. vanilla / MixStyle).
(``data.test_split=test`` tests on the target's test split instead, e.g. for adaptation with ``semi.mode=uda``,
whose unlabelled data is the target's train split.)

Runs live in ``<out>/<variant>/<target>/seed<k>/``. Each run is keyed by its fingerprint (the resolved config
without runtime-only keys, and the digests of the data; :mod:`leancnn.tasks.runs`): a finished run with the same
fingerprint is reused, an interrupted one continues from its ``last.pt``, and a run of another fingerprint (the
config, a variant or the data changed) is trained again, with the keys that differ printed. So the command can be
re-run after a crash, or split over processes with ``shard=(i, n)`` and re-run once more to collect the table.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import report
from ..config import SEED_MAX, ExperimentConfig, apply_overrides, from_dict
from ..data import DOMAINS
from ..errors import ConfigError, LeancnnError
from ..io import atomic_write_json, atomic_write_text
from ..outputs import check_output, check_output_dir
from .digits import check_experiment, held_out_wording, run_fingerprint
from .lifecycle import train_task
from .protocol import get_task
from .runs import RunState, cached_run_state, check_path_arg, checkpoint_inputs, data_inputs


@dataclass
class LodoRun:
    variant: str
    target: str
    seed: int
    config: ExperimentConfig
    run_dir: Path
    fingerprint: dict

    def state(self) -> RunState:
        return cached_run_state(self.run_dir, self.fingerprint)

    @property
    def done(self) -> bool:
        """Finished, with the fingerprint of this plan (a run of another config does not count)."""
        return self.state().action == "done"


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"crossdomain: model.mixstyle.mix=crossdomain data.sampler=domain"`` -> (name, overrides)."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise LeancnnError(f"variant '{text}': expected 'NAME: key=value ...' with a name of letters, digits, "
                           "'-', '_' or '.'")
    return name, rest.split()


def _unique(values: Sequence, what: str) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise LeancnnError(f"{what} lists {v!r} more than once")
        seen.add(v)


def plan(base: dict, variants: dict[str, list[str]] | Sequence[tuple[str, list[str]]], targets: Sequence[str],
         seeds: Sequence[int], out: Path, domains: Sequence[str] = DOMAINS) -> list[LodoRun]:
    """Every run's validated config and fingerprint; fails before anything is trained or written if one of
    them is invalid. ``variants`` may be a list of (name, overrides) pairs, so a repeated name is caught."""
    pairs = list(variants.items()) if isinstance(variants, dict) else list(variants)
    if not pairs:
        raise LeancnnError("no variant to run")
    if not seeds:
        raise LeancnnError("no seed given")
    if not targets:
        raise LeancnnError("no target domain given")
    _unique([n for n, _ in pairs], "--variant")
    _unique(targets, "--targets")
    _unique(seeds, "--seeds")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < SEED_MAX:
            raise LeancnnError(f"--seeds: {s!r} is not a seed; seeds are integers in [0, {SEED_MAX})")
    domains = list(domains)
    for t in targets:
        if t not in domains:
            raise LeancnnError(f"unknown target domain '{t}'; available: {', '.join(domains)}")
    if len(domains) < 2:
        raise LeancnnError("leave-one-domain-out needs at least two domains")
    runs = []
    for name, overrides in pairs:
        for target in targets:
            sources = [d for d in domains if d != target]
            for seed in seeds:
                raw = apply_overrides(copy.deepcopy(base), list(overrides) + [
                    f"data.domains=[{','.join(sources)}]", f"data.test_domains=[{target}]", f"train.seed={seed}"])
                try:
                    cfg = from_dict(ExperimentConfig, raw)
                except LeancnnError as e:
                    raise LeancnnError(f"variant '{name}': {e}") from None
                cfg.name = f"{cfg.name}-{name}-{target}-s{seed}"
                runs.append(LodoRun(name, target, seed, cfg, out / name / target / f"seed{seed}",
                                    run_fingerprint(cfg)))
            try:  # unknown model, MixStyle insertion names, classes: fail here, before any run
                check_experiment(runs[-1].config)
            except LeancnnError as e:
                raise LeancnnError(f"variant '{name}': {e}") from None
    return runs


def execute(runs: list[LodoRun], shard: tuple[int, int] = (0, 1), quiet: bool = True) -> None:
    i, n = shard
    if not 0 <= i < n:
        raise LeancnnError(f"shard {i}/{n}: expected 0 <= i < n")
    mine = [r for k, r in enumerate(runs) if k % n == i]
    states = [(r, r.state()) for r in mine]
    todo = [(r, st) for r, st in states if st.action != "done"]
    print(f"leave-one-domain-out: {len(runs)} runs, {len(mine)} in this shard, {len(todo)} to train", flush=True)
    for k, (run, st) in enumerate(todo, 1):
        note = {"resume": " (resuming)", "stale": f" (retraining: {st.reason})"}.get(st.action, "")
        print(f"[{k}/{len(todo)}] {run.variant}: target {run.target}, seed {run.seed}{note}", flush=True)
        resume = run.run_dir / "last.pt" if st.action == "resume" else None
        train_task(get_task("classify"), run.config, out=run.run_dir, resume=resume, quiet=quiet,
                   force=st.action == "stale")


def collect(runs: list[LodoRun]) -> dict:
    """Held-out accuracy per variant, target and seed; missing runs are listed, not guessed."""
    acc: dict[str, dict[str, dict[int, float]]] = {}
    missing = []
    for r in runs:
        if not r.done:  # not finished, or finished with another fingerprint
            missing.append(str(r.run_dir))
            continue
        summary = json.loads((r.run_dir / "summary.json").read_text())
        acc.setdefault(r.variant, {}).setdefault(r.target, {})[r.seed] = summary["test"][r.target]["acc"]
    return {"acc": acc, "missing": missing}


def tested_on(runs: list[LodoRun]) -> dict[str, str]:
    """Per target, in words, what its finished runs were tested on, from the image count each run measured
    (its summary.json): "the whole held-out domain ..." only when ``data.limit_eval`` / ``data.test_split``
    cut nothing. Variants tested on different sets are named."""

    words: dict[tuple, str] = {}
    per_target: dict[str, dict[str, list[str]]] = {}
    for r in runs:
        if not r.done:
            continue
        n = json.loads((r.run_dir / "summary.json").read_text())["test"][r.target]["n"]
        data = r.config.data
        key = (r.target, n, data.test_split, data.split_seed, data.limit_eval)
        if key not in words:
            words[key] = held_out_wording(r.target, n, data)
        variants = per_target.setdefault(r.target, {}).setdefault(words[key], [])
        if r.variant not in variants:
            variants.append(r.variant)
    return {t: next(iter(w)) if len(w) == 1 else "; ".join(f"{', '.join(v)}: {k}" for k, v in w.items())
            for t, w in per_target.items()}


def table(results: dict, targets: Sequence[str], seeds: Sequence[int], markdown: bool = False) -> str:
    """Rows = variants; columns = target domains and their average, each mean ± std over seeds (in %; a
    single seed gives the plain accuracy). The average is taken per seed over targets, then mean ± std."""
    def fmt(vals):
        return f"{100 * vals[0]:.2f}" if len(vals) == 1 else report.fmt_mean_std(vals)

    rows = []
    for variant, per_target in results["acc"].items():
        row = [variant]
        for t in targets:
            vals = [per_target.get(t, {}).get(s, np.nan) for s in seeds]
            row.append(fmt(vals) if not np.isnan(vals).any() else "missing")
        avgs = [np.mean([per_target[t][s] for t in targets]) for s in seeds
                if all(s in per_target.get(t, {}) for t in targets)]
        if len(targets) > 1:
            row.append(fmt(avgs) if len(avgs) == len(seeds) else "missing")
        rows.append(row)
    return report.format_table(rows, ["variant", *targets] + (["avg"] if len(targets) > 1 else []), markdown=markdown)


def plot(results: dict, targets: Sequence[str], seeds: Sequence[int], path: Path, title: str) -> Path | None:
    """Grouped bars: held-out accuracy per target (and average) per variant, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v, pt in results["acc"].items() if all(len(pt.get(t, {})) == len(seeds) for t in targets)]
    if not variants:
        return None
    cols = [*targets, "avg"] if len(targets) > 1 else list(targets)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(cols), 3.6))
    width = 0.8 / len(variants)
    for j, v in enumerate(variants):
        per = results["acc"][v]
        data = np.array([[100 * per[t][s] for s in seeds] for t in targets])  # [targets, seeds]
        if len(targets) > 1:
            data = np.vstack([data, data.mean(0, keepdims=True)])
        x = np.arange(len(cols)) + (j - (len(variants) - 1) / 2) * width
        ax.bar(x, data.mean(1), width, yerr=data.std(1, ddof=1) if len(seeds) > 1 else None, capsize=2, label=v)
    ax.set_xticks(np.arange(len(cols)), cols)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return report.save_figure(fig, path)


def run_lodo(base: dict, variants: dict[str, list[str]], out: str | Path, targets: Sequence[str] | None = None,
             seeds: Sequence[int] = (0, 1, 2), shard: tuple[int, int] = (0, 1), domains: Sequence[str] = DOMAINS,
             quiet: bool = True, config_file: str | Path | None = None) -> dict:
    """Plan, train (this shard's missing runs), collect; write ``lodo.json``, ``lodo.md`` and ``lodo.png``.
    ``out`` is lodo's own folder: its runs are reused or replaced by fingerprint, its tables rewritten; it may not
    be, lie inside or hold the config file (``config_file``), the ``model.init`` weights or the digit data."""
    out = check_path_arg(out, "-o")
    init = (base.get("model") or {}).get("init") if isinstance(base.get("model"), dict) else None
    if init is not None and not isinstance(init, str):  # checked here: it is an input of the output check below
        raise ConfigError(f"config key 'model.init': expected a string, got {type(init).__name__} {init!r}")
    check_output_dir(check_output(out, [("config file", config_file), *checkpoint_inputs(init, "model.init"),
                                        *data_inputs("digits")], "-o"))
    targets = list(domains) if targets is None else list(targets)
    pairs = list(variants.items()) if isinstance(variants, dict) else list(variants)
    runs = plan(base, pairs, targets, seeds, out, domains)
    execute(runs, shard, quiet)
    results = collect(runs)
    results.update(targets=targets, seeds=list(seeds), variants={k: list(v) for k, v in pairs},
                   base=copy.deepcopy(base), fingerprints={str(r.run_dir.relative_to(out)): r.fingerprint["fingerprint"]
                                                           for r in runs})
    text = table(results, targets, seeds)
    if not results["missing"]:
        results["tested_on"] = tested_on(runs)  # what was measured, not what the protocol would like
        atomic_write_json(out / "lodo.json", results)
        title = f"leave-one-domain-out, {runs[0].config.model.name}, {len(seeds)} seeds"
        plot(results, targets, seeds, out / "lodo.png", title)
        atomic_write_text(out / "lodo.md", f"# {title}\n\nHeld-out accuracy (%), mean ± std over seeds "
                          f"{', '.join(map(str, seeds))}. Tested on "
                          f"{'; '.join(results['tested_on'][t] for t in targets)}.\n\n"
                          f"{table(results, targets, seeds, markdown=True)}\n\n"
                          "![held-out accuracy](lodo.png)\n")
    results["text"] = text
    return results
