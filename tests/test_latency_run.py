"""``leancnn latency run``: the grid, the protocol, the run files, resume, bad input and cleanup (issue 11).

Models are tiny and samples few: every test measures for a second or two. Load processes are real (the Python
fallback unless a test says stress-ng); the signal tests start the CLI in a subprocess and check in ``/proc`` that
no load process survives a real SIGINT or SIGTERM.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.procs import default_sigint, proc_stat

from leancnn import loadspec
from leancnn.cli import main
from leancnn.config import from_dict
from leancnn.errors import ConfigError, LeancnnError
from leancnn.latency import measure
from leancnn.latency.cleanup import active_loads
from leancnn.latency.config import LatencyConfig
from leancnn.latency.quota import quota_support
from leancnn.tasks import latency as runner

HAVE_STRESS_NG = loadspec.stress_ng_path() is not None


def cfg_of(**kw) -> LatencyConfig:
    raw = {"models": [{"name": "digits_cnn"}, {"name": "resnet20", "input": [3, 16, 16]}],
           "grid": {"loads": [{"workers": 0}, {"workers": 1, "kind": "python"}]},
           "protocol": {"samples": 10, "block": 5, "warmup": 2, "settle_seconds": 0.0}}
    for key, value in kw.items():
        section, _, name = key.partition("__")
        if name:
            raw.setdefault(section, {})[name] = value
        else:
            raw[section] = value
    return from_dict(LatencyConfig, raw)


def read_samples(run_dir: Path) -> list[dict]:
    with open(run_dir / "samples.csv", newline="") as f:
        return list(csv.DictReader(f))


def read_conditions(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "conditions.jsonl").read_text().splitlines() if x.strip()]


# ------------------------------------------------------------------------------------------------ the protocol


@pytest.mark.slow
def test_run_writes_interleaved_blocks_with_confounders_and_a_report(tmp_path):
    out = tmp_path / "run"
    summary = runner.run(cfg_of(), out, log=lambda s: None)
    rows = read_samples(out)
    conds = read_conditions(out)
    assert [c["id"] for c in conds] == ["c01", "c02"] and all(c["status"] == "done" for c in conds)
    assert len(rows) == 2 * 2 * 10 and all(float(r["latency_s"]) > 0 for r in rows)
    for cid in ("c01", "c02"):  # every model in every block, 5 in a row, seq 0..9
        mine = [r for r in rows if r["condition"] == cid]
        for model in ("digits_cnn", "resnet20"):
            m = [r for r in mine if r["model"] == model]
            assert sorted(int(r["seq"]) for r in m) == list(range(10))
            assert sorted({int(r["block"]) for r in m}) == [0, 1]
        t = [float(r["t_s"]) for r in mine]
        assert t == sorted(t)  # rows in time order within a condition
    idle, loaded = conds
    assert idle["load_kind_used"] == "none" and idle["load_cpu_share"] == 0.0
    assert loaded["load_kind_used"] == "python fallback" and loaded["load_cpu_share"] > 0.3
    assert loaded["snapshot_before"]["loadavg_1"] is not None and loaded["torch_threads"] == 1
    assert loaded["label"] == "load 1x100%, 1 thr, eager, b1"
    run = json.loads((out / "run.json").read_text())
    assert run["versions"]["torch"] == torch.__version__ and len(run["conditions"]) == 2
    models = json.loads((out / "models.json").read_text())
    assert models["resnet20"]["input"] == [3, 16, 16] and models["digits_cnn"]["macs"] > 0
    assert Path(summary["report"]).is_file()
    assert "load 1x100%" in Path(summary["report"]).read_text()


def test_block_order_is_randomised_and_seeded(tmp_path):
    import numpy as np

    fns = {m: (lambda: None) for m in "abcd"}
    first = measure.measure(fns, 40, 2, np.random.default_rng(0))["rows"]
    again = measure.measure(fns, 40, 2, np.random.default_rng(0))["rows"]
    order = [r[0] for r in first]
    assert order == [r[0] for r in again]
    blocks = [tuple(order[i:i + 8:2]) for i in range(0, len(order), 8)]  # the model order of each block
    assert len(set(blocks)) > 5  # 20 blocks, 24 possible orders: not one fixed order


def test_time_budget_truncates_after_whole_blocks():
    import numpy as np

    fns = {"slow": lambda: time.sleep(0.01), "fast": lambda: None}
    r = measure.measure(fns, 1000, 5, np.random.default_rng(0), budget_s=0.2)
    assert r["truncated"] and 2 <= r["blocks"] < r["planned_blocks"]
    counts = {m: sum(1 for x in r["rows"] if x[0] == m) for m in fns}
    assert counts["slow"] == counts["fast"] == 5 * r["blocks"]


@pytest.mark.slow
def test_backends_and_a_stream_step_and_an_onnx_file(tmp_path):
    from leancnn import create_model
    from leancnn.export import export_model

    onnx_path = export_model(create_model("digits_cnn").eval(), tmp_path / "cnn.onnx", (1, 3, 32, 32))
    cfg = cfg_of(models=[{"name": "resnet20", "input": [3, 16, 16]},
                         {"name": "movinet_a0_stream", "input": [3, 1, 32, 32], "label": "a0_step"},
                         {"onnx": str(onnx_path)}],
                 grid={"loads": [{"workers": 0}], "backends": ["eager", "onnxruntime"]})
    out = tmp_path / "run"
    runner.run(cfg, out, log=lambda s: None, report=False)
    eager, ort = read_conditions(out)
    assert eager["backend"] == "eager" and set(eager["samples_per_model"]) == {"resnet20", "a0_step"}
    assert "onnxruntime" in eager["skipped_models"]["cnn"]
    assert ort["samples_per_model"] == {"resnet20": 10, "a0_step": 10, "cnn": 10}
    assert json.loads((out / "models.json").read_text())["a0_step"]["kind"] == "stream_step"


@pytest.mark.slow
def test_a_registration_network_is_timed_with_its_two_inputs(tmp_path):
    cfg = cfg_of(models=[{"name": "reg_local", "input": [1, 16, 16, 16]}],
                 grid={"loads": [{"workers": 0}], "backends": ["eager", "onnxruntime"]},
                 protocol={"samples": 4, "block": 2, "warmup": 1, "settle_seconds": 0.0})
    out = tmp_path / "run"
    runner.run(cfg, out, log=lambda s: None, report=False)
    eager, ort = read_conditions(out)
    assert eager["samples_per_model"] == {"reg_local": 4} and ort["samples_per_model"] == {"reg_local": 4}
    rec = json.loads((out / "models.json").read_text())["reg_local"]
    assert rec["kind"] == "registration" and rec["input"] == [1, 16, 16, 16] and rec["macs"] > 0
    with pytest.raises(LeancnnError, match=r"models\[0\]'.*must have 4 dimensions"):
        runner.check_run(cfg_of(models=[{"name": "reg_local", "input": [1, 16, 16]}]))
    with pytest.raises(LeancnnError, match=r"models\[0\]': input \[1, 16, 16, 16\]: "):  # an affine head's grid
        runner.check_run(cfg_of(models=[{"name": "reg_global", "input": [1, 16, 16, 16]}]))


def test_stream_step_callable_carries_the_state():
    cfg = cfg_of(models=[{"name": "movinet_a0_stream", "input": [3, 1, 24, 24]}])
    (spec,), conds, _ = runner.check_run(cfg)
    steps = []
    spec.module.stream_step = lambda x, s, f=spec.module.stream_step: (steps.append(int(s["frame_count"])),
                                                                        f(x, s))[1]
    spec.module.forward = lambda x, state=None: spec.module.stream_step(x, state)
    fn = measure.make_callable(spec, conds[0], cfg, {})
    with torch.inference_mode():
        for _ in range(3):
            fn()
    assert steps == [0, 1, 2]


# ------------------------------------------------------------------------------------------------ resume


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "run"
    cfg = cfg_of(grid={"loads": [{"workers": 0}, {"workers": 1, "kind": "python"}, {"workers": 0, "percent": 50}]})

    def stop_after_first(line):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg, out, log=stop_after_first, report=False)
    assert [c["id"] for c in read_conditions(out)] == ["c01"]
    assert active_loads() == []
    with open(out / "samples.csv", "a") as f:  # a condition killed mid-way: rows without a conditions.jsonl line
        f.write("c02,digits_cnn,0,0,0.5,0.1\nc02,resnet20,0,0,0.5,0.2\nc02,dig")
    before = [r for r in read_samples(out) if r["condition"] == "c01"]
    with pytest.raises(LeancnnError, match="holds a latency run"):
        runner.run(cfg, out, log=lambda s: None, report=False)
    with pytest.raises(LeancnnError, match="config differs"):
        runner.run(cfg_of(protocol={"samples": 12, "block": 5}), out, resume=True, log=lambda s: None)
    lines = []
    runner.run(cfg, out, resume=True, log=lines.append, report=False)
    assert "1 of 3 conditions done" in lines[0] and "samples of an unfinished condition dropped" in lines[0]
    rows = read_samples(out)
    assert [r for r in rows if r["condition"] == "c01"] == before  # kept as they were
    assert [c["id"] for c in read_conditions(out)] == ["c01", "c02", "c03"]
    assert all(float(r["latency_s"]) != 0.5 for r in rows)  # the torn condition's rows are gone
    assert len(rows) == 3 * 2 * 10


def test_a_load_that_dies_midrun_is_recorded(tmp_path):
    cfg = cfg_of(grid={"loads": [{"workers": 1, "kind": "python"}]}, protocol={"samples": 20, "block": 5,
                                                                               "warmup": 1, "settle_seconds": 0.0})
    specs, (cond,), _ = runner.check_run(cfg)
    import numpy as np

    def kill_load(done, total):
        if done == 1:
            for load in active_loads():
                for pid in load.pids:
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    rec, rows = measure.run_condition(cond, specs, cfg, {}, np.random.default_rng(0), kill_load)
    assert rec["load_died"] and "still running" in rec["load_died"]["message"]
    assert rec["status"] == "done" and rec["blocks"] == 1 and len(rows) == 2 * 5
    assert active_loads() == []


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("args, match", [
    (["models=[{name: nosuchnet}]"], r"models\[0\].*unknown model 'nosuchnet'"),
    (["grid.loads=[]"], "no conditions"),
    (["grid.loads=[{workers: 64}]"], r"grid.loads\[0\].workers' = 64 is above"),
    (["models=[{name: resnet20, onnx: x.onnx}]"], r"models\[0\]' needs exactly one of"),
    (["grid.threads=[0]"], r"grid.threads\[0\]"),
    (["models=[{name: resnet20, input: [3, 32]}]"], r"models\[0\].input"),
])
def test_bad_input_is_one_line_before_any_measurement(tmp_path, capsys, args, match):
    out = tmp_path / "run"
    assert main(["latency", "run", "-o", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    import re

    assert re.search(match, err), err
    assert not out.exists()


def test_unreadable_onnx_and_missing_stress_ng_are_errors_before_measuring(tmp_path, monkeypatch):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(LeancnnError, match=r"models\[1\].*not a readable ONNX model"):
        runner.check_run(cfg_of(models=[{"name": "resnet20"}, {"onnx": str(bad)}]))
    with pytest.raises(LeancnnError, match=r"no ONNX file"):
        runner.check_run(cfg_of(models=[{"onnx": str(tmp_path / "none.onnx")}]))
    with pytest.raises(LeancnnError, match="can run on any backend"):
        from leancnn import create_model
        from leancnn.export import export_model

        good = export_model(create_model("digits_cnn").eval(), tmp_path / "g.onnx", (1, 3, 32, 32))
        runner.check_run(cfg_of(models=[{"onnx": str(good)}]))
    monkeypatch.setattr(loadspec, "stress_ng_path", lambda: None)
    with pytest.raises(ConfigError, match="stress-ng"):
        cfg_of(grid={"loads": [{"workers": 1, "kind": "stress-ng"}]})


def test_quick_shrinks_any_config():
    cfg = runner.quick_config(from_dict(LatencyConfig, {
        "models": [{"name": n} for n in ("resnet20", "resnet56", "digits_cnn", "mobilenetv3_small")],
        "grid": {"loads": [{"workers": 0}, {"workers": 1}, {"workers": 2}], "threads": [2, 1],
                 "backends": ["onnxruntime", "eager"], "quotas": [0.5]}}))
    assert len(cfg.models) == 3 and [ld.workers for ld in cfg.grid.loads] == [0, 1]
    assert cfg.grid.threads == [2] and cfg.grid.backends == ["onnxruntime"] and cfg.grid.quotas == []
    assert cfg.protocol.samples == 60 and len(measure.plan_conditions(cfg)) == 2


def test_quota_condition_runs_or_is_skipped_with_the_reason(tmp_path):
    cfg = cfg_of(models=[{"name": "digits_cnn"}, {"name": "resnet20", "input": [3, 16, 16]}],
                 grid={"loads": [], "quotas": [0.5]})
    out = tmp_path / "run"
    runner.run(cfg, out, log=lambda s: None, report=False)
    (rec,) = read_conditions(out)
    ok, why = quota_support()
    if ok:
        assert rec["status"] == "done" and rec["load_kind_used"].startswith("cgroup v")
        assert rec["label"].startswith("quota 0.5 CPU")
    else:
        assert rec["status"] == "skipped" and why in rec["skip_reason"]


# ------------------------------------------------------------------------------------------------ cleanup


def _load_groups(parent: int) -> set[int]:
    """Process groups led by the parent's children (the load processes: each leads a group of its own)."""
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))  # state, ppid, pgid, sid
            if st and st[1] == parent and st[2] == int(name) and st[0] not in "ZX":
                out.add(int(name))
    return out


