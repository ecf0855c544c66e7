"""``leancnn rl train | evaluate``: reinforcement learning under visual shift, with MixStyle (issue 23).

MixStyle's RL evidence is CoinRun (PPO, an IMPALA CNN, MixStyle after its first two conv sequences, alpha 0.3, no
p gate): agents generalise better to unseen levels, whose backgrounds and textures they never saw. Here the same
question in miniature: a MiniGrid task observed in pixels (:mod:`leancnn.data.styled_env`) is trained in some
visual styles (``env.train_styles``, one drawn per episode) and tested in styles it never saw
(``env.test_styles``); success rate and return are measured in both.

**PPO is stable-baselines3's** (its rollout buffer, GAE, clipped objective, vectorised environments), with our CNN
as its feature extractor (``model.name``, any registered model with ``embed`` or ``forward_features``; default the
IMPALA CNN, :mod:`leancnn.models.impala`). MixStyle goes in by module name as for classification
(``model.mixstyle.after=[seq0,seq1]``). It mixes while the agent trains, in the PPO updates and (``model.
mixstyle_rollouts``, the paper's TF code, whose layer is in every forward pass of the training graph) while
rollouts are collected, and never at evaluation: every evaluation puts the policy in eval mode, where MixStyle is
the identity. ``tests/test_rl.py`` checks both, by watching the MixStyle modules.

The loop is SB3's, so this task does not run on the shared :class:`~leancnn.train.Trainer` (a PPO iteration is
not a pass over a data set); everything around the loop is the shared run machinery (:mod:`leancnn.tasks.runs`):
typed config with ``key=value`` overrides, the run directory and its protection, ``--force``, config.yaml and
fingerprint.json, resume checks (only resumable keys may change: ``train.frames`` extends a run), metrics.jsonl,
summary.json and curves.png, and :func:`~leancnn.tasks.protocol.load_run` through the task registry.

**Exact resume.** Training runs in chunks of ``train.eval_every`` frames (whole rollouts); after each chunk the
agent is evaluated (in its own random stream, so evaluation never changes training) and ``last.pt`` is written
with everything the next chunk reads: the policy and Adam state, the step and update counters, the last
observations, every environment's state (the MiniGrid level, its random stream, the episode under way, the style
stream), the episode-statistics window, torch/numpy/python random states and each MixStyle module's generator.
A run killed and resumed gives the same weights as one that was not (tested).
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.policies import ActorCriticCnnPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv
from tqdm import tqdm

from .. import report, threads
from ..config import SEED_MAX, MixStyleConfig, dump_config, rule, to_dict
from ..data.styled_env import STYLES, TEST_STYLES, TRAIN_STYLES, check_styles, make_env
from ..errors import ConfigError, LeancnnError
from ..io import atomic_write_json, atomic_write_text
from ..models import create_model
from ..nn.mixstyle import mixstyle_modules
from ..train import load_checkpoint, seed_everything
from ..train.checkpoint import save_checkpoint
from ..train.seed import get_rng_state, set_rng_state
from .digits import apply_mixstyle
from .protocol import TaskSpec, expect_task, register_task
from .runs import check_resume, check_run_dir, default_run_dir, fingerprint, resolve_device, start_run_dir

# ------------------------------------------------------------------------------------------------ schema


@dataclass
class RLEnvConfig:
    id: str = rule("MiniGrid-DoorKey-5x5-v0", nonempty=True)  # a MiniGrid environment id
    train_styles: list[str] = rule(factory=lambda: list(TRAIN_STYLES), min_len=1, unique=True)
    test_styles: list[str] = rule(factory=lambda: list(TEST_STYLES), min_len=1, unique=True)  # never trained on
    tile_size: int = rule(4, ge=2, le=32)  # pixels per grid cell: the observation is 7 x tile_size square
    n_envs: int = rule(8, ge=1, le=256)  # environments stepped together
    vec: Literal["dummy", "subproc"] = rule("dummy", runtime=True)  # in-process, or one process per environment

    def _check(self) -> None:
        check_styles(self.train_styles, "config key 'env.train_styles'")
        check_styles(self.test_styles, "config key 'env.test_styles'")
        both = [s for s in self.test_styles if s in self.train_styles]
        if both:
            raise ConfigError(f"config key 'env.test_styles': {', '.join(both)} is also a training style; the test "
                              "styles must be unseen")


@dataclass
class RLModelConfig:
    name: str = rule("impala_cnn", nonempty=True)
    kwargs: dict[str, Any] = field(default_factory=dict)
    mixstyle: MixStyleConfig = field(default_factory=MixStyleConfig)
    mixstyle_rollouts: bool = True  # mix while rollouts are collected too (the paper's TF code), not only in updates


@dataclass
class PPOConfig:
    n_steps: int = rule(128, ge=1)  # steps per environment per rollout
    batch_size: int = rule(256, ge=2)  # minibatch of the PPO update
    n_epochs: int = rule(4, ge=1)
    lr: float = rule(7e-4, gt=0.0)
    gamma: float = rule(0.99, gt=0.0, le=1.0)
    gae_lambda: float = rule(0.95, ge=0.0, le=1.0)
    clip_range: float = rule(0.2, gt=0.0)
    ent_coef: float = rule(0.01, ge=0.0)
    vf_coef: float = rule(0.5, ge=0.0)
    max_grad_norm: float = rule(0.5, gt=0.0)


@dataclass
class RLTrainConfig:
    frames: int = rule(150_000, ge=1, resumable=True)  # environment steps, rounded up to whole rollouts
    eval_every: int = rule(25_000, ge=1)  # frames between evaluations (and checkpoints), rounded to rollouts
    seed: int = rule(0, ge=0, lt=SEED_MAX)
    device: Literal["auto", "cpu", "cuda"] = rule("cpu", resumable=True)  # PPO on small CNNs is faster on the CPU
    threads: Union[int, Literal["auto"]] = rule("auto", runtime=True)  # as train.threads of every task


@dataclass
class RLEvalConfig:
    episodes: int = rule(48, ge=1)  # per style set (training styles, test styles) at each evaluation
    final_episodes: int = rule(240, ge=1)  # per style set at the end of the run
    seed: int = rule(1_000_000, ge=0, lt=SEED_MAX)  # level seeds seed, seed+1, ... and the action sampling
    deterministic: bool = False  # sample actions (as in training) or take the most likely one
    parallel: int = rule(16, ge=1, runtime=True)  # episodes stepped together


@dataclass
class RLConfig:
    """``leancnn rl train``: PPO on a MiniGrid task in pixels, tested in unseen visual styles (docs/mixstyle.md)."""

    name: str = rule("rl", name=True, runtime=True)
    output_dir: str = rule("runs", nonempty=True, runtime=True)
    env: RLEnvConfig = field(default_factory=RLEnvConfig)
    model: RLModelConfig = field(default_factory=RLModelConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    train: RLTrainConfig = field(default_factory=RLTrainConfig)
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)

    def _check(self) -> None:
        from ..threads import parse_threads

        try:
            parse_threads(self.train.threads, "train.threads")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        rollout = self.ppo.n_steps * self.env.n_envs
        if self.ppo.batch_size > rollout:
            raise ConfigError(f"config key 'ppo.batch_size' ({self.ppo.batch_size}) is larger than a rollout "
                              f"(ppo.n_steps x env.n_envs = {rollout})")
        if self.model.mixstyle.after and self.model.mixstyle.mix == "crossdomain":
            raise ConfigError("config key 'model.mixstyle.mix': crossdomain needs batches laid out as two domains; "
                              "PPO's batches are not (use random, the paper's RL setting)")


# ------------------------------------------------------------------------------------------------ the network


def _backbone(model_cfg: RLModelConfig, shape: tuple[int, int, int], seed: int) -> nn.Module:
    """The registered model on ``shape`` (C, H, W) inputs, with MixStyle inserted by name."""
    from ..models.registry import get_model_entry

    params = inspect.signature(get_model_entry(model_cfg.name).builder).parameters
    kw: dict[str, Any] = {}
    if "in_chans" in params:
        kw["in_chans"] = shape[0]
    if "input_hw" in params:
        kw["input_hw"] = tuple(shape[1:])
    try:
        net = create_model(model_cfg.name, num_classes=1, **{**kw, **model_cfg.kwargs})
    except TypeError as e:
        raise LeancnnError(f"config key 'model.kwargs': {e}") from None
    if not (hasattr(net, "embed") or hasattr(net, "forward_features")):
        raise LeancnnError(f"config key 'model.name': {model_cfg.name} has no embed / forward_features")
    apply_mixstyle(net, model_cfg.mixstyle, seed)
    return net


def _embedding(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(net, "embed"):
        return net.embed(x)
    f = net.forward_features(x)
    return F.adaptive_avg_pool2d(f, 1).flatten(1) if f.ndim == 4 else f.flatten(1)


class LeancnnExtractor(BaseFeaturesExtractor):
    """SB3 feature extractor: a leancnn model's embedding of the observation (SB3 has divided it by 255)."""

    def __init__(self, observation_space, model: dict, seed: int = 0):
        from ..config import from_dict

        cfg = from_dict(RLModelConfig, model, "model")
        shape = tuple(observation_space.shape)
        net = _backbone(cfg, shape, seed)
        try:
            with torch.no_grad():
                dim = _embedding(net.eval(), torch.zeros(1, *shape)).shape[1]
        except (ValueError, RuntimeError) as e:
            raise LeancnnError(f"config key 'model.name': {cfg.name} cannot take the {shape[1]}x{shape[2]} "
                               f"observations of env.tile_size ({e})") from None
        super().__init__(observation_space, int(dim))
        self.net = net

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return _embedding(self.net, obs)


