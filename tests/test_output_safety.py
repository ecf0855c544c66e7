"""An output is never an input, and ``--force`` removes only what leancnn wrote (issue 19, build item 2).

Every command that writes is in :data:`COMMANDS`: ``-o`` equal to, inside or holding one of its inputs is refused
with exit code 2 in one line naming the relation, and the input is left byte for byte as it was; ``--force`` over
a folder that holds a file of the user's keeps that file. Then one regression test per data-loss case of the issue.
The inputs (a classifier run, a video run, phantom pairs and a registration run, latency runs, config files) are
built once for the module.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_cli import cli, one_error_line
from test_latency_report import condition, make_run

from leancnn.cli import main
from leancnn.errors import LeancnnError
from leancnn.outputs import MANIFEST, check_output, read_manifest, staged_dir

CLF_TINY = ["model.name=resnet20", "data.domains=[mnist]", "data.limit_train=256", "data.limit_eval=128",
            "data.batch_size=64", "train.epochs=1"]
PRUNE_FAST = ["search.population=4", "search.generations=1", "search.val_images=64", "search.bn_batches=1",
              "calib_batches=1"]
VIDEO_TINY = ["data.frames=8", "data.height=24", "data.width=24", "data.train=40", "data.val=20", "data.test=20",
              "data.batch_size=10", "train.epochs=1", "data.eval_batch_size=20"]
RL_TINY = ["env.id=MiniGrid-Empty-5x5-v0", "env.n_envs=2", "ppo.n_steps=16", "ppo.batch_size=16", "train.frames=32",
           "eval.episodes=1", "eval.final_episodes=1", "model.kwargs={depths: [4]}", "train.threads=1"]
REG_TINY = ["data.val_pairs=1", "model.channels=[4,8]", "data.augment_scale=0", "train.epochs=1"]
SEARCH_FAST = ["--trials", "1", "latency.samples=10", "latency.warmup=1", "latency.settle_seconds=0",
               "latency.loads=[0]", "latency.condition=idle", "val_images=64", "bn_batches=1", "calib_batches=1"]
LAT_TINY = {"grid": {"loads": [{"workers": 0}]},
            "protocol": {"samples": 10, "block": 5, "warmup": 1, "settle_seconds": 0.0}}


def files_of(path: Path) -> dict[str, str]:
    """Every file under ``path`` (or ``path`` itself) with its content digest: proof that nothing changed."""
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """The inputs of every command, each in a folder of its own (so that the folder holding one holds no other)."""
    nib = pytest.importorskip("nibabel")  # noqa: F841 - the registration inputs need it
    from leancnn.config import load_config
    from leancnn.data.registration import write_phantoms
    from leancnn.tasks import register, video
    from leancnn.tasks.register import RegisterConfig
    from leancnn.tasks.video import VideoConfig

    base = tmp_path_factory.mktemp("inputs")
    p = {"clf": base / "clf" / "run", "vrun": base / "video" / "run", "data": base / "regdata" / "pairs",
         "rrun": base / "regrun" / "run", "cfg": base / "cfg" / "train.yaml", "vcfg": base / "vcfg" / "video.yaml",
         "lcfg": base / "lcfg" / "latency.yaml", "scfg": base / "scfg" / "search.yaml",
         "rcfg": base / "rcfg" / "retrieve.yaml", "lrun": base / "lat" / "a",
         "lrun2": base / "lat2" / "b", "rlcfg": base / "rlcfg" / "rl.yaml", "rlrun": base / "rlrun" / "run"}
    assert main(["train", *CLF_TINY, "-o", str(p["clf"])]) == 0
    video.train_video(load_config(None, VIDEO_TINY, cls=VideoConfig), out=p["vrun"], quiet=True)
    from leancnn.tasks.rl import RLConfig, train_rl

    train_rl(load_config(None, RL_TINY, cls=RLConfig), out=p["rlrun"], quiet=True)
    write_phantoms(p["data"], n=6, deformation=1.0, affine=0.15)
    register.train_register(load_config(None, [f"data.root={p['data']}", *REG_TINY], cls=RegisterConfig),
                            out=p["rrun"], quiet=True)
    for key, text in (("cfg", {"model": {"name": "digits_cnn"}, "data": {"limit_train": 256, "limit_eval": 128,
                                                                        "batch_size": 64}, "train": {"epochs": 1}}),
                      ("vcfg", {"data": {"frames": 8, "height": 24, "width": 24, "train": 40, "val": 20, "test": 20,
                                         "batch_size": 10}, "train": {"epochs": 1}}),
                      ("lcfg", {"models": [{"checkpoint": str(p["clf"] / "best.pt")}], **LAT_TINY}),
                      ("rcfg", {"data": {"ids": 60, "views": 3, "p": 4, "k": 3, "train_styles": ["warm"],
                                         "test_style": "cool"}, "train": {"epochs": 1}}),
                      ("rlcfg", {"env": {"id": "MiniGrid-Empty-5x5-v0", "n_envs": 2},
                                 "ppo": {"n_steps": 16, "batch_size": 16}, "train": {"frames": 32},
                                 "model": {"kwargs": {"depths": [4]}}}),
                      ("scfg", {"search": {"trials": 1}, "data": {"train": 20, "val": 10, "test": 10},
                                "train": {"epochs": 1}, "latency": {"samples": 10, "warmup": 1, "settle_seconds": 0,
                                                                    "loads": [0], "condition": "idle"}})):
        p[key].parent.mkdir(parents=True)
        p[key].write_text(yaml.safe_dump(text))
    for key, seed in (("lrun", 0), ("lrun2", 1)):
        make_run(p[key], [condition("c01")], {"c01": {"A": 0.010, "B": 0.012}}, seed=seed)
    return p


def _argv(row: str, p: dict[str, Path], out: Path) -> list[str]:
    o = str(out)
    return {
        "train -c": ["train", "-c", p["cfg"], "-o", o, "--force"],
        "train model.init": ["train", *CLF_TINY, f"model.init={p['clf']}", "-o", o, "--force"],
        "train --resume": ["train", "--resume", p["clf"] / "last.pt", "train.epochs=2", "-o", o, "--force"],
        "evaluate --plot-variance": ["evaluate", p["clf"], "--domains", "uci", "--plot-variance", o, "--force"],
        "prune": ["prune", p["clf"], "-o", o, "--force", *PRUNE_FAST],
        "prune analyse": ["prune", "analyse", p["clf"], "--criteria", "l1", "l2", "-o", o, "--force"],
        "video train -c": ["video", "train", "-c", p["vcfg"], "-o", o, "--force"],
        "video train --resume": ["video", "train", "--resume", p["vrun"] / "last.pt", "train.epochs=2", "-o", o,
                                 "--force"],
        "video export": ["video", "export", p["vrun"], "-o", o, "--force"],
        "export": ["export", p["clf"], "-o", o, "--force"],
        "video preview": ["video", "preview", "-c", p["vcfg"], "-o", o, "--force"],
        "register train": ["register", "train", "--data", p["data"], *REG_TINY, "-o", o, "--force"],
        "register predict (data)": ["register", "predict", p["rrun"], "--data", p["data"], "-o", o, "--force"],
        "register predict (run)": ["register", "predict", p["rrun"], "--data", p["data"], "-o", o, "--force"],
        "register evaluate (run)": ["register", "evaluate", p["rrun"], "--data", p["data"], "-o", o, "--force"],
        "register evaluate --identity": ["register", "evaluate", "--identity", "--data", p["data"], "-o", o,
                                         "--force", "--no-png"],
        "latency run (model)": ["latency", "run", "-c", p["lcfg"], "-o", o, "--force"],
        "latency run (config)": ["latency", "run", "-c", p["lcfg"], "-o", o, "--force"],
        "latency report": ["latency", "report", p["lrun"], "-o", o, "--force"],
        "latency compare": ["latency", "compare", p["lrun"], p["lrun2"], "-o", o, "--force"],
        "lodo": ["lodo", "-c", p["cfg"], "-o", o, "--targets", "uci", "--seeds", "0"],
        "search prune": ["search", "prune", p["clf"], "-o", o, "--force", *SEARCH_FAST],
        "search movinet -c": ["search", "movinet", "-c", p["scfg"], "-o", o, "--force"],
        "retrieve train -c": ["retrieve", "train", "-c", p["rcfg"], "-o", o, "--force"],
        "rl train -c": ["rl", "train", "-c", p["rlcfg"], "-o", o, "--force"],
        "rl train --resume": ["rl", "train", "--resume", p["rlrun"] / "last.pt", "train.frames=64", "-o", o,
                              "--force"],
        "demo": ["demo", "-c", p["cfg"], "-o", o, "--force"],
    }[row]


# every writing command: (row, the input -o is compared with, the relations refused, the flag named, the command)
COMMANDS = [
    ("train -c", "cfg", ("is", "is inside", "contains"), "-o", "train"),
    ("train model.init", "clf", ("is", "is inside", "contains"), "-o", "train"),
    ("train --resume", "clf", ("is inside", "contains"), "-o", "train"),  # "is": continuing the run, allowed
    ("evaluate --plot-variance", "clf", ("is inside",), "--plot-variance", "evaluate"),  # an image name
    ("prune", "clf", ("is", "is inside", "contains"), "-o", "prune"),
    ("prune analyse", "clf", ("is", "is inside", "contains"), "-o", "prune"),
    ("video train -c", "vcfg", ("is", "is inside", "contains"), "-o", "video"),
    ("video train --resume", "vrun", ("is inside", "contains"), "-o", "video"),
    ("video export", "vrun", ("is", "is inside", "contains"), "-o", "video"),
    ("export", "clf", ("is", "is inside", "contains"), "-o", "export"),
    ("video preview", "vcfg", ("is inside",), "-o", "video"),  # an image name
    ("register train", "data", ("is", "is inside", "contains"), "-o", "register"),
    ("register predict (data)", "data", ("is", "is inside", "contains"), "-o", "register"),
    ("register predict (run)", "rrun", ("is", "is inside", "contains"), "-o", "register"),
    ("register evaluate (run)", "rrun", ("is", "is inside", "contains"), "-o", "register"),
    ("register evaluate --identity", "data", ("is", "is inside", "contains"), "-o", "register"),
    ("latency run (model)", "clf", ("is", "is inside", "contains"), "-o", "latency"),
    ("latency run (config)", "lcfg", ("is", "is inside", "contains"), "-o", "latency"),
    ("latency report", "lrun", ("is inside", "contains"), "-o", "latency"),  # "is": the run's own report
    ("latency compare", "lrun", ("is", "is inside", "contains"), "-o", "latency"),
    ("lodo", "cfg", ("is", "is inside", "contains"), "-o", "lodo"),
    ("search prune", "clf", ("is", "is inside", "contains"), "-o", "search"),
    ("search movinet -c", "scfg", ("is", "is inside", "contains"), "-o", "search"),
    ("retrieve train -c", "rcfg", ("is", "is inside", "contains"), "-o", "retrieve"),
    ("rl train -c", "rlcfg", ("is", "is inside", "contains"), "-o", "rl"),
    ("rl train --resume", "rlrun", ("is inside", "contains"), "-o", "rl"),  # "is": continuing the run, allowed
    ("demo", "cfg", ("is", "is inside", "contains"), "-o", "demo"),
]
CASES = [(row, key, rel, flag, cmd) for row, key, rels, flag, cmd in COMMANDS for rel in rels]


def _out_for(target: Path, rel: str, row: str) -> Path:
    if rel == "is":
        return target
    if rel == "is inside":
        name = "v.png" if row in ("evaluate --plot-variance", "video preview") else \
            "x.onnx" if row == "video export" else "x.pte" if row == "export" else "sub"
        return target / name
    return target.parent  # the folder that holds the input (and nothing else of the module's inputs)


@pytest.mark.parametrize("row, key, rel, flag, command", CASES, ids=[f"{c[0]}: {c[2]}" for c in CASES])
def test_an_output_is_never_an_input(inputs, capsys, row, key, rel, flag, command):
    target = inputs[key]
    before = {k: files_of(v) for k, v in inputs.items()}
    out = _out_for(target, rel, row)
    msg = one_error_line(cli(capsys, *_argv(row, inputs, out)), command)
    assert msg.startswith(f"{flag} '{out}' {rel} the ") and f"'{target}'" in msg, msg
    assert msg.endswith(f"an output may not be, lie inside or hold an input of the command: choose another {flag}")
    assert {k: files_of(v) for k, v in inputs.items()} == before  # every input byte for byte as it was
    if rel == "is inside":
        assert not out.exists()


def test_the_writing_commands_are_all_in_the_table():
    """A new command that writes must join :data:`COMMANDS` (every subcommand with -o/--out is listed)."""
    from leancnn.cli import build_parser

    writing = set()

    def walk(parser, prefix):
        for action in parser._actions:  # noqa: SLF001
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}".strip())
            if "--out" in getattr(action, "option_strings", ()) or "--plot-variance" in getattr(
                    action, "option_strings", ()):
                writing.add(prefix)

    walk(build_parser(), "")
    listed = {row.split(" -")[0].split(" (")[0] for row, *_ in COMMANDS} | {"data grid"}  # data grid: below
    assert writing <= listed, writing - listed


def test_relations_are_resolved_through_dots_and_symlinks(tmp_path):
    run = tmp_path / "run"
    (run / "x").mkdir(parents=True)
    (tmp_path / "link").symlink_to(run)
    for out in (run / "x" / ".." , tmp_path / "link", tmp_path / "link" / "x" / "y"):
        with pytest.raises(LeancnnError, match="the run directory"):
            check_output(out, {"run directory": run})
    assert check_output(tmp_path / "other", {"run directory": run}) == tmp_path / "other"
    assert check_output(run, {"run directory": run, "checkpoint": run / "last.pt"}, own=run) == run  # resuming


# ------------------------------------------------------------------------------------------------ --force keeps


def _foreign(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("mine")
    return folder / "notes.txt"


# --force over a folder holding the command's earlier output and files of the user's: a copy of an earlier run
# (the inputs' runs), or the command run twice (the staged folders), or a report file
FORCE_FOLDERS = [("train -c", "clf"), ("video train -c", "vrun"), ("register train", "rrun"),
                 ("latency run (model)", "lrun"), ("prune", "twice"), ("prune analyse", "twice"),
                 ("register predict (data)", "twice"), ("register evaluate --identity", "twice"),
                 ("latency report", "report"), ("latency compare", "report"), ("lodo", "once"),
                 ("search prune", "twice")]


STALE = {"train -c": "config.yaml", "video train -c": "config.yaml", "register train": "config.yaml",
         "latency run (model)": "run.json", "prune": "summary.json", "prune analyse": "clustering.json",
         "register predict (data)": "case000_ddf.json", "register evaluate --identity": "summary.json",
         "latency report": "report.md", "latency compare": "report.md", "search prune": "report.md"}  # an earlier output file, replaced


@pytest.mark.slow
@pytest.mark.parametrize("row, earlier", FORCE_FOLDERS, ids=[r for r, _ in FORCE_FOLDERS])
def test_force_keeps_a_file_it_did_not_write(inputs, tmp_path, capsys, row, earlier):
    out = tmp_path / "out"
    if earlier in inputs:
        shutil.copytree(inputs[earlier], out)
    mine = _foreign(out)
    (out / "sub").mkdir()
    (out / "sub" / "deep.txt").write_text("also mine")
    if earlier == "twice":
        r = cli(capsys, *_argv(row, inputs, out))
        assert r.code == 0, r.err
    if row in STALE:
        (out / STALE[row]).write_text("an earlier output")
    r = cli(capsys, *_argv(row, inputs, out))
    assert r.code == 0, r.err
    assert mine.read_text() == "mine" and (out / "sub" / "deep.txt").read_text() == "also mine"
    if row in STALE:  # the earlier output was replaced
        assert (out / STALE[row]).read_text() != "an earlier output"
    if earlier == "twice" and row != "prune analyse":
        assert "notes.txt" not in read_manifest(out) and STALE[row] in read_manifest(out)  # only its own files


def test_force_replaces_only_the_files_of_an_earlier_run(inputs, tmp_path, capsys):
    """register predict --force over an earlier predict of other pairs: its old files go (they are in the manifest),
    a file of the user's stays, and a same-named file is replaced, not kept stale."""
    out = tmp_path / "pred"
    assert main(["register", "predict", str(inputs["rrun"]), "--data", str(inputs["data"]), "-o", str(out)]) == 0
    first = set(read_manifest(out))
    (out / "stale_ddf.nii.gz").write_bytes(b"mine, not leancnn's")
    some = tmp_path / "some"
    for sub in ("moving_images", "fixed_images"):
        (some / sub).mkdir(parents=True)
        shutil.copy(inputs["data"] / sub / "case000.nii.gz", some / sub / "case000.nii.gz")
    assert main(["register", "predict", str(inputs["rrun"]), "--data", str(some), "-o", str(out), "--force"]) == 0
    now = {p.name for p in out.iterdir()}
    assert now == {MANIFEST, "stale_ddf.nii.gz", "case000_ddf.nii.gz", "case000_ddf.json", "case000_warped.nii.gz"}
    assert first > set(read_manifest(out))


