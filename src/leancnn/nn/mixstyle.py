"""MixStyle (Zhou et al., "Domain Generalization with MixStyle", ICLR 2021; IJCV 2023).

With probability ``p`` per batch, each sample's per-channel spatial mean and std (detached) are replaced by a
Beta(alpha, alpha) mix with those of a partner sample, creating new feature "styles". Partners come from a
random permutation (``mix="random"``) or, for a batch laid out as [domain A | domain B], from the other half
(``mix="crossdomain"``). Identity in eval mode and when deactivated; no parameters.

Fixes of the reference code's pitfalls (Dassl ``ops/mixstyle.py``):

* batch of 1: returned unchanged (there is no partner); odd batches in crossdomain mode: every partner still
  comes from the other half (the larger half reuses partners of the smaller one);
* 1×1 feature maps: the variance of one value is taken as 0 (the reference's unbiased variance gives NaN);
* fp16/bf16 inputs: statistics and mixing in float32, output in the input's dtype (the reference leaves λ in
  float32 and promotes the output); channels_last inputs stay channels_last;
* randomness (the p coin, λ, the permutation) comes from a seedable ``torch.Generator``: same seed, same output.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

MIX_MODES = ("random", "crossdomain")


class MixStyle(nn.Module):
    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6, mix: str = "random",
                 generator: torch.Generator | None = None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0 (Beta(alpha, alpha)), got {alpha}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.p, self.alpha, self.eps = float(p), float(alpha), float(eps)
        self.set_mix(mix)
        self.active = True
        self.last_draw: dict = {}  # λ, partners and statistics of the last mixed batch (for inspection)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def set_mix(self, mix: str) -> None:
        if mix not in MIX_MODES:
            raise ValueError(f"unknown mix mode {mix!r}; choose from: {', '.join(MIX_MODES)}")
        self.mix = mix

    def extra_repr(self) -> str:
        return f"p={self.p}, alpha={self.alpha}, eps={self.eps}, mix={self.mix!r}, active={self.active}"

    def partners(self, batch: int) -> torch.Tensor:
        """Index of each sample's partner (drawn from :attr:`generator`)."""
        g = self.generator
        if self.mix == "random":
            return torch.randperm(batch, generator=g)
        half = batch // 2
        first, second = torch.arange(half), torch.arange(half, batch)
        perm = torch.empty(batch, dtype=torch.long)
        perm[:half] = second[torch.randperm(len(second), generator=g)[:half]]
        extra = torch.randint(half, (len(second) - half,), generator=g)  # odd batch: one partner reused
        pool = torch.cat([torch.randperm(half, generator=g), extra])
        perm[half:] = first[pool[torch.randperm(len(second), generator=g)]]
        return perm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.active) or x.shape[0] < 2:
            return x
        if torch.rand(1, generator=self.generator).item() > self.p:
            return x
        if x.ndim < 3:
            raise ValueError(f"MixStyle needs a feature map [B, C, *spatial], got shape {tuple(x.shape)}")
        batch = x.shape[0]
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator))
        lam = torch.from_numpy(np.random.default_rng(seed).beta(self.alpha, self.alpha, batch)).float()
        perm = self.partners(batch).to(x.device)
        dims = tuple(range(2, x.ndim))
        xf = x.float()
        mu = xf.mean(dims, keepdim=True).detach()
        n = int(np.prod([x.shape[d] for d in dims]))
        var = xf.var(dims, keepdim=True, unbiased=True) if n > 1 else torch.zeros_like(mu)
        sig = (var.detach() + self.eps).sqrt()
        lam = lam.to(x.device).view(batch, *([1] * (x.ndim - 1)))
        mu_mix = lam * mu + (1 - lam) * mu[perm]
        sig_mix = lam * sig + (1 - lam) * sig[perm]
        out = (xf - mu) / sig * sig_mix + mu_mix
        self.last_draw = {"lam": lam.flatten(), "perm": perm, "mu_mix": mu_mix, "sig_mix": sig_mix, "sig": sig}
        fmt = torch.channels_last if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous() else torch.contiguous_format
        return out.to(x.dtype).contiguous(memory_format=fmt)


# ----------------------------------------------------------------------------------------- control API


def mixstyle_modules(model: nn.Module) -> list[MixStyle]:
    return [m for m in model.modules() if isinstance(m, MixStyle)]


def activate_mixstyle(model: nn.Module) -> None:
    for m in mixstyle_modules(model):
        m.active = True


def deactivate_mixstyle(model: nn.Module) -> None:
    for m in mixstyle_modules(model):
        m.active = False


def set_mixstyle_mode(model: nn.Module, mix: str) -> None:
    for m in mixstyle_modules(model):
        m.set_mix(mix)


@contextlib.contextmanager
def _restoring(model: nn.Module) -> Iterator[list[MixStyle]]:
    modules = mixstyle_modules(model)
    saved = [(m.active, m.mix) for m in modules]
    try:
        yield modules
    finally:
        for m, (active, mix) in zip(modules, saved):
            m.active, m.mix = active, mix


@contextlib.contextmanager
def with_mixstyle(model: nn.Module, mix: str | None = None) -> Iterator[None]:
    """MixStyle on (in mode ``mix`` if given) inside the block; every module's previous state restored after."""
    if mix is not None and mix not in MIX_MODES:
        raise ValueError(f"unknown mix mode {mix!r}; choose from: {', '.join(MIX_MODES)}")
    with _restoring(model) as modules:
        for m in modules:
            m.active = True
            if mix is not None:
                m.mix = mix
        yield


@contextlib.contextmanager
def without_mixstyle(model: nn.Module) -> Iterator[None]:
    """MixStyle off inside the block; every module's previous state restored after."""
    with _restoring(model) as modules:
        for m in modules:
            m.active = False
        yield


class _ApplyAfter:
    """Forward hook that passes a module's output through a MixStyle. An object (not a closure), so that
    ``copy.deepcopy`` of the model gives a copy whose hook calls the copy's own MixStyle."""

    def __init__(self, ms: MixStyle):
        self.ms = ms

    def __call__(self, module: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
        return self.ms(out)


def insert_mixstyle(model: nn.Module, after: Sequence[str], p: float = 0.5, alpha: float = 0.1,
                    mix: str = "random", seed: int = 0) -> list[MixStyle]:
    """Apply a MixStyle to the output of each named module of ``model`` (forward hooks; the state dict is
    unchanged). The MixStyle modules are registered under ``model.mixstyle`` so ``train()``/``eval()`` reach
    them; each draws from its own generator seeded by ``seed`` and its position."""
    modules = dict(model.named_modules())
    bad = [name for name in after if name not in modules or not name]
    if bad:
        valid = ", ".join(n for n in modules if n and n.count(".") <= 1)
        raise ValueError(f"cannot insert MixStyle after {', '.join(map(repr, bad))}: not a module of "
                         f"{type(model).__name__}; valid names include: {valid}")
    if hasattr(model, "mixstyle"):
        raise ValueError(f"{type(model).__name__} already has MixStyle inserted")
    layers = nn.ModuleDict()
    for i, name in enumerate(after):
        ms = MixStyle(p, alpha, mix=mix, generator=torch.Generator().manual_seed(seed * 1000 + i))
        layers[name.replace(".", "__")] = ms
        modules[name].register_forward_hook(_ApplyAfter(ms))
    layers.train(model.training)  # a model already in eval mode must not start mixing
    model.mixstyle = layers
    return list(layers.values())