def policy_kwargs(cfg: RLConfig) -> dict:
    return {"features_extractor_class": LeancnnExtractor,
            "features_extractor_kwargs": {"model": to_dict(cfg.model), "seed": cfg.train.seed},
            "net_arch": [],  # linear policy and value heads on the embedding, as IMPALA / CoinRun agents
            "normalize_images": True}


def spaces_of(cfg: RLConfig):
    """(observation space as the policy sees it: C x H x W uint8, action space) without stepping an env."""
    from gymnasium import spaces

    env = make_env(cfg.env.id, cfg.env.train_styles, cfg.env.tile_size, monitor=False)
    h, w, c = env.observation_space.shape
    return spaces.Box(0, 255, (c, h, w), np.uint8), env.action_space


def build_policy(cfg: RLConfig, obs_space=None, action_space=None):
    """The actor-critic network alone (for evaluation and :func:`load_run`)."""
    if obs_space is None:
        obs_space, action_space = spaces_of(cfg)
    return ActorCriticCnnPolicy(obs_space, action_space, lambda _: cfg.ppo.lr, **policy_kwargs(cfg))


def check_rl(cfg: RLConfig) -> None:
    """Every check that needs nothing written: the environment id, the model, MixStyle's module names."""
    obs_space, action_space = spaces_of(cfg)
    with torch.random.fork_rng(devices=[]):
        build_policy(cfg, obs_space, action_space)