def _alive_in(groups: set[int]) -> list[int]:
    left = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st and st[0] not in "ZX" and (st[2] in groups or st[3] in groups):
                left.append(int(name))
    return left


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["python", pytest.param("stress-ng", marks=pytest.mark.skipif(
    not HAVE_STRESS_NG, reason="stress-ng is not installed"))])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_real_signal_midrun_leaves_no_load_process(tmp_path, kind, sig):
    cfg = tmp_path / "lat.yaml"
    cfg.write_text("models: [{name: digits_cnn}]\n"
                   f"grid: {{loads: [{{workers: 1, kind: {kind}}}, {{workers: 2, kind: {kind}}}]}}\n"
                   "protocol: {samples: 1000000, block: 50, warmup: 1, settle_seconds: 0.0, condition_seconds: 60}\n")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "leancnn", "latency", "run", "-c", str(cfg), "-o", str(out)],
                            preexec_fn=default_sigint,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        sessions: set[int] = set()  # the load's process groups
        while not sessions and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            sessions = _load_groups(proc.pid)
        assert sessions, f"no load process appeared: {proc.poll()} {proc.stderr.read() if proc.poll() else ''}"
        time.sleep(0.5)  # the load is running and the model is being timed
        sessions |= _load_groups(proc.pid)
        assert _alive_in(sessions)
        proc.send_signal(sig)
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert rc == (130 if sig == signal.SIGINT else 143), (rc, err)  # SIGTERM ends a command as Ctrl-C does
    assert err == "interrupted\n", err
    deadline = time.monotonic() + 3
    while _alive_in(sessions) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive_in(sessions) == []
    assert (out / "run.json").is_file() and read_conditions(out) == []  # nothing half-recorded


