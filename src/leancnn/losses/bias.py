"""Bias Loss (Abrahamyan et al., "Bias Loss for Mobile Neural Networks", ICCV 2021).

Each sample's cross-entropy is scaled by ``z = exp(alpha * v_hat) - beta``, where ``v_hat`` is the
min-max-normalised (within the batch) unbiased variance of the sample's last convolutional feature map over
all C·H·W values. Samples with low feature diversity ("random predictions") get less weight: with the
defaults alpha = beta = 0.3, z runs from 0.70 (v_hat = 0) to 1.05 (v_hat = 1). The weights carry no gradient.

Reproduction options (not defaults) for the reference code at github.com/lusinlu/bias-loss-skipblocknet:

* ``normalisation="global"``: v_hat = (v - g) / (max_b v - min_b v) with g the all-time minimum variance
  (the reference's default; can exceed 1). Unlike the reference, g is a buffer saved in the state dict.
* ``weight_form="legacy"``: the pre-2022 form z = exp(beta * v_hat) - 1 + alpha (0.30 … 0.65 at 0.3/0.3).

Degenerate cases never give NaN:

* a batch whose finite variances all coincide (relative spread < ``eps``), or that has fewer than two
  finite variances (e.g. one sample): no diversity information, so every weight is 1 (plain cross-entropy);
* a sample whose features are NaN/inf (non-finite variance): v_hat = 0 (the lowest weight) and it is left out
  of the batch min/max; its cross-entropy is whatever the logits give.

Under DDP (``torch.distributed`` initialised) the batch min/max are all-reduced over the processes by default
(``sync=True``), so the normalisation is that of the global batch, as on one process.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def feature_variance(features: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of each sample's feature map over all C·H·W values, in float32, detached: ``[B]``."""
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"features must be a tensor, got {type(features).__name__}")
    if features.ndim < 3:
        raise ValueError(f"features must be a feature map [B, C, H, W] (or [B, C, *spatial]) with spatial "
                         f"dimensions, got shape {tuple(features.shape)}")
    flat = features.detach().float().flatten(1)
    if flat.shape[1] < 2:
        raise ValueError(f"features must have at least 2 values per sample to have a variance, got shape "
                         f"{tuple(features.shape)}")
    return flat.var(dim=1, unbiased=True)


def _min_weight(alpha: float, beta: float, form: str, unbounded: bool) -> float:
    """The smallest weight z over the range of v_hat ([0, 1], or [0, inf) for global normalisation)."""
    if form == "paper":  # exp(alpha v) - beta
        low = 0.0 if (alpha < 0 and unbounded) else min(1.0, math.exp(alpha))
        return low - beta
    low = 0.0 if (beta < 0 and unbounded) else min(1.0, math.exp(beta))  # exp(beta v) - 1 + alpha
    return low - 1.0 + alpha