# ------------------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate_policy(policy, cfg: RLConfig, styles: list[str], episodes: int, seed: int | None = None,
                    deterministic: bool | None = None) -> dict:
    """``episodes`` episodes on levels ``seed, seed+1, ...`` (episode i in style ``styles[i % len]``), the policy in
    eval mode (MixStyle off), actions sampled from a stream of their own (training's streams are untouched).
    Returns mean return, success rate (MiniGrid pays a reward only on success), mean length, and per style."""
    seed = cfg.eval.seed if seed is None else seed
    deterministic = cfg.eval.deterministic if deterministic is None else deterministic
    envs = [make_env(cfg.env.id, styles, cfg.env.tile_size, monitor=False) for _ in range(min(cfg.eval.parallel,
                                                                                            episodes))]
    queue = list(range(episodes))
    results: list[tuple[str, float, int] | None] = [None] * episodes
    current: list[int | None] = [None] * len(envs)
    obs: list[np.ndarray | None] = [None] * len(envs)
    ret, length = [0.0] * len(envs), [0] * len(envs)

    def start(k: int) -> None:
        i = queue.pop(0)
        current[k], ret[k], length[k] = i, 0.0, 0
        obs[k], _ = envs[k].reset(seed=seed + i, options={"style": styles[i % len(styles)]})

    for k in range(len(envs)):
        start(k)
    was_training = policy.training
    policy.set_training_mode(False)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            while any(c is not None for c in current):
                active = [k for k in range(len(envs)) if current[k] is not None]
                actions, _ = policy.predict(np.stack([obs[k] for k in active]), deterministic=deterministic)
                for k, a in zip(active, np.asarray(actions).reshape(-1)):
                    obs[k], r, term, trunc, _ = envs[k].step(int(a))
                    ret[k] += float(r)
                    length[k] += 1
                    if term or trunc:
                        i = current[k]
                        results[i] = (styles[i % len(styles)], ret[k], length[k])
                        current[k] = None
                        if queue:
                            start(k)
    finally:
        policy.set_training_mode(was_training)
    return summarise_episodes(results)


