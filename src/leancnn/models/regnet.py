"""3-D registration networks of label-driven weakly-supervised registration (Hu et al., MedIA 2018; TF1 code
YipengHu/label-reg, ``labelreg/networks.py`` and ``labelreg/layers.py``), in PyTorch.

All networks take ``forward(moving_resized, fixed)``: channel-first volumes ``(B, C, X, Y, Z)`` on the *same*
(fixed) grid (the caller resizes the moving image to the fixed grid first, as label-reg does); they are
concatenated to ``in_channels`` (2 for one moving and one fixed channel) and the network returns a dict with

* ``"ddf"``: ``(B, 3, X, Y, Z)``, a dense displacement field in **voxel units of the fixed grid**; component
  ``i`` is the displacement along spatial axis ``i`` (X, Y, Z = tensor dims 2, 3, 4). The warped moving image is
  ``moving(p + ddf(p))`` at every fixed voxel index ``p``;
* ``"theta"`` (GlobalNet, CompositeNet): ``(B, 3, 4)`` affine acting on homogeneous voxel-index coordinates
  with the origin at voxel (0, 0, 0) (not the centre): ``p' = theta @ [p; 1]`` and ``ddf = p' - p``.

Any input size works (no divisibility requirement): pooling is label-reg's TF-"SAME" 2×2×2 max-pool
(``ceil(n / 2)``, PyTorch ``ceil_mode=True``), the transposed convolution reproduces TF's SAME
``conv3d_transpose`` to the skip's exact size (full output, then the TF crop), and every resize goes to the
exact target size.

Building blocks (exactly label-reg's):

* conv block: conv (no bias, Glorot-uniform init as TF's ``xavier_initializer``) → BatchNorm → ReLU;
* down block (k0 = 7 at level 0, else 3): ``h0 = conv_block_k0(x)``; ``r = ReLU(BN(conv(conv_block(h0))) + h0)``;
  2×2×2 max-pool with ceil; returns the pooled tensor and the skip ``h0`` (the pre-residual conv output);
* up block: ``h0 = ReLU(BN(deconv3³ stride 2 (x)))`` to the skip size, plus additive up-sampling (trilinear
  resize of ``x`` to the skip size, channel groups summed: ``c_in → c_in / 2 = c_out``); ``r1 = h0 + skip``;
  ``r2 = conv_block(h0)`` (h0, not r1); ``out = ReLU(BN(conv(r2)) + r1)``;
* DDF summand: conv 3³ → 3 channels with bias, weight **and** bias initialised to zero, resized trilinearly to
  the full fixed size.

Decisions and differences (see also ``../shared/reference/registration.md`` §2, §6):

* **DDF = sum** of the summands over ``ddf_levels`` (label-reg sums; DeepReg and MONAI *average*, so their
  fields are 1/len(levels) of ours for the same features; MONAI's extraction conv also has no bias). All
  summands start at zero, so LocalNet starts as the zero field exactly.
* **BatchNorm** is label-reg's ``tf.contrib.layers.batch_norm`` defaults: centre (beta) only, no scale
  (gamma), eps 1e-3. ``bn_mode="batch"`` (default) normalises with the statistics of the current batch in
  train *and* eval (``track_running_stats=False``): label-reg's BN runs with ``is_training=True`` always and
  its moving-average update ops never run, so batch statistics are the only ones it ever used; running
  statistics gathered from a few hundred small-batch (2-4) steps of strongly augmented pairs would be poor
  estimates anyway. The output then depends only on the input batch (deterministic, train == eval; for batch
  1, on the pair alone). ``bn_mode="running"`` is PyTorch's default BatchNorm (momentum 0.1; running
  statistics in eval). A level where one channel holds a single value (batch 1 and a 1×1×1 map, e.g. the
  bottom of a 16³ input with 4 levels) normalises to 0, as TF does: that level then carries no information,
  so keep the bottom at least 2 voxels wide or use batch > 1.
* **Resizing** is PyTorch trilinear with ``align_corners=False`` (half-pixel centres, like TF2 / DeepReg).
  label-reg's TF1 ``resize_images`` used the legacy asymmetric mapping ``src = dst · n_in / n_out``, which
  shifts the resized field by up to half a coarse voxel; the difference is immaterial for a network trained
  from scratch.
* Initialisation: convolutions Glorot-uniform (TF's default), summands zero, GlobalNet's linear layer weight
  zero and bias the identity ``[1,0,0,0, 0,1,0,0, 0,0,1,0]`` (DeepReg/MONAI use a Glorot/Kaiming kernel).
* **GlobalNet head**: ``head="flatten"`` (default, label-reg) flattens the bottom feature map (so it needs
  ``image_size`` and then accepts that size only); a global average pool would discard where things are, which
  is what a translation is made of. ``head="avgpool"`` (any size) is offered, but it is weaker for translation.
* **CompositeNet**: GlobalNet(moving, fixed) → moving warped by the affine (private trilinear warp,
  ``grid_sample`` with ``align_corners=True``, zeros outside) → LocalNet(warped, fixed) with ``ddf_levels=(0,)``;
  final ``ddf = ddf_affine + ddf_local``: label-reg's *additive* form, not a true composition (``compose="sum"``,
  the default). ``compose="warp"`` is the true composition: the moving image is sampled at the affine image of
  ``p + ddf_local(p)``, i.e. ``ddf = ddf_affine(p) + A·ddf_local(p)`` (A the linear part of theta, exact for any
  p, no resampling of the affine field); the two differ by ``(A - I)·ddf_local``. label-reg's own CompositeNet never ran: it
  calls ``global_net.warp_image()`` without its argument (TypeError; issue #13).
* Parameters are counted by :func:`count_params`; ``bn=False`` leaves out the BN betas, which is how the
  reference's ≈18.9 M for LocalNet (nc₀ = 32) is counted (18,902,959 here; 3,392 betas on top).

In the model registry (``leancnn models``, ``create_model``) as ``reg_local``, ``reg_global`` and ``reg_composite``
(kind ``"registration"``: no classes, two inputs): :func:`build_regnet` with the registration task's default widths
(``model.channels`` 8-16-32-64, composite's ``model.global_channels`` 4-8-16-32) at the MR-US network grid
24×32×22 (``data.scale`` 0.5 of the 47×63×44 ultrasound grid), the size the affine head is built for.
"""

