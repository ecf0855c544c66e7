"""The registration training loss (label term + weight x regulariser) and the batched Dice that training logs,
against values worked out by hand and against the functions they are made of."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from leancnn.losses.registration import (
    DEFAULT_SIGMAS,
    REGULARISERS,
    RegistrationLoss,
    RegistrationLossTerms,
    batch_binary_dice,
    bending_energy,
    binary_dice,
    gradient_l1,
    gradient_l2,
    label_cross_entropy,
    multiscale_dice_loss,
)
from leancnn.nn.warp import identity_grid

D = torch.float64
SHAPE = (12, 12, 12)


def cube(lo, size, shape=SHAPE):
    m = torch.zeros(1, 1, *shape, dtype=D)
    m[0, 0, lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = 1.0
    return m


def field(fn, component, shape=SHAPE):
    """A DDF whose ``component`` is fn(x, y, z) on voxel indices, the others 0."""
    x, y, z = identity_grid(shape, dtype=D)[0]
    ddf = torch.zeros(1, 3, *shape, dtype=D)
    ddf[0, component] = fn(x, y, z)
    return ddf


def section(label="dice", sigmas=(0.0, 1.0, 2.0, 4.0, 8.0, 16.0), regulariser="bending", weight=0.5):
    """A stand-in for the ``loss`` config section (the same four fields)."""
    return SimpleNamespace(label=label, sigmas=list(sigmas), regulariser=regulariser, weight=weight)


def test_dice_plus_bending_by_hand():
    warped, fixed = cube((2, 2, 2), 4), cube((3, 2, 2), 4)  # 64 voxels each, shifted by one: overlap 48
    a = 0.01
    ddf = field(lambda x, y, z: a * x**2, 0)  # u_xx = 2a on the interior, nothing else: energy 4a^2 / 3
    out = RegistrationLoss("dice", sigmas=(0,), regulariser="bending", weight=0.5)(warped, fixed, ddf)
    assert isinstance(out, RegistrationLossTerms)
    label = 1.0 - 2 * 48 / (64 + 64 + 1e-6)
    reg = 4 * a**2 / 3
    assert out.label.item() == pytest.approx(label, rel=1e-12)
    assert out.reg.item() == pytest.approx(reg, rel=1e-12)
    assert out.total.item() == pytest.approx(label + 0.5 * reg, rel=1e-12)
    total, label_term, reg_term = out  # unpacks as (total, label, reg)
    assert total is out.total and label_term is out.label and reg_term is out.reg


def test_cross_entropy_plus_gradient_norms_by_hand():
    t = torch.zeros(1, 1, 5, 5, 5, dtype=D)
    t[..., :2, :, :] = 1.0  # 2/5 foreground
    p = torch.full_like(t, 0.8)
    s = -0.3
    scaling = field(lambda x, y, z: s * x, 0, (5, 5, 5)) + field(lambda x, y, z: s * y, 1, (5, 5, 5)) \
        + field(lambda x, y, z: s * z, 2, (5, 5, 5))
    ce = -(0.4 * math.log(0.8) + 0.6 * math.log(0.2))
    l2 = RegistrationLoss("cross_entropy", sigmas=(0,), regulariser="gradient_l2", weight=2.0)(p, t, scaling)
    assert l2.label.item() == pytest.approx(ce, rel=1e-12)
    assert l2.reg.item() == pytest.approx(s**2, rel=1e-12)
    assert l2.total.item() == pytest.approx(ce + 2.0 * s**2, rel=1e-12)
    l1 = RegistrationLoss("cross_entropy", sigmas=(0,), regulariser="gradient_l1", weight=0.25)(p, t, scaling)
    assert l1.total.item() == pytest.approx(ce + 0.25 * abs(s), rel=1e-12)


def test_from_config_is_the_task_loss_bit_for_bit():
    """label + weight x reg from the functions themselves, as the registration task has computed it: loss.sigmas
    for the Dice; cross_entropy with label_cross_entropy's default scales."""
    g = torch.Generator().manual_seed(0)
    warped = torch.rand(2, 1, 9, 10, 11, generator=g)
    fixed = (torch.rand(2, 1, 9, 10, 11, generator=g) > 0.6).float()
    ddf = torch.randn(2, 3, 9, 10, 11, generator=g)

    dice = RegistrationLoss.from_config(section("dice", (0.0, 1.0, 2.0), "bending", 0.5))(warped, fixed, ddf)
    expected = multiscale_dice_loss(warped, fixed, (0.0, 1.0, 2.0)) + 0.5 * bending_energy(ddf)
    assert torch.equal(dice.total, expected)
    assert torch.equal(dice.label, multiscale_dice_loss(warped, fixed, (0.0, 1.0, 2.0)))

    ce_loss = RegistrationLoss.from_config(section("cross_entropy", (0.0,), "gradient_l1", 0.3))
    assert ce_loss.sigmas == tuple(float(s) for s in DEFAULT_SIGMAS)  # loss.sigmas are the Dice's scales
    ce = ce_loss(warped, fixed, ddf)
    assert torch.equal(ce.total, label_cross_entropy(warped, fixed) + 0.3 * gradient_l1(ddf))
    assert torch.equal(ce.reg, gradient_l1(ddf))

    default = RegistrationLoss.from_config(section())
    assert (default.label, default.regulariser, default.weight) == ("dice", "bending", 0.5)
    assert default.sigmas == (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
    assert set(REGULARISERS) == {"bending", "gradient_l2", "gradient_l1"}
    assert REGULARISERS["gradient_l2"] is gradient_l2
    assert not list(default.parameters())


def test_gradients_and_the_degenerate_cases():
    fixed = cube((4, 4, 4), 4)
    warped = cube((5, 4, 4), 4).requires_grad_()
    ddf = field(lambda x, y, z: 0.01 * x**2, 0).requires_grad_()
    RegistrationLoss()(warped, fixed, ddf).total.backward()
    assert warped.grad.abs().sum() > 0 and ddf.grad.abs().sum() > 0

    # empty fixed and warped labels: soft Dice 0, so the Dice term is exactly 1 and passes no gradient
    empty = torch.zeros(1, 1, *SHAPE, dtype=D, requires_grad=True)
    zero = torch.zeros(1, 3, *SHAPE, dtype=D)
    out = RegistrationLoss()(empty, torch.zeros(1, 1, *SHAPE, dtype=D), zero)
    assert out.label.item() == 1.0 and out.reg.item() == 0.0 and out.total.item() == 1.0
    out.total.backward()
    assert empty.grad.abs().sum() == 0

    # weight 0: the regulariser is still computed and returned, and leaves the total
    w0 = RegistrationLoss(sigmas=(0,), weight=0)(cube((2, 2, 2), 4), cube((3, 2, 2), 4),
                                                  field(lambda x, y, z: 0.01 * x**2, 0))
    assert w0.reg.item() == pytest.approx(4e-4 / 3, rel=1e-12) and w0.total.item() == w0.label.item()


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"^label must be one of \('dice', 'cross_entropy'\), got 'mse'$"):
        RegistrationLoss("mse")
    with pytest.raises(ValueError, match="^regulariser must be one of"):
        RegistrationLoss(regulariser="tv")
    for bad in (-0.1, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="^weight must be a finite number >= 0"):
            RegistrationLoss(weight=bad)
    with pytest.raises(ValueError, match="sigmas must not be empty"):
        RegistrationLoss(sigmas=())
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        RegistrationLoss(sigmas=(0, -1))
    loss = RegistrationLoss()
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.zeros(1, 1, 6, 6, 6), torch.zeros(1, 1, 6, 6, 5), torch.zeros(1, 3, 6, 6, 6))
    with pytest.raises(ValueError, match="at least 5 voxels"):
        loss(torch.zeros(1, 1, 6, 6, 6), torch.zeros(1, 1, 6, 6, 6), torch.zeros(1, 3, 4, 6, 6))


