"""MixStyle in reinforcement learning under visual shift (issue 23): docs/results.md section ``mixstyle-rl`` and
docs/img/mixstyle_rl.png.

PPO (stable-baselines3) with the IMPALA CNN on a MiniGrid task in pixels (``leancnn.data.styled_env``), trained in
the training styles, tested in styles never seen (``leancnn rl train``). Vanilla vs MixStyle as in the paper's
CoinRun agent (random mixing after conv sequences 0 and 1, alpha 0.3, no p gate, also during rollouts), seeds
0, 1, 2; the same frames per run. Runs are cached under ``$LEANCNN_CACHE/bench/mixstyle_rl`` by fingerprint: an
interrupted run resumes exactly from its last.pt, a finished one is reused. ``--jobs 2`` trains two runs at once,
one thread each (the per-run budget in the table is what one run took here). A third variant (Dassl's defaults,
mixing in the PPO updates only) was added after the paper's setting had failed to learn in seed 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import ROOT, bench_dir, write_section

from leancnn import report
from leancnn.config import load_config

BASE = ["env.id=MiniGrid-Dynamic-Obstacles-5x5-v0", "env.train_styles=[classic]", "train.frames=80000",
        "train.eval_every=10000", "eval.episodes=48", "eval.final_episodes=300", "train.threads=1"]
# name: (key of its run directories, overrides)
VARIANTS = {"vanilla": ("vanilla", []),
            "MixStyle, the paper's RL setting (seq0, seq1; alpha 0.3, p 1; rollouts and updates)": (
                "mixstyle", ["model.mixstyle.after=[seq0,seq1]", "model.mixstyle.alpha=0.3", "model.mixstyle.p=1.0"]),
            "MixStyle, Dassl's defaults (seq0, seq1; alpha 0.1, p 0.5; updates only)": (
                "mixstyle_updates", ["model.mixstyle.after=[seq0,seq1]", "model.mixstyle_rollouts=false"])}


def key(variant: str) -> str:
    return VARIANTS[variant][0]


def config(variant: str, seed: int, extra: list[str]):
    from leancnn.tasks.rl import RLConfig

    return load_config(None, [*BASE, *extra, *VARIANTS[variant][1], f"train.seed={seed}"], cls=RLConfig)


TAG = ""  # --tag: another experiment (its own run directories, section and figures)


def run_dir(variant: str, seed: int) -> Path:
    return bench_dir("mixstyle_rl") / TAG / f"{key(variant)}_s{seed}"


def train_one(variant: str, seed: int, extra: list[str]) -> dict:
    from leancnn.tasks.rl import data_identity, train_rl
    from leancnn.tasks.runs import fingerprint, train_cached_with

    cfg = config(variant, seed, extra)
    return train_cached_with(train_rl, cfg, run_dir(variant, seed), fingerprint(cfg, data_identity(cfg)))


def cached(variant: str, seed: int, extra: list[str]) -> dict | None:
    from leancnn.tasks.rl import data_identity
    from leancnn.tasks.runs import cached_run_state, fingerprint

    cfg = config(variant, seed, extra)
    d = run_dir(variant, seed)
    if cached_run_state(d, fingerprint(cfg, data_identity(cfg))).action == "done":
        return json.loads((d / "summary.json").read_text())
    return None


def mean_std(values, scale=100.0, digits=1) -> str:
    v = scale * np.asarray(values, float)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.{digits}f}"


def figure(results: dict, path: Path) -> None:
    plt = report._pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, k, title in ((axes[0], "eval_train_success", "training style"), (axes[1], "eval_test_success",
                                                                               "unseen styles")):
        for variant, runs in results.items():
            x = np.array([r["frames"] for r in runs[0]["history"]])
            y = np.array([[r[k] for r in run["history"]] for run in runs])
            line, = ax.plot(x, y.mean(0), marker="o", lw=2, label=variant)
            for seed_curve in y:  # each seed thin: the mean hides runs that never learn
                ax.plot(x, seed_curve, lw=0.8, alpha=0.45, color=line.get_color())
        ax.set(title=f"success, {title}", xlabel="frames", ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=6, loc="lower right")
    fig.suptitle("PPO on MiniGrid in pixels: the mean over seeds (thick) and each seed (thin)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def styles_figure(env_id: str, train: list[str], test: list[str], path: Path) -> None:
    """The same level in every style the runs use (what the agent sees, enlarged)."""
    from leancnn.data.styled_env import make_env

    plt = report._pyplot()
    styles = [*train, *test]
    fig, axes = plt.subplots(1, len(styles), figsize=(1.7 * len(styles), 2.0))
    for ax, s in zip(np.atleast_1d(axes), styles):
        env = make_env(env_id, [s], tile_size=8, monitor=False)
        obs, _ = env.reset(seed=3)
        ax.imshow(obs, interpolation="nearest")
        ax.set_title(f"{s}\n({'training' if s in train else 'unseen'})", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at once (each with one thread)")
    ap.add_argument("--variants", nargs="+", choices=[k for k, _ in VARIANTS.values()],
                    help="run only these variants (default: all)")
    ap.add_argument("--tag", default="", help="name of another experiment (e.g. 4styles with "
                                              "env.train_styles=[...]): its own runs, results section and figures")
    ap.add_argument("--one", nargs=2, metavar=("VARIANT_KEY", "SEED"), help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config overrides for every run (e.g. train.frames=30000); "
                                                 "with --tag, so that cached runs of other experiments stay")
    a = ap.parse_args()
    global TAG
    TAG = a.tag
    by_key = {key(v): v for v in VARIANTS}
    chosen = [v for v in VARIANTS if not a.variants or key(v) in a.variants]
    if a.one:
        train_one(by_key[a.one[0]], int(a.one[1]), a.overrides)
        return
    todo = [(v, s) for v in chosen for s in a.seeds if cached(v, s, a.overrides) is None]
    running: list[subprocess.Popen] = []
    start = time.time()
    while todo or running:
        running = [p for p in running if p.poll() is None or (p.returncode and sys.exit(
            f"a run failed ({' '.join(p.args)}); see its run directory"))]
        while todo and len(running) < a.jobs:
            v, s = todo.pop(0)
            print(f"training {v}, seed {s} -> {run_dir(v, s)}", flush=True)
            running.append(subprocess.Popen([sys.executable, __file__, "--one", key(v), str(s), "--tag", TAG,
                                             *a.overrides], cwd=ROOT))
        time.sleep(2)
    if time.time() - start > 5:
        print(f"trained in {(time.time() - start) / 60:.1f} min", flush=True)
    results = {v: [cached(v, s, a.overrides) for s in a.seeds] for v in chosen}
    cfg0 = config("vanilla", 0, a.overrides)
    test_styles = cfg0.env.test_styles
    rows = []
    for v, runs in results.items():
        te = [r["final"]["test_styles"] for r in runs]
        tr = [r["final"]["train_styles"] for r in runs]
        late = [np.mean([h["eval_test_success"] for h in r["history"][-3:]]) for r in runs]
        late_tr = [np.mean([h["eval_train_success"] for h in r["history"][-3:]]) for r in runs]
        rows.append([v, mean_std([x["success"] for x in te]), mean_std(late), mean_std([x["return"] for x in te], 1, 3),
                     *[mean_std([x["per_style"][s]["success"] for x in te]) for s in test_styles],
                     mean_std([x["success"] for x in tr]), mean_std(late_tr), mean_std([x["return"] for x in tr], 1, 3),
                     f"{np.mean([r['train_seconds'] for r in runs]) / 60:.1f} min"])
    per_seed = [[v, s, f"{100 * r['final']['test_styles']['success']:.1f}",
                 f"{100 * r['final']['train_styles']['success']:.1f}"]
                for v, runs in results.items() for s, r in zip(a.seeds, runs)]
    suffix = f"_{TAG}" if TAG else ""
    img = ROOT / "docs" / "img" / f"mixstyle_rl{suffix}.png"
    figure(results, img)
    styles_figure(cfg0.env.id, cfg0.env.train_styles, test_styles,
                  ROOT / "docs" / "img" / f"minigrid_styles{suffix}.png")
    c = cfg0
    body = "\n".join([
        f"PPO (stable-baselines3) on **{c.env.id}** in pixels (the agent's 7x7-cell view, {c.env.tile_size} px per "
        f"cell: {7 * c.env.tile_size}x{7 * c.env.tile_size} RGB), IMPALA CNN (depths 16, 32, 32; 256-d embedding; "
        f"linear policy and value heads). Trained in the style(s) **{', '.join(c.env.train_styles)}**; tested in "
        f"the unseen styles **{', '.join(test_styles)}** (below, at 8 px per cell). {c.train.frames:,} frames "
        f"per run ({c.env.n_envs} environments x {c.ppo.n_steps} steps per rollout, {c.ppo.n_epochs} epochs of "
        f"minibatch {c.ppo.batch_size}, Adam {c.ppo.lr:g}, entropy {c.ppo.ent_coef:g}); one thread per run, two "
        f"runs at once. Final evaluation: {c.eval.final_episodes} episodes per style set on levels "
        f"{c.eval.seed}, {c.eval.seed + 1}, ... (the same levels for every run; sampled actions). Success = the "
        f"goal reached; return = MiniGrid's reward (1 - 0.9 x steps / limit at the goal, -1 for running into an "
        f"obstacle, 0 at the step limit). Mean ± std over seeds {', '.join(map(str, a.seeds))}; success in %.", "",
        report.format_table(rows, ["variant", "unseen styles success", "same, last 3 evaluations", "unseen return",
                                   *[f"{s} success" for s in test_styles], "training style(s) success",
                                   "same, last 3 evaluations", "training return", "time per run"], markdown=True),
        "", f"'Last 3 evaluations': the mean success of the evaluations at the last three checkpoints "
            f"({c.eval.episodes} episodes each), which is less at the mercy of one PPO update than the final "
            "snapshot.",
        "", "Per seed (success in %, final evaluation):", "",
        report.format_table(per_seed, ["variant", "seed", "unseen styles", "training style"], markdown=True),
        "", f"![the styles](img/minigrid_styles{suffix}.png)", "",
        f"![success during training](img/mixstyle_rl{suffix}.png)"])
    write_section("results.md", f"mixstyle-rl{'-' + TAG if TAG else ''}",
                  "MixStyle: reinforcement learning under visual shift" + (f" ({TAG})" if TAG else ""), body)
    print(body)


if __name__ == "__main__":
    main()