from __future__ import annotations

import inspect
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LeancnnError
from ..nn.warp import affine_to_ddf, warp
from .registry import register_model

__all__ = ["LocalNet", "GlobalNet", "CompositeNet", "build_regnet", "count_params", "param_breakdown",
           "BN_MODES", "IDENTITY_THETA"]

BN_MODES = ("batch", "running")
IDENTITY_THETA = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_EPS = 1e-3  # tf.contrib.layers.batch_norm default


# --------------------------------------------------------------------------------------------------- blocks
class BatchNormBeta3d(nn.Module):
    """label-reg's BatchNorm: ``(x - mean) / sqrt(var + 1e-3) + beta`` (no gamma).

    ``mode="batch"``: batch statistics in train and eval, no buffers. ``mode="running"``: PyTorch semantics
    (batch statistics and a running average, momentum 0.1, while training; running statistics in eval)."""

    def __init__(self, channels: int, mode: str = "batch"):
        super().__init__()
        if mode not in BN_MODES:
            raise LeancnnError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {mode!r}")
        self.mode = mode
        self.beta = nn.Parameter(torch.zeros(channels))
        if mode == "running":
            self.register_buffer("running_mean", torch.zeros(channels))
            self.register_buffer("running_var", torch.ones(channels))
        else:
            self.running_mean = self.running_var = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch = self.mode == "batch" or self.training
        if use_batch and x.numel() == x.shape[1]:
            # one value per channel: x - mean = 0 (TF gives 0; PyTorch's batch_norm refuses)
            y = torch.zeros_like(x)
        else:
            y = F.batch_norm(x, self.running_mean, self.running_var, None, None, training=use_batch,
                             momentum=0.1, eps=_EPS)
        return y + self.beta.view(1, -1, 1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.beta.numel()}, eps={_EPS}, mode={self.mode!r}"


