"""RL under visual shift (issue 23, part 2): the styled MiniGrid environment (the same task, pixels that really
differ), the IMPALA CNN, PPO with MixStyle active while the agent trains and inactive at evaluation, exact resume,
and ``leancnn rl train | evaluate`` with its one-line refusals."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from test_cli import cli, one_error_line

from leancnn.config import load_config
from leancnn.data.styled_env import STYLES, TEST_STYLES, TRAIN_STYLES, Style, apply_style, make_env
from leancnn.errors import LeancnnError
from leancnn.models import create_model
from leancnn.nn.mixstyle import mixstyle_modules
from leancnn.train import load_checkpoint

TINY = ["env.id=MiniGrid-Empty-5x5-v0", "env.n_envs=2", "ppo.n_steps=16", "ppo.batch_size=16", "train.eval_every=32",
        "eval.episodes=1", "eval.final_episodes=2", "eval.parallel=2", "model.kwargs={depths: [4, 8]}",
        "train.threads=1"]


def rl_config(*overrides):
    from leancnn.tasks.rl import RLConfig

    return load_config(None, [*TINY, *overrides], cls=RLConfig)


# ----------------------------------------------------------------------------------------- the environment


def test_apply_style_by_hand():
    frame = np.array([[[0, 0, 0], [76, 76, 76], [255, 0, 0]]], np.uint8)  # unseen floor, seen floor, the agent
    style = Style(floor=(0.5, 0.2, 0.1), gain=(0.8, 1.0, 1.0), offset=(0.1, 0.0, 0.0))
    out = apply_style(frame, style)
    # floor: its colour where unseen; where seen, MiniGrid's highlight: colour + (1 - colour) x 76/255
    h = 76 / 255
    expect = [[0.5, 0.2, 0.1], [0.5 + 0.5 * h, 0.2 + 0.8 * h, 0.1 + 0.9 * h], [0.9, 0.0, 0.0]]  # object: 0.8 x 1 + 0.1
    assert out.tolist() == [[[int(v * 255 + 0.5) for v in px] for px in expect]]
    assert apply_style(frame, STYLES["classic"]).tolist() == frame.tolist()  # MiniGrid's own look, unchanged


def test_styles_show_the_same_level_in_really_different_pixels():
    frames, grids = {}, {}
    for s in STYLES:
        env = make_env("MiniGrid-DoorKey-5x5-v0", [s], tile_size=4, monitor=False)
        obs, info = env.reset(seed=3)
        assert info["style"] == s and obs.shape == (28, 28, 3) and obs.dtype == np.uint8
        frames[s], grids[s] = obs, env.unwrapped.gen_obs()["image"]
        # the agent (bottom centre cell of its own view) stays red in every style: the task's cues survive
        agent = obs[24:28, 12:16].reshape(-1, 3).astype(int)
        assert (agent[:, 0] - agent[:, 1:].max(1) > 60).any(), s
    assert all(np.array_equal(grids[s], grids["classic"]) for s in STYLES)  # the same level, cell for cell
    for a in STYLES:
        for b in STYLES:
            if a != b:
                assert np.abs(frames[a].astype(int) - frames[b].astype(int)).mean() > 8, (a, b)

    def colour_stats(styles):  # per-channel mean and std of each style's pixels over 40 random steps
        out = []
        for s in styles:
            env = make_env("MiniGrid-DoorKey-5x5-v0", [s], tile_size=4, monitor=False)
            obs, _ = env.reset(seed=0)
            rng, seen = np.random.default_rng(0), [obs]
            for _ in range(40):
                obs, *_ = env.step(int(rng.integers(3)))
                seen.append(obs)
            x = np.stack(seen).reshape(-1, 3) / 255
            out.append(np.concatenate([x.mean(0), x.std(0)]))
        return np.array(out)

    train, test = colour_stats(TRAIN_STYLES), colour_stats(TEST_STYLES)
    gap = min(np.abs(tr - te).max() for tr in train for te in test)
    spread = max(np.abs(a - b).max() for a in train for b in train)
    assert gap > 0.2 and spread < 0.35, (gap, spread)  # unseen styles lie outside what training shows


def test_style_draws_and_state_round_trip():
    env = make_env("MiniGrid-Empty-Random-6x6-v0", TRAIN_STYLES, tile_size=4, seed=5)
    drawn = {env.reset(seed=i)[1]["style"] for i in range(30)}
    assert drawn == set(TRAIN_STYLES)  # each episode draws one from the env's own stream
    env.reset(seed=1)
    env.step(2)
    blob = env.get_state()
    rng = np.random.default_rng(0)
    actions = rng.integers(3, size=60)

    def play():
        out = []
        for a in actions:
            obs, r, term, trunc, info = env.step(int(a))
            out.append((obs.tobytes(), r, term, info["style"]))
            if term or trunc:
                out.append(env.reset()[1]["style"])
        return out

    first = play()
    env.set_state(blob)
    assert play() == first  # the level, the agent and the style stream come back exactly
    with pytest.raises(LeancnnError, match="style 'sand' is not one of this env's styles"):
        env.reset(options={"style": "sand"})


def test_unknown_environment_is_one_line():
    with pytest.raises(LeancnnError, match=r"^config key 'env.id': unknown environment 'MiniGrid-DoorKey-v9'; "
                                           r"MiniGrid ids include: .*MiniGrid-DoorKey-5x5-v0"):
        make_env("MiniGrid-DoorKey-v9", TRAIN_STYLES)


# ----------------------------------------------------------------------------------------- the network


def test_impala_cnn_by_hand():
    m = create_model("impala_cnn", num_classes=5)
    conv = sum(p.numel() for n, p in m.named_parameters() if n.startswith("seq"))
    # seq0: 3->16 conv (448) + 4 convs 16->16 (4 x 2320); seq1: 16->32 (4640) + 4 x 9248; seq2: 32->32 (9248) + 4 x 9248
    assert conv == 448 + 4 * 2320 + 4640 + 4 * 9248 + 9248 + 4 * 9248 == 97600
    assert m.map_size == (8, 8) and m.fc.in_features == 32 * 8 * 8  # 64 -> 32 -> 16 -> 8
    assert create_model("impala_cnn", input_hw=(28, 28)).map_size == (4, 4)  # 28 -> 14 -> 7 -> 4
    x = torch.rand(2, 3, 64, 64)
    assert m(x).shape == (2, 5) and m.embed(x).shape == (2, 256) and (m.embed(x) >= 0).all()
    assert torch.allclose(m.forward_head(m.forward_features(x)), m(x))
    with pytest.raises(ValueError, match="built for 64x64 inputs"):
        m(torch.rand(1, 3, 28, 28))


# ----------------------------------------------------------------------------------------- PPO + MixStyle


def test_mixstyle_mixes_while_training_and_never_at_evaluation(monkeypatch, tmp_path):
    from leancnn.tasks import rl

    events = []  # (phase, batch, mixed)
    phase = {"now": "train"}
    original_eval = rl.evaluate_policy

    def evaluating(*a, **k):
        phase["now"] = "eval"
        try:
            return original_eval(*a, **k)
        finally:
            phase["now"] = "train"

    def watch(module, args, out):
        events.append((phase["now"], args[0].shape[0], not torch.equal(args[0], out)))

    import leancnn.nn.mixstyle as ms_mod

    real_insert = ms_mod.insert_mixstyle

    def insert_and_watch(*a, **k):
        mods = real_insert(*a, **k)
        for m in mods:
            m.register_forward_hook(watch)
        return mods

    monkeypatch.setattr(rl, "evaluate_policy", evaluating)
    monkeypatch.setattr("leancnn.tasks.digits.insert_mixstyle", insert_and_watch)
    cfg = rl_config("model.mixstyle.after=[seq0]", "model.mixstyle.p=1.0", "train.frames=32")
    summary = rl.train_rl(cfg, out=tmp_path / "a", quiet=True)
    mixed = {(p, b) for p, b, m in events if m}
    evals = [e for e in events if e[0] == "eval"]
    assert evals and not any(m for _, _, m in evals)  # evaluated: MixStyle saw batches and left them alone
    assert ("train", 2) in mixed  # rollouts (a batch = the 2 environments' observations)
    assert ("train", 16) in mixed  # PPO updates (minibatches of 16)
    assert summary["mixstyle"] == ["seq0"]

    events.clear()  # mixstyle_rollouts=false: the updates mix, the rollouts do not
    rl.train_rl(rl_config("model.mixstyle.after=[seq0]", "model.mixstyle.p=1.0", "train.frames=32",
                          "model.mixstyle_rollouts=false"), out=tmp_path / "b", quiet=True)
    assert {b for p, b, m in events if m} == {16}
    assert any(p == "train" and b == 2 and not m for p, b, m in events)


def test_evaluation_is_the_policy_without_mixstyle(tmp_path):
    from leancnn.tasks.rl import build_policy, evaluate_policy

    cfg = rl_config("model.mixstyle.after=[seq0,seq1]", "model.mixstyle.p=1.0")
    with_ms = build_policy(cfg)
    plain = build_policy(rl_config())
    plain.load_state_dict(with_ms.state_dict())  # MixStyle adds no weights
    a = evaluate_policy(with_ms, cfg, ["sand", "teal"], 4, seed=7)
    b = evaluate_policy(plain, cfg, ["sand", "teal"], 4, seed=7)
    assert a == b and a["episodes"] == 4 and set(a["per_style"]) == {"sand", "teal"}
    with_ms.train()
    assert all(m.training for m in mixstyle_modules(with_ms))
    evaluate_policy(with_ms, cfg, ["sand"], 1)
    assert with_ms.training  # the caller's mode is given back


@pytest.mark.slow
@pytest.mark.parametrize("mix", [False, True], ids=["vanilla", "mixstyle"])
def test_resume_continues_exactly(tmp_path, mix):
    from leancnn.tasks.rl import train_rl

    extra = ["model.mixstyle.after=[seq0]", "model.mixstyle.p=1.0"] if mix else []
    straight = train_rl(rl_config(*extra, "train.frames=64"), out=tmp_path / "a", quiet=True)
    train_rl(rl_config(*extra, "train.frames=32"), out=tmp_path / "b", quiet=True)
    resumed = train_rl(rl_config(*extra, "train.frames=64"), out=tmp_path / "b", resume=tmp_path / "b" / "last.pt",
                       quiet=True)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["frames"] == b["frames"] == 64 and a["updates"] == b["updates"]
    assert np.array_equal(a["last_obs"], b["last_obs"])  # the same states and actions all the way
    assert [pickle.loads(e)["env"].unwrapped.agent_pos for e in a["envs"]] == \
        [pickle.loads(e)["env"].unwrapped.agent_pos for e in b["envs"]]
    for k in a["model"]:
        if mix:  # MixStyle's float rounding differs between processes by ~1e-9 (see tasks/rl.py)
            assert torch.allclose(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-6), k
        else:
            assert torch.equal(a["model"][k], b["model"][k]), k
    assert [r["frames"] for r in resumed["history"]] == [32, 64] == [r["frames"] for r in straight["history"]]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["frames"] for x in lines] == [32, 64]


@pytest.mark.slow
def test_subprocess_environments_train_the_same_agent(tmp_path):
    from leancnn.tasks.rl import train_rl

    train_rl(rl_config("train.frames=32"), out=tmp_path / "a", quiet=True)
    train_rl(rl_config("train.frames=32", "env.vec=subproc"), out=tmp_path / "b", quiet=True)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# ----------------------------------------------------------------------------------------- the command


def test_rl_train_and_evaluate_command(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "rl", "train", *TINY, "train.frames=64", "-o", str(run)).code == 0
    for f in ("config.yaml", "fingerprint.json", "metrics.jsonl", "last.pt", "summary.json", "curves.png"):
        assert (run / f).is_file(), f
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "rl" and summary["frames"] == 64
    assert set(summary["final"]) == {"train_styles", "test_styles"}
    assert set(summary["final"]["test_styles"]["per_style"]) <= set(TEST_STYLES)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["frames"] for r in rows] == [32, 64]
    assert {"eval_train_success", "eval_test_success", "value_loss", "approx_kl", "frames_per_s"} <= set(rows[0])
    r = cli(capsys, "rl", "evaluate", str(run), "--episodes", "3", "--styles", "rose", "teal")
    assert r.code == 0 and "rose" in r.out and "teal" in r.out and "styles " in r.out
    # a run directory that holds a run is refused; --resume continues it
    msg = one_error_line(cli(capsys, "rl", "train", *TINY, "-o", str(run)), "rl")
    assert "already holds a run" in msg
    msg = one_error_line(cli(capsys, "rl", "train", "--resume", str(run), "ppo.lr=0.1"), "rl")
    assert "cannot resume" in msg and "'ppo.lr' changed" in msg
    msg = one_error_line(cli(capsys, "rl", "train", "--resume", str(run / "last.pt"), "train.frames=32"), "rl")
    assert msg.endswith("has already completed 64 frames; a run cannot be shortened")
    assert cli(capsys, "rl", "train", "--resume", str(run), "train.frames=96").code == 0
    assert json.loads((run / "summary.json").read_text())["frames"] == 96


@pytest.mark.parametrize("args, expect", [
    (["env.test_styles=[navy]"], "config key 'env.test_styles': navy is also a training style"),
    (["env.train_styles=[neon]"], "config key 'env.train_styles': unknown style 'neon'; known: classic"),
    (["env.id=CartPole-v9"], "config key 'env.id': unknown environment 'CartPole-v9'"),
    (["model.mixstyle.after=[layer1]"], "config key 'model.mixstyle.after': cannot insert MixStyle after 'layer1'"),
    (["model.mixstyle.after=[seq0]", "model.mixstyle.mix=crossdomain"], "config key 'model.mixstyle.mix': "
                                                                        "crossdomain needs batches"),
    (["ppo.batch_size=64"], "config key 'ppo.batch_size' (64) is larger than a rollout (ppo.n_steps x env.n_envs "
                            "= 32)"),
    (["model.name=digits_cnn", "model.kwargs={}"], "config key 'model.name': digits_cnn cannot take"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, expect):
    msg = one_error_line(cli(capsys, "rl", "train", *TINY, *args, "-o", str(tmp_path / "r")), "rl")
    assert msg.startswith(expect), msg
    assert not (tmp_path / "r").exists()


def test_evaluate_refuses_other_runs_and_bad_styles(tmp_path, capsys):
    msg = one_error_line(cli(capsys, "rl", "evaluate", str(tmp_path / "none")), "rl")
    assert "does not exist" in msg
    run = tmp_path / "run"
    assert cli(capsys, "rl", "train", *TINY, "train.frames=32", "-o", str(run)).code == 0
    msg = one_error_line(cli(capsys, "rl", "evaluate", str(run), "--styles", "neon"), "rl")
    assert msg == "--styles: unknown style 'neon'; known: " + ", ".join(STYLES)
    msg = one_error_line(cli(capsys, "rl", "evaluate", str(run), "--episodes", "0"), "rl")
    assert msg == "--episodes must be >= 1, got 0"