def summarise_episodes(results) -> dict:
    def stats(rows):
        r = np.array([x[1] for x in rows], float)
        return {"return": float(r.mean()), "success": float((r > 0).mean()),
                "length": float(np.mean([x[2] for x in rows])), "episodes": len(rows)}

    out = stats(results)
    out["per_style"] = {s: stats([x for x in results if x[0] == s]) for s in dict.fromkeys(x[0] for x in results)}
    return out


# ------------------------------------------------------------------------------------------------ training


def _vec_env(cfg: RLConfig):
    e = cfg.env
    fns = [_EnvFactory(e.id, list(e.train_styles), e.tile_size, cfg.train.seed * 1000 + i) for i in range(e.n_envs)]
    venv = SubprocVecEnv(fns, start_method="spawn") if e.vec == "subproc" else DummyVecEnv(fns)
    venv.seed(cfg.train.seed)  # env i's first level: seed + i; later levels continue each env's own stream
    return venv


@dataclass
class _EnvFactory:  # picklable (subprocess environments)
    env_id: str
    styles: list[str]
    tile_size: int
    seed: int

    def __call__(self):
        return make_env(self.env_id, self.styles, self.tile_size, seed=self.seed)


class _Hooks(BaseCallback):
    """MixStyle on during rollouts (when asked), the progress bar, thread re-checks, and the returns of the
    episodes finished in the current chunk."""

    def __init__(self, mix_in_rollouts: bool, bar):
        super().__init__()
        self.mix_in_rollouts, self.bar, self.episodes = mix_in_rollouts, bar, []

    def _on_rollout_start(self) -> None:
        if self.mix_in_rollouts:  # SB3 has just put the policy in eval mode for the rollout
            for m in mixstyle_modules(self.model.policy):
                m.train(True)

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            if "episode" in info:
                self.episodes.append(float(info["episode"]["r"]))
        if self.bar is not None:
            self.bar.update(self.training_env.num_envs)
        threads.tick()
        return True


def build_ppo(cfg: RLConfig, venv, device: torch.device):
    p = cfg.ppo
    model = PPO("CnnPolicy", venv, learning_rate=p.lr, n_steps=p.n_steps, batch_size=p.batch_size,
                n_epochs=p.n_epochs, gamma=p.gamma, gae_lambda=p.gae_lambda, clip_range=p.clip_range,
                ent_coef=p.ent_coef, vf_coef=p.vf_coef, max_grad_norm=p.max_grad_norm,
                policy_kwargs=policy_kwargs(cfg), seed=cfg.train.seed, device=device, verbose=0)
    model.set_logger(configure(None, []))  # the losses are read from it after each chunk; nothing printed
    return model


def rollout_frames(cfg: RLConfig) -> int:
    return cfg.ppo.n_steps * cfg.env.n_envs


