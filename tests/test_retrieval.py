"""Instance retrieval building blocks (issue 23, part 1): the re-ID ranking protocol (CMC, mAP) against a ranking
worked out by hand, the batch-hard triplet loss against hand-computed values, and the P x K sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from leancnn.data.samplers import PKSampler
from leancnn.errors import LeancnnError
from leancnn.losses.retrieval import TripletLoss, evaluate_ranking, pairwise_distance

# 3 queries x 5 gallery samples (distances by hand); pids and cameras
DIST = np.array([[0.1, 0.2, 0.3, 0.4, 0.5],   # q0: pid 1, cam 0
                 [0.9, 0.1, 0.5, 0.6, 0.7],   # q1: pid 2, cam 0
                 [0.3, 0.2, 0.1, 0.4, 0.5]])  # q2: pid 4 (not in the gallery)
Q_PIDS, Q_CAMS = [1, 2, 4], [0, 0, 0]
G_PIDS, G_CAMS = [1, 2, 1, 3, 1], [0, 1, 1, 1, 2]


def test_ranking_by_hand():
    r = evaluate_ranking(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5)
    # q0: g0 is junk (pid 1 seen by camera 0 again) -> ranking g1 (pid 2), g2 (match), g3, g4 (match):
    #     first match at rank 2; AP = mean(1/2, 2/4) = 0.5
    # q1: g1 (pid 2, camera 1) first: rank 1; AP = 1
    # q2: no match -> skipped
    assert r["queries"] == 2 and r["skipped"] == 1
    assert r["cmc"] == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert r["rank1"] == 0.5 and r["rank5"] == 1.0 and r["rank10"] == 1.0  # past the gallery: the last value
    assert r["mAP"] == pytest.approx(0.75)
    # without cameras nothing is junk: q0 finds g0 first; AP = mean(1/1, 2/3, 3/5)
    r = evaluate_ranking(DIST, Q_PIDS, G_PIDS, max_rank=3)
    assert r["cmc"] == [1.0, 1.0, 1.0] and r["mAP"] == pytest.approx((np.mean([1, 2 / 3, 3 / 5]) + 1) / 2)


def test_ranking_ties_keep_the_gallery_order_and_bad_input_is_one_line():
    tie = np.array([[0.5, 0.5, 0.5]])
    assert evaluate_ranking(tie, [7], [3, 7, 7], [0], [1, 1, 1], max_rank=3)["cmc"] == [0.0, 1.0, 1.0]
    with pytest.raises(LeancnnError, match="no query has a match"):
        evaluate_ranking(DIST[2:], [4], G_PIDS, [0], G_CAMS)
    with pytest.raises(LeancnnError, match="NaN or inf"):
        evaluate_ranking(np.full((1, 2), np.nan), [1], [1, 2])
    with pytest.raises(LeancnnError, match="g_pids must be a 1-D array of 5"):
        evaluate_ranking(DIST, Q_PIDS, [1, 2])


def test_distances():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(pairwise_distance(a, b), torch.tensor([[5.0, math.sqrt(13)], [1.0, math.sqrt(5)]]))
    assert torch.allclose(pairwise_distance(a, a, "cosine"), torch.tensor([[0.0, 0.4], [0.4, 0.0]]), atol=1e-6)
    with pytest.raises(LeancnnError, match="metric"):
        pairwise_distance(a, b, "manhattan")


def test_batch_hard_triplet_by_hand():
    x = torch.tensor([[0.0], [1.0], [3.0], [5.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])
    # distances: ab 1, ac 3, ad 5, bc 2, bd 4, cd 2; per anchor (hardest positive, hardest negative):
    # a (1, 3), b (1, 2), c (2, 2), d (2, 4)
    assert TripletLoss(0.3)(x, y).item() == pytest.approx((0 + 0 + 0.3 + 0) / 4)
    assert TripletLoss(1.0)(x, y).item() == pytest.approx((0 + 0 + 1.0 + 0) / 4)
    soft = np.mean([math.log1p(math.exp(v)) for v in (1 - 3, 1 - 2, 2 - 2, 2 - 4)])
    loss = TripletLoss(None)(x, y)
    assert loss.item() == pytest.approx(soft)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # an anchor alone with its identity has no positive: left out (here: e)
    x2 = torch.tensor([[0.0], [1.0], [3.0], [5.0], [10.0]])
    assert TripletLoss(0.3)(x2, torch.tensor([0, 0, 1, 1, 2])).item() == pytest.approx(0.075)
    with pytest.raises(LeancnnError, match="P x K"):
        TripletLoss()(x2, torch.tensor([0, 1, 2, 3, 4]))


def test_pk_sampler_batches():
    labels = [0] * 5 + [1] * 3 + [2] * 8 + [3] * 2
    s = PKSampler(labels, p=2, k=4, seed=1)
    batches = s.global_batches()
    assert batches and all(len(b) == 8 for b in batches)
    for b in batches:  # [id a x 4 | id b x 4], two distinct identities
        ids = [labels[i] for i in b]
        assert len(set(ids[:4])) == 1 and len(set(ids[4:])) == 1 and ids[0] != ids[4]
    assert len(list(iter(s))) == len(s) == 8 * len(batches)
    assert s.global_batches() == batches  # deterministic per epoch
    s.set_epoch(1)
    assert s.global_batches() != batches
    # two ranks share the epoch's batches without overlap
    r0, r1 = (PKSampler(labels, 2, 4, seed=1, rank=r, world_size=2).local_batches() for r in (0, 1))
    assert r0 + r1 and not {tuple(b) for b in r0} & {tuple(b) for b in r1}
    with pytest.raises(ValueError, match="2 distinct identities"):
        PKSampler([0, 0, 0], p=2, k=2)


def test_digit_identities_views_and_styles_really_differ():
    from leancnn.data.retrieval import build_identities, identity_split

    split = identity_split(50, seed=0)
    assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 50
    ids = split["test"][:6]
    sets = {s: build_identities(ids, s, views=3, seed=1) for s in ("ink", "photo", "colour")}
    ink = sets["ink"]
    assert ink["images"].shape == (18, 32, 32, 3) and ink["images"].dtype == np.uint8
    assert ink["pids"].tolist() == np.repeat(ids, 3).tolist() and ink["camids"].tolist() == [0, 1, 2] * 6
    again = build_identities(ids, "ink", views=3, seed=1)
    assert np.array_equal(again["images"], ink["images"])  # deterministic
    # every view of every identity is another image (a camera's pose: -12, 0, +12 degrees and jitter); the pixel
    # distance between two views of one identity is of the order of that between two identities, so matching
    # needs a learned embedding, not pixels
    x = ink["images"].reshape(6, 3, -1).astype(np.float32)
    views = [np.abs(x[i, a] - x[i, b]).mean() for i in range(6) for a, b in ((0, 1), (1, 2), (0, 2))]
    others = [np.abs(x[i, 1] - x[(i + 1) % 6, 1]).mean() for i in range(6)]
    assert min(views) > 5 and 0.5 < np.mean(views) / np.mean(others) < 2
    # the styles are different images of the same strokes: grey vs colourful, dark vs bright backgrounds
    def saturation(im):
        im = im.astype(np.float32)
        return float((im.max(-1) - im.min(-1)).mean())

    assert saturation(ink["images"]) == 0.0 and saturation(sets["photo"]["images"]) > 20
    assert saturation(sets["colour"]["images"]) > 20
    border = lambda im: float(im[:, :3, :3].mean())  # noqa: E731 - the corner: background only
    assert border(ink["images"]) < 5 and border(sets["photo"]["images"]) > 40
    # warm and cool: the same strokes on backgrounds of other hues (red-yellow vs cyan-blue), dark strokes on light
    warm, cool = (build_identities(ids, st, views=3, seed=1)["images"].astype(np.float32) for st in ("warm", "cool"))
    assert border(warm) > 120 and border(cool) > 120
    assert warm[..., 0].mean() > warm[..., 2].mean() + 20 and cool[..., 2].mean() > cool[..., 0].mean() + 20
    with pytest.raises(LeancnnError, match="unknown style"):
        build_identities(ids, "sketch")
    with pytest.raises(LeancnnError, match="views must be"):
        build_identities(ids, "ink", views=1)


TINY_RET = ["data.ids=60", "data.views=3", "data.p=4", "data.k=3", "train.epochs=1", "data.train_styles=[warm]",
            "data.test_style=cool", "train.threads=1"]


@pytest.mark.slow
def test_retrieve_train_resume_evaluate(tmp_path, capsys):
    import json

    from leancnn.cli import main
    from leancnn.train import load_checkpoint

    out = tmp_path / "run"
    assert main(["retrieve", "train", *TINY_RET, "model.mixstyle.after=[layer1,layer2]", "-o", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s["test"]) == {"target", "source"}
    for r in s["test"].values():  # 18 test identities: 18 queries, each with its 2 other views in the gallery
        assert r["queries"] == 18 and r["skipped"] == 0 and 0 <= r["mAP"] <= 1 and r["rank1"] <= r["rank5"]
    assert load_checkpoint(out / "last.pt")["task"] == "retrieve"
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "val_mAP" in hist[-1] and "train_triplet" in hist[-1]
    capsys.readouterr()
    assert main(["retrieve", "train", "--resume", str(out), "optim.lr=0.5"]) == 2  # not a resumable key
    assert "'optim.lr' changed" in capsys.readouterr().err
    assert main(["retrieve", "train", "--resume", str(out), "train.epochs=2"]) == 0
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    capsys.readouterr()
    assert main(["retrieve", "evaluate", str(out)]) == 0
    assert "target" in capsys.readouterr().out


@pytest.mark.slow
def test_retrieve_trains_under_two_process_ddp(tmp_path):
    """torchrun with 2 processes: each rank takes half of every P x K batch, rank 0 alone writes the run."""
    import json
    import os
    import subprocess
    import sys

    from leancnn.train import load_checkpoint

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "leancnn", "retrieve",
           "train", *TINY_RET, "-o", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    state = load_checkpoint(out / "last.pt")
    assert state["world_size"] == 2 and state["task"] == "retrieve"
    assert r.stdout.count("run written to") == 1
    s = json.loads((out / "summary.json").read_text())
    assert s["test"]["target"]["queries"] == 18


@pytest.mark.parametrize("args, match", [
    (["data.test_style=warm"], "test domain must be unseen"),
    (["data.sampler=random"], "triplet loss needs P x K batches"),
    (["model.mixstyle.after=[layer9]"], "layer9"),
    (["model.mixstyle.after=[layer1]", "model.mixstyle.mix=crossdomain"], "needs data.sampler=domain"),
])
def test_retrieve_bad_input_is_one_line(tmp_path, capsys, args, match):
    import re

    from leancnn.cli import main

    out = tmp_path / "bad"
    assert main(["retrieve", "train", *TINY_RET, *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(match, err), err
    assert not out.exists()
