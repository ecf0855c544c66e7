"""Threads on a shared machine: the default (threads=auto) against fixed settings, idle and with one co-running
CPU hog, for training, registration predict and video streaming; and the whole demo quiet and with one hog.

Every measured command is the real ``leancnn`` entry point (``cli.main`` in a fresh Python process, so OpenMP's wait
policy is chosen before torch loads, as a user gets it). Settings:

* ``auto``: the default, no flag;
* ``2 thr (spin)``: ``--threads 2`` with OpenMP's default spinning: the old default on this 2-core machine;
* ``1 thr``: ``--threads 1``;
* ``2 thr passive``: ``--threads 2`` with ``OMP_WAIT_POLICY=PASSIVE``.

Conditions: ``idle`` (nothing else of ours runs) and ``1 hog`` (``stress-ng --cpu 1`` through leancnn's own
``CpuLoad``, started 1 s before the command and stopped after it). Each repeat runs every (workload, condition,
setting) once in a shuffled order; a rate is reported per repeat and as the ratio to the best setting of the same
workload, condition and repeat (the machine is shared: absolute rates drift between repeats, ratios within one
repeat do not).

    python benchmarks/threads_shared.py                 # the table (about 12 minutes on 2 cores)
    python benchmarks/threads_shared.py --demo          # also the demo quiet vs one hog (about 12 minutes more)

Writes docs/benchmarks.md, section "Threads on a shared machine".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, bench_dir, write_section  # noqa: E402

from leancnn.latency.loads import CpuLoad  # noqa: E402
from leancnn.loadspec import LoadSpec  # noqa: E402

SETTINGS = {
    "auto": ([], {}),
    "2 thr (spin)": (["--threads", "2"], {}),
    "1 thr": (["--threads", "1"], {}),
    "2 thr passive": (["--threads", "2"], {"OMP_WAIT_POLICY": "PASSIVE"}),
}
CONDITIONS = ("idle", "1 hog")
MRUS = ROOT.parent / "shared" / "data" / "mrus"

# The child: the real entry point, timed from inside (the wrapped function), printing one JSON line.
CHILD = r"""
import json, sys, time
from leancnn import threads
threads.prepare_environment()          # what cli.main does first; torch is not loaded yet
from leancnn import cli
argv, what = json.loads(sys.argv[1]), sys.argv[2]
timed = {}
if what == "predict":
    from leancnn.tasks import register
    inner = register.predict_folder
    def predict_folder(*a, **k):
        t = time.perf_counter(); ids = inner(*a, **k); timed["s_per_pair"] = (time.perf_counter() - t) / len(ids)
        return ids
    register.predict_folder = predict_folder
