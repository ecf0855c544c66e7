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

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.augment import strong_augment, weak_augment
from ..errors import LeancnnError
from ..nn.mixstyle import with_mixstyle, without_mixstyle
from .classification import ClassifyTask, accepts_features


class SemiTask(ClassifyTask):
    """The engine task of FixMatch + MixStyle training (see the module docstring)."""

    def __init__(self, loss: Callable, unlabeled_loader: DataLoader, threshold: float = 0.95, weight_u: float = 1.0,
                 mixstyle_labeled: bool = False, weak: Callable = weak_augment, strong: Callable = strong_augment):
        if accepts_features(loss):
            raise LeancnnError("semi-supervised training uses cross-entropy; set loss.name=ce")
        if unlabeled_loader is None:
            raise LeancnnError("semi-supervised training needs an unlabelled loader")
        if not 0.0 <= threshold <= 1.0:
            raise LeancnnError(f"config key 'semi.threshold' must be in [0, 1], got {threshold}")
        if weight_u < 0:
            raise LeancnnError(f"config key 'semi.weight_u' must be >= 0, got {weight_u}")
        super().__init__(loss)  # the loss on the device and in every checkpoint; ClassifyTask's evaluation
        self.unlabeled_loader, self.threshold, self.weight_u = unlabeled_loader, threshold, weight_u
        self.mixstyle_labeled, self.weak, self.strong = mixstyle_labeled, weak, strong

    @staticmethod
    def _mix(model, mix: str | None):
        """MixStyle in ``mix`` mode (None: off) for the block (a no-op for a model without MixStyle)."""
        return without_mixstyle(model) if mix is None else with_mixstyle(model, mix=mix)

    @staticmethod
    def _labeled_batches(trainer):
        """Cycle the labelled loader; each new round gets a new shuffle."""
        sampler = getattr(trainer.train_loader, "sampler", None)
        rounds = 0
        while True:
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(trainer.epoch * 100_000 + rounds)
            empty = True
            for batch in trainer.train_loader:
                empty = False
                yield batch
            if empty:
                raise LeancnnError("the labelled training set gives no batch; lower data.batch_size")
            rounds += 1

    def batches(self, trainer):
        """One pass over the unlabelled loader, each batch paired with the next labelled one."""
        u_sampler = getattr(self.unlabeled_loader, "sampler", None)
        if hasattr(u_sampler, "set_epoch"):
            u_sampler.set_epoch(trainer.epoch)
        labeled = self._labeled_batches(trainer)
        for batch_u in self.unlabeled_loader:
            yield next(labeled), batch_u

    def num_batches(self, trainer):
        return len(self.unlabeled_loader)

    def train_step(self, trainer, batch):
        batch_l, batch_u = batch
        dev, amp, model = trainer.device, trainer.amp, trainer.model
        x_l, y_l = trainer.to_device(batch_l[0]), batch_l[1].to(dev, non_blocking=True)
        x_u, y_u = trainer.to_device(batch_u[0]), batch_u[1].to(dev, non_blocking=True)
        n_l, n_u = len(y_l), len(y_u)
        xw_l, xw_u = self.weak(x_l), self.weak(x_u)
        with torch.no_grad(), self._mix(model, None), torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            probs = trainer.net(torch.cat([xw_l, xw_u])).float().softmax(1)
        conf, pseudo = probs.max(1)
        mask = (conf >= self.threshold).float()

        with self._mix(model, "random" if self.mixstyle_labeled else None), \
                torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            logits_x = trainer.net(xw_l)
            loss_x = self.loss(logits_x, y_l)
        trainer.backward(loss_x)
        loss_u = torch.zeros((), device=dev)
        if self.weight_u > 0:
            xs = torch.cat([self.strong(x_l), self.strong(x_u)])
            # [labelled | unlabelled] halves: crossdomain mode makes every partner come from the other half
            with self._mix(model, "crossdomain"), torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
                logits_s = trainer.net(xs)
                loss_u = (F.cross_entropy(logits_s.float(), pseudo, reduction="none") * mask).mean()
            trainer.backward(self.weight_u * loss_u)
        loss = loss_x.detach() + self.weight_u * loss_u.detach()
        m_u = mask[n_l:]
        return {"n": n_l, "loss": loss.item() * n_l, "loss_x": loss_x.item() * n_l, "loss_u": loss_u.item() * n_l,
                "acc": (logits_x.detach().argmax(1) == y_l).sum().item(), "masked": m_u.sum().item(),
                "right": ((pseudo[n_l:] == y_u).float() * m_u).sum().item(), "n_u": n_u, "samples": n_l + n_u}

    def train_metrics(self, s, trainer):
        n_x, n_u = max(s["n"], 1), max(s["n_u"], 1)
        pseudo_acc = s["right"] / s["masked"] if s["masked"] > 0 else None  # nothing confident: no accuracy
        return {"train_loss": s["loss"] / n_x, "train_acc": s["acc"] / n_x, "loss_x": s["loss_x"] / n_x,
                "loss_u": s["loss_u"] / n_x, "semi_mask_rate": s["masked"] / n_u, "semi_pseudo_acc": pseudo_acc}


    def describe(self, r, trainer):
        pseudo = r.get("semi_pseudo_acc")
        return (f"loss_x {r['loss_x']:.4f} loss_u {r['loss_u']:.4f} confident {100 * r['semi_mask_rate']:.1f}% "
                f"(pseudo-label acc {'n/a' if pseudo is None else f'{pseudo:.3f}'})")

