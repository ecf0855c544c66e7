"""MiniGrid with visual styles: the same task seen in different colours, floors and textures (issue 23, RL half).

MixStyle's RL evidence is generalisation to unseen CoinRun levels, whose backgrounds and textures differ from the
training levels'. Procgen has no wheel for our Python, so this is the miniature: a MiniGrid task (``gymnasium``,
``minigrid``; default DoorKey-5x5) observed as the agent's egocentric RGB view rendered by MiniGrid itself
(``get_frame(agent_pov=True)``, 7x7 cells of ``tile_size`` pixels), then **re-styled**:

* the floor (MiniGrid's black, or its highlighted grey where the agent sees) becomes the style's floor colour,
  highlighted as MiniGrid highlights (blended 30% towards white) where the agent sees, with the style's texture
  (stripes, checks, noise) on it;
* everything else (walls, grid lines, the agent, key, door, goal, lava) goes through the style's per-channel gain
  and offset (a tint and a brightness change; never a swap of colours, so red stays red and green stays green).

The task, its layouts and its rewards are MiniGrid's, untouched: only pixels change. Styles are data
(:data:`STYLES`); a run trains on some (each episode draws one) and is tested on others it never saw
(:data:`TRAIN_STYLES`, :data:`TEST_STYLES`: dark, plain floors in training; bright, textured floors at test, a shift
of exactly the colour statistics MixStyle perturbs). ``tests/test_rl.py`` checks that the same level looks different
in each style and that the styles' pixel statistics are far apart.

:class:`StyledPixels` keeps its own random stream for the style draws and can hand out and take back its whole
state (the MiniGrid env below it included), so a PPO run resumes exactly (:meth:`StyledPixels.get_state`).
"""

from __future__ import annotations

import pickle
import zlib
from dataclasses import dataclass

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid environments)
import numpy as np

from ..errors import LeancnnError


@dataclass(frozen=True)
class Style:
    """One visual domain. Colours are RGB in [0, 1]."""

    floor: tuple[float, float, float]
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)  # objects: out = gain * rgb + offset
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    texture: str = "none"  # none | stripes | checks | noise, on the floor
    amplitude: float = 0.0  # texture contrast


STYLES: dict[str, Style] = {
    # training styles: dark floors, mild tints
    "classic": Style(floor=(0.0, 0.0, 0.0)),
    "navy": Style(floor=(0.03, 0.06, 0.30), gain=(0.9, 0.9, 1.0), offset=(0.0, 0.0, 0.05)),
    "moss": Style(floor=(0.08, 0.22, 0.06), gain=(0.95, 1.0, 0.9), texture="stripes", amplitude=0.06),
    "slate": Style(floor=(0.22, 0.22, 0.25), gain=(0.9, 0.9, 0.9), texture="noise", amplitude=0.05),
    # test styles: bright or saturated floors, stronger tints and textures
    "sand": Style(floor=(0.78, 0.68, 0.45), gain=(0.95, 0.85, 0.7), offset=(0.05, 0.05, 0.0), texture="noise",
                  amplitude=0.10),
    "rose": Style(floor=(0.62, 0.28, 0.38), gain=(1.0, 0.8, 0.85), texture="checks", amplitude=0.12),
    "teal": Style(floor=(0.10, 0.48, 0.50), gain=(0.8, 1.0, 1.0), offset=(0.0, 0.05, 0.1), texture="stripes",
                  amplitude=0.12),
}
TRAIN_STYLES = ["classic", "navy", "moss", "slate"]
TEST_STYLES = ["sand", "rose", "teal"]

_FLOOR_MAX = 0.33  # MiniGrid's floor is black (0) or highlighted grey (76/255 = 0.30); everything else is brighter


def check_styles(names, what: str) -> list[str]:
    """``names`` if every one is a style of :data:`STYLES`; else one line naming ``what`` (e.g. "config key
    'env.test_styles'", "--styles") and the known styles."""
    names = list(names)
    bad = [n for n in names if n not in STYLES]
    if bad:
        raise LeancnnError(f"{what}: unknown style {', '.join(map(repr, bad))}; known: {', '.join(STYLES)}")
    if not names:
        raise LeancnnError(f"{what} names no style")
    return names