def total_frames(cfg: RLConfig) -> int:
    r = rollout_frames(cfg)
    return -(-cfg.train.frames // r) * r


def chunk_frames(cfg: RLConfig) -> int:
    r = rollout_frames(cfg)
    return max(1, round(cfg.train.eval_every / r)) * r


def agent_state(model, venv, history: list[dict], cfg: RLConfig) -> dict:
    return {"task": "rl", "config": to_dict(cfg), "model": model.policy.state_dict(),
            "optimizer": model.policy.optimizer.state_dict(), "frames": int(model.num_timesteps),
            "updates": int(model._n_updates), "episode_num": int(model._episode_num),
            "last_obs": np.array(model._last_obs), "last_episode_starts": np.array(model._last_episode_starts),
            "ep_info_buffer": list(model.ep_info_buffer), "ep_success_buffer": list(model.ep_success_buffer),
            "envs": venv.env_method("get_state"), "rng": get_rng_state(),
            "mixstyle_rng": [m.generator.get_state() for m in mixstyle_modules(model.policy)],
            "history": history, "meta": {"obs_shape": list(model.observation_space.shape),
                                         "n_actions": int(model.action_space.n)}}


def restore_agent(model, venv, state: dict) -> None:
    source = f"checkpoint '{state.get('path', '?')}'"
    try:
        model.policy.load_state_dict(state["model"])
        model.policy.optimizer.load_state_dict(state["optimizer"])
        if len(state["envs"]) != venv.num_envs:
            raise ValueError(f"it holds {len(state['envs'])} environments, the config {venv.num_envs}")
        for i, blob in enumerate(state["envs"]):
            venv.env_method("set_state", blob, indices=[i])
        model.num_timesteps, model._n_updates = state["frames"], state["updates"]
        model._episode_num = state["episode_num"]
        model._last_obs = state["last_obs"]
        model._last_episode_starts = state["last_episode_starts"]
        model.ep_info_buffer = deque(state["ep_info_buffer"], maxlen=model._stats_window_size)
        model.ep_success_buffer = deque(state["ep_success_buffer"], maxlen=model._stats_window_size)
        gens = mixstyle_modules(model.policy)
        if len(gens) != len(state["mixstyle_rng"]):
            raise ValueError("its MixStyle modules differ from the config's")
        for m, g in zip(gens, state["mixstyle_rng"]):
            m.generator.set_state(g)
        set_rng_state(state["rng"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise LeancnnError(f"{source} cannot be resumed with this config ({type(e).__name__}: {e})") from None


def data_identity(cfg: RLConfig) -> dict[str, str]:
    """What the run's 'data' is: the environment package's version (levels and rendering are its code) and the
    style table's content."""
    import hashlib

    import minigrid

    styles = {s: STYLES[s].__dict__ for s in [*cfg.env.train_styles, *cfg.env.test_styles]}
    digest = hashlib.sha256(json.dumps(styles, sort_keys=True).encode()).hexdigest()[:16]
    return {"minigrid": minigrid.__version__, "styles": digest}


_LOSSES = {"train/policy_gradient_loss": "policy_loss", "train/value_loss": "value_loss",
           "train/entropy_loss": "entropy_loss", "train/approx_kl": "approx_kl", "train/clip_fraction": "clip_fraction",
           "train/explained_variance": "explained_variance"}


def train_rl(cfg: RLConfig, out: str | Path | None = None, resume: str | Path | dict | None = None,
             quiet: bool = False, force: bool = False) -> dict:
    """Train ``cfg``; write config.yaml, fingerprint.json, metrics.jsonl, last.pt, summary.json and curves.png
    into ``out`` (default ``<output_dir>/<name>-<time>``). ``resume``: a checkpoint (path or already read) whose
    run continues exactly; only resumable keys may differ. Returns the summary."""
    seed_everything(cfg.train.seed)
    check_rl(cfg)
    threads.apply(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    state = None
    if resume is not None:
        state = resume if isinstance(resume, dict) else load_checkpoint(resume)
        expect_task(state, ("rl",), "leancnn rl train --resume", "an RL run")
        check_resume(state.get("config"), cfg, int(state.get("frames", 0)), f"checkpoint '{state['path']}'",
                     length=("train.frames", "frames"))
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    check_run_dir(run_dir, force, state["path"] if state else None)
    total, chunk = total_frames(cfg), chunk_frames(cfg)
    venv = _vec_env(cfg)
    try:
        model = build_ppo(cfg, venv, device)
        if state is not None:
            restore_agent(model, venv, state)
        history: list[dict] = list(state["history"]) if state else []
        fp = fingerprint(cfg, data_identity(cfg))
        start_run_dir(run_dir, dump_config(cfg), fp, force, state["path"] if state else None,
                      extending=state is not None and model.num_timesteps < total)
        atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        if not quiet:
            ms = cfg.model.mixstyle
            print(f"rl: {cfg.env.id}, {cfg.env.n_envs} envs, train styles {', '.join(cfg.env.train_styles)}; test "
                  f"styles {', '.join(cfg.env.test_styles)}; {cfg.model.name}"
                  + (f" + MixStyle after {', '.join(ms.after)} (p={ms.p:g}, alpha={ms.alpha:g})" if ms.after else "")
                  + f"; {total:,} frames", flush=True)
        bar = tqdm(total=total, initial=model.num_timesteps, unit="frame", leave=False,
                   disable=quiet or not sys.stdout.isatty())
        hooks = _Hooks(cfg.model.mixstyle_rollouts, bar)
        try:
            while model.num_timesteps < total:
                start, t0, updates0 = model.num_timesteps, time.perf_counter(), model._n_updates
                hooks.episodes = []
                target = min(total, (start // chunk + 1) * chunk)
                model.learn(target - start, callback=hooks, reset_num_timesteps=False, log_interval=None)
                seconds = time.perf_counter() - t0
                losses = {v: float(model.logger.name_to_value[k]) for k, v in _LOSSES.items()
                          if k in model.logger.name_to_value}
                t1 = time.perf_counter()
                ev_train = evaluate_policy(model.policy, cfg, cfg.env.train_styles, cfg.eval.episodes)
                ev_test = evaluate_policy(model.policy, cfg, cfg.env.test_styles, cfg.eval.episodes)
                eps = hooks.episodes
                record = {"frames": int(model.num_timesteps), "updates": int(model._n_updates),
                          "train_return": float(np.mean(eps)) if eps else None,
                          "train_success": float(np.mean(np.array(eps) > 0)) if eps else None,
                          "train_episodes": len(eps), **losses,
                          "eval_train_return": ev_train["return"], "eval_train_success": ev_train["success"],
                          "eval_test_return": ev_test["return"], "eval_test_success": ev_test["success"],
                          "frames_per_s": (model.num_timesteps - start) / seconds, "train_seconds": seconds,
                          "eval_seconds": time.perf_counter() - t1, "updates_in_chunk": model._n_updates - updates0}
                gov = threads.current()
                if gov is not None:
                    record["threads"] = gov.threads
                history.append(record)
                save_checkpoint(run_dir / "last.pt", agent_state(model, venv, history, cfg))
                with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                if not quiet:
                    bar.write(f"{record['frames']:>9,} frames  train return {_fmt(record['train_return'])}  "
                              f"eval success train styles {100 * ev_train['success']:.0f}%  "
                              f"test styles {100 * ev_test['success']:.0f}%  ({record['frames_per_s']:.0f} frames/s)")
        finally:
            bar.close()
        final = {"train_styles": evaluate_policy(model.policy, cfg, cfg.env.train_styles, cfg.eval.final_episodes),
                 "test_styles": evaluate_policy(model.policy, cfg, cfg.env.test_styles, cfg.eval.final_episodes)}
        summary = {"run_dir": str(run_dir), "task": "rl", "env": cfg.env.id, "frames": int(model.num_timesteps),
                   "mixstyle": list(cfg.model.mixstyle.after), "final": final, "checkpoint": str(run_dir / "last.pt"),
                   "train_seconds": float(sum(r["train_seconds"] for r in history)), "history": history,
                   "fingerprint": fp["fingerprint"], "threads": threads.record()}
        atomic_write_json(run_dir / "summary.json", summary)
        plot_curves(history, run_dir / "curves.png", cfg.name)
        if not quiet:
            print(report.format_table(result_rows(final), ["styles", "success", "return", "length", "episodes"]))
            print(f"run written to {run_dir}")
        return summary
    finally:
        venv.close()


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def result_rows(final: dict) -> list[list]:
    rows = []
    for group, r in final.items():
        rows.append([group, f"{100 * r['success']:.1f}%", f"{r['return']:.3f}", f"{r['length']:.1f}", r["episodes"]])
        for s, q in r["per_style"].items():
            rows.append([f"  {s}", f"{100 * q['success']:.1f}%", f"{q['return']:.3f}", f"{q['length']:.1f}",
                         q["episodes"]])
    return rows


def plot_curves(history: list[dict], path: Path, title: str) -> Path:
    """Success rate (training episodes, evaluation in training and in test styles) and PPO's losses vs frames."""
    plt = report._pyplot()
    x = [r["frames"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for key, label in (("train_success", "training episodes"), ("eval_train_success", "eval, training styles"),
                       ("eval_test_success", "eval, unseen styles")):
        axes[0].plot(x, [r.get(key) if r.get(key) is not None else np.nan for r in history], marker="o", label=label)
    axes[0].set(title="success rate", xlabel="frames", ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=7)
    for key in ("eval_train_return", "eval_test_return"):
        axes[1].plot(x, [r[key] for r in history], marker="o", label=key.replace("eval_", ""))
    axes[1].set(title="evaluation return", xlabel="frames")
    axes[1].legend(fontsize=7)
    for key in ("value_loss", "entropy_loss", "approx_kl"):
        axes[2].plot(x, [r.get(key, np.nan) for r in history], marker=".", label=key)
    axes[2].set(title="PPO", xlabel="frames")
    axes[2].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    from ..io import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ the task


class RLSpec(TaskSpec):
    name, config_cls, kind = "rl", RLConfig, "RL agent"
    commands = "leancnn rl evaluate"

    def prepare(self, cfg, ctx, device, checked, resuming):
        raise LeancnnError("an RL run is trained by `leancnn rl train` (PPO's loop is stable-baselines3's)")

    def model_from_state(self, cfg, state):
        from gymnasium import spaces

        meta = state.get("meta") or {}
        if "obs_shape" in meta:
            return build_policy(cfg, spaces.Box(0, 255, tuple(meta["obs_shape"]), np.uint8),
                                spaces.Discrete(int(meta["n_actions"])))
        return build_policy(cfg)


SPEC = register_task(RLSpec())


def evaluate_checkpoint(path: str | Path, episodes: int | None = None, styles: list[str] | None = None,
                        deterministic: bool | None = None, device: str = "cpu") -> dict:
    """A run's agent on its training styles and its unseen styles (or on ``styles``)."""
    from .protocol import load_run

    run = load_run(path, device, ("rl",), "leancnn rl evaluate", "an RL run")
    cfg = run.cfg
    n = episodes or cfg.eval.final_episodes
    if styles:
        groups = {"styles": check_styles(styles, "--styles")}
    else:
        groups = {"train_styles": cfg.env.train_styles, "test_styles": cfg.env.test_styles}
    return {k: evaluate_policy(run.model, cfg, v, n, deterministic=deterministic) for k, v in groups.items()}


def train_command(config: str | None, overrides: list[str], resume: str | None = None, out: str | None = None,
                  force: bool = False) -> int:
    """``leancnn rl train``."""
    from .runs import resolve_train_run

    cfg, state, out_path = resolve_train_run(RLConfig, "rl", "an RL run", config, overrides, resume, out)
    train_rl(cfg, out=out_path, resume=state, force=force)
    return 0


__all__ = ["RLConfig", "build_policy", "evaluate_checkpoint", "evaluate_policy", "train_rl"]