class BiasLoss(nn.Module):
    """Cross-entropy weighted per sample by the diversity of its features.

    ``loss(logits [B, K], targets [B] class indices, features=[B, C, H, W])``. Also accumulates, per epoch,
    how many samples are "low diversity" (v_hat < ``low_threshold``) and how accurate they are compared with
    the rest: see :meth:`epoch_counters` / :meth:`summarise`.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.3, normalisation: str = "local",
                 weight_form: str = "paper", label_smoothing: float = 0.0, eps: float = 1e-6,
                 low_threshold: float = 0.1, sync: bool = True):
        super().__init__()
        if normalisation not in ("local", "global"):
            raise ValueError(f"normalisation must be 'local' (the paper's min-max) or 'global' (reference code), "
                             f"got {normalisation!r}")
        if weight_form not in ("paper", "legacy"):
            raise ValueError(f"weight_form must be 'paper' (exp(alpha v) - beta) or 'legacy' "
                             f"(exp(beta v) - 1 + alpha), got {weight_form!r}")
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        lowest = _min_weight(alpha, beta, weight_form, unbounded=normalisation == "global")
        if lowest <= 0:
            formula = "exp(alpha*v) - beta" if weight_form == "paper" else "exp(beta*v) - 1 + alpha"
            raise ValueError(f"alpha={alpha}, beta={beta} make weights <= 0: z = {formula} falls to {lowest:.4g} "
                             f"on the range of v_hat; choose alpha/beta that keep z > 0")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.normalisation, self.weight_form = normalisation, weight_form
        self.label_smoothing, self.eps, self.low_threshold, self.sync = label_smoothing, eps, low_threshold, sync
        self.register_buffer("global_min", torch.tensor(math.inf))
        self._counters = torch.zeros(5, dtype=torch.float64)  # n, n_low, correct_low, correct_rest, sum_z
        self.last: dict = {}  # the last batch: variance, v_hat, weight, degenerate (for inspection and tests)

    # ------------------------------------------------------------------------------------- pieces

    def weight(self, v_hat: torch.Tensor) -> torch.Tensor:
        """z(v_hat) for the configured form."""
        if self.weight_form == "paper":
            return torch.exp(self.alpha * v_hat) - self.beta
        return torch.exp(self.beta * v_hat) - 1.0 + self.alpha

    def _batch_range(self, v: torch.Tensor, finite: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(min, max, number of finite variances) over the batch, all-reduced under DDP."""
        inf = torch.tensor(math.inf, device=v.device)
        vmin = torch.where(finite, v, inf).min() if v.numel() else inf
        vmax = torch.where(finite, v, -inf).max() if v.numel() else -inf
        count = finite.sum().float()
        if self.sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.stack([vmin, -vmax])
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            dist.all_reduce(count)
            vmin, vmax = t[0], -t[1]
        return vmin, vmax, count

    @torch.no_grad()
    def normalised_variance(self, features: torch.Tensor) -> torch.Tensor:
        """v_hat per sample (detached, never NaN). For a degenerate batch it is all zeros and
        ``self.last["degenerate"]`` is true (:meth:`forward` then uses weight 1)."""
        v = feature_variance(features)
        finite = torch.isfinite(v)
        vmin, vmax, count = self._batch_range(v, finite)
        spread = vmax - vmin
        degenerate = bool(count < 2) or not bool(spread > self.eps * vmax.abs())
        if self.normalisation == "global" and bool(count > 0):
            self.global_min = torch.minimum(self.global_min.to(vmin), vmin)
        if degenerate:
            v_hat = torch.zeros_like(v)
        else:
            low = self.global_min if self.normalisation == "global" else vmin
            v_hat = torch.where(finite, (v - low) / spread, torch.zeros_like(v))
        self.last = {"variance": v, "v_hat": v_hat, "degenerate": degenerate}
        return v_hat

    def reset_global_min(self) -> None:
        self.global_min.fill_(math.inf)

    # ------------------------------------------------------------------------------------- loss

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2:
            raise ValueError(f"logits must be [B, num_classes], got shape {tuple(logits.shape)}")
        if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
            raise ValueError(f"targets must be class indices of shape [{logits.shape[0]}] to match logits "
                             f"{tuple(logits.shape)}, got shape {tuple(targets.shape)}")
        if targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
            raise ValueError(f"targets must lie in [0, {logits.shape[1] - 1}], got values in "
                             f"[{int(targets.min())}, {int(targets.max())}]")
        if not isinstance(features, torch.Tensor) or features.shape[:1] != logits.shape[:1]:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"features must have the batch size of logits ({logits.shape[0]}), got {shape}")
        v_hat = self.normalised_variance(features)
        z = torch.ones_like(v_hat) if self.last["degenerate"] else self.weight(v_hat)
        ce = F.cross_entropy(logits.float(), targets, reduction="none", label_smoothing=self.label_smoothing)
        self.last["weight"] = z
        self._count(logits, targets, v_hat, z)
        return (z.to(ce) * ce).mean()

    # ------------------------------------------------------------------------------------- diagnostics

    @torch.no_grad()
    def _count(self, logits, targets, v_hat, z) -> None:
        correct = logits.argmax(1) == targets
        low = v_hat < self.low_threshold if not self.last["degenerate"] else torch.zeros_like(correct)
        stats = torch.stack([torch.ones_like(z).sum(), low.sum(), (correct & low).sum(), (correct & ~low).sum(),
                             z.sum()]).double()  # stays on the device: no synchronisation per step
        self._counters = self._counters.to(stats.device) + stats

    def epoch_counters(self) -> list[float]:
        """Raw sums since the last call (the engine sums them over DDP ranks), then reset."""
        out = self._counters.tolist()
        self._counters.zero_()
        return out

    def summarise(self, counters: list[float]) -> dict[str, float]:
        """Per-epoch diagnostics from (summed) counters: share of low-diversity samples, their accuracy vs the
        rest, and the mean weight."""
        n, n_low, c_low, c_rest, sum_z = counters
        nan = float("nan")
        return {"bias_low_share": n_low / n if n else nan,
                "bias_low_acc": c_low / n_low if n_low else nan,
                "bias_rest_acc": c_rest / (n - n_low) if n > n_low else nan,
                "bias_mean_weight": sum_z / n if n else nan}

    @staticmethod
    def describe(record: dict) -> str:
        """The diagnostics of :meth:`summarise` for the engine's epoch line."""
        if "bias_low_share" not in record:
            return ""
        return (f"low-diversity {100 * record['bias_low_share']:.1f}% (acc {record['bias_low_acc']:.3f} vs "
                f"{record['bias_rest_acc']:.3f}, mean weight {record['bias_mean_weight']:.3f})")