def texture(style: Style, height: int, width: int, name: str = "") -> np.ndarray:
    """The style's floor texture, an ``(H, W, 1)`` pattern in [-1, 1] fixed per style (egocentric: it moves with
    the agent's view, as a background does)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    if style.texture == "none":
        t = np.zeros((height, width), np.float32)
    elif style.texture == "stripes":
        t = np.sin(2 * np.pi * (x + y) / 6.0)
    elif style.texture == "checks":
        t = np.where(((x // 4) + (y // 4)) % 2 == 0, 1.0, -1.0).astype(np.float32)
    elif style.texture == "noise":
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        t = rng.uniform(-1, 1, (height, width)).astype(np.float32)
    else:
        raise ValueError(f"unknown texture {style.texture!r}")
    return t[..., None]


def apply_style(frame: np.ndarray, style: Style, tex: np.ndarray | None = None) -> np.ndarray:
    """Re-style one MiniGrid RGB frame (``uint8``, H x W x 3) and return ``uint8``."""
    img = frame.astype(np.float32) / 255.0
    lum = img.max(axis=-1, keepdims=True)
    floor = lum < _FLOOR_MAX
    if tex is None:
        tex = texture(style, *frame.shape[:2])
    colour = np.asarray(style.floor, np.float32)
    floor_px = colour + (1.0 - colour) * lum + style.amplitude * tex  # seen floor: MiniGrid's highlight (30% white)
    obj_px = img * np.asarray(style.gain, np.float32) + np.asarray(style.offset, np.float32)
    out = np.where(floor, floor_px, obj_px)
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def env_ids() -> list[str]:
    return sorted(k for k in gym.registry if k.startswith("MiniGrid-"))


class StyledPixels(gym.ObservationWrapper):
    """A MiniGrid env observed as its egocentric RGB view in one of ``styles`` (drawn per episode from this
    wrapper's own stream; ``reset(options={"style": name})`` picks one). ``info["style"]`` names it."""

    def __init__(self, env, styles: list[str], tile_size: int = 4, seed: int = 0):
        super().__init__(env)
        from gymnasium import spaces
        from minigrid.minigrid_env import MiniGridEnv

        if not isinstance(env.unwrapped, MiniGridEnv):
            raise LeancnnError(f"{env.unwrapped} is not a MiniGrid environment")
        self.styles = check_styles(styles, "styles")
        self.tile_size = int(tile_size)
        n = env.unwrapped.agent_view_size * self.tile_size
        self.observation_space = spaces.Box(0, 255, (n, n, 3), np.uint8)
        self.textures = {s: texture(STYLES[s], n, n, s) for s in self.styles}
        self.rng = np.random.default_rng(seed)
        self.style = self.styles[0]

    def reset(self, *, seed=None, options=None):
        options = dict(options or {})
        forced = options.pop("style", None)
        if forced is not None and forced not in self.styles:
            raise LeancnnError(f"style {forced!r} is not one of this env's styles ({', '.join(self.styles)})")
        self.style = forced or self.styles[int(self.rng.integers(len(self.styles)))]
        obs, info = self.env.reset(seed=seed, options=options or None)
        return self.observation(obs), {**info, "style": self.style}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self.observation(obs), reward, terminated, truncated, {**info, "style": self.style}

    def observation(self, obs):
        frame = self.env.unwrapped.get_frame(tile_size=self.tile_size, agent_pov=True)
        return apply_style(frame, STYLES[self.style], self.textures[self.style])

    # exact resume: the env below (level, agent, its random stream, the episode's statistics) and our stream
    def get_state(self) -> bytes:
        return pickle.dumps({"env": self.env, "rng": self.rng.bit_generator.state, "style": self.style})

    def set_state(self, blob: bytes) -> None:
        state = pickle.loads(blob)
        self.env = state["env"]
        self.rng.bit_generator.state = state["rng"]
        self.style = state["style"]


def make_env(env_id: str, styles: list[str], tile_size: int = 4, seed: int = 0, monitor: bool = True):
    """``env_id`` (a MiniGrid id) -> [Monitor] -> :class:`StyledPixels`. One clear line for an unknown id."""
    if env_id not in gym.registry:
        ids = env_ids()
        close = [i for i in ids if env_id.lower().split("-v")[0] in i.lower()] or ids[:12]
        raise LeancnnError(f"config key 'env.id': unknown environment {env_id!r}; MiniGrid ids include: "
                           f"{', '.join(close)}")
    env = gym.make(env_id)
    if monitor:
        from stable_baselines3.common.monitor import Monitor

        env = Monitor(env)
    return StyledPixels(env, styles, tile_size, seed)
