"""`leancnn register`: training on the one engine (end to end on phantoms), exact resume, predict to NIfTI,
evaluate to CSV / summary / pictures, the initial mappings, and bad input."""

import csv
import json
import shutil
import warnings

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")

from leancnn.cli import main  # noqa: E402
from leancnn.config import load_config  # noqa: E402
from leancnn.data.registration import (  # noqa: E402
    PairedNifti,
    resize_to_grid,
    to_fixed_grid,
    write_phantoms,
)
from leancnn.errors import LeancnnError  # noqa: E402
from leancnn.nn.warp import affine_to_ddf, initial_map, resize_ddf, warp  # noqa: E402
from leancnn.outputs import MANIFEST, read_manifest  # noqa: E402
from leancnn.tasks import register as R  # noqa: E402
from leancnn.tasks.register import RegisterConfig

# a tiny network that fits 6 phantom pairs in a few seconds: the end-to-end check that the label-driven loss,
# the warp, the engine and the evaluation fit together
TINY = ["data.val_pairs=2", "model.channels=[4,8,16]", "optim.lr=1e-3", "data.augment_scale=0", "train.epochs=40"]


@pytest.fixture(scope="module")
def cache(fresh_cache):
    return fresh_cache


@pytest.fixture(scope="module")
def phantoms(cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    write_phantoms(root, n=8, deformation=1.0, affine=0.15)
    return root


@pytest.fixture(scope="module")
def trained(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = load_config(None, [f"data.root={phantoms}", *TINY], cls=RegisterConfig)
    summary = R.train_register(cfg, out=out, quiet=True)
    return out, cfg, summary


def _medians(model, cfg, ids):
    pairs = R.open_pairs(cfg, ids)
    s = R.summarise_rows(R.register_and_score(model, pairs, cfg.data.scale, torch.device("cpu"), "register", False,
                                                cfg.data.initial))
    return s["gland_dice_after"]["median"], s["landmark_tre_after_mm"]["median"]


@pytest.mark.slow
def test_training_on_phantoms_raises_dice_and_lowers_tre(trained):
    out, cfg, summary = trained
    for name in ("config.yaml", "fingerprint.json", "metrics.jsonl", "last.pt", "best.pt", "summary.json",
                 "curves.png"):
        assert (out / name).is_file(), name
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 40 and {"train_loss", "train_dice", "train_label", "train_reg", "val_dice", "val_tre",
                                 "train_pairs_per_s"} <= set(lines[0])
    best = torch.load(out / "best.pt", weights_only=False)
    assert best["best_metric"] == "val_dice" and best["best"] == max(r["val_dice"] for r in lines)
    assert best["meta"]["grid"] == [16, 20, 14]  # data.scale 0.5 of the 32x40x28 phantom grid
    model, _ = R.load_register_model(out / "last.pt", torch.device("cpu"))
    ids = summary["splits"]["train"]
    dice0, tre0 = _medians(None, cfg, ids)
    dice1, tre1 = _medians(model, cfg, ids)
    assert dice1 > dice0 + 0.08, (dice0, dice1)  # measured: 0.62 -> 0.75
    assert tre1 < tre0 - 1.0, (tre0, tre1)  # measured: 7.0 -> 4.3 mm


@pytest.mark.slow
def test_resume_continues_exactly(phantoms, tmp_path):
    base = [f"data.root={phantoms}", "data.val_pairs=2", "model.channels=[4,8]", "data.augment_scale=0.1"]
    straight = R.train_register(load_config(None, [*base, "train.epochs=2"], cls=RegisterConfig),
                                out=tmp_path / "a", quiet=True)
    R.train_register(load_config(None, [*base, "train.epochs=1"], cls=RegisterConfig), out=tmp_path / "b",
                     quiet=True)
    resumed = R.train_register(load_config(None, [*base, "train.epochs=2"], cls=RegisterConfig),
                               out=tmp_path / "b", resume=tmp_path / "b" / "last.pt", quiet=True)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in straight["history"]] == [h["train_loss"] for h in resumed["history"]]


@pytest.mark.slow
def test_predict_writes_nifti_on_the_fixed_grid_from_images_only(trained, phantoms, tmp_path):
    out, cfg, _ = trained
    images = tmp_path / "images"
    for sub in ("moving_images", "fixed_images"):
        shutil.copytree(phantoms / sub, images / sub)
    assert main(["register", "predict", str(out), "--data", str(images), "-o", str(tmp_path / "pred")]) == 0
    files = sorted(p.name for p in (tmp_path / "pred").iterdir() if p.name != MANIFEST)
    assert len(files) == 8 * 3 and not any("labels" in f for f in files)  # images only: no labels written
    assert sorted(read_manifest(tmp_path / "pred")) == files  # what --force may replace later
    fixed = nib.load(phantoms / "fixed_images" / "case000.nii.gz")
    ddf = nib.load(tmp_path / "pred" / "case000_ddf.nii.gz")
    warped = nib.load(tmp_path / "pred" / "case000_warped.nii.gz")
    assert ddf.shape == (*fixed.shape, 1, 3) and warped.shape == fixed.shape
    assert ddf.header.get_intent()[0] == "vector"
    np.testing.assert_allclose(ddf.affine, fixed.affine)
    np.testing.assert_allclose(warped.affine, fixed.affine)
    sidecar = json.loads((tmp_path / "pred" / "case000_ddf.json").read_text())
    assert sidecar["units"] == "fixed-grid voxels" and np.asarray(sidecar["fixed_to_moving_voxel"]).shape == (4, 4)
    # the file holds what the API predicts, and the warped image is the moving image sampled through it
    model, _ = R.load_register_model(out, torch.device("cpu"))
    pair = R.open_pairs(cfg, None, labels=None, root=images)["case000"]
    field = R.predict_ddf(model, pair, cfg.data.scale, torch.device("cpu"), cfg.data.initial)
    np.testing.assert_allclose(np.asarray(ddf.dataobj)[:, :, :, 0, :], field[0].permute(1, 2, 3, 0).numpy(),
                               atol=1e-5)
    expect = R.warp_moving(pair.moving_image, field, np.asarray(sidecar["fixed_to_moving_voxel"]))
    np.testing.assert_allclose(np.asarray(warped.dataobj), expect, atol=1e-5)
    # with labels, the warped labels come too
    assert main(["register", "predict", str(out), "--data", str(phantoms), "-o", str(tmp_path / "pred2")]) == 0
    lab = nib.load(tmp_path / "pred2" / "case000_warped_labels.nii.gz")
    assert lab.shape[:3] == fixed.shape and lab.shape[3] == nib.load(phantoms / "fixed_labels" /
                                                                    "case000.nii.gz").shape[3]


@pytest.mark.slow
def test_predict_refuses_and_leaves_nothing(trained, phantoms, tmp_path, capsys):
    out, _, _ = trained
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    assert main(["register", "predict", str(out), "--data", str(phantoms), "-o", str(target)]) == 2
    assert "not empty" in capsys.readouterr().err and sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    broken = tmp_path / "broken"
    shutil.copytree(phantoms, broken)
    (broken / "moving_images" / "case005.nii.gz").write_bytes(b"not a nifti")
    assert main(["register", "predict", str(out), "--data", str(broken), "-o", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "case005" in err and err.count("\n") == 1
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".p.*"))  # no staging folder left


@pytest.mark.slow
def test_a_failure_midway_removes_the_partial_folder(trained, phantoms, tmp_path, monkeypatch):
    out, _, _ = trained
    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise LeancnnError("disk full (simulated)")
        return original(*a, **k)

    original = R.predict_ddf
    monkeypatch.setattr(R, "predict_ddf", failing)
    with pytest.raises(LeancnnError, match="simulated"):
        R.predict_folder(out, phantoms, tmp_path / "p", progress=False)
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".p.*"))  # no staging folder left