@pytest.mark.parametrize("row, suffix", [("video export", ".onnx"), ("evaluate --plot-variance", ".png"),
                                         ("video preview", ".png"), ("data grid", ".png")])
def test_an_existing_file_is_replaced_only_with_force(inputs, tmp_path, capsys, row, suffix):
    out = tmp_path / f"existing{suffix}"
    out.write_bytes(b"another model's file")
    argv = ["data", "grid", "uci", "--per-domain", "1", "-o", str(out), "--force"] if row == "data grid" \
        else [str(a) for a in _argv(row, inputs, out)]
    msg = one_error_line(cli(capsys, *[a for a in argv if a != "--force"]), argv[0])
    flag = "--plot-variance" if row.startswith("evaluate") else "-o/--out" if row == "data grid" else "-o"
    assert msg == f"{flag} '{out}' already exists; add --force to replace it, or choose another {flag}"
    assert out.read_bytes() == b"another model's file"
    if row == "video export":  # the replacing write is the same check_output_file as the others; an export is slow
        return
    r = cli(capsys, *argv)
    assert r.code == 0, r.err
    assert out.read_bytes() != b"another model's file" and out.stat().st_size > 100


def test_data_grid_never_writes_into_the_data_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEANCNN_CACHE", str(tmp_path / "cache"))
    inside = tmp_path / "cache" / "digits" / "g.png"
    msg = one_error_line(cli(capsys, "data", "grid", "uci", "-o", inside), "data")
    assert msg.startswith(f"-o/--out '{inside}' is inside the data folder (digits cache) ")
    assert not inside.exists()


