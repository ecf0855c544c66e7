"""The ``leancnn`` command line, called in-process (``main(argv)``) and, for exit codes, as a real process."""

import contextlib
import io
import json
import math
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import ConcatDataset

import leancnn
from leancnn.cli import main
from leancnn.config import ConfigError, load_config, to_dict
from leancnn.data import DigitsDataset, digits
from leancnn.models import list_models
from leancnn.report import figure_suffixes as grid_suffixes
from leancnn.tasks.classification import eval_loader, evaluate
from leancnn.tasks.classify import evaluate_checkpoint
from leancnn.tasks.digits import build_model, config_from_checkpoint
from leancnn.train import load_model_state
from leancnn.train.checkpoint import load_checkpoint

LEANCNN = Path(sys.executable).with_name("leancnn")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_FILES = {"config.yaml", "fingerprint.json", "metrics.jsonl", "last.pt", "best.pt", "summary.json", "curves.png"}


def cli(capsys, *argv) -> SimpleNamespace:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return SimpleNamespace(code=code, out=out, err=err)


def one_error_line(result, command: str) -> str:
    """The single ``leancnn <command>: error: ...`` line of a failed command; returns the message."""
    assert result.code == 2, (result.out, result.err)
    assert result.err.endswith("\n") and result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err
    prefix = f"leancnn {command}: error: "
    assert result.err.startswith(prefix), result.err
    return result.err[len(prefix):-1]


