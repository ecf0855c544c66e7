"""The search engine (issue 22): spaces as data, Pareto bookkeeping, resume, two workers on one SQLite study with
a killed worker, the evolutionary strategy, and a latency objective computed from real measurements."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import torch.nn as nn

from leancnn.errors import LeancnnError
from leancnn.search.engine import Objective, Reject, SearchSettings, run_evolve, run_search, sqlite_url
from leancnn.search.pareto import choose, dominates, front_rank, pareto_front
from leancnn.search.report import summarise_study, trial_rows, write_report
from leancnn.search.space import Param, SearchSpace, categorical, integer, real

WORKER = Path(__file__).parent / "helpers" / "search_worker.py"
TOY = SearchSpace("toy", (integer("x", 0, 40), categorical("k", ["a", "b", "c"])))
OBJ = [Objective("f1", "minimize"), Objective("f2", "minimize")]


def toy(point, info):
    x = point["x"] + {"a": 0.0, "b": 0.5, "c": 1.0}[point["k"]]
    return {"f1": x * x, "f2": (x - 20.0) ** 2}


# ------------------------------------------------------------------------------------------------ space


def test_space_conditional_params_and_checks():
    s = SearchSpace("s", (integer("depth", 1, 3), integer("w1", 8, 64, 8, when=("depth", 1)),
                          real("lr", 1e-4, 1e-1, log=True), categorical("se", [True, False])))
    for seed in range(20):
        p = s.sample(seed)
        assert ("w1" in p) == (p["depth"] > 1)
        assert s.check(p) is p
    with pytest.raises(LeancnnError, match="'w1' is inactive"):
        s.check({"depth": 1, "w1": 8, "lr": 0.01, "se": True})
    with pytest.raises(LeancnnError, match="missing parameter 'w1'"):
        s.check({"depth": 2, "lr": 0.01, "se": True})
    with pytest.raises(LeancnnError, match=r"w1=12 is outside its domain \(\[8, 64\] in steps of 8\)"):
        s.check({"depth": 2, "w1": 12, "lr": 0.01, "se": True})
    with pytest.raises(LeancnnError, match="'bogus'"):
        s.check({"depth": 1, "lr": 0.01, "se": True, "bogus": 1})
    assert not s["se"].contains(1)  # 1 == True in Python, but not the same choice
    assert SearchSpace.from_dict(s.to_dict()) == s and SearchSpace.from_dict(s.to_dict()).fingerprint() == s.fingerprint()
    with pytest.raises(LeancnnError, match="declared before"):
        SearchSpace("bad", (integer("a", 0, 1, when=("b", 0)), integer("b", 0, 1)))
    with pytest.raises(LeancnnError, match="not a multiple of step"):
        Param("w", "int", low=8, high=60, step=8)


def test_space_suggest_through_optuna_matches_domains():
    s = SearchSpace("s", (integer("depth", 1, 3), integer("w1", 8, 64, 8, when=("depth", 1)), real("r", 0, 0.8, 0.05)))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(15):
        t = study.ask()
        p = s.suggest(t)
        s.check(p)
        study.tell(t, 0.0)
        assert t.params == p


# ------------------------------------------------------------------------------------------------ pareto


def test_pareto_front_ranks_and_choice_by_hand():
    # (accuracy max, latency min)
    v = [[0.90, 10.0], [0.80, 5.0], [0.85, 12.0], [0.70, 2.0], [0.80, 5.0], [0.60, 3.0]]
    d = ["maximize", "minimize"]
    assert pareto_front(v, d) == [0, 1, 3, 4]  # 2 is beaten by 0; 5 by 3; the duplicates 1 and 4 both stay
    assert front_rank(v, d) == [0, 0, 1, 0, 0, 1]
    assert dominates(v[0], v[2], d) and not dominates(v[1], v[4], d)
    assert choose(v, d, budget=6.0) == 1  # most accurate within 6 ms (the earlier of two equals)
    assert choose(v, d, budget=1.0) is None
    # knee: scaled front (0.9,10) (0.8,5) (0.7,2) -> the middle point is farthest from the extremes' line
    assert choose(v, d) == 1
    with pytest.raises(LeancnnError, match="maximize or minimize"):
        pareto_front(v, ["max", "min"])


def test_report_summary_ranks_references(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, lat, label in ((0.9, 10.0, "A0"), (0.95, 9.0, ""), (0.5, 1.0, ""), (0.7, 11.0, "")):
        t = study.ask()
        t.set_user_attr("label", label)
        t.set_user_attr("metrics", {"acc": acc, "lat": lat})
        t.set_user_attr("eval_seconds", 1.0)
        t.set_user_attr("overhead_seconds", 0.01)
        study.tell(t, [acc, lat])
    objs = [Objective("acc", "maximize"), Objective("lat", "minimize")]
    s = summarise_study(trial_rows(study), objs, budget=9.5)
    assert s["front"] == [2, 1] and s["references"]["A0"]["rank"] == 1 and s["chosen"] == 1
    assert s["overhead"]["median_fraction"] == pytest.approx(0.01 / 1.01)
    out = write_report(study, tmp_path, objs, 9.5, "t", "lat", "acc", columns=[("acc", "acc", str)])
    assert out["chosen"] == 1
    for f in ("trials.csv", "pareto.csv", "pareto.png", "report.md", "summary.json"):
        assert (tmp_path / f).is_file()
    assert "front rank 1" in (tmp_path / "report.md").read_text()


# ------------------------------------------------------------------------------------------------ engine


def test_search_resume_reject_duplicates_and_fixed_points(tmp_path):
    url = sqlite_url(tmp_path / "s.db")
    calls = []

    def evaluate(point, info):
        calls.append(point)
        if point["x"] > 35:
            raise Reject("too slow", {"f2": 1.0})
        return toy(point, info)

    fixed = [("ref", {"x": 20, "k": "a"})]
    study, log = run_search(evaluate, TOY, OBJ, SearchSettings("s", url, trials=6, seed=1, enqueue=fixed), log=None)
    trials = study.get_trials()
    assert trials[0].params == {"x": 20, "k": "a"} and trials[0].user_attrs["label"] == "ref"
    n_done = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)))
    assert n_done == 6
    for t in trials:
        assert t.user_attrs["eval_seconds"] >= 0 and t.user_attrs["overhead_seconds"] >= 0
        if t.state == optuna.trial.TrialState.PRUNED:
            assert t.user_attrs["reject_reason"] == "too slow" and t.user_attrs["metrics"] == {"f2": 1.0}
    with pytest.raises(LeancnnError, match="already exists"):
        run_search(evaluate, TOY, OBJ, SearchSettings("s", url, trials=9), log=None)
    other = SearchSpace("toy", (integer("x", 0, 41), categorical("k", ["a", "b", "c"])))
    with pytest.raises(LeancnnError, match="other search space"):
        run_search(evaluate, other, OBJ, SearchSettings("s", url, trials=9, resume=True), log=None)
    with pytest.raises(LeancnnError, match="no study"):
        run_search(evaluate, TOY, OBJ, SearchSettings("nope", url, trials=9, resume=True), log=None)
    before = len(calls)
    study, log = run_search(evaluate, TOY, OBJ, SearchSettings("s", url, trials=9, seed=1, resume=True), log=None)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))) == 9
    assert len(calls) - before == len(log.evaluated) + len(log.rejected) == 3 - len(log.copied)
    # a point equal to a completed trial is not evaluated again: its values are copied
    study2, log2 = run_search(evaluate, SearchSpace("one", (integer("x", 3, 3), categorical("k", ["a"]))), OBJ,
                              SearchSettings("one", None, trials=3), log=None)
    assert len(log2.evaluated) == 1 and len(log2.copied) == 2
    assert [t.user_attrs.get("duplicate_of") for t in study2.trials] == [None, 0, 0]


def _worker(url: str, trials: int, sleep: float, hang: bool = False) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), url, "w", str(trials), str(sleep), *(["hang"] if hang else [])],
                            stdout=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study_and_survive_a_kill(tmp_path):
    url = sqlite_url(tmp_path / "w.db")
    settings = SearchSettings("w", url, trials=1, sampler="random", heartbeat_s=1, grace_s=3)
    from leancnn.search.engine import open_study

    open_study(TOY, OBJ, settings)  # the study made once; workers join it
    # a worker that hangs in its first trial, killed mid-trial
    hung = _worker(url, 16, 0.05, hang=True)
    line = json.loads(hung.stdout.readline())
    os.kill(hung.pid, signal.SIGKILL)
    hung.wait()
    time.sleep(5)  # its heartbeat goes stale (grace 3 s)
    # two workers finish the search
    a, b = _worker(url, 16, 0.1), _worker(url, 16, 0.1)
    logs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0
    study = optuna.load_study(study_name="w", storage=url)
    states = [t.state for t in study.trials]
    S = optuna.trial.TrialState
    assert S.RUNNING not in states and S.WAITING not in states
    failed = [t for t in study.trials if t.state == S.FAIL]
    assert [t.number for t in failed] == [line["hanging"]]  # the killed worker's trial, marked failed
    retried = [t for t in study.trials if t.state == S.COMPLETE and t.params == failed[0].params]
    assert retried, "the killed trial's point is evaluated again"
    done = [t.number for t in study.trials if t.state == S.COMPLETE]
    assert 16 <= len(done) <= 18  # both may start a last trial at once (and a queued retry runs before the stop)
    ev = [set(w["evaluated"]) | set(w["copied"]) for w in logs]
    assert not ev[0] & ev[1], "no trial done by both workers"
    assert ev[0] | ev[1] == set(done), "every completed trial was done by one of the workers"
    assert ev[0] and ev[1], "both workers took part"


def test_evolve_strategy_is_the_exact_ea_and_resumes(tmp_path):
    from leancnn.prune.search import evolve

    target = np.array([0.6, 0.3, 0.1])
    calls = []

    def fit(g):
        calls.append(1)
        return float(-np.sum((np.asarray(g) - target) ** 2))

    kw = dict(population=6, generations=3, seed=5)
    plain = evolve(fit, 3, **kw)
    n_plain = len(calls)
    url = sqlite_url(tmp_path / "ea.db")
    calls.clear()

    class Stop(Exception):
        pass

    def dying(g):
        if len(calls) == 10:
            raise Stop
        return fit(g)

    with pytest.raises(Stop):
        run_evolve(dying, 3, SearchSettings("ea", url), **kw)
    first = len(calls)
    res, study = run_evolve(fit, 3, SearchSettings("ea", url, resume=True), **kw)
    assert res.best_fitness == plain.best_fitness and np.array_equal(res.best_genome, plain.best_genome)
    assert [h["best"] for h in res.history] == [h["best"] for h in plain.history]
    assert first + (len(calls) - first) == n_plain  # nothing evaluated twice across the interruption
    assert len(study.trials) == n_plain
    with pytest.raises(LeancnnError, match="other settings"):
        run_evolve(fit, 3, SearchSettings("ea", url, resume=True), population=6, generations=4, seed=5)


# ------------------------------------------------------------------------------------------------ latency objective


def test_latency_objective_from_real_measurements():
    from leancnn.tasks.search import SearchLatencyConfig, measure_many, objective_values

    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10)).eval()
    big = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(64, 64, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    lat = SearchLatencyConfig(loads=[0], condition="idle", statistic="p50", samples=20, warmup=2, settle_seconds=0)
    threads = torch.get_num_threads()
    r = measure_many({"small": small, "big": big}, "classifier", (3, 32, 32), lat, threads=1)
    assert torch.get_num_threads() == threads
    for k in ("small", "big"):
        assert 0 < r[k]["idle_p50_ms"] <= r[k]["idle_p99_ms"]
        assert r[k]["latency_ms"] == r[k]["idle_p50_ms"] == r[k]["idle_p50_ms"]
    assert r["big"]["idle_p50_ms"] > 2 * r["small"]["idle_p50_ms"]  # ~290x the MACs
    # the statistic of a trial read under each condition
    d = {"idle_p50_ms": 1.0, "idle_p99_ms": 2.0, "load1_p50_ms": 1.5, "load1_p99_ms": 9.0, "load2_p99_ms": 4.0,
         "load2_p50_ms": 3.0}
    lat2 = SearchLatencyConfig(loads=[0, 1, 2])
    assert objective_values(d, lat2, "idle", "p99")["latency_ms"] == 2.0
    assert objective_values(d, lat2, "load", "p99")["latency_ms"] == 4.0  # the highest load level
    assert objective_values(d, lat2, "minimax", "p99")["latency_ms"] == 9.0
    assert objective_values(d, lat2, "minimax", "p50")["latency_ms"] == 3.0


def test_time_budget_stops_the_worker_and_resume_finishes(tmp_path):
    url = sqlite_url(tmp_path / "t.db")

    def slow(point, info):
        time.sleep(0.3)
        return toy(point, info)

    t0 = time.perf_counter()
    study, log = run_search(slow, TOY, OBJ, SearchSettings("t", url, trials=50, timeout=0.5), log=None)
    assert time.perf_counter() - t0 < 5 and 1 <= len(study.trials) < 50  # stopped by the budget, not the count
    n = len(study.trials)
    study, _ = run_search(toy, TOY, OBJ, SearchSettings("t", url, trials=n + 3, resume=True), log=None)
    assert len(study.trials) == n + 3


def test_settings_changes_tolerate_keys_added_at_their_default():
    from leancnn.search.engine import settings_changes

    stored = {"latency": {"samples": 100, "loads": [0, 1]}, "name": "s"}
    assert settings_changes(stored, stored) == []
    newer = {"latency": {"samples": 100, "loads": [0, 1], "batch": 1}, "name": "s"}
    defaults = {"latency": {"samples": 200, "loads": [0, 1], "batch": 1}}
    assert settings_changes(stored, newer, defaults) == []  # a key added later, at its default: still resumes
    assert settings_changes(stored, {**newer, "latency": {**newer["latency"], "batch": 8}}, defaults) == ["latency.batch"]
    assert settings_changes(stored, {**newer, "latency": {**newer["latency"], "samples": 50}}, defaults) == \
        ["latency.samples"]