# ------------------------------------------------------------------------------------------------ still allowed


@pytest.mark.slow
def test_continuing_a_run_in_its_own_directory_still_works(inputs, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(inputs["clf"], run)
    r = cli(capsys, "train", "--resume", run / "last.pt", "train.epochs=2", "-o", run)
    assert r.code == 0, r.err
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    monkeypatch.chdir(tmp_path)
    r = cli(capsys, "train", "--resume", "run/last.pt", "train.epochs=3", "-o", "./run/../run")
    assert r.code == 0, r.err  # the same directory, spelled otherwise
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_latency_resume_and_the_runs_own_report_still_work(inputs, tmp_path, capsys):
    out = tmp_path / "lat"
    assert cli(capsys, "latency", "run", "-c", inputs["lcfg"], "-o", out, "--no-report").code == 0
    r = cli(capsys, "latency", "run", "--resume", "-o", out, "--no-report")
    assert r.code == 0, r.err
    assert cli(capsys, "latency", "report", out).code == 0  # into the run itself: its own report
    assert cli(capsys, "latency", "report", out, "-o", out).code == 0  # the same, spelled out, again
    assert (out / "report.md").is_file()


# ------------------------------------------------------------------------------------------------ the cases


def test_prune_run_into_its_source_with_force_deletes_nothing(inputs, capsys):
    run = inputs["clf"]
    before = files_of(run)
    msg = one_error_line(cli(capsys, "prune", run, "-o", run, "--force"), "prune")
    assert msg.startswith(f"-o '{run}' is the source run directory '{run}'")
    assert files_of(run) == before and {"best.pt", "last.pt", "summary.json"} <= set(before)


def test_register_predict_into_the_data_and_evaluate_into_the_run_delete_nothing(inputs, capsys):
    data, run = inputs["data"], inputs["rrun"]
    before_data, before_run = files_of(data), files_of(run)
    msg = one_error_line(cli(capsys, "register", "predict", run, "--data", data, "-o", data, "--force"), "register")
    assert msg.startswith(f"-o '{data}' is the data folder '{data}'")
    msg = one_error_line(cli(capsys, "register", "evaluate", run, "--data", data, "-o", run, "--force"), "register")
    assert msg.startswith(f"-o '{run}' is the model run directory '{run}'")
    assert files_of(data) == before_data and files_of(run) == before_run


@pytest.mark.parametrize("damage", ["nan", "truncated"])
def test_register_train_checks_the_data_before_touching_a_finished_run(inputs, tmp_path, capsys, damage):
    import nibabel as nib

    bad = tmp_path / "bad"
    shutil.copytree(inputs["data"], bad)
    victim = bad / "moving_images" / "case003.nii.gz"
    if damage == "nan":
        img = nib.load(victim)
        volume = np.asarray(img.dataobj, dtype=np.float32)
        volume[0, 0, 0] = np.nan
        nib.save(nib.Nifti1Image(volume, img.affine), victim)
    else:
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    run = tmp_path / "run"
    shutil.copytree(inputs["rrun"], run)
    before = files_of(run)
    msg = one_error_line(cli(capsys, "register", "train", "--data", bad, *REG_TINY, "-o", run, "--force"),
                         "register")
    assert str(victim) in msg and ("NaN" in msg if damage == "nan" else "cannot read" in msg), msg
    assert files_of(run) == before  # best.pt, last.pt, summary.json, config.yaml, fingerprint.json: as they were
    new = tmp_path / "new"
    assert cli(capsys, "register", "train", "--data", bad, *REG_TINY, "-o", new).code == 2
    assert not new.exists()  # no config.yaml / fingerprint.json written before the data check


def test_a_users_partial_folder_is_never_taken_for_leftovers(inputs, tmp_path, capsys):
    out = tmp_path / "X"
    theirs = tmp_path / "X.partial"
    theirs.mkdir()
    (theirs / "results.csv").write_text("a user's folder that happens to end in .partial")
    r = cli(capsys, "register", "evaluate", "--identity", "--data", inputs["data"], "-o", out, "--no-png")
    assert r.code == 0, r.err
    assert (theirs / "results.csv").read_text().startswith("a user's folder")
    assert (out / "summary.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X", "X.partial"]  # no staging folder left either


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_latency_run_into_an_existing_file_is_one_line(tmp_path, capsys, force):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    msg = one_error_line(cli(capsys, "latency", "run", "-o", existing, *force), "latency")
    assert msg == f"-o '{existing}' exists and is not a directory; give a folder"
    assert existing.read_text() == "keep me"


def test_a_failed_staging_leaves_the_folder_as_it_was(tmp_path):
    out = _foreign(tmp_path / "o").parent
    (out / "old.txt").write_text("written by an earlier leancnn")
    (out / MANIFEST).write_text(json.dumps(["old.txt"]))
    with pytest.raises(RuntimeError, match="midway"):
        with staged_dir(out, force=True) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("midway")
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "notes.txt", "old.txt"])
    assert [p.name for p in tmp_path.iterdir()] == ["o"]
    (out / "new.txt").mkdir()  # a folder where a new file must go: refused before anything is deleted
    with pytest.raises(LeancnnError, match="nothing was changed"):
        with staged_dir(out, force=True) as tmp:
            (tmp / "new.txt").write_text("x")
    assert (out / "old.txt").is_file() and [p.name for p in tmp_path.iterdir()] == ["o"]