@pytest.mark.slow
def test_cli_report_and_compare(tmp_path, capsys):
    cfg = cfg_of(grid={"loads": [{"workers": 0}]})
    for name in ("a", "b"):
        runner.run(cfg, tmp_path / name, log=lambda s: None, report=False)
    assert main(["latency", "report", str(tmp_path / "a"), "--quantiles", "0.5", "0.9"]) == 0
    text = (tmp_path / "a" / "report.md").read_text()
    assert "p90" in text and "digits_cnn" in text
    assert main(["latency", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "report.md").is_file() and "report written to" in capsys.readouterr().out
    assert main(["latency", "compare", str(tmp_path / "a"), "-o", str(tmp_path / "d")]) == 2
    assert main(["latency", "run", "--resume"]) == 2  # --resume needs --out


# ------------------------------------------------------------------------------------------------ samples vs records


def _rewrite_samples(run_dir: Path, keep) -> None:
    lines = (run_dir / "samples.csv").read_text().splitlines(keepends=True)
    (run_dir / "samples.csv").write_text(lines[0] + "".join(ln for ln in lines[1:] if keep(ln.split(","))))


@pytest.mark.slow
def test_report_refuses_missing_samples_and_resume_measures_exactly_those(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = cfg_of(grid={"loads": [{"workers": 0}, {"workers": 1, "kind": "python"}, {"workers": 0, "percent": 50}]})
    runner.run(cfg, out, log=lambda s: None, report=False)
    full = read_samples(out)
    # one model's rows of c02 lost: the report refuses, naming that cell only, and says how to fix it
    _rewrite_samples(out, lambda row: not (row[0] == "c02" and row[1] == "resnet20"))
    capsys.readouterr()
    assert main(["latency", "report", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "for 1 (condition, model) cell(s) (c02 resnet20: 0 of 10)" in err
    assert f"leancnn latency run --resume -o {out}" in err
    lines = []
    summary = runner.run(runner.resume_config(out), out, resume=True, log=lines.append, report=False)
    assert summary["measured"] == 1 and "measuring again c02, whose samples.csv rows were short" in lines[0]
    rows = read_samples(out)
    assert [r for r in rows if r["condition"] != "c02"] == [r for r in full if r["condition"] != "c02"]
    assert {(m, sum(r["model"] == m for r in rows if r["condition"] == "c02")) for m in ("digits_cnn", "resnet20")} \
        == {("digits_cnn", 10), ("resnet20", 10)}
    assert sorted(c["id"] for c in read_conditions(out)) == ["c01", "c02", "c03"]  # each once: no stale record
    assert main(["latency", "report", str(out)]) == 0
    assert [c["id"] for c in json.loads((out / "analysis.json").read_text())["conditions"]] == ["c01", "c02", "c03"]
    # samples.csv cut in the middle of a row (as `head -c` does) of the condition it holds last (c02, measured
    # again above): only that one is short, and only that one is measured again, through the CLI
    kept = read_samples(out)
    last = kept[-1]["condition"]
    text = (out / "samples.csv").read_text()
    (out / "samples.csv").write_text(text[:text.index(f"\n{last},") + 150])
    capsys.readouterr()
    assert main(["latency", "report", str(out)]) == 2
    err = capsys.readouterr().err
    assert [c for c in ("c01", "c02", "c03") if f"{c} " in err] == [last]
    assert main(["latency", "run", "--resume", "-o", str(out), "--no-report"]) == 0
    assert "1 condition(s) measured" in capsys.readouterr().out
    rows = read_samples(out)
    assert [r for r in rows if r["condition"] != last] == [r for r in kept if r["condition"] != last]
    assert sum(r["condition"] == last for r in rows) == 20 and main(["latency", "report", str(out)]) == 0


@pytest.mark.slow
def test_the_printed_resume_hint_resumes(tmp_path, capsys, monkeypatch):
    import shlex

    cfg = tmp_path / "lat.yaml"  # a config file plus an override: the hint must not need either
    cfg.write_text("models: [{name: digits_cnn}, {name: resnet20, input: [3, 16, 16]}]\n"
                   "grid: {loads: [{workers: 0}, {workers: 0, percent: 50}]}\n"
                   "protocol: {samples: 10, block: 5, warmup: 1, settle_seconds: 0.0}\n")
    out = tmp_path / "my run"
    real = runner.run_condition

    def interrupt_c02(cond, *a, **k):
        if cond.id == "c02":
            raise KeyboardInterrupt
        return real(cond, *a, **k)

    monkeypatch.setattr(runner, "run_condition", interrupt_c02)
    assert main(["latency", "run", "-c", str(cfg), "protocol.samples=12", "-o", str(out)]) == 130
    hint = capsys.readouterr().out.split("finish with: ")[1].strip()
    assert hint == f"leancnn latency run --resume -o '{out}'"
    monkeypatch.setattr(runner, "run_condition", real)
    argv = shlex.split(hint)
    assert argv[0] == "leancnn" and main(argv[1:]) == 0
    assert "resuming" in capsys.readouterr().out
    rows = read_samples(out)
    assert [c["id"] for c in read_conditions(out)] == ["c01", "c02"] and len(rows) == 2 * 2 * 12
    assert (out / "report.md").is_file()


@pytest.mark.parametrize("args, match", [
    (["--alpha", "0"], r"--alpha \(analysis.alpha, the family-wise error rate\) must be in \(0, 1\), got 0.0"),
    (["--alpha", "1.5"], r"--alpha .* must be in \(0, 1\)"),
    (["--margin", "-0.1"], r"--margin .* must be in \[0, 1\), got -0.1"),
    (["--quantiles", "0.5", "1"], r"--quantiles .* must be in \(0, 1\), got 1.0"),
])
def test_report_settings_out_of_range_name_the_flag(tmp_path, capsys, args, match):
    import re

    out = tmp_path / "run"
    runner.run(cfg_of(grid={"loads": [{"workers": 0}]}), out, log=lambda s: None, report=False)
    assert main(["latency", "report", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err) and "confidence" not in err, err
    assert not (out / "report.md").exists()
