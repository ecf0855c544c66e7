"""The latency-under-contention report (issue 11) on synthetic run directories: a planted rank reversal between
two load levels is found with "load" as the differing axis, identical models give none, samples of an interrupted
condition are ignored, a dead load is flagged, compare() finds a cross-device reversal and says which orders hold,
reverse or stay unsettled between two machines, errors name the file."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from leancnn.errors import LeancnnError
from leancnn.latency.report import FIGURES, analyse, compare, cross_device_summary, load_run, write_report

N, BLOCKS = 300, 20  # latencies per model and condition, randomised blocks per condition


def condition(cid: str, workers: int = 0, percent: int = 100, **kw) -> dict:
    """A conditions.jsonl record (done, 1 thread, eager, batch 1) with the confounders filled in."""
    load = f"load {workers}x{percent}%" if workers else "idle"
    rec = {"id": cid, "label": f"{load}, 1 thread, eager, batch 1", "device": "cpu",
           "load": {"workers": workers, "percent": percent, "pin": None}, "quota": None, "threads": 1,
           "backend": "eager", "batch": 1, "status": "done", "skip_reason": None,
           "load_kind_used": "stress-ng" if workers else "none", "load_cpu_share": workers * percent / 100 * 0.9,
           "load_wait_share": 0.1 if workers else 0.0, "load_died": None, "truncated": False, "seconds": 12.0,
           "samples_per_model": {"A": N, "B": N}, "skipped_models": {},
           "snapshot_before": {"loadavg_1": 0.5, "cpu_mhz_mean": 2400.0},
           "snapshot_after": {"loadavg_1": 0.5 + workers, "cpu_mhz_mean": 2300.0}}
    rec.update(kw)
    return rec


def make_run(path: Path, conditions: list[dict], medians: dict, device: str = "cpu", seed: int = 0) -> Path:
    """Write run.json, models.json, conditions.jsonl (every record of ``conditions``) and samples.csv (lognormal
    latencies, sigma 0.1, around ``medians[condition id][model]`` seconds: ids absent from ``conditions`` are an
    interrupted condition)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    models = sorted({m for per in medians.values() for m in per})
    (path / "run.json").write_text(json.dumps({
        "config": {}, "machine": "test machine, 2 cores", "device": device, "created": "2025-01-01T00:00:00",
        "command": "leancnn latency run", "conditions": [{"id": cid} for cid in medians],
        "versions": {"torch": "2.0", "onnxruntime": "1.18", "python": "3.11", "stress-ng": None}}))
    (path / "models.json").write_text(json.dumps({m: {"source": "registry", "name": m.lower(), "input": [3, 32, 32],
                                                      "kind": "classifier", "params": 1000, "macs": None}
                                                  for m in models}))
    (path / "conditions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in conditions))
    with open(path / "samples.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["condition", "model", "block", "seq", "latency_s", "t_s"])
        for cid, per in medians.items():
            for m, med in per.items():
                for seq, lat in enumerate(rng.lognormal(np.log(med), 0.1, size=N)):
                    w.writerow([cid, m, seq * BLOCKS // N, seq, f"{lat:.6g}", f"{seq * 0.03:.3f}"])
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """c01 idle: A faster; c02 2 workers: B faster (the planted reversal); c03 load died; c04 interrupted (its
    very slow samples are in samples.csv only); c05 skipped."""
    run = make_run(tmp_path_factory.mktemp("planted") / "run", [
        condition("c01"), condition("c02", workers=2),
        condition("c03", workers=1, percent=50, load_died={"message": "stress-ng exited with signal 9"}),
        condition("c05", workers=4, status="skipped", skip_reason="no cgroup", samples_per_model={}),
    ], {"c01": {"A": 0.010, "B": 0.012}, "c02": {"A": 0.020, "B": 0.015}, "c03": {"A": 0.014, "B": 0.0145},
        "c04": {"A": 5.0, "B": 5.0}})
    write_report(run)
    return run


def test_planted_reversal_found_with_load_axis(planted):
    rows = read_csv(planted / "reversals.csv")
    hit = [r for r in rows if {r["condition_1"], r["condition_2"]} == {"c01", "c02"}]
    assert {r["statistic"] for r in hit} == {"median", "p99"}
    assert all(r["axes"] == "load" and {r["faster_1"], r["faster_2"]} == {"A", "B"} for r in hit)
    text = (planted / "report.md").read_text()
    assert "rank reversal(s)" in text and "No rank reversal found" not in text
    assert "| A vs B" in text and "| load " in text


def test_interrupted_condition_ignored(planted):
    data = load_run(planted)
    assert set(data.samples["condition"].tolist()) == {"c01", "c02", "c03"}
    assert [c["id"] for c in data.done] == ["c01", "c02", "c03"]
    assert len(data.conditions) == 4
    assert {r["condition"] for r in read_csv(planted / "summary.csv")} == {"c01", "c02", "c03"}
    assert float(max(r["max_min"] for r in read_csv(planted / "summary.csv"))) < 100
    assert "c04" in (planted / "report.md").read_text()  # named as planned but not completed


def test_load_died_and_skipped_flagged(planted):
    text = (planted / "report.md").read_text()
    assert "load died mid-run: stress-ng exited with signal 9" in text
    assert "skipped: no cgroup" in text
    assert "stress-ng in 2 conditions" in text


def test_outputs_written(planted):
    for name in (*FIGURES.values(), "summary.csv", "tests.csv", "reversals.csv", "report.md", "analysis.json"):
        assert (planted / name).stat().st_size > 0, name
    text = (planted / "report.md").read_text()
    assert all(f"]({name})" in text for name in FIGURES.values())
    summary = read_csv(planted / "summary.csv")
    assert len(summary) == 6 and {"median_ci_low", "p99_ci_high", "cv", "iqr"} <= set(summary[0])
    assert len(read_csv(planted / "tests.csv")) == 6  # 3 conditions x 1 pair x 2 statistics
    json.loads((planted / "analysis.json").read_text())


def test_identical_models_no_reversal(tmp_path):
    run = make_run(tmp_path / "run", [condition("c01"), condition("c02", workers=2)],
                   {"c01": {"A": 0.010, "B": 0.010}, "c02": {"A": 0.020, "B": 0.020}}, seed=1)
    result = analyse(load_run(run), n_boot=2000)
    assert result["reversals"] == [] and result["cross_device"] is None
    json.dumps(result, allow_nan=False)
    write_report(run, out=tmp_path / "out")
    assert "No rank reversal found: 4 tests over 2 conditions" in (tmp_path / "out" / "report.md").read_text()
    assert read_csv(tmp_path / "out" / "reversals.csv") == []


def test_compare_finds_cross_device_reversal(tmp_path):
    cpu = make_run(tmp_path / "cpu", [condition("c01")], {"c01": {"A": 0.010, "B": 0.012}})
    gpu = make_run(tmp_path / "gpu", [condition("c01", device="cuda:NVIDIA H100")],
                   {"c01": {"A": 0.003, "B": 0.002}}, device="cuda:NVIDIA H100", seed=2)
    report = compare([cpu, gpu], tmp_path / "both", n_boot=2000)
    rows = read_csv(tmp_path / "both" / "reversals.csv")
    assert rows and all(r["axes"] == "device" for r in rows)
    assert {rows[0]["label_1"].split(" · ")[0], rows[0]["label_2"].split(" · ")[0]} == {"cpu", "cuda:NVIDIA H100"}
    assert "| device " in report.read_text()
    with pytest.raises(LeancnnError, match="at least 2"):
        compare([cpu], tmp_path / "x")
    other = make_run(tmp_path / "other", [condition("c01", samples_per_model={"C": N, "D": N})],
                     {"c01": {"C": 0.01, "D": 0.02}})
    with pytest.raises(LeancnnError, match="no model label"):
        compare([cpu, other], tmp_path / "x")


def test_errors_name_the_file(tmp_path):
    with pytest.raises(LeancnnError, match=r"run\.json is missing"):
        load_run(tmp_path)
    run = make_run(tmp_path / "run", [condition("c01", status="skipped")], {"c01": {"A": 0.01, "B": 0.01}})
    with pytest.raises(LeancnnError, match=r"conditions\.jsonl lists no completed condition"):
        load_run(run)


MILAN = {"vendor": "AuthenticAMD", "model_name": "AMD EPYC", "family": 25, "model": 1, "stepping": 1}
ABC = {"A": N, "B": N, "C": N}


def two_machines(tmp_path: Path, cpus: tuple = (None, None)) -> tuple[Path, Path]:
    """The same grid (idle, 2 workers) on two machines with one device string. Idle: A < B < C on machine 1,
    B < A < C on machine 2 (A vs B reverses, the rest holds); 2 workers: B < A < C on machine 1, A = B < C on
    machine 2 (A vs B unsettled there). Machine 2 also ran a 1-worker condition machine 1 did not."""
    def conds(cpu, extra=()):
        snap = {"loadavg_1": 0.5, "cpu_mhz_mean": 2400.0, **({"cpu": cpu} if cpu else {})}
        return [condition(cid, w, samples_per_model=ABC, snapshot_before=snap) for cid, w in (("c01", 0), ("c02", 2),
                                                                                                 *extra)]
    m1 = make_run(tmp_path / "milan", conds(cpus[0]), {"c01": {"A": 0.010, "B": 0.012, "C": 0.020},
                                                       "c02": {"A": 0.020, "B": 0.015, "C": 0.040}})
    m2 = make_run(tmp_path / "genoa", conds(cpus[1], [("c03", 1)]),
                  {"c01": {"A": 0.010, "B": 0.008, "C": 0.020}, "c02": {"A": 0.020, "B": 0.020, "C": 0.040},
                   "c03": {"A": 0.015, "B": 0.015, "C": 0.030}}, seed=3)
    return m1, m2


def test_compare_says_which_orders_hold_and_which_reverse_across_machines(tmp_path):
    m1, m2 = two_machines(tmp_path, (MILAN, {**MILAN, "model": 17}))
    report = compare([m1, m2], tmp_path / "both", n_boot=2000)
    result = json.loads((tmp_path / "both" / "analysis.json").read_text())
    prefixes = {c["run"]: c["device"] for c in result["conditions"]}
    assert prefixes == {"milan": "cpu [family 25 model 1 stepping 1]", "genoa": "cpu [family 25 model 17 stepping 1]"}
    (pair,) = result["cross_device"]["pairs"]
    assert (pair["run_1"]["name"], pair["run_2"]["name"], pair["matched"]) == ("milan", "genoa", 2)
    assert pair["unmatched_1"] == [] and pair["unmatched_2"] == ["2.c03"]
    for stat in ("median", "p99"):
        assert pair["counts"][stat] == {"compared": 6, "holds": 4, "reverses": 1, "unsettled": 1,
                                        "settled_1_only": 1, "settled_2_only": 0, "settled_neither": 0,
                                        "unsettled_same_direction": pair["counts"][stat]["unsettled_same_direction"]}
    rows = read_csv(tmp_path / "both" / "cross_device.csv")
    assert len(rows) == 12 and {r["run_1"] + "/" + r["run_2"] for r in rows} == {"milan/genoa"}
    got = {(r["setting"].split(",")[0], r["a"], r["b"], r["statistic"]): r for r in rows}
    for stat in ("median", "p99"):
        rev = got["idle", "A", "B", stat]
        assert (rev["agreement"], rev["faster_1"], rev["faster_2"]) == ("reverses", "A", "B")
        assert float(rev["ratio_1"]) < 1 < float(rev["ratio_2"]) and float(rev["p_holm_2"]) <= 0.05
        assert float(rev["ratio_1"]) == pytest.approx(10 / 12, rel=0.06)
        assert float(rev["ratio_2"]) == pytest.approx(10 / 8, rel=0.06)
        tie = got["load 2x100%", "A", "B", stat]
        assert (tie["agreement"], tie["settled"], tie["faster_1"], tie["faster_2"]) == ("unsettled", "1 only", "B",
                                                                                        "")
        assert all(got[lv, a, "C", stat]["agreement"] == "holds" and got[lv, a, "C", stat]["faster_2"] == a
                   for lv in ("idle", "load 2x100%") for a in ("A", "B"))
    taus = {(r["setting"].split(",")[0], r["statistic"]): r for r in read_csv(tmp_path / "both" /
                                                                              "cross_device_tau.csv")}
    assert float(taus["idle", "median"]["tau"]) == pytest.approx(1 / 3)  # A<B<C vs B<A<C: 1 discordant of 3
    assert taus["idle", "median"]["discordant"] == "1" and taus["idle", "median"]["n_models"] == "3"
    text = report.read_text()
    assert "## Across devices" in text and "Orders that reverse between the machines" in text
    assert re.search(r"\| idle, 1 thread, eager, batch 1 +\| A vs B +\| median +\| A: 0\.8\d\d \[.*\| B: 1\.2", text)
    lines = cross_device_summary(result)
    assert lines[0].startswith("milan vs genoa, median: 4 hold, 1 reverse, 1 unsettled (settled on milan only 1")
    assert len(lines) == 2


def test_compare_same_device_string_without_cpu_record(tmp_path):
    """Old runs record no CPU identity and the same device string: prefixed by the run directory's name, and the
    cross-device analysis matches them all the same."""
    m1, m2 = two_machines(tmp_path)
    assert load_run(m1).sources[0]["cpu"] is None
    compare([m1, m2], tmp_path / "both", n_boot=2000)
    result = json.loads((tmp_path / "both" / "analysis.json").read_text())
    assert {c["device"] for c in result["conditions"]} == {"cpu (milan)", "cpu (genoa)"}
    (pair,) = result["cross_device"]["pairs"]
    assert pair["counts"]["median"]["reverses"] == 1 and pair["counts"]["median"]["holds"] == 4
    with pytest.raises(LeancnnError, match="already holds a latency report"):
        compare([m1, m2], tmp_path / "both", n_boot=2000)