@pytest.mark.slow
def test_evaluate_writes_rows_summary_and_pictures(trained, phantoms, tmp_path):
    out, cfg, summary = trained
    assert main(["register", "evaluate", str(out), "--data", str(phantoms), "-o", str(tmp_path / "ev"),
                 "--split", "val"]) == 0
    ev = tmp_path / "ev"
    rows = list(csv.DictReader(open(ev / "per_label.csv")))
    val = summary["splits"]["val"]
    pairs = PairedNifti(phantoms, val)
    assert len(rows) == sum(pairs.num_labels(i) for i in range(len(pairs)))
    assert {r["pair"] for r in rows} == set(val) and sorted(p.name for p in (ev / "pairs").iterdir()) == \
        [f"{v}.png" for v in sorted(val)]
    s = json.loads((ev / "summary.json").read_text())
    gland_after = [float(r["dice_after"]) for r in rows if r["structure"] == "gland"]
    assert s["gland_dice_after"]["median"] == pytest.approx(float(np.median(gland_after)))
    marks = [float(r["tre_before_mm"]) for r in rows if r["structure"] == "landmark"]
    assert s["landmark_tre_before_mm"]["q1"] == pytest.approx(float(np.percentile(marks, 25)))
    assert "before: median" in (ev / "summary.md").read_text()


