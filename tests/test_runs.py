"""Runs and results that never lie (issue 8): checked configs, honest resume, protected run directories,
fingerprinted reuse of finished runs, one-line errors under DDP. Every refusal is checked for its one line,
its exit code, and for leaving the disk as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import cli, one_error_line

from leancnn.cli import main
from leancnn.config import ExperimentConfig, load_config, resumable_keys
from leancnn.tasks.digits import run_fingerprint
from leancnn.tasks.runs import cached_run_state, fingerprint_changes, read_fingerprint
from leancnn.train import load_checkpoint

LEANCNN = Path(sys.executable).with_name("leancnn")
TORCHRUN = Path(sys.executable).with_name("torchrun")


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (to prove that a refused command changed nothing)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_overrides):
    """A finished 1-epoch run (digits_cnn, cosine schedule), shared; copy it before changing it."""
    path = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", *tiny_overrides, "-o", str(path)]) == 0
    return path


@pytest.fixture
def run(finished, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(finished, path)
    return path


# ----------------------------------------------------------------------------------------- constraints


BAD_VALUES = [
    ("train.epochs=0", "config key 'train.epochs' must be >= 1, got 0"),
    ("train.epochs=-1", "config key 'train.epochs' must be >= 1, got -1"),
    ("model.num_classes=0", "config key 'model.num_classes' must be >= 1, got 0"),
    ("model.num_classes=5", "config key 'model.num_classes' is 5 but the digit data has 10 classes"),
    ("data.batch_size=0", "config key 'data.batch_size' must be >= 1, got 0"),
    ("data.eval_batch_size=0", "config key 'data.eval_batch_size' must be >= 1, got 0"),
    ("data.limit_train=-1", "config key 'data.limit_train' must be >= 0, got -1"),
    ("train.threads=-1", "config key 'train.threads' must be 'auto' or a whole number >= 1 (0 reads as auto), got -1"),
    ("train.grad_clip=-1", "config key 'train.grad_clip' must be >= 0, got -1"),
    ("optim.momentum=-1", "config key 'optim.momentum' must be in [0, 1), got -1"),
    ("data.num_workers=-1", "config key 'data.num_workers' must be >= 0, got -1"),
    ("data.domains_per_batch=0", "config key 'data.domains_per_batch' must be >= 1, got 0"),
    ("model.mixstyle.p=2", "config key 'model.mixstyle.p' must be in [0, 1], got 2"),  # with after=[]
    ("name=../../x", "config key 'name' must be a plain name that stays one directory level"),
    ("name=a/b", "config key 'name' must be a plain name"),
    ("optim.lr=.nan", "config key 'optim.lr' must be a finite number, got nan"),
    ("optim.betas=[0.9]", "config key 'optim.betas' needs exactly 2 item(s), got 1"),
    ("data.domains=[]", "config key 'data.domains' must not be empty"),
    ("data.domains=[mnist,mnist]", "config key 'data.domains' lists 'mnist' more than once"),
    ("data.test_domains=[mnist]", "config key 'data.test_domains' repeats training domain(s) mnist"),
    ("train.seed=-3", "config key 'train.seed' must be in [0, 4294967296), got -3"),
    ("schedule.warmup_epochs=5", "config key 'schedule.warmup_epochs' (5) must not exceed 'train.epochs' (1)"),
    ("schedule.min_lr=1", "config key 'schedule.min_lr' (1) must not exceed 'optim.lr' (0.05)"),
    ("optim.momentum=0", None),  # valid on its own ...
    ("loss.label_smoothing=1", "config key 'loss.label_smoothing' must be in [0, 1), got 1"),
    ("output_dir=", "config key 'output_dir' must not be empty"),
    ("model.kwargs={nope:1}", "model 'digits_cnn' does not take argument(s) nope:1; allowed: hidden, in_chans"),
    ("model.mixstyle.after=[nope]", "config key 'model.mixstyle.after': cannot insert MixStyle after 'nope'"),
    ("loss.feature_layer=nope", "config key 'loss.feature_layer': layer 'nope' is not a module of DigitsCNN"),
    ("loss.name=bias loss.alpha=-5", "config section 'loss': "),
    ("semi.mode=ssdg", "semi.mode=ssdg needs data.labels_per_class > 0"),
]


@pytest.mark.parametrize("override, message", [b for b in BAD_VALUES if b[1]], ids=lambda v: str(v)[:40])
def test_bad_value_fails_in_one_line_before_anything_is_written(capsys, tmp_path, monkeypatch, tiny_overrides,
                                                                override, message):
    monkeypatch.chdir(tmp_path)
    r = cli(capsys, "train", *tiny_overrides, *override.split(), "-o", tmp_path / "run")
    assert one_error_line(r, "train").startswith(message)
    assert list(tmp_path.iterdir()) == []  # no run directory, no output_dir


def test_nesterov_without_momentum(capsys, tmp_path, tiny_overrides):
    msg = one_error_line(cli(capsys, "train", *tiny_overrides, "optim.momentum=0", "optim.nesterov=true",
                         "-o", tmp_path / "r"), "train")
    assert msg == "config key 'optim.nesterov' is true but 'optim.momentum' is 0: Nesterov needs momentum"
    assert not (tmp_path / "r").exists()


def test_every_default_passes_its_own_rules():
    load_config()  # from_dict checks defaults too


# ----------------------------------------------------------------------------------------- run directories


def test_existing_run_is_not_overwritten(capsys, run, tiny_overrides):
    before = snapshot(run)
    msg = one_error_line(cli(capsys, "train", *tiny_overrides, "-o", run), "train")
    assert msg == (f"run directory '{run}' already holds a run (last.pt, best.pt, summary.json); continue it with "
                   f"--resume {run / 'last.pt'}, replace it with --force, or choose another -o")
    assert snapshot(run) == before


def test_force_replaces_a_run(capsys, run, tiny_overrides):
    (run / "notes.txt").write_text("mine")
    r = cli(capsys, "train", *tiny_overrides, "train.seed=1", "-o", run, "--force")
    assert r.code == 0, r.err
    assert load_config(run / "config.yaml").train.seed == 1
    assert load_checkpoint(run / "last.pt")["config"]["train"]["seed"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert read_fingerprint(run)["config"]["train.seed"] == 1
    assert json.loads((run / "summary.json").read_text())["fingerprint"] == read_fingerprint(run)["fingerprint"]
    assert (run / "notes.txt").read_text() == "mine"  # not a run file: left alone


def test_empty_output_path(capsys, tmp_path, monkeypatch, tiny_overrides):
    monkeypatch.chdir(tmp_path)
    assert one_error_line(cli(capsys, "train", *tiny_overrides, "-o", ""), "train") == "-o: the path is empty"
    assert one_error_line(cli(capsys, "lodo", *tiny_overrides, "-o", "", "--targets", "uci"), "lodo") == \
        "-o: the path is empty"
    assert list(tmp_path.iterdir()) == []


def test_resume_into_a_directory_with_another_run(capsys, run, tmp_path, tiny_overrides):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    before = snapshot(other)
    msg = one_error_line(cli(capsys, "train", "--resume", run / "last.pt", "-o", other, "train.epochs=2"), "train")
    assert msg.startswith(f"run directory '{other}' holds its own last.pt, which resuming from")
    assert snapshot(other) == before


# ----------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("override, key", [
    ("optim.name=adamw", "optim.name"), ("optim.lr=0.5", "optim.lr"), ("data.batch_size=32", "data.batch_size"),
    ("model.name=resnet20", "model.name"), ("loss.name=bias", "loss.name"), ("data.limit_train=128", "data.limit_train"),
])
def test_resume_refuses_a_changed_key_and_changes_nothing(capsys, run, override, key):
    before = snapshot(run)
    msg = one_error_line(cli(capsys, "train", "--resume", run / "last.pt", override, "train.epochs=5"), "train")
    assert msg.startswith(f"cannot resume checkpoint '{run / 'last.pt'}' with '{key}' changed (")
    assert "on --resume only " + ", ".join(resumable_keys(ExperimentConfig)) + " may change" in msg
    assert snapshot(run) == before  # config.yaml, last.pt, metrics: as they were


def test_resume_with_a_config_file_that_differs(capsys, run, tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text((run / "config.yaml").read_text().replace("lr: 0.05", "lr: 0.2"))
    before = snapshot(run)
    msg = one_error_line(cli(capsys, "train", "-c", path, "--resume", run), "train")
    assert "with 'optim.lr' changed (0.05 in the checkpoint, 0.2 now)" in msg
    assert snapshot(run) == before


def test_resume_cannot_shorten(capsys, run):
    (run / "last.pt").rename(run / "one.pt")
    # make a 2-epoch run out of it first, then ask for 1
    assert cli(capsys, "train", "--resume", run / "one.pt", "train.epochs=2", "-o", run).code == 0
    msg = one_error_line(cli(capsys, "train", "--resume", run / "last.pt", "train.epochs=1"), "train")
    assert msg.endswith("has already completed 2 epochs; a run cannot be shortened")


def test_extending_a_finished_cosine_run_follows_the_longer_schedule(capsys, run):
    """A finished 1-epoch cosine run ended at lr 0; extended to 2 epochs, epoch 2 starts where a 2-epoch cosine
    is after one epoch: lr 0.05 * 0.5 (1 + cos(pi / 2)) = 0.025, not 0."""
    last = load_checkpoint(run / "last.pt")
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    r = cli(capsys, "train", "--resume", run, "train.epochs=2", "data.eval_batch_size=64", "train.threads=1")
    assert r.code == 0, r.err
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert lines[1]["lr"] == pytest.approx(0.025, rel=1e-9)
    after = load_checkpoint(run / "last.pt")
    assert after["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # end of the new cosine
    saved = load_config(run / "config.yaml")  # describes what ran, runtime keys included
    assert saved.train.epochs == 2 and saved.data.eval_batch_size == 64 and saved.train.threads == 1
    assert read_fingerprint(run)["config"]["train.epochs"] == 2
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_interleaved_overrides_and_options(capsys, tmp_path, tiny_overrides):
    first, *rest = tiny_overrides
    r = cli(capsys, "train", first, "-o", tmp_path / "r", *rest)
    assert r.code == 0, r.err
    assert load_config(tmp_path / "r" / "config.yaml").model.name == "digits_cnn"
    with pytest.raises(SystemExit) as info:
        main(["train", first, "-o", str(tmp_path / "x"), "--nope"])
    assert info.value.code == 2
    assert "unrecognized arguments: --nope" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- fingerprints


def test_fingerprint_ignores_runtime_keys_only(tiny_overrides):
    base = run_fingerprint(load_config(overrides=tiny_overrides))
    same = run_fingerprint(load_config(overrides=[*tiny_overrides, "train.threads=1", "data.num_workers=2",
                                                  "data.eval_batch_size=7", "name=x", "output_dir=y"]))
    assert same["fingerprint"] == base["fingerprint"]
    other = run_fingerprint(load_config(overrides=[*tiny_overrides, "train.epochs=2"]))
    assert other["fingerprint"] != base["fingerprint"]
    assert fingerprint_changes(base, other) == ["train.epochs: 1 -> 2"]
    assert set(base["data"]) == {"digits/mnist"} and len(base["data"]["digits/mnist"]) == 16


def test_cached_run_state(finished, tiny_overrides, tmp_path):
    cfg = load_config(overrides=tiny_overrides)
    assert cached_run_state(finished, run_fingerprint(cfg)).action == "done"
    st = cached_run_state(finished, run_fingerprint(load_config(overrides=[*tiny_overrides, "optim.lr=0.1"])))
    assert st.action == "stale" and st.reason == "optim.lr: 0.05 -> 0.1"
    assert cached_run_state(tmp_path / "nothing", run_fingerprint(cfg)).action == "new"
    part = tmp_path / "part"
    shutil.copytree(finished, part)
    (part / "summary.json").unlink()
    assert cached_run_state(part, run_fingerprint(cfg)).action == "resume"
    (part / "fingerprint.json").unlink()
    assert cached_run_state(part, run_fingerprint(cfg)).reason.startswith("no fingerprint.json")


LODO = ["--targets", "uci", "--seeds", "0"]


@pytest.mark.slow
def test_lodo_retrains_when_the_config_or_a_variant_changes(capsys, tmp_path, tiny_overrides):
    out = tmp_path / "lodo"
    base = [*tiny_overrides, "data.limit_eval=64", "-o", out, *LODO]
    r = cli(capsys, "lodo", *base)
    assert r.code == 0, r.err
    assert "4 runs" not in r.out and "1 to train" in r.out
    run = out / "run" / "uci" / "seed0"
    first = json.loads((run / "summary.json").read_text())

    r = cli(capsys, "lodo", *base)  # same plan: reused
    assert "0 to train" in r.out

    r = cli(capsys, "lodo", *base, "train.epochs=2")
    assert r.code == 0, r.err
    assert "1 to train" in r.out and "(retraining: train.epochs: 1 -> 2)" in r.out
    second = json.loads((run / "summary.json").read_text())
    assert second["epochs"] == 2 and len(second["history"]) == 2 and second["fingerprint"] != first["fingerprint"]
    lodo = json.loads((out / "lodo.json").read_text())
    assert lodo["acc"]["run"]["uci"]["0"] == second["test"]["uci"]["acc"]
    assert lodo["fingerprints"] == {"run/uci/seed0": second["fingerprint"]}

    r = cli(capsys, "lodo", *base[:-4], "-o", out, *LODO, "--variant", "run: optim.lr=0.1")  # variant redefined
    assert "(retraining: optim.lr: 0.05 -> 0.1" in r.out


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "-1"], "--seeds: -1 is not a seed; seeds are integers in [0, 4294967296)"),
    (["--seeds", "0", "0"], "--seeds lists 0 more than once"),
    (["--targets", "uci", "uci"], "--targets lists 'uci' more than once"),
    (["--variant", "a", "--variant", "a: optim.lr=0.1"], "--variant lists 'a' more than once"),
    (["--variant", "a: optim.lr=-1"], "variant 'a': config key 'optim.lr' must be > 0, got -1"),
    (["--variant", "a: model.mixstyle.after=[nope]"], "variant 'a': config key 'model.mixstyle.after': "),
    (["--targets", "svhn"], "unknown target domain 'svhn'"),
])
def test_lodo_bad_arguments(capsys, tmp_path, tiny_overrides, extra, message):
    argv = ["lodo", *tiny_overrides, "-o", tmp_path / "lodo"]
    if "--targets" not in extra:
        argv += ["--targets", "uci"]
    if "--seeds" not in extra:
        argv += ["--seeds", "0"]
    assert one_error_line(cli(capsys, *argv, *extra), "lodo").startswith(message)
    assert not (tmp_path / "lodo").exists()


# ----------------------------------------------------------------------------------------- DDP errors


def _process(*argv, cwd, timeout=120):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_nproc_config_error_is_one_line_without_traceback(tmp_path, tiny_overrides):
    if not LEANCNN.exists():
        pytest.skip(f"{LEANCNN} is not installed")
    p = _process(LEANCNN, "train", *tiny_overrides, "data.batch_size=63", "--nproc-per-node", "2", "-o", "r",
                 cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == "leancnn train: error: config key 'data.batch_size' (63) is not divisible by the 2 processes\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_nproc_error_inside_the_workers_is_reported_by_rank_0_only(tmp_path, tiny_overrides):
    """An error only the workers can see (here: the run directory appears after the launcher checked it) is
    printed once, by rank 0, and the launcher adds no traceback."""
    if not LEANCNN.exists():
        pytest.skip(f"{LEANCNN} is not installed")
    p = _process(LEANCNN, "train", *tiny_overrides, "--nproc-per-node", "2", "-o", "r", "train.threads=1",
                 cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "r" / "summary.json").exists()
    q = _process(TORCHRUN, "--nproc_per_node=2", "-m", "leancnn", "train", *tiny_overrides, "-o", "r",
                 cwd=tmp_path, timeout=300)
    assert q.returncode != 0
    assert q.stderr.count("leancnn train: error: run directory 'r' already holds a run") == 1  # rank 0 only


def test_resume_from_best_into_its_own_directory_needs_force(capsys, run):
    before = snapshot(run)
    msg = one_error_line(cli(capsys, "train", "--resume", run / "best.pt", "train.epochs=2"), "train")
    assert msg == (f"run directory '{run}' holds its own last.pt, which resuming from '{run / 'best.pt'}' would "
                   "replace; add --force to replace it, or choose another -o")
    assert snapshot(run) == before


@pytest.mark.parametrize("plot, message", [
    ("/proc/leancnn-x/v.png", "--plot-variance '/proc/leancnn-x/v.png' cannot be written ("),
    ("v.gif", "--plot-variance 'v.gif' has suffix '.gif', which names no supported image format"),
    ("", "--plot-variance is empty"),
])
def test_evaluate_bad_plot_path_fails_before_evaluating(capsys, finished, monkeypatch, tmp_path, plot, message):
    import leancnn.tasks.classify as classify

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before the plot path was checked")

    monkeypatch.setattr(classify, "test_model", no_evaluation)
    monkeypatch.chdir(tmp_path)
    msg = one_error_line(cli(capsys, "evaluate", finished, "--plot-variance", plot), "evaluate")
    assert msg.startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_plot_into_a_new_directory(capsys, finished, tmp_path):
    png = tmp_path / "new" / "deeper" / "v.png"
    r = cli(capsys, "evaluate", finished, "--domains", "uci", "--plot-variance", png)
    assert r.code == 0, r.err
    assert png.read_bytes()[:4] == b"\x89PNG" and sorted(p.name for p in png.parent.iterdir()) == ["v.png"]


def test_demo_refuses_an_existing_demo(capsys, tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "report.md").write_text("an earlier demo")
    msg = one_error_line(cli(capsys, "demo", "-o", tmp_path / "demo"), "demo")
    assert msg == f"'{tmp_path / 'demo'}' already holds a demo; add --force to replace it, or choose another -o"
    assert snapshot(tmp_path) == {"demo/report.md": b"an earlier demo"}
    assert one_error_line(cli(capsys, "demo", "-o", ""), "demo") == "-o: the path is empty"