def test_force_removes_the_subfolders_it_emptied_and_keeps_the_others(tmp_path):
    out = tmp_path / "ev"
    with staged_dir(out) as tmp:
        (tmp / "pairs").mkdir()
        (tmp / "pairs" / "a.png").write_bytes(b"1")
        (tmp / "deep" / "er").mkdir(parents=True)
        (tmp / "deep" / "er" / "b.png").write_bytes(b"2")
    assert sorted(read_manifest(out)) == ["deep/er/b.png", "pairs/a.png"]
    (out / "pairs" / "mine.txt").write_text("mine")
    with staged_dir(out, force=True) as tmp:
        (tmp / "summary.json").write_text("{}")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [MANIFEST, "pairs", "pairs/mine.txt",
                                                                      "summary.json"]


def test_a_report_into_another_folder_replaces_an_earlier_report_only_with_force(inputs, tmp_path, capsys):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "report.md").write_text("another run's report")
    for argv in (["report", inputs["lrun"]], ["compare", inputs["lrun"], inputs["lrun2"]]):
        msg = one_error_line(cli(capsys, "latency", *argv, "-o", out), "latency")
        assert msg == f"-o '{out}' already holds a latency report (report.md); add --force to replace it, or choose " \
                      "another -o"
        assert (out / "report.md").read_text() == "another run's report"