def test_identity_evaluation_and_the_two_initial_mappings(phantoms, tmp_path):
    res = {}
    for initial in ("centre", "corners"):
        res[initial] = R.evaluate_folder(None, phantoms, tmp_path / initial, pictures=False, quiet=True,
                                         initial=initial, progress=False)
        s = res[initial]
        assert s["gland_dice_before"] == s["gland_dice_after"]  # no registration: before is after
    # the phantom's moving grid (36x36x32) is larger than the fixed (32x40x28) in x and z: the two mappings differ
    assert res["centre"]["gland_dice_before"]["median"] != res["corners"]["gland_dice_before"]["median"]


def test_initial_maps():
    # corners: the resize of label-reg
    m = initial_map((9, 5, 3), (5, 3, 2), mode="corners")
    np.testing.assert_allclose(np.diag(m)[:3], [2.0, 2.0, 2.0])
    x = torch.rand(1, 9, 5, 3)
    np.testing.assert_allclose(to_fixed_grid(x, (5, 3, 2), m), resize_to_grid(x, (5, 3, 2)), atol=1e-6)
    # centre: centres coincide, mm kept (fixed 2 mm voxels on a 1 mm moving grid)
    c = initial_map((11, 11, 11), (6, 6, 6), (1, 1, 1), (2, 2, 2), mode="centre")
    np.testing.assert_allclose(c @ [2.5, 2.5, 2.5, 1], [5, 5, 5, 1])
    np.testing.assert_allclose(c @ [0, 0, 0, 1], [0, 0, 0, 1])
    with pytest.raises(LeancnnError, match="spacings"):
        initial_map((3, 3, 3), (3, 3, 3), mode="centre")


def test_resize_ddf_keeps_an_affine_mapping_exact():
    theta = torch.tensor([[[1.05, 0.02, 0.0, 0.7], [0.0, 0.97, 0.03, -0.4], [0.01, 0.0, 1.02, 0.3]]])
    coarse = affine_to_ddf(theta, (9, 11, 7))
    fine = resize_ddf(coarse, (17, 21, 13))
    # the same physical map: a point at fine index q is coarse index q * (n_c - 1) / (n_f - 1)
    scale = torch.tensor([8 / 16, 10 / 20, 6 / 12])
    theta_fine = theta.clone()
    theta_fine[0, :, :3] = theta[0, :, :3] * scale[None, :] / scale[:, None]
    theta_fine[0, :, 3] = theta[0, :, 3] / scale
    np.testing.assert_allclose(fine, affine_to_ddf(theta_fine, (17, 21, 13)), atol=1e-4)