def table_rows(text: str) -> dict[str, list[str]]:
    """The rows of a plain-text table, by their first cell."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(" | ")]
        if len(cells) > 1:
            rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_overrides):
    """One tiny training run through the CLI (digits_cnn, 256 images, 1 epoch), shared by the module."""
    path = tmp_path_factory.mktemp("cli") / "run"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", *tiny_overrides, "-o", str(path)])
    return SimpleNamespace(path=path, code=code, out=out.getvalue(), err=err.getvalue(),
                           overrides=list(tiny_overrides))


# ----------------------------------------------------------------------------------------- parser


@pytest.mark.parametrize("argv", [
    [], ["models"], ["data"], ["data", "prepare"], ["data", "inspect"], ["data", "grid"], ["train"],
    ["evaluate"], ["demo"],
], ids=lambda a: " ".join(a) or "main")
def test_help_exits_0(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: leancnn" + "".join(f" {a}" for a in argv))


def test_main_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("models", "data", "train", "evaluate", "demo", "--debug"):
        assert command in out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"leancnn {leancnn.__version__}\n" == "leancnn 0.1.0\n"


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "required" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- models


@pytest.mark.slow
def test_models_table(capsys):
    r = cli(capsys, "models")
    assert r.code == 0 and r.err == ""
    lines = r.out.splitlines()
    assert [c.strip() for c in lines[0].split(" | ")] == ["model", "params", "MACs", "input", "description"]
    assert set(lines[1]) == {"-", "+"}
    rows = table_rows(r.out)
    assert rows["resnet20"][:3] == ["269,722", "40.55M", "3x32x32"]
    assert rows["resnet56"][:3] == ["853,018", "125.49M", "3x32x32"]
    assert rows["resnet18"][:3] == ["11,173,962", "555.42M", "3x32x32"]
    assert rows["digits_cnn"][:3] == ["115,146", "14.16M", "3x32x32"]
    assert "CIFAR ResNet-20" in rows["resnet20"][3]


def test_models_pattern_and_input(capsys):
    r = cli(capsys, "models", "resnet", "--input", "3x64x64")
    assert r.code == 0
    rows = table_rows(r.out)
    assert sorted(rows) == ["model", "resnet18", "resnet20", "resnet56"]
    assert rows["resnet20"][:3] == ["269,722", "162.20M", "3x64x64"]  # 4x the 32x32 convs, same linear layer
    assert rows["resnet56"][:3] == ["853,018", "501.94M", "3x64x64"]


@pytest.mark.parametrize("size", ["3xAx3", "0x32x32", "32", "3x-1x32", "x"])
def test_models_bad_input_size(capsys, size):
    msg = one_error_line(cli(capsys, "models", "resnet20", "--input", size), "models")
    assert msg == f"input size '{size}' is not of the form CxHxW or CxTxHxW (e.g. 3x32x32, 3x8x172x172)"


def test_models_other_channel_count(capsys):
    r = cli(capsys, "models", "resnet20", "--input", "1x32x32")
    assert r.code == 0 and table_rows(r.out)["resnet20"][0] == "269,434"  # stem conv 3->1 channels: -288


@pytest.mark.slow
def test_models_table_at_another_size(capsys):
    r = cli(capsys, "models", "--input", "3x64x64")
    assert r.code == 0 and table_rows(r.out)["resnet20"][1] == "162.20M"


# ----------------------------------------------------------------------------------------- data


def test_data_inspect(capsys):
    r = cli(capsys, "data", "inspect", "uci")
    assert r.code == 0
    lines = r.out.splitlines()
    assert lines[0] == "uci: 1797 images of shape 32x32x3, 10 classes"
    assert lines[2] == "splits (seed 0): train 1258, val 270, test 269"
    counts = {int(k): int(v[0]) for k, v in table_rows(r.out).items() if k.isdigit()}
    assert sorted(counts) == list(range(10)) and sum(counts.values()) == 1797


def test_data_inspect_unknown(capsys):
    msg = one_error_line(cli(capsys, "data", "inspect", "nope"), "data")
    assert msg == "unknown dataset 'nope'; choose from: mnist, mnistm, syn, uci"


def test_data_grid_writes_png(capsys, tmp_path):
    path = tmp_path / "sub" / "x.png"
    r = cli(capsys, "data", "grid", "uci", "-o", path, "--per-domain", "4")
    assert r.code == 0 and str(path) in r.out
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no temp file left behind


@pytest.fixture
def no_domain_loading(monkeypatch):
    """Fail the test if a domain is loaded (or built): errors must come before any work."""
    def fail(*args, **kwargs):
        raise AssertionError("a domain was loaded before the arguments were checked")

    monkeypatch.setattr(digits, "load_domain", fail)


@pytest.mark.parametrize("count", [0, -1, 101, 100000])
def test_data_grid_per_domain_is_bounded(capsys, tmp_path, no_domain_loading, count):
    msg = one_error_line(cli(capsys, "data", "grid", "-o", tmp_path / "g.png", "--per-domain", count), "data")
    assert msg == f"--per-domain must be between 1 and 100, got {count}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, expected", [
    ("", "-o/--out is empty; give a file name ending in one of: {allowed}"),
    ("g.gif", "-o/--out '{path}' has suffix '.gif', which names no supported image format; allowed suffixes: {allowed}"),
    ("grid", "-o/--out '{path}' has no suffix, which names no supported image format; allowed suffixes: {allowed}"),
], ids=["empty", "gif", "no-suffix"])
def test_data_grid_bad_output_path(capsys, tmp_path, no_domain_loading, name, expected):
    path = str(tmp_path / name) if name else ""
    msg = one_error_line(cli(capsys, "data", "grid", "uci", "-o", path), "data")
    assert msg == expected.format(path=path, allowed=", ".join(grid_suffixes()))
    assert ".png, .jpg, .jpeg, .pdf, .svg" in msg
    assert list(tmp_path.iterdir()) == []


def test_data_grid_unknown_domain_writes_nothing(capsys, tmp_path, no_domain_loading):
    msg = one_error_line(cli(capsys, "data", "grid", "uci", "nope", "-o", tmp_path / "g.png"), "data")
    assert msg == "unknown dataset 'nope'; choose from: mnist, mnistm, syn, uci"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".JPEG", ".pdf", ".svg", ".webp"])
def test_data_grid_writes_the_format_its_suffix_names(capsys, tmp_path, suffix):
    if suffix.lower() not in grid_suffixes():
        pytest.skip(f"this Pillow cannot write {suffix}")
    path = tmp_path / f"grid{suffix}"
    r = cli(capsys, "data", "grid", "uci", "-o", path, "--per-domain", "2")
    assert r.code == 0, r.err
    data = path.read_bytes()
    magic = {".png": data[:8] == PNG_MAGIC, ".jpg": data[:3] == b"\xff\xd8\xff", ".JPEG": data[:3] == b"\xff\xd8\xff",
             ".pdf": data[:5] == b"%PDF-", ".svg": b"<svg" in data[:2000],
             ".webp": data[:4] == b"RIFF" and data[8:12] == b"WEBP"}
    assert magic[suffix], data[:16]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.slow
def test_data_grid_largest_row(capsys, tmp_path):
    path = tmp_path / "g.png"
    assert cli(capsys, "data", "grid", "uci", "-o", path, "--per-domain", "100").code == 0
    from PIL import Image

    with Image.open(path) as im:
        assert im.width == 10060 and im.height == 115  # (1.0 * 100 + 0.6) x 1.15 inches at 100 dpi


def test_data_prepare_unknown_domain_builds_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LEANCNN_CACHE", str(tmp_path))
    msg = one_error_line(cli(capsys, "data", "prepare", "uci", "nope"), "data")
    assert msg == "unknown dataset 'nope'; choose from: mnist, mnistm, syn, uci"
    assert not (tmp_path / "digits").exists()


@pytest.mark.slow
def test_data_prepare_progress_only_on_a_terminal(capsys, tmp_path, monkeypatch):
    plain = cli(capsys, "data", "prepare", "uci", "mnist")
    assert plain.code == 0 and plain.err == ""  # stdout is not a terminal: no bar
    assert table_rows(plain.out)["uci"][0] == "1797" and table_rows(plain.out)["mnist"][0] == "5000"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    bars = cli(capsys, "data", "prepare", "uci", "mnist")
    assert bars.code == 0 and bars.out == plain.out  # the bar goes to stderr only
    assert bars.err.startswith("\rdomains:")
    monkeypatch.setenv("LEANCNN_CACHE", str(tmp_path))  # an empty cache: syn is rendered, with its own bar
    built = cli(capsys, "data", "prepare", "syn")
    assert built.code == 0 and table_rows(built.out)["syn"][0] == "5000"
    assert "rendering syn" in built.err and "/5000" in built.err
    assert (tmp_path / "digits" / "syn-v1.npz").is_file()


# ----------------------------------------------------------------------------------------- train: errors


def test_train_unknown_model(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    msg = one_error_line(cli(capsys, "train", "model.name=resnet21"), "train")
    assert msg == "unknown model 'resnet21'; available: " + ", ".join(list_models())
    assert "resnet20" in list_models()


def test_train_config_error_leaves_no_run_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, "train", "model.name=resnet21").code == 2
    assert list(tmp_path.iterdir()) == []


def test_train_missing_config_file(capsys, tmp_path):
    path = tmp_path / "missing.yaml"
    msg = one_error_line(cli(capsys, "train", "-c", path), "train")
    assert msg == f"config file '{path}' does not exist"


def test_train_malformed_config_file(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name: [resnet20\ntrain:\n  epochs: 1\n")
    msg = one_error_line(cli(capsys, "train", "-c", path), "train")
    assert msg.startswith(f"config file '{path}' is not valid YAML (line 3, column ")


def test_train_unknown_config_key(capsys):
    msg = one_error_line(cli(capsys, "train", "optim.lrr=1"), "train")
    assert msg == ("unknown config key 'optim.lrr'; allowed keys at 'optim': "
                   "name, lr, momentum, nesterov, weight_decay, betas")


@pytest.mark.parametrize("where", ["proc", "under_file"])
def test_train_unwritable_output_dir(capsys, tmp_path, monkeypatch, tiny_overrides, where):
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "afile"
    blocker.write_text("keep")
    out = Path("/proc/leancnn-x") if where == "proc" else blocker / "run"
    msg = one_error_line(cli(capsys, "train", *tiny_overrides, "-o", out), "train")
    assert msg.startswith(f"output directory '{out}' is not writable (")
    assert not out.exists()
    assert blocker.read_text() == "keep" and list(tmp_path.iterdir()) == [blocker]


def test_debug_reraises(capsys):
    with pytest.raises(ConfigError, match="optim.lrr"):
        main(["--debug", "train", "optim.lrr=1"])
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        main(["--debug", "data", "inspect", "nope"])


# ----------------------------------------------------------------------------------------- train: a real run


def test_train_run_files(run):
    assert run.code == 0, run.err
    assert {p.name for p in run.path.iterdir()} == RUN_FILES  # no temp or probe files left
    rows = table_rows(run.out)
    assert rows["mnist"][0] == "128"  # data.limit_eval
    assert run.out.rstrip().endswith(f"run written to {run.path}")


def test_train_metrics_and_summary(run):
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # one line per epoch
    record = json.loads(lines[0])
    assert record["epoch"] == 1 and record["lr"] == pytest.approx(0.05)
    assert 0 < record["train_loss"] < 10 and math.isfinite(record["val_loss"])
    assert 0 <= record["train_acc"] <= 1 and 0 <= record["val_acc"] <= 1
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["model"] == "digits_cnn" and summary["epochs"] == 1
    assert summary["run_dir"] == str(run.path) and summary["checkpoint"] == str(run.path / "best.pt")
    assert summary["best_val_acc"] == record["val_acc"]
    assert summary["history"] == [record]
    assert summary["test"]["mnist"]["n"] == 128 and 0 <= summary["test"]["mnist"]["acc"] <= 1
    assert f"{100 * summary['test']['mnist']['acc']:.2f}%" == table_rows(run.out)["mnist"][1]
    assert (run.path / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_train_saved_config_and_checkpoints(run):
    expected = load_config(overrides=run.overrides)
    saved = load_config(run.path / "config.yaml")
    assert saved == expected
    assert saved.model.name == "digits_cnn" and saved.data.limit_train == 256 and saved.train.epochs == 1
    last = load_checkpoint(run.path / "last.pt")
    assert load_checkpoint(run.path)["path"] == str(run.path / "last.pt")  # a directory means its last.pt
    assert last["model_name"] == "digits_cnn" and last["epoch"] == 1 and last["config"] == to_dict(expected)
    best = load_checkpoint(run.path / "best.pt")
    assert best["best_acc"] == last["best_acc"]
    assert all(torch.equal(best["model"][k], v) for k, v in last["model"].items())


def test_run_files_honour_umask(run):
    """Atomic writes (temp file + rename) give the same permissions as a plain open() (mkstemp alone: 0600)."""
    mode = stat.S_IMODE((run.path / "metrics.jsonl").stat().st_mode)
    assert {name: stat.S_IMODE((run.path / name).stat().st_mode) for name in RUN_FILES} == dict.fromkeys(RUN_FILES, mode)


# ----------------------------------------------------------------------------------------- evaluate


def test_evaluate_run_directory(capsys, run):
    r = cli(capsys, "evaluate", run.path)
    assert r.code == 0, r.err
    rows = table_rows(r.out)
    assert r.out.startswith("test set")
    images, acc, loss = rows["mnist"]
    assert images == "750"  # the whole mnist test split (15% of 5000)
    assert acc.endswith("%") and 0 <= float(acc[:-1]) <= 100 and float(loss) > 0
    assert "mean" not in rows


def test_evaluate_other_domains(capsys, run):
    r = cli(capsys, "evaluate", run.path / "last.pt", "--domains", "syn", "uci")
    assert r.code == 0, r.err
    rows = table_rows(r.out)
    names = ("syn", "uci", "mean (per domain)", "all (pooled)")
    assert list(rows)[1:] == list(names)
    assert [rows[d][0] for d in names] == ["750", "269", "-", "1019"]  # a mean over domains counts no images
    accs = {d: float(rows[d][1].rstrip("%")) for d in names}
    losses = {d: float(rows[d][2]) for d in names}
    assert accs["mean (per domain)"] == pytest.approx((accs["syn"] + accs["uci"]) / 2, abs=0.011)
    assert losses["mean (per domain)"] == pytest.approx((losses["syn"] + losses["uci"]) / 2, abs=1.1e-4)
    assert accs["all (pooled)"] == pytest.approx((750 * accs["syn"] + 269 * accs["uci"]) / 1019, abs=0.011)
    assert losses["all (pooled)"] == pytest.approx((750 * losses["syn"] + 269 * losses["uci"]) / 1019, abs=1.1e-4)


@pytest.mark.slow
def test_evaluate_pooled_entry_is_image_weighted(run):
    res = evaluate_checkpoint(run.path / "last.pt", ["syn", "uci"], device="cpu", progress=False)
    syn, uci = res["syn"], res["uci"]
    assert (syn["n"], uci["n"]) == (750, 269)
    assert res["mean"] == {"acc": (syn["acc"] + uci["acc"]) / 2, "loss": (syn["loss"] + uci["loss"]) / 2, "n": None}
    # "all" = one pass over the 1019 images of both test splits together
    state = load_checkpoint(run.path / "last.pt")
    model = build_model(config_from_checkpoint(state))
    load_model_state(model, state, "last.pt")
    both = ConcatDataset([DigitsDataset([d], "test") for d in ("syn", "uci")])
    pooled = evaluate(model, eval_loader(both, 100), torch.device("cpu"))
    assert res["all"]["n"] == pooled["n"] == 1019
    assert res["all"]["acc"] == pooled["acc"]  # the same correct count over the same 1019 images
    assert res["all"]["acc"] == (round(750 * syn["acc"]) + round(269 * uci["acc"])) / 1019
    assert res["all"]["loss"] == pytest.approx(pooled["loss"], rel=1e-6)
    assert res["all"]["loss"] == pytest.approx((750 * syn["loss"] + 269 * uci["loss"]) / 1019, rel=1e-12)


@pytest.mark.slow
def test_evaluate_progress_only_on_a_terminal(capsys, run, monkeypatch):
    plain = cli(capsys, "evaluate", run.path, "--domains", "uci", "syn")
    assert plain.code == 0 and plain.err == ""  # stdout is not a terminal: no bar
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    bars = cli(capsys, "evaluate", run.path, "--domains", "uci", "syn")
    assert bars.code == 0 and bars.out == plain.out  # the table is the same; the bars go to stderr
    assert "test uci" in bars.err and "test syn" in bars.err


def test_evaluate_limit_takes_a_fixed_subset(capsys, run):
    first = cli(capsys, "evaluate", run.path, "--domains", "syn", "uci", "--limit", "100")
    assert first.code == 0, first.err
    rows = table_rows(first.out)
    assert [rows[d][0] for d in ("syn", "uci", "all (pooled)")] == ["100", "100", "200"]
    assert cli(capsys, "evaluate", run.path, "--domains", "syn", "uci", "--limit", "100").out == first.out  # seeded
    assert table_rows(cli(capsys, "evaluate", run.path, "--domains", "uci", "--limit", "5000").out)["uci"][0] == "269"
    msg = one_error_line(cli(capsys, "evaluate", run.path, "--limit", "-1"), "evaluate")
    assert msg == "--limit must be a whole number >= 0 (0: every image), got -1"


def test_evaluate_unknown_domain(capsys, run):
    msg = one_error_line(cli(capsys, "evaluate", run.path, "--domains", "svhn"), "evaluate")
    assert msg.startswith("unknown dataset 'svhn'")


def test_evaluate_garbage_checkpoint(capsys, tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(bytes(range(256)) * 4)
    msg = one_error_line(cli(capsys, "evaluate", path), "evaluate")
    assert msg.startswith(f"checkpoint '{path}' cannot be read (")


def test_evaluate_missing_checkpoint(capsys, tmp_path):
    msg = one_error_line(cli(capsys, "evaluate", tmp_path / "nope.pt"), "evaluate")
    assert msg == f"checkpoint '{tmp_path / 'nope.pt'}' does not exist"


# ----------------------------------------------------------------------------------------- resume


@pytest.fixture
def run_copy(run, tmp_path):
    assert run.code == 0
    path = tmp_path / "run"
    shutil.copytree(run.path, path)
    return path


def test_resume_with_another_architecture(capsys, run_copy):
    before = {name: (run_copy / name).read_bytes() for name in ("last.pt", "best.pt", "metrics.jsonl")}
    msg = one_error_line(cli(capsys, "train", "--resume", run_copy / "last.pt", "model.name=resnet20"), "train")
    assert msg.startswith(f"cannot resume checkpoint '{run_copy / 'last.pt'}' with 'model.name' changed "
                          "('digits_cnn' in the checkpoint, 'resnet20' now)")
    assert {name: (run_copy / name).read_bytes() for name in before} == before


def test_refused_resume_keeps_config(capsys, run_copy):
    before = (run_copy / "config.yaml").read_bytes()
    assert cli(capsys, "train", "--resume", run_copy / "last.pt", "model.name=resnet20").code == 2
    assert (run_copy / "config.yaml").read_bytes() == before


def test_resume_extends_a_run(capsys, run, run_copy):
    r = cli(capsys, "train", "--resume", run_copy, "train.epochs=2")
    assert r.code == 0, r.err
    lines = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [rec["epoch"] for rec in lines] == [1, 2]
    assert lines[0] == json.loads((run.path / "metrics.jsonl").read_text())  # the first epoch is kept as it was
    assert load_checkpoint(run_copy / "last.pt")["epoch"] == 2
    assert load_config(run_copy / "config.yaml").train.epochs == 2
    assert json.loads((run_copy / "summary.json").read_text())["epochs"] == 2


# ----------------------------------------------------------------------------------------- real processes


def leancnn_process(*argv, cwd) -> subprocess.CompletedProcess:
    if not LEANCNN.exists():
        pytest.skip(f"{LEANCNN} is not installed")
    return subprocess.run([str(LEANCNN), *map(str, argv)], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.parametrize("argv, start", [
    (["train", "optim.lrr=1"], "leancnn train: error: unknown config key 'optim.lrr'"),
    (["evaluate", "garbage.pt"], "leancnn evaluate: error: checkpoint 'garbage.pt' cannot be read ("),
], ids=["config", "checkpoint"])
@pytest.mark.slow
def test_process_exit_code_and_single_error_line(tmp_path, argv, start):
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage" * 64)
    p = leancnn_process(*argv, cwd=tmp_path)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.startswith(start) and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert sorted(q.name for q in tmp_path.iterdir()) == ["garbage.pt"]


def test_process_version(tmp_path):
    p = leancnn_process("--version", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout == f"leancnn {leancnn.__version__}\n" and p.stderr == ""


def test_process_help_exits_0(tmp_path):
    p = leancnn_process("--help", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("usage: leancnn") and p.stderr == ""
