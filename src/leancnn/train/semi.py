"""FixMatch-style training with MixStyle for semi-supervised DG and unsupervised domain adaptation
(Zhou et al., IJCV 2023, ``SemiMixStyle`` in mixstyle-release).

Each step takes a labelled batch ``x_l, y_l`` and an unlabelled batch ``x_u`` of the same size:

1. pseudo-labels: the weakly augmented batch ``[x_l ; x_u]`` goes through the model with MixStyle **off**
   (no gradient; the model stays in train mode, as in the reference, so BatchNorm statistics see it too);
   ``mask = max softmax >= threshold`` (0.95). As in the reference, the labelled half gets pseudo-labels too.
2. supervised loss: cross-entropy on the weakly augmented labelled batch (MixStyle off, or ``random`` with
   ``mixstyle_labeled``);
3. unsupervised loss: the strongly augmented batch ``[x_l ; x_u]`` with MixStyle in ``crossdomain`` mode, so
   every labelled sample takes the style of an unlabelled one and vice versa; masked cross-entropy against
   the pseudo-labels, averaged over all 2B samples;
4. ``loss = loss_x + weight_u * loss_u``.

An epoch is one pass over the unlabelled loader; the labelled loader is cycled (reshuffled each round).
The two losses are back-propagated one after the other (same gradient as their sum), which keeps DDP's
one-forward-per-backward rule. Extra per-epoch metrics: ``semi_mask_rate`` (share of unlabelled samples above
the threshold), ``semi_pseudo_acc`` (accuracy of those confident pseudo-labels against the true labels, which
are only read for this diagnostic; ``None`` when no unlabelled sample passed the threshold, as an accuracy of
nothing is not 0), ``loss_x`` and ``loss_u``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.augment import strong_augment, weak_augment
from ..errors import LeancnnError
from ..nn.mixstyle import with_mixstyle, without_mixstyle
from .distributed import reduce_sum
from .engine import Trainer, progress_enabled


@dataclass
class SemiTrainer(Trainer):
    unlabeled_loader: DataLoader | None = None
    threshold: float = 0.95
    weight_u: float = 1.0
    mixstyle_labeled: bool = False
    weak: Callable[[torch.Tensor], torch.Tensor] = weak_augment
    strong: Callable[[torch.Tensor], torch.Tensor] = field(default=strong_augment)

    def __post_init__(self):
        super().__post_init__()
        if self.unlabeled_loader is None:
            raise LeancnnError("semi-supervised training needs an unlabelled loader")
        if self.use_features:
            raise LeancnnError("semi-supervised training uses cross-entropy; set loss.name=ce")
        if not 0.0 <= self.threshold <= 1.0:
            raise LeancnnError(f"config key 'semi.threshold' must be in [0, 1], got {self.threshold}")
        if self.weight_u < 0:
            raise LeancnnError(f"config key 'semi.weight_u' must be >= 0, got {self.weight_u}")

    def _mix(self, mix: str | None):
        """MixStyle in ``mix`` mode (None: off) for the block (a no-op for a model without MixStyle)."""
        return without_mixstyle(self.model) if mix is None else with_mixstyle(self.model, mix=mix)

    def _labeled_batches(self):
        """Cycle the labelled loader; each new round gets a new shuffle."""
        sampler = getattr(self.train_loader, "sampler", None)
        rounds = 0
        while True:
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch * 100_000 + rounds)
            empty = True
            for batch in self.train_loader:
                empty = False
                yield batch
            if empty:
                raise LeancnnError("the labelled training set gives no batch; lower data.batch_size")
            rounds += 1

    def train_one_epoch(self) -> dict[str, float | None]:
        self.net.train()
        u_sampler = getattr(self.unlabeled_loader, "sampler", None)
        if hasattr(u_sampler, "set_epoch"):
            u_sampler.set_epoch(self.epoch)
        labeled = self._labeled_batches()
        sums = torch.zeros(8, dtype=torch.float64)  # loss, loss_x, loss_u, correct_x, n_x, masked, right, n_u
        start = time.perf_counter()
        bar = tqdm(self.unlabeled_loader, desc=f"epoch {self.epoch + 1}/{self.epochs}", leave=False,
                   disable=not progress_enabled(self.dist))
        dev, amp = self.device, self.amp
        for batch_u in bar:
            batch_l = next(labeled)
            x_l, y_l = self.to_device(batch_l[0]), batch_l[1].to(dev, non_blocking=True)
            x_u, y_u = self.to_device(batch_u[0]), batch_u[1].to(dev, non_blocking=True)
            n_l, n_u = len(y_l), len(y_u)
            xw_l, xw_u = self.weak(x_l), self.weak(x_u)
            with torch.no_grad(), self._mix(None), torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
                probs = self.net(torch.cat([xw_l, xw_u])).float().softmax(1)
            conf, pseudo = probs.max(1)
            mask = (conf >= self.threshold).float()

            self.optimizer.zero_grad(set_to_none=True)
            with self._mix("random" if self.mixstyle_labeled else None), \
                    torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
                logits_x = self.net(xw_l)
                loss_x = self.loss_fn(logits_x, y_l)
            self.scaler.scale(loss_x).backward()
            loss_u = torch.zeros((), device=dev)
            if self.weight_u > 0:
                xs = torch.cat([self.strong(x_l), self.strong(x_u)])
                # [labelled | unlabelled] halves: crossdomain mode makes every partner come from the other half
                with self._mix("crossdomain"), torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
                    logits_s = self.net(xs)
                    loss_u = (F.cross_entropy(logits_s.float(), pseudo, reduction="none") * mask).mean()
                self.scaler.scale(self.weight_u * loss_u).backward()
            loss = loss_x.detach() + self.weight_u * loss_u.detach()
            if not torch.isfinite(loss):
                raise LeancnnError(f"loss became {loss.item()} in epoch {self.epoch + 1}; "
                                   "lower optim.lr or set train.grad_clip")
            self.optimizer_step()
            m_u = mask[n_l:]
            sums += torch.tensor([loss.item() * n_l, loss_x.item() * n_l, loss_u.item() * n_l,
                                  (logits_x.detach().argmax(1) == y_l).sum().item(), n_l, m_u.sum().item(),
                                  ((pseudo[n_l:] == y_u).float() * m_u).sum().item(), n_u], dtype=torch.float64)
            bar.set_postfix(loss=f"{sums[0] / sums[4]:.4f}", mask=f"{sums[5] / sums[7]:.2f}")
        seconds = time.perf_counter() - start
        s = reduce_sum(sums.tolist(), self.dist, self.device)
        n_x, n_u = max(s[4], 1), max(s[7], 1)
        pseudo_acc = s[6] / s[5] if s[5] > 0 else None  # no confident pseudo-label: no accuracy to report
        return {"train_loss": s[0] / n_x, "train_acc": s[3] / n_x, "loss_x": s[1] / n_x, "loss_u": s[2] / n_x,
                "semi_mask_rate": s[5] / n_u, "semi_pseudo_acc": pseudo_acc,
                "train_images_per_s": (s[4] + s[7]) / seconds, "train_seconds": seconds}
