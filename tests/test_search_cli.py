"""``leancnn search prune | movinet | report`` end to end on tiny settings (issue 22): real pruning plans and
MoViNet architectures measured with the latency runner and trained, the report files, ``--resume``, the chosen
pruned checkpoint that ``leancnn evaluate`` reads, and bad input in one line with nothing deleted."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from leancnn.cli import main

TINY = ["model.name=resnet20", "data.domains=[mnist]", "data.limit_train=256", "data.limit_eval=128",
        "data.batch_size=64", "train.epochs=1"]
FAST = ["latency.samples=10", "latency.warmup=1", "latency.settle_seconds=0", "val_images=64", "bn_batches=1",
        "calib_batches=1", "space.buckets=2", "search.sampler=random"]
MOV = ["data.train=20", "data.val=10", "data.test=10", "train.epochs=1", "latency.samples=10", "latency.warmup=1",
       "latency.settle_seconds=0", "latency.loads=[0]", "latency.condition=idle", "search.sampler=random"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("src") / "run"
    assert main(["train", *TINY, "-o", str(out)]) == 0
    return out


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.slow
def test_search_prune_report_resume_and_chosen_checkpoint(source, tmp_path, capsys):
    digest = hashlib.sha256((source / "best.pt").read_bytes()).hexdigest()
    out = tmp_path / "ps"
    assert main(["search", "prune", str(source), "-o", str(out), "--trials", "3", "target_speedup=1.01", *FAST]) == 0
    text = capsys.readouterr().out
    assert "report:" in text
    for f in ("study.db", "search.yaml", "trials.csv", "pareto.csv", "pareto.png", "report.md", "summary.json"):
        assert (out / f).is_file(), f
    rows = _rows(out / "trials.csv")
    assert len(rows) == 3 and rows[0]["label"] == "unpruned" and rows[0]["m.macs_ratio"] == "1.0"
    for r in rows:  # measured, not counted: every level of every trial, p99 >= p50 > 0
        assert 0 < float(r["m.idle_p50_ms"]) <= float(r["m.idle_p99_ms"])
        assert 0 < float(r["m.load1_p50_ms"]) <= float(r["m.load1_p99_ms"])
        assert float(r["m.latency_ms"]) == max(float(r["m.idle_p99_ms"]), float(r["m.load1_p99_ms"]))  # minimax
        assert float(r["eval_seconds"]) > 0 and float(r["overhead_seconds"]) >= 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["references"]["unpruned"]["number"] == 0
    if summary["chosen"] is not None:  # the chosen plan is an ordinary checkpoint
        assert main(["evaluate", str(out / "pruned.pt")]) == 0
    # --resume continues the same study to more trials; the source is never modified
    assert main(["search", "prune", str(source), "-o", str(out), "--resume", "--trials", "4"]) == 0
    assert len(_rows(out / "trials.csv")) == 4
    assert hashlib.sha256((source / "best.pt").read_bytes()).hexdigest() == digest
    # the same trials read under another statistic
    capsys.readouterr()
    assert main(["search", "report", str(out), "--condition", "idle", "--statistic", "p50"]) == 0
    rows = _rows(out / "trials.csv")
    assert all(float(r["m.latency_ms"]) == float(r["m.idle_p50_ms"]) for r in rows)


@pytest.mark.slow
def test_search_prune_refusals(source, tmp_path, capsys):
    out = tmp_path / "ps"
    out.mkdir()
    (out / "mine.txt").write_text("user file")
    assert main(["search", "prune", str(source), "-o", str(out), "--trials", "1", *FAST]) == 2
    assert "already holds files" in _err(capsys)
    assert main(["search", "prune", str(source), "-o", str(tmp_path / "none"), "--resume"]) == 2
    assert "holds no study.db" in _err(capsys)
    assert main(["search", "prune", str(source), "-o", str(source / "x"), "--trials", "1"]) == 2
    assert "is inside the source run directory" in _err(capsys)
    fresh = tmp_path / "fresh"
    assert main(["search", "prune", str(source), "-o", str(fresh), "space.criteria=[nosuch]"]) == 2
    assert "nosuch" in _err(capsys)
    assert main(["search", "prune", str(source), "-o", str(fresh), "latency.condition=idle", "latency.loads=[1]"]) == 2
    assert "no 0 (idle) level" in _err(capsys)
    assert main(["search", "prune", "-o", str(fresh), str(source), "latency.bogus=1"]) == 2
    assert "bogus" in _err(capsys)
    assert not fresh.exists()  # bad input leaves nothing behind
    # --force replaces what a search wrote, never the user's file
    assert main(["search", "prune", str(source), "-o", str(out), "--force", "--trials", "1", *FAST]) == 0
    assert main(["search", "prune", str(source), "-o", str(out), "--force", "--trials", "1", *FAST]) == 0
    assert (out / "mine.txt").read_text() == "user file"


@pytest.mark.slow
def test_search_movinet_trains_measures_and_ranks_a0(tmp_path, capsys):
    out = tmp_path / "nas"
    assert main(["search", "movinet", "-o", str(out), "--trials", "2", *MOV]) == 0
    rows = _rows(out / "trials.csv")
    assert [r["label"] for r in rows] == ["A0", ""] and all(r["state"] == "complete" for r in rows)
    a0 = rows[0]
    assert a0["point"].startswith("s8-p480-d2048|8s2:24k155|")  # the published A0, measured on the same protocol
    assert float(a0["m.params"]) > 1e6 and 0 < float(a0["m.idle_p50_ms"]) <= float(a0["m.idle_p99_ms"])
    for r in rows:  # each trial is an ordinary video run that rebuilds from its checkpoint
        run = Path(r["m.run"])
        assert (run / "best.pt").is_file() and 0 <= float(r["m.val_acc"]) <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["references"]["A0"]["rank"] >= 0 and summary["front"]
    assert main(["video", "evaluate", rows[1]["m.run"]]) == 0


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_trials_and_resume_continues(source, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "ps"
    exe = Path(sys.executable).with_name("leancnn")
    # Ctrl-C's default disposition in the child: a suite started as a background job of a non-interactive shell
    # (`cmd &`) ignores SIGINT, and an ignored signal stays ignored across exec
    p = subprocess.Popen([str(exe), "search", "prune", str(source), "-o", str(out), "--trials", "50", *FAST],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in p.stdout:  # one finished trial, then Ctrl-C mid-search
        if line.startswith("trial") and "[2/50]" in line:
            break
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "Traceback" not in err and "--resume continues it" in err, err
    import optuna

    study = optuna.load_study(study_name="search-prune", storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 2 and not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert main(["search", "prune", str(source), "-o", str(out), "--resume", "--trials", str(len(done) + 1)]) == 0
    assert len(_rows(out / "trials.csv")) >= len(done) + 1