def test_warping_a_label_by_the_fine_ddf_matches_the_coarse_warp_at_shared_voxels():
    torch.manual_seed(0)
    label = (torch.rand(1, 1, 9, 11, 7) > 0.5).float()
    ddf = torch.randn(1, 3, 9, 11, 7) * 0.3
    coarse = warp(label, ddf)
    fine = warp(label, resize_ddf(ddf, (17, 21, 13)))  # label resampled at the fine grid's points
    np.testing.assert_allclose(fine[..., ::2, ::2, ::2], coarse, atol=1e-5)


def test_empty_landmark_is_skipped_with_a_warning_and_never_nan(phantoms, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(phantoms, root)
    path = root / "fixed_labels" / "case001.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    data[..., 1] = 0  # landmark 1 of case001 has no voxel
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    with pytest.warns(UserWarning, match="case001 label 1"):
        s = R.evaluate_folder(None, root, tmp_path / "ev", pictures=False, quiet=True, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "ev" / "per_label.csv")))
    assert not any(r["pair"] == "case001" and r["label"] == "1" for r in rows)
    assert s["skipped_empty_labels"] == ["case001 label 1"]
    assert all(v is None or np.isfinite(v) for key in s if key.endswith(("before", "after", "_mm"))
               for v in s[key].values() if not isinstance(v, int))


def test_cli_errors_are_one_line(tmp_path, capsys, phantoms):
    assert main(["register", "train", "-o", str(tmp_path / "r")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["register", "train", "--data", str(tmp_path / "nope"), "-o", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["register", "train", "--data", str(phantoms), "data.fold=4", "-o", str(tmp_path / "r")]) == 2
    assert "data.fold" in capsys.readouterr().err
    assert main(["register", "train", "--data", str(phantoms), "data.val_pairs=8", "-o", str(tmp_path / "r")]) == 2
    assert "leaves no training pair" in capsys.readouterr().err
    assert main(["register", "evaluate", "--data", str(phantoms), "-o", str(tmp_path / "e")]) == 2
    assert "--identity" in capsys.readouterr().err
    images = tmp_path / "images"
    for sub in ("moving_images", "fixed_images"):
        shutil.copytree(phantoms / sub, images / sub)
    assert main(["register", "evaluate", "--identity", "--data", str(images), "-o", str(tmp_path / "e")]) == 2
    assert "no moving_labels/ and fixed_labels/" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "e").exists()


def test_affine_head_gets_its_own_learning_rate():
    cfg = load_config(None, ["model.kind=composite"], cls=RegisterConfig)
    model = R.build_model(cfg, (12, 12, 12))
    from leancnn.train.optim import build_optimizer

    opt = build_optimizer(model, cfg.optim, R.affine_lr_scales(model, cfg.optim.affine_lr_scale))
    head = {id(p) for p in model.global_net.head.parameters()}
    for group in opt.param_groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) <= 1
        expected = cfg.optim.lr * (cfg.optim.affine_lr_scale if in_head == {True} else 1.0)
        assert group["lr"] == pytest.approx(expected)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    warnings.simplefilter("ignore")


# ------------------------------------------------------------------------------------------------ recorded splits


def _subset(src, dst, ids):
    for sub in ("moving_images", "fixed_images", "moving_labels", "fixed_labels"):
        (dst / sub).mkdir(parents=True)
        for i in ids:
            shutil.copy(src / sub / f"{i}.nii.gz", dst / sub / f"{i}.nii.gz")
    return dst


def _set_labels(path, fill):
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.float32)
    nib.save(nib.Nifti1Image(fill(data), img.affine, img.header), path)