def _conv(c_in: int, c_out: int, k: int = 3, bias: bool = False) -> nn.Conv3d:
    conv = nn.Conv3d(c_in, c_out, k, padding=k // 2, bias=bias)  # odd k: TF SAME = symmetric k // 2
    nn.init.xavier_uniform_(conv.weight)
    return conv


class ConvBlock(nn.Sequential):
    """conv (no bias) → BN → ReLU (label-reg ``conv3_block``)."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, bn_mode: str = "batch"):
        super().__init__(_conv(c_in, c_out, k), BatchNormBeta3d(c_out, bn_mode), nn.ReLU(inplace=True))


class DownBlock(nn.Module):
    """label-reg ``downsample_resnet_block``: returns ``(pooled, skip)`` with ``skip = h0``."""

    def __init__(self, c_in: int, c_out: int, k0: int = 3, bn_mode: str = "batch"):
        super().__init__()
        self.conv0 = ConvBlock(c_in, c_out, k0, bn_mode)
        self.res1 = ConvBlock(c_out, c_out, 3, bn_mode)
        self.res2 = _conv(c_out, c_out)
        self.bn2 = BatchNormBeta3d(c_out, bn_mode)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h0 = self.conv0(x)
        r = F.relu(self.bn2(self.res2(self.res1(h0))) + h0)
        return F.max_pool3d(r, 2, 2, ceil_mode=True), h0


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)


class UpBlock(nn.Module):
    """label-reg ``upsample_resnet_block`` with additive up-sampling."""

    def __init__(self, c_in: int, c_out: int, bn_mode: str = "batch"):
        super().__init__()
        if c_in % c_out:
            raise LeancnnError(f"additive up-sampling sums channel groups of the input, so the input channels "
                               f"({c_in}) must be a multiple of the output channels ({c_out}); label-reg uses "
                               f"c_in = 2·c_out (channels doubling per level, bottom = 2 × last)")
        self.groups = c_in // c_out
        self.deconv = nn.ConvTranspose3d(c_in, c_out, 3, stride=2, padding=0, bias=False)
        nn.init.xavier_uniform_(self.deconv.weight)
        self.bn0 = BatchNormBeta3d(c_out, bn_mode)
        self.res1 = ConvBlock(c_out, c_out, 3, bn_mode)
        self.res2 = _conv(c_out, c_out)
        self.bn2 = BatchNormBeta3d(c_out, bn_mode)

    def _deconv_same(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """TF ``conv3d_transpose(..., strides 2, "SAME")`` to ``size``: the full transposed conv (2n + 1 per
        axis) cropped from TF's start padding, ``(2(n - 1) + 3 - s) // 2`` (0 for even s, 1 for odd s)."""
        full = self.deconv(x)
        sl = [slice(None), slice(None)]
        for n, s in zip(x.shape[2:], size):
            if not 2 * n - 1 <= s <= 2 * n:
                raise LeancnnError(f"up block: skip size {tuple(size)} is not twice the input {tuple(x.shape[2:])}")
            start = (2 * n + 1 - s) // 2
            sl.append(slice(start, start + s))
        return full[tuple(sl)]

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        size = skip.shape[2:]
        h0 = F.relu(self.bn0(self._deconv_same(x, size)))
        up = _resize(x, size)
        h0 = h0 + up.view(up.shape[0], self.groups, -1, *up.shape[2:]).sum(1)
        r1 = h0 + skip
        return F.relu(self.bn2(self.res2(self.res1(h0))) + r1)


class DdfSummand(nn.Module):
    """conv 3³ → 3 channels with bias, zero-initialised, resized trilinearly to the full size."""

    def __init__(self, c_in: int):
        super().__init__()
        self.conv = nn.Conv3d(c_in, 3, 3, padding=1, bias=True)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return _resize(self.conv(x), size)


class Encoder(nn.Module):
    """Down blocks (k0 = 7 at level 0) and the bottom conv block; returns the bottom and the skips."""

    def __init__(self, in_channels: int, channels: Sequence[int], bottom: int, bn_mode: str):
        super().__init__()
        chs = [in_channels, *channels]
        self.down = nn.ModuleList(DownBlock(chs[i], chs[i + 1], 7 if i == 0 else 3, bn_mode)
                                  for i in range(len(channels)))
        self.bottom = ConvBlock(channels[-1], bottom, 3, bn_mode)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for block in self.down:
            x, skip = block(x)
            skips.append(skip)
        return self.bottom(x), skips


# ----------------------------------------------------------------------------------------------- validation
def _check_channels(name: str, channels, bottom) -> tuple[tuple[int, ...], int]:
    try:
        chs = tuple(int(c) for c in channels)
    except (TypeError, ValueError):
        raise LeancnnError(f"{name}: channels must be a sequence of positive integers, got {channels!r}") from None
    if not chs or any(c <= 0 for c in chs):
        raise LeancnnError(f"{name}: channels must be a non-empty sequence of positive integers, got {channels!r}")
    b = 2 * chs[-1] if bottom is None else bottom
    if not isinstance(b, int) or isinstance(b, bool) or b <= 0:
        raise LeancnnError(f"{name}: bottom must be a positive integer, got {bottom!r}")
    return chs, b


def _check_in_channels(name: str, in_channels) -> int:
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 2:
        raise LeancnnError(f"{name}: in_channels (moving + fixed channels) must be an integer >= 2, "
                           f"got {in_channels!r}")
    return in_channels


def _check_size(name: str, image_size) -> tuple[int, int, int]:
    try:
        size = tuple(int(s) for s in image_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 3 or any(s <= 0 for s in size):
        raise LeancnnError(f"{name}: image_size must be three positive integers (X, Y, Z), got {image_size!r}")
    return size


def _pair(name: str, in_channels: int, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    for what, t in (("moving", moving), ("fixed", fixed)):
        if not isinstance(t, torch.Tensor) or t.dim() != 5:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise LeancnnError(f"{name}: {what} must be a (B, C, X, Y, Z) tensor, got {shape}")
        if not t.is_floating_point():
            raise LeancnnError(f"{name}: {what} must be a floating-point tensor, got {t.dtype}")
    if moving.shape[0] != fixed.shape[0] or moving.shape[2:] != fixed.shape[2:]:
        raise LeancnnError(f"{name}: moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must have the same "
                           f"batch and spatial size (resize the moving image to the fixed grid first)")
    if moving.shape[1] + fixed.shape[1] != in_channels:
        raise LeancnnError(f"{name}: moving ({moving.shape[1]}) + fixed ({fixed.shape[1]}) channels must equal "
                           f"in_channels={in_channels}")
    return torch.cat([moving, fixed], dim=1)


# ---------------------------------------------------------------------------------------------- networks
class LocalNet(nn.Module):
    """label-reg LocalNet: encoder, bottom conv block, decoder, DDF = sum of zero-initialised summands.

    ``channels`` are the encoder widths of levels 0..D-1 (label-reg: 32, 64, 128, 256), ``bottom`` the width
    of level D (default ``2 × channels[-1]``); ``ddf_levels`` ⊆ {0..D} pick where summands are taken (level l < D
    from the up block of level l, level D from the bottom; default all, label-reg's (0, 1, 2, 3, 4)). Up blocks
    below ``min(ddf_levels)`` are not built."""

    def __init__(self, in_channels: int = 2, channels: Sequence[int] = (32, 64, 128, 256), bottom: int | None = None,
                 ddf_levels: Sequence[int] | None = None, bn_mode: str = "batch"):
        super().__init__()
        self.in_channels = _check_in_channels("LocalNet", in_channels)
        self.channels, self.bottom_channels = _check_channels("LocalNet", channels, bottom)
        if bn_mode not in BN_MODES:
            raise LeancnnError(f"LocalNet: bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
        depth = len(self.channels)
        if ddf_levels is None:
            ddf_levels = tuple(range(depth + 1))
        try:
            levels = tuple(sorted({int(lv) for lv in ddf_levels}))
        except (TypeError, ValueError):
            levels = ()
        if not levels or len(levels) != len(tuple(ddf_levels)) or levels[0] < 0 or levels[-1] > depth:
            raise LeancnnError(f"LocalNet: ddf_levels must be distinct integers in 0..{depth} (0 = full resolution, "
                               f"{depth} = bottom), got {ddf_levels!r}")
        self.ddf_levels = levels
        self.bn_mode = bn_mode
        widths = [*self.channels, self.bottom_channels]
        self.encoder = Encoder(in_channels, self.channels, self.bottom_channels, bn_mode)
        # decoder[i] is the up block of level depth-1-i (deepest first), down to min(ddf_levels)
        self.decoder = nn.ModuleList(UpBlock(widths[lv + 1], widths[lv], bn_mode)
                                     for lv in range(depth - 1, levels[0] - 1, -1))
        self.summands = nn.ModuleDict({str(lv): DdfSummand(widths[lv]) for lv in levels})

    def forward_input(self, x: torch.Tensor) -> torch.Tensor:
        """The DDF from the concatenated input ``(B, in_channels, X, Y, Z)``."""
        size = x.shape[2:]
        h, skips = self.encoder(x)
        depth = len(self.channels)
        feats = {depth: h}
        for i, up in enumerate(self.decoder):
            lv = depth - 1 - i
            h = up(h, skips[lv])
            feats[lv] = h
        ddf = None
        for lv in self.ddf_levels:
            d = self.summands[str(lv)](feats[lv], size)
            ddf = d if ddf is None else ddf + d
        return ddf

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ddf": self.forward_input(_pair("LocalNet", self.in_channels, moving, fixed))}


class GlobalNet(nn.Module):
    """label-reg GlobalNet: the encoder (default 8, 16, 32, 64; bottom 128), then a linear layer → 12 numbers
    (weight 0, bias identity) → ``theta (B, 3, 4)``; ``ddf = theta·[p; 1] - p`` on the voxel-index grid.

    ``head="flatten"`` (label-reg) needs ``image_size`` and accepts only that size; ``head="avgpool"`` pools the
    bottom globally and accepts any size."""

    def __init__(self, in_channels: int = 2, channels: Sequence[int] = (8, 16, 32, 64), bottom: int | None = None,
                 image_size: Sequence[int] | None = None, head: str = "flatten", bn_mode: str = "batch"):
        super().__init__()
        self.in_channels = _check_in_channels("GlobalNet", in_channels)
        self.channels, self.bottom_channels = _check_channels("GlobalNet", channels, bottom)
        if bn_mode not in BN_MODES:
            raise LeancnnError(f"GlobalNet: bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
        if head not in ("flatten", "avgpool"):
            raise LeancnnError(f"GlobalNet: head must be 'flatten' or 'avgpool', got {head!r}")
        self.head_kind, self.bn_mode = head, bn_mode
        self.image_size = None if image_size is None else _check_size("GlobalNet", image_size)
        if head == "flatten":
            if self.image_size is None:
                raise LeancnnError("GlobalNet(head='flatten') flattens the bottom feature map, so it needs "
                                   "image_size=(X, Y, Z) of the fixed grid; or use head='avgpool' (any size)")
            bottom_size = self.image_size
            for _ in self.channels:
                bottom_size = tuple(math.ceil(s / 2) for s in bottom_size)
            self.bottom_size = bottom_size
            features = self.bottom_channels * math.prod(bottom_size)
        else:
            self.bottom_size = None
            features = self.bottom_channels
        self.encoder = Encoder(in_channels, self.channels, self.bottom_channels, bn_mode)
        self.head = nn.Linear(features, 12)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor(IDENTITY_THETA))

    def forward_input(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.image_size is not None and self.head_kind == "flatten" and tuple(x.shape[2:]) != self.image_size:
            raise LeancnnError(f"GlobalNet: built for image_size {self.image_size} (head='flatten'), got "
                               f"{tuple(x.shape[2:])}; build it for this size or use head='avgpool'")
        h, _ = self.encoder(x)
        feats = h.flatten(1) if self.head_kind == "flatten" else h.mean(dim=(2, 3, 4))
        theta = self.head(feats).view(-1, 3, 4)
        return {"ddf": affine_to_ddf(theta, x.shape[2:]), "theta": theta}

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_input(_pair("GlobalNet", self.in_channels, moving, fixed))


class CompositeNet(nn.Module):
    """GlobalNet → warp the moving image by the affine → LocalNet(warped, fixed) with ``ddf_levels=(0,)``;
    ``ddf = ddf_affine + ddf_local`` (label-reg's additive form, not a true composition)."""

    def __init__(self, local_channels: Sequence[int] = (32, 64, 128, 256),
                 global_channels: Sequence[int] = (8, 16, 32, 64), image_size: Sequence[int] | None = None,
                 in_channels: int = 2, local_bottom: int | None = None, global_bottom: int | None = None,
                 local_ddf_levels: Sequence[int] = (0,), global_head: str = "flatten", bn_mode: str = "batch",
                 compose: str = "sum"):
        super().__init__()
        if compose not in ("sum", "warp"):
            raise LeancnnError(f"CompositeNet compose must be 'sum' or 'warp', got {compose!r}")
        self.compose = compose
        self.in_channels = _check_in_channels("CompositeNet", in_channels)
        self.global_net = GlobalNet(in_channels, global_channels, global_bottom, image_size, global_head, bn_mode)
        self.local_net = LocalNet(in_channels, local_channels, local_bottom, local_ddf_levels, bn_mode)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor]:
        x = _pair("CompositeNet", self.in_channels, moving, fixed)
        out = self.global_net.forward_input(x)
        warped = warp(moving, out["ddf"])
        ddf_local = self.local_net.forward_input(torch.cat([warped, fixed], dim=1))
        if self.compose == "warp":  # q -> A(q + d_l(q)) = q + ddf_affine(q) + A_lin d_l(q): exact, any q
            ddf = out["ddf"] + torch.einsum("bij,bjxyz->bixyz", out["theta"][:, :, :3], ddf_local)
        else:
            ddf = out["ddf"] + ddf_local
        return {"ddf": ddf, "theta": out["theta"], "ddf_affine": out["ddf"], "ddf_local": ddf_local}


# ------------------------------------------------------------------------------------------ factory, count
_KINDS = {"local": LocalNet, "global": GlobalNet, "composite": CompositeNet}


def build_regnet(kind: str, channels: Sequence[int] | None = None, image_size: Sequence[int] | None = None,
                 **kwargs) -> nn.Module:
    """``kind`` "local" | "global" | "composite". ``channels``: encoder widths (for "composite", LocalNet's;
    GlobalNet's go in ``global_channels``); default the label-reg widths. ``image_size`` (X, Y, Z) is needed by
    GlobalNet's flatten head ("global", "composite") and unused by "local". Other keyword arguments go to the
    class (e.g. ``bottom``, ``ddf_levels``, ``bn_mode``, ``head``)."""
    cls = _KINDS.get(kind)
    if cls is None:
        raise LeancnnError(f"unknown registration network kind {kind!r}; expected one of {', '.join(_KINDS)}")
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    bad = [k for k in kwargs if k not in allowed or k in ("channels", "local_channels", "image_size")]
    if bad:
        raise LeancnnError(f"{cls.__name__} does not take argument(s) {', '.join(bad)}; it takes channels, "
                           f"image_size and {', '.join(a for a in allowed if a not in ('channels', 'local_channels', 'image_size'))}")
    if channels is not None:
        kwargs["local_channels" if kind == "composite" else "channels"] = channels
    if kind != "local":
        kwargs["image_size"] = image_size
    return cls(**kwargs)


# ------------------------------------------------------------------------------------------------- registry
REGISTRY_GRID = (24, 32, 22)  # the MR-US network grid: data.scale 0.5 of the 47x63x44 ultrasound grid
_WIDTHS, _GLOBAL_WIDTHS = (8, 16, 32, 64), (4, 8, 16, 32)  # the registration task's model.(global_)channels


@register_model("reg_local", kind="registration", num_classes=None, input_size=(1, *REGISTRY_GRID),
                description="LocalNet (Hu et al. 2018): dense displacement field from a moving + fixed volume")
def reg_local(channels: Sequence[int] = _WIDTHS, **kwargs) -> nn.Module:
    return build_regnet("local", channels, **kwargs)


@register_model("reg_global", kind="registration", num_classes=None, input_size=(1, *REGISTRY_GRID),
                description="GlobalNet (Hu et al. 2018): affine (12 numbers) from a moving + fixed volume")
def reg_global(channels: Sequence[int] = _WIDTHS, image_size: Sequence[int] = REGISTRY_GRID, **kwargs) -> nn.Module:
    return build_regnet("global", channels, image_size, **kwargs)


@register_model("reg_composite", kind="registration", num_classes=None, input_size=(1, *REGISTRY_GRID),
                description="CompositeNet (Hu et al. 2018): GlobalNet affine + LocalNet field, added")
def reg_composite(channels: Sequence[int] = _WIDTHS, image_size: Sequence[int] = REGISTRY_GRID,
                  global_channels: Sequence[int] = _GLOBAL_WIDTHS, **kwargs) -> nn.Module:
    return build_regnet("composite", channels, image_size, global_channels=global_channels, **kwargs)


def _is_bn_beta(module: nn.Module, name: str) -> bool:
    return isinstance(module, BatchNormBeta3d) and name == "beta"


def count_params(model: nn.Module, bn: bool = True) -> int:
    """Number of parameters; ``bn=False`` leaves out the BatchNorm betas (the reference's way of counting)."""
    return sum(p.numel() for m in model.modules() for n, p in m.named_parameters(recurse=False)
               if bn or not _is_bn_beta(m, n))


def param_breakdown(model: nn.Module, bn: bool = True) -> dict[str, int]:
    """Parameters per part (``encoder``, ``bottom``, ``decoder``, ``summands``, ``head``), prefixed ``global.``
    / ``local.`` inside a CompositeNet."""
    out: dict[str, int] = {}
    for mname, m in model.named_modules():
        for n, p in m.named_parameters(recurse=False):
            if not bn and _is_bn_beta(m, n):
                continue
            parts = mname.split(".")
            prefix = ""
            if parts[0] in ("global_net", "local_net"):
                prefix, parts = parts[0].split("_")[0] + ".", parts[1:]
            part = "bottom" if parts[:2] == ["encoder", "bottom"] else parts[0]
            out[prefix + part] = out.get(prefix + part, 0) + p.numel()
    return out