def test_batch_binary_dice():
    a, b = cube((2, 2, 2), 4), cube((3, 2, 2), 4)  # overlap 48 of 64 + 64: Dice 0.75
    empty = torch.zeros_like(a)
    warped = torch.cat([a, empty, a, 0.6 * b, 0.4 * b])
    fixed = torch.cat([b, empty, empty, a, a])
    dice = batch_binary_dice(warped, fixed)
    assert dice.dtype == torch.float64 and dice.shape == (5,)
    # 0.6 >= 0.5 keeps the mask; 0.4 empties it; two empty masks give 1 (binary_dice: None)
    assert dice.tolist() == [0.75, 1.0, 0.0, 0.75, 0.0]
    assert dice[0].item() == binary_dice(a, b) and binary_dice(empty, empty) is None
    assert batch_binary_dice(0.4 * b, a, threshold=0.3).tolist() == [0.75]
    # the channels of a sample are pooled: 2 * (64 + 48) / ((64 + 64) + (64 + 64)) = 0.875
    assert batch_binary_dice(torch.cat([a, a], dim=1), torch.cat([a, b], dim=1)).tolist() == [0.875]
    with pytest.raises(ValueError, match="same shape"):
        batch_binary_dice(a, a[..., :-1])
    with pytest.raises(ValueError, match="threshold"):
        batch_binary_dice(a, a, threshold=float("nan"))


