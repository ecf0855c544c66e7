"""A search space as data: named parameters with their domains, some active only when an earlier one allows.

A :class:`SearchSpace` is an ordered tuple of :class:`Param` s. A point of the space is a plain ``dict`` ``{name:
value}`` holding exactly the *active* parameters: a parameter with ``when=("b2_depth", 1)`` is active only when the
point's ``b2_depth`` is greater than 1 (so the second layer of stage 2 has variables only when the stage has two
layers). Points are what a study stores (Optuna's trial params), what a report prints and what a decoder (e.g.
:func:`leancnn.search.movinet_space.decode`) turns into a model.

* :meth:`SearchSpace.suggest` draws a point through an Optuna trial (``trial.suggest_*``; any sampler: TPE, NSGA-II,
  random, or a fixed point given with ``study.enqueue_trial``);
* :meth:`SearchSpace.sample` draws one with a numpy generator, without Optuna (tests, random baselines);
* :meth:`SearchSpace.check` refuses a point that is not in the space with one line naming the key;
* :meth:`SearchSpace.to_dict` / :meth:`SearchSpace.from_dict` / :meth:`SearchSpace.fingerprint`: the space is
  stored with a study, so a resumed or shared study refuses a different space.

This module imports nothing of leancnn's but the error type (models and tasks build their spaces on it).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import LeancnnError

KINDS = ("categorical", "int", "float")


@dataclass(frozen=True)
class Param:
    """One variable. ``categorical``: ``choices`` (str, int, float, bool or None values); ``int``: ``low``..``high``
    inclusive, on the grid ``low + k * step``; ``float``: ``[low, high]`` (``log`` for a log-uniform prior; ``step``
    for a grid). ``when=(name, k)``: active only while parameter ``name`` (declared earlier) is > ``k``."""

    name: str
    kind: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    when: tuple[str, int] | None = None
    help: str = ""

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise LeancnnError(f"a search parameter needs a non-empty name, got {self.name!r}")
        if self.kind not in KINDS:
            raise LeancnnError(f"parameter {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "categorical":
            if not self.choices:
                raise LeancnnError(f"parameter {self.name!r}: a categorical parameter needs choices")
            object.__setattr__(self, "choices", tuple(self.choices))
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise LeancnnError(f"parameter {self.name!r}: repeated choices {list(self.choices)}")
        else:
            if self.low is None or self.high is None or not self.low <= self.high:
                raise LeancnnError(f"parameter {self.name!r}: needs low <= high, got {self.low}, {self.high}")
            if self.kind == "int":
                step = 1 if self.step is None else self.step
                if int(self.low) != self.low or int(self.high) != self.high or int(step) != step or step < 1:
                    raise LeancnnError(f"parameter {self.name!r}: an int parameter needs integer low, high and step")
                if (self.high - self.low) % step:
                    raise LeancnnError(f"parameter {self.name!r}: high - low ({self.high} - {self.low}) is not a "
                                       f"multiple of step {step}")
                object.__setattr__(self, "step", int(step))
            if self.log and (self.low <= 0 or self.step not in (None, 1) and self.kind == "float"):
                raise LeancnnError(f"parameter {self.name!r}: log needs low > 0 and no step")
        if self.when is not None:
            if len(self.when) != 2 or not isinstance(self.when[0], str):
                raise LeancnnError(f"parameter {self.name!r}: when must be (parameter name, threshold)")
            object.__setattr__(self, "when", (self.when[0], int(self.when[1])))

    def values(self) -> list:
        """Every value of a categorical or int parameter (a float one has no finite list)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, self.step))
        raise LeancnnError(f"parameter {self.name!r} is continuous")

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return any(type(value) is type(c) and value == c for c in self.choices) or \
                (value is None and None in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            return False
        if not (self.low <= value <= self.high) or not math.isfinite(value):
            return False
        if self.kind == "int":
            return int(value) == value and (int(value) - int(self.low)) % self.step == 0
        if self.step:
            k = (value - self.low) / self.step
            return abs(k - round(k)) < 1e-9
        return True

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=self.step, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def draw(self, rng: np.random.Generator) -> Any:
        if self.kind == "categorical":
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.kind == "int":
            return int(self.low) + self.step * int(rng.integers((int(self.high) - int(self.low)) // self.step + 1))
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        if self.step:
            return float(self.low + self.step * int(rng.integers(round((self.high - self.low) / self.step) + 1)))
        return float(rng.uniform(self.low, self.high))

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind}
        if self.kind == "categorical":
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high, step=self.step, log=self.log)
        if self.when:
            d["when"] = list(self.when)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Param":
        d = dict(d)
        if "choices" in d:
            d["choices"] = tuple(d["choices"])
        if d.get("when"):
            d["when"] = tuple(d["when"])
        return cls(**d)


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of :class:`Param` (see the module docstring)."""

    name: str
    params: tuple[Param, ...] = field(default_factory=tuple)

    def __post_init__(self):
        object.__setattr__(self, "params", tuple(self.params))
        seen: set[str] = set()
        for p in self.params:
            if p.name in seen:
                raise LeancnnError(f"search space {self.name!r}: parameter {p.name!r} declared twice")
            if p.when is not None and p.when[0] not in seen:
                raise LeancnnError(f"search space {self.name!r}: {p.name!r} depends on {p.when[0]!r}, which must be "
                                   "declared before it")
            seen.add(p.name)

    def __len__(self) -> int:
        return len(self.params)

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def _active(self, p: Param, point: dict) -> bool:
        return p.when is None or (p.when[0] in point and point[p.when[0]] > p.when[1])

    def active(self, point: dict) -> list[Param]:
        """The parameters that a point with these values has (in declaration order)."""
        out, seen = [], {}
        for p in self.params:
            if self._active(p, seen):
                out.append(p)
                if p.name in point:
                    seen[p.name] = point[p.name]
        return out

    def suggest(self, trial) -> dict:
        """A point drawn through an Optuna trial (only active parameters are suggested)."""
        point: dict = {}
        for p in self.params:
            if self._active(p, point):
                point[p.name] = p.suggest(trial)
        return point

    def sample(self, rng: np.random.Generator | int | None = None) -> dict:
        """A point drawn uniformly per parameter with numpy (no Optuna)."""
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        point: dict = {}
        for p in self.params:
            if self._active(p, point):
                point[p.name] = p.draw(rng)
        return point

    def check(self, point: dict, what: str = "point") -> dict:
        """``point`` if it is in the space; otherwise one line naming the first wrong key."""
        if not isinstance(point, dict):
            raise LeancnnError(f"{what} must be a dict of parameter values, got {type(point).__name__}")
        active = self.active(point)
        names = {p.name for p in active}
        for p in active:
            if p.name not in point:
                raise LeancnnError(f"{what} of search space {self.name!r}: missing parameter {p.name!r}")
            if not p.contains(point[p.name]):
                dom = (f"one of {list(p.choices)}" if p.kind == "categorical" else
                       f"[{p.low:g}, {p.high:g}]" + (f" in steps of {p.step:g}" if p.step else ""))
                raise LeancnnError(f"{what} of search space {self.name!r}: {p.name}={point[p.name]!r} is outside "
                                   f"its domain ({dom})")
        extra = [k for k in point if k not in names]
        if extra:
            known = set(self.names)
            why = ("inactive for these values" if all(k in known for k in extra) else
                   f"not parameters of the space (known: {', '.join(self.names[:6])}, ...)")
            raise LeancnnError(f"{what} of search space {self.name!r}: {', '.join(map(repr, extra[:4]))} "
                               f"{'is' if len(extra) == 1 else 'are'} {why}")
        return point

    def size(self) -> float:
        """The number of points (inf with a continuous parameter); conditional parameters counted as if always
        active (an upper bound)."""
        n = 1.0
        for p in self.params:
            if p.kind == "float" and not p.step:
                return math.inf
            n *= len(p.values()) if p.kind != "float" else round((p.high - p.low) / p.step) + 1
        return n

    def to_dict(self) -> dict:
        return {"name": self.name, "params": [p.to_dict() for p in self.params]}

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSpace":
        return cls(d["name"], tuple(Param.from_dict(p) for p in d["params"]))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def categorical(name: str, choices: Sequence, when=None, help: str = "") -> Param:
    return Param(name, "categorical", tuple(choices), when=when, help=help)


def integer(name: str, low: int, high: int, step: int = 1, when=None, help: str = "") -> Param:
    return Param(name, "int", low=low, high=high, step=step, when=when, help=help)


def real(name: str, low: float, high: float, step: float | None = None, log: bool = False, when=None,
         help: str = "") -> Param:
    return Param(name, "float", low=low, high=high, step=step, log=log, when=when, help=help)


__all__ = ["KINDS", "Param", "SearchSpace", "categorical", "integer", "real"]