t = time.perf_counter()
rc = cli.main(argv)
timed["wall"] = time.perf_counter() - t
rec = threads.record() or {}
timed["threads"] = rec.get("choices"); timed["policy"] = rec.get("wait_policy")
print("BENCH " + json.dumps({"rc": rc, **timed}), flush=True)
"""


def child_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LEANCNN_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def run_child(argv: list[str], what: str, env: dict, timeout: float = 900) -> tuple[dict, str]:
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(argv), what], env=env, capture_output=True, text=True,
                       timeout=timeout, cwd=bench_dir("threads"))
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"{' '.join(argv)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return json.loads(line[6:]), p.stdout


def prepare() -> dict:
    """The inputs, once, at one thread: a registration run on the real MR-US pairs (1 epoch: speed only)."""
    work = bench_dir("threads")
    reg = work / "register-run"
    if not (reg / "last.pt").exists():
        run_child(["register", "train", "-c", str(ROOT / "configs" / "register_mrus.yaml"), "--data", str(MRUS),
                   "-o", str(reg), "--force", "train.epochs=1", "--threads", "1"], "train", child_env({}))
    return {"register": reg}


def workload(name: str, inputs: dict, key: str) -> tuple[list[str], str]:
    work = bench_dir("threads")
    if name == "train":
        return (["train", "model.name=resnet20", "data.domains=[mnist]", "data.limit_train=1024",
                 "data.limit_eval=256", "train.epochs=1", "-o", str(work / f"train-{key}"), "--force"], "train")
    if name == "register predict":
        return (["register", "predict", str(inputs["register"]), "--data", str(MRUS), "-o",
                 str(work / f"predict-{key}"), "--force"], "predict")
    return (["video", "stream", "--synthetic", "--model", "movinet_a0_stream", "--frames", "320", "--every", "64"],
            "stream")


def rate(name: str, result: dict, stdout: str, key: str) -> float:
    """Higher is better: images/s (the engine's own), pairs/s, frames/s (the stream's own, at its last report)."""
    if name == "train":
        rec = json.loads((bench_dir("threads") / f"train-{key}" / "metrics.jsonl").read_text().splitlines()[-1])
        return rec["train_images_per_s"]
    if name == "register predict":
        return 1.0 / result["s_per_pair"]
    fps = re.findall(r"\|\s+([0-9.]+) frames/s", stdout)
    return float(fps[-1])


UNITS = {"train": "images/s", "register predict": "pairs/s", "video stream": "frames/s"}


def measure(repeats: int, inputs: dict, workloads=tuple(UNITS)) -> list[dict]:
    rows = []
    for rep in range(repeats):
        jobs = [(w, c, s) for w in workloads for c in CONDITIONS for s in SETTINGS]
        random.Random(rep).shuffle(jobs)
        for i, (w, c, s) in enumerate(jobs):
            flags, env = SETTINGS[s]
            key = f"{rep}-{i}"
            argv, what = workload(w, inputs, key)
            load = CpuLoad(LoadSpec(workers=1), max_seconds=1200) if c == "1 hog" else None
            if load:
                load.start()
                time.sleep(1.0)
            try:
                result, out = run_child([*argv, *flags], what, child_env(env))
            finally:
                if load:
                    load.stop()
            r = rate(w, result, out, key)
            rows.append({"repeat": rep, "workload": w, "condition": c, "setting": s, "rate": r,
                         "threads": result.get("threads"), "policy": result.get("policy")})
            print(f"[{rep}] {w:17s} {c:6s} {s:14s} {r:8.2f} {UNITS[w]}  threads {result.get('threads')}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| workload | condition | " + " | ".join(SETTINGS) + " | auto vs best |",
             "|---|---|" + "---|" * len(SETTINGS) + "---|"]
    for w in UNITS:
        for c in CONDITIONS:
            cells, worst = [], []
            per = {s: [r for r in rows if (r["workload"], r["condition"], r["setting"]) == (w, c, s)] for s in SETTINGS}
            reps = sorted({r["repeat"] for r in rows})
            best = {rep: max(r["rate"] for r in rows if (r["workload"], r["condition"], r["repeat"]) == (w, c, rep))
                    for rep in reps}
            for s in SETTINGS:
                rates = [r["rate"] for r in per[s]]
                ratios = [r["rate"] / best[r["repeat"]] for r in per[s]]
                cells.append(f"{min(rates):.3g}–{max(rates):.3g} ({statistics.median(ratios):.2f})")
                if s == "auto":
                    worst = ratios
            lines.append(f"| {w} ({UNITS[w]}) | {c} | " + " | ".join(cells) + f" | {min(worst):.2f}–{max(worst):.2f} |")
    return "\n".join(lines)


def demo(repeats: int) -> str:
    """The whole demo on a warm cache, quiet and with one hog, alternating."""
    out = []
    for rep in range(repeats):
        for c in CONDITIONS:
            load = CpuLoad(LoadSpec(workers=1), max_seconds=3600) if c == "1 hog" else None
            if load:
                load.start()
                time.sleep(1.0)
            try:
                result, _ = run_child(["demo", "-o", str(bench_dir("threads") / "demo"), "--force"], "demo",
                                      child_env({}), timeout=1800)
            finally:
                if load:
                    load.stop()
            out.append({"repeat": rep, "condition": c, "seconds": result["wall"]})
            print(f"[demo {rep}] {c}: {result['wall']:.0f} s", flush=True)
    (bench_dir("threads") / "demo.json").write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M"),
                                                                "rows": out}, indent=1))
    return demo_table(out, repeats)


def demo_table(out: list[dict], repeats: int) -> str:
    lines = ["| repeat | quiet (s) | one hog (s) | hog / quiet |", "|---|---|---|---|"]
    for rep in range(repeats):
        q = next(r["seconds"] for r in out if r["repeat"] == rep and r["condition"] == "idle")
        h = next(r["seconds"] for r in out if r["repeat"] == rep and r["condition"] == "1 hog")
        lines.append(f"| {rep} | {q:.0f} | {h:.0f} | {h / q:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--demo", action="store_true", help="also time the whole demo quiet and with one hog")
    ap.add_argument("--demo-repeats", type=int, default=1)
    ap.add_argument("--workloads", nargs="+", choices=list(UNITS), default=list(UNITS),
                    help="measure these again and keep the other workloads' rows of the last run (rows.json)")
    args = ap.parse_args()
    inputs = prepare()
    saved = bench_dir("threads") / "rows.json"
    kept = [r for r in json.loads(saved.read_text()) if r["workload"] not in args.workloads] \
        if saved.exists() and set(args.workloads) != set(UNITS) else []
    rows = kept + measure(args.repeats, inputs, args.workloads)
    saved.write_text(json.dumps(rows, indent=1))
    body = ("Rate per setting: the range over repeats, and in brackets the median ratio to the best setting of the "
            "same workload, condition and repeat (1.00 = the best). Training: `leancnn train` ResNet-20, one epoch of "
            "1,024 MNIST images, the engine's images/s. Registration: `leancnn register predict` of the 80 MR-US "
            "pairs with the default local network (configs/register_mrus.yaml), seconds per pair inverted. Video: "
            "`leancnn video stream --synthetic` through MoViNet-A0 stream, 320 frames, its frames/s. One hog: "
            "`stress-ng --cpu 1` (leancnn's CpuLoad) for the whole command."
            + (f" The {', '.join(sorted({r['workload'] for r in kept}))} rows are kept from the previous run of this "
               f"script; {', '.join(args.workloads)} measured again in this one." if kept else "")
            + "\n\n" + table(rows))
    demo_text = ("\n\nThe whole `leancnn demo` (warm data cache, `-o` replaced each time), quiet and with one hog "
                 "for the whole run, at the default threads")
    saved_demo = bench_dir("threads") / "demo.json"
    if args.demo:
        body += demo_text + ":\n\n" + demo(args.demo_repeats)
    elif saved_demo.exists():  # kept from the last run with --demo, and said so
        d = json.loads(saved_demo.read_text())
        reps = len({r["repeat"] for r in d["rows"]})
        body += demo_text + f" (from the last run with `--demo`, {d['measured']}):\n\n" + demo_table(d["rows"], reps)
    print(body)
    write_section("benchmarks.md", "threads-shared", "Threads on a shared machine", body)


if __name__ == "__main__":
    main()