def test_label_weights_score_each_label_on_its_own():
    """data.labels=all: each (sample, label) channel is its own Dice problem; a sample's term is the weighted mean
    of its labels', padding (weight 0) contributes nothing; one label with weight 1 is the plain loss."""
    torch.manual_seed(0)
    warped = torch.rand(2, 3, *SHAPE, dtype=D)
    fixed = (torch.rand(2, 3, *SHAPE, dtype=D) > 0.6).to(D)
    loss = RegistrationLoss("dice", (0.0, 2.0), "bending", 0.5)
    ddf = torch.zeros(2, 3, *SHAPE, dtype=D)
    w = torch.tensor([[1.0, 1.0, 0.0], [4.0, 1.0, 1.0]], dtype=D)
    per = torch.stack([torch.stack([multiscale_dice_loss(warped[b, k][None, None], fixed[b, k][None, None],
                                                         (0.0, 2.0)) for k in range(3)]) for b in range(2)])
    expected = ((per * w).sum(1) / w.sum(1)).mean()
    torch.testing.assert_close(loss(warped, fixed, ddf, w).label, expected)
    # the padded channel can hold anything: it does not count
    other = warped.clone()
    other[0, 2] = 1.0
    torch.testing.assert_close(loss(other, fixed, ddf, w).label, expected)
    one = loss(warped[:, :1], fixed[:, :1], ddf, torch.ones(2, 1, dtype=D)).label
    torch.testing.assert_close(one, loss(warped[:, :1], fixed[:, :1], ddf).label)
    with pytest.raises(ValueError, match="label_weights must be"):
        loss(warped, fixed, ddf, torch.ones(2, 2, dtype=D))
    with pytest.raises(ValueError, match="at least one positive"):
        loss(warped, fixed, ddf, torch.zeros(2, 3, dtype=D))


def test_gaussian_smoothing_is_the_zero_padded_convolution():
    """The banded-matrix smoothing equals a zero-padded separable convolution with label-reg's taps."""
    import torch.nn.functional as F

    from leancnn.losses.registration import gaussian_kernel1d, gaussian_smooth

    torch.manual_seed(1)
    x = torch.rand(2, 3, 9, 14, 6, dtype=D)
    for sigma in (0.5, 1.0, 2.0, 4.0, 16.0):
        k = gaussian_kernel1d(sigma)
        tail = (k.numel() - 1) // 2
        out = x.reshape(6, 1, 9, 14, 6)
        for axis in range(3):
            view = [1, 1, 1, 1, 1]
            view[2 + axis] = k.numel()
            pad = [0, 0, 0]
            pad[axis] = tail
            out = F.conv3d(out, k.view(view).to(D), padding=tuple(pad))
        torch.testing.assert_close(gaussian_smooth(x, sigma), out.reshape(x.shape))


def test_signed_distance_and_the_boundary_term():
    """The signed distance map of a cube, in voxels over the grid's size: minus the distance to the nearest outside
    voxel inside, the distance to the cube outside; the boundary term is lowest for the exact overlap, rises with
    the shift, and is added to the label term with its weight."""
    from leancnn.losses.registration import boundary_loss, signed_distance

    c = cube((3, 3, 3), 4)
    sdm = signed_distance(c)
    n = float(max(SHAPE))
    assert sdm[0, 0, 4, 4, 4] * n == pytest.approx(-2.0)  # 2 voxels from the nearest outside voxel
    assert sdm[0, 0, 2, 4, 4] * n == pytest.approx(1.0)  # 1 voxel from the cube
    assert sdm[0, 0, 0, 4, 4] * n == pytest.approx(3.0)
    assert torch.equal(signed_distance(torch.zeros(1, 1, *SHAPE, dtype=D)), torch.zeros(1, 1, *SHAPE, dtype=D))
    exact = float(boundary_loss(c, sdm))
    shifted = [float(boundary_loss(cube((3 + k, 3, 3), 4), sdm)) for k in (1, 2, 4)]
    assert exact < shifted[0] < shifted[1] < shifted[2] and shifted[2] > 0 > exact
    plain = RegistrationLoss("dice", (0.0,), "bending", 0.0)
    with_b = RegistrationLoss("dice", (0.0,), "bending", 0.0, boundary_weight=2.0)
    moved = cube((5, 3, 3), 4)
    ddf = torch.zeros(1, 3, *SHAPE, dtype=D)
    assert float(with_b(moved, c, ddf).label) == pytest.approx(float(plain(moved, c, ddf).label)
                                                                + 2.0 * float(boundary_loss(moved, sdm)))
    with pytest.raises(ValueError, match="boundary_weight"):
        RegistrationLoss(boundary_weight=-1.0)