@pytest.mark.slow
def test_evaluate_split_scores_the_recorded_pairs_on_a_subset_folder(trained, phantoms, tmp_path, capsys):
    out, _, summary = trained
    val, train = summary["splits"]["val"], summary["splits"]["train"]
    assert torch.load(out / "best.pt", weights_only=False)["meta"]["splits"] == summary["splits"]
    # a subset folder: the run's 2 validation pairs and 2 of its training pairs. Recomputing the split on it (the
    # old behaviour) scored training pairs as validation pairs
    sub = _subset(phantoms, tmp_path / "sub", sorted([*val, *train[:2]]))
    assert main(["register", "evaluate", str(out), "--data", str(phantoms), "--split", "val", "--no-png",
                 "-o", str(tmp_path / "full")]) == 0
    assert main(["register", "evaluate", str(out), "--data", str(sub), "--split", "val", "--no-png",
                 "-o", str(tmp_path / "part")]) == 0
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("full", "part"))
    assert a["split_ids"] == b["split_ids"] == val and a["split_source"] == "recorded by the run"
    assert a["gland_dice_after"] == b["gland_dice_after"] and a["landmark_tre_after_mm"] == b["landmark_tre_after_mm"]
    assert {r["pair"] for r in csv.DictReader(open(tmp_path / "part" / "per_label.csv"))} == set(val)
    # a folder without one of the validation pairs is refused, naming it, and nothing is written
    lacking = _subset(phantoms, tmp_path / "lacking", sorted([val[0], *train]))
    capsys.readouterr()
    assert main(["register", "evaluate", str(out), "--data", str(lacking), "--split", "val",
                 "-o", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"lacks 1 of the run's 2 val pairs: {val[1]};" in err
    assert "data.val_pairs" not in err and not (tmp_path / "e").exists()
    # the run has no test fold
    assert main(["register", "evaluate", str(out), "--data", str(phantoms), "--split", "test",
                 "-o", str(tmp_path / "e")]) == 2
    assert "the run has no test pairs (data.fold=-1" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_split_refuses_other_files_under_the_run_ids(trained, phantoms, tmp_path, capsys):
    out, _, summary = trained
    other = tmp_path / "other"
    shutil.copytree(phantoms, other)
    val = summary["splits"]["val"]
    _set_labels(other / "fixed_labels" / f"{val[1]}.nii.gz", lambda d: np.roll(d, 3, axis=0))
    assert main(["register", "evaluate", str(out), "--data", str(other), "--split", "val",
                 "-o", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differ from those it was trained with" in err and "--split all" in err
    assert not (tmp_path / "e").exists()
    # the same folder, every pair scored, is fine
    assert main(["register", "evaluate", str(out), "--data", str(other), "--no-png", "-o", str(tmp_path / "e")]) == 0


@pytest.mark.slow
def test_a_checkpoint_without_recorded_splits_recomputes_only_on_its_own_folder(trained, phantoms, tmp_path,
                                                                                 capsys):
    out, cfg, summary = trained
    state = torch.load(out / "best.pt", weights_only=False)
    del state["meta"]["splits"], state["meta"]["split_digests"]  # as written before splits were recorded
    old = tmp_path / "old.pt"
    torch.save(state, old)
    s = R.evaluate_folder(old, phantoms, tmp_path / "e1", split="val", pictures=False, quiet=True, progress=False)
    assert s["split_ids"] == summary["splits"]["val"] and s["split_source"].startswith("recomputed on the run's")
    sub = _subset(phantoms, tmp_path / "sub", summary["splits"]["val"])
    assert main(["register", "evaluate", str(old), "--data", str(sub), "--split", "val", "-o",
                 str(tmp_path / "e2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "records no pair split" in err and f"data.root='{cfg.data.root}'" in err
    assert not (tmp_path / "e2").exists()


@pytest.mark.parametrize("which, expect", [
    ("all", "all 6 training pairs have only empty labels"),
    ("case004", "1 of the 6 training pairs have only empty labels (every structure lacks a voxel >= 0.5 in its "
                "moving or its fixed label), so training can neither learn from nor score them: case004 "
                "(moving_labels/case004.nii.gz, fixed_labels/case004.nii.gz);"),
    ("val", "1 of the 2 validation pairs have only empty labels"),
])
def test_training_refuses_pairs_whose_labels_are_all_empty(phantoms, tmp_path, capsys, which, expect):
    data = tmp_path / "data"
    shutil.copytree(phantoms, data)
    cfg = load_config(None, [f"data.root={data}", "data.val_pairs=2"], cls=RegisterConfig)
    ids = {"all": [f"case{i:03d}" for i in range(8)], "case004": ["case004"], "val": R.split_ids(cfg)["val"][:1]}
    for i in ids[which]:  # the gland and every landmark: empty in the fixed label (case004: in both)
        _set_labels(data / "fixed_labels" / f"{i}.nii.gz", np.zeros_like)
        if which == "case004":
            _set_labels(data / "moving_labels" / f"{i}.nii.gz", np.zeros_like)
    run = tmp_path / "run"
    assert main(["register", "train", "--data", str(data), "data.val_pairs=2", "train.epochs=1", "-o", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect in err and "fix these label files or remove the pairs" in err
    assert not run.exists()  # refused before anything is written


def test_training_takes_a_pair_with_some_empty_labels(phantoms, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantoms, data)

    def drop_landmark(d):
        d[..., 1] = 0
        return d

    _set_labels(data / "fixed_labels" / "case002.nii.gz", drop_landmark)
    cfg = load_config(None, [f"data.root={data}", "data.val_pairs=2", "model.channels=[4,8]", "train.epochs=1"],
                      cls=RegisterConfig)
    summary = R.train_register(cfg, out=tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "best.pt").is_file() and len(summary["history"]) == 1


# ------------------------------------------------------------------------------------------- issue 21: metrics
def test_evaluate_reports_the_fields_metrics_and_the_inference_options(trained, phantoms, tmp_path):
    """per_label.csv has the gland's HD95, per_pair.csv the RMS TRE and the field's regularity; the summary the
    robust scores; --tta flips and --refine N are recorded and change the DDF; a bad --refine is one line."""
    out, cfg, summary = trained
    ev = tmp_path / "ev"
    assert main(["register", "evaluate", str(out), "--data", str(phantoms), "-o", str(ev), "--split", "val",
                 "--no-png"]) == 0
    rows = list(csv.DictReader(open(ev / "per_label.csv")))
    pairs = list(csv.DictReader(open(ev / "per_pair.csv")))
    assert {r["pair"] for r in pairs} == set(summary["splits"]["val"])
    for r in rows:
        assert (r["hd95_after_mm"] != "") == (r["structure"] == "gland")
    for p in pairs:
        marks = [float(r["tre_after_mm"]) for r in rows if r["pair"] == p["pair"] and r["structure"] == "landmark"
                 and r["tre_after_mm"] != ""]
        assert float(p["rms_tre_after_mm"]) == pytest.approx(float(np.sqrt(np.mean(np.square(marks)))), rel=1e-5)
        assert 0.0 <= float(p["folding"]) < 0.05 and float(p["std_log_jac"]) >= 0
    s = json.loads((ev / "summary.json").read_text())
    glands = sorted(float(r["dice_after"]) for r in rows if r["structure"] == "gland")
    kept = glands[len(glands) - max(1, len(glands) - int(0.32 * len(glands) + 1e-9)):]
    assert s["robust_gland_dice_after"]["median"] == pytest.approx(float(np.median(kept)))
    assert s["infer"]["tta"] == "none" and s["folding"]["n"] == len(pairs)
    md = (ev / "summary.md").read_text()
    assert "gland HD95" in md and "robust gland Dice" in md and "folding" in md
    flips = tmp_path / "flips"
    assert main(["register", "evaluate", str(out), "--data", str(phantoms), "-o", str(flips), "--split", "val",
                 "--no-png", "--tta", "flips", "--refine", "3"]) == 0
    s2 = json.loads((flips / "summary.json").read_text())
    assert s2["infer"]["tta"] == "flips" and s2["infer"]["refine_steps"] == 3 and "test-time flips" in s2["method"]
    assert s2["gland_dice_after"]["median"] != s["gland_dice_after"]["median"]
    with pytest.raises(LeancnnError, match="refine_steps"):
        R.infer_config(cfg, {"refine_steps": -1})


def test_flips_map_the_mirrored_field_back():
    """The DDF of a mirrored pair, mirrored back with its component negated, is the DDF of the pair: for a
    network that is itself mirror-symmetric in that sense (an affine field that commutes with the flip), test-time
    flips change nothing; a flip applied twice is the identity."""
    torch.manual_seed(0)
    ddf = torch.randn(1, 3, 5, 6, 7)
    for axes in R.FLIP_AXES:
        torch.testing.assert_close(R._flip_ddf(R._flip_ddf(ddf, axes), axes), ddf)
    # a pure scaling about the centre is its own mirror image: the flipped field maps back to itself
    c = (torch.tensor([5, 6, 7]) - 1) / 2
    theta = torch.zeros(3, 4)
    theta[:, :3] = torch.diag(torch.tensor([1.1, 0.9, 1.05]))
    theta[:, 3] = c - theta[:, :3] @ c
    scaling = affine_to_ddf(theta, (5, 6, 7))
    for axes in R.FLIP_AXES:
        torch.testing.assert_close(R._flip_ddf(scaling, axes), scaling, rtol=1e-5, atol=1e-5)
    # a translation along x is not: mirrored along x it maps back to the opposite translation
    shift = torch.zeros(1, 3, 5, 6, 7)
    shift[:, 0] = 1.5
    assert torch.equal(R._flip_ddf(shift, (0,))[:, 0], -shift[:, 0]) and torch.equal(R._flip_ddf(shift, (1,)), shift)


def test_validation_logs_the_new_metrics_and_warns_when_dice_still_rises(trained):
    out, _, _ = trained
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"val_hd95", "val_rms_tre", "val_folding", "val_std_log_jac"} <= set(lines[-1])
    assert R.still_rising([0.5 + 0.01 * i for i in range(12)]) is not None
    assert R.still_rising([0.7, 0.71, 0.69, 0.7, 0.71, 0.7, 0.69, 0.7, 0.71, 0.7]) is None
    assert R.still_rising([0.5, 0.6, 0.7]) is None  # too few epochs to say
    assert R.still_rising([0.8 - 0.01 * i for i in range(12)]) is None


@pytest.mark.parametrize("extra", [[], ["loss.full_grid=true", "loss.boundary_weight=1"],
                                   ["model.kind=composite", "model.compose=warp"]])
def test_training_with_every_label_per_step(phantoms, tmp_path, extra):
    cfg = load_config(None, [f"data.root={phantoms}", *TINY, "train.epochs=2", "data.labels=all",
                             "loss.gland_weight=2", *extra], cls=RegisterConfig)
    summary = R.train_register(cfg, out=tmp_path / "all", quiet=True)
    lines = [json.loads(s) for s in (tmp_path / "all" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(0 <= r["train_dice"] <= 1 for r in lines)
    assert summary["epochs"] == 2


def test_the_shipped_mrus_config_is_the_default():
    """`leancnn register train` without -c trains the shipped recipe: configs/register_mrus.yaml sets every key to
    the schema's default (only its name differs)."""
    from pathlib import Path

    from leancnn.config import flatten, to_dict

    path = Path(__file__).resolve().parents[1] / "configs" / "register_mrus.yaml"
    shipped = flatten(to_dict(load_config(path, [], cls=RegisterConfig)))
    default = flatten(to_dict(RegisterConfig()))
    differ = {k: (shipped[k], default[k]) for k in default if shipped[k] != default[k] and k != "name"}
    assert differ == {}
